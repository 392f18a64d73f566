// Reading and checking certificate revocation lists without the token: what `crl show` prints,
// what the engine checks after the token signed, and what the broker's installer checks before a
// CRL may replace the installed one (mosquitto runs with *no* CRL when its file is bad).
// All functions are pure and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/engine/x509.hpp"

namespace fleetsign::engine {

struct CrlInfo {
  std::string issuer;                             // one-line DN, openssl -subj form
  std::int64_t number = -1;                       // cRLNumber; -1 when absent
  std::int64_t this_update = 0, next_update = 0;  // next_update 0 when absent
  std::size_t entries = 0;
  std::string authority_key_id;  // upper-case hex keyIdentifier; empty when absent
};

// Parses a DER CRL. Throws Error(kCrlInvalid) naming `what` when it is not a v2 CRL with a
// cRLNumber and a nextUpdate.
CrlInfo read_crl(ByteView der, std::string_view what = "CRL");

// read_crl, then checks it against its CA certificate (DER): the issuer equals the CA's subject,
// the authority key identifier (when present) equals the CA's subject key identifier, the
// signature verifies with the CA's public key, thisUpdate is not after `now` (5 minutes of clock
// skew allowed), and nextUpdate is after `now`. Throws
// Error(kCrlInvalid) naming `what` and the first check that failed.
CrlInfo check_crl(ByteView der, ByteView ca_cert_der, std::int64_t now,
                  std::string_view what = "CRL");

// True when `der` is a CRL that names the CA (DER) as its issuer and whose signature verifies
// with the CA's key; freshness is not looked at. False for anything else, never throws.
bool crl_signed_by(ByteView der, ByteView ca_cert_der) noexcept;

// Every "X509 CRL" block of a PEM text, in order, as DER. Throws Error(kCrlInvalid) naming
// `what` on a block that is not valid base64, or on text with no CRL at all.
std::vector<Der> crls_from_pem(std::string_view text, std::string_view what = "CRL bundle");

}  // namespace fleetsign::engine
