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
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"

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
}  // namespace registry_detail

// A statement prepared once on the connection and reset after each use.
class PreparedQuery {
 public:
  PreparedQuery() = default;
  PreparedQuery(const PreparedQuery&) = delete;  // owns a sqlite3_stmt
  PreparedQuery& operator=(const PreparedQuery&) = delete;
  ~PreparedQuery() { sqlite3_finalize(m_stmt); }
  sqlite3_stmt* get(sqlite3* db, const char* sql) {
    if (m_stmt == nullptr && sqlite3_prepare_v2(db, sql, -1, &m_stmt, nullptr) != SQLITE_OK) {
      throw Error(ErrorCode::kRegistryError,
                  std::string("preparing '") + sql + "': " + sqlite3_errmsg(db));
    }
    return m_stmt;
  }
  sqlite3_stmt* prepared() const { return m_stmt; }  // nullptr until get() prepared it

 private:
  sqlite3_stmt* m_stmt = nullptr;
};

struct Registry::Impl {
  Session m_session;
  std::string m_file;
  PreparedQuery m_individual_slots, m_cert_state, m_pinned_cert;
  // The issuance hot path (registry_issuance.cpp): one-row and multi-row forms.
  PreparedQuery m_insert_intent, m_issue, m_device_slot;
  PreparedQuery m_insert_intents, m_issue_many, m_device_slots, m_valid_certs;
  // The job runner's hot path (registry_jobs.cpp): task rows and the slot changes of a flush.
  PreparedQuery m_insert_task, m_update_task, m_tasks_all, m_tasks_in_state;
  PreparedQuery m_device_serials, m_clear_primary, m_clear_secondary, m_revoke_superseded,
      m_revoke_released;
  PreparedQuery m_set_ie_primary, m_set_ie_secondary;

  sqlite3* db();
  // INSERTs one CA row inside the caller's transaction (registry.cpp).
  void insert_ca(const CaRecord& ca);
  // Steps a prepared INSERT/UPDATE once and resets it; throws Error naming `what` on failure
  // (kAlreadyExists for a UNIQUE/PK conflict, kRegistryBusy when locked). Returns changed rows.
  int step(sqlite3_stmt* st, const std::string& what);

  RegistryOptions m_options;  // the injected clock and the audit actor

  // A given timestamp is kept (imports, records made with the caller's clock); zero means now.
  std::int64_t stamp(std::int64_t given) const { return given != 0 ? given : m_options.now(); }
  const std::string& actor() const { return m_options.actor; }

  Impl(Session session, std::string file, RegistryOptions options)
      : m_session(std::move(session)), m_file(std::move(file)), m_options(std::move(options)) {}

  void exec(const std::string& sql) { m_session << sql, kw::now; }

  // For an UPDATE of one named row: no row changed means the name is unknown.
  static void expect_row(Statement& st, const std::string& what) {
    if (st.execute() == 0) {
      throw Error(ErrorCode::kNotFound, what + ": not found");
    }
  }

  // Runs `body`, turning database failures into Error with `what` as context.
  template <typename F>
  auto guarded(const std::string& what, F&& body) -> decltype(body()) {
    try {
      return body();
    } catch (const Poco::Exception& e) {
      throw registry_detail::translate(what, e);
    }
  }

  // Runs `body` in one BEGIN IMMEDIATE transaction: taking the write lock up front means a
  // second writer waits in busy_timeout at BEGIN instead of failing halfway through.
  template <typename F>
  auto write(const std::string& what, F&& body) -> decltype(body()) {
    return guarded(what, [&] {
      ImmediateTxn txn(*this);
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

  // Reads rows one at a time into a Row buffer; params are bound by value after the columns.
  template <typename Row, typename... Params>
  auto select(const std::string& sql, const Params&... params) {
    Row row;
    std::vector<decltype(row.take())> out;
    Statement st(m_session);
    st << sql;
    row.bind_into(st);
    ((st, kw::bind(params)), ...);
    st, kw::range(0, 1);
    while (!st.done()) {
      if (st.execute() == 0) {
        break;
      }
      out.push_back(row.take());
    }
    return out;
  }

  template <typename Row, typename... Params>
  auto select_one(const std::string& sql, const Params&... params)
      -> std::optional<decltype(Row().take())> {
    auto rows = select<Row>(sql, params...);
    return rows.empty() ? std::nullopt : std::optional(std::move(rows.front()));
  }

  class ImmediateTxn {
   public:
    explicit ImmediateTxn(Impl& impl) : m_impl(impl) { m_impl.exec("BEGIN IMMEDIATE"); }
    ImmediateTxn(const ImmediateTxn&) = delete;  // owns the open transaction
    ImmediateTxn& operator=(const ImmediateTxn&) = delete;
    ~ImmediateTxn() {
      if (!m_open) {
        return;
      }
      try {
        m_impl.exec("ROLLBACK");
      } catch (const Poco::Exception&) {
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
    std::vector<std::int64_t> rows;
    m_session << "SELECT version FROM schema_version", kw::into(rows), kw::now;
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
  void migrate(std::span<const std::string_view> migrations) {
    exec("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)");
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
      exec(std::string(migrations[static_cast<std::size_t>(version)]));
      exec("DELETE FROM schema_version");
      const std::int64_t next = version + 1;
      m_session << "INSERT INTO schema_version (version) VALUES (?)", kw::bind(next), kw::now;
      txn.commit();
    }
  }
};

}  // namespace fleetsign::engine
