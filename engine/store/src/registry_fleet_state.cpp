// Registry: the fleet plane's state — device sessions and twins (schema v4). See stores.hpp for
// the contract (FleetStateStore).
//
// The broker's writer thread calls record_sessions and store_reported with batches: each is one
// transaction with one statement, prepared once, stepped per row in the batch's order. (Not one
// multi-row INSERT: a batch may name a device twice, which PostgreSQL's ON CONFLICT DO UPDATE
// refuses within one statement, and the later row must win as it did row by row.)
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <sstream>

#include "fleetsign/engine/twin_doc.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

const std::string kSessionColumns =
    "device_id, connected, mode, cert_sha256, cert_serial, connected_at, disconnected_at";

// Row readers, in the column order of the SELECTs below. A NULL text reads "", a NULL number 0.
std::string str(sql::Stmt& st, int column) { return std::string(st.text(column)); }

struct SessionRow {
  static DeviceSession read(sql::Stmt& st) {
    DeviceSession rec;
    rec.device_id = str(st, 0);
    rec.connected = st.int64(1) != 0;
    rec.mode = str(st, 2);
    rec.cert_sha256 = str(st, 3);
    rec.cert_serial = str(st, 4);
    rec.connected_at = st.int64(5);
    rec.disconnected_at = st.int64(6);
    return rec;
  }
};

struct TwinRow {
  static Twin read(sql::Stmt& st) {
    Twin rec;
    rec.device_id = str(st, 0);
    rec.desired = str(st, 1);
    rec.desired_version = st.int64(2);
    rec.reported = str(st, 3);
    rec.reported_version = st.int64(4);
    rec.updated_at = st.int64(5);
    return rec;
  }
};

using registry_detail::AuditRow;

// The twin as stored, or the empty twin a device without a row reads as.
Twin current_twin(Registry::Impl& impl, const std::string& device_id) {
  auto row = impl.select_one<TwinRow>(
      "SELECT device_id, desired, desired_version, reported, reported_version, updated_at "
      "FROM twins WHERE device_id = ?",
      device_id);
  if (row) {
    return *row;
  }
  Twin empty;
  empty.device_id = device_id;
  return empty;
}

void upsert_twin(Registry::Impl& impl, const Twin& t) {
  const std::int64_t now = impl.stamp(0);
  impl.change(
      "INSERT INTO twins (device_id, desired, desired_version, reported, "
      "reported_version, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
      "ON CONFLICT (device_id) DO UPDATE SET desired = excluded.desired, "
      "desired_version = excluded.desired_version, reported = excluded.reported, "
      "reported_version = excluded.reported_version, updated_at = excluded.updated_at",
      t.device_id, t.desired, t.desired_version, t.reported, t.reported_version, now);
}

// {"version":N,"patch":{…}}: the patch as an object, not a string, so the audit log reads well.
std::string desired_detail(std::int64_t version, const std::string& patch) {
  Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("version", static_cast<Poco::Int64>(version));
  Poco::JSON::Parser parser;
  o.set("patch", parser.parse(patch));
  std::ostringstream s;
  o.stringify(s);
  return s.str();
}

}  // namespace

std::int64_t Registry::set_desired(const std::string& device_id, const std::string& patch_json) {
  const std::string what = "desired properties of device '" + device_id + "'";
  const std::string patch = normalized_patch(patch_json, what);
  return m_impl->write("setting " + what, [&] {
    Twin t = current_twin(*m_impl, device_id);
    t.desired = merge_patch(t.desired, patch, what);
    t.desired_version += 1;
    upsert_twin(*m_impl, t);
    registry_detail::audit_row(*m_impl, "twin.set-desired", device_id,
                               desired_detail(t.desired_version, patch));
    return t.desired_version;
  });
}

std::optional<Twin> Registry::twin(const std::string& device_id) {
  return m_impl->guarded("reading the twin of device '" + device_id + "'",
                         [&] { return std::optional<Twin>(current_twin(*m_impl, device_id)); });
}

std::int64_t Registry::apply_reported(const std::string& device_id, const std::string& patch_json) {
  const std::string what = "reported properties of device '" + device_id + "'";
  return m_impl->write("patching " + what, [&] {
    Twin t = current_twin(*m_impl, device_id);
    t.reported = merge_patch(t.reported, patch_json, what);
    t.reported_version += 1;
    upsert_twin(*m_impl, t);
    return t.reported_version;
  });
}

void Registry::store_reported(std::span<const ReportedTwin> twins) {
  if (twins.empty()) {
    return;
  }
  const std::string what = "storing the reported properties of " + std::to_string(twins.size()) +
                           " devices (first '" + twins.front().device_id + "')";
  m_impl->write(what, [&] {
    const std::int64_t now = m_impl->stamp(0);
    // A new twin row starts with empty desired properties; an existing one keeps them.
    auto st = m_impl->query(
        "INSERT INTO twins (device_id, reported, reported_version, updated_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
        "reported = excluded.reported, reported_version = excluded.reported_version, "
        "updated_at = excluded.updated_at "
        "WHERE excluded.reported_version > twins.reported_version");
    for (const auto& t : twins) {
      registry_detail::bind_all(*st, t.device_id, t.reported, t.version, now);
      sql::run(*st);
    }
  });
}

void Registry::record_sessions(std::span<const DeviceSession> sessions) {
  if (sessions.empty()) {
    return;
  }
  const std::string what = "recording " + std::to_string(sessions.size()) +
                           " device sessions (first '" + sessions.front().device_id + "')";
  m_impl->write(what, [&] {
    // Each row replaces the device's whole session row (was INSERT OR REPLACE; the table has no
    // other unique key, no triggers and nothing referencing it, so the upsert is the same).
    auto st = m_impl->query("INSERT INTO device_sessions (" + kSessionColumns +
                            ") VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
                            "connected = excluded.connected, mode = excluded.mode, "
                            "cert_sha256 = excluded.cert_sha256, "
                            "cert_serial = excluded.cert_serial, "
                            "connected_at = excluded.connected_at, "
                            "disconnected_at = excluded.disconnected_at");
    for (const auto& s : sessions) {
      registry_detail::bind_all(*st, s.device_id, s.connected, s.mode, s.cert_sha256, s.cert_serial,
                                s.connected_at, s.disconnected_at);
      sql::run(*st);
    }
  });
}

std::int64_t Registry::mark_all_disconnected(std::int64_t at) {
  return m_impl->write("marking every device session disconnected", [&] {
    return m_impl->change(
        "UPDATE device_sessions SET connected = 0, disconnected_at = ? WHERE connected = 1", at);
  });
}

std::vector<DeviceSession> Registry::connected_devices() {
  return m_impl->guarded("listing connected devices", [&] {
    return m_impl->select<SessionRow>("SELECT " + kSessionColumns +
                                      " FROM device_sessions WHERE connected = 1 "
                                      "ORDER BY device_id");
  });
}

std::vector<DeviceSession> Registry::connected_sessions_of(
    std::span<const std::string> device_ids) {
  if (device_ids.empty()) return {};
  return m_impl->guarded(
      "reading the sessions of " + std::to_string(device_ids.size()) + " devices (first '" +
          device_ids.front() + "')",
      [&] {
        std::vector<DeviceSession> out;
        // Bound IDs in slices of three fixed sizes (the last ID repeated to fill one), so that
        // three statements serve every call: the statement cache keeps each by its text.
        constexpr std::size_t kSizes[] = {8, 64, 512};
        for (std::size_t at = 0; at < device_ids.size();) {
          const std::size_t left = device_ids.size() - at;
          std::size_t size = kSizes[2];
          for (const std::size_t s : kSizes) {
            if (s >= left) {
              size = s;
              break;
            }
          }
          const std::size_t take = std::min(left, size);
          std::string text = "SELECT " + kSessionColumns +
                             " FROM device_sessions WHERE connected = 1 AND device_id IN (?";
          for (std::size_t i = 1; i < size; ++i) text += ", ?";
          text += ")";
          auto st = m_impl->query(text);
          for (std::size_t i = 0; i < size; ++i) {
            st->bind(static_cast<int>(i + 1),
                     std::string_view(device_ids[at + std::min(i, take - 1)]));
          }
          while (st->step()) out.push_back(SessionRow::read(*st));
          at += take;
        }
        std::sort(out.begin(), out.end(), [](const DeviceSession& a, const DeviceSession& b) {
          return a.device_id < b.device_id;
        });
        out.erase(std::unique(out.begin(), out.end(),
                              [](const DeviceSession& a, const DeviceSession& b) {
                                return a.device_id == b.device_id;
                              }),
                  out.end());
        return out;
      });
}

std::int64_t Registry::change_mark() {
  return m_impl->guarded("reading the registry's change mark",
                         [&] { return m_impl->count("SELECT COALESCE(MAX(id), 0) FROM audit"); });
}

std::vector<AuditEntry> Registry::audit_after(std::int64_t after_id, std::int64_t limit) {
  return m_impl->guarded("reading audit entries after #" + std::to_string(after_id), [&] {
    return m_impl->select<AuditRow>(
        "SELECT id, at, actor, action, subject, detail FROM audit WHERE id > ? ORDER BY id "
        "LIMIT ?",
        after_id, limit);
  });
}

}  // namespace fleetsign::engine
