#include "fleetsign/engine/crl_check.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "fleetsign/error.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

namespace {

constexpr std::int64_t kClockSkew = 300;

using CrlPtr = std::unique_ptr<X509_CRL, ossl::Deleter<X509_CRL_free>>;
using IntPtr = std::unique_ptr<ASN1_INTEGER, ossl::Deleter<ASN1_INTEGER_free>>;
using AkidPtr = std::unique_ptr<AUTHORITY_KEYID, ossl::Deleter<AUTHORITY_KEYID_free>>;
using BioPtr = std::unique_ptr<BIO, ossl::Deleter<BIO_free>>;

[[noreturn]] void fail(std::string_view what, const std::string& why) {
  ERR_clear_error();
  throw Error(ErrorCode::kCrlInvalid, std::string(what) + ": " + why);
}

CrlPtr parse(ByteView der, std::string_view what) {
  const unsigned char* p = der.data();
  CrlPtr crl(d2i_X509_CRL(nullptr, &p, static_cast<long>(der.size())));
  if (!crl || p != der.data() + der.size()) {
    fail(what, "not a DER certificate revocation list");
  }
  return crl;
}

CrlInfo info_of(X509_CRL* crl, std::string_view what) {
  CrlInfo info;
  if (X509_CRL_get_version(crl) != X509_CRL_VERSION_2) fail(what, "not a version 2 CRL");
  info.issuer = ossl::subject_line(X509_CRL_get_issuer(crl));
  info.this_update = ossl::to_unix(X509_CRL_get0_lastUpdate(crl));
  const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl);
  if (next == nullptr) fail(what, "has no nextUpdate");
  info.next_update = ossl::to_unix(next);
  int crit = 0;
  IntPtr number(
      static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(crl, NID_crl_number, &crit, nullptr)));
  if (!number) fail(what, "has no CRL number");
  std::int64_t n = -1;
  if (ASN1_INTEGER_get_int64(&n, number.get()) != 1 || n < 0) {
    fail(what, "CRL number is out of range");
  }
  info.number = n;
  AkidPtr akid(static_cast<AUTHORITY_KEYID*>(
      X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, &crit, nullptr)));
  if (akid && akid->keyid != nullptr) {
    info.authority_key_id = hex_upper(ByteView(akid->keyid->data, akid->keyid->length));
  }
  const STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl);
  info.entries = revoked == nullptr ? 0 : static_cast<std::size_t>(sk_X509_REVOKED_num(revoked));
  return info;
}

}  // namespace

CrlInfo read_crl(ByteView der, std::string_view what) {
  const CrlPtr crl = parse(der, what);
  return info_of(crl.get(), what);
}

CrlInfo check_crl(ByteView der, ByteView ca_cert_der, std::int64_t now, std::string_view what) {
  const CrlPtr crl = parse(der, what);
  CrlInfo info = info_of(crl.get(), what);
  const ossl::X509Ptr ca = ossl::from_der(ca_cert_der);
  if (!ca) fail(what, "its CA certificate is malformed");
  if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_subject_name(ca.get())) != 0) {
    fail(what, "issuer '" + info.issuer + "' is not the CA '" +
                   ossl::subject_line(X509_get_subject_name(ca.get())) + "'");
  }
  const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(ca.get());
  if (!info.authority_key_id.empty() && ski != nullptr &&
      info.authority_key_id != hex_upper(ByteView(ski->data, ski->length))) {
    fail(what, "authority key identifier does not match the CA's subject key identifier");
  }
  if (X509_CRL_verify(crl.get(), X509_get0_pubkey(ca.get())) != 1) {
    fail(what, "signature does not verify with the CA's key");
  }
  // A relying party refuses a CRL from the future (X509_V_ERR_CRL_NOT_YET_VALID) as surely as a
  // stale one; a few minutes of clock skew between hosts are tolerated.
  if (info.this_update > now + kClockSkew) {
    fail(what, "is not valid yet: thisUpdate " + iso8601(info.this_update) + " is in the future");
  }
  if (info.next_update <= now) {
    fail(what, "is stale: nextUpdate " + iso8601(info.next_update) + " has passed");
  }
  return info;
}

bool crl_signed_by(ByteView der, ByteView ca_cert_der) noexcept {
  const unsigned char* p = der.data();
  const CrlPtr crl(d2i_X509_CRL(nullptr, &p, static_cast<long>(der.size())));
  const ossl::X509Ptr ca = ossl::from_der(ca_cert_der);
  const bool ok =
      crl && ca && p == der.data() + der.size() &&
      X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_subject_name(ca.get())) == 0 &&
      X509_CRL_verify(crl.get(), X509_get0_pubkey(ca.get())) == 1;
  ERR_clear_error();
  return ok;
}

std::vector<Der> crls_from_pem(std::string_view text, std::string_view what) {
  BioPtr bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  std::vector<Der> out;
  for (;;) {
    char* name = nullptr;
    char* header = nullptr;
    unsigned char* data = nullptr;
    long len = 0;
    if (PEM_read_bio(bio.get(), &name, &header, &data, &len) != 1) {
      const unsigned long err = ERR_peek_last_error();
      ERR_clear_error();
      if (ERR_GET_REASON(err) == PEM_R_NO_START_LINE) break;
      fail(what, "holds a PEM block that does not decode");
    }
    const bool is_crl = std::string_view(name) == "X509 CRL";
    if (is_crl) out.emplace_back(data, data + len);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    if (!is_crl) fail(what, "holds a PEM block that is not an X509 CRL");
  }
  if (out.empty()) fail(what, "holds no CRL");
  return out;
}

}  // namespace fleetsign::engine
