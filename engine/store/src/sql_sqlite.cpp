// The SQLite driver of sql.hpp: prepared sqlite3 statements on a connection the caller owns.
#include <sqlite3.h>

#include <utility>

#include "sql.hpp"

namespace fleetsign::engine::sql {

namespace {

// A UNIQUE or PRIMARY KEY conflict is kAlreadyExists; a CHECK or foreign key is a plain
// kRegistryError, as on PostgreSQL.
ErrorCode code_of(sqlite3* db, int rc) {
  const int extended = sqlite3_extended_errcode(db);
  if (extended == SQLITE_CONSTRAINT_UNIQUE || extended == SQLITE_CONSTRAINT_PRIMARYKEY) {
    return ErrorCode::kAlreadyExists;
  }
  const int primary = rc & 0xFF;
  return primary == SQLITE_BUSY || primary == SQLITE_LOCKED ? ErrorCode::kRegistryBusy
                                                            : ErrorCode::kRegistryError;
}

[[noreturn]] void fail(sqlite3* db, int rc) { throw DbError(code_of(db, rc), sqlite3_errmsg(db)); }

class SqliteStmt final : public Stmt {
 public:
  SqliteStmt(sqlite3* db, sqlite3_stmt* st) : m_db(db), m_st(st) {}
  SqliteStmt(const SqliteStmt&) = delete;  // owns the sqlite3_stmt
  SqliteStmt& operator=(const SqliteStmt&) = delete;
  ~SqliteStmt() override { sqlite3_finalize(m_st); }

  void bind(int index, std::int64_t value) override { sqlite3_bind_int64(m_st, index, value); }
  void bind(int index, std::string_view value) override {
    // A non-null pointer even for "": SQLite binds a null pointer as NULL, not as ''.
    sqlite3_bind_text(m_st, index, value.data() != nullptr ? value.data() : "",
                      static_cast<int>(value.size()), SQLITE_STATIC);
  }
  void bind_blob(int index, std::span<const std::uint8_t> value) override {
    static const std::uint8_t kEmpty = 0;
    sqlite3_bind_blob(m_st, index, value.empty() ? &kEmpty : value.data(),
                      static_cast<int>(value.size()), SQLITE_STATIC);
  }
  void bind_null(int index) override { sqlite3_bind_null(m_st, index); }

  bool step() override {
    const int rc = sqlite3_step(m_st);
    if (rc == SQLITE_ROW) {
      return true;
    }
    if (rc == SQLITE_DONE) {
      m_changes = sqlite3_changes(m_db);
      return false;
    }
    // The message and code first: reset would replace them.
    const std::string message = sqlite3_errmsg(m_db);
    const ErrorCode code = code_of(m_db, rc);
    reset();
    throw DbError(code, message);
  }
  Kind kind(int column) override {
    switch (sqlite3_column_type(m_st, column)) {
      case SQLITE_NULL:
        return Kind::kNull;
      case SQLITE_INTEGER:
        return Kind::kInteger;
      case SQLITE_BLOB:
        return Kind::kBlob;
      default:
        return Kind::kText;  // TEXT, and REAL as its text
    }
  }
  bool is_null(int column) override { return sqlite3_column_type(m_st, column) == SQLITE_NULL; }
  std::int64_t int64(int column) override { return sqlite3_column_int64(m_st, column); }
  std::string_view text(int column) override {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(m_st, column));
    return p == nullptr
               ? std::string_view()
               : std::string_view(p, static_cast<std::size_t>(sqlite3_column_bytes(m_st, column)));
  }
  std::vector<std::uint8_t> blob(int column) override {
    const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(m_st, column));
    return p == nullptr ? std::vector<std::uint8_t>()
                        : std::vector<std::uint8_t>(p, p + sqlite3_column_bytes(m_st, column));
  }
  std::int64_t changes() const override { return m_changes; }
  void reset() override {
    sqlite3_reset(m_st);
    sqlite3_clear_bindings(m_st);
  }

 private:
  sqlite3* m_db;
  sqlite3_stmt* m_st;
  std::int64_t m_changes = 0;
};

class SqliteDb final : public Db {
 public:
  SqliteDb(sqlite3* db, std::string name) : m_db(db), m_name(std::move(name)) {}
  Dialect dialect() const override { return Dialect::kSqlite; }
  std::unique_ptr<Stmt> prepare(const std::string& sql) override {
    sqlite3_stmt* st = nullptr;
    if (const int rc =
            sqlite3_prepare_v2(m_db, sql.c_str(), static_cast<int>(sql.size()), &st, nullptr);
        rc != SQLITE_OK) {
      throw DbError(ErrorCode::kRegistryError,
                    "preparing '" + sql + "': " + std::string(sqlite3_errmsg(m_db)));
    }
    return std::make_unique<SqliteStmt>(m_db, st);
  }
  void exec(const std::string& sql) override {
    if (const int rc = sqlite3_exec(m_db, sql.c_str(), nullptr, nullptr, nullptr);
        rc != SQLITE_OK) {
      fail(m_db, rc);
    }
  }
  void begin_write() override { exec("BEGIN IMMEDIATE"); }
  const std::string& name() const override { return m_name; }

 private:
  sqlite3* m_db;
  std::string m_name;
};

}  // namespace

std::unique_ptr<Db> sqlite_db(sqlite3* handle, std::string name) {
  return std::make_unique<SqliteDb>(handle, std::move(name));
}

std::int64_t run(Stmt& st) {
  while (st.step()) {
  }
  const std::int64_t changed = st.changes();
  st.reset();
  return changed;
}

}  // namespace fleetsign::engine::sql
