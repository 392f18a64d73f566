// The cloud's authentication decision, table-driven: every rule and the ties the issue names.
// Each case runs through both paths (fast path and OpenSSL's X509_verify_cert) and both must
// give the same decision and the same rule.
#include "auth_fixture.hpp"

namespace fleetsign::engine {
namespace {

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

}  // namespace
}  // namespace fleetsign::engine
