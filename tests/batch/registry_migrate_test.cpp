// registry migrate --to postgresql://…: a SQLite home with a batch, a revocation and an audit log
// moved into a real PostgreSQL 15 (support/postgres_server.hpp), checked against the file, and
// used from then on; the refusals leave the home on its SQLite file.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "batch_support.hpp"
#include "fleetsign/engine/registry.hpp"
#include "postgres_server.hpp"
#include "registry_backend.hpp"

namespace fleetsign::batchtest {
namespace {

std::set<std::string> column_set(const std::string& location, const std::string& sql) {
  std::set<std::string> out;
  for (const auto& row : test::raw_query(location, sql)) out.insert(row.at(0));
  return out;
}

class RegistryMigrate : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::test_registry_is_postgres()) GTEST_SKIP() << "migrates a SQLite home";
    fleet.make_hierarchy();
    fleet.ok({"issue", "--ca", "int", "--generate", "40", "--id-pattern", "mig-{03}", "--out",
              fleet.path("out").string(), "--json"});
    // A revocation (blocks the key, records the reason): more tables with rows.
    fleet.ok({"revoke", "--device", "mig-007", "--reason", "keyCompromise", "--yes"});
    sqlite = (fleet.home() / "registry.db").string();
  }
  Fleet fleet;
  std::string sqlite;
};

TEST_F(RegistryMigrate, MovesEveryRowChecksEachTableAndTheHomeUsesPostgresFromThen) {
  const std::string url = test::PostgresServer::shared().create_database();
  const auto serials = column_set(sqlite, "SELECT serial FROM certificates");
  const auto audit_before = column_set(sqlite, "SELECT id || ' ' || action FROM audit");
  ASSERT_GE(serials.size(), 40u);

  const Outcome o = fleet.run({"registry", "migrate", "--to", url, "--json"});
  ASSERT_EQ(o.exit_code(), 0) << o.describe();
  const auto j = parse_json(o.out);
  EXPECT_EQ(j->getValue<std::string>("to"), url);
  const auto tables = j->getArray("tables");
  std::int64_t sum = 0;
  bool certificates_seen = false;
  for (std::size_t i = 0; i < tables->size(); ++i) {
    const auto t = tables->getObject(static_cast<unsigned>(i));
    sum += t->getValue<std::int64_t>("rows");
    EXPECT_EQ(t->getValue<std::string>("checksum").size(), 64u);
    if (t->getValue<std::string>("table") == "certificates") {
      certificates_seen = true;
      EXPECT_EQ(t->getValue<std::int64_t>("rows"), static_cast<std::int64_t>(serials.size()));
    }
  }
  EXPECT_TRUE(certificates_seen);
  EXPECT_EQ(sum, j->getValue<std::int64_t>("rows"));

  // Every serial and every audit row arrived, with its id; the file is untouched.
  EXPECT_EQ(column_set(url, "SELECT serial FROM certificates"), serials);
  auto audit_after = column_set(url, "SELECT id || ' ' || action FROM audit");
  for (const auto& row : audit_before) EXPECT_EQ(audit_after.count(row), 1u) << row;
  EXPECT_EQ(audit_after.size(), audit_before.size() + 1) << "one registry.migrate row more";
  EXPECT_EQ(column_set(sqlite, "SELECT serial FROM certificates"), serials);

  // The home now runs on PostgreSQL: a new batch lands there, with fresh serials and audit ids.
  fleet.ok({"issue", "--ca", "int", "--generate", "5", "--id-pattern", "after-{02}", "--out",
            fleet.path("out2").string()});
  EXPECT_EQ(column_set(url, "SELECT serial FROM certificates").size(), serials.size() + 5);
  EXPECT_EQ(column_set(sqlite, "SELECT serial FROM certificates").size(), serials.size());
  const auto ids = test::raw_query(url, "SELECT COUNT(*), COUNT(DISTINCT id) FROM audit").at(0);
  EXPECT_EQ(ids.at(0), ids.at(1));
  const auto batches = [](const std::string& at) {
    return std::stoll(test::raw_query(at, "SELECT COUNT(*) FROM batches").at(0).at(0));
  };
  EXPECT_EQ(batches(url), batches(sqlite) + 1);

  // Once on PostgreSQL, there is nothing to migrate.
  const Outcome again = fleet.run({"registry", "migrate", "--to", url});
  EXPECT_NE(again.exit_code(), 0);
  EXPECT_NE(again.err.find("in PostgreSQL already"), std::string::npos) << again.describe();
}

TEST_F(RegistryMigrate, ADatabaseWithRowsOrAPasswordInTheUrlIsRefusedAndTheHomeStaysOnSqlite) {
  const std::string url = test::PostgresServer::shared().create_database();
  // Another home's registry: tables and an audit row.
  engine::Registry::open(url)->audit("home.init", "/elsewhere", "{}");
  const Outcome o = fleet.run({"registry", "migrate", "--to", url});
  EXPECT_NE(o.exit_code(), 0);
  EXPECT_NE(o.err.find("only fills an empty database"), std::string::npos) << o.describe();

  const Outcome pw =
      fleet.run({"registry", "migrate", "--to", "postgresql://fleetsign:secret@127.0.0.1/x"});
  EXPECT_NE(pw.exit_code(), 0);
  EXPECT_NE(pw.err.find("holds a password"), std::string::npos) << pw.describe();
  EXPECT_EQ(pw.err.find("secret"), std::string::npos) << "the password is never echoed";
  // A URL that names no database would land in the user's own (often `postgres`, the server's).
  for (const char* no_db :
       {"postgresql://postgres@127.0.0.1:5432", "postgresql://postgres@127.0.0.1/",
        "postgresql://postgres@127.0.0.1/?sslmode=disable"}) {
    const Outcome o2 = fleet.run({"registry", "migrate", "--to", no_db});
    EXPECT_NE(o2.exit_code(), 0) << no_db;
    EXPECT_NE(o2.err.find("names no database"), std::string::npos) << o2.describe();
  }

  // Still the SQLite home: a batch lands in the file.
  fleet.ok({"issue", "--ca", "int", "--generate", "3", "--id-pattern", "still-{02}", "--out",
            fleet.path("out3").string()});
  EXPECT_EQ(column_set(sqlite, "SELECT device_id FROM certificates WHERE device_id LIKE 'still-%'")
                .size(),
            3u);
}

}  // namespace
}  // namespace fleetsign::batchtest
