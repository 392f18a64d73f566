// Registry: certificate revocation lists and revoked CAs (schema v8). See stores.hpp for the
// contracts.
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

struct CrlRow {
  static CrlRecord read(sql::Stmt& st) {
    CrlRecord rec;
    rec.ca_name = std::string(st.text(0));
    rec.number = st.int64(1);
    rec.this_update = st.int64(2);
    rec.next_update = st.int64(3);
    rec.entries = st.int64(4);
    rec.der = st.blob(5);
    rec.created_at = st.int64(6);
    rec.key_compromise_entries = st.int64(7);
    return rec;
  }
};

struct RevokedRow {
  static RevokedSerial read(sql::Stmt& st) {
    return {std::string(st.text(0)), st.int64(1), std::string(st.text(2))};
  }
};

// A CA's revocation state and its parent ('' for a root).
struct CaRevocationRow {
  std::int64_t revoked_at = 0;
  std::string parent;
  static CaRevocationRow read(sql::Stmt& st) { return {st.int64(0), std::string(st.text(1))}; }
};

}  // namespace

bool Registry::revoke_ca(const std::string& name, const std::string& reason, std::int64_t at) {
  return m_impl->write("revoking CA '" + name + "'", [&] {
    const auto found = m_impl->select_one<CaRevocationRow>(
        "SELECT revoked_at, COALESCE(parent, '') FROM cas WHERE name = ?", name);
    if (!found) {
      throw Error(ErrorCode::kNotFound, "revoking CA '" + name + "': no such CA");
    }
    if (found->revoked_at != 0) {
      return false;
    }
    m_impl->change("UPDATE cas SET revoked_at = ?, revocation_reason = ? WHERE name = ?",
                   m_impl->stamp(at), reason, name);
    registry_detail::audit_row(*m_impl, "ca.revoke", name,
                               json_object({{"reason", reason}, {"parent", found->parent}}));
    return true;
  });
}

std::vector<RevokedSerial> Registry::revoked_certs_of(const std::string& ca_name) {
  // A CRL of 10^5 entries: one prepared statement stepped row by row (the partial index
  // certificates_revoked makes it one range read).
  return m_impl->guarded("reading the certificates CA '" + ca_name + "' revoked", [&] {
    return m_impl->select<RevokedRow>(
        "SELECT serial, revoked_at, revocation_reason FROM certificates "
        "WHERE ca_name = ? AND state = 'revoked' ORDER BY serial",
        ca_name);
  });
}

std::int64_t Registry::reserve_crl_number(const std::string& ca_name) {
  return m_impl->write("reserving a CRL number for CA '" + ca_name + "'", [&] {
    if (m_impl->count("SELECT COUNT(*) FROM cas WHERE name = ?", ca_name) == 0) {
      throw Error(ErrorCode::kNotFound,
                  "reserving a CRL number for CA '" + ca_name + "': no such CA");
    }
    // The larger of what was reserved and what was stored: a copied crls table cannot lower it.
    // (A subquery in FROM needs an alias on PostgreSQL 15.)
    const std::int64_t last = m_impl->count(
        "SELECT MAX(n) FROM (SELECT last_number AS n FROM crl_numbers WHERE ca_name = ? "
        "UNION ALL SELECT COALESCE(MAX(number), 0) FROM crls WHERE ca_name = ?) AS known",
        ca_name, ca_name);
    const std::int64_t next = last + 1;
    m_impl->change(
        "INSERT INTO crl_numbers (ca_name, last_number) VALUES (?, ?) "
        "ON CONFLICT (ca_name) DO UPDATE SET last_number = excluded.last_number",
        ca_name, next);
    return next;
  });
}

void Registry::store_crl(const CrlRecord& crl) {
  const std::string what =
      "storing CRL number " + std::to_string(crl.number) + " of CA '" + crl.ca_name + "'";
  m_impl->write(what, [&] {
    const std::int64_t reserved = m_impl->count(
        "SELECT COALESCE(MAX(last_number), 0) FROM crl_numbers WHERE ca_name = ?", crl.ca_name);
    if (crl.number < 1 || crl.number > reserved) {
      throw Error(ErrorCode::kRegistryError, what + ": the number was never reserved");
    }
    m_impl->change(
        "INSERT INTO crls (ca_name, number, this_update, next_update, entries, der, created_at, "
        "key_compromise_entries) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        crl.ca_name, crl.number, crl.this_update, crl.next_update, crl.entries, crl.der,
        m_impl->stamp(crl.created_at), crl.key_compromise_entries);
    registry_detail::audit_row(
        *m_impl, "crl.sign", crl.ca_name,
        json_object(
            {{"number", crl.number}, {"entries", crl.entries}, {"next_update", crl.next_update}}));
  });
}

std::optional<CrlRecord> Registry::latest_crl(const std::string& ca_name) {
  return m_impl->guarded("reading the latest CRL of CA '" + ca_name + "'", [&] {
    return m_impl->select_one<CrlRow>(
        "SELECT ca_name, number, this_update, next_update, entries, der, created_at, "
        "key_compromise_entries FROM crls "
        "WHERE ca_name = ? ORDER BY number DESC LIMIT 1",
        ca_name);
  });
}

}  // namespace fleetsign::engine
