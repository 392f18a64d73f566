// registry migrate: a SQLite registry copied into PostgreSQL and checked table by table. See
// registry_migrate.hpp for the steps.
#include "fleetsign/engine/registry_migrate.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <map>
#include <memory>
#include <set>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "sql.hpp"

namespace fleetsign::engine {

namespace {

struct Column {
  std::string name;
  bool blob = false;  // declared BLOB: read as bytes on both sides
};

struct Table {
  std::string name;
  std::vector<Column> columns;
  std::set<std::string> parents;  // tables its foreign keys name (itself left out)
};

// Table and column names come from the file: only plain identifiers are put into SQL.
std::string identifier(const std::string& name, const std::string& file) {
  const bool plain = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
  if (!plain) {
    throw Error(ErrorCode::kRegistryError,
                file + ": table or column name '" + name + "' is not a plain identifier");
  }
  return "\"" + name + "\"";
}

std::vector<std::string> texts(sql::Db& db, const std::string& query, const std::string& param) {
  auto st = db.prepare(query);
  if (!param.empty()) st->bind(1, param);
  std::vector<std::string> out;
  while (st->step()) out.emplace_back(st->text(0));
  return out;
}

std::int64_t integer(sql::Db& db, const std::string& query) {
  auto st = db.prepare(query);
  return st->step() ? st->int64(0) : 0;
}

// The tables of the SQLite registry, each after the tables its foreign keys refer to.
std::vector<Table> tables_in_copy_order(sql::Db& src, const std::string& file) {
  std::map<std::string, Table> all;
  for (const auto& name :
       texts(src,
             "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> 'schema_version' "
             "AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name",
             "")) {
    Table t{name, {}, {}};
    identifier(name, file);
    auto info = src.prepare("SELECT name, type FROM pragma_table_info(?) ORDER BY cid");
    info->bind(1, name);
    while (info->step()) {
      Column c{std::string(info->text(0)), info->text(1) == "BLOB"};
      identifier(c.name, file);
      t.columns.push_back(std::move(c));
    }
    for (const auto& parent :
         texts(src, "SELECT \"table\" FROM pragma_foreign_key_list(?)", name)) {
      if (parent != name) t.parents.insert(parent);
    }
    all.emplace(name, std::move(t));
  }
  std::vector<Table> order;
  std::set<std::string> placed;
  while (order.size() < all.size()) {
    const std::size_t before = order.size();
    for (auto& [name, t] : all) {
      if (placed.count(name) != 0) continue;
      if (std::all_of(t.parents.begin(), t.parents.end(), [&](const std::string& p) {
            return placed.count(p) != 0 || !all.count(p);
          })) {
        order.push_back(t);
        placed.insert(name);
      }
    }
    if (order.size() == before) {
      throw Error(ErrorCode::kRegistryError, file + ": the tables' foreign keys form a cycle");
    }
  }
  return order;
}

std::string select_all(const Table& t, const std::string& file, bool in_rowid_order) {
  std::string sql = "SELECT ";
  for (std::size_t i = 0; i < t.columns.size(); ++i) {
    sql += (i == 0 ? "" : ", ") + identifier(t.columns[i].name, file);
  }
  sql += " FROM " + identifier(t.name, file);
  // Insertion order: a CA row comes after its parent's.
  if (in_rowid_order) sql += " ORDER BY rowid";
  return sql;
}

// An order-independent checksum of a table: the SHA-256 of each row (its values, length-prefixed
// with their kind), summed lane by lane. Any changed, missing or doubled row changes it.
std::string checksum(sql::Db& db, const Table& t, const std::string& file, std::int64_t& rows) {
  auto st = db.prepare(select_all(t, file, false));
  std::array<std::uint64_t, 4> sum{};
  rows = 0;
  std::string row;
  while (st->step()) {
    row.clear();
    for (std::size_t i = 0; i < t.columns.size(); ++i) {
      const int c = static_cast<int>(i);
      std::string value;
      if (st->is_null(c)) {
        row += 'N';
      } else if (t.columns[i].blob) {
        const auto bytes = st->blob(c);
        value.assign(bytes.begin(), bytes.end());
        row += 'B';
      } else {
        value = std::string(st->text(c));
        row += 'T';
      }
      row += std::to_string(value.size()) + ':' + value;
    }
    const std::string hex =
        thumbprint_sha256(ByteView(reinterpret_cast<const std::uint8_t*>(row.data()), row.size()));
    for (std::size_t lane = 0; lane < 4; ++lane) {
      std::uint64_t v = 0;
      std::from_chars(hex.data() + lane * 16, hex.data() + lane * 16 + 16, v, 16);
      sum[lane] += v;
    }
    ++rows;
  }
  std::string out;
  char buf[17];
  for (const auto lane : sum) {
    std::snprintf(buf, sizeof buf, "%016llX", static_cast<unsigned long long>(lane));
    out += buf;
  }
  return out;
}

std::int64_t copy_table(sql::Db& src, sql::Db& dst, const Table& t, const std::string& file) {
  std::string insert = "INSERT INTO " + identifier(t.name, file) + " (";
  std::string values;
  for (std::size_t i = 0; i < t.columns.size(); ++i) {
    insert += (i == 0 ? "" : ", ") + identifier(t.columns[i].name, file);
    values += i == 0 ? "?" : ", ?";
  }
  insert += ") VALUES (" + values + ")";
  auto read = src.prepare(select_all(t, file, true));
  auto write = dst.prepare(insert);
  std::vector<std::vector<std::uint8_t>> blobs(t.columns.size());
  std::int64_t rows = 0;
  while (read->step()) {
    for (std::size_t i = 0; i < t.columns.size(); ++i) {
      const int c = static_cast<int>(i);
      switch (read->kind(c)) {
        case sql::Stmt::Kind::kNull:
          write->bind_null(c + 1);
          break;
        case sql::Stmt::Kind::kInteger:
          write->bind(c + 1, read->int64(c));
          break;
        case sql::Stmt::Kind::kBlob:
          blobs[i] = read->blob(c);
          write->bind_blob(c + 1, blobs[i]);
          break;
        case sql::Stmt::Kind::kText:
          if (t.columns[i].blob) {
            const auto text = read->text(c);
            blobs[i].assign(text.begin(), text.end());
            write->bind_blob(c + 1, blobs[i]);
          } else {
            write->bind(c + 1, read->text(c));
          }
          break;
      }
    }
    sql::run(*write);
    ++rows;
  }
  return rows;
}

// The identity columns (audit.id, incidents.id) continue after the highest id copied.
void advance_identities(sql::Db& dst) {
  auto st = dst.prepare(
      "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = "
      "current_schema() AND is_identity = 'YES'");
  std::vector<std::pair<std::string, std::string>> ids;
  while (st->step()) ids.emplace_back(st->text(0), st->text(1));
  for (const auto& [table, column] : ids) {
    const std::string t = identifier(table, dst.name()), c = identifier(column, dst.name());
    dst.exec("SELECT setval(pg_get_serial_sequence('" + t + "', '" + column +
             "'), COALESCE((SELECT MAX(" + c + ") FROM " + t + "), 0) + 1, false)");
  }
}

struct SqliteCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close(db); }
};

}  // namespace

MigrationReport migrate_registry(const std::filesystem::path& sqlite_file,
                                 const std::string& postgres_url,
                                 const std::function<void(const MigratedTable&)>& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string file = sqlite_file.string();
  std::error_code ec;
  if (!std::filesystem::exists(sqlite_file, ec) ||
      std::filesystem::file_size(sqlite_file, ec) == 0) {
    throw Error(ErrorCode::kRegistryMissing, file + ": no SQLite registry to migrate");
  }
  // 1. Both registries at the current schema (the target's tables made when it is new).
  Registry::open(sqlite_file);
  Registry::open(postgres_url);
  const std::string shown = sql::redact_url(postgres_url);
  try {
    sqlite3* raw = nullptr;
    // Read-write only to take the write lock (below); nothing is written.
    const int rc = sqlite3_open_v2(file.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr);
    std::unique_ptr<sqlite3, SqliteCloser> handle(raw);
    if (rc != SQLITE_OK) {
      throw Error(ErrorCode::kRegistryError, file + ": " + sqlite3_errstr(rc));
    }
    sqlite3_busy_timeout(raw, 10000);
    auto src = sql::sqlite_db(raw, file);
    auto dst = sql::postgres_db(postgres_url);
    const auto tables = tables_in_copy_order(*src, file);
    // 2. The target holds no row: nothing is merged.
    for (const auto& t : tables) {
      if (integer(*dst, "SELECT COUNT(*) FROM " + identifier(t.name, file)) != 0) {
        throw Error(ErrorCode::kAlreadyExists,
                    shown + ": table " + t.name +
                        " already holds rows; registry migrate only fills an empty database");
      }
    }
    // 3. One snapshot of the source, held with its write lock (a writer that is not under the home
    //    lock waits, then fails busy, rather than write a row the copy would miss), and one
    //    transaction on the target.
    src->begin_write();
    dst->begin_write();
    // The target waits idle while each SQLite table is checksummed (minutes at 10^7 devices):
    // the write transactions' idle limit is lifted for this one.
    if (dst->dialect() == sql::Dialect::kPostgres) {
      dst->exec("SET LOCAL idle_in_transaction_session_timeout = 0");
    }
    MigrationReport report;
    for (const auto& t : tables) {
      MigratedTable m{t.name, copy_table(*src, *dst, t, file), {}};
      report.rows += m.rows;
      report.tables.push_back(m);
    }
    advance_identities(*dst);
    // 4. Read back on both sides before the copy is committed.
    for (std::size_t i = 0; i < tables.size(); ++i) {
      std::int64_t src_rows = 0, dst_rows = 0;
      const std::string a = checksum(*src, tables[i], file, src_rows);
      const std::string b = checksum(*dst, tables[i], file, dst_rows);
      if (a != b || src_rows != dst_rows || src_rows != report.tables[i].rows) {
        throw Error(ErrorCode::kRegistryError,
                    "table " + tables[i].name + " differs after the copy (" +
                        std::to_string(src_rows) + " rows, checksum " + a + " in " + file + "; " +
                        std::to_string(dst_rows) + " rows, checksum " + b + " in " + shown +
                        "): nothing was committed");
      }
      report.tables[i].checksum = a;
      if (progress) progress(report.tables[i]);
    }
    dst->exec("COMMIT");
    src->exec("ROLLBACK");
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return report;
  } catch (const sql::DbError& e) {
    throw Error(e.code(), "migrating " + file + " to " + shown + ": " + e.what());
  }
}

}  // namespace fleetsign::engine
