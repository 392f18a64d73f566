// Registry: enrollment groups, individual enrollments and devices (schema version 2).
#include <algorithm>
#include <limits>
#include <map>
#include <unordered_map>

#include "fleetsign/engine/json.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

std::string_view slot_name(Slot slot) noexcept {
  return slot == Slot::kPrimary ? "primary" : "secondary";
}

namespace {

const std::string kGroupColumns =
    "name, enabled, COALESCE(primary_ca, ''), COALESCE(secondary_ca, ''), created_at, updated_at";
const std::string kIndividualColumns =
    "registration_id, enabled, primary_cert, primary_sha256, secondary_cert, secondary_sha256, "
    "created_at, updated_at";
const std::string kDeviceColumns =
    "registration_id, primary_serial, primary_not_after, secondary_serial, secondary_not_after, "
    "ca_name, lot, "
    "status, created_at, updated_at";

// The authentication decision's point lookups, prepared once per connection.
const std::string kIndividualSlotsSql =
    "SELECT enabled, primary_sha256, secondary_sha256 FROM individual_enrollments "
    "WHERE registration_id = ?";
const std::string kCertStateSql = "SELECT state FROM certificates WHERE serial = ?";
// Both of an auth decision's lookups in one statement: always one row (the certificate's state or
// NULL), with the individual enrollment's columns when there is one.
const std::string kAuthLookupSql =
    "SELECT (SELECT state FROM certificates WHERE serial = ?), e.registration_id, e.enabled, "
    "e.primary_sha256, e.secondary_sha256 FROM (SELECT 1 AS one) AS o LEFT JOIN "
    "individual_enrollments e ON e.registration_id = ?";

// Row readers, in the column order of the SELECTs above. A NULL text reads "", a NULL number 0.
std::string str(sql::Stmt& st, int column) { return std::string(st.text(column)); }

struct GroupRow {
  static EnrollmentGroup read(sql::Stmt& st) {
    EnrollmentGroup rec;
    rec.name = str(st, 0);
    rec.enabled = st.int64(1) != 0;
    rec.primary_ca = str(st, 2);
    rec.secondary_ca = str(st, 3);
    rec.created_at = st.int64(4);
    rec.updated_at = st.int64(5);
    return rec;
  }
};

struct IndividualRow {
  static IndividualEnrollment read(sql::Stmt& st) {
    IndividualEnrollment rec;
    rec.registration_id = str(st, 0);
    rec.enabled = st.int64(1) != 0;
    rec.primary_cert = st.blob(2);
    rec.primary_sha256 = str(st, 3);
    rec.secondary_cert = st.blob(4);
    rec.secondary_sha256 = str(st, 5);
    rec.created_at = st.int64(6);
    rec.updated_at = st.int64(7);
    return rec;
  }
};

struct DeviceRow {
  static DeviceRecord read(sql::Stmt& st) {
    DeviceRecord rec;
    rec.registration_id = str(st, 0);
    rec.primary_serial = str(st, 1);
    rec.primary_not_after = st.int64(2);
    rec.secondary_serial = str(st, 3);
    rec.secondary_not_after = st.int64(4);
    rec.ca_name = str(st, 5);
    rec.lot = str(st, 6);
    rec.status = str(st, 7);
    rec.created_at = st.int64(8);
    rec.updated_at = st.int64(9);
    return rec;
  }
};

struct LatestExpiryRow {
  static std::pair<std::string, std::int64_t> read(sql::Stmt& st) {
    return {str(st, 0), st.int64(1)};
  }
};

struct BucketRow {
  static CaBucketCount read(sql::Stmt& st) {
    return CaBucketCount{str(st, 0), static_cast<int>(st.int64(1)), st.int64(2)};
  }
};

struct IssuedCountRow {
  static IssuedCount read(sql::Stmt& st) {
    return IssuedCount{str(st, 0), str(st, 1), st.int64(2)};
  }
};

struct CaDeviceCountRow {
  static CaDeviceCount read(sql::Stmt& st) {
    return CaDeviceCount{str(st, 0), st.int64(1), st.int64(2), st.int64(3), st.int64(4)};
  }
};

// "WHERE …" for a device filter, with its parameters (all text) in order.
std::string where_clause(const DeviceFilter& f, std::vector<std::string>& params,
                         const std::string& prefix) {
  std::string sql;
  if (!f.ca_names.empty()) {
    sql += prefix + "ca_name IN (";
    for (std::size_t i = 0; i < f.ca_names.size(); ++i) {
      sql += i ? ", ?" : "?";
      params.push_back(f.ca_names[i]);
    }
    sql += ")";
  }
  if (!f.lot.empty()) {
    sql += (sql.empty() ? prefix : std::string(" AND ")) + "lot = ?";
    params.push_back(f.lot);
  }
  if (!f.after.empty()) {
    sql += (sql.empty() ? prefix : std::string(" AND ")) + "registration_id > ?";
    params.push_back(f.after);
  }
  return sql;
}

// Binds text parameters from `first` on; they must outlive the statement's use (not copied).
void bind_texts(sql::Stmt& st, int first, const std::vector<std::string>& params) {
  for (const auto& p : params) {
    st.bind(first++, std::string_view(p));
  }
}

// An empty certificate is stored as NULL (a slot known only by its thumbprint), as before.
void bind_cert(sql::Stmt& st, int index, const std::vector<std::uint8_t>& der) {
  if (der.empty()) {
    st.bind_null(index);
  } else {
    st.bind_blob(index, der);
  }
}

// Resets a prepared statement however a point lookup leaves (a thrown error included).
class ResetOnExit {
 public:
  explicit ResetOnExit(sql::Stmt& st) : m_st(st) {}
  ResetOnExit(const ResetOnExit&) = delete;  // resets once
  ResetOnExit& operator=(const ResetOnExit&) = delete;
  ~ResetOnExit() { m_st.reset(); }

 private:
  sql::Stmt& m_st;
};

std::string group_detail(const EnrollmentGroup& g) {
  return json_object(
      {{"enabled", g.enabled}, {"primary_ca", g.primary_ca}, {"secondary_ca", g.secondary_ca}});
}

}  // namespace

namespace registry_detail {

void audit_row(Registry::Impl& impl, const std::string& action, const std::string& subject,
               const std::string& detail) {
  impl.change("INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
              impl.stamp(0), impl.actor(), action, subject, detail);
}

std::string individual_detail(const IndividualEnrollment& ie) {
  return json_object({{"enabled", ie.enabled},
                      {"primary_sha256", ie.primary_sha256},
                      {"secondary_sha256", ie.secondary_sha256}});
}

}  // namespace registry_detail

using registry_detail::audit_row;
using registry_detail::individual_detail;

void Registry::save_group(const EnrollmentGroup& g, const std::string& action, bool create) {
  m_impl->write(
      (create ? "creating" : "updating") + std::string(" enrollment group '") + g.name + "'", [&] {
        const std::int64_t now = m_impl->stamp(0);
        const std::int64_t enabled = g.enabled ? 1 : 0;
        // NULL, not '', for a free slot: the columns reference cas(name).
        const std::optional<std::string> primary =
            g.primary_ca.empty() ? std::nullopt : std::optional(g.primary_ca);
        const std::optional<std::string> secondary =
            g.secondary_ca.empty() ? std::nullopt : std::optional(g.secondary_ca);
        if (create) {
          m_impl->change(
              "INSERT INTO enrollment_groups (name, enabled, primary_ca, secondary_ca, "
              "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
              g.name, enabled, primary, secondary, now, now);
        } else {
          Impl::expect_row(
              m_impl->change("UPDATE enrollment_groups SET enabled = ?, primary_ca = ?, "
                             "secondary_ca = ?, updated_at = ? WHERE name = ?",
                             enabled, primary, secondary, now, g.name),
              "enrollment group '" + g.name + "'");
        }
        audit_row(*m_impl, action, g.name, group_detail(g));
      });
}

std::optional<EnrollmentGroup> Registry::find_group(const std::string& name) {
  return m_impl->guarded("reading enrollment group '" + name + "'", [&] {
    return m_impl->select_one<GroupRow>(
        "SELECT " + kGroupColumns + " FROM enrollment_groups WHERE name = ?", name);
  });
}

std::vector<EnrollmentGroup> Registry::list_groups() {
  return m_impl->guarded("listing enrollment groups", [&] {
    return m_impl->select<GroupRow>("SELECT " + kGroupColumns +
                                    " FROM enrollment_groups ORDER BY name");
  });
}

void Registry::save_individual(const IndividualEnrollment& ie, const std::string& action,
                               bool create) {
  m_impl->write(
      (create ? "creating" : "updating") + std::string(" individual enrollment '") +
          ie.registration_id + "'",
      [&] {
        const std::int64_t now = m_impl->stamp(0);
        const std::int64_t enabled = ie.enabled ? 1 : 0;
        if (create) {
          auto st = m_impl->query("INSERT INTO individual_enrollments (" + kIndividualColumns +
                                  ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
          st->bind(1, std::string_view(ie.registration_id));
          st->bind(2, enabled);
          bind_cert(*st, 3, ie.primary_cert);
          st->bind(4, std::string_view(ie.primary_sha256));
          bind_cert(*st, 5, ie.secondary_cert);
          st->bind(6, std::string_view(ie.secondary_sha256));
          st->bind(7, now);
          st->bind(8, now);
          sql::run(*st);
        } else {
          auto st = m_impl->query(
              "UPDATE individual_enrollments SET enabled = ?, primary_cert = ?, "
              "primary_sha256 = ?, secondary_cert = ?, secondary_sha256 = ?, "
              "updated_at = ? WHERE registration_id = ?");
          st->bind(1, enabled);
          bind_cert(*st, 2, ie.primary_cert);
          st->bind(3, std::string_view(ie.primary_sha256));
          bind_cert(*st, 4, ie.secondary_cert);
          st->bind(5, std::string_view(ie.secondary_sha256));
          st->bind(6, now);
          st->bind(7, std::string_view(ie.registration_id));
          Impl::expect_row(sql::run(*st), "individual enrollment '" + ie.registration_id + "'");
        }
        audit_row(*m_impl, action, ie.registration_id, individual_detail(ie));
      });
}

std::optional<IndividualEnrollment> Registry::find_individual(const std::string& id) {
  return m_impl->guarded("reading individual enrollment '" + id + "'", [&] {
    return m_impl->select_one<IndividualRow>(
        "SELECT " + kIndividualColumns + " FROM individual_enrollments WHERE registration_id = ?",
        id);
  });
}

std::vector<IndividualEnrollment> Registry::list_individuals() {
  return m_impl->guarded("listing individual enrollments", [&] {
    return m_impl->select<IndividualRow>("SELECT " + kIndividualColumns +
                                         " FROM individual_enrollments ORDER BY registration_id");
  });
}

std::optional<DeviceRecord> Registry::find_device(const std::string& id) {
  return m_impl->guarded("reading device '" + id + "'", [&] {
    return m_impl->select_one<DeviceRow>(
        "SELECT " + kDeviceColumns + " FROM devices WHERE registration_id = ?", id);
  });
}

// The two point lookups below serve the authentication decision (thousands a second): each runs
// a statement prepared once per connection and builds its error message only on failure.

std::optional<IndividualEnrollment> Registry::find_individual_slots(const std::string& id) {
  try {
    sql::Stmt& st = m_impl->m_individual_slots.get(m_impl->db(), kIndividualSlotsSql);
    const ResetOnExit reset{st};
    st.bind(1, std::string_view(id));
    if (!st.step()) return std::nullopt;
    IndividualEnrollment ie;
    ie.registration_id = id;
    ie.enabled = st.int64(0) != 0;
    ie.primary_sha256 = str(st, 1);
    ie.secondary_sha256 = str(st, 2);
    return ie;
  } catch (const sql::DbError& e) {
    throw Error(e.code(), "reading individual enrollment '" + id + "': " + e.what());
  }
}

namespace {
CertState parse_cert_state(std::string_view state) {
  if (state == "issued") return CertState::kIssued;
  if (state == "revoked") return CertState::kRevoked;
  if (state == "abandoned") return CertState::kAbandoned;
  return CertState::kIntent;
}
}  // namespace

Stores::AuthLookup Registry::auth_lookup(const std::string& serial, const std::string& id) {
  try {
    sql::Stmt& st = m_impl->m_auth_lookup.get(m_impl->db(), kAuthLookupSql);
    const ResetOnExit reset{st};
    st.bind(1, std::string_view(serial));
    st.bind(2, std::string_view(id));
    AuthLookup out;
    if (!st.step()) return out;  // cannot happen: the statement always has its one row
    if (!st.is_null(0)) out.state = parse_cert_state(st.text(0));
    if (!st.is_null(1)) {
      IndividualEnrollment ie;
      ie.registration_id = id;
      ie.enabled = st.int64(2) != 0;
      ie.primary_sha256 = str(st, 3);
      ie.secondary_sha256 = str(st, 4);
      out.individual = std::move(ie);
    }
    return out;
  } catch (const sql::DbError& e) {
    throw Error(e.code(), "reading certificate 0x" + serial + " and individual enrollment '" + id +
                              "': " + e.what());
  }
}

std::optional<CertState> Registry::cert_state(const std::string& serial) {
  std::string state;
  try {
    sql::Stmt& st = m_impl->m_cert_state.get(m_impl->db(), kCertStateSql);
    const ResetOnExit reset{st};
    st.bind(1, std::string_view(serial));
    if (!st.step()) return std::nullopt;
    state = str(st, 0);
  } catch (const sql::DbError& e) {
    throw Error(e.code(), "reading certificate 0x" + serial + ": " + e.what());
  }
  return parse_cert_state(state);
}

std::vector<DeviceRecord> Registry::list_devices(const DeviceFilter& filter) {
  return m_impl->guarded("listing devices", [&] {
    std::vector<std::string> params;
    std::string sql = "SELECT " + kDeviceColumns + " FROM devices" +
                      where_clause(filter, params, " WHERE ") + " ORDER BY registration_id";
    if (filter.limit > 0) sql += " LIMIT " + std::to_string(filter.limit);
    auto st = m_impl->query(sql);
    bind_texts(*st, 1, params);
    std::vector<DeviceRecord> out;
    while (st->step()) out.push_back(DeviceRow::read(*st));
    return out;
  });
}

std::int64_t Registry::count_devices() {
  return m_impl->guarded("counting devices",
                         [&] { return m_impl->count("SELECT COUNT(*) FROM devices"); });
}

std::vector<ExpiringCert> Registry::expiring_device_certs(std::int64_t until,
                                                          const DeviceFilter& filter,
                                                          std::size_t limit) {
  return m_impl->guarded("scanning expiring device certificates", [&] {
    std::vector<ExpiringCert> out;
    // Each slot's first `limit` (its index's order), merged below: `limit` in all.
    const auto capped = static_cast<std::int64_t>(
        std::min<std::size_t>(limit, std::numeric_limits<std::int64_t>::max()));
    for (const Slot slot : {Slot::kPrimary, Slot::kSecondary}) {
      const std::string col = std::string(slot_name(slot));
      std::vector<std::string> params;
      // Indexed on <slot>_not_after: only the rows that are due are read.
      const std::string sql = "SELECT registration_id, " + col + "_serial, ca_name, lot, " + col +
                              "_not_after FROM devices WHERE " + col + "_not_after > 0 AND " + col +
                              "_not_after < ?" + where_clause(filter, params, " AND ") +
                              " ORDER BY " + col + "_not_after, registration_id LIMIT ?";
      auto st = m_impl->query(sql);
      st->bind(1, until);
      bind_texts(*st, 2, params);
      st->bind(static_cast<int>(2 + params.size()), capped);
      while (st->step()) {
        out.push_back(
            ExpiringCert{str(*st, 0), str(*st, 1), str(*st, 2), str(*st, 3), slot, st->int64(4)});
      }
    }
    std::sort(out.begin(), out.end(), [](const ExpiringCert& a, const ExpiringCert& b) {
      return a.not_after != b.not_after ? a.not_after < b.not_after
                                        : a.registration_id < b.registration_id;
    });
    if (out.size() > limit) out.resize(limit);
    return out;
  });
}

std::vector<ExpiryCount> Registry::expiry_counts(std::int64_t now, std::int64_t until,
                                                 const std::vector<int>& marks_in,
                                                 const DeviceFilter& filter) {
  return m_impl->guarded("counting expiring device certificates", [&] {
    std::vector<int> marks;
    for (const int m : marks_in) {
      if (m > 0) marks.push_back(m);
    }
    std::sort(marks.begin(), marks.end());
    marks.erase(std::unique(marks.begin(), marks.end()), marks.end());
    const std::int64_t beyond = marks.empty() ? 1 : std::int64_t{marks.back()} + 1;
    std::vector<ExpiryCount> out;
    for (const Slot slot : {Slot::kPrimary, Slot::kSecondary}) {
      const std::string col = std::string(slot_name(slot)) + "_not_after";
      std::vector<std::string> params;
      const std::string where = " FROM devices WHERE " + col + " > 0 AND " + col + " < ?" +
                                where_clause(filter, params, " AND ");
      if (m_impl->postgres()) {
        // Counted by the server: a parallel scan and a hash aggregate over a few groups per CA
        // and lot (one per mark), never a row per device on the wire.
        std::string mark = "CASE WHEN " + col + " <= " + std::to_string(now) + " THEN 0";
        for (const int m : marks) {
          mark += " WHEN " + col + " <= " + std::to_string(now + std::int64_t{m} * 86400) +
                  " THEN " + std::to_string(m);
        }
        mark += " ELSE " + std::to_string(beyond) + " END";
        auto st = m_impl->query("SELECT ca_name, lot, " + mark + " AS d, COUNT(*)" + where +
                                " GROUP BY ca_name, lot, d");
        st->bind(1, until);
        bind_texts(*st, 2, params);
        while (st->step()) {
          out.push_back(ExpiryCount{str(*st, 0), str(*st, 1), st->int64(2), st->int64(3)});
        }
        continue;
      }
      // SQLite sorts every row for a GROUP BY that no index orders (84 s at 10^7): the covering
      // <slot>_expiry index is read in order instead, and counted here without an allocation per
      // row (the key is built in one reused buffer).
      std::unordered_map<std::string, std::int64_t> counts;
      std::string key;
      auto st = m_impl->query("SELECT ca_name, lot, " + col + where);
      st->bind(1, until);
      bind_texts(*st, 2, params);
      while (st->step()) {
        const std::int64_t at = st->int64(2);
        std::int64_t d = 0;
        if (at > now) {
          d = beyond;
          for (const int m : marks) {
            if (at - now <= std::int64_t{m} * 86400) {
              d = m;
              break;
            }
          }
        }
        const std::string_view ca_name = st->text(0), lot = st->text(1);
        key.assign(ca_name);
        key.push_back('\0');
        key.append(lot);
        key.push_back('\0');
        key.append(std::to_string(d));
        auto it = counts.find(key);
        if (it == counts.end()) it = counts.emplace(key, 0).first;
        ++it->second;
      }
      for (const auto& [k, n] : counts) {
        const auto a = k.find('\0'), b = k.find('\0', a + 1);
        out.push_back(ExpiryCount{k.substr(0, a), k.substr(a + 1, b - a - 1),
                                  std::stoll(k.substr(b + 1)), n});
      }
    }
    return out;
  });
}

std::vector<std::pair<std::string, std::int64_t>> Registry::latest_leaf_expiry_by_ca() {
  return m_impl->guarded("reading the latest device expiry per CA", [&] {
    // devices_ca (ca_name, primary_not_after) answers this without a table scan. SQLite's GROUP
    // BY walks that index, so its rows came by CA name; PostgreSQL may hash: ORDER BY says so.
    return m_impl->select<LatestExpiryRow>(
        "SELECT ca_name, MAX(primary_not_after) FROM devices GROUP BY ca_name ORDER BY ca_name");
  });
}

std::vector<CaBucketCount> Registry::expiry_histogram(std::int64_t from, std::int64_t bucket_s,
                                                      int buckets) {
  return m_impl->guarded("counting device certificates by expiry", [&] {
    if (bucket_s < 1) throw Error(ErrorCode::kInvalidArgument, "expiry histogram: bucket < 1 s");
    const std::int64_t until = from + static_cast<std::int64_t>(std::max(buckets, 0)) * bucket_s;
    std::map<std::pair<std::string, int>, std::int64_t> counts;
    for (const Slot slot : {Slot::kPrimary, Slot::kSecondary}) {
      const std::string col = std::string(slot_name(slot)) + "_not_after";
      // The <slot>_expiry index covers the range and the CA: no table rows are read. BIGINT
      // division truncates on both engines (the column is >= from there: no negative bucket).
      const auto rows =
          m_impl->select<BucketRow>("SELECT ca_name, CASE WHEN " + col + " < ? THEN -1 ELSE (" +
                                        col + " - ?) / ? END AS b, COUNT(*) FROM devices WHERE " +
                                        col + " > 0 AND " + col + " < ? GROUP BY ca_name, b",
                                    from, from, bucket_s, until);
      for (const auto& r : rows) counts[{r.ca_name, r.bucket}] += r.count;
    }
    std::vector<CaBucketCount> out;
    out.reserve(counts.size());
    for (const auto& [key, n] : counts) out.push_back(CaBucketCount{key.first, key.second, n});
    return out;
  });
}

std::vector<IssuedCount> Registry::issued_counts() {
  return m_impl->guarded("counting issued certificates", [&] {
    // "single-…" batch IDs: SQLite's LIKE 'single-%' ignored ASCII case; lower() keeps that on
    // PostgreSQL, whose LIKE does not.
    return m_impl->select<IssuedCountRow>(
        "SELECT c.ca_name, CASE WHEN c.batch_id = '' OR lower(substr(c.batch_id, 1, 7)) = "
        "'single-' THEN 'single' "
        "WHEN j.id IS NOT NULL THEN "
        "'job' ELSE 'batch' END AS mode, COUNT(*) FROM certificates c LEFT JOIN jobs j ON j.id "
        "= c.batch_id WHERE c.state IN ('issued', 'revoked') GROUP BY c.ca_name, mode "
        "ORDER BY c.ca_name, mode");
  });
}

std::vector<CaDeviceCount> Registry::device_counts_by_ca() {
  return m_impl->guarded("counting devices per CA", [&] {
    // SUM over a CASE, not over the comparison: PostgreSQL has no SUM(boolean).
    return m_impl->select<CaDeviceCountRow>(
        "SELECT d.ca_name, COUNT(*), "
        "SUM(CASE WHEN d.primary_serial <> '' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN d.secondary_serial <> '' THEN 1 ELSE 0 END), "
        "COUNT(s.device_id) FROM devices d LEFT JOIN device_sessions s ON s.device_id = "
        "d.registration_id AND s.connected = 1 GROUP BY d.ca_name ORDER BY d.ca_name");
  });
}

}  // namespace fleetsign::engine
