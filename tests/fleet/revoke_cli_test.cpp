// `fleetsign revoke` and `blocklist` through the real binary, a real SoftHSM2 token and a real
// registry: the dry run's numbers equal the real run's for every selector, a second run revokes
// nothing, more than one device needs --yes, a group whose only CA is revoked is disabled and the
// export says so, revoked devices under a group get disabled individual enrollments, and a CSR
// with a blocked key is refused in a batch while the rest is issued.
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <ctime>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "enrollment_support.hpp"
#include "fleet_support.hpp"
#include "fleetsign/engine/home_lock.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "registry_backend.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::json;
using testing::quoted;

// A CSR for `cn` signed by `key` (an attacker reusing a known key).
engine::Der csr_with_key(EVP_PKEY* key, const std::string& cn) {
  X509_REQ* req = X509_REQ_new();
  X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_REQ_set_pubkey(req, key);
  X509_REQ_sign(req, key, EVP_sha256());
  unsigned char* der = nullptr;
  const int n = i2d_X509_REQ(req, &der);
  engine::Der out(der, der + n);
  OPENSSL_free(der);
  X509_REQ_free(req);
  return out;
}

int count_lines_with(const std::string& text, const std::string& what) {
  int n = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) n += line.find(what) != std::string::npos;
  return n;
}

// A copy of `key` whose SPKI carries its EC point compressed (openssl ec -conv_form compressed).
testing::Pkey compressed(EVP_PKEY* key) {
  testing::Pkey out(EVP_PKEY_dup(key));
  EXPECT_EQ(EVP_PKEY_set_utf8_string_param(out.get(), OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                           "compressed"),
            1);
  return out;
}

std::string spki_sha256(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(key, &der);
  const std::string out =
      engine::thumbprint_sha256(engine::ByteView(der, static_cast<std::size_t>(n)));
  OPENSSL_free(der);
  return out;
}

class Revoke : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";
  testing::Binary bin{home};

  void SetUp() override {
    const std::string pop = quoted((dir.path() / "pop.pem").string());
    bin.ok("init");
    bin.ok("ca create-root --name root --subject /CN=Root");
    bin.ok("ca create-intermediate --name factory-1 --issuer root --days 3650 --subject /CN=F1");
    bin.ok(
        "ca create-intermediate --name factory-2 --issuer root --days 3650 --path-len 1 "
        "--subject /CN=F2");
    bin.ok(
        "ca create-intermediate --name line-2b --issuer factory-2 --days 3000 --subject /CN=L2B");
    bin.ok("ca verification-cert --ca root --code POP --out " + pop);
    bin.ok("ca verify root --code POP --cert " + pop);
    bin.ok("enrollment group create fleet --ca factory-1");
    bin.ok("enrollment group create plant-2 --ca factory-2");
  }

  // `count` generated devices "{prefix}-NN"; returns the batch ID.
  std::string issue(const std::string& ca, const std::string& prefix, int count,
                    const std::string& lineage) {
    const auto out = bin.ok("issue --ca " + ca + " --generate " + std::to_string(count) +
                            " --id-pattern '" + prefix + "-{02}' " + lineage + " --out " +
                            quoted((dir.path() / prefix).string()) + " --json");
    return json(out.out)->getValue<std::string>("batch");
  }

  std::unique_ptr<engine::Registry> registry() {
    return engine::Registry::open(test::home_registry_location(home));
  }
  std::int64_t revoked() { return registry()->count_certs("", engine::CertState::kRevoked); }

  // Dry run, then the real run: the same plan; the outcome matches it and the registry.
  Object::Ptr dry_then_real(const std::string& selector) {
    const auto dry = json(bin.ok("revoke " + selector + " --dry-run --json").out);
    EXPECT_TRUE(dry->getValue<bool>("dry_run"));
    const auto before = revoked();
    const auto real = json(bin.ok("revoke " + selector + " --yes --json").out);
    const auto p1 = dry->getObject("plan"), p2 = real->getObject("plan");
    for (const char* k : {"certificates", "devices", "connected_dropped", "enrollments_disabled",
                          "keys_blocked", "already_revoked"}) {
      EXPECT_EQ(p1->getValue<std::int64_t>(k), p2->getValue<std::int64_t>(k))
          << selector << " " << k;
    }
    EXPECT_EQ(p1->getArray("cas_revoked")->size(), p2->getArray("cas_revoked")->size());
    EXPECT_EQ(p1->getArray("group_changes")->size(), p2->getArray("group_changes")->size());
    const auto o = real->getObject("outcome");
    EXPECT_EQ(o->getValue<std::int64_t>("certificates_revoked"),
              p1->getValue<std::int64_t>("certificates"));
    EXPECT_EQ(o->getValue<std::int64_t>("enrollments_disabled"),
              p1->getValue<std::int64_t>("enrollments_disabled"));
    EXPECT_EQ(o->getValue<std::int64_t>("keys_blocked"),
              p1->getValue<std::int64_t>("keys_blocked"));
    EXPECT_EQ(revoked() - before, p1->getValue<std::int64_t>("certificates")) << selector;
    // Idempotent: the same revocation again revokes nothing.
    const auto again = json(bin.ok("revoke " + selector + " --yes --json").out);
    EXPECT_EQ(again->getObject("plan")->getValue<std::int64_t>("certificates"), 0) << selector;
    EXPECT_EQ(again->getObject("plan")->getValue<std::int64_t>("already_revoked"),
              p1->getValue<std::int64_t>("certificates"));
    EXPECT_EQ(revoked() - before, p1->getValue<std::int64_t>("certificates"));
    return p1;
  }
};

TEST_F(Revoke, DryRunNumbersEqualTheRealRunForEverySelectorAndASecondRunRevokesNothing) {
  issue("factory-1", "la", 4, "--lot LA --site S0 --line N0");
  issue("factory-1", "sb", 3, "--lot LB --site SB --line N0");
  issue("factory-1", "nc", 2, "--lot LC --site S0 --line NC");
  const std::string b4 = issue("factory-1", "bd", 5, "--lot LD --site S0 --line N0");
  issue("factory-1", "dv", 3, "--lot LE --site S0 --line N0");
  issue("factory-1", "tm", 2, "--lot LF --site S0 --line N0");
  issue("line-2b", "ca", 3, "--lot LG --site S0 --line N0");
  testing::tamper(test::home_registry_location(home),
                  "UPDATE certificates SET created_at = 1000000 WHERE device_id LIKE 'tm-%'");
  auto reg = registry();
  const auto dv = reg->certs_of_device("dv-01");
  ASSERT_EQ(dv.size(), 1u);
  engine::CertQuery by_device;
  by_device.device_id = "dv-02";
  const std::string key = reg->select_certs(by_device).at(0).key_sha256;
  ASSERT_EQ(key.size(), 64u);
  reg.reset();

  struct Case {
    std::string selector;
    std::int64_t certificates;
  };
  const Case cases[] = {
      {"--lot LA --reason superseded", 4},
      {"--site SB --reason affiliationChanged", 3},
      {"--line NC --reason cessationOfOperation", 2},
      {"--batch " + b4 + " --reason superseded", 5},
      {"--serial " + dv[0].serial + " --reason superseded", 1},
      {"--device dv-03 --reason keyCompromise", 1},
      {"--key-sha256 " + key, 1},  // keyCompromise by default
      {"--issued-between 999999 1000001 --reason superseded", 2},
      {"--ca factory-2 --reason cACompromise", 3},
  };
  for (const auto& c : cases) {
    const auto plan = dry_then_real(c.selector);
    EXPECT_EQ(plan->getValue<std::int64_t>("certificates"), c.certificates) << c.selector;
  }
  // Everything issued is revoked now: 4+3+2+5+3+2+3.
  EXPECT_EQ(revoked(), 22);
  // keyCompromise blocked the keys of dv-03 and dv-02.
  const auto keys = json(bin.ok("blocklist list --json").out)->getArray("keys");
  EXPECT_EQ(keys->size(), 2u);
}

// Takes a registry of this version back to v11 as far as later migrations go (v12 to v16 undone),
// so that setting its version lower runs those migrations again.
void undo_v12_to_v16(const fs::path& db) {
  testing::tamper(db, "ALTER TABLE job_tasks DROP COLUMN error_code");         // v12's
  testing::tamper(db, "DROP TABLE operators");                                 // v13's
  testing::tamper(db, "DROP TABLE batch_shares");                              // v14's
  testing::tamper(db, "DROP TABLE leases");                                    // v14's
  testing::tamper(db, "DROP TABLE job_runners");                               // v15's
  testing::tamper(db, "ALTER TABLE job_tasks DROP COLUMN runner");             // v15's
  testing::tamper(db, "ALTER TABLE crls DROP COLUMN key_compromise_entries");  // v16's
}

TEST_F(Revoke, TheKeyHashMigrationComputesTheKeyHashOfCertificatesRecordedBefore) {
  FLEETSIGN_SQLITE_ONLY();  // SQLite's migrations; a PostgreSQL registry starts at version 13
  issue("factory-1", "m", 3, "--lot LM");
  std::map<std::string, std::string> before;
  for (const auto& c : registry()->select_certs([] {
         engine::CertQuery q;
         q.lot = "LM";
         return q;
       }())) {
    before[c.serial] = c.key_sha256;
  }
  ASSERT_EQ(before.size(), 3u);
  // Back to what v9 wrote: no key hashes, no blocklist (the migration to v10 adds them).
  const auto db = home / "registry.db";
  testing::tamper(db, "ALTER TABLE certificates DROP COLUMN key_sha256");
  testing::tamper(db, "DROP TABLE blocked_keys");
  undo_v12_to_v16(db);
  testing::tamper(db, "UPDATE schema_version SET version = 9");
  const auto plan = json(bin.ok("revoke --lot LM --reason keyCompromise --dry-run --json").out);
  EXPECT_EQ(plan->getObject("plan")->getValue<std::int64_t>("keys_blocked"), 3);
  auto reg = registry();
  EXPECT_EQ(reg->schema_version(), engine::Registry::kSchemaVersion);
  for (const auto& [serial, key] : before) {
    engine::CertQuery q;
    q.serial = serial;
    const auto after = reg->select_certs(q);
    ASSERT_EQ(after.size(), 1u);
    EXPECT_EQ(after[0].key_sha256, key) << serial;
    EXPECT_EQ(key, engine::key_sha256_of_cert(reg->find_cert(serial)->der));
  }
}

// v11: a certificate recorded before with its EC point compressed had the hash of those bytes; the
// migration gives it its key's identity, so revoking or blocking by that key finds it.
TEST_F(Revoke, TheV11MigrationGivesACompressedKeyItsIdentityHash) {
  FLEETSIGN_SQLITE_ONLY();  // SQLite's migrations; a PostgreSQL registry starts at version 13
  testing::Pkey key = testing::ec_key();
  testing::Pkey key_c = compressed(key.get());
  const fs::path csr = dir.path() / "mc.csr";
  {
    std::ofstream f(csr);
    f << engine::pem(csr_with_key(key_c.get(), "mc-1"), "CERTIFICATE REQUEST");
  }
  bin.ok("issue --ca factory-1 --csr " + quoted(csr.string()) + " --out " +
         quoted((dir.path() / "mc").string()));
  const std::string identity = spki_sha256(key.get()), as_sent = spki_sha256(key_c.get());
  ASSERT_NE(identity, as_sent);
  engine::CertQuery q;
  q.device_id = "mc-1";
  ASSERT_EQ(registry()->select_certs(q).at(0).key_sha256, identity);
  const auto db = home / "registry.db";
  testing::tamper(
      db, "UPDATE certificates SET key_sha256 = '" + as_sent + "' WHERE device_id = 'mc-1'");
  undo_v12_to_v16(db);
  testing::tamper(db, "UPDATE schema_version SET version = 10");
  const auto plan = json(bin.ok("revoke --key-sha256 " + identity + " --dry-run --json").out);
  EXPECT_EQ(plan->getObject("plan")->getValue<std::int64_t>("certificates"), 1)
      << "found by its key's identity";
  auto reg = registry();
  EXPECT_EQ(reg->schema_version(), engine::Registry::kSchemaVersion);
  EXPECT_EQ(reg->select_certs(q).at(0).key_sha256, identity);
}

// A certificate revoked as superseded whose key turns out compromised: revoking it again for
// keyCompromise blocks its key (no CSR with it is signed again).
TEST_F(Revoke, AKeyCompromiseFoundLaterBlocksTheKeyOfAnAlreadyRevokedCertificate) {
  issue("factory-1", "late", 1, "--lot LL");
  bin.ok("revoke --device late-01 --reason superseded");
  EXPECT_EQ(registry()->blocked_key_hashes().size(), 0u);
  const auto out = json(bin.ok("revoke --device late-01 --reason keyCompromise --json").out);
  EXPECT_EQ(out->getObject("plan")->getValue<std::int64_t>("already_revoked"), 1);
  EXPECT_EQ(out->getObject("plan")->getValue<std::int64_t>("keys_blocked"), 1);
  engine::CertQuery q;
  q.device_id = "late-01";
  const auto keys = registry()->blocked_key_hashes();
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0], registry()->select_certs(q).at(0).key_sha256);
}

// Two responders at once: the second run finds the home taken before it records anything, so no
// certificate is left revoked with its CRL unsigned; with --wait it runs after the first.
TEST_F(Revoke, ARunWhileAnotherProcessHoldsTheHomeRecordsNothingAndWaitRunsAfterIt) {
  issue("factory-1", "busy", 2, "--lot LB");
  {
    const auto held = engine::HomeLock::acquire(home, false);
    const auto r = bin.run("revoke --lot LB --reason keyCompromise --yes");
    EXPECT_NE(r.status, 0) << r.out << r.err;
    EXPECT_NE(r.err.find("home_busy"), std::string::npos) << r.err;
    EXPECT_EQ(revoked(), 0);
    EXPECT_EQ(registry()->blocked_key_hashes().size(), 0u);
    // The preview needs no token and runs meanwhile.
    EXPECT_EQ(json(bin.ok("revoke --lot LB --dry-run --reason keyCompromise --json").out)
                  ->getObject("plan")
                  ->getValue<std::int64_t>("certificates"),
              2);
  }
  bin.ok("revoke --lot LB --reason keyCompromise --yes --wait");
  EXPECT_EQ(revoked(), 2);
  const auto crl = json(bin.ok("crl show factory-1 --json").out);
  EXPECT_EQ(crl->getValue<std::int64_t>("entries"), 2) << bin.ok("crl show factory-1 --json").out;
}

TEST_F(Revoke, MoreThanOneDeviceNeedsYesAndBadSelectorsAreRefusedNamingTheValue) {
  issue("factory-1", "y", 3, "--lot LY");
  auto r = bin.run("revoke --lot LY --reason superseded");
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("without --yes"), std::string::npos) << r.err;
  EXPECT_EQ(revoked(), 0);
  bin.ok("revoke --device y-01 --reason superseded");  // one device: no confirmation needed
  EXPECT_EQ(revoked(), 1);
  // A serial as some tools print it, with DER's sign byte: the same certificate.
  engine::CertQuery y2;
  y2.device_id = "y-02";
  const std::string serial = registry()->select_certs(y2).at(0).serial;
  const auto padded = json(bin.ok("revoke --serial 00:" + serial +
                                  " --reason superseded "
                                  "--dry-run --json")
                               .out);
  EXPECT_EQ(padded->getObject("plan")->getValue<std::int64_t>("certificates"), 1);
  // Nothing matched is an error naming the selector, not a revocation that went through.
  const auto none = bin.run("revoke --lot NOPE --reason superseded --yes");
  EXPECT_NE(none.status, 0);
  EXPECT_NE(none.err.find("nothing matches"), std::string::npos) << none.err;
  EXPECT_NE(none.err.find("NOPE"), std::string::npos) << none.err;
  // A CA is never revoked without --yes, however few devices it has.
  bin.ok("ca create-intermediate --name lonely --issuer root --days 100 --subject /CN=Lonely");
  const auto ca = bin.run("revoke --ca lonely --reason cessationOfOperation");
  EXPECT_EQ(ca.status, 2) << ca.err;
  EXPECT_NE(ca.err.find("lonely"), std::string::npos) << ca.err;
  EXPECT_EQ(registry()->find_ca("lonely")->revoked_at, 0);
  bin.ok("revoke --ca lonely --reason cessationOfOperation --yes");
  const auto shown = json(bin.ok("ca show lonely --json").out);
  EXPECT_TRUE(shown->getValue<bool>("revoked"));
  EXPECT_EQ(shown->getValue<std::string>("revocation_reason"), "cessationOfOperation");
  EXPECT_NE(bin.ok("ca list").out.find("REVOKED"), std::string::npos);

  const std::pair<std::string, std::string> bad[] = {
      {"--serial 12XY --reason superseded", "not hexadecimal"},
      {"--key-sha256 ABCD", "expected 64 hex digits"},
      {"--device 'bad/id' --reason superseded", "bad/id"},
      {"--issued-between 2026-02-31 2026-03-01 --reason superseded", "2026-02-31"},
      {"--issued-between 2026-03-01 2026-01-01 --reason superseded", "must be before"},
      {"--lot LY", "--reason is required"},
      {"--lot LY --reason unspecified", "unspecified is not accepted"},
      {"--lot LY --device y-02 --reason superseded", "one selector"},
      {"--ca nope --reason cACompromise --dry-run", "no such CA"},
  };
  for (const auto& [args, says] : bad) {
    r = bin.run("revoke " + args);
    EXPECT_EQ(r.status, 2) << args << ": " << r.err;
    EXPECT_NE(r.err.find(says), std::string::npos) << args << ": " << r.err;
  }
  EXPECT_EQ(revoked(), 1);
}

TEST_F(Revoke, ACaRevocationDisablesAGroupLeftWithoutAWorkingCaAndTheExportTellsTheCloud) {
  issue("factory-2", "p", 3, "--lot LP");
  issue("factory-1", "f", 2, "--lot LF");
  const auto plan = json(bin.ok("revoke --ca factory-2 --reason cACompromise --yes --json").out);
  const auto p = plan->getObject("plan");
  EXPECT_EQ(p->getArray("cas_revoked")->size(), 2u);  // factory-2 and line-2b under it
  ASSERT_EQ(p->getArray("group_changes")->size(), 1u);
  EXPECT_EQ(p->getArray("group_changes")->getObject(0)->getValue<std::string>("group"), "plant-2");
  EXPECT_TRUE(p->getArray("group_changes")->getObject(0)->getValue<bool>("disable"));
  EXPECT_EQ(p->getValue<std::int64_t>("enrollments_disabled"), 3);
  EXPECT_EQ(p->getObject("replacement")->getArray("rotate_incident")->size(), 3u);

  auto reg = registry();
  EXPECT_FALSE(reg->find_group("plant-2")->enabled);
  EXPECT_TRUE(reg->find_group("fleet")->enabled);
  const auto ie = reg->find_individual("p-01");
  ASSERT_TRUE(ie.has_value());
  EXPECT_FALSE(ie->enabled);
  EXPECT_FALSE(ie->primary_cert.empty());
  EXPECT_FALSE(reg->find_individual("f-01").has_value());  // untouched devices get none
  reg.reset();

  const fs::path dps = dir.path() / "dps.json";
  bin.ok("export dps --out " + quoted(dps.string()));
  const auto doc = json(testing::read_file(dps));
  bool group_disabled = false;
  const auto groups = doc->getArray("enrollmentGroups");
  for (std::size_t i = 0; i < groups->size(); ++i) {
    const auto g = groups->getObject(i);
    if (g->getValue<std::string>("enrollmentGroupId") == "plant-2") {
      group_disabled = g->getValue<std::string>("provisioningStatus") == "disabled";
    }
  }
  EXPECT_TRUE(group_disabled);
  std::set<std::string> disabled;
  const auto ies = doc->getObject("individualEnrollments")->getArray("enrollments");
  for (std::size_t i = 0; i < ies->size(); ++i) {
    const auto e = ies->getObject(i);
    if (e->getValue<std::string>("provisioningStatus") == "disabled") {
      disabled.insert(e->getValue<std::string>("registrationId"));
    }
  }
  EXPECT_EQ(disabled, (std::set<std::string>{"p-01", "p-02", "p-03"}));
  const fs::path hub = dir.path() / "hub.jsonl";
  bin.ok("export iothub --out " + quoted(hub.string()));
  const std::string lines = testing::read_file(hub);
  const auto p1 = lines.find("\"p-01\"");
  ASSERT_NE(p1, std::string::npos);
  EXPECT_NE(lines.substr(p1, lines.find('\n', p1) - p1).find("\"disabled\""), std::string::npos);
}

// A revoked CA signs nothing more, and neither does a CA under it; a device under a CA whose
// issuer is revoked is refused even when its own CA and certificate are not (a stolen key with
// pathLen >= 1 could have minted that CA).
TEST_F(Revoke, NothingIsSignedOrAdmittedUnderARevokedCa) {
  issue("line-2b", "lb", 1, "--lot LL");
  const std::string chain = quoted((dir.path() / "lb" / "lb-01_fullchain.pem").string());
  ASSERT_TRUE(
      json(bin.ok("auth check --chain " + chain + " --json").out)->getValue<bool>("allowed"));
  // Only the CA record (as an incident marks it): its child line-2b and the leaf stay as they were.
  registry()->revoke_ca("factory-2", "cACompromise", std::time(nullptr));
  const auto decision = json(bin.run("auth check --chain " + chain + " --json").out);
  EXPECT_FALSE(decision->getValue<bool>("allowed"));
  EXPECT_EQ(decision->getValue<std::string>("rule"), "ca-revoked");
  EXPECT_NE(decision->getValue<std::string>("reason").find("factory-2"), std::string::npos);
  for (const char* ca : {"factory-2", "line-2b"}) {
    const auto r =
        bin.run("issue --ca " + std::string(ca) + " --generate 1 --id-pattern 'z-{02}' --out " +
                quoted((dir.path() / ("z-" + std::string(ca))).string()));
    EXPECT_NE(r.status, 0) << ca;
    EXPECT_NE(r.err.find("CA 'factory-2' was revoked"), std::string::npos) << r.err;
  }
  const auto sub = bin.run(
      "ca create-intermediate --name sub-2 --issuer factory-2 --days 100 --subject /CN=SUB");
  EXPECT_NE(sub.status, 0);
  EXPECT_NE(sub.err.find("was revoked"), std::string::npos) << sub.err;
  EXPECT_FALSE(registry()->find_ca("sub-2").has_value());
  // Elsewhere in the hierarchy, issuance goes on.
  issue("factory-1", "ok", 1, "--lot LO");
}

TEST_F(Revoke, ACsrWithABlockedKeyIsRefusedInABatchAndTheRestIsIssued) {
  testing::Pkey stolen = testing::ec_key(), known = testing::ec_key();
  // The same keys, their points sent compressed: another encoding, the same key, still blocked.
  testing::Pkey stolen_c = compressed(stolen.get()), known_c = compressed(known.get());
  // The stolen key's certificate, revoked for keyCompromise: its key is blocked.
  const fs::path one = dir.path() / "one.csr";
  {
    std::ofstream f(one);
    f << engine::pem(csr_with_key(stolen.get(), "k-victim"), "CERTIFICATE REQUEST");
  }
  bin.ok("issue --ca factory-1 --csr " + quoted(one.string()) + " --out " +
         quoted((dir.path() / "one").string()));
  bin.ok("revoke --device k-victim --reason keyCompromise");
  // A key known from elsewhere, from a file.
  const fs::path list = dir.path() / "keys.txt";
  {
    std::ofstream f(list);
    f << "# known bad\n" << spki_sha256(known.get()) << "\n";
  }
  // A reason is one line of text: a newline or an escape sequence would forge rows of the table.
  for (const std::string& bad :
       std::vector<std::string>{"\"$(printf 'two\\nlines')\"", "\"$(printf '\\033[2J')\"", "''",
                                std::string(200, 'r')}) {
    const auto r =
        bin.run("blocklist add --from-file " + quoted(list.string()) + " --reason " + bad);
    EXPECT_EQ(r.status, 2) << bad;
    EXPECT_NE(r.err.find("--reason"), std::string::npos) << r.err;
  }
  const auto added =
      json(bin.ok("blocklist add --from-file " + quoted(list.string()) + " --json").out);
  EXPECT_EQ(added->getValue<std::int64_t>("added"), 1);
  const auto listed = bin.ok("blocklist list").out;
  EXPECT_NE(listed.find(spki_sha256(stolen.get())), std::string::npos) << listed;
  EXPECT_NE(listed.find(spki_sha256(known.get())), std::string::npos) << listed;

  const fs::path bundle = dir.path() / "bundle.pem";
  {
    std::ofstream f(bundle);
    for (int i = 0; i < 40; ++i) {
      const std::string id = "k-" + std::to_string(i);
      if (i == 7) {
        f << engine::pem(csr_with_key(stolen.get(), id), "CERTIFICATE REQUEST");
      } else if (i == 11) {
        f << engine::pem(csr_with_key(stolen_c.get(), id), "CERTIFICATE REQUEST");
      } else if (i == 31) {
        f << engine::pem(csr_with_key(known_c.get(), id), "CERTIFICATE REQUEST");
      } else if (i == 23) {
        f << engine::pem(csr_with_key(known.get(), id), "CERTIFICATE REQUEST");
      } else {
        f << engine::pem(testing::csr_der(id), "CERTIFICATE REQUEST");
      }
    }
  }
  const fs::path out = dir.path() / "batch";
  const auto r = bin.run("issue --ca factory-1 --csr-file " + quoted(bundle.string()) + " --out " +
                         quoted(out.string()) + " --bundle --json");
  EXPECT_EQ(r.status, 3) << r.err;  // completed with rejects
  EXPECT_EQ(json(r.out)->getValue<std::int64_t>("issued"), 36);
  const std::string rejects = testing::read_file(out / "rejects.csv");
  EXPECT_EQ(count_lines_with(rejects, "key_blocked"), 4) << rejects;
  for (const char* id : {"k-7", "k-11", "k-23", "k-31"}) {
    EXPECT_NE(rejects.find(id), std::string::npos) << id;
  }
  // The single-issue path refuses it too, with its own code; removing the key lets it through.
  const fs::path again = dir.path() / "again.csr";
  {
    std::ofstream f(again);
    f << engine::pem(csr_with_key(known.get(), "k-single"), "CERTIFICATE REQUEST");
  }
  const auto single = bin.run("issue --ca factory-1 --csr " + quoted(again.string()) + " --out " +
                              quoted((dir.path() / "single").string()));
  EXPECT_EQ(single.status, 7) << single.err;
  EXPECT_NE(single.err.find("key_blocked"), std::string::npos) << single.err;
  // The revoked certificate's key, its point compressed, through the single-issue path.
  const fs::path stolen_csr = dir.path() / "stolen-c.csr";
  {
    std::ofstream f(stolen_csr);
    f << engine::pem(csr_with_key(stolen_c.get(), "k-single-c"), "CERTIFICATE REQUEST");
  }
  const auto single_c = bin.run("issue --ca factory-1 --csr " + quoted(stolen_csr.string()) +
                                " --out " + quoted((dir.path() / "single-c").string()));
  EXPECT_EQ(single_c.status, 7) << single_c.err;
  EXPECT_NE(single_c.err.find("key_blocked"), std::string::npos) << single_c.err;
  EXPECT_NE(single_c.err.find(spki_sha256(stolen.get())), std::string::npos) << single_c.err;
  bin.ok("blocklist remove " + spki_sha256(known.get()));
  bin.ok("issue --ca factory-1 --csr " + quoted(again.string()) + " --out " +
         quoted((dir.path() / "single2").string()));
}

}  // namespace
}  // namespace fleetsign
