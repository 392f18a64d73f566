// Registry on SQLite through Poco::Data. See registry.hpp for the contract.
//
// Poco re-prepares a Statement each time it is executed afresh, so the issuance hot path
// (record_intents, record_issued, devices_with_valid_cert) lives in registry_issuance.cpp, on
// sqlite3 statements prepared once per connection.
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

namespace fleetsign::engine {

namespace kw = Poco::Data::Keywords;
using Poco::Data::BLOB;
using Poco::Data::Session;
using Poco::Data::Statement;

namespace {

using registry_detail::to_bytes;
using registry_detail::translate;

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

// Row buffers: Statement extractions write into these members, one row per execute().
struct CertRow {
  CertRecord rec;
  std::string state;
  BLOB der;
  void bind_into(Statement& st) {
    st, kw::into(rec.serial), kw::into(rec.device_id), kw::into(rec.ca_name),
        kw::into(rec.batch_id), kw::into(rec.seq), kw::into(state), kw::into(rec.subject),
        kw::into(rec.not_before), kw::into(rec.not_after), kw::into(rec.sha1), kw::into(rec.sha256),
        kw::into(der), kw::into(rec.lineage.lot), kw::into(rec.lineage.line),
        kw::into(rec.lineage.site), kw::into(rec.lineage.operator_name), kw::into(rec.created_at);
  }
  CertRecord take() {
    rec.state = parse_state(state);
    rec.der = to_bytes(der);
    return rec;
  }
};

struct CaRow {
  CaRecord rec;
  BLOB cert;
  std::int64_t verified = 0;
  void bind_into(Statement& st) {
    st, kw::into(rec.name), kw::into(rec.parent), kw::into(rec.subject), kw::into(rec.key_uri),
        kw::into(rec.key_type), kw::into(cert), kw::into(rec.not_before), kw::into(rec.not_after),
        kw::into(rec.sha1), kw::into(rec.sha256), kw::into(verified), kw::into(rec.created_at),
        kw::into(rec.revoked_at), kw::into(rec.revocation_reason);
  }
  CaRecord take() {
    rec.cert_der = to_bytes(cert);
    rec.verified = verified != 0;
    return rec;
  }
};

struct BatchRow {
  BatchRecord rec;
  void bind_into(Statement& st) {
    st, kw::into(rec.id), kw::into(rec.ca_name), kw::into(rec.params_json), kw::into(rec.state),
        kw::into(rec.created_at), kw::into(rec.finished_at), kw::into(rec.issued),
        kw::into(rec.rejected), kw::into(rec.watermark), kw::into(rec.offsets_json);
  }
  BatchRecord take() { return rec; }
};

struct AuditRow {
  AuditEntry rec;
  void bind_into(Statement& st) {
    st, kw::into(rec.id), kw::into(rec.at), kw::into(rec.actor), kw::into(rec.action),
        kw::into(rec.subject), kw::into(rec.detail);
  }
  AuditEntry take() { return rec; }
};

}  // namespace

sqlite3* Registry::Impl::db() { return Poco::Data::SQLite::Utility::dbHandle(m_session); }

int Registry::Impl::step(sqlite3_stmt* st, const std::string& what) {
  const int rc = sqlite3_step(st);
  const int changed = rc == SQLITE_DONE ? sqlite3_changes(db()) : 0;
  const std::string message = rc == SQLITE_DONE ? "" : sqlite3_errmsg(db());
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (rc == SQLITE_DONE) {
    return changed;
  }
  const int primary = rc & 0xFF;
  const ErrorCode code = primary == SQLITE_CONSTRAINT ? ErrorCode::kAlreadyExists
                         : primary == SQLITE_BUSY || primary == SQLITE_LOCKED
                             ? ErrorCode::kRegistryBusy
                             : ErrorCode::kRegistryError;
  throw Error(code, what + ": " + message);
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
  static std::once_flag registered;
  std::call_once(registered, [] { Poco::Data::SQLite::Connector::registerConnector(); });
  const std::string what = "opening registry " + file.string();
  try {
    // Poco's login timeout retries a failed open for that many seconds (a missing directory
    // would hang for a minute); 0 fails at once. Lock waits are busy_timeout's job.
    auto impl = std::make_unique<Impl>(Session("SQLite", file.string(), 0), file.string(),
                                       std::move(options));
    impl->exec("PRAGMA busy_timeout = 10000");
    std::string mode;
    impl->m_session << "PRAGMA journal_mode = WAL", kw::into(mode), kw::now;
    if (mode != "wal") {
      // Without WAL + synchronous=FULL a committed serial could be lost on power failure.
      throw Error(ErrorCode::kRegistryError,
                  what + ": cannot enable WAL (journal_mode " + mode + ")");
    }
    impl->exec("PRAGMA synchronous = FULL");
    impl->exec("PRAGMA foreign_keys = ON");
    // 64 MiB of page cache: the index pages a batch touches stay in memory between chunks.
    impl->exec("PRAGMA cache_size = -65536");
    register_functions(impl->db());
    impl->migrate(kMigrations);
    return std::unique_ptr<Registry>(new Registry(std::move(impl)));
  } catch (const Poco::Exception& e) {
    throw translate(what, e);
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
  Poco::Nullable<std::string> parent;
  if (!ca.parent.empty()) {
    parent = ca.parent;
  }
  const BLOB cert(ca.cert_der);
  const std::int64_t verified = ca.verified ? 1 : 0;
  m_session << "INSERT INTO cas (" << kCaColumns << ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      kw::bind(ca.name), kw::bind(parent), kw::bind(ca.subject), kw::bind(ca.key_uri),
      kw::bind(ca.key_type), kw::bind(cert), kw::bind(ca.not_before), kw::bind(ca.not_after),
      kw::bind(ca.sha1), kw::bind(ca.sha256), kw::bind(verified), kw::bind(stamp(ca.created_at)),
      kw::now;
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
    return m_impl->select<CaRow>(kSelectCas + "ORDER BY created_at, rowid");
  });
}

void Registry::set_ca_verified(const std::string& name, bool verified) {
  m_impl->write("marking CA '" + name + "' verified", [&] {
    const std::int64_t flag = verified ? 1 : 0;
    Statement st = (m_impl->m_session << "UPDATE cas SET verified = ? WHERE name = ?",
                    kw::bind(flag), kw::bind(name));
    Impl::expect_row(st, "marking CA '" + name + "' verified");
  });
}

// --- certificates

std::int64_t Registry::abandon_intents(const std::string& batch_id) {
  return m_impl->write("abandoning intents of batch '" + batch_id + "'", [&] {
    Statement st = (m_impl->m_session << "UPDATE certificates SET state = 'abandoned' "
                                         "WHERE batch_id = ? AND state = 'intent'",
                    kw::bind(batch_id));
    return static_cast<std::int64_t>(st.execute());
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
    std::vector<std::string> ids;
    m_impl->m_session
        << "SELECT device_id FROM certificates WHERE batch_id = ? AND state = 'issued'",
        kw::into(ids), kw::bind(batch_id), kw::now;
    return ids;
  });
}

std::int64_t Registry::count_certs(const std::string& batch_id, CertState state) {
  const std::string name(cert_state_name(state));
  return m_impl->guarded("counting " + name + " certificates", [&] {
    std::int64_t count = 0;
    if (batch_id.empty()) {
      m_impl->m_session << "SELECT COUNT(*) FROM certificates WHERE state = ?", kw::into(count),
          kw::bind(name), kw::now;
    } else {
      m_impl->m_session << "SELECT COUNT(*) FROM certificates WHERE batch_id = ? AND state = ?",
          kw::into(count), kw::bind(batch_id), kw::bind(name), kw::now;
    }
    return count;
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
    m_impl->m_session << "INSERT INTO batches (" << kBatchColumns
                      << ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        kw::bind(batch.id), kw::bind(batch.ca_name), kw::bind(batch.params_json), kw::bind(state),
        kw::bind(m_impl->stamp(batch.created_at)), kw::bind(batch.finished_at),
        kw::bind(batch.issued), kw::bind(batch.rejected), kw::bind(batch.watermark),
        kw::bind(batch.offsets_json), kw::now;
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
    Statement st = (m_impl->m_session << "UPDATE batches SET watermark = ?, offsets_json = ?, "
                                         "issued = ?, rejected = ? WHERE id = ?",
                    kw::bind(watermark), kw::bind(offsets_json), kw::bind(issued),
                    kw::bind(rejected), kw::bind(id));
    Impl::expect_row(st, what);
  });
}

void Registry::finish_batch(const std::string& id, std::int64_t finished_at) {
  const std::string what = "finishing batch '" + id + "'";
  m_impl->write(what, [&] {
    Statement st = (m_impl->m_session << "UPDATE batches SET state = 'finished', finished_at = ? "
                                         "WHERE id = ?",
                    kw::bind(finished_at), kw::bind(id));
    Impl::expect_row(st, what);
  });
}

// --- audit

void Registry::audit(const std::string& action, const std::string& subject,
                     const std::string& detail) {
  m_impl->write("appending audit entry '" + action + "'", [&] {
    m_impl->m_session << "INSERT INTO audit (at, actor, action, subject, detail) "
                         "VALUES (?, ?, ?, ?, ?)",
        kw::bind(m_impl->stamp(0)), kw::bind(m_impl->actor()), kw::bind(action), kw::bind(subject),
        kw::bind(detail), kw::now;
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
    std::string sql = "SELECT id, at, actor, action, subject, detail FROM audit WHERE 1";
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
    std::vector<AuditEntry> out;
    AuditRow row;
    Statement st(m_impl->m_session);
    st << sql;
    row.bind_into(st);
    for (const auto& t : text) st, kw::bind(t);
    st, kw::range(0, 1);
    while (!st.done() && st.execute() > 0) out.push_back(row.take());
    return out;
  });
}

}  // namespace fleetsign::engine
