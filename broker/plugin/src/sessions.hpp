// Presence: which client is connected, as whom, with which certificate.
//
// SessionTable is the main thread's: one entry per client id, keyed also by the connection
// (mosquitto's context pointer) so that the order of events when a reconnect replaces a session
// (the new connection's auth, then the old connection's disconnect) cannot remove the new entry.
// It mirrors the hub devices' certificates into a mutex-guarded snapshot the watcher thread reads
// (LiveDevices), so re-checking never waits for the main thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "admission.hpp"
#include "fleetsign/engine/x509.hpp"

namespace fleetsign::broker {

struct Session {
  const void* connection = nullptr;  // identity of the connection, never dereferenced
  ClientKind kind = ClientKind::kHubDevice;
  std::string client_id;  // == the device ID for devices
  std::shared_ptr<const engine::Der> leaf;
  std::string sha256, serial;
  std::uint64_t seq = 0;           // admission order (1, 2, …)
  std::int64_t decision_mark = 0;  // the change mark of the decision that admitted it
  std::int64_t connected_at = 0;   // unix seconds
  bool methods_ready = false;      // subscribed to $iothub/methods/POST/#
  bool rotation_only = false;      // pinned by an incident: the rotation methods only
  bool recorded = true;            // in device_sessions (not a refused DPS device's)
};

// A hub device as the watcher re-checks it. Thread-safe.
class LiveDevices {
 public:
  struct Entry {
    std::string device_id;
    std::shared_ptr<const engine::Der> leaf;
    std::uint64_t seq = 0;
    bool rotation_only = false;  // the mode it was admitted in
  };
  void put(const std::string& device_id, std::shared_ptr<const engine::Der> leaf, std::uint64_t seq,
           bool rotation_only);
  // Only that admission's entry; seq 0: whatever entry the ID has.
  void erase(const std::string& device_id, std::uint64_t seq);
  // Every entry, and the highest admission seq handed out when the copy was taken.
  std::vector<Entry> snapshot(std::uint64_t* max_seq) const;

 private:
  mutable std::mutex m_mutex;
  std::unordered_map<std::string, Entry> m_devices;
  std::uint64_t m_max_seq = 0;
};

// Main thread only.
class SessionTable {
 public:
  explicit SessionTable(LiveDevices& mirror) : m_mirror(mirror) {}

  // Records an admitted connection; it replaces any entry of that client id (mosquitto then
  // disconnects the old connection). Returns the stored session (valid until the next change).
  Session& add(Session session);
  // The entry of this client id when it belongs to this connection, else null: a connection
  // that was replaced, or never admitted, gets nothing.
  Session* live(const void* connection, const std::string& client_id);
  Session* find(const std::string& client_id);
  // Removes the entry only when it belongs to this connection; returns it (moved out) if so.
  std::unique_ptr<Session> remove(const void* connection, const std::string& client_id);
  std::uint64_t last_seq() const { return m_seq; }
  template <typename F>
  void for_each(F&& f) {
    for (auto& [id, s] : m_sessions) f(s);
  }

 private:
  LiveDevices& m_mirror;
  std::unordered_map<std::string, Session> m_sessions;
  std::uint64_t m_seq = 0;
};

}  // namespace fleetsign::broker
