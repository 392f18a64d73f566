// Registry internals shared by the registry's source files (registry.cpp, the enrollment store).
// Private to engine/.
#pragma once

#include <Poco/Data/LOB.h>
#include <Poco/Data/SQLite/SQLiteException.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>
#include <sqlite3.h>

#include <cstdlib>
#include <ctime>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "sql.hpp"

namespace fleetsign::engine {

namespace kw = Poco::Data::Keywords;
using Poco::Data::BLOB;
using Poco::Data::Session;
using Poco::Data::Statement;

namespace registry_detail {

inline Error translate(const std::string& what, const Poco::Exception& e) {
  namespace sqlite = Poco::Data::SQLite;
  ErrorCode code = ErrorCode::kRegistryError;
  if (dynamic_cast<const sqlite::DBLockedException*>(&e) != nullptr ||
      dynamic_cast<const sqlite::TableLockedException*>(&e) != nullptr) {
    code = ErrorCode::kRegistryBusy;
  } else if (dynamic_cast<const sqlite::ConstraintViolationException*>(&e) != nullptr &&
             e.message().find("UNIQUE") != std::string::npos) {
    code = ErrorCode::kAlreadyExists;
  }
  return Error(code, what + ": " + (e.message().empty() ? e.displayText() : e.message()));
}

inline std::vector<std::uint8_t> to_bytes(const BLOB& blob) {
  return {blob.content().begin(), blob.content().end()};
}

}  // namespace registry_detail

namespace registry_detail {
// registry_enrollments.cpp: one audit row inside the caller's transaction, and the detail an
// individual enrollment's audit rows carry ({"enabled","primary_sha256","secondary_sha256"}).
void audit_row(Registry::Impl& impl, const std::string& action, const std::string& subject,
               const std::string& detail);
std::string individual_detail(const IndividualEnrollment& ie);
// registry_jobs.cpp: the task rows' SELECT (its columns, FROM, and "WHERE job_id = ?1 "), and
// the row it reads.
extern const std::string kSelectTasks;
JobTask read_task(sql::Stmt& st);
}  // namespace registry_detail

// A statement prepared once on the connection and reset after each use.
class PreparedQuery {
 public:
  PreparedQuery() = default;
  PreparedQuery(const PreparedQuery&) = delete;  // owns a prepared statement
  PreparedQuery& operator=(const PreparedQuery&) = delete;
  sql::Stmt& get(sql::Db& db, const std::string& text) {
    if (!m_stmt) m_stmt = db.prepare(text);
    return *m_stmt;
  }
  sql::Stmt* prepared() const { return m_stmt.get(); }  // nullptr until get() prepared it

 private:
  std::unique_ptr<sql::Stmt> m_stmt;
};

namespace registry_detail {

// Parameters bound by type: integers, text, NULL (an empty optional), blobs.
inline void bind_one(sql::Stmt& st, int i, std::int64_t v) { st.bind(i, v); }
inline void bind_one(sql::Stmt& st, int i, int v) { st.bind(i, static_cast<std::int64_t>(v)); }
inline void bind_one(sql::Stmt& st, int i, bool v) { st.bind(i, std::int64_t{v ? 1 : 0}); }
inline void bind_one(sql::Stmt& st, int i, const std::string& v) {
  st.bind(i, std::string_view(v));
}
inline void bind_one(sql::Stmt& st, int i, std::string_view v) { st.bind(i, v); }
inline void bind_one(sql::Stmt& st, int i, const char* v) { st.bind(i, std::string_view(v)); }
inline void bind_one(sql::Stmt& st, int i, const std::optional<std::string>& v) {
  if (v) {
    st.bind(i, std::string_view(*v));
  } else {
    st.bind_null(i);
  }
}
inline void bind_one(sql::Stmt& st, int i, const std::vector<std::uint8_t>& v) {
  st.bind_blob(i, v);
}
template <typename... Params>
void bind_all(sql::Stmt& st, const Params&... params) {
  int i = 0;
  (bind_one(st, ++i, params), ...);
}

// Column readers for scalar()/column(): int64 or text.
template <typename T>
T read_column(sql::Stmt& st, int column) {
  if constexpr (std::is_same_v<T, std::string>) {
    return std::string(st.text(column));
  } else {
    return static_cast<T>(st.int64(column));
  }
}

// An audit row, in the column order id, at, actor, action, subject, detail.
struct AuditRow {
  static AuditEntry read(sql::Stmt& st) {
    AuditEntry rec;
    rec.id = st.int64(0);
    rec.at = st.int64(1);
    rec.actor = std::string(st.text(2));
    rec.action = std::string(st.text(3));
    rec.subject = std::string(st.text(4));
    rec.detail = std::string(st.text(5));
    return rec;
  }
};

// A NULL-or-text column as an empty string.
inline std::string text_or_empty(sql::Stmt& st, int column) {
  return st.is_null(column) ? std::string() : std::string(st.text(column));
}

}  // namespace registry_detail

struct Registry::Impl {
  std::optional<Session> m_session;  // SQLite only: the Poco session that owns the connection
  std::unique_ptr<sql::Db> m_db;
  std::string m_file;  // the SQLite file or the PostgreSQL URL (without its password)
  PreparedQuery m_individual_slots, m_cert_state, m_pinned_cert, m_auth_lookup;
  // The issuance hot path (registry_issuance.cpp): one-row and multi-row forms.
  PreparedQuery m_insert_intent, m_issue, m_device_slot;
  std::optional<ShareFence> m_fence;  // WorkStore::fence_writes
  // Throws kHomeBusy when m_fence's share is no longer its holder's (registry_work.cpp).
  void check_fence();
  std::optional<LeaseFence> m_lease_fence;  // WorkStore::fence_lease_writes
  // Throws kHomeBusy when m_lease_fence's holder no longer holds its lease (registry_work.cpp).
  void check_lease_fence();
  PreparedQuery m_insert_intents, m_issue_many, m_device_slots, m_valid_certs, m_busy_devices;
  // The job runner's hot path (registry_jobs.cpp): task rows and the slot changes of a flush.
  PreparedQuery m_insert_task, m_update_task, m_tasks_all, m_tasks_in_state;
  PreparedQuery m_device_serials, m_clear_primary, m_clear_secondary, m_revoke_superseded,
      m_revoke_released;
  PreparedQuery m_set_ie_primary, m_set_ie_secondary;
  // Every other statement, prepared on first use and kept by its text (see query()).
  std::unordered_map<std::string, std::unique_ptr<sql::Stmt>> m_cache;

  sql::Db& db() { return *m_db; }
  bool postgres() const { return m_db->dialect() == sql::Dialect::kPostgres; }
  // SQLite's handle, for what only SQLite has (functions, pragmas); nullptr on PostgreSQL.
  sqlite3* sqlite_handle();
  // INSERTs one CA row inside the caller's transaction (registry.cpp).
  void insert_ca(const CaRecord& ca);
  // Steps a prepared INSERT/UPDATE once and resets it; throws Error naming `what` on failure
  // (kAlreadyExists for a UNIQUE/PK conflict, kRegistryBusy when locked). Returns changed rows.
  int step(sql::Stmt& st, const std::string& what) {
    try {
      return static_cast<int>(sql::run(st));
    } catch (const sql::DbError& e) {
      st.reset();
      throw Error(e.code(), what + ": " + e.what());
    }
  }

  RegistryOptions m_options;  // the injected clock and the audit actor

  // A given timestamp is kept (imports, records made with the caller's clock); zero means now.
  std::int64_t stamp(std::int64_t given) const { return given != 0 ? given : m_options.now(); }
  const std::string& actor() const { return m_options.actor; }

  Impl(std::optional<Session> session, std::unique_ptr<sql::Db> db, std::string file,
       RegistryOptions options)
      : m_session(std::move(session)),
        m_db(std::move(db)),
        m_file(std::move(file)),
        m_options(std::move(options)) {}

  void exec(const std::string& text) { m_db->exec(text); }

  // A statement by its text, prepared once per connection and reset when the lease ends (also
  // when a reader throws halfway through its rows). A statement already leased (a query run
  // while the same query's rows are read) gets a fresh one.
  class Lease {
   public:
    // From `slot` (the cache's, returned at the end) or, with `slot` null, an own statement.
    Lease(std::unique_ptr<sql::Stmt>* slot, std::unique_ptr<sql::Stmt> own)
        : m_slot(slot), m_own(std::move(own)) {
      m_stmt = m_slot != nullptr ? m_slot->release() : m_own.get();
    }
    Lease(const Lease&) = delete;  // returns its statement once
    Lease& operator=(const Lease&) = delete;
    ~Lease() {
      m_stmt->reset();
      if (m_slot != nullptr) m_slot->reset(m_stmt);
    }
    sql::Stmt& operator*() const { return *m_stmt; }
    sql::Stmt* operator->() const { return m_stmt; }

   private:
    std::unique_ptr<sql::Stmt>* m_slot;
    std::unique_ptr<sql::Stmt> m_own;
    sql::Stmt* m_stmt;
  };
  Lease query(const std::string& text) {
    if (const auto it = m_cache.find(text); it != m_cache.end()) {
      if (it->second) return Lease(&it->second, nullptr);
      return Lease(nullptr, m_db->prepare(text));  // in use further up this call
    }
    auto fresh = m_db->prepare(text);
    if (m_cache.size() >= 512) return Lease(nullptr, std::move(fresh));  // built SQL: not kept
    auto& slot = m_cache[text];
    slot = std::move(fresh);
    return Lease(&slot, nullptr);
  }

  // Runs an INSERT, UPDATE or DELETE; returns the rows it changed.
  template <typename... Params>
  std::int64_t change(const std::string& text, const Params&... params) {
    Lease st = query(text);
    registry_detail::bind_all(*st, params...);
    return sql::run(*st);
  }

  // The first column of every row (int64 or std::string).
  template <typename T, typename... Params>
  std::vector<T> column(const std::string& text, const Params&... params) {
    Lease st = query(text);
    registry_detail::bind_all(*st, params...);
    std::vector<T> out;
    while (st->step()) out.push_back(registry_detail::read_column<T>(*st, 0));
    return out;
  }

  // The first column of the first row, if there is one.
  template <typename T, typename... Params>
  std::optional<T> scalar(const std::string& text, const Params&... params) {
    Lease st = query(text);
    registry_detail::bind_all(*st, params...);
    if (!st->step()) return std::nullopt;
    return registry_detail::read_column<T>(*st, 0);
  }

  // COUNT(*) and the like: one integer, 0 when there is no row.
  template <typename... Params>
  std::int64_t count(const std::string& text, const Params&... params) {
    return scalar<std::int64_t>(text, params...).value_or(0);
  }

  // For an UPDATE of one named row: no row changed means the name is unknown.
  static void expect_row(std::int64_t changed, const std::string& what) {
    if (changed == 0) {
      throw Error(ErrorCode::kNotFound, what + ": not found");
    }
  }

  // Runs `body`, turning database failures into Error with `what` as context.
  template <typename F>
  auto guarded(const std::string& what, F&& body) -> decltype(body()) {
    try {
      return body();
    } catch (const sql::DbError& e) {
      throw Error(e.code(), what + ": " + e.what());
    } catch (const Poco::Exception& e) {
      throw registry_detail::translate(what, e);
    }
  }

  // Runs `body` in one write transaction: taking the write lock up front means a second writer
  // waits at BEGIN instead of failing halfway through.
  template <typename F>
  auto write(const std::string& what, F&& body) -> decltype(body()) {
    return guarded(what, [&] {
      ImmediateTxn txn(*this);
      if (m_fence) check_fence();
      if (m_lease_fence) check_lease_fence();
      if constexpr (std::is_void_v<decltype(body())>) {
        body();
        txn.commit();
      } else {
        auto result = body();
        txn.commit();
        return result;
      }
    });
  }

  // Reads rows into Row::read(stmt)'s values; params are bound in order.
  template <typename Row, typename... Params>
  auto select(const std::string& text, const Params&... params) {
    Lease st = query(text);
    registry_detail::bind_all(*st, params...);
    std::vector<decltype(Row::read(*st))> out;
    while (st->step()) out.push_back(Row::read(*st));
    return out;
  }

  template <typename Row, typename... Params>
  auto select_one(const std::string& text, const Params&... params)
      -> std::optional<decltype(Row::read(std::declval<sql::Stmt&>()))> {
    auto rows = select<Row>(text, params...);
    return rows.empty() ? std::nullopt : std::optional(std::move(rows.front()));
  }

  class ImmediateTxn {
   public:
    explicit ImmediateTxn(Impl& impl) : m_impl(impl) { m_impl.m_db->begin_write(); }
    ImmediateTxn(const ImmediateTxn&) = delete;  // owns the open transaction
    ImmediateTxn& operator=(const ImmediateTxn&) = delete;
    ~ImmediateTxn() {
      if (!m_open) {
        return;
      }
      try {
        m_impl.exec("ROLLBACK");
      } catch (const sql::DbError&) {
        // SQLite may already have rolled back (e.g. after SQLITE_FULL); nothing more to undo.
      }
    }
    void commit() {
      m_impl.exec("COMMIT");
      m_open = false;
    }

   private:
    Impl& m_impl;
    bool m_open = true;
  };

  std::int64_t stored_version() {
    const auto rows = column<std::int64_t>("SELECT version FROM schema_version");
    if (rows.size() > 1) {
      throw Error(ErrorCode::kRegistryError, m_file + ": schema_version holds several rows");
    }
    return rows.empty() ? 0 : rows.front();
  }

  void refuse_newer(std::int64_t version) {
    if (version > kSchemaVersion) {
      throw Error(ErrorCode::kSchemaTooNew, m_file + ": registry schema version " +
                                                std::to_string(version) +
                                                " is newer than this fleetsign supports (" +
                                                std::to_string(kSchemaVersion) + ")");
    }
  }

  // Each migration is its own transaction so a crash leaves a consistent, numbered schema. An
  // up-to-date database is only read, so opening it never waits for another process's writes.
  // A PostgreSQL registry starts at `pg_start` with `pg_schema` (the SQLite migrations before it
  // never ran there); later migrations are one script for both.
  void migrate(std::span<const std::string_view> migrations, std::string_view pg_schema,
               std::int64_t pg_start) {
    // PostgreSQL checks the schema's CREATE privilege even for IF NOT EXISTS: a role that may
    // only read and write rows opens an existing registry without it.
    if (!postgres() || count("SELECT COUNT(*) FROM information_schema.tables WHERE "
                             "table_schema = current_schema() AND table_name = "
                             "'schema_version'") == 0) {
      exec("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)");
    }
    for (;;) {
      const auto version = stored_version();
      refuse_newer(version);
      if (version == kSchemaVersion) {
        return;
      }
      ImmediateTxn txn(*this);
      if (stored_version() != version) {
        continue;  // another process migrated before we got the write lock
      }
      std::int64_t next = version + 1;
      if (postgres() && version < pg_start) {
        exec(std::string(pg_schema));
        next = pg_start;
      } else {
        exec(std::string(migrations[static_cast<std::size_t>(version)]));
      }
      exec("DELETE FROM schema_version");
      change("INSERT INTO schema_version (version) VALUES (?)", next);
      txn.commit();
    }
  }
};

}  // namespace fleetsign::engine
