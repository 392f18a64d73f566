// X.509 helpers the CLI and jobs need without seeing OpenSSL types: thumbprints, PEM, reading
// certificate files, one-line summaries. All functions are pure and thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/bounded_read.hpp"

namespace fleetsign::engine {

using Der = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

std::string hex_upper(ByteView bytes);
// Thumbprints the way Azure and AWS portals show them: upper-case hex, no separators.
std::string thumbprint_sha1(ByteView der);
std::string thumbprint_sha256(ByteView der);
// The key's identity on the compromised-key blocklist: SHA-256 (upper-case hex) of the canonical
// SubjectPublicKeyInfo DER: an EC point sent compressed (or hybrid) is re-encoded uncompressed, so
// one key has one hash however it is sent; every other SPKI (RSA, uncompressed EC, one OpenSSL
// cannot decode) is hashed as sent, without allocating.
std::string key_sha256_of_spki(ByteView spki);
// key_sha256_of_spki of a certificate's SPKI. Empty when `cert_der` does not parse.
std::string key_sha256_of_cert(ByteView cert_der);

// PEM with 64-column base64 lines; `label` e.g. "CERTIFICATE".
void append_pem(std::string& out, ByteView der, std::string_view label);
std::string pem(ByteView der, std::string_view label);

// Every certificate in a PEM file (in order), or the single certificate of a DER file. The file
// is read through fleetsign::read_bounded: `what` names it in messages ("chain", "certificate
// file") and `limit` caps the bytes read. Throws Error(kInputTooLarge) naming the input and the
// limit when it holds more, Error(kIo) when unreadable, Error(kCertificateMalformed) naming the
// file when it holds no valid certificate.
std::vector<Der> read_certificates(const std::filesystem::path& file,
                                   std::string_view what = "certificate file",
                                   std::size_t limit = kCertFileLimit);
// The same for text already read (an HTTP body): `name` names it in the messages.
std::vector<Der> certificates_from_text(std::string_view text, const std::string& name);
// Every CSR in a PEM bundle, DER otherwise, with the line each starts on (1 for DER).
struct CsrBlob {
  Der der;
  int line = 1;
  std::string problem;  // non-empty when this block could not be decoded (bad base64, …)
};
// read_csrs reads at most kCsrFileLimit bytes (fleetsign::read_bounded's errors, "CSR file").
std::vector<CsrBlob> read_csrs(const std::filesystem::path& file);
std::vector<CsrBlob> parse_csr_text(std::string_view text);

struct CertSummary {
  std::string subject, issuer, serial;  // serial as upper-case hex
  std::int64_t not_before = 0, not_after = 0;
  std::string sha1, sha256;
  bool is_ca = false;
  std::string common_name;
};
// Throws Error(kCertificateMalformed) when `der` is not a certificate.
CertSummary summarize_certificate(ByteView der);

// "2026-11-23T07:13:11Z"
std::string iso8601(std::int64_t unix_seconds);

}  // namespace fleetsign::engine
