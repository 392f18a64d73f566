// OpenSSL objects in unique_ptr with zero-size deleters, and the few helpers the device library
// needs. Private to device/.
#pragma once

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/device/identity.hpp"

namespace fleetsign::device::ossl {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const noexcept { Free(p); }
};
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using StorePtr = std::unique_ptr<X509_STORE, Deleter<X509_STORE, X509_STORE_free>>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, Deleter<SSL_CTX, SSL_CTX_free>>;

// The queued OpenSSL errors as one line (and clears the queue); "unknown error" when empty.
inline std::string last_error() {
  std::string out;
  char buf[256];
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown error" : out;
}

// A read-only memory BIO over `text` (which must outlive it).
inline BioPtr mem_bio(std::string_view text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Every certificate of a PEM text, in order. On a block that is not a CERTIFICATE or does not
// decode to exactly one certificate, returns what was read so far and sets `problem`.
std::vector<X509Ptr> parse_certificates(std::string_view pem, std::string& problem);
// Exactly one unencrypted PEM private key ("PRIVATE KEY", or a traditional "EC/RSA PRIVATE
// KEY"); null with `problem` set otherwise (absent, encrypted, malformed, more than one).
PkeyPtr parse_private_key(std::string_view pem, std::string& problem);
// A new EC key on the curve `curve_nid` (NID_X9_62_prime256v1, NID_secp384r1); null on failure.
PkeyPtr generate_ec_key(int curve_nid);

}  // namespace fleetsign::device::ossl

namespace fleetsign::device {

// A credential's OpenSSL objects, decoded once (make_credential) and presented in every handshake.
// Immutable after construction; the issuers are shared with other devices of the batch.
struct ParsedCredential {
  ossl::X509Ptr leaf;
  STACK_OF(X509) * issuers = nullptr;  // owned
  ossl::PkeyPtr key;
  ParsedCredential() : issuers(sk_X509_new_null()) {}
  ~ParsedCredential() { sk_X509_pop_free(issuers, X509_free); }
  ParsedCredential(const ParsedCredential&) = delete;  // owns the stack
  ParsedCredential& operator=(const ParsedCredential&) = delete;
};

}  // namespace fleetsign::device

namespace fleetsign::device {

// The facts a device reports about `leaf`, in the engine's formats (engine/x509: upper-case hex).
// Throws Error(kCertificateMalformed) when it does not encode.
CertInfo info_of(X509* leaf);

}  // namespace fleetsign::device
