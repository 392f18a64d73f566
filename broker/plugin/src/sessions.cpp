// Presence: see sessions.hpp.
#include "sessions.hpp"

namespace fleetsign::broker {

void LiveDevices::put(const std::string& device_id, std::shared_ptr<const engine::Der> leaf,
                      std::uint64_t seq, bool rotation_only) {
  const std::lock_guard lock(m_mutex);
  m_devices[device_id] = Entry{device_id, std::move(leaf), seq, rotation_only};
  m_max_seq = std::max(m_max_seq, seq);
}

void LiveDevices::erase(const std::string& device_id, std::uint64_t seq) {
  const std::lock_guard lock(m_mutex);
  const auto it = m_devices.find(device_id);
  if (it != m_devices.end() && (seq == 0 || it->second.seq == seq)) {
    m_devices.erase(it);
  }
}

std::vector<LiveDevices::Entry> LiveDevices::snapshot(std::uint64_t* max_seq) const {
  const std::lock_guard lock(m_mutex);
  std::vector<Entry> out;
  out.reserve(m_devices.size());
  for (const auto& [id, e] : m_devices) {
    out.push_back(e);
  }
  *max_seq = m_max_seq;
  return out;
}

Session& SessionTable::add(Session session) {
  session.seq = ++m_seq;
  const std::string id = session.client_id;
  auto [it, inserted] = m_sessions.insert_or_assign(id, std::move(session));
  Session& s = it->second;
  // Every device session is re-checked by the watcher: a DPS session on a revoked certificate is
  // cut off like a hub session.
  if (s.kind != ClientKind::kService) {
    m_mirror.put(id, s.leaf, s.seq, s.rotation_only);
  } else {
    m_mirror.erase(id, 0);  // a service entry replaced whatever was mirrored
  }
  return s;
}

Session* SessionTable::live(const void* connection, const std::string& client_id) {
  const auto it = m_sessions.find(client_id);
  return it != m_sessions.end() && it->second.connection == connection ? &it->second : nullptr;
}

Session* SessionTable::find(const std::string& client_id) {
  const auto it = m_sessions.find(client_id);
  return it != m_sessions.end() ? &it->second : nullptr;
}

std::unique_ptr<Session> SessionTable::remove(const void* connection,
                                              const std::string& client_id) {
  const auto it = m_sessions.find(client_id);
  if (it == m_sessions.end() || it->second.connection != connection) {
    return nullptr;
  }
  auto out = std::make_unique<Session>(std::move(it->second));
  m_sessions.erase(it);
  if (out->kind != ClientKind::kService) {
    m_mirror.erase(client_id, out->seq);
  }
  return out;
}

}  // namespace fleetsign::broker
