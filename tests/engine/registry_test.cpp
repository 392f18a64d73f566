// Registry against a real SQLite file in a fresh temporary directory per test.
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

namespace fleetsign::engine {
namespace {

namespace fs = std::filesystem;
namespace kw = Poco::Data::Keywords;

constexpr std::int64_t kNow = 1'700'000'000;
constexpr std::int64_t kYear = 365 * 24 * 3600;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "registry_test.XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    m_path = pattern;
  }
  TempDir(const TempDir&) = delete;  // owns the directory
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(m_path, ignored);
  }
  // The registry under test: this directory's SQLite file, or (FLEETSIGN_TEST_REGISTRY=postgresql)
  // one fresh PostgreSQL database per TempDir.
  fs::path db() const {
    if (m_location.empty()) m_location = test::test_registry_location(m_path / "registry.db");
    return m_location;
  }

 private:
  fs::path m_path;
  mutable std::string m_location;
};

// A second, independent connection: proves what is on disk, not what the Registry caches.
Poco::Data::Session raw_session(const fs::path& file) {
  Poco::Data::SQLite::Connector::registerConnector();
  return Poco::Data::Session("SQLite", file.string());
}

template <typename F>
ErrorCode code_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return ErrorCode::kOk;
}

std::string serial_of(int n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "7F%014X", n);
  return buf;
}

CertIntent intent(int n, const std::string& batch = "b1", const std::string& device = "") {
  CertIntent i;
  i.serial = serial_of(n);
  i.device_id = device.empty() ? "dev-" + std::to_string(n) : device;
  i.ca_name = "issuing";
  i.batch_id = batch;
  i.seq = n;
  i.subject = "CN=" + i.device_id;
  i.not_before = kNow;
  i.not_after = kNow + kYear;
  i.tbs_der = {0x30, 0x01, static_cast<std::uint8_t>(n)};
  i.lineage = {"lot-7", "line-2", "site-a", "alice"};
  return i;
}

IssuedCert issued(int n) {
  return {serial_of(n),
          {0x30, 0x82, static_cast<std::uint8_t>(n), 0xFF},
          "AA" + std::to_string(n),
          "BB" + std::to_string(n)};
}

CaRecord ca(const std::string& name, const std::string& parent, std::int64_t created_at) {
  CaRecord c;
  c.name = name;
  c.parent = parent;
  c.subject = "CN=" + name;
  c.key_uri = "pkcs11:token=fleet;object=" + name;
  c.key_type = "ec-p256";
  c.cert_der = {0x30, 0x03, 0x01, 0x02, 0x03};
  c.not_before = kNow;
  c.not_after = kNow + 10 * kYear;
  c.sha1 = "SHA1" + name;
  c.sha256 = "SHA256" + name;
  c.created_at = created_at;
  return c;
}

TEST(Registry, CreatesSchemaAtCurrentVersion) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  EXPECT_EQ(reg->schema_version(), Registry::kSchemaVersion);
  // 8: CRLs, 9: incidents, 10: key hashes + blocklist, 11: key identity, 12: task error codes,
  // 13: operators, 14: batch shares and leases (workers)
  EXPECT_EQ(Registry::kSchemaVersion, 14);

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

TEST(Registry, DevicesWithValidCertRespectsExpiryAndStateAcrossChunks) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  // 1200 devices: more than two IN-list chunks.
  std::vector<CertIntent> intents;
  std::vector<IssuedCert> certs;
  for (int n = 0; n < 1200; ++n) {
    intents.push_back(intent(n));
    if (n % 3 == 0) {
      intents.back().not_after = kNow - 1;  // expired
    }
    if (n % 3 != 2) {
      certs.push_back(issued(n));  // every third stays an intent
    }
  }
  reg->record_intents(intents);
  reg->record_issued(certs);

  std::vector<std::string> ids;
  for (int n = 1199; n >= 0; --n) {
    ids.push_back("dev-" + std::to_string(n));
  }
  ids.push_back("unknown-device");
  const auto valid = reg->devices_with_valid_cert(ids, kNow);
  ASSERT_EQ(valid.size(), 400u);
  for (const auto& id : valid) {
    EXPECT_EQ(std::stoi(id.substr(4)) % 3, 1) << id;
  }
  EXPECT_EQ(valid.front(), "dev-1198");  // input order kept
  EXPECT_TRUE(reg->devices_with_valid_cert({}, kNow).empty());
  // At a time past every not_after nothing is valid.
  EXPECT_TRUE(reg->devices_with_valid_cert(ids, kNow + 2 * kYear).empty());
}

TEST(Registry, BatchIssuedAfterIsOrderedBySeqAndSkipsIntents) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->record_intents(std::vector{intent(5), intent(2), intent(9), intent(7), intent(3)});
  reg->record_intents(std::vector{intent(8, "other")});
  reg->record_issued(std::vector{issued(9), issued(2), issued(5), issued(3), issued(8)});

  const auto after = reg->batch_issued_after("b1", 2);
  std::vector<std::int64_t> seqs;
  for (const auto& c : after) {
    seqs.push_back(c.seq);
    EXPECT_EQ(c.state, CertState::kIssued);
  }
  EXPECT_EQ(seqs, (std::vector<std::int64_t>{3, 5, 9}));
  EXPECT_EQ(reg->batch_issued_after("b1", -1).size(), 4u);
  EXPECT_TRUE(reg->batch_issued_after("none", -1).empty());
}

TEST(Registry, CertsOfDeviceListsEveryState) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  reg->record_intents(std::vector{intent(1, "b1", "dev-x"), intent(2, "b2", "dev-x"), intent(3)});
  reg->record_issued(std::vector{issued(1)});
  const auto certs = reg->certs_of_device("dev-x");
  ASSERT_EQ(certs.size(), 2u);
  EXPECT_EQ(reg->count_certs("", CertState::kIntent), 2);
}

TEST(Registry, BatchIsCreatedProgressedFinishedAndListed) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  BatchRecord b;
  b.id = "batch-a";
  b.ca_name = "issuing";
  b.params_json = R"({"input":"csrs/"})";
  b.created_at = 1000;
  reg->create_batch(b);
  b.id = "batch-b";
  b.created_at = 2000;
  reg->create_batch(b);
  EXPECT_EQ(code_of([&] { reg->create_batch(b); }), ErrorCode::kAlreadyExists);

  auto found = reg->find_batch("batch-a");
  ASSERT_TRUE(found);
  EXPECT_EQ(found->state, "running");
  EXPECT_EQ(found->watermark, -1);
  EXPECT_EQ(found->params_json, R"({"input":"csrs/"})");

  reg->update_batch_progress("batch-a", 499, R"({"certs":1234})", 498, 2);
  reg->finish_batch("batch-a", 1500);
  found = reg->find_batch("batch-a");
  EXPECT_EQ(found->watermark, 499);
  EXPECT_EQ(found->offsets_json, R"({"certs":1234})");
  EXPECT_EQ(found->issued, 498);
  EXPECT_EQ(found->rejected, 2);
  EXPECT_EQ(found->state, "finished");
  EXPECT_EQ(found->finished_at, 1500);

  const auto all = reg->list_batches({});
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].id, "batch-b");  // newest first
  EXPECT_EQ(all[1].id, "batch-a");
  // A page after a batch: the older ones; a batch that is not there is no cursor.
  const auto after = reg->list_batches({1, "batch-b"});
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].id, "batch-a");
  EXPECT_TRUE(reg->list_batches({0, "batch-a"}).empty());
  EXPECT_EQ(reg->list_batches({1, ""}).size(), 1u);
  EXPECT_EQ(code_of([&] { reg->list_batches({1, "nope"}); }), ErrorCode::kNotFound);
  EXPECT_FALSE(reg->find_batch("nope"));
  EXPECT_EQ(code_of([&] { reg->update_batch_progress("nope", 1, "", 0, 0); }),
            ErrorCode::kNotFound);
  EXPECT_EQ(code_of([&] { reg->finish_batch("nope", 1); }), ErrorCode::kNotFound);
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

// Batch issuance writes ~500-row chunks; a hundred thousand of them are all recorded as issued.
// The rate is a figure of fleetsign-bench (registry_record_per_s), not an assertion here: a
// wall-clock bound fails under a sanitizer or a loaded machine without saying anything about
// behaviour.
// Spans longer than one multi-row statement (64 rows) plus a remainder: every column of every
// row is what was given, and each device's slots follow the order of the call.
TEST(Registry, LongSpansRecordEveryRowAndFillDeviceSlotsInOrder) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  constexpr int kCount = 64 * 2 + 7;
  std::vector<CertIntent> intents;
  std::vector<IssuedCert> certs;
  // Second certificates, later in the same call: of devices 0..2 in the same 64-row statement
  // (rows 10..12), and of devices 3..5 in the remainder (the last 3 rows).
  const auto second_of = [&](int n) {
    return n >= 10 && n <= 12 ? n - 10 : n >= kCount - 3 ? n - (kCount - 3) + 3 : -1;
  };
  for (int n = 0; n < kCount; ++n) {
    const int first = second_of(n);
    intents.push_back(intent(n, "long", first >= 0 ? "dev-" + std::to_string(first) : ""));
    intents.back().not_after = kNow + kYear + n;
    intents.back().lineage.lot = "lot-" + std::to_string(n % 5);
    certs.push_back(issued(n));
  }
  reg->record_intents(intents);
  for (int n = 0; n < kCount; ++n) {
    const auto rec = reg->find_cert(serial_of(n));
    ASSERT_TRUE(rec) << n;
    EXPECT_EQ(rec->state, CertState::kIntent);
    EXPECT_EQ(rec->device_id, intents[n].device_id);
    EXPECT_EQ(rec->seq, n);
    EXPECT_EQ(rec->der, intents[n].tbs_der) << n;
    EXPECT_EQ(rec->not_after, kNow + kYear + n);
    EXPECT_EQ(rec->lineage.lot, intents[n].lineage.lot);
    EXPECT_EQ(rec->lineage.operator_name, "alice");
  }
  reg->record_issued(certs);
  for (int n = 0; n < kCount; ++n) {
    const auto rec = reg->find_cert(serial_of(n));
    EXPECT_EQ(rec->state, CertState::kIssued) << n;
    EXPECT_EQ(rec->der, certs[n].der) << n;
    EXPECT_EQ(rec->sha256, "BB" + std::to_string(n));
  }
  const auto single = reg->find_device("dev-70");
  ASSERT_TRUE(single);
  EXPECT_EQ(single->primary_serial, serial_of(70));
  EXPECT_EQ(single->primary_not_after, kNow + kYear + 70);
  EXPECT_EQ(single->secondary_serial, "");
  EXPECT_EQ(single->lot, "lot-0");
  EXPECT_EQ(single->ca_name, "issuing");
  for (int n = 0; n < kCount; ++n) {
    const int d = second_of(n);
    if (d < 0) continue;
    const auto twice = reg->find_device("dev-" + std::to_string(d));
    ASSERT_TRUE(twice);
    EXPECT_EQ(twice->primary_serial, serial_of(d)) << "the earlier certificate keeps the primary";
    EXPECT_EQ(twice->secondary_serial, serial_of(n));
    EXPECT_EQ(twice->secondary_not_after, kNow + kYear + n);
  }
  EXPECT_FALSE(reg->find_device("dev-10"));
}

// A serial that is not an intent, deep inside a multi-row statement: nothing of the call stays.
TEST(Registry, LongSpanWithOneNonIntentWritesNothing) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  std::vector<CertIntent> intents;
  std::vector<IssuedCert> certs;
  for (int n = 0; n < 100; ++n) {
    intents.push_back(intent(n));
    certs.push_back(issued(n));
  }
  reg->record_intents(intents);
  reg->record_issued(std::vector<IssuedCert>{issued(40)});
  try {
    reg->record_issued(certs);
    FAIL() << "expected a throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kRegistryError);
    EXPECT_NE(std::string(e.what()).find(serial_of(40) + " is issued"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(reg->count_certs("b1", CertState::kIssued), 1);
  EXPECT_FALSE(reg->find_device("dev-3"));

  // A taken serial in the second multi-row statement of an intent span: nothing is written.
  std::vector<CertIntent> more;
  for (int n = 200; n < 300; ++n) more.push_back(intent(n, "b2"));
  more[90] = intent(7, "b2");
  EXPECT_EQ(code_of([&] { reg->record_intents(more); }), ErrorCode::kAlreadyExists);
  EXPECT_FALSE(reg->find_cert(serial_of(200)));
  EXPECT_EQ(reg->count_certs("b2", CertState::kIntent), 0);
}

TEST(Registry, RecordsHundredThousandIntentsAndIssuedInChunks) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  constexpr int kTotal = 100'000;
  constexpr int kChunk = 500;
  for (int base = 0; base < kTotal; base += kChunk) {
    std::vector<CertIntent> intents;
    std::vector<IssuedCert> certs;
    for (int n = base; n < base + kChunk; ++n) {
      intents.push_back(intent(n, "big"));
      intents.back().tbs_der.resize(300, 0x5A);
      certs.push_back(issued(n));
      certs.back().der.resize(500, 0xA5);
    }
    reg->record_intents(intents);
    reg->record_issued(certs);
  }
  EXPECT_EQ(reg->count_certs("big", CertState::kIssued), kTotal);
  EXPECT_EQ(reg->count_certs("big", CertState::kIntent), 0);
}

}  // namespace
}  // namespace fleetsign::engine
