// OpenSSL ownership and small conversions, private to engine/.
#pragma once

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/engine/x509.hpp"

namespace fleetsign::engine::ossl {

template <auto Fn>
struct Deleter {
  template <typename T>
  void operator()(T* p) const noexcept {
    Fn(p);
  }
};
using X509Ptr = std::unique_ptr<X509, Deleter<X509_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, Deleter<X509_NAME_free>>;
using X509ReqPtr = std::unique_ptr<X509_REQ, Deleter<X509_REQ_free>>;
using X509ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX_free>>;
using BnPtr = std::unique_ptr<BIGNUM, Deleter<BN_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, Deleter<EVP_MD_CTX_free>>;

// The openssl `-subj` form: "/CN=IoT Root CA/O=MyOrg/C=US", '\' escapes '/', '=' and '\'.
// Throws Error(kInvalidSubject) naming the DN and the problem.
X509NamePtr parse_subject(std::string_view dn);
// The same one-line form back, from a Name.
std::string subject_line(const X509_NAME* name);

Der to_der(const X509* cert);
// The TBSCertificate as it stands (re-encoded): what an intent records before signing.
Der tbs_der(X509* cert);
X509Ptr from_der(ByteView der);               // nullptr when malformed
PkeyPtr public_key_from_spki(ByteView spki);  // nullptr when malformed
std::string serial_hex(const X509* cert);
std::int64_t to_unix(const ASN1_TIME* t);
// Drains OpenSSL's error queue into one line (for messages).
std::string last_error();

}  // namespace fleetsign::engine::ossl
