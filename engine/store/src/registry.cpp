// The registry: opening (SQLite or PostgreSQL), CAs, certificates, batches and the audit log. See
// registry.hpp for the contract; the issuance hot path is registry_issuance.cpp.
#include "fleetsign/engine/registry.hpp"

#include <Poco/Data/LOB.h>
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/SQLite/SQLiteException.h>
#include <Poco/Data/SQLite/Utility.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <string_view>
#include <utility>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"
#include "registry_schema.hpp"
#include "registry_schema_pg.hpp"

namespace fleetsign::engine {

namespace kw = Poco::Data::Keywords;
using Poco::Data::BLOB;
using Poco::Data::Session;
using Poco::Data::Statement;

namespace {

using registry_detail::translate;

// A PostgreSQL registry is created at this version by kPgSchema.
constexpr std::int64_t kPgStartVersion = 13;

// fleetsign_key_sha256(der): the SPKI SHA-256 of a certificate ('' when it does not parse), for
// the v8 migration that fills key_sha256 of the certificates recorded before.
void key_sha256_function(sqlite3_context* ctx, int, sqlite3_value** argv) {
  const auto* blob = static_cast<const std::uint8_t*>(sqlite3_value_blob(argv[0]));
  const int size = sqlite3_value_bytes(argv[0]);
  const std::string hash = blob == nullptr
                               ? std::string()
                               : key_sha256_of_cert(ByteView(blob, static_cast<std::size_t>(size)));
  sqlite3_result_text(ctx, hash.data(), static_cast<int>(hash.size()), SQLITE_TRANSIENT);
}

void register_functions(sqlite3* db) {
  if (sqlite3_create_function_v2(db, "fleetsign_key_sha256", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
                                 nullptr, key_sha256_function, nullptr, nullptr,
                                 nullptr) != SQLITE_OK) {
    throw Error(ErrorCode::kRegistryError,
                std::string("registering fleetsign_key_sha256: ") + sqlite3_errmsg(db));
  }
}

// Column lists in the order the *Row buffers below extract them.
constexpr const char* kCaColumns =
    "name, parent, subject, key_uri, key_type, cert_der, not_before, not_after, sha1, sha256, "
    "verified, created_at";
constexpr const char* kBatchColumns =
    "id, ca_name, params_json, state, created_at, finished_at, issued, rejected, watermark, "
    "offsets_json";
const std::string kSelectCerts =
    "SELECT serial, device_id, ca_name, batch_id, seq, state, subject, not_before, not_after, "
    "sha1, sha256, der, lot, line, site, operator, created_at FROM certificates ";
const std::string kSelectCas =
    std::string("SELECT ") + kCaColumns + ", revoked_at, revocation_reason FROM cas ";
const std::string kSelectBatches = std::string("SELECT ") + kBatchColumns + " FROM batches ";

constexpr std::array<std::string_view, 4> kStateNames = {"intent", "issued", "abandoned",
                                                         "revoked"};

CertState parse_state(const std::string& name) {
  const auto it = std::find(kStateNames.begin(), kStateNames.end(), name);
  if (it != kStateNames.end()) {
    return static_cast<CertState>(it - kStateNames.begin());
  }
  throw Error(ErrorCode::kRegistryError, "unknown certificate state '" + name + "' in registry");
}

// Row readers, in the column order of the SELECTs above. A NULL text reads "", a NULL number 0.
std::string str(sql::Stmt& st, int column) { return std::string(st.text(column)); }

struct CertRow {
  static CertRecord read(sql::Stmt& st) {
    CertRecord rec;
    rec.serial = str(st, 0);
    rec.device_id = str(st, 1);
    rec.ca_name = str(st, 2);
    rec.batch_id = str(st, 3);
    rec.seq = st.int64(4);
    rec.state = parse_state(str(st, 5));
    rec.subject = str(st, 6);
    rec.not_before = st.int64(7);
    rec.not_after = st.int64(8);
    rec.sha1 = str(st, 9);
    rec.sha256 = str(st, 10);
    rec.der = st.blob(11);
    rec.lineage.lot = str(st, 12);
    rec.lineage.line = str(st, 13);
    rec.lineage.site = str(st, 14);
    rec.lineage.operator_name = str(st, 15);
    rec.created_at = st.int64(16);
    return rec;
  }
};

struct CaRow {
  static CaRecord read(sql::Stmt& st) {
    CaRecord rec;
    rec.name = str(st, 0);
    rec.parent = str(st, 1);
    rec.subject = str(st, 2);
    rec.key_uri = str(st, 3);
    rec.key_type = str(st, 4);
    rec.cert_der = st.blob(5);
    rec.not_before = st.int64(6);
    rec.not_after = st.int64(7);
    rec.sha1 = str(st, 8);
    rec.sha256 = str(st, 9);
    rec.verified = st.int64(10) != 0;
    rec.created_at = st.int64(11);
    rec.revoked_at = st.int64(12);
    rec.revocation_reason = str(st, 13);
    return rec;
  }
};

struct BatchRow {
  static BatchRecord read(sql::Stmt& st) {
    BatchRecord rec;
    rec.id = str(st, 0);
    rec.ca_name = str(st, 1);
    rec.params_json = str(st, 2);
    rec.state = str(st, 3);
    rec.created_at = st.int64(4);
    rec.finished_at = st.int64(5);
    rec.issued = st.int64(6);
    rec.rejected = st.int64(7);
    rec.watermark = st.int64(8);
    rec.offsets_json = str(st, 9);
    return rec;
  }
};

using registry_detail::AuditRow;

}  // namespace

sqlite3* Registry::Impl::sqlite_handle() {
  return m_session ? Poco::Data::SQLite::Utility::dbHandle(*m_session) : nullptr;
}

std::string_view cert_state_name(CertState state) noexcept {
  const auto index = static_cast<std::size_t>(state);
  return index < kStateNames.size() ? kStateNames[index] : "unknown";
}

std::unique_ptr<Registry> Registry::open(const std::filesystem::path& file,
                                         RegistryOptions options) {
  if (!options.now) {
    options.now = [] { return static_cast<std::int64_t>(std::time(nullptr)); };
  }
  if (sql::is_postgres_url(file.string())) {
    return open_postgres(file.string(), std::move(options));
  }
  static std::once_flag registered;
  std::call_once(registered, [] { Poco::Data::SQLite::Connector::registerConnector(); });
  const std::string what = "opening registry " + file.string();
  try {
    // Poco's login timeout retries a failed open for that many seconds (a missing directory
    // would hang for a minute); 0 fails at once. Lock waits are busy_timeout's job.
    Session session("SQLite", file.string(), 0);
    auto db = sql::sqlite_db(Poco::Data::SQLite::Utility::dbHandle(session), file.string());
    auto impl = std::make_unique<Impl>(std::move(session), std::move(db), file.string(),
                                       std::move(options));
    impl->exec("PRAGMA busy_timeout = 10000");
    const auto mode = impl->scalar<std::string>("PRAGMA journal_mode = WAL").value_or("");
    if (mode != "wal") {
      // Without WAL + synchronous=FULL a committed serial could be lost on power failure.
      throw Error(ErrorCode::kRegistryError,
                  what + ": cannot enable WAL (journal_mode " + mode + ")");
    }
    impl->exec("PRAGMA synchronous = FULL");
    impl->exec("PRAGMA foreign_keys = ON");
    // 64 MiB of page cache: the index pages a batch touches stay in memory between chunks.
    impl->exec("PRAGMA cache_size = -65536");
    register_functions(impl->sqlite_handle());
    impl->guarded(what, [&] { impl->migrate(kMigrations, kPgSchema, kPgStartVersion); });
    return std::unique_ptr<Registry>(new Registry(std::move(impl)));
  } catch (const sql::DbError& e) {
    throw Error(e.code(), what + ": " + e.what());
  } catch (const Poco::Exception& e) {
    throw translate(what, e);
  }
}

bool is_postgres_url(std::string_view text) { return sql::is_postgres_url(text); }
bool registry_url_holds_password(const std::string& url) { return sql::url_holds_password(url); }
bool registry_url_names_database(const std::string& url) { return sql::url_names_database(url); }
std::string redacted_registry_url(const std::string& url) { return sql::redact_url(url); }

std::unique_ptr<Registry> Registry::open_postgres(const std::string& url, RegistryOptions options) {
  const std::string shown = sql::redact_url(url);
  const std::string what = "opening registry " + shown;
  try {
    const bool must_exist = options.must_exist;
    auto impl =
        std::make_unique<Impl>(std::nullopt, sql::postgres_db(url), shown, std::move(options));
    if (must_exist && impl->count("SELECT COUNT(*) FROM information_schema.tables WHERE "
                                  "table_schema = current_schema() AND table_name = "
                                  "'schema_version'") == 0) {
      throw Error(ErrorCode::kRegistryMissing,
                  "the PostgreSQL database " + shown +
                      " holds no fleetsign registry, but this is an initialised home: the record "
                      "of its CAs and certificates is gone or the URL is wrong. Restore the "
                      "database from a backup; a new registry is never created in place of a "
                      "lost one, because the token's CA keys would be orphaned");
    }
    impl->migrate(kMigrations, kPgSchema, kPgStartVersion);
    return std::unique_ptr<Registry>(new Registry(std::move(impl)));
  } catch (const sql::DbError& e) {
    throw Error(e.code(), what + ": " + e.what());
  }
}

Registry::Registry(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
Registry::~Registry() = default;

int Registry::schema_version() {
  return m_impl->guarded("reading schema version",
                         [&] { return static_cast<int>(m_impl->stored_version()); });
}

// --- CAs

void Registry::Impl::insert_ca(const CaRecord& ca) {
  // NULL, not '', for a root: the parent column is a foreign key.
  const std::optional<std::string> parent =
      ca.parent.empty() ? std::nullopt : std::optional(ca.parent);
  change(std::string("INSERT INTO cas (") + kCaColumns +
             ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
         ca.name, parent, ca.subject, ca.key_uri, ca.key_type, ca.cert_der, ca.not_before,
         ca.not_after, ca.sha1, ca.sha256, ca.verified, stamp(ca.created_at));
}

void Registry::add_ca(const CaRecord& ca) {
  m_impl->write("adding CA '" + ca.name + "'", [&] { m_impl->insert_ca(ca); });
}

std::optional<CaRecord> Registry::find_ca(const std::string& name) {
  return m_impl->guarded("reading CA '" + name + "'", [&] {
    return m_impl->select_one<CaRow>(kSelectCas + "WHERE name = ?", name);
  });
}

std::vector<CaRecord> Registry::list_cas() {
  return m_impl->guarded("listing CAs", [&] {
    // PostgreSQL keeps no insertion order: a root before the CAs made in its second, then names.
    return m_impl->select<CaRow>(
        kSelectCas + (m_impl->postgres()
                          ? "ORDER BY created_at, CASE WHEN parent IS NULL THEN 0 ELSE 1 END, name"
                          : "ORDER BY created_at, rowid"));
  });
}

void Registry::set_ca_verified(const std::string& name, bool verified) {
  const std::string what = "marking CA '" + name + "' verified";
  m_impl->write(what, [&] {
    Impl::expect_row(m_impl->change("UPDATE cas SET verified = ? WHERE name = ?", verified, name),
                     what);
  });
}

// --- certificates

std::int64_t Registry::abandon_intents(const std::string& batch_id) {
  return m_impl->write("abandoning intents of batch '" + batch_id + "'", [&] {
    return m_impl->change(
        "UPDATE certificates SET state = 'abandoned' WHERE batch_id = ? AND state = 'intent'",
        batch_id);
  });
}

// revoke_certs: registry_revocation.cpp (one path with revocation runs).

std::optional<CertRecord> Registry::find_cert(const std::string& serial) {
  return m_impl->guarded("reading certificate 0x" + serial, [&] {
    return m_impl->select_one<CertRow>(kSelectCerts + "WHERE serial = ?", serial);
  });
}

std::vector<CertRecord> Registry::batch_issued_after(const std::string& batch_id,
                                                     std::int64_t after_seq) {
  return m_impl->guarded("reading issued certificates of batch '" + batch_id + "'", [&] {
    return m_impl->select<CertRow>(kSelectCerts +
                                       "WHERE batch_id = ? AND seq > ? "
                                       "AND state = 'issued' ORDER BY seq",
                                   batch_id, after_seq);
  });
}

std::vector<std::string> Registry::batch_device_ids(const std::string& batch_id) {
  return m_impl->guarded("reading device IDs of batch '" + batch_id + "'", [&] {
    return m_impl->column<std::string>(
        "SELECT device_id FROM certificates WHERE batch_id = ? AND state = 'issued'", batch_id);
  });
}

std::int64_t Registry::count_certs(const std::string& batch_id, CertState state) {
  const std::string name(cert_state_name(state));
  return m_impl->guarded("counting " + name + " certificates", [&] {
    return batch_id.empty()
               ? m_impl->count("SELECT COUNT(*) FROM certificates WHERE state = ?", name)
               : m_impl->count("SELECT COUNT(*) FROM certificates WHERE batch_id = ? AND state = ?",
                               batch_id, name);
  });
}

std::vector<CertRecord> Registry::certs_of_device(const std::string& device_id) {
  return m_impl->guarded("reading certificates of device '" + device_id + "'", [&] {
    return m_impl->select<CertRow>(kSelectCerts +
                                       "WHERE device_id = ? "
                                       "ORDER BY created_at, not_before, serial",
                                   device_id);
  });
}

// --- batches

void Registry::create_batch(const BatchRecord& batch) {
  m_impl->write("creating batch '" + batch.id + "'", [&] {
    const std::string state = batch.state.empty() ? "running" : batch.state;
    m_impl->change(std::string("INSERT INTO batches (") + kBatchColumns +
                       ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   batch.id, batch.ca_name, batch.params_json, state,
                   m_impl->stamp(batch.created_at), batch.finished_at, batch.issued, batch.rejected,
                   batch.watermark, batch.offsets_json);
  });
}

std::optional<BatchRecord> Registry::find_batch(const std::string& id) {
  return m_impl->guarded("reading batch '" + id + "'", [&] {
    return m_impl->select_one<BatchRow>(kSelectBatches + "WHERE id = ?", id);
  });
}

std::vector<BatchRecord> Registry::list_batches(const ListPage& page) {
  return m_impl->guarded("listing batches", [&] {
    std::string sql = kSelectBatches;
    if (!page.after.empty()) {
      if (!find_batch(page.after)) {
        throw Error(ErrorCode::kNotFound,
                    "no batch '" + page.after + "' to list the batches after");
      }
      sql += "WHERE (created_at, id) < (SELECT created_at, id FROM batches WHERE id = ?) ";
    }
    sql += "ORDER BY created_at DESC, id DESC";
    if (page.limit > 0) sql += " LIMIT " + std::to_string(page.limit);
    return page.after.empty() ? m_impl->select<BatchRow>(sql)
                              : m_impl->select<BatchRow>(sql, page.after);
  });
}

void Registry::update_batch_progress(const std::string& id, std::int64_t watermark,
                                     const std::string& offsets_json, std::int64_t issued,
                                     std::int64_t rejected) {
  const std::string what = "recording progress of batch '" + id + "'";
  m_impl->write(what, [&] {
    Impl::expect_row(m_impl->change("UPDATE batches SET watermark = ?, offsets_json = ?, "
                                    "issued = ?, rejected = ? WHERE id = ?",
                                    watermark, offsets_json, issued, rejected, id),
                     what);
  });
}

void Registry::finish_batch(const std::string& id, std::int64_t finished_at) {
  const std::string what = "finishing batch '" + id + "'";
  m_impl->write(what, [&] {
    Impl::expect_row(
        m_impl->change("UPDATE batches SET state = 'finished', finished_at = ? WHERE id = ?",
                       finished_at, id),
        what);
  });
}

// --- audit

void Registry::audit(const std::string& action, const std::string& subject,
                     const std::string& detail) {
  m_impl->write("appending audit entry '" + action + "'", [&] {
    m_impl->change("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                   m_impl->stamp(0), m_impl->actor(), action, subject, detail);
  });
}

std::vector<AuditEntry> Registry::audit_log(std::int64_t limit) {
  return m_impl->guarded("reading the audit log", [&] {
    std::string sql = "SELECT id, at, actor, action, subject, detail FROM audit ORDER BY id DESC";
    if (limit > 0) {
      sql += " LIMIT " + std::to_string(limit);
    }
    return m_impl->select<AuditRow>(sql);
  });
}

std::vector<AuditEntry> Registry::audit_page(const AuditQuery& q) {
  return m_impl->guarded("reading the audit log", [&] {
    // Newest first along the primary key; the filters are checked on the rows walked.
    std::string sql = "SELECT id, at, actor, action, subject, detail FROM audit WHERE 1 = 1";
    std::vector<std::string> text;
    if (q.before_id > 0) sql += " AND id < " + std::to_string(q.before_id);
    if (q.since > 0) sql += " AND at >= " + std::to_string(q.since);
    if (!q.action_prefix.empty()) {
      sql += " AND substr(action, 1, length(?)) = ?";
      text.insert(text.end(), {q.action_prefix, q.action_prefix});
    }
    if (!q.subject_prefix.empty()) {
      sql += " AND substr(subject, 1, length(?)) = ?";
      text.insert(text.end(), {q.subject_prefix, q.subject_prefix});
    }
    if (!q.actor.empty()) {
      sql += " AND actor = ?";
      text.push_back(q.actor);
    }
    sql += " ORDER BY id DESC LIMIT " + std::to_string(std::max<std::int64_t>(q.limit, 1));
    auto st = m_impl->query(sql);
    for (std::size_t i = 0; i < text.size(); ++i) st->bind(static_cast<int>(i + 1), text[i]);
    std::vector<AuditEntry> out;
    while (st->step()) out.push_back(AuditRow::read(*st));
    return out;
  });
}

}  // namespace fleetsign::engine
