// Registry: the fleet plane's state — device sessions and twins (schema v4). See stores.hpp for
// the contract (FleetStateStore).
//
// The broker's writer thread calls record_sessions and store_reported with batches: each is one
// transaction with one statement prepared for the whole batch (Poco binds whole columns).
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <sstream>

#include "fleetsign/engine/twin_doc.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

const std::string kSessionColumns =
    "device_id, connected, mode, cert_sha256, cert_serial, connected_at, disconnected_at";

struct SessionRow {
  DeviceSession rec;
  std::int64_t connected = 0;
  void bind_into(Statement& st) {
    st, kw::into(rec.device_id), kw::into(connected), kw::into(rec.mode), kw::into(rec.cert_sha256),
        kw::into(rec.cert_serial), kw::into(rec.connected_at), kw::into(rec.disconnected_at);
  }
  DeviceSession take() {
    rec.connected = connected != 0;
    return rec;
  }
};

struct TwinRow {
  Twin rec;
  void bind_into(Statement& st) {
    st, kw::into(rec.device_id), kw::into(rec.desired), kw::into(rec.desired_version),
        kw::into(rec.reported), kw::into(rec.reported_version), kw::into(rec.updated_at);
  }
  Twin take() { return rec; }
};

struct AuditRow {
  AuditEntry rec;
  void bind_into(Statement& st) {
    st, kw::into(rec.id), kw::into(rec.at), kw::into(rec.actor), kw::into(rec.action),
        kw::into(rec.subject), kw::into(rec.detail);
  }
  AuditEntry take() { return rec; }
};

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
  impl.m_session
      << "INSERT INTO twins (device_id, desired, desired_version, reported, "
         "reported_version, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
         "ON CONFLICT (device_id) DO UPDATE SET desired = excluded.desired, "
         "desired_version = excluded.desired_version, reported = excluded.reported, "
         "reported_version = excluded.reported_version, updated_at = excluded.updated_at",
      kw::bind(t.device_id), kw::bind(t.desired), kw::bind(t.desired_version), kw::bind(t.reported),
      kw::bind(t.reported_version), kw::bind(now), kw::now;
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
    const std::int64_t at = m_impl->stamp(0);
    const std::string detail = desired_detail(t.desired_version, patch);
    m_impl->m_session
        << "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
        kw::bind(at), kw::bind(m_impl->actor()), kw::bind(std::string("twin.set-desired")),
        kw::bind(device_id), kw::bind(detail), kw::now;
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
    std::vector<std::string> ids, docs;
    std::vector<std::int64_t> versions;
    for (const auto& t : twins) {
      ids.push_back(t.device_id);
      docs.push_back(t.reported);
      versions.push_back(t.version);
    }
    std::vector<std::int64_t> now(twins.size(), m_impl->stamp(0));
    // A new twin row starts with empty desired properties; an existing one keeps them.
    m_impl->m_session
        << "INSERT INTO twins (device_id, reported, reported_version, updated_at) "
           "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
           "reported = excluded.reported, reported_version = excluded.reported_version, "
           "updated_at = excluded.updated_at "
           "WHERE excluded.reported_version > twins.reported_version",
        kw::use(ids), kw::use(docs), kw::use(versions), kw::use(now), kw::now;
  });
}

void Registry::record_sessions(std::span<const DeviceSession> sessions) {
  if (sessions.empty()) {
    return;
  }
  const std::string what = "recording " + std::to_string(sessions.size()) +
                           " device sessions (first '" + sessions.front().device_id + "')";
  m_impl->write(what, [&] {
    std::vector<std::string> ids, modes, sha, serial;
    std::vector<std::int64_t> connected, on, off;
    for (const auto& s : sessions) {
      ids.push_back(s.device_id);
      connected.push_back(s.connected ? 1 : 0);
      modes.push_back(s.mode);
      sha.push_back(s.cert_sha256);
      serial.push_back(s.cert_serial);
      on.push_back(s.connected_at);
      off.push_back(s.disconnected_at);
    }
    m_impl->m_session << "INSERT OR REPLACE INTO device_sessions (" << kSessionColumns
                      << ") VALUES (?, ?, ?, ?, ?, ?, ?)",
        kw::use(ids), kw::use(connected), kw::use(modes), kw::use(sha), kw::use(serial),
        kw::use(on), kw::use(off), kw::now;
  });
}

std::int64_t Registry::mark_all_disconnected(std::int64_t at) {
  return m_impl->write("marking every device session disconnected", [&] {
    Statement st = (m_impl->m_session << "UPDATE device_sessions SET connected = 0, "
                                         "disconnected_at = ? WHERE connected = 1",
                    kw::bind(at));
    return static_cast<std::int64_t>(st.execute());
  });
}

std::vector<DeviceSession> Registry::connected_devices() {
  return m_impl->guarded("listing connected devices", [&] {
    return m_impl->select<SessionRow>("SELECT " + kSessionColumns +
                                      " FROM device_sessions WHERE connected = 1 "
                                      "ORDER BY device_id");
  });
}

std::int64_t Registry::change_mark() {
  return m_impl->guarded("reading the registry's change mark", [&] {
    std::int64_t mark = 0;
    m_impl->m_session << "SELECT COALESCE(MAX(id), 0) FROM audit", kw::into(mark), kw::now;
    return mark;
  });
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
