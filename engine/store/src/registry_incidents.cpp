// Registry: incidents (schema v8). See stores.hpp (IncidentStore) for the contract.
#include <Poco/Data/SQLite/Utility.h>
#include <sqlite3.h>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

using registry_detail::audit_row;

namespace {

constexpr const char* kIncidentColumns =
    "id, scope_kind, scope, reason, compromised_at, opened_at, closed_at, job_id, ca_revoked_at";

struct IncidentRow {
  Incident rec;
  void bind_into(Statement& st) {
    st, kw::into(rec.id), kw::into(rec.scope_kind), kw::into(rec.scope), kw::into(rec.reason),
        kw::into(rec.compromised_at), kw::into(rec.opened_at), kw::into(rec.closed_at),
        kw::into(rec.job_id), kw::into(rec.ca_revoked_at);
  }
  Incident take() { return rec; }
};

std::string text_at(sqlite3_stmt* st, int col) {
  const unsigned char* text = sqlite3_column_text(st, col);
  return text != nullptr ? reinterpret_cast<const char*>(text) : "";
}

std::string incident_detail(const Incident& i) {
  return json_object({{"id", i.id},
                      {"scope_kind", i.scope_kind},
                      {"scope", i.scope},
                      {"reason", i.reason},
                      {"compromised_at", i.compromised_at}});
}

}  // namespace

std::int64_t Registry::open_incident(const Incident& incident) {
  const std::string what =
      "opening an incident for " + incident.scope_kind + " '" + incident.scope + "'";
  return m_impl->write(what, [&] {
    Incident i = incident;
    i.opened_at = m_impl->stamp(i.opened_at);
    m_impl->m_session << "INSERT INTO incidents (scope_kind, scope, reason, compromised_at, "
                         "opened_at, job_id) VALUES (?, ?, ?, ?, ?, ?)",
        kw::bind(i.scope_kind), kw::bind(i.scope), kw::bind(i.reason), kw::bind(i.compromised_at),
        kw::bind(i.opened_at), kw::bind(i.job_id), kw::now;
    i.id = static_cast<std::int64_t>(sqlite3_last_insert_rowid(m_impl->db()));
    audit_row(*m_impl, "incident.open", i.scope, incident_detail(i));
    return i.id;
  });
}

void Registry::set_incident_job(std::int64_t id, const std::string& job_id) {
  m_impl->write("linking incident " + std::to_string(id) + " to job " + job_id, [&] {
    Statement st = (m_impl->m_session << "UPDATE incidents SET job_id = ? WHERE id = ?",
                    kw::bind(job_id), kw::bind(id));
    Impl::expect_row(st, "incident " + std::to_string(id));
  });
}

void Registry::mark_incident_ca_revoked(std::int64_t id, std::int64_t at) {
  m_impl->write("marking the CA of incident " + std::to_string(id) + " revoked", [&] {
    std::string kind, scope, reason;
    std::int64_t revoked = 0;
    Statement find =
        (m_impl->m_session << "SELECT scope_kind, scope, reason, ca_revoked_at FROM "
                              "incidents WHERE id = ?",
         kw::into(kind), kw::into(scope), kw::into(reason), kw::into(revoked), kw::bind(id));
    if (find.execute() == 0) {
      throw Error(ErrorCode::kNotFound, "incident " + std::to_string(id) + ": not found");
    }
    if (kind != "ca") {
      throw Error(ErrorCode::kInvalidArgument,
                  "incident " + std::to_string(id) + " is for a " + kind + ", not a CA");
    }
    if (revoked != 0) return;
    const std::int64_t when = m_impl->stamp(at);
    m_impl->m_session << "UPDATE incidents SET ca_revoked_at = ? WHERE id = ?", kw::bind(when),
        kw::bind(id), kw::now;
    audit_row(*m_impl, "incident.ca-revoke", scope,
              json_object({{"reason", reason}, {"incident", id}}));
  });
}

void Registry::close_incident(std::int64_t id, std::int64_t at) {
  m_impl->write("closing incident " + std::to_string(id), [&] {
    auto i = m_impl->select_one<IncidentRow>(
        std::string("SELECT ") + kIncidentColumns + " FROM incidents WHERE id = ?", id);
    if (!i) throw Error(ErrorCode::kNotFound, "incident " + std::to_string(id) + ": not found");
    if (i->closed_at != 0) return;
    i->closed_at = m_impl->stamp(at);
    m_impl->m_session << "UPDATE incidents SET closed_at = ? WHERE id = ?", kw::bind(i->closed_at),
        kw::bind(id), kw::now;
    audit_row(*m_impl, "incident.close", i->scope, incident_detail(*i));
  });
}

std::vector<Incident> Registry::list_incidents(bool open_only) {
  return m_impl->guarded("listing incidents", [&] {
    return m_impl->select<IncidentRow>(std::string("SELECT ") + kIncidentColumns +
                                       " FROM incidents" +
                                       (open_only ? " WHERE closed_at = 0" : "") + " ORDER BY id");
  });
}

std::optional<Incident> Registry::find_incident(std::int64_t id) {
  return m_impl->guarded("reading incident " + std::to_string(id), [&] {
    return m_impl->select_one<IncidentRow>(
        std::string("SELECT ") + kIncidentColumns + " FROM incidents WHERE id = ?", id);
  });
}

std::vector<std::string> Registry::issued_serials_in_scope(const std::string& scope_kind,
                                                           const std::string& scope,
                                                           std::int64_t before) {
  const std::string column =
      scope_kind == "ca"    ? "ca_name"
      : scope_kind == "lot" ? "lot"
      : scope_kind == "site"
          ? "site"
          : throw Error(ErrorCode::kInvalidArgument, "no incident scope '" + scope_kind + "'");
  return m_impl->guarded("listing the issued certificates of " + scope_kind + " '" + scope + "'",
                         [&] {
                           std::vector<std::string> serials;
                           m_impl->m_session << "SELECT serial FROM certificates WHERE " + column +
                                                    " = ? AND state = 'issued' AND created_at < ? "
                                                    "ORDER BY serial",
                               kw::into(serials), kw::bind(scope), kw::bind(before), kw::now;
                           return serials;
                         });
}

// The decision's point query (thousands a second while an incident is open): one prepared
// statement on the primary key.
std::optional<PinnedCert> Registry::pinned_cert(const std::string& serial) {
  sqlite3* db = Poco::Data::SQLite::Utility::dbHandle(m_impl->m_session);
  sqlite3_stmt* st = m_impl->m_pinned_cert.get(
      db,
      "SELECT device_id, ca_name, state, COALESCE(sha256, ''), COALESCE(lot, ''), "
      "COALESCE(site, ''), created_at, revoked_at, revocation_reason FROM certificates "
      "WHERE serial = ?");
  struct Reset {
    sqlite3_stmt* st;
    ~Reset() {
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
    }
  } reset{st};
  sqlite3_bind_text(st, 1, serial.data(), static_cast<int>(serial.size()), SQLITE_STATIC);
  const int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) return std::nullopt;
  if (rc != SQLITE_ROW) {
    throw Error(ErrorCode::kRegistryError,
                "reading certificate 0x" + serial + ": " + sqlite3_errmsg(db));
  }
  PinnedCert p;
  p.serial = serial;
  p.device_id = text_at(st, 0);
  p.ca_name = text_at(st, 1);
  const std::string state = text_at(st, 2);
  p.state = state == "issued"      ? CertState::kIssued
            : state == "revoked"   ? CertState::kRevoked
            : state == "abandoned" ? CertState::kAbandoned
                                   : CertState::kIntent;
  p.sha256 = text_at(st, 3);
  p.lot = text_at(st, 4);
  p.site = text_at(st, 5);
  p.created_at = sqlite3_column_int64(st, 6);
  p.revoked_at = sqlite3_column_int64(st, 7);
  p.revocation_reason = text_at(st, 8);
  return p;
}

}  // namespace fleetsign::engine
