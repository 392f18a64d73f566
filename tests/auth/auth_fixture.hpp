// The authentication decision's test fixture (auth_test.cpp, auth_incident_test.cpp): a home
// with a token-backed CA hierarchy and uploaded software CAs, and `decide`, which runs a chain
// through both paths (fast path and OpenSSL's X509_verify_cert) and checks they agree.
#pragma once

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <functional>

#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/x509.hpp"
#include "registry_backend.hpp"
#include "test_home.hpp"

namespace fleetsign::engine {
// Each test file has its own copy (an unnamed namespace in the header of one test program).
namespace {

constexpr std::int64_t kDay = 86400;

Der spki_of(EVP_PKEY* key) {
  unsigned char* buf = nullptr;
  const int len = i2d_PUBKEY(key, &buf);
  Der out(buf, buf + len);
  OPENSSL_free(buf);
  return out;
}

// A software CA outside the token (an "uploaded" CA), optionally with name constraints.
struct SoftCa {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  ~SoftCa() {
    EVP_PKEY_free(key);
    X509_free(cert);
  }
};

void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  ASSERT_NE(ext, nullptr) << value;
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// `extra` is an optional "TYPE=value" attribute placed before the CN (e.g. emailAddress=…).
void fill_cert(X509* cert, const char* subject_cn, const char* extra, X509* issuer, EVP_PKEY* pub,
               std::int64_t from, std::int64_t days) {
  static long serial = 1000;
  X509_set_version(cert, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), ++serial);
  X509_NAME* name = X509_NAME_new();
  if (extra != nullptr) {
    const std::string attr(extra);
    const auto eq = attr.find('=');
    X509_NAME_add_entry_by_txt(name, attr.substr(0, eq).c_str(), MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(attr.c_str() + eq + 1), -1,
                               -1, 0);
  }
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(subject_cn), -1, -1, 0);
  X509_set_subject_name(cert, name);
  X509_set_issuer_name(cert, issuer != nullptr ? X509_get_subject_name(issuer) : name);
  X509_NAME_free(name);
  ASN1_TIME_set(X509_getm_notBefore(cert), static_cast<time_t>(from));
  ASN1_TIME_set(X509_getm_notAfter(cert), static_cast<time_t>(from + days * kDay));
  X509_set_pubkey(cert, pub);
}

[[maybe_unused]] std::unique_ptr<SoftCa> make_soft_ca(const char* cn,
                                                      const char* name_constraints) {
  auto ca = std::make_unique<SoftCa>();
  fill_cert(ca->cert, cn, nullptr, nullptr, ca->key, std::time(nullptr) - kDay, 3650);
  add_ext(ca->cert, ca->cert, NID_basic_constraints, "critical,CA:TRUE");
  add_ext(ca->cert, ca->cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(ca->cert, ca->cert, NID_subject_key_identifier, "hash");
  if (name_constraints != nullptr)
    add_ext(ca->cert, ca->cert, NID_name_constraints, name_constraints);
  X509_sign(ca->cert, ca->key, EVP_sha256());
  return ca;
}

// An uploaded intermediate CA signed by `root`.
[[maybe_unused]] std::unique_ptr<SoftCa> make_soft_intermediate(const SoftCa& root,
                                                                const char* cn) {
  auto ca = std::make_unique<SoftCa>();
  fill_cert(ca->cert, cn, nullptr, root.cert, ca->key, std::time(nullptr) - kDay, 3000);
  add_ext(ca->cert, root.cert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  add_ext(ca->cert, root.cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(ca->cert, root.cert, NID_subject_key_identifier, "hash");
  add_ext(ca->cert, root.cert, NID_authority_key_identifier, "keyid:always");
  X509_sign(ca->cert, root.key, EVP_sha256());
  return ca;
}

[[maybe_unused]] Der soft_leaf(const SoftCa& ca, const char* cn, const char* extra,
                               const char* key_usage) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  fill_cert(cert, cn, extra, ca.cert, key, std::time(nullptr) - kDay, 365);
  add_ext(cert, ca.cert, NID_basic_constraints, "critical,CA:FALSE");
  add_ext(cert, ca.cert, NID_key_usage, key_usage);
  add_ext(cert, ca.cert, NID_ext_key_usage, "clientAuth");
  X509_sign(cert, ca.key, EVP_sha256());
  unsigned char* buf = nullptr;
  const int len = i2d_X509(cert, &buf);
  Der out(buf, buf + len);
  OPENSSL_free(buf);
  X509_free(cert);
  EVP_PKEY_free(key);
  return out;
}

Der der_of(X509* cert) {
  unsigned char* buf = nullptr;
  const int len = i2d_X509(cert, &buf);
  Der out(buf, buf + len);
  OPENSSL_free(buf);
  return out;
}

class AuthDecisions : public ::testing::Test {
 protected:
  testing::TestHome h;
  std::int64_t now = std::time(nullptr);

  void SetUp() override { h.make_hierarchy(); }  // root → int1 (token keys)

  CaRecord ca(const std::string& name) { return *h.registry->find_ca(name); }

  // A device certificate from a registry CA, signed in the token, issued at `at`.
  Der leaf(const std::string& ca_name, const std::string& id, std::int64_t at = 0, int days = 365) {
    FixedClock clock(at != 0 ? at : now);
    const CaRecord rec = ca(ca_name);
    Issuer issuer(rec, h.cas->load_key(rec), h.policy, days, clock, h.random);
    EVP_PKEY* key = EVP_EC_gen("P-256");
    auto prepared = issuer.prepare(DeviceId::check(h.policy, id).value(), spki_of(key));
    EVP_PKEY_free(key);
    auto signed_cert = issuer.sign(std::move(*prepared));
    return signed_cert->der;
  }

  void verify_ca(const std::string& name) {
    const Der proof = h.cas->make_verification_cert(name, "CODE-" + name);
    verify_possession(*h.registry, h.clock, name, "CODE-" + name, proof);
  }

  void group(const std::string& name, const std::string& primary, const std::string& secondary = "",
             bool enabled = true) {
    h.registry->save_group(EnrollmentGroup{name, enabled, primary, secondary, 0, 0}, "test.group",
                           true);
  }

  void individual(const std::string& id, const std::string& primary_sha256,
                  const std::string& secondary_sha256, bool enabled = true) {
    IndividualEnrollment ie;
    ie.registration_id = id;
    ie.enabled = enabled;
    ie.primary_sha256 = primary_sha256;
    ie.secondary_sha256 = secondary_sha256;
    h.registry->save_individual(ie, "test.individual", true);
  }

  CaRecord add_external(const std::string& name, X509* cert, bool verified,
                        const std::string& parent = "") {
    CaRecord rec;
    rec.name = name;
    rec.parent = parent;
    rec.subject = "/CN=" + name;
    rec.key_type = "external-ec-p256";
    rec.cert_der = der_of(cert);
    rec.not_before = now - kDay;
    rec.not_after = now + 3650 * kDay;
    rec.sha1 = thumbprint_sha1(rec.cert_der);
    rec.sha256 = thumbprint_sha256(rec.cert_der);
    h.registry->add_ca(rec);
    if (verified) h.registry->set_ca_verified(name, true);
    return rec;
  }

  // Decides through both paths; they must agree on the decision and the rule.
  AuthDecision decide(std::vector<Der> chain, std::int64_t at = 0, std::string claimed = "") {
    Authenticator auth(*h.registry);
    const AuthDecision fast = auth.check(chain, at != 0 ? at : now, claimed, false);
    const AuthDecision slow = auth.check(chain, at != 0 ? at : now, claimed, true);
    EXPECT_EQ(fast.allowed, slow.allowed) << fast.reason << " | " << slow.reason;
    EXPECT_EQ(fast.rule, slow.rule) << fast.reason << " | " << slow.reason;
    EXPECT_EQ(fast.slot, slow.slot);
    return fast;
  }
};

}  // namespace
}  // namespace fleetsign::engine
