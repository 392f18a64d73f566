// The PostgreSQL test server (tests/support/postgres_server.hpp) and the schema a PostgreSQL
// registry starts from (engine/store/src/registry_schema_pg.hpp), on a real PostgreSQL 15.
#include "postgres_server.hpp"

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "registry_schema.hpp"
#include "registry_schema_pg.hpp"

namespace {

using fleetsign::test::PostgresServer;
using Rows = std::vector<std::string>;  // one row a line, columns joined by '|'

struct PgFinish {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
struct PgClear {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using Result = std::unique_ptr<PGresult, PgClear>;

// A libpq connection that fails the test when it cannot connect.
class Conn {
 public:
  explicit Conn(const std::string& url) : m_conn(PQconnectdb(url.c_str())) {
    EXPECT_EQ(PQstatus(m_conn.get()), CONNECTION_OK) << url << ": " << PQerrorMessage(m_conn.get());
  }
  // Runs `sql` (several statements allowed): "" when it succeeded, else "SQLSTATE message".
  std::string run(const std::string& sql) {
    const Result r(PQexec(m_conn.get(), sql.c_str()));
    const auto status = PQresultStatus(r.get());
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return "";
    const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
    return std::string(state != nullptr ? state : "?????") + " " + PQresultErrorMessage(r.get());
  }
  Rows rows(const std::string& sql) {
    const Result r(PQexec(m_conn.get(), sql.c_str()));
    EXPECT_EQ(PQresultStatus(r.get()), PGRES_TUPLES_OK)
        << sql << ": " << PQerrorMessage(m_conn.get());
    Rows out;
    for (int i = 0; i < PQntuples(r.get()); ++i) {
      std::string row;
      for (int j = 0; j < PQnfields(r.get()); ++j)
        row += (j > 0 ? "|" : "") + std::string(PQgetvalue(r.get(), i, j));
      out.push_back(row);
    }
    return out;
  }

 private:
  std::unique_ptr<PGconn, PgFinish> m_conn;
};

// Fails, never skips, when this machine cannot run PostgreSQL, unless FLEETSIGN_TEST_NO_POSTGRES=1.
class Postgres : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (fleetsign::test::postgres_available(&why)) return;
    const char* opt_out = std::getenv("FLEETSIGN_TEST_NO_POSTGRES");
    if (opt_out != nullptr && std::string(opt_out) == "1") GTEST_SKIP() << why;
    FAIL() << why << " (FLEETSIGN_TEST_NO_POSTGRES=1 skips the PostgreSQL tests)";
  }
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST_F(Postgres, ServerStartsOnLoopbackWithVersion15AndByteOrderCollation) {
  const auto start = std::chrono::steady_clock::now();
  PostgresServer& server = PostgresServer::shared();
  RecordProperty("start_seconds", std::to_string(seconds_since(start)));
  std::cout << "[ timing   ] PostgresServer::shared(): " << seconds_since(start) << " s\n";
  ASSERT_GT(server.port(), 0);
  EXPECT_EQ(&server, &PostgresServer::shared());
  EXPECT_EQ(server.admin_url(),
            "postgresql://fleetsign@127.0.0.1:" + std::to_string(server.port()) + "/postgres");
  Conn admin(server.admin_url());
  const Rows version = admin.rows("SHOW server_version_num");
  ASSERT_EQ(version.size(), 1u);
  EXPECT_GE(std::stoi(version[0]), 150000);
  EXPECT_EQ(admin.rows("SHOW fsync"), Rows{"off"});
  EXPECT_EQ(admin.rows("SELECT datcollate FROM pg_database WHERE datname = 'template0'"),
            Rows{"C"});
}

TEST_F(Postgres, CreateDatabaseGivesTwoDistinctEmptyDatabases) {
  PostgresServer& server = PostgresServer::shared();
  const auto start = std::chrono::steady_clock::now();
  const std::string a = server.create_database();
  RecordProperty("create_database_seconds", std::to_string(seconds_since(start)));
  std::cout << "[ timing   ] create_database(): " << seconds_since(start) << " s\n";
  const std::string b = server.create_database();
  ASSERT_NE(a, b);
  Conn ca(a);
  Conn cb(b);
  EXPECT_NE(ca.rows("SELECT current_database()"), cb.rows("SELECT current_database()"));
  const std::string count =
      "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace";
  EXPECT_EQ(ca.rows(count), Rows{"0"});
  EXPECT_EQ(cb.rows(count), Rows{"0"});
  EXPECT_EQ(ca.run("CREATE TABLE only_in_a (x BIGINT)"), "");
  EXPECT_EQ(cb.rows(count), Rows{"0"});
}

// A CLI child or a death test is a fork of the test process: its exit (static destructors
// included) and its stop() leave the server to the process that started it.
TEST_F(Postgres, AForkedChildExitingDoesNotStopTheServer) {
  PostgresServer& server = PostgresServer::shared();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    server.stop();
    std::exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  Conn db(server.create_database());
  EXPECT_EQ(db.rows("SELECT 1"), Rows{"1"});
}

TEST_F(Postgres, PgSchemaLoadsAndTheAuditLogRefusesUpdateDeleteAndTruncate) {
  Conn db(PostgresServer::shared().create_database());
  ASSERT_EQ(db.run("BEGIN; " + std::string(fleetsign::engine::kPgSchema) + " COMMIT;"), "");
  ASSERT_EQ(db.run("INSERT INTO audit (at, actor, action, subject, detail) "
                   "VALUES (1, 'op', 'ca.create', 'root', '')"),
            "");
  for (const char* sql :
       {"UPDATE audit SET detail = 'forged'", "DELETE FROM audit", "TRUNCATE audit"}) {
    const std::string error = db.run(sql);
    EXPECT_EQ(error.substr(0, 5), "23000") << sql << ": " << error;
    EXPECT_NE(error.find("audit log is append-only"), std::string::npos) << sql << ": " << error;
  }
  // As in SQLite, a row trigger: a statement that matches no row is not refused.
  EXPECT_EQ(db.run("DELETE FROM audit WHERE id = 42"), "");
  EXPECT_EQ(db.rows("SELECT id, detail FROM audit"), Rows{"1|"});
}

// Rows of a SQLite query, sorted.
Rows sqlite_rows(sqlite3* db, const std::string& sql) {
  Rows out;
  auto collect = [](void* rows, int n, char** values, char**) {
    std::string row;
    for (int i = 0; i < n; ++i) row += (i > 0 ? "|" : "") + std::string(values[i] ? values[i] : "");
    static_cast<Rows*>(rows)->push_back(row);
    return 0;
  };
  char* error = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), collect, &out, &error), SQLITE_OK)
      << sql << ": " << (error ? error : "");
  sqlite3_free(error);
  std::sort(out.begin(), out.end());
  return out;
}

struct SqliteClose {
  void operator()(sqlite3* db) const noexcept { sqlite3_close(db); }
};

// A SQLite registry's schema, made as Registry::open makes it: every migration, in order
// (schema_version, the registry's own, aside).
std::unique_ptr<sqlite3, SqliteClose> sqlite_registry() {
  sqlite3* raw = nullptr;
  EXPECT_EQ(sqlite3_open(":memory:", &raw), SQLITE_OK);
  std::unique_ptr<sqlite3, SqliteClose> db(raw);
  // Migrations 10 and 11 call the function the registry registers; there is nothing to hash.
  auto no_key = [](sqlite3_context* ctx, int, sqlite3_value**) {
    sqlite3_result_text(ctx, "", 0, SQLITE_STATIC);
  };
  sqlite3_create_function(raw, "fleetsign_key_sha256", 1, SQLITE_UTF8, nullptr, no_key, nullptr,
                          nullptr);
  for (const auto& m : fleetsign::engine::kMigrations) sqlite_rows(raw, std::string(m));
  return db;
}

// One aspect of the schema, read from each engine's catalog as the same rows.
struct SchemaQuery {
  const char* what;
  const char* sqlite;
  const char* pg;
};

const SchemaQuery kSchemaQueries[] = {
    // NOT NULL: SQLite allows NULL in a TEXT primary key, PostgreSQL does not. Defaults:
    // PostgreSQL writes '-1'::integer and ''::text. A dropped column leaves a gap in attnum.
    {"columns: table, position, name, type, not null, default, position in the primary key",
     "SELECT m.name, c.cid + 1, c.name, replace(replace(upper(c.type), 'BLOB', 'BYTEA'), "
     "'INTEGER', 'BIGINT'), c.\"notnull\" OR c.pk > 0, coalesce(c.dflt_value, ''), c.pk "
     "FROM sqlite_master m, pragma_table_info(m.name) c "
     "WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
     "SELECT c.relname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname, "
     "upper(format_type(a.atttypid, NULL)), a.attnotnull::int, "
     "regexp_replace(regexp_replace(coalesce(pg_get_expr(d.adbin, d.adrelid), ''), "
     "'::[a-z ]+$', ''), '^''(-?[0-9]+)''$', '\\1'), coalesce(array_position(p.conkey, a.attnum), "
     "0) "
     "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
     "AND NOT a.attisdropped LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum "
     "LEFT JOIN pg_constraint p ON p.conrelid = c.oid AND p.contype = 'p' "
     "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'"},
    {"indexes made by CREATE INDEX: name, table, unique, partial, columns",
     "SELECT m.name, m.tbl_name, l.\"unique\", l.partial, (SELECT group_concat(name || CASE WHEN "
     "\"desc\" THEN ' DESC' ELSE '' END, ',') FROM pragma_index_xinfo(m.name) WHERE key = 1) "
     "FROM sqlite_master m JOIN pragma_index_list(m.tbl_name) l ON l.name = m.name "
     "WHERE m.type = 'index' AND m.sql IS NOT NULL",
     "SELECT i.relname, t.relname, x.indisunique::int, (x.indpred IS NOT NULL)::int, "
     "(SELECT string_agg(pg_get_indexdef(x.indexrelid, k, true) || CASE WHEN "
     "pg_index_column_has_property(x.indexrelid, k, 'desc') THEN ' DESC' ELSE '' END, ',' "
     "ORDER BY k) FROM generate_series(1, x.indnatts) k) "
     "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
     "JOIN pg_class t ON t.oid = x.indrelid WHERE t.relnamespace = 'public'::regnamespace "
     "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"},
    {"UNIQUE constraints: table, columns",
     "SELECT m.name, (SELECT group_concat(name, ',') FROM pragma_index_info(l.name)) "
     "FROM sqlite_master m JOIN pragma_index_list(m.name) l "
     "WHERE m.type = 'table' AND l.origin = 'u'",
     "SELECT conrelid::regclass::text, (SELECT string_agg(attname, ',' ORDER BY "
     "array_position(conkey, attnum)) FROM pg_attribute WHERE attrelid = conrelid "
     "AND attnum = ANY (conkey)) FROM pg_constraint "
     "WHERE contype = 'u' AND connamespace = 'public'::regnamespace"},
    {"foreign keys: table, column, referenced table, referenced column",
     "SELECT m.name, k.\"from\", k.\"table\", k.\"to\" FROM sqlite_master m, "
     "pragma_foreign_key_list(m.name) k WHERE m.type = 'table'",
     "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, f.attname "
     "FROM pg_constraint c "
     "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
     "JOIN pg_attribute f ON f.attrelid = c.confrelid AND f.attnum = c.confkey[1] "
     "WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace"},
    {"how many CHECK constraints",
     "SELECT sum((length(sql) - length(replace(sql, 'CHECK (', ''))) / 7) FROM sqlite_master "
     "WHERE type = 'table'",
     "SELECT count(*) FROM pg_constraint "
     "WHERE contype = 'c' AND connamespace = 'public'::regnamespace"},
    // audit_no_truncate: PostgreSQL's TRUNCATE skips row triggers; SQLite has no TRUNCATE.
    {"triggers: name, table", "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'",
     "SELECT tgname, tgrelid::regclass::text FROM pg_trigger "
     "WHERE NOT tgisinternal AND tgname <> 'audit_no_truncate'"},
};

// The rows only one side has, a line each; "" when both have the same.
std::string difference(const Rows& sqlite, const Rows& pg) {
  Rows only_sqlite;
  Rows only_pg;
  std::set_difference(sqlite.begin(), sqlite.end(), pg.begin(), pg.end(),
                      std::back_inserter(only_sqlite));
  std::set_difference(pg.begin(), pg.end(), sqlite.begin(), sqlite.end(),
                      std::back_inserter(only_pg));
  std::string out;
  for (const auto& r : only_sqlite) out += "SQLite only:     " + r + "\n";
  for (const auto& r : only_pg) out += "PostgreSQL only: " + r + "\n";
  return out;
}

// kPgSchema, then the migrations after it, as Registry::open runs them on PostgreSQL.
TEST_F(Postgres, PgSchemaWithLaterMigrationsMatchesAFreshSqliteRegistry) {
  using fleetsign::engine::kMigrations;
  const auto lite = sqlite_registry();
  Conn pg(PostgresServer::shared().create_database());
  ASSERT_EQ(pg.run(std::string(fleetsign::engine::kPgSchema)), "");
  for (std::size_t v = fleetsign::engine::kPgSchemaVersion; v < kMigrations.size(); ++v) {
    ASSERT_EQ(pg.run(std::string(kMigrations[v])), "") << "migration " << v;
  }
  for (const auto& q : kSchemaQueries) {
    Rows pg_rows = pg.rows(q.pg);
    std::sort(pg_rows.begin(), pg_rows.end());
    EXPECT_EQ(difference(sqlite_rows(lite.get(), q.sqlite), pg_rows), "") << q.what;
  }
}

}  // namespace
