// The one decision, kept (PROTOCOL.md): a background thread polls the registry's change mark
// (max audit id) every kPollInterval, and on an admission change (or every kRecheckInterval)
// builds an Authenticator of its own, re-checks every connected device (hub and DPS sessions) with
// the certificate it connected with, and hands the refused ones to the main thread to disconnect
// (only the main thread may kick). The main thread notices the same changes itself for new
// connections (it compares the mark at each connect) and pushes desired-property changes.
//
// Thread-safe: the watcher owns its registry connection; everything it shares goes through the
// Inbox, the LiveDevices snapshot and the LogQueue.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/registry.hpp"
#include "log_queue.hpp"
#include "sessions.hpp"

namespace fleetsign::broker {

// The broker's registry connection options: actor "broker", the system clock.
std::unique_ptr<engine::Registry> open_broker_registry(const std::filesystem::path& registry);

struct DesiredChange {
  std::string device_id;
  std::int64_t version = 0;
  std::string patch;
};

// What a change mark's new audit rows mean to the broker.
struct RegistryChanges {
  bool admission = false;  // anything but a desired-property change or a job row ("job.*")
  std::vector<DesiredChange> desired;
};
// Reads the audit rows after `*mark` (up to the current mark) and advances `*mark`. Throws Error.
RegistryChanges read_changes(engine::FleetStateStore& store, std::int64_t* mark);

struct Refusal {
  std::string device_id;
  std::uint64_t seq = 0;  // the admission that was re-checked
  std::string rule, reason;
};
// The outcome of one re-check: devices admitted up to `snapshot_seq` were checked against the
// registry as it was at change mark `mark`.
struct Recheck {
  std::int64_t mark = 0;
  std::uint64_t snapshot_seq = 0;
  std::vector<Refusal> refused;
};

// What the watcher hands to the main thread. Thread-safe.
class Inbox {
 public:
  void post(Recheck recheck);
  std::vector<Recheck> take_rechecks();

 private:
  std::mutex m_mutex;
  std::vector<Recheck> m_rechecks;
};

class RegistryWatcher {
 public:
  // The change mark is one indexed read: polling it often costs little, and a revocation's drop
  // waits for it. A re-check (every session) runs on the first change after a quiet spell at
  // once, and at most once per kMinRecheckGap while changes keep coming (a job's slot changes).
  static constexpr std::chrono::milliseconds kPollInterval{50};
  static constexpr std::chrono::milliseconds kMinRecheckGap{200};
  static constexpr std::chrono::seconds kRecheckInterval{60};

  // `start_mark`: the change mark the main thread's first decision was built at.
  RegistryWatcher(const std::filesystem::path& registry, LiveDevices& live, Inbox& inbox,
                  LogQueue& log, std::int64_t start_mark);
  ~RegistryWatcher();                                // stops and joins
  RegistryWatcher(const RegistryWatcher&) = delete;  // owns a thread
  RegistryWatcher& operator=(const RegistryWatcher&) = delete;

 private:
  void run();
  bool poll(bool& admission_changed);  // false when the registry could not be read
  void recheck(std::int64_t mark);

  LiveDevices& m_live;
  Inbox& m_inbox;
  LogQueue& m_log;
  std::unique_ptr<engine::Registry> m_registry;
  std::int64_t m_mark;
  std::mutex m_mutex;
  std::condition_variable m_wake;
  bool m_stop = false;
  std::thread m_thread;
};

}  // namespace fleetsign::broker
