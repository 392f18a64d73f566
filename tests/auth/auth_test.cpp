// The cloud's authentication decision, table-driven: every rule and the ties the issue names.
// Each case runs through both paths (fast path and OpenSSL's X509_verify_cert) and both must
// give the same decision and the same rule.
#include "fleetsign/engine/auth.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <functional>

#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/x509.hpp"
#include "registry_backend.hpp"
#include "test_home.hpp"

namespace fleetsign::engine {
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

std::unique_ptr<SoftCa> make_soft_ca(const char* cn, const char* name_constraints) {
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
std::unique_ptr<SoftCa> make_soft_intermediate(const SoftCa& root, const char* cn) {
  auto ca = std::make_unique<SoftCa>();
  fill_cert(ca->cert, cn, nullptr, root.cert, ca->key, std::time(nullptr) - kDay, 3000);
  add_ext(ca->cert, root.cert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  add_ext(ca->cert, root.cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(ca->cert, root.cert, NID_subject_key_identifier, "hash");
  add_ext(ca->cert, root.cert, NID_authority_key_identifier, "keyid:always");
  X509_sign(ca->cert, root.key, EVP_sha256());
  return ca;
}

Der soft_leaf(const SoftCa& ca, const char* cn, const char* extra, const char* key_usage) {
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

TEST_F(AuthDecisions, AllowsALeafWhoseChainLeadsToAVerifiedCaOfAnEnabledGroup) {
  verify_ca("root");
  group("fleet", "root");
  const AuthDecision d = decide({leaf("int1", "dev-1"), ca("int1").cert_der});
  EXPECT_TRUE(d.allowed) << d.reason;
  EXPECT_EQ(d.rule, "enrollment-group");
  EXPECT_EQ(d.enrollment, "fleet");
  EXPECT_EQ(d.slot, "primary");
  EXPECT_EQ(d.registration_id, "dev-1");
}

TEST_F(AuthDecisions, AllowsWhenTheIntermediateIsInNoGroupButItsRootIs) {
  verify_ca("root");
  group("fleet", "root");
  EXPECT_EQ(decide({leaf("int1", "dev-2")}).rule,
            "enrollment-group");  // intermediate not presented
}

TEST_F(AuthDecisions, RefusesWhenTheCaInTheSlotIsNotVerified) {
  group("fleet", "root");
  const AuthDecision d = decide({leaf("int1", "dev-3"), ca("int1").cert_der});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "ca-not-verified");
}

// The cloud rule (DPS): an intermediate in a group's slot that a verified CA issued admits its
// devices; the intermediate needs no proof of possession of its own.
TEST_F(AuthDecisions, AllowsAnUnverifiedIntermediateInTheSlotWhenItsRootIsVerified) {
  verify_ca("root");
  group("fleet", "int1");
  for (const auto& chain : {std::vector<Der>{leaf("int1", "dev-20"), ca("int1").cert_der},
                            std::vector<Der>{leaf("int1", "dev-21")}}) {
    const AuthDecision d = decide(chain);
    EXPECT_TRUE(d.allowed) << d.reason;
    EXPECT_EQ(d.rule, "enrollment-group");
    EXPECT_EQ(d.enrollment, "fleet");
    EXPECT_EQ(d.slot, "primary");
  }
}

TEST_F(AuthDecisions, RefusesAnUnverifiedIntermediateInTheSlotWhenItsRootIsUnverifiedToo) {
  group("fleet", "int1");
  const AuthDecision d = decide({leaf("int1", "dev-22"), ca("int1").cert_der});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "ca-not-verified");
}

TEST_F(AuthDecisions, AllowsAVerifiedIntermediateInTheSlotWhoseRootIsUnverified) {
  verify_ca("int1");
  group("fleet", "int1");
  const AuthDecision d = decide({leaf("int1", "dev-23"), ca("int1").cert_der});
  EXPECT_TRUE(d.allowed) << d.reason;
  EXPECT_EQ(d.rule, "enrollment-group");
  EXPECT_EQ(d.enrollment, "fleet");
}

TEST_F(AuthDecisions, AllowsAnUploadedIntermediateInTheSlotWhenItsUploadedRootIsVerified) {
  auto root = make_soft_ca("Uploaded Root", nullptr);
  auto inter = make_soft_intermediate(*root, "Uploaded Intermediate");
  add_external("up-root", root->cert, true);
  add_external("up-int", inter->cert, false, "up-root");
  group("fleet", "up-int");
  const AuthDecision d = decide(
      {soft_leaf(*inter, "dev-24", nullptr, "critical,digitalSignature"), der_of(inter->cert)});
  EXPECT_TRUE(d.allowed) << d.reason;
  EXPECT_EQ(d.rule, "enrollment-group");
  // The same intermediate with an unverified root is refused.
  h.registry->set_ca_verified("up-root", false);
  const AuthDecision refused = decide(
      {soft_leaf(*inter, "dev-25", nullptr, "critical,digitalSignature"), der_of(inter->cert)});
  EXPECT_FALSE(refused.allowed);
  EXPECT_EQ(refused.rule, "ca-not-verified");
}

TEST_F(AuthDecisions, RefusesALeafWhoseOnlyGroupIsDisabled) {
  verify_ca("root");
  group("fleet", "root", "", false);
  const AuthDecision d = decide({leaf("int1", "dev-4")});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "group-disabled");
}

TEST_F(AuthDecisions, AnExpiredCaIsNamedAsSuchEvenWhenItsOnlyGroupIsDisabled) {
  verify_ca("root");
  group("fleet", "root", "", false);
  const AuthDecision d = decide({leaf("int1", "dev-4b")}, now + 4000 * kDay);  // past int1's expiry
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "ca-expired");
}

TEST_F(AuthDecisions, AllowsThroughAnEnabledGroupWhenTheIssuingCaIsAlsoInADisabledOne) {
  verify_ca("root");
  verify_ca("int1");
  group("old-line", "int1", "", false);
  group("fleet", "root");
  const AuthDecision d = decide({leaf("int1", "dev-5")});
  EXPECT_TRUE(d.allowed) << d.reason;
  EXPECT_EQ(d.enrollment, "fleet");
}

TEST_F(AuthDecisions, AllowsThroughTheSecondarySlotWhenOnlyItMatches) {
  auto other = make_soft_ca("Other Root", nullptr);
  add_external("other-root", other->cert, true);
  verify_ca("root");
  group("fleet", "other-root", "root");
  const AuthDecision d = decide({leaf("int1", "dev-6")});
  EXPECT_TRUE(d.allowed) << d.reason;
  EXPECT_EQ(d.slot, "secondary");
}

TEST_F(AuthDecisions, ExpiredPrimaryCaRefusesItsLeavesWhileTheValidSecondaryAllows) {
  // "old" was created three years ago for one year: expired now.
  FixedClock past(now - 3 * 365 * kDay);
  CaService old_cas(*h.registry, *h.token, h.policy, past, h.random);
  CaSpec spec;
  spec.name = "old";
  spec.issuer = "root";
  spec.subject = "/CN=Old Intermediate";
  spec.days = 365;
  old_cas.create_intermediate(spec);
  verify_ca("int1");
  h.registry->set_ca_verified("old", true);
  group("fleet", "old", "int1");
  const AuthDecision from_old = decide({leaf("old", "dev-7", now - 3 * 365 * kDay + kDay, 300)});
  EXPECT_FALSE(from_old.allowed);
  EXPECT_EQ(from_old.rule, "ca-expired");
  const AuthDecision from_new = decide({leaf("int1", "dev-7")});
  EXPECT_TRUE(from_new.allowed) << from_new.reason;
  EXPECT_EQ(from_new.slot, "secondary");
}

TEST_F(AuthDecisions, DisabledIndividualEnrollmentWinsOverAnEnabledGroup) {
  verify_ca("root");
  group("fleet", "root");
  const Der cert = leaf("int1", "dev-8");
  individual("dev-8", thumbprint_sha256(cert), "", false);
  const AuthDecision d = decide({cert});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "individual-disabled");
}

TEST_F(AuthDecisions, IndividualEnrollmentAllowsTheCertificateInEitherSlot) {
  const Der first = leaf("int1", "dev-9");
  const Der second = leaf("int1", "dev-9");
  individual("dev-9", thumbprint_sha256(first), thumbprint_sha256(second));
  EXPECT_EQ(decide({first}).slot, "primary");
  const AuthDecision d = decide({second});
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.rule, "individual-enrollment");
  EXPECT_EQ(d.slot, "secondary");
  EXPECT_EQ(decide({leaf("int1", "dev-9")}).rule, "individual-mismatch");
}

TEST_F(AuthDecisions, IndividualWithExpiredPrimaryAllowsOnlyTheValidSecondary) {
  const Der expired = leaf("int1", "dev-10", now - 400 * kDay, 30);
  const Der valid = leaf("int1", "dev-10");
  individual("dev-10", thumbprint_sha256(expired), thumbprint_sha256(valid));
  EXPECT_EQ(decide({expired}).rule, "expired");
  EXPECT_TRUE(decide({valid}).allowed);
}

TEST_F(AuthDecisions, RefusesARevokedCertificate) {
  verify_ca("root");
  group("fleet", "root");
  CaService& cas = *h.cas;
  const CaRecord int1 = ca("int1");
  Issuer issuer(int1, cas.load_key(int1), h.policy, 365, h.clock, h.random);
  EVP_PKEY* key = EVP_EC_gen("P-256");
  auto p = issuer.prepare(DeviceId::check(h.policy, "dev-11").value(), spki_of(key));
  EVP_PKEY_free(key);
  CertIntent intent{p->serial(),  "dev-11",        "int1",         "",       0,
                    p->subject(), p->not_before(), p->not_after(), p->tbs(), {}};
  h.registry->record_intents(std::span<const CertIntent>(&intent, 1));
  auto s = issuer.sign(std::move(*p));
  IssuedCert issued{s->serial, s->der, s->sha1, s->sha256};
  h.registry->record_issued(std::span<const IssuedCert>(&issued, 1));
  EXPECT_TRUE(decide({s->der}).allowed);
  // Behind the registry's back, through a connection of its own.
  test::raw_query(h.registry_path_for_tests(),
                  "UPDATE certificates SET state='revoked' WHERE serial='" + s->serial + "'");
  const AuthDecision d = decide({s->der});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "revoked");
}

TEST_F(AuthDecisions, RefusesWhenTheClaimedRegistrationIdIsNotTheCn) {
  verify_ca("root");
  group("fleet", "root");
  EXPECT_EQ(decide({leaf("int1", "dev-12")}, 0, "someone-else").rule, "registration-id-mismatch");
}

TEST_F(AuthDecisions, RefusesBeforeAndAfterTheLeafsValidity) {
  verify_ca("root");
  group("fleet", "root");
  // Issued for a time ten days ahead (the CA is valid from now on).
  const Der cert = leaf("int1", "dev-13", now + 10 * kDay, 30);
  EXPECT_EQ(decide({cert}, now + kDay).rule, "not-yet-valid");
  EXPECT_EQ(decide({cert}, now + 41 * kDay).rule, "expired");
  EXPECT_TRUE(decide({cert}, now + 39 * kDay).allowed);
}

TEST_F(AuthDecisions, ATimeBeforeEveryCertificateInTheChainIsNotYetValidNotExpired) {
  verify_ca("root");
  group("fleet", "root");
  const Der cert = leaf("int1", "dev-13b");
  for (const std::int64_t at : {std::int64_t{1}, now - 400 * kDay}) {
    const AuthDecision d = decide({cert, ca("int1").cert_der}, at);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.rule, "not-yet-valid") << d.reason;
  }
}

TEST_F(AuthDecisions, RefusesATamperedSignature) {
  verify_ca("root");
  group("fleet", "root");
  Der cert = leaf("int1", "dev-14");
  cert[cert.size() - 2] ^= 0x01;
  const AuthDecision d = decide({cert});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "chain-invalid");
}

// Verified signatures are remembered (a device presents its new certificate to DPS, then to the
// hub): the same certificate is admitted again, and one with the same TBS but another signature is
// still checked, and refused.
TEST_F(AuthDecisions, ATamperedSignatureIsRefusedAfterTheGenuineCertificateWasAdmitted) {
  verify_ca("root");
  group("fleet", "root");
  const Der genuine = leaf("int1", "dev-15");
  EXPECT_TRUE(decide({genuine}).allowed);
  EXPECT_TRUE(decide({genuine}).allowed);
  for (const std::size_t from_end : {2u, 12u, 30u}) {
    Der cert = genuine;
    cert[cert.size() - from_end] ^= 0x01;
    const AuthDecision d = decide({cert});
    EXPECT_FALSE(d.allowed) << from_end;
    EXPECT_EQ(d.rule, "chain-invalid") << from_end;
  }
  EXPECT_TRUE(decide({genuine}).allowed);
}

TEST_F(AuthDecisions, RefusesACaCertificatePresentedAsTheDevice) {
  verify_ca("root");
  group("fleet", "root");
  EXPECT_EQ(decide({ca("int1").cert_der}).rule, "chain-invalid");
}

// Found by fuzz_chain: with cA = TRUE but a keyUsage without keyCertSign, X509_check_ca says
// "not a CA", so OpenSSL's path allowed what the fast path refuses.
TEST_F(AuthDecisions, RefusesALeafWithCaTrueWhateverItsKeyUsageOnBothPaths) {
  auto root = make_soft_ca("Soft Root", nullptr);
  add_external("soft-root", root->cert, true);
  group("fleet", "soft-root");
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  fill_cert(cert, "dev-20", nullptr, root->cert, key, now - kDay, 365);
  add_ext(cert, root->cert, NID_basic_constraints, "critical,CA:TRUE");
  add_ext(cert, root->cert, NID_key_usage, "critical,digitalSignature");
  add_ext(cert, root->cert, NID_ext_key_usage, "clientAuth");
  ASSERT_GT(X509_sign(cert, root->key, EVP_sha256()), 0);
  const Der der = der_of(cert);
  X509_free(cert);
  EVP_PKEY_free(key);
  const AuthDecision d = decide({der});  // both paths, which must agree
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "chain-invalid");
  EXPECT_NE(d.reason.find("CA certificate"), std::string::npos) << d.reason;
}

// Found by fuzz_chain: the CN was required to be one string, not a device ID, so a chain to an
// enabled group admitted "dev 21/../x" (the broker checks IDs itself; `auth check` did not).
TEST_F(AuthDecisions, RefusesACnOutsideTheCloudsDeviceIdAlphabet) {
  auto root = make_soft_ca("Soft Root", nullptr);
  add_external("soft-root", root->cert, true);
  group("fleet", "soft-root");
  for (const char* cn : {"dev 21/../x", "dev\x01", "d\xC3\xA9v"}) {
    const AuthDecision d = decide({soft_leaf(*root, cn, nullptr, "critical,digitalSignature")});
    EXPECT_FALSE(d.allowed) << cn;
    EXPECT_EQ(d.rule, "registration-id-invalid") << cn;
  }
  EXPECT_TRUE(
      decide({soft_leaf(*root, "dev.21:a_b", nullptr, "critical,digitalSignature")}).allowed);
}

TEST_F(AuthDecisions, RefusesALeafFromACaThatNoGroupTrusts) {
  auto stranger = make_soft_ca("Stranger", nullptr);
  const AuthDecision d =
      decide({soft_leaf(*stranger, "dev-15", nullptr, "critical,digitalSignature"),
              der_of(stranger->cert)});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "no-enrollment");
}

TEST_F(AuthDecisions, EnforcesPathLengthOfTheIntermediate) {
  // int1 has pathLen 0: a CA below it is not a valid issuer. fleetsign refuses to create such a
  // CA (kCaConstraint), so this one is made by hand and signed with int1's token key.
  SoftCa too_deep;
  X509* int1 = X509_new();
  const Der int1_der = ca("int1").cert_der;
  const unsigned char* p = int1_der.data();
  d2i_X509(&int1, &p, static_cast<long>(int1_der.size()));
  fill_cert(too_deep.cert, "Too Deep", nullptr, int1, too_deep.key, now - kDay, 100);
  add_ext(too_deep.cert, int1, NID_basic_constraints, "critical,CA:TRUE");
  add_ext(too_deep.cert, int1, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(too_deep.cert, int1, NID_subject_key_identifier, "hash");
  ASSERT_GT(X509_sign(too_deep.cert, h.cas->load_key(ca("int1")).pkey(), EVP_sha256()), 0);
  X509_free(int1);
  verify_ca("root");
  group("fleet", "root");
  const AuthDecision d =
      decide({soft_leaf(too_deep, "dev-16", nullptr, "critical,digitalSignature"),
              der_of(too_deep.cert), ca("int1").cert_der});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "chain-invalid");
  EXPECT_NE(d.reason.find("path length"), std::string::npos) << d.reason;
}

TEST_F(AuthDecisions, EnforcesNameConstraintsOfAnUploadedCa) {
  // rfc822Name constraints also bind e-mail addresses in the subject DN (RFC 5280 4.2.1.10).
  auto root = make_soft_ca("Constrained Root", "critical,permitted;email:.allowed.example");
  add_external("constrained-root", root->cert, true);
  group("fleet", "constrained-root");
  const AuthDecision inside = decide({soft_leaf(
      *root, "dev-17", "emailAddress=ops@plant.allowed.example", "critical,digitalSignature")});
  EXPECT_TRUE(inside.allowed) << inside.reason;
  EXPECT_FALSE(inside.fast_path);  // constrained CAs always go to OpenSSL
  const AuthDecision outside = decide(
      {soft_leaf(*root, "dev-17b", "emailAddress=ops@evil.example", "critical,digitalSignature")});
  EXPECT_FALSE(outside.allowed);
  EXPECT_EQ(outside.rule, "chain-invalid");
}

TEST_F(AuthDecisions, RefusesALeafWhoseKeyUsageForbidsClientAuthentication) {
  auto root = make_soft_ca("Soft Root", nullptr);
  add_external("soft-root", root->cert, true);
  group("fleet", "soft-root");
  EXPECT_TRUE(decide({soft_leaf(*root, "dev-18", nullptr, "critical,digitalSignature")}).allowed);
  const AuthDecision d = decide({soft_leaf(*root, "dev-19", nullptr, "critical,keyEncipherment")});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "chain-invalid");
}

TEST_F(AuthDecisions, RefusesGarbageAsMalformed) {
  Authenticator auth(*h.registry);
  const Der junk{0x30, 0x03, 0x02, 0x01, 0x01};
  EXPECT_EQ(auth.check(std::vector<Der>{junk}, now).rule, "chain-malformed");
  EXPECT_EQ(auth.check(std::vector<Der>{}, now).rule, "chain-malformed");
}

// Issue 10 §4: an incident pins what the registry recorded. The intermediate's key is stolen, so
// a certificate signed with it (here: in the token, as the attacker holding the key would) proves
// nothing; only the exact recorded certificate from before the compromise is admitted, and only
// for the rotation methods.
class IncidentDecisions : public AuthDecisions {
 protected:
  void record(const Der& der, const std::string& id) {
    const CertSummary c = summarize_certificate(der);
    CertIntent intent;
    intent.serial = c.serial;
    intent.device_id = id;
    intent.ca_name = "int1";
    intent.subject = c.subject;
    intent.not_before = c.not_before;
    intent.not_after = c.not_after;
    intent.tbs_der = der;
    h.registry->record_intents(std::span<const CertIntent>(&intent, 1));
    const IssuedCert issued{c.serial, der, c.sha1, c.sha256};
    h.registry->record_issued(std::span<const IssuedCert>(&issued, 1));
  }
  std::int64_t open(std::int64_t compromised_at) {
    Incident i;
    i.scope_kind = "ca";
    i.scope = "int1";
    i.reason = "cACompromise";
    i.compromised_at = compromised_at;
    return h.registry->open_incident(i);
  }
};

TEST_F(IncidentDecisions, PinsTheRecordedCertificateAndRefusesForgeriesWithTheStolenKey) {
  verify_ca("root");
  group("fleet", "int1");
  const Der recorded = leaf("int1", "dev-40");
  record(recorded, "dev-40");
  const Der forged_same_id = leaf("int1", "dev-40");  // signed with int1's key, never recorded
  const Der forged_new_id = leaf("int1", "dev-41");
  EXPECT_TRUE(decide({forged_new_id}).allowed) << "before the incident the stolen key suffices";

  const std::int64_t id = open(now + 3600);
  const AuthDecision pinned = decide({recorded, ca("int1").cert_der});
  EXPECT_TRUE(pinned.allowed) << pinned.reason;
  EXPECT_EQ(pinned.rule, "incident-pinned");
  EXPECT_TRUE(pinned.rotation_only);
  for (const Der* forged : {&forged_same_id, &forged_new_id}) {
    const AuthDecision d = decide({*forged, ca("int1").cert_der});
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.rule, "incident-unrecorded") << d.reason;
  }
  // Recorded at or after the operator's compromise time: refused too.
  h.registry->close_incident(id, 0);
  const std::int64_t id2 = open(now - 3600);
  EXPECT_EQ(decide({recorded}).rule, "incident-after-compromise");
  // Closed with the CA marked revoked: nothing under it is admitted any more.
  h.registry->mark_incident_ca_revoked(id2, 0);
  h.registry->close_incident(id2, 0);
  EXPECT_EQ(decide({recorded}).rule, "ca-revoked");
  EXPECT_EQ(decide({forged_new_id}).rule, "ca-revoked");
  EXPECT_EQ(h.registry->list_incidents(true).size(), 0u);
  EXPECT_EQ(h.registry->list_incidents(false).size(), 2u);
  EXPECT_THROW(h.registry->mark_incident_ca_revoked(99, 0), Error);
}

TEST_F(IncidentDecisions, OneOpenIncidentPerScope) {
  open(now);
  EXPECT_THROW(open(now), Error);
}

}  // namespace
}  // namespace fleetsign::engine
