// The registry's one seam to a database engine: a connection (Db) that prepares statements
// (Stmt), with a driver for SQLite (sql_sqlite.cpp) and one for PostgreSQL through libpq
// (sql_pg.cpp). The registry's SQL is written once, in what both accept; the few places where
// the dialects differ ask db.dialect().
//
// Placeholders are SQLite's: `?` and `?NNN`. The PostgreSQL driver rewrites them to `$N` and
// prepares a statement with the parameter types of its first execution (int8, text, bytea), so
// untyped contexts such as `(VALUES (?2, ?3))` resolve to the right types.
//
// Errors: a failure throws sql::DbError with the ErrorCode it maps to (kAlreadyExists for a
// unique violation, kRegistryBusy for a lock or serialization failure, else kRegistryError) and
// the engine's message; the registry adds what it was doing (Registry::Impl::guarded).
//
// Thread safety: one Db is one connection; neither it nor its statements may be used by two
// threads at once. A Stmt must not outlive its Db.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/error.hpp"

struct sqlite3;

namespace fleetsign::engine::sql {

enum class Dialect { kSqlite, kPostgres };

class DbError final : public std::runtime_error {
 public:
  DbError(ErrorCode code, const std::string& message) : std::runtime_error(message), m_code(code) {}
  ErrorCode code() const noexcept { return m_code; }

 private:
  ErrorCode m_code;
};

// A prepared statement: bind (1-based), step through its rows (columns 0-based), reset. Bound
// text and blobs are NOT copied: they must stay alive until the statement is reset.
class Stmt {
 public:
  virtual ~Stmt() = default;
  virtual void bind(int index, std::int64_t value) = 0;
  virtual void bind(int index, std::string_view value) = 0;
  virtual void bind_blob(int index, std::span<const std::uint8_t> value) = 0;
  virtual void bind_null(int index) = 0;
  // Runs the statement on the first call after binding, then moves row by row: true while a row
  // is ready, false when done.
  virtual bool step() = 0;
  enum class Kind { kNull, kInteger, kText, kBlob };
  virtual Kind kind(int column) = 0;  // what the column holds in this row
  virtual bool is_null(int column) = 0;
  virtual std::int64_t int64(int column) = 0;     // NULL reads 0; a boolean 1 or 0
  virtual std::string_view text(int column) = 0;  // valid until the next step or reset
  virtual std::vector<std::uint8_t> blob(int column) = 0;
  virtual std::int64_t changes() const = 0;  // rows the last finished execution changed
  virtual void reset() = 0;                  // clears bindings and the result
};

// How long a PostgreSQL write transaction may wait on its client between statements.
constexpr const char* kWriteIdleLimit = "20s";
// How long a PostgreSQL writer waits for the write lock before it gives up busy: longer than
// kWriteIdleLimit, so that a writer frozen inside its transaction is waited out (the server ends
// it), not reported busy to everyone else until it wakes.
constexpr const char* kWriteLockWait = "30s";

class Db {
 public:
  virtual ~Db() = default;
  virtual Dialect dialect() const = 0;
  virtual std::unique_ptr<Stmt> prepare(const std::string& sql) = 0;
  // Runs SQL without parameters; it may hold several statements.
  virtual void exec(const std::string& sql) = 0;
  // Opens a write transaction that holds the registry's one write lock (SQLite: BEGIN
  // IMMEDIATE; PostgreSQL: BEGIN and a transaction-scoped advisory lock), so writers run one
  // after another as they do on a SQLite file. COMMIT and ROLLBACK go through exec(). On
  // PostgreSQL the server ends a write transaction that waits on its client longer than
  // kWriteIdleLimit (a statement of its own can lift that for one transaction).
  virtual void begin_write() = 0;
  // Where this connection points, for messages (a PostgreSQL URL without its password).
  virtual const std::string& name() const = 0;
};

// SQLite: wraps a connection the caller owns (and keeps open while this Db lives).
std::unique_ptr<Db> sqlite_db(sqlite3* handle, std::string name);
// PostgreSQL: connects to `url` (postgresql://user[:password]@host[:port]/db[?…]). Throws DbError
// (kRegistryError) naming the URL without its password when the server cannot be reached.
std::unique_ptr<Db> postgres_db(const std::string& url);

// The URL with any password (user part, password= and sslpassword= parameters, their keys
// percent-decoded as libpq decodes them) replaced by "***", for messages and logs.
std::string redact_url(const std::string& url);
bool url_holds_password(const std::string& url);
// Whether the URL names its database (a path, or dbname=): libpq would otherwise use the user's
// name, often the server's maintenance database.
bool url_names_database(const std::string& url);
bool is_postgres_url(std::string_view text);

// Steps a statement that returns no rows (INSERT, UPDATE, DELETE) and resets it; returns the
// rows it changed.
std::int64_t run(Stmt& st);

}  // namespace fleetsign::engine::sql
