// The enrollment service, external CAs and self-signed device certificates, against a real token
// and a real registry file. Failure paths assert the exact ErrorCode.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "enrollment_support.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/issuance.hpp"

namespace fleetsign {
namespace {

using engine::Slot;
using testing::error_from;

class Enrollments : public ::testing::Test {
 protected:
  testing::TestHome th;
  engine::EnrollmentService svc{*th.registry, th.policy, th.clock};
  void SetUp() override { th.make_hierarchy(); }

  std::vector<std::string> audit_actions() {
    std::vector<std::string> out;
    for (const auto& e : th.registry->audit_log(1000)) out.push_back(e.action);
    return out;
  }
  bool audited(const std::string& action) {
    const auto a = audit_actions();
    return std::find(a.begin(), a.end(), action) != a.end();
  }
};

// --- audit details ------------------------------------------------------------------------------

// Names reach the audit log from the registry API too, whatever alphabet a service enforces: every
// detail must stay one valid JSON object holding the name as it was.
TEST_F(Enrollments, AuditDetailsAreValidJsonWhenANameHoldsAQuoteABackslashOrANewline) {
  const std::string odd = "ca \"quoted\" \\ and\nnewline";
  const auto made = testing::make_cert("Odd CA", true, 100);
  engine::CaRecord rec;
  rec.name = odd;
  rec.subject = "/CN=Odd CA";
  rec.key_type = "external-ec-p256";
  rec.cert_der = made.der;
  rec.sha1 = engine::thumbprint_sha1(made.der);
  rec.sha256 = engine::thumbprint_sha256(made.der);
  th.registry->add_ca(rec);
  th.registry->save_group(engine::EnrollmentGroup{"g\"1", true, odd, "int1", 0, 0},
                          "enrollment.group.create", true);
  engine::IndividualEnrollment ie;
  ie.registration_id = "dev\"1";
  ie.primary_sha256 = std::string(64, 'A');
  th.registry->save_individual(ie, "enrollment.individual.create", true);
  engine::import_external_ca(*th.registry, th.clock, "imported",
                             testing::make_cert("Sub \"CA\"", true, 100).der);
  std::size_t checked = 0;
  for (const auto& e : th.registry->audit_log(1000)) {
    if (e.detail.empty()) continue;
    Poco::JSON::Parser parser;
    Poco::JSON::Object::Ptr detail;
    ASSERT_NO_THROW(detail = parser.parse(e.detail).extract<Poco::JSON::Object::Ptr>())
        << e.action << ": " << e.detail;
    if (e.action == "enrollment.group.create" && e.subject == "g\"1") {
      EXPECT_EQ(detail->getValue<std::string>("primary_ca"), odd);
      ++checked;
    }
    if (e.action == "enrollment.individual.create") {
      EXPECT_EQ(detail->getValue<std::string>("primary_sha256"), std::string(64, 'A'));
      ++checked;
    }
    if (e.action == "ca.import") {
      EXPECT_EQ(detail->getValue<std::string>("subject"), "/CN=Sub \"CA\"");
      ++checked;
    }
  }
  EXPECT_EQ(checked, 3u);
}

// --- groups ------------------------------------------------------------------------------------

TEST_F(Enrollments, GroupCreateStoresSlotsAndAudits) {
  const auto g = svc.create_group("line-1", "int1", "root");
  EXPECT_EQ(g.primary_ca, "int1");
  EXPECT_EQ(g.secondary_ca, "root");
  EXPECT_TRUE(g.enabled);
  EXPECT_TRUE(audited("enrollment.group.create"));
}

TEST_F(Enrollments, GroupCreateRefusesBadInputWithExactCodes) {
  struct Case {
    std::string name, primary, secondary;
    ErrorCode code;
  };
  const std::vector<Case> cases = {
      {"a/b", "int1", "", ErrorCode::kInvalidArgument},
      {"has space", "int1", "", ErrorCode::kInvalidArgument},
      {"", "int1", "", ErrorCode::kInvalidArgument},
      {std::string(129, 'g'), "int1", "", ErrorCode::kInvalidArgument},
      {"ok", "no-such-ca", "", ErrorCode::kNotFound},
      {"ok", "int1", "no-such-ca", ErrorCode::kNotFound},
      {"ok", "int1", "int1", ErrorCode::kInvalidArgument},
      {"ok", "", "", ErrorCode::kInvalidArgument},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(error_from([&] { svc.create_group(c.name, c.primary, c.secondary); }).code(), c.code)
        << c.name << " " << c.primary << " " << c.secondary;
  }
  EXPECT_TRUE(th.registry->list_groups().empty());
  svc.create_group("dots.and_underscores-ok", "int1", "");
  EXPECT_EQ(error_from([&] { svc.create_group("dots.and_underscores-ok", "int1", ""); }).code(),
            ErrorCode::kAlreadyExists);
}

TEST_F(Enrollments, SlotCaMustHoldACaCertificate) {
  engine::CaRecord fake = th.cas->get("int1");
  fake.name = "leaf-as-ca";
  fake.cert_der = testing::make_cert("leaf", false, 30).der;
  fake.sha256 = engine::thumbprint_sha256(fake.cert_der);
  th.registry->add_ca(fake);
  const Error e = error_from([&] { svc.create_group("g", "leaf-as-ca", ""); });
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(std::string(e.what()).find("leaf-as-ca"), std::string::npos);
}

TEST_F(Enrollments, SetAndClearSlotsAreAuditedAndTheLastSlotStays) {
  svc.create_group("g", "int1", "");
  EXPECT_EQ(svc.set_group_slot("g", Slot::kSecondary, "root").secondary_ca, "root");
  EXPECT_EQ(error_from([&] { svc.set_group_slot("g", Slot::kPrimary, "root"); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(svc.clear_group_slot("g", Slot::kPrimary).primary_ca, "");
  EXPECT_EQ(error_from([&] { svc.clear_group_slot("g", Slot::kSecondary); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_from([&] { svc.set_group_slot("nope", Slot::kPrimary, "root"); }).code(),
            ErrorCode::kNotFound);
  EXPECT_TRUE(audited("enrollment.group.set-slot"));
  EXPECT_TRUE(audited("enrollment.group.clear-slot"));
}

TEST_F(Enrollments, DisableAndEnableAreRecordedInTheAuditLog) {
  svc.create_group("g", "int1", "");
  EXPECT_FALSE(svc.set_group_enabled("g", false).enabled);
  EXPECT_FALSE(th.registry->find_group("g")->enabled);
  EXPECT_TRUE(svc.set_group_enabled("g", true).enabled);
  const auto log = th.registry->audit_log(10);
  ASSERT_GE(log.size(), 2u);
  EXPECT_EQ(log[0].action, "enrollment.group.enable");  // newest first
  EXPECT_EQ(log[1].action, "enrollment.group.disable");
  EXPECT_EQ(log[1].subject, "g");
  EXPECT_NE(log[1].detail.find("\"enabled\":false"), std::string::npos);
}

TEST_F(Enrollments, SlotByCertificateImportsAnExternalCaOnceAndReusesKnownOnes) {
  svc.create_group("g", "int1", "");
  const auto supplier = testing::make_cert("Supplier Root", true, 3650);
  const auto g = svc.set_group_slot_cert("g", Slot::kSecondary, supplier.der);
  const auto ca = th.registry->find_ca(g.secondary_ca);
  ASSERT_TRUE(ca);
  EXPECT_TRUE(engine::is_external(*ca));
  EXPECT_FALSE(ca->verified);
  EXPECT_EQ(ca->key_type, "external-ec-p256");
  EXPECT_EQ(g.secondary_ca.rfind("g-secondary-", 0), 0u);
  // Our own CA's certificate given as a file is the registry CA, not a second copy.
  svc.create_group("h", "int1", "");
  EXPECT_EQ(
      svc.set_group_slot_cert("h", Slot::kSecondary, th.cas->get("root").cert_der).secondary_ca,
      "root");
  EXPECT_EQ(th.registry->list_cas().size(), 3u);
  EXPECT_EQ(error_from([&] {
              svc.set_group_slot_cert("h", Slot::kPrimary, testing::make_cert("x", false, 9).der);
            }).code(),
            ErrorCode::kInvalidArgument);
}

// --- individual enrollments -------------------------------------------------------------------

TEST(Thumbprints, AreNormalisedOrRefused) {
  const std::string hex(64, 'a');
  EXPECT_EQ(engine::normalize_thumbprint(hex), std::string(64, 'A'));
  std::string colons;
  for (int i = 0; i < 32; ++i) colons += (i ? ":" : "") + std::string("0f");
  EXPECT_EQ(engine::normalize_thumbprint(colons), [] {
    std::string s;
    for (int i = 0; i < 32; ++i) s += "0F";
    return s;
  }());
  for (const std::string& bad :
       {std::string(63, 'a'), std::string(65, 'a'), std::string(63, 'a') + "g", std::string(""),
        std::string(40, 'a')}) {
    EXPECT_EQ(error_from([&] { engine::normalize_thumbprint(bad); }).code(),
              ErrorCode::kInvalidArgument)
        << bad;
  }
}

TEST_F(Enrollments, IndividualWithCertificateKeepsItAndItsThumbprint) {
  const auto cert = testing::make_cert("dev-1", false, 30);
  const auto ie = svc.create_individual("dev-1", engine::credential_from_cert("dev-1", cert.der),
                                        engine::credential_from_thumbprint(std::string(64, 'b')));
  EXPECT_EQ(ie.primary_cert, cert.der);
  EXPECT_EQ(ie.primary_sha256, engine::thumbprint_sha256(cert.der));
  EXPECT_TRUE(ie.secondary_cert.empty());
  EXPECT_EQ(ie.secondary_sha256, std::string(64, 'B'));
  EXPECT_TRUE(audited("enrollment.individual.create"));
}

TEST_F(Enrollments, IndividualRefusesCnMismatchCaCertsBadIdsAndDuplicates) {
  const auto cert = testing::make_cert("dev-1", false, 30);
  const Error mismatch = error_from([&] { engine::credential_from_cert("dev-2", cert.der); });
  EXPECT_EQ(mismatch.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(std::string(mismatch.what()).find("dev-2"), std::string::npos);
  EXPECT_EQ(error_from([&] {
              engine::credential_from_cert("Root", testing::make_cert("Root", true, 9).der);
            }).code(),
            ErrorCode::kInvalidArgument);
  const auto thumb = engine::credential_from_thumbprint(std::string(64, 'c'));
  EXPECT_EQ(error_from([&] { svc.create_individual("bad id", thumb, std::nullopt); }).code(),
            ErrorCode::kDeviceIdInvalid);
  // The service re-checks the CN even when handed a credential built for another ID.
  EXPECT_EQ(error_from([&] {
              svc.create_individual("dev-2", engine::credential_from_cert("dev-1", cert.der),
                                    std::nullopt);
            }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_from([&] { svc.create_individual("dev-3", thumb, thumb); }).code(),
            ErrorCode::kInvalidArgument);
  svc.create_individual("dev-3", thumb, std::nullopt);
  EXPECT_EQ(error_from([&] { svc.create_individual("dev-3", thumb, std::nullopt); }).code(),
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(error_from([&] { svc.individual("dev-9"); }).code(), ErrorCode::kNotFound);
}

TEST_F(Enrollments, IndividualSlotsDisableAndEnableAreAudited) {
  svc.create_individual("dev-1", engine::credential_from_thumbprint(std::string(64, 'a')),
                        std::nullopt);
  const auto second =
      engine::credential_from_cert("dev-1", testing::make_cert("dev-1", false, 30).der);
  EXPECT_EQ(svc.set_individual_slot("dev-1", Slot::kSecondary, second).secondary_sha256,
            second.sha256);
  EXPECT_TRUE(svc.clear_individual_slot("dev-1", Slot::kPrimary).primary_sha256.empty());
  EXPECT_EQ(error_from([&] { svc.clear_individual_slot("dev-1", Slot::kSecondary); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_FALSE(svc.set_individual_enabled("dev-1", false).enabled);
  EXPECT_TRUE(svc.set_individual_enabled("dev-1", true).enabled);
  for (const char* action : {"enrollment.individual.set-slot", "enrollment.individual.clear-slot",
                             "enrollment.individual.disable", "enrollment.individual.enable"}) {
    EXPECT_TRUE(audited(action)) << action;
  }
}

// --- external CAs -------------------------------------------------------------------------------

TEST_F(Enrollments, ImportedCaFindsItsParentAndStartsUnverified) {
  const auto root = testing::make_cert("Supplier Root", true, 3650);
  const auto inter = testing::make_cert("Supplier Intermediate", true, 1000, &root);
  engine::import_external_ca(*th.registry, th.clock, "sup-root", root.der);
  const auto rec = engine::import_external_ca(*th.registry, th.clock, "sup-int", inter.der);
  EXPECT_EQ(rec.parent, "sup-root");
  EXPECT_EQ(rec.key_uri, "");
  EXPECT_FALSE(rec.verified);
  EXPECT_TRUE(audited("ca.import"));
  // Proof of possession works as for our own CAs: CN = code, signed by the CA's key.
  const auto proof = testing::make_cert("CODE-42", false, 1, &inter);
  engine::verify_possession(*th.registry, th.clock, "sup-int", "CODE-42", proof.der);
  EXPECT_TRUE(th.registry->find_ca("sup-int")->verified);
}

TEST_F(Enrollments, ImportRefusesLeavesDuplicatesAndTakenNames) {
  const auto root = testing::make_cert("Supplier Root", true, 3650);
  EXPECT_EQ(error_from([&] {
              engine::import_external_ca(*th.registry, th.clock, "x",
                                         testing::make_cert("d", false, 9).der);
            }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_from([&] {
              engine::import_external_ca(*th.registry, th.clock, "int1", root.der);
            }).code(),
            ErrorCode::kAlreadyExists);
  engine::import_external_ca(*th.registry, th.clock, "sup", root.der);
  EXPECT_EQ(error_from([&] {
              engine::import_external_ca(*th.registry, th.clock, "sup2", root.der);
            }).code(),
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(error_from([&] {
              engine::import_external_ca(*th.registry, th.clock, "bad", engine::Der{1, 2, 3});
            }).code(),
            ErrorCode::kCertificateMalformed);
}

TEST_F(Enrollments, NothingSignsWithAnExternalCa) {
  const auto root = testing::make_cert("Supplier Root", true, 3650);
  const auto ext = engine::import_external_ca(*th.registry, th.clock, "sup", root.der);
  const Error e = error_from([&] { th.cas->load_key(ext); });
  EXPECT_EQ(e.code(), ErrorCode::kKeyNotFound);
  EXPECT_EQ(std::string(e.what()), "CA sup is external: its key is not in this token");
  engine::SingleIssueRequest request{"sup", testing::csr_der("dev-1"), {}, false};
  EXPECT_EQ(error_from([&] {
              (void)engine::issue_single(*th.registry, *th.cas, th.policy, th.clock, th.random,
                                         request);
            }).code(),
            ErrorCode::kKeyNotFound);
  engine::CaSpec spec;
  spec.name = "under-sup";
  spec.issuer = "sup";
  spec.subject = "/CN=Under Supplier";
  spec.days = 100;
  EXPECT_EQ(error_from([&] { th.cas->create_intermediate(spec); }).code(), ErrorCode::kKeyNotFound);
  EXPECT_EQ(error_from([&] { th.cas->make_verification_cert("sup", "CODE"); }).code(),
            ErrorCode::kKeyNotFound);
  EXPECT_EQ(th.registry->count_certs("", engine::CertState::kIntent), 0);
}

// --- which group a CA belongs to ---------------------------------------------------------------

TEST_F(Enrollments, GroupIndexFollowsTheHierarchyAndPrefersTheNearestSlot) {
  svc.create_group("by-root", "root", "");
  {
    const auto index = engine::GroupIndex::load(*th.registry);
    ASSERT_NE(index.group_of_ca("int1"), nullptr);
    EXPECT_EQ(index.group_of_ca("int1")->name,
              "by-root");  // the intermediate's chain leads to root
    EXPECT_EQ(index.cas_of_group("by-root"), (std::vector<std::string>{"root", "int1"}));
  }
  svc.create_group("by-int", "int1", "");
  const auto index = engine::GroupIndex::load(*th.registry);
  EXPECT_EQ(index.group_of_ca("int1")->name, "by-int");
  EXPECT_EQ(index.group_of_ca("root")->name, "by-root");
  EXPECT_EQ(index.group_of_ca("unknown"), nullptr);
  EXPECT_EQ(index.cas_of_group("by-int"), (std::vector<std::string>{"int1"}));
  EXPECT_EQ(error_from([&] { index.cas_of_group("nope"); }).code(), ErrorCode::kNotFound);
}

// --- self-signed device certificates -----------------------------------------------------------

TEST_F(Enrollments, ASelfSignedCertificateIsRecordedAsAnIntentThenIssuedUnderItsSerial) {
  const auto device = engine::make_self_signed_device(*th.registry, th.policy, th.clock, th.random,
                                                      "ss-rec", policy::KeyAlgorithm::kEcP256, 30);
  const auto rec = th.registry->find_ca_cert(device.serial);
  ASSERT_TRUE(rec.has_value()) << "the serial of a self-signed certificate is recorded";
  EXPECT_EQ(rec->kind, "self-signed");
  EXPECT_EQ(rec->subject_name, "ss-rec");
  EXPECT_EQ(rec->state, "issued");
  EXPECT_EQ(rec->der, device.cert);
}

TEST_F(Enrollments, SelfSignedCertificateVerifiesItselfAndItsThumbprintMatchesOpenssl) {
  const auto device = engine::make_self_signed_device(*th.registry, th.policy, th.clock, th.random,
                                                      "ss-1", policy::KeyAlgorithm::kEcP256, 30);
  const auto files = engine::write_self_signed_files(th.dir.path() / "out", device);
  const auto s = engine::summarize_certificate(device.cert);
  EXPECT_EQ(s.common_name, "ss-1");
  EXPECT_FALSE(s.is_ca);
  EXPECT_EQ(s.subject, s.issuer);
  EXPECT_EQ((std::filesystem::status(files[1]).permissions() & std::filesystem::perms::all),
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  std::string out;
  ASSERT_EQ(testing::run("openssl verify -x509_strict -purpose sslclient -CAfile '" + files[0] +
                             "' '" + files[0] + "'",
                         &out),
            0)
      << out;
  ASSERT_EQ(testing::run("openssl x509 -in '" + files[0] + "' -noout -fingerprint -sha256", &out),
            0);
  std::string hex;
  for (char c : out.substr(out.find('=') + 1)) {
    if (std::isxdigit(static_cast<unsigned char>(c))) hex += c;
  }
  EXPECT_EQ(hex, device.sha256);
  ASSERT_EQ(testing::run(
                "openssl x509 -in '" + files[0] + "' -noout -ext extendedKeyUsage,keyUsage", &out),
            0);
  EXPECT_NE(out.find("TLS Web Client Authentication"), std::string::npos);
  EXPECT_NE(out.find("Digital Signature"), std::string::npos);
  std::string from_key, from_cert;
  ASSERT_EQ(testing::run("openssl pkey -in '" + files[1] + "' -pubout", &from_key), 0);
  ASSERT_EQ(testing::run("openssl x509 -in '" + files[0] + "' -noout -pubkey", &from_cert), 0);
  EXPECT_EQ(from_key, from_cert);
  EXPECT_TRUE(audited("cert.self-signed"));
  // It can back an individual enrollment directly.
  EXPECT_NO_THROW(svc.create_individual("ss-1", engine::credential_from_cert("ss-1", device.cert),
                                        std::nullopt));
}

TEST_F(Enrollments, SelfSignedRefusesBadIdsAndValidity) {
  auto make = [&](const std::string& id, std::optional<int> days) {
    return error_from([&] {
      engine::make_self_signed_device(*th.registry, th.policy, th.clock, th.random, id,
                                      policy::KeyAlgorithm::kEcP256, days);
    });
  };
  EXPECT_EQ(make("bad id", 30).code(), ErrorCode::kDeviceIdInvalid);
  EXPECT_EQ(make("ok", 0).code(), ErrorCode::kInvalidArgument);
  EXPECT_NO_THROW(engine::make_self_signed_device(*th.registry, th.policy, th.clock, th.random,
                                                  "ok", policy::KeyAlgorithm::kEcP256,
                                                  std::nullopt));
}

}  // namespace
}  // namespace fleetsign
