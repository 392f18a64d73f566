// Registry against a real SQLite file in a fresh temporary directory per test (PostgreSQL on the
// pg.* run); intents, certificates and batches are in registry_issuance_test.cpp.
#include "fleetsign/engine/registry.hpp"

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "fleetsign/error.hpp"
#include "registry_backend.hpp"
#include "registry_test_support.hpp"

namespace fleetsign::engine {
namespace {

namespace fs = std::filesystem;
namespace kw = Poco::Data::Keywords;

using namespace regtest;  // NOLINT: the shared builders

TEST(Registry, CreatesSchemaAtCurrentVersion) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  EXPECT_EQ(reg->schema_version(), Registry::kSchemaVersion);
  // 8: CRLs, 9: incidents, 10: key hashes + blocklist, 11: key identity, 12: task error codes,
  // 13: operators, 14: batch shares and leases (workers), 15: job tasks shared by runners
  EXPECT_EQ(Registry::kSchemaVersion, 16);

  FLEETSIGN_SQLITE_ONLY();  // the rest reads SQLite's journal mode
  auto raw = raw_session(dir.db());
  std::string mode;
  raw << "PRAGMA journal_mode", kw::into(mode), kw::now;
  EXPECT_EQ(mode, "wal");
  int tables = 0;
  raw << "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN "
         "('schema_version', 'cas', 'certificates', 'batches', 'audit')",
      kw::into(tables), kw::now;
  EXPECT_EQ(tables, 5);
}

// v4 widened the kinds of non-device certificates (the broker's TLS certificates) by rebuilding
// the table; what v3 recorded survives and the new kinds are accepted, others still refused.
TEST(Registry, TlsCertificatesOfFleetsignsOwnEndpointsAreRecordedLikeCaCertificates) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  for (const char* kind : {"verification", "tls-server", "tls-client"}) {
    CaCertIntent intent;
    intent.serial = std::string("AB") + kind;
    intent.kind = kind;
    intent.subject_name = "broker";
    intent.issuer_ca = "root";
    intent.tbs_der = {1, 2, 3};
    reg->record_ca_cert_intent(intent);
    reg->record_ca_cert_issued(intent.serial, {4, 5, 6});
    const auto found = reg->find_ca_cert(intent.serial);
    ASSERT_TRUE(found) << kind;
    EXPECT_EQ(found->kind, kind);
  }
  CaCertIntent bad;
  bad.serial = "CD";
  bad.kind = "device";
  bad.subject_name = "x";
  bad.issuer_ca = "root";
  EXPECT_THROW(reg->record_ca_cert_intent(bad), Error);
}

TEST(Registry, OperatorsAreFoundByCertificateUntilRemovedAndANameIsReusedOnlyAfterThat) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  OperatorRecord op;
  op.name = "alice";
  op.role = OperatorRole::kFactory;
  op.groups = {"line-1", "line \"2\""};
  op.ca_name = "operators";
  op.serial = "01AB";
  op.sha256 = std::string(64, 'A');
  op.not_after = kNow + kYear;
  reg->add_operator(op);
  const auto found = reg->find_operator_by_cert(op.sha256);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->name, "alice");
  EXPECT_EQ(found->role, OperatorRole::kFactory);
  EXPECT_EQ(found->groups, op.groups);
  EXPECT_FALSE(reg->find_operator_by_cert(std::string(64, 'B')).has_value());

  OperatorRecord again = op;
  again.sha256 = std::string(64, 'C');
  EXPECT_EQ(code_of([&] { reg->add_operator(again); }), ErrorCode::kAlreadyExists);
  reg->remove_operator("alice", kNow + 10);
  EXPECT_FALSE(reg->find_operator_by_cert(op.sha256).has_value());
  EXPECT_EQ(code_of([&] { reg->remove_operator("alice", kNow + 11); }), ErrorCode::kNotFound);
  reg->add_operator(again);  // the name is free again; the old certificate stays refused
  EXPECT_TRUE(reg->find_operator_by_cert(again.sha256).has_value());
  EXPECT_FALSE(reg->find_operator_by_cert(op.sha256).has_value());
  const auto all = reg->list_operators();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].removed_at, kNow + 10);
  EXPECT_EQ(all[1].removed_at, 0);
  // Both changes are in the audit log.
  int adds = 0, removes = 0;
  for (const auto& e : reg->audit_log(100)) {
    adds += e.action == "operator.add";
    removes += e.action == "operator.remove";
  }
  EXPECT_EQ(adds, 2);
  EXPECT_EQ(removes, 1);
}

TEST(Registry, ReopeningKeepsCommittedData) {
  TempDir dir;
  {
    auto reg = Registry::open(dir.db());
    reg->add_ca(ca("root", "", 1));
    const std::vector<CertIntent> intents{intent(1)};
    reg->record_intents(intents);
  }
  auto reg = Registry::open(dir.db());
  EXPECT_EQ(reg->schema_version(), Registry::kSchemaVersion);
  ASSERT_TRUE(reg->find_ca("root"));
  const auto cert = reg->find_cert(serial_of(1));
  ASSERT_TRUE(cert);
  EXPECT_EQ(cert->state, CertState::kIntent);
}

TEST(Registry, DatabaseFromNewerSchemaIsRefused) {
  FLEETSIGN_SQLITE_ONLY();  // writes the version through a raw SQLite connection
  TempDir dir;
  {
    auto raw = raw_session(dir.db());
    raw << "CREATE TABLE schema_version (version BIGINT NOT NULL)", kw::now;
    raw << "INSERT INTO schema_version (version) VALUES (99)", kw::now;
  }
  EXPECT_EQ(code_of([&] { Registry::open(dir.db()); }), ErrorCode::kSchemaTooNew);
}

TEST(Registry, UnwritableLocationIsRegistryErrorNamingTheFile) {
  try {
    Registry::open("/nonexistent-dir/x/registry.db");
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kRegistryError);
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/x/registry.db"), std::string::npos);
  }
}

TEST(Registry, AddsFindsAndListsCasByCreationTime) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->add_ca(ca("root", "", 100));
  reg->add_ca(ca("issuing", "root", 200));

  const auto root = reg->find_ca("root");
  ASSERT_TRUE(root);
  EXPECT_EQ(root->parent, "");
  EXPECT_EQ(root->cert_der, (std::vector<std::uint8_t>{0x30, 0x03, 0x01, 0x02, 0x03}));
  EXPECT_EQ(root->key_uri, "pkcs11:token=fleet;object=root");
  EXPECT_EQ(root->not_after, kNow + 10 * kYear);
  EXPECT_EQ(root->created_at, 100);
  EXPECT_FALSE(root->verified);
  EXPECT_FALSE(reg->find_ca("nope"));

  const auto all = reg->list_cas();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "root");
  EXPECT_EQ(all[1].name, "issuing");
  EXPECT_EQ(all[1].parent, "root");

  reg->set_ca_verified("issuing", true);
  EXPECT_TRUE(reg->find_ca("issuing")->verified);
  EXPECT_EQ(code_of([&] { reg->set_ca_verified("nope", true); }), ErrorCode::kNotFound);
}

TEST(Registry, DuplicateCaNameIsAlreadyExists) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->add_ca(ca("root", "", 1));
  try {
    reg->add_ca(ca("root", "", 2));
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kAlreadyExists);
    EXPECT_NE(std::string(e.what()).find("root"), std::string::npos) << e.what();
  }
  EXPECT_EQ(reg->find_ca("root")->created_at, 1);
}

TEST(Registry, CaWithUnknownParentIsRefused) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  EXPECT_EQ(code_of([&] { reg->add_ca(ca("issuing", "ghost", 1)); }), ErrorCode::kRegistryError);
  EXPECT_FALSE(reg->find_ca("issuing"));
}

TEST(Registry, IntentsThenIssuedBecomeIssuedCertificates) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  const std::vector<CertIntent> intents{intent(1), intent(2)};
  reg->record_intents(intents);

  auto cert = reg->find_cert(serial_of(1));
  ASSERT_TRUE(cert);
  EXPECT_EQ(cert->state, CertState::kIntent);
  EXPECT_EQ(cert->der, intents[0].tbs_der);  // the TBS while an intent
  EXPECT_EQ(cert->device_id, "dev-1");
  EXPECT_EQ(cert->lineage.operator_name, "alice");
  EXPECT_EQ(cert->lineage.site, "site-a");
  EXPECT_GT(cert->created_at, 0);

  const std::vector<IssuedCert> certs{issued(1), issued(2)};
  reg->record_issued(certs);
  cert = reg->find_cert(serial_of(2));
  ASSERT_TRUE(cert);
  EXPECT_EQ(cert->state, CertState::kIssued);
  EXPECT_EQ(cert->der, certs[1].der);
  EXPECT_EQ(cert->sha1, "AA2");
  EXPECT_EQ(cert->sha256, "BB2");
  EXPECT_EQ(cert->not_after, kNow + kYear);
  EXPECT_EQ(reg->count_certs("b1", CertState::kIssued), 2);
  EXPECT_EQ(reg->count_certs("b1", CertState::kIntent), 0);
}

TEST(Registry, IssuingASerialNotInIntentStateWritesNothing) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  const std::vector<CertIntent> intents{intent(1), intent(2)};
  reg->record_intents(intents);
  reg->record_issued(std::vector<IssuedCert>{issued(1)});

  // 2 is a valid intent, 1 is already issued: the whole call must be undone.
  try {
    reg->record_issued(std::vector<IssuedCert>{issued(2), issued(1)});
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kRegistryError);
    EXPECT_NE(std::string(e.what()).find(serial_of(1) + " is issued"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(reg->find_cert(serial_of(2))->state, CertState::kIntent);

  // A serial that was never an intent.
  EXPECT_EQ(code_of([&] {
              reg->record_issued(std::vector<IssuedCert>{issued(2), issued(9)});
            }),
            ErrorCode::kRegistryError);
  EXPECT_EQ(reg->find_cert(serial_of(2))->state, CertState::kIntent);
  EXPECT_FALSE(reg->find_cert(serial_of(9)));

  // The registry stays usable after a rolled-back call.
  reg->record_issued(std::vector<IssuedCert>{issued(2)});
  EXPECT_EQ(reg->find_cert(serial_of(2))->state, CertState::kIssued);
}

TEST(Registry, DuplicateSerialWithinOneCallWritesNothing) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  EXPECT_EQ(code_of([&] {
              reg->record_intents(std::vector{intent(1), intent(2), intent(1)});
            }),
            ErrorCode::kAlreadyExists);
  EXPECT_FALSE(reg->find_cert(serial_of(1)));
  EXPECT_FALSE(reg->find_cert(serial_of(2)));
}

TEST(Registry, IntentWithTakenSerialWritesNothing) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->record_intents(std::vector{intent(1)});
  reg->abandon_intents("b1");  // an abandoned serial is still taken

  try {
    reg->record_intents(std::vector{intent(3), intent(1, "b2"), intent(4)});
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kAlreadyExists);
    EXPECT_NE(std::string(e.what()).find("0x" + serial_of(1)), std::string::npos) << e.what();
  }
  EXPECT_FALSE(reg->find_cert(serial_of(3)));
  EXPECT_FALSE(reg->find_cert(serial_of(4)));
  EXPECT_EQ(reg->find_cert(serial_of(1))->batch_id, "b1");
}

TEST(Registry, AbandonIntentsMarksOnlyThatBatchsIntents) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->record_intents(std::vector{intent(1, "b1"), intent(2, "b1"), intent(3, "b1")});
  reg->record_intents(std::vector{intent(4, "b2")});
  reg->record_issued(std::vector{issued(1)});

  EXPECT_EQ(reg->abandon_intents("b1"), 2);
  EXPECT_EQ(reg->find_cert(serial_of(1))->state, CertState::kIssued);
  EXPECT_EQ(reg->find_cert(serial_of(2))->state, CertState::kAbandoned);
  EXPECT_EQ(reg->find_cert(serial_of(3))->state, CertState::kAbandoned);
  EXPECT_EQ(reg->find_cert(serial_of(4))->state, CertState::kIntent);
  EXPECT_EQ(reg->count_certs("", CertState::kAbandoned), 2);
  EXPECT_EQ(reg->abandon_intents("b1"), 0);
  // An abandoned serial can no longer be issued.
  EXPECT_EQ(code_of([&] { reg->record_issued(std::vector{issued(2)}); }),
            ErrorCode::kRegistryError);
}

TEST(Registry, AuditEntriesAreAppendedAndReadNewestFirst) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->audit("ca.create", "root", "ec-p256");
  reg->audit("batch.start", "batch-a", "{}");
  reg->audit("batch.finish", "batch-a", "issued=10");

  const auto log = reg->audit_log(2);
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[0].action, "batch.finish");
  EXPECT_EQ(log[1].action, "batch.start");
  EXPECT_GT(log[0].id, log[1].id);
  EXPECT_GT(log[0].at, 0);
  EXPECT_FALSE(log[0].actor.empty());
  EXPECT_EQ(reg->audit_log(0).size(), 3u);
}

TEST(Registry, AuditLogRefusesUpdateAndDelete) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->audit("ca.create", "root", "");

  FLEETSIGN_SQLITE_ONLY();  // tests/pg checks the PostgreSQL trigger
  auto raw = raw_session(dir.db());
  EXPECT_THROW((raw << "UPDATE audit SET detail = 'forged'", kw::now), Poco::Exception);
  EXPECT_THROW((raw << "DELETE FROM audit", kw::now), Poco::Exception);
  try {
    raw << "DELETE FROM audit", kw::now;
  } catch (const Poco::Exception& e) {
    EXPECT_NE(e.displayText().find("append-only"), std::string::npos) << e.displayText();
  }
  const auto log = reg->audit_log(0);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].detail, "");
}

}  // namespace
}  // namespace fleetsign::engine
