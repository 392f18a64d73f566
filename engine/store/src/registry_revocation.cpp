// Registry: revocation runs (schema v10). See stores.hpp (RevocationStore) for the contract.
// revoke_certs (CertificateStore) takes the same path: for "keyCompromise" it also blocks the
// certificates' keys, and its audit detail then adds "keys_blocked".
//
// Why sqlite3 statements here and not Poco's: a revocation run writes several rows per
// certificate (the certificate, two device slots, two individual-enrollment slots) for up to a
// whole lot; Poco prepares a statement again on every execution, sqlite3 statements prepared once
// per call are stepped per row.
#include <sqlite3.h>

#include <algorithm>
#include <unordered_set>

#include "fleetsign/engine/json.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

void bind_text(sqlite3_stmt* st, int index, const std::string& value) {
  sqlite3_bind_text(st, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
}

std::string column_text(sqlite3_stmt* st, int column) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, column));
  return text == nullptr
             ? std::string()
             : std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(st, column)));
}

// A statement finalized on scope exit; steps throw Error naming `what`.
class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql, const std::string& what) : m_db(db), m_what(what) {
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &m_st, nullptr) != SQLITE_OK) {
      throw Error(ErrorCode::kRegistryError,
                  what + ": preparing '" + sql + "': " + sqlite3_errmsg(db));
    }
  }
  Stmt(const Stmt&) = delete;  // owns a sqlite3_stmt
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(m_st); }
  sqlite3_stmt* get() const { return m_st; }
  // SQLITE_ROW → true, SQLITE_DONE → false (and the statement is reset); errors throw.
  bool row() {
    const int rc = sqlite3_step(m_st);
    if (rc == SQLITE_ROW) return true;
    const std::string message = rc == SQLITE_DONE ? "" : sqlite3_errmsg(m_db);
    sqlite3_reset(m_st);
    if (rc != SQLITE_DONE) {
      const int primary = rc & 0xFF;
      throw Error(primary == SQLITE_BUSY || primary == SQLITE_LOCKED ? ErrorCode::kRegistryBusy
                                                                     : ErrorCode::kRegistryError,
                  m_what + ": " + message);
    }
    return false;
  }
  int run() {  // a write: steps to the end, returns changed rows
    while (row()) {
    }
    sqlite3_clear_bindings(m_st);
    return sqlite3_changes(m_db);
  }
  void reset() {
    sqlite3_reset(m_st);
    sqlite3_clear_bindings(m_st);
  }

 private:
  sqlite3* m_db;
  std::string m_what;
  sqlite3_stmt* m_st = nullptr;
};

const char* const kRevocableColumns =
    "SELECT serial, device_id, ca_name, batch_id, COALESCE(lot, ''), COALESCE(line, ''), "
    "COALESCE(site, ''), state, COALESCE(sha256, ''), key_sha256, COALESCE(not_after, 0), "
    "created_at, revocation_reason FROM certificates WHERE state IN ('issued', 'revoked')";

// The certificates' own rows: revoked, their slots freed. Returns (serial, key_sha256) of each
// that became revoked now. Inside the caller's transaction.
std::vector<std::pair<std::string, std::string>> revoke_rows(Registry::Impl& impl,
                                                             std::span<const std::string> serials,
                                                             const std::string& reason,
                                                             std::int64_t at,
                                                             const std::string& what) {
  sqlite3* db = impl.db();
  Stmt find(db,
            "SELECT state, device_id, COALESCE(sha256, ''), key_sha256 FROM certificates "
            "WHERE serial = ?1",
            what);
  Stmt mark(db,
            "UPDATE certificates SET state = 'revoked', revoked_at = ?1, revocation_reason = ?2 "
            "WHERE serial = ?3",
            what);
  Stmt device(db,
              "UPDATE devices SET "
              "primary_serial = CASE WHEN primary_serial = ?3 THEN '' ELSE primary_serial END, "
              "primary_not_after = CASE WHEN primary_serial = ?3 THEN 0 ELSE primary_not_after "
              "END, "
              "secondary_serial = CASE WHEN secondary_serial = ?3 THEN '' ELSE secondary_serial "
              "END, "
              "secondary_not_after = CASE WHEN secondary_serial = ?3 THEN 0 ELSE "
              "secondary_not_after END, updated_at = ?1 "
              "WHERE registration_id = ?2 AND (primary_serial = ?3 OR secondary_serial = ?3)",
              what);
  Stmt individual(
      db,
      "UPDATE individual_enrollments SET "
      "primary_cert = CASE WHEN primary_sha256 = ?3 THEN NULL ELSE primary_cert END, "
      "primary_sha256 = CASE WHEN primary_sha256 = ?3 THEN '' ELSE primary_sha256 END, "
      "secondary_cert = CASE WHEN secondary_sha256 = ?3 THEN NULL ELSE secondary_cert END, "
      "secondary_sha256 = CASE WHEN secondary_sha256 = ?3 THEN '' ELSE secondary_sha256 END, "
      "updated_at = ?1 WHERE registration_id = ?2 AND (primary_sha256 = ?3 OR secondary_sha256 = "
      "?3)",
      what);
  std::vector<std::pair<std::string, std::string>> revoked;
  for (const auto& serial : serials) {
    bind_text(find.get(), 1, serial);
    if (!find.row()) {
      throw Error(ErrorCode::kNotFound,
                  what + ": 0x" + serial + " is not an issued certificate of this registry");
    }
    const std::string state = column_text(find.get(), 0), dev = column_text(find.get(), 1),
                      sha256 = column_text(find.get(), 2), key = column_text(find.get(), 3);
    find.reset();
    if (state == "revoked") continue;
    if (state != "issued") {
      throw Error(ErrorCode::kNotFound, what + ": 0x" + serial + " is " + state +
                                            ", not an issued certificate of this registry");
    }
    sqlite3_bind_int64(mark.get(), 1, at);
    bind_text(mark.get(), 2, reason);
    bind_text(mark.get(), 3, serial);
    mark.run();
    sqlite3_bind_int64(device.get(), 1, at);
    bind_text(device.get(), 2, dev);
    bind_text(device.get(), 3, serial);
    device.run();
    if (!sha256.empty()) {
      sqlite3_bind_int64(individual.get(), 1, at);
      bind_text(individual.get(), 2, dev);
      bind_text(individual.get(), 3, sha256);
      individual.run();
    }
    revoked.emplace_back(serial, key);
  }
  return revoked;
}

void block_keys(Registry::Impl& impl, std::span<const BlockedKey> keys, const std::string& what,
                std::int64_t& added) {
  Stmt insert(impl.db(),
              "INSERT INTO blocked_keys (key_sha256, reason, source, added_at) VALUES (?1, ?2, ?3, "
              "?4) ON CONFLICT (key_sha256) DO NOTHING",
              what);
  for (const auto& k : keys) {
    if (k.key_sha256.empty()) continue;
    bind_text(insert.get(), 1, k.key_sha256);
    bind_text(insert.get(), 2, k.reason);
    bind_text(insert.get(), 3, k.source);
    sqlite3_bind_int64(insert.get(), 4, impl.stamp(k.added_at));
    added += insert.run();
  }
}

// Disabled individual enrollments for devices left without a working certificate: an existing
// enrollment is disabled as it is, a missing one is created disabled with the given slots.
std::int64_t disable_individuals(Registry::Impl& impl, std::span<const IndividualEnrollment> ies,
                                 std::int64_t at, const std::string& what) {
  Stmt upsert(impl.db(),
              "INSERT INTO individual_enrollments (registration_id, enabled, primary_cert, "
              "primary_sha256, created_at, updated_at) VALUES (?1, 0, ?2, ?3, ?4, ?4) "
              "ON CONFLICT (registration_id) DO UPDATE SET enabled = 0, updated_at = ?4 "
              "WHERE individual_enrollments.enabled = 1",
              what);
  std::int64_t changed = 0;
  for (const auto& ie : ies) {
    bind_text(upsert.get(), 1, ie.registration_id);
    if (ie.primary_cert.empty()) {
      sqlite3_bind_null(upsert.get(), 2);
    } else {
      sqlite3_bind_blob(upsert.get(), 2, ie.primary_cert.data(),
                        static_cast<int>(ie.primary_cert.size()), SQLITE_TRANSIENT);
    }
    bind_text(upsert.get(), 3, ie.primary_sha256);
    sqlite3_bind_int64(upsert.get(), 4, at);
    changed += upsert.run();
  }
  return changed;
}

}  // namespace

std::int64_t Registry::revoke_certs(std::span<const std::string> serials, const std::string& reason,
                                    std::int64_t at) {
  RevocationChunk chunk;
  chunk.serials.assign(serials.begin(), serials.end());
  chunk.reason = reason;
  chunk.at = at;
  chunk.block_keys = reason == "keyCompromise";  // §3: a compromised key is never signed again
  return apply_revocation(chunk);
}

std::int64_t Registry::apply_revocation(const RevocationChunk& chunk) {
  const auto& serials = chunk.serials;
  const std::string what = "revoking " + std::to_string(serials.size()) + " certificate(s)" +
                           (serials.empty() ? std::string() : " (first 0x" + serials[0] + ")");
  return m_impl->write(what, [&] {
    const auto revoked = revoke_rows(*m_impl, serials, chunk.reason, chunk.at, what);
    std::int64_t blocked = 0;
    if (chunk.block_keys) {
      std::vector<BlockedKey> keys;
      for (const auto& [serial, key] : revoked) {
        keys.push_back(BlockedKey{key, chunk.reason, "revoke 0x" + serial, chunk.at});
      }
      block_keys(*m_impl, keys, what, blocked);
    }
    const std::int64_t disabled = disable_individuals(*m_impl, chunk.disable, chunk.at, what);
    if (!revoked.empty()) {
      const std::string subject = serials.size() == 1 ? serials[0] : std::string("certificates");
      const auto count = static_cast<std::int64_t>(revoked.size());
      // keys_blocked only when some were: the detail of a plain revocation stays as it was.
      registry_detail::audit_row(*m_impl, "cert.revoke", subject,
                                 blocked == 0 ? json_object({{"count", count},
                                                             {"reason", chunk.reason},
                                                             {"first", revoked.front().first}})
                                              : json_object({{"count", count},
                                                             {"reason", chunk.reason},
                                                             {"first", revoked.front().first},
                                                             {"keys_blocked", blocked}}));
    }
    if (disabled > 0) {
      registry_detail::audit_row(*m_impl, "enrollment.individual.disable", "revocation",
                                 json_object({{"count", disabled}}));
    }
    return static_cast<std::int64_t>(revoked.size());
  });
}

std::vector<RevocableCert> Registry::select_certs(const CertQuery& q) {
  std::string sql = kRevocableColumns;
  std::vector<std::string> params;
  const auto eq = [&](const char* column, const std::string& value) {
    if (value.empty()) return;
    params.push_back(value);
    sql += std::string(" AND ") + column + " = ?" + std::to_string(params.size());
  };
  eq("serial", q.serial);
  eq("device_id", q.device_id);
  eq("batch_id", q.batch_id);
  eq("lot", q.lot);
  eq("site", q.site);
  eq("line", q.line);
  eq("key_sha256", q.key_sha256);
  if (!q.ca_names.empty()) {
    sql += " AND ca_name IN (";
    for (std::size_t i = 0; i < q.ca_names.size(); ++i) {
      params.push_back(q.ca_names[i]);
      sql += (i ? ", ?" : "?") + std::to_string(params.size());
    }
    sql += ")";
  }
  const bool by_time = q.issued_to > 0;
  if (params.empty() && !by_time) {
    throw Error(ErrorCode::kInvalidArgument, "selecting certificates: no selector given");
  }
  if (by_time) {
    sql += " AND created_at >= ?" + std::to_string(params.size() + 1) + " AND created_at < ?" +
           std::to_string(params.size() + 2);
  }
  sql += " ORDER BY serial";
  return m_impl->guarded("selecting certificates to revoke", [&] {
    Stmt st(m_impl->db(), sql, "selecting certificates to revoke");
    for (std::size_t i = 0; i < params.size(); ++i) {
      bind_text(st.get(), static_cast<int>(i + 1), params[i]);
    }
    if (by_time) {
      sqlite3_bind_int64(st.get(), static_cast<int>(params.size() + 1), q.issued_from);
      sqlite3_bind_int64(st.get(), static_cast<int>(params.size() + 2), q.issued_to);
    }
    std::vector<RevocableCert> out;
    while (st.row()) {
      sqlite3_stmt* s = st.get();
      RevocableCert c;
      c.serial = column_text(s, 0);
      c.device_id = column_text(s, 1);
      c.ca_name = column_text(s, 2);
      c.batch_id = column_text(s, 3);
      c.lot = column_text(s, 4);
      c.line = column_text(s, 5);
      c.site = column_text(s, 6);
      c.state = column_text(s, 7) == "revoked" ? CertState::kRevoked : CertState::kIssued;
      c.sha256 = column_text(s, 8);
      c.key_sha256 = column_text(s, 9);
      c.not_after = sqlite3_column_int64(s, 10);
      c.created_at = sqlite3_column_int64(s, 11);
      c.revocation_reason = column_text(s, 12);
      out.push_back(std::move(c));
    }
    return out;
  });
}

std::vector<std::string> Registry::revoked_ca_names() {
  return m_impl->guarded("listing revoked CAs", [&] {
    std::vector<std::string> names;
    m_impl->m_session << "SELECT name FROM cas WHERE revoked_at > 0 ORDER BY name", kw::into(names),
        kw::now;
    return names;
  });
}

std::int64_t Registry::add_blocked_keys(std::span<const BlockedKey> keys) {
  const std::string what = "blocking " + std::to_string(keys.size()) + " key(s)";
  return m_impl->write(what, [&] {
    std::int64_t added = 0;
    block_keys(*m_impl, keys, what, added);
    if (added > 0) {
      registry_detail::audit_row(
          *m_impl, "blocklist.add", keys.size() == 1 ? keys[0].key_sha256 : std::string("keys"),
          json_object({{"count", added}, {"source", keys.empty() ? "" : keys[0].source}}));
    }
    return added;
  });
}

void Registry::remove_blocked_key(const std::string& key_sha256) {
  const std::string what = "unblocking key " + key_sha256;
  m_impl->write(what, [&] {
    Stmt st(m_impl->db(), "DELETE FROM blocked_keys WHERE key_sha256 = ?1", what);
    bind_text(st.get(), 1, key_sha256);
    if (st.run() == 0) throw Error(ErrorCode::kNotFound, what + ": not on the blocklist");
    registry_detail::audit_row(*m_impl, "blocklist.remove", key_sha256, "{}");
  });
}

std::vector<BlockedKey> Registry::list_blocked_keys(const ListPage& page) {
  return m_impl->guarded("listing blocked keys", [&] {
    // By key: a cursor that stays valid when the key it names is removed meanwhile.
    std::string sql = "SELECT key_sha256, reason, source, added_at FROM blocked_keys";
    if (!page.after.empty()) sql += " WHERE key_sha256 > ?";
    sql += " ORDER BY key_sha256";
    if (page.limit > 0) sql += " LIMIT " + std::to_string(page.limit);
    Stmt st(m_impl->db(), sql, "listing blocked keys");
    if (!page.after.empty()) {
      sqlite3_bind_text(st.get(), 1, page.after.data(), static_cast<int>(page.after.size()),
                        SQLITE_TRANSIENT);
    }
    std::vector<BlockedKey> out;
    while (st.row()) {
      out.push_back(BlockedKey{column_text(st.get(), 0), column_text(st.get(), 1),
                               column_text(st.get(), 2), sqlite3_column_int64(st.get(), 3)});
    }
    return out;
  });
}

std::vector<std::string> Registry::blocked_key_hashes() {
  return m_impl->guarded("loading the key blocklist", [&] {
    std::vector<std::string> out;
    m_impl->m_session << "SELECT key_sha256 FROM blocked_keys", kw::into(out), kw::now;
    return out;
  });
}

}  // namespace fleetsign::engine
