// Registry: incidents (schema v8). See stores.hpp (IncidentStore) for the contract.
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

using registry_detail::audit_row;

namespace {

constexpr const char* kIncidentColumns =
    "id, scope_kind, scope, reason, compromised_at, opened_at, closed_at, job_id, ca_revoked_at";

std::string text_at(sql::Stmt& st, int column) { return std::string(st.text(column)); }

struct IncidentRow {
  static Incident read(sql::Stmt& st) {
    Incident rec;
    rec.id = st.int64(0);
    rec.scope_kind = text_at(st, 1);
    rec.scope = text_at(st, 2);
    rec.reason = text_at(st, 3);
    rec.compromised_at = st.int64(4);
    rec.opened_at = st.int64(5);
    rec.closed_at = st.int64(6);
    rec.job_id = text_at(st, 7);
    rec.ca_revoked_at = st.int64(8);
    return rec;
  }
};

// What mark_incident_ca_revoked needs of an incident.
struct IncidentScopeRow {
  std::string kind, scope, reason;
  std::int64_t ca_revoked_at = 0;
  static IncidentScopeRow read(sql::Stmt& st) {
    return {text_at(st, 0), text_at(st, 1), text_at(st, 2), st.int64(3)};
  }
};

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
    // RETURNING: SQLite (3.35+) and PostgreSQL both hand back the id given to the row.
    const auto id = m_impl->scalar<std::int64_t>(
        "INSERT INTO incidents (scope_kind, scope, reason, compromised_at, "
        "opened_at, job_id) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        i.scope_kind, i.scope, i.reason, i.compromised_at, i.opened_at, i.job_id);
    if (!id) {
      throw Error(ErrorCode::kRegistryError, what + ": the new incident's id was not returned");
    }
    i.id = *id;
    audit_row(*m_impl, "incident.open", i.scope, incident_detail(i));
    return i.id;
  });
}

void Registry::set_incident_job(std::int64_t id, const std::string& job_id) {
  m_impl->write("linking incident " + std::to_string(id) + " to job " + job_id, [&] {
    Impl::expect_row(m_impl->change("UPDATE incidents SET job_id = ? WHERE id = ?", job_id, id),
                     "incident " + std::to_string(id));
  });
}

void Registry::mark_incident_ca_revoked(std::int64_t id, std::int64_t at) {
  m_impl->write("marking the CA of incident " + std::to_string(id) + " revoked", [&] {
    const auto found = m_impl->select_one<IncidentScopeRow>(
        "SELECT scope_kind, scope, reason, ca_revoked_at FROM incidents WHERE id = ?", id);
    if (!found) {
      throw Error(ErrorCode::kNotFound, "incident " + std::to_string(id) + ": not found");
    }
    if (found->kind != "ca") {
      throw Error(ErrorCode::kInvalidArgument,
                  "incident " + std::to_string(id) + " is for a " + found->kind + ", not a CA");
    }
    if (found->ca_revoked_at != 0) return;
    m_impl->change("UPDATE incidents SET ca_revoked_at = ? WHERE id = ?", m_impl->stamp(at), id);
    audit_row(*m_impl, "incident.ca-revoke", found->scope,
              json_object({{"reason", found->reason}, {"incident", id}}));
  });
}

void Registry::close_incident(std::int64_t id, std::int64_t at) {
  m_impl->write("closing incident " + std::to_string(id), [&] {
    auto i = m_impl->select_one<IncidentRow>(
        std::string("SELECT ") + kIncidentColumns + " FROM incidents WHERE id = ?", id);
    if (!i) throw Error(ErrorCode::kNotFound, "incident " + std::to_string(id) + ": not found");
    if (i->closed_at != 0) return;
    i->closed_at = m_impl->stamp(at);
    m_impl->change("UPDATE incidents SET closed_at = ? WHERE id = ?", i->closed_at, id);
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
                                                           const std::string& except_batch,
                                                           std::int64_t recorded_until) {
  const std::string column =
      scope_kind == "ca"    ? "ca_name"
      : scope_kind == "lot" ? "lot"
      : scope_kind == "site"
          ? "site"
          : throw Error(ErrorCode::kInvalidArgument, "no incident scope '" + scope_kind + "'");
  return m_impl->guarded(
      "listing the issued certificates of " + scope_kind + " '" + scope + "'", [&] {
        const std::string sql = "SELECT serial FROM certificates WHERE " + column +
                                " = ? AND state = 'issued' AND created_at <= ?" +
                                (except_batch.empty() ? "" : " AND batch_id <> ?") +
                                " ORDER BY serial";
        return except_batch.empty()
                   ? m_impl->column<std::string>(sql, scope, recorded_until)
                   : m_impl->column<std::string>(sql, scope, recorded_until, except_batch);
      });
}

// The decision's point query (thousands a second while an incident is open): one prepared
// statement on the primary key.
std::optional<PinnedCert> Registry::pinned_cert(const std::string& serial) {
  static const std::string kSql =
      "SELECT device_id, ca_name, state, COALESCE(sha256, ''), COALESCE(lot, ''), "
      "COALESCE(site, ''), created_at, revoked_at, revocation_reason, batch_id FROM certificates "
      "WHERE serial = ?";
  try {
    sql::Stmt& st = m_impl->m_pinned_cert.get(m_impl->db(), kSql);
    struct Reset {
      sql::Stmt& st;
      ~Reset() { st.reset(); }
    } reset{st};
    st.bind(1, serial);
    if (!st.step()) return std::nullopt;
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
    p.created_at = st.int64(6);
    p.revoked_at = st.int64(7);
    p.revocation_reason = text_at(st, 8);
    p.batch_id = text_at(st, 9);
    return p;
  } catch (const sql::DbError& e) {
    // As before the port: any failure of this lookup is a registry error.
    throw Error(ErrorCode::kRegistryError, "reading certificate 0x" + serial + ": " + e.what());
  }
}

}  // namespace fleetsign::engine
