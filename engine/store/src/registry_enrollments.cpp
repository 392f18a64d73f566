// Registry: enrollment groups, individual enrollments and devices (schema version 2).
#include <Poco/Data/SQLite/Utility.h>

#include <algorithm>
#include <map>

#include "fleetsign/engine/json.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

using registry_detail::to_bytes;

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

struct GroupRow {
  EnrollmentGroup rec;
  std::int64_t enabled = 1;
  void bind_into(Statement& st) {
    st, kw::into(rec.name), kw::into(enabled), kw::into(rec.primary_ca), kw::into(rec.secondary_ca),
        kw::into(rec.created_at), kw::into(rec.updated_at);
  }
  EnrollmentGroup take() {
    rec.enabled = enabled != 0;
    return rec;
  }
};

struct IndividualRow {
  IndividualEnrollment rec;
  std::int64_t enabled = 1;
  BLOB primary, secondary;
  void bind_into(Statement& st) {
    st, kw::into(rec.registration_id), kw::into(enabled), kw::into(primary),
        kw::into(rec.primary_sha256), kw::into(secondary), kw::into(rec.secondary_sha256),
        kw::into(rec.created_at), kw::into(rec.updated_at);
  }
  IndividualEnrollment take() {
    rec.enabled = enabled != 0;
    rec.primary_cert = to_bytes(primary);
    rec.secondary_cert = to_bytes(secondary);
    return rec;
  }
};

struct DeviceRow {
  DeviceRecord rec;
  void bind_into(Statement& st) {
    st, kw::into(rec.registration_id), kw::into(rec.primary_serial),
        kw::into(rec.primary_not_after), kw::into(rec.secondary_serial),
        kw::into(rec.secondary_not_after), kw::into(rec.ca_name), kw::into(rec.lot),
        kw::into(rec.status), kw::into(rec.created_at), kw::into(rec.updated_at);
  }
  DeviceRecord take() { return rec; }
};

// "WHERE …" for a device filter, with its parameters in order.
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

void bind_all(Statement& st, const std::vector<std::string>& params) {
  for (const auto& p : params) {
    st, kw::bind(p);
  }
}

std::string group_detail(const EnrollmentGroup& g) {
  return json_object(
      {{"enabled", g.enabled}, {"primary_ca", g.primary_ca}, {"secondary_ca", g.secondary_ca}});
}

}  // namespace

namespace registry_detail {

void audit_row(Registry::Impl& impl, const std::string& action, const std::string& subject,
               const std::string& detail) {
  const std::int64_t at = impl.stamp(0);
  const std::string& who = impl.actor();
  impl.m_session << "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
      kw::bind(at), kw::bind(who), kw::bind(action), kw::bind(subject), kw::bind(detail), kw::now;
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
        Poco::Nullable<std::string> p =
            primary ? Poco::Nullable<std::string>(*primary) : Poco::Nullable<std::string>();
        Poco::Nullable<std::string> sec =
            secondary ? Poco::Nullable<std::string>(*secondary) : Poco::Nullable<std::string>();
        if (create) {
          m_impl->m_session << "INSERT INTO enrollment_groups (name, enabled, primary_ca, "
                               "secondary_ca, created_at, "
                               "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
              kw::bind(g.name), kw::bind(enabled), kw::bind(p), kw::bind(sec), kw::bind(now),
              kw::bind(now), kw::now;
        } else {
          Statement st =
              (m_impl->m_session << "UPDATE enrollment_groups SET enabled = ?, primary_ca = ?, "
                                    "secondary_ca = ?, updated_at = ? WHERE name = ?",
               kw::bind(enabled), kw::bind(p), kw::bind(sec), kw::bind(now), kw::bind(g.name));
          Impl::expect_row(st, "enrollment group '" + g.name + "'");
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
  m_impl->write((create ? "creating" : "updating") + std::string(" individual enrollment '") +
                    ie.registration_id + "'",
                [&] {
                  const std::int64_t now = m_impl->stamp(0);
                  const std::int64_t enabled = ie.enabled ? 1 : 0;
                  BLOB primary(ie.primary_cert), secondary(ie.secondary_cert);
                  if (create) {
                    m_impl->m_session << "INSERT INTO individual_enrollments ("
                                      << kIndividualColumns << ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        kw::bind(ie.registration_id), kw::bind(enabled), kw::bind(primary),
                        kw::bind(ie.primary_sha256), kw::bind(secondary),
                        kw::bind(ie.secondary_sha256), kw::bind(now), kw::bind(now), kw::now;
                  } else {
                    Statement st =
                        (m_impl->m_session
                             << "UPDATE individual_enrollments SET enabled = ?, primary_cert = ?, "
                                "primary_sha256 = ?, secondary_cert = ?, secondary_sha256 = ?, "
                                "updated_at = ? WHERE registration_id = ?",
                         kw::bind(enabled), kw::bind(primary), kw::bind(ie.primary_sha256),
                         kw::bind(secondary), kw::bind(ie.secondary_sha256), kw::bind(now),
                         kw::bind(ie.registration_id));
                    Impl::expect_row(st, "individual enrollment '" + ie.registration_id + "'");
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

namespace {

std::string column_text(sqlite3_stmt* st, int col) {
  const unsigned char* text = sqlite3_column_text(st, col);
  return text != nullptr ? reinterpret_cast<const char*>(text) : "";
}

// Resets the statement however the lookup leaves (a thrown error included).
struct StmtReset {
  sqlite3_stmt* st;
  ~StmtReset() {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
};

}  // namespace

std::optional<IndividualEnrollment> Registry::find_individual_slots(const std::string& id) {
  sqlite3* db = Poco::Data::SQLite::Utility::dbHandle(m_impl->m_session);
  sqlite3_stmt* st =
      m_impl->m_individual_slots.get(db,
                                     "SELECT enabled, primary_sha256, secondary_sha256 FROM "
                                     "individual_enrollments WHERE registration_id = ?");
  StmtReset reset{st};
  sqlite3_bind_text(st, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
  const int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) return std::nullopt;
  if (rc != SQLITE_ROW) {
    throw Error(ErrorCode::kRegistryError,
                "reading individual enrollment '" + id + "': " + sqlite3_errmsg(db));
  }
  IndividualEnrollment ie;
  ie.registration_id = id;
  ie.enabled = sqlite3_column_int64(st, 0) != 0;
  ie.primary_sha256 = column_text(st, 1);
  ie.secondary_sha256 = column_text(st, 2);
  return ie;
}

std::optional<CertState> Registry::cert_state(const std::string& serial) {
  sqlite3* db = Poco::Data::SQLite::Utility::dbHandle(m_impl->m_session);
  sqlite3_stmt* st =
      m_impl->m_cert_state.get(db, "SELECT state FROM certificates WHERE serial = ?");
  StmtReset reset{st};
  sqlite3_bind_text(st, 1, serial.data(), static_cast<int>(serial.size()), SQLITE_STATIC);
  const int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) return std::nullopt;
  if (rc != SQLITE_ROW) {
    throw Error(ErrorCode::kRegistryError,
                "reading certificate 0x" + serial + ": " + sqlite3_errmsg(db));
  }
  const std::string state = column_text(st, 0);
  if (state == "issued") return CertState::kIssued;
  if (state == "revoked") return CertState::kRevoked;
  if (state == "abandoned") return CertState::kAbandoned;
  return CertState::kIntent;
}

std::vector<DeviceRecord> Registry::list_devices(const DeviceFilter& filter) {
  return m_impl->guarded("listing devices", [&] {
    std::vector<std::string> params;
    std::string sql = "SELECT " + kDeviceColumns + " FROM devices" +
                      where_clause(filter, params, " WHERE ") + " ORDER BY registration_id";
    if (filter.limit > 0) sql += " LIMIT " + std::to_string(filter.limit);
    // Bulk extraction: one execute for the whole result, not one per row.
    std::vector<std::string> id, ps, ss, ca, lot, status;
    std::vector<std::int64_t> pna, sna, created, updated;
    Statement st(m_impl->m_session);
    st << sql, kw::into(id), kw::into(ps), kw::into(pna), kw::into(ss), kw::into(sna), kw::into(ca),
        kw::into(lot), kw::into(status), kw::into(created), kw::into(updated);
    bind_all(st, params);
    st.execute();
    std::vector<DeviceRecord> out(id.size());
    for (std::size_t i = 0; i < id.size(); ++i) {
      out[i] = DeviceRecord{
          std::move(id[i]), std::move(ps[i]),  std::move(ss[i]),     pna[i],     sna[i],
          std::move(ca[i]), std::move(lot[i]), std::move(status[i]), created[i], updated[i]};
    }
    return out;
  });
}

std::int64_t Registry::count_devices() {
  return m_impl->guarded("counting devices", [&] {
    std::int64_t n = 0;
    m_impl->m_session << "SELECT COUNT(*) FROM devices", kw::into(n), kw::now;
    return n;
  });
}

std::vector<ExpiringCert> Registry::expiring_device_certs(std::int64_t until,
                                                          const DeviceFilter& filter) {
  return m_impl->guarded("scanning expiring device certificates", [&] {
    std::vector<ExpiringCert> out;
    for (const Slot slot : {Slot::kPrimary, Slot::kSecondary}) {
      const std::string col = std::string(slot_name(slot));
      std::vector<std::string> params;
      // Indexed on <slot>_not_after: only the rows that are due are read.
      const std::string sql = "SELECT registration_id, " + col + "_serial, ca_name, lot, " + col +
                              "_not_after FROM devices WHERE " + col + "_not_after > 0 AND " + col +
                              "_not_after < ?" + where_clause(filter, params, " AND ");
      std::vector<std::string> id, serial, ca, lot;
      std::vector<std::int64_t> na;
      Statement st(m_impl->m_session);
      st << sql, kw::into(id), kw::into(serial), kw::into(ca), kw::into(lot), kw::into(na),
          kw::bind(until);
      bind_all(st, params);
      st.execute();
      out.reserve(out.size() + id.size());
      for (std::size_t i = 0; i < id.size(); ++i) {
        out.push_back(ExpiringCert{std::move(id[i]), std::move(serial[i]), std::move(ca[i]),
                                   std::move(lot[i]), slot, na[i]});
      }
    }
    std::sort(out.begin(), out.end(), [](const ExpiringCert& a, const ExpiringCert& b) {
      return a.not_after != b.not_after ? a.not_after < b.not_after
                                        : a.registration_id < b.registration_id;
    });
    return out;
  });
}

std::vector<std::pair<std::string, std::int64_t>> Registry::latest_leaf_expiry_by_ca() {
  return m_impl->guarded("reading the latest device expiry per CA", [&] {
    std::vector<std::string> ca;
    std::vector<std::int64_t> latest;
    // devices_ca (ca_name, primary_not_after) answers this without a table scan.
    m_impl->m_session << "SELECT ca_name, MAX(primary_not_after) FROM devices GROUP BY ca_name",
        kw::into(ca), kw::into(latest), kw::now;
    std::vector<std::pair<std::string, std::int64_t>> out;
    for (std::size_t i = 0; i < ca.size(); ++i) out.emplace_back(ca[i], latest[i]);
    return out;
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
      std::vector<std::string> ca;
      std::vector<int> bucket;
      std::vector<std::int64_t> n;
      // The <slot>_expiry index covers the range and the CA: no table rows are read.
      Statement st(m_impl->m_session);
      st << "SELECT ca_name, CASE WHEN " + col + " < ? THEN -1 ELSE (" + col +
                " - ?) / ? END AS b, COUNT(*) FROM devices WHERE " + col + " > 0 AND " + col +
                " < ? GROUP BY ca_name, b",
          kw::into(ca), kw::into(bucket), kw::into(n), kw::bind(from), kw::bind(from),
          kw::bind(bucket_s), kw::bind(until);
      st.execute();
      for (std::size_t i = 0; i < ca.size(); ++i) counts[{ca[i], bucket[i]}] += n[i];
    }
    std::vector<CaBucketCount> out;
    out.reserve(counts.size());
    for (const auto& [key, n] : counts) out.push_back(CaBucketCount{key.first, key.second, n});
    return out;
  });
}

std::vector<IssuedCount> Registry::issued_counts() {
  return m_impl->guarded("counting issued certificates", [&] {
    std::vector<std::string> ca, mode;
    std::vector<std::int64_t> n;
    m_impl->m_session
        << "SELECT c.ca_name, CASE WHEN c.batch_id = '' OR c.batch_id LIKE 'single-%' THEN "
           "'single' "
           "WHEN j.id IS NOT NULL THEN "
           "'job' ELSE 'batch' END AS mode, COUNT(*) FROM certificates c LEFT JOIN jobs j ON j.id "
           "= c.batch_id WHERE c.state IN ('issued', 'revoked') GROUP BY c.ca_name, mode "
           "ORDER BY c.ca_name, mode",
        kw::into(ca), kw::into(mode), kw::into(n), kw::now;
    std::vector<IssuedCount> out;
    out.reserve(ca.size());
    for (std::size_t i = 0; i < ca.size(); ++i) out.push_back(IssuedCount{ca[i], mode[i], n[i]});
    return out;
  });
}

std::vector<CaDeviceCount> Registry::device_counts_by_ca() {
  return m_impl->guarded("counting devices per CA", [&] {
    std::vector<std::string> ca;
    std::vector<std::int64_t> devices, primary, secondary, connected;
    m_impl->m_session
        << "SELECT d.ca_name, COUNT(*), SUM(d.primary_serial <> ''), SUM(d.secondary_serial <> "
           "''), "
           "COUNT(s.device_id) FROM devices d LEFT JOIN device_sessions s ON s.device_id = "
           "d.registration_id AND s.connected = 1 GROUP BY d.ca_name ORDER BY d.ca_name",
        kw::into(ca), kw::into(devices), kw::into(primary), kw::into(secondary),
        kw::into(connected), kw::now;
    std::vector<CaDeviceCount> out;
    out.reserve(ca.size());
    for (std::size_t i = 0; i < ca.size(); ++i) {
      out.push_back(CaDeviceCount{ca[i], devices[i], primary[i], secondary[i], connected[i]});
    }
    return out;
  });
}

}  // namespace fleetsign::engine
