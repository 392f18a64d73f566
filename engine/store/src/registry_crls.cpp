// Registry: certificate revocation lists and revoked CAs (schema v8). See stores.hpp for the
// contracts.
#include <Poco/Data/LOB.h>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

using registry_detail::to_bytes;

struct CrlRow {
  CrlRecord rec;
  BLOB der;
  void bind_into(Statement& st) {
    st, kw::into(rec.ca_name), kw::into(rec.number), kw::into(rec.this_update),
        kw::into(rec.next_update), kw::into(rec.entries), kw::into(der), kw::into(rec.created_at);
  }
  CrlRecord take() {
    rec.der = to_bytes(der);
    return rec;
  }
};

std::string column_text(sqlite3_stmt* st, int column) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, column));
  return text == nullptr
             ? std::string()
             : std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(st, column)));
}

}  // namespace

bool Registry::revoke_ca(const std::string& name, const std::string& reason, std::int64_t at) {
  return m_impl->write("revoking CA '" + name + "'", [&] {
    std::int64_t revoked_at = 0;
    std::string parent;
    Statement find =
        (m_impl->m_session << "SELECT revoked_at, COALESCE(parent, '') FROM cas WHERE name = ?",
         kw::into(revoked_at), kw::into(parent), kw::bind(name));
    if (find.execute() == 0) {
      throw Error(ErrorCode::kNotFound, "revoking CA '" + name + "': no such CA");
    }
    if (revoked_at != 0) {
      return false;
    }
    const std::int64_t when = m_impl->stamp(at);
    m_impl->m_session << "UPDATE cas SET revoked_at = ?, revocation_reason = ? WHERE name = ?",
        kw::bind(when), kw::bind(reason), kw::bind(name), kw::now;
    registry_detail::audit_row(*m_impl, "ca.revoke", name,
                               json_object({{"reason", reason}, {"parent", parent}}));
    return true;
  });
}

std::vector<RevokedSerial> Registry::revoked_certs_of(const std::string& ca_name) {
  // A CRL of 10^5 entries: read through a raw statement, not a Poco extraction per row.
  static constexpr const char* kSql =
      "SELECT serial, revoked_at, revocation_reason FROM certificates "
      "WHERE ca_name = ? AND state = 'revoked' ORDER BY serial";
  const std::string what = "reading the certificates CA '" + ca_name + "' revoked";
  return m_impl->guarded(what, [&] {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(m_impl->db(), kSql, -1, &raw, nullptr) != SQLITE_OK) {
      throw Error(ErrorCode::kRegistryError, what + ": " + sqlite3_errmsg(m_impl->db()));
    }
    const std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> st(raw, sqlite3_finalize);
    sqlite3_bind_text(raw, 1, ca_name.data(), static_cast<int>(ca_name.size()), SQLITE_STATIC);
    std::vector<RevokedSerial> out;
    int rc = SQLITE_ROW;
    while ((rc = sqlite3_step(raw)) == SQLITE_ROW) {
      out.push_back({column_text(raw, 0), sqlite3_column_int64(raw, 1), column_text(raw, 2)});
    }
    if (rc != SQLITE_DONE) {
      throw Error((rc & 0xFF) == SQLITE_BUSY ? ErrorCode::kRegistryBusy : ErrorCode::kRegistryError,
                  what + ": " + sqlite3_errmsg(m_impl->db()));
    }
    return out;
  });
}

std::int64_t Registry::reserve_crl_number(const std::string& ca_name) {
  return m_impl->write("reserving a CRL number for CA '" + ca_name + "'", [&] {
    Session& db = m_impl->m_session;
    std::int64_t known = 0;
    db << "SELECT COUNT(*) FROM cas WHERE name = ?", kw::into(known), kw::bind(ca_name), kw::now;
    if (known == 0) {
      throw Error(ErrorCode::kNotFound,
                  "reserving a CRL number for CA '" + ca_name + "': no such CA");
    }
    // The larger of what was reserved and what was stored: a copied crls table cannot lower it.
    std::int64_t last = 0;
    db << "SELECT MAX(n) FROM (SELECT last_number AS n FROM crl_numbers WHERE ca_name = ? "
          "UNION ALL SELECT COALESCE(MAX(number), 0) FROM crls WHERE ca_name = ?)",
        kw::into(last), kw::bind(ca_name), kw::bind(ca_name), kw::now;
    const std::int64_t next = last + 1;
    db << "INSERT INTO crl_numbers (ca_name, last_number) VALUES (?, ?) "
          "ON CONFLICT (ca_name) DO UPDATE SET last_number = excluded.last_number",
        kw::bind(ca_name), kw::bind(next), kw::now;
    return next;
  });
}

void Registry::store_crl(const CrlRecord& crl) {
  const std::string what =
      "storing CRL number " + std::to_string(crl.number) + " of CA '" + crl.ca_name + "'";
  m_impl->write(what, [&] {
    Session& db = m_impl->m_session;
    std::int64_t reserved = 0;
    db << "SELECT COALESCE(MAX(last_number), 0) FROM crl_numbers WHERE ca_name = ?",
        kw::into(reserved), kw::bind(crl.ca_name), kw::now;
    if (crl.number < 1 || crl.number > reserved) {
      throw Error(ErrorCode::kRegistryError, what + ": the number was never reserved");
    }
    const BLOB der(crl.der);
    const std::int64_t at = m_impl->stamp(crl.created_at);
    db << "INSERT INTO crls (ca_name, number, this_update, next_update, entries, der, created_at) "
          "VALUES (?, ?, ?, ?, ?, ?, ?)",
        kw::bind(crl.ca_name), kw::bind(crl.number), kw::bind(crl.this_update),
        kw::bind(crl.next_update), kw::bind(crl.entries), kw::bind(der), kw::bind(at), kw::now;
    registry_detail::audit_row(
        *m_impl, "crl.sign", crl.ca_name,
        json_object(
            {{"number", crl.number}, {"entries", crl.entries}, {"next_update", crl.next_update}}));
  });
}

std::optional<CrlRecord> Registry::latest_crl(const std::string& ca_name) {
  return m_impl->guarded("reading the latest CRL of CA '" + ca_name + "'", [&] {
    return m_impl->select_one<CrlRow>(
        "SELECT ca_name, number, this_update, next_update, entries, der, created_at FROM crls "
        "WHERE ca_name = ? ORDER BY number DESC LIMIT 1",
        ca_name);
  });
}

}  // namespace fleetsign::engine
