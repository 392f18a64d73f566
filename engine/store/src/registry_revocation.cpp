// Registry: revocation runs (schema v10). See stores.hpp (RevocationStore) for the contract.
// revoke_certs (CertificateStore) takes the same path: for "keyCompromise" it also blocks the
// certificates' keys, and its audit detail then adds "keys_blocked".
//
// A revocation run writes several rows per certificate (the certificate, two device slots, two
// individual-enrollment slots) for up to a whole lot, so each statement is leased once per call
// from Impl's statement cache (prepared once per connection) and stepped per row. The SQL is
// valid on SQLite and PostgreSQL alike.
#include <algorithm>
#include <unordered_set>

#include "fleetsign/engine/json.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

// A NULL text reads "", a NULL number 0.
std::string str(sql::Stmt& st, int column) { return std::string(st.text(column)); }

const char* const kRevocableColumns =
    "SELECT serial, device_id, ca_name, batch_id, COALESCE(lot, ''), COALESCE(line, ''), "
    "COALESCE(site, ''), state, COALESCE(sha256, ''), key_sha256, COALESCE(not_after, 0), "
    "created_at, revocation_reason FROM certificates WHERE state IN ('issued', 'revoked')";

// The certificates' own rows: revoked, their slots freed. Returns (serial, key_sha256) of each
// that became revoked now. One revoked before for another reason and now for "keyCompromise" gets
// that reason (its revocation date stays): it is added to `*raised`. Inside the caller's
// transaction.
std::vector<std::pair<std::string, std::string>> revoke_rows(
    Registry::Impl& impl, std::span<const std::string> serials, const std::string& reason,
    std::int64_t at, const std::string& what,
    std::vector<std::pair<std::string, std::string>>* raised) {
  // Errors of the SELECT propagate as sql::DbError: the caller's write() names `what`.
  const auto find = impl.query(
      "SELECT state, device_id, COALESCE(sha256, ''), key_sha256, revocation_reason "
      "FROM certificates WHERE serial = ?1");
  const auto raise = impl.query(
      "UPDATE certificates SET revocation_reason = ?1 WHERE serial = ?2 AND state = 'revoked'");
  const auto mark = impl.query(
      "UPDATE certificates SET state = 'revoked', revoked_at = ?1, revocation_reason = ?2 "
      "WHERE serial = ?3");
  const auto device = impl.query(
      "UPDATE devices SET "
      "primary_serial = CASE WHEN primary_serial = ?3 THEN '' ELSE primary_serial END, "
      "primary_not_after = CASE WHEN primary_serial = ?3 THEN 0 ELSE primary_not_after "
      "END, "
      "secondary_serial = CASE WHEN secondary_serial = ?3 THEN '' ELSE secondary_serial "
      "END, "
      "secondary_not_after = CASE WHEN secondary_serial = ?3 THEN 0 ELSE "
      "secondary_not_after END, updated_at = ?1 "
      "WHERE registration_id = ?2 AND (primary_serial = ?3 OR secondary_serial = ?3)");
  const auto individual = impl.query(
      "UPDATE individual_enrollments SET "
      "primary_cert = CASE WHEN primary_sha256 = ?3 THEN NULL ELSE primary_cert END, "
      "primary_sha256 = CASE WHEN primary_sha256 = ?3 THEN '' ELSE primary_sha256 END, "
      "secondary_cert = CASE WHEN secondary_sha256 = ?3 THEN NULL ELSE secondary_cert END, "
      "secondary_sha256 = CASE WHEN secondary_sha256 = ?3 THEN '' ELSE secondary_sha256 END, "
      "updated_at = ?1 WHERE registration_id = ?2 AND (primary_sha256 = ?3 OR secondary_sha256 = "
      "?3)");
  std::vector<std::pair<std::string, std::string>> revoked;
  for (const auto& serial : serials) {
    find->bind(1, serial);
    if (!find->step()) {
      throw Error(ErrorCode::kNotFound,
                  what + ": 0x" + serial + " is not an issued certificate of this registry");
    }
    const std::string state = str(*find, 0), dev = str(*find, 1), sha256 = str(*find, 2),
                      key = str(*find, 3), old_reason = str(*find, 4);
    find->reset();
    if (state == "revoked") {
      if (reason == "keyCompromise" && old_reason != reason) {
        raise->bind(1, reason);
        raise->bind(2, serial);
        impl.step(*raise, what);
        raised->emplace_back(serial, key);
      }
      continue;
    }
    if (state != "issued") {
      throw Error(ErrorCode::kNotFound, what + ": 0x" + serial + " is " + state +
                                            ", not an issued certificate of this registry");
    }
    mark->bind(1, at);
    mark->bind(2, reason);
    mark->bind(3, serial);
    impl.step(*mark, what);
    device->bind(1, at);
    device->bind(2, dev);
    device->bind(3, serial);
    impl.step(*device, what);
    if (!sha256.empty()) {
      individual->bind(1, at);
      individual->bind(2, dev);
      individual->bind(3, sha256);
      impl.step(*individual, what);
    }
    revoked.emplace_back(serial, key);
  }
  return revoked;
}

void block_keys(Registry::Impl& impl, std::span<const BlockedKey> keys, const std::string& what,
                std::int64_t& added) {
  const auto insert = impl.query(
      "INSERT INTO blocked_keys (key_sha256, reason, source, added_at) VALUES (?1, ?2, ?3, ?4) "
      "ON CONFLICT (key_sha256) DO NOTHING");
  for (const auto& k : keys) {
    if (k.key_sha256.empty()) continue;
    insert->bind(1, k.key_sha256);
    insert->bind(2, k.reason);
    insert->bind(3, k.source);
    insert->bind(4, impl.stamp(k.added_at));
    added += impl.step(*insert, what);
  }
}

// Disabled individual enrollments for devices left without a working certificate: an existing
// enrollment is disabled as it is, a missing one is created disabled with the given slots.
std::int64_t disable_individuals(Registry::Impl& impl, std::span<const IndividualEnrollment> ies,
                                 std::int64_t at, const std::string& what) {
  const auto upsert = impl.query(
      "INSERT INTO individual_enrollments (registration_id, enabled, primary_cert, "
      "primary_sha256, created_at, updated_at) VALUES (?1, 0, ?2, ?3, ?4, ?4) "
      "ON CONFLICT (registration_id) DO UPDATE SET enabled = 0, updated_at = ?4 "
      "WHERE individual_enrollments.enabled = 1");
  std::int64_t changed = 0;
  for (const auto& ie : ies) {
    upsert->bind(1, ie.registration_id);
    if (ie.primary_cert.empty()) {
      upsert->bind_null(2);  // NULL, not an empty BLOB: no certificate
    } else {
      upsert->bind_blob(2, ie.primary_cert);
    }
    upsert->bind(3, ie.primary_sha256);
    upsert->bind(4, at);
    changed += impl.step(*upsert, what);
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
    std::vector<std::pair<std::string, std::string>> raised;
    const auto revoked = revoke_rows(*m_impl, serials, chunk.reason, chunk.at, what, &raised);
    std::int64_t blocked = 0;
    if (chunk.block_keys) {
      std::vector<BlockedKey> keys;
      using Pairs = std::vector<std::pair<std::string, std::string>>;
      for (const Pairs* list : {&revoked, static_cast<const Pairs*>(&raised)}) {
        for (const auto& [serial, key] : *list) {
          keys.push_back(BlockedKey{key, chunk.reason, "revoke 0x" + serial, chunk.at});
        }
      }
      block_keys(*m_impl, keys, what, blocked);
    }
    if (!raised.empty()) {
      registry_detail::audit_row(*m_impl, "cert.revoke.reason",
                                 raised.size() == 1 ? raised[0].first : std::string("certificates"),
                                 json_object({{"count", static_cast<std::int64_t>(raised.size())},
                                              {"reason", chunk.reason},
                                              {"first", raised.front().first}}));
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
    const auto st = m_impl->query(sql);
    for (std::size_t i = 0; i < params.size(); ++i) {
      st->bind(static_cast<int>(i + 1), params[i]);
    }
    if (by_time) {
      st->bind(static_cast<int>(params.size() + 1), q.issued_from);
      st->bind(static_cast<int>(params.size() + 2), q.issued_to);
    }
    std::vector<RevocableCert> out;
    while (st->step()) {
      sql::Stmt& s = *st;
      RevocableCert c;
      c.serial = str(s, 0);
      c.device_id = str(s, 1);
      c.ca_name = str(s, 2);
      c.batch_id = str(s, 3);
      c.lot = str(s, 4);
      c.line = str(s, 5);
      c.site = str(s, 6);
      c.state = s.text(7) == "revoked" ? CertState::kRevoked : CertState::kIssued;
      c.sha256 = str(s, 8);
      c.key_sha256 = str(s, 9);
      c.not_after = s.int64(10);
      c.created_at = s.int64(11);
      c.revocation_reason = str(s, 12);
      out.push_back(std::move(c));
    }
    return out;
  });
}

std::vector<std::string> Registry::revoked_ca_names() {
  return m_impl->guarded("listing revoked CAs", [&] {
    return m_impl->column<std::string>("SELECT name FROM cas WHERE revoked_at > 0 ORDER BY name");
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
    if (m_impl->change("DELETE FROM blocked_keys WHERE key_sha256 = ?1", key_sha256) == 0) {
      throw Error(ErrorCode::kNotFound, what + ": not on the blocklist");
    }
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
    const auto st = m_impl->query(sql);
    if (!page.after.empty()) st->bind(1, page.after);
    std::vector<BlockedKey> out;
    while (st->step()) {
      out.push_back(BlockedKey{str(*st, 0), str(*st, 1), str(*st, 2), st->int64(3)});
    }
    return out;
  });
}

std::vector<std::string> Registry::blocked_key_hashes() {
  return m_impl->guarded("loading the key blocklist", [&] {
    return m_impl->column<std::string>("SELECT key_sha256 FROM blocked_keys");
  });
}

}  // namespace fleetsign::engine
