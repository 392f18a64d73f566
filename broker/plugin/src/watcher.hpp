// The one decision, kept (PROTOCOL.md): a background thread polls the registry's change mark
// (max audit id) every kPollInterval and re-checks every kRecheckInterval even without a change.
// On an admission change it builds a fresh Authenticator for the main thread (a Generation, handed
// over through the Inbox), then re-checks every connected hub device with the certificate it
// connected with, using an Authenticator of its own, and hands the refused ones to the main thread
// to disconnect (only the main thread may kick). Desired-property changes found in the audit log
// are handed over for pushing.
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
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config.hpp"
#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/registry.hpp"
#include "log_queue.hpp"
#include "sessions.hpp"

namespace fleetsign::broker {

// An Authenticator with the registry connection it reads, built on one thread and used on
// another (never on two at once).
struct Generation {
  std::uint64_t number = 0;
  std::unique_ptr<engine::Registry> registry;
  std::unique_ptr<engine::Authenticator> auth;
};
// Opens a connection to the registry and builds an Authenticator on it. Throws Error.
Generation build_generation(const std::filesystem::path& registry, std::uint64_t number);
// The broker's registry connection options: actor "broker", the system clock.
std::unique_ptr<engine::Registry> open_broker_registry(const std::filesystem::path& registry);

struct Refusal {
  std::string device_id;
  std::uint64_t seq = 0;  // the admission that was re-checked
  std::string rule, reason;
};
// The outcome of one re-check: devices admitted up to `snapshot_seq` were checked against the
// registry as generation `generation` saw it.
struct Recheck {
  std::uint64_t generation = 0, snapshot_seq = 0;
  std::vector<Refusal> refused;
};
struct DesiredChange {
  std::string device_id;
  std::int64_t version = 0;
  std::string patch;
};

// What the watcher hands to the main thread. Thread-safe.
class Inbox {
 public:
  void post(Generation generation);
  void post(Recheck recheck);
  void post(std::vector<DesiredChange> changes);
  std::optional<Generation> take_generation();
  std::vector<Recheck> take_rechecks();
  std::vector<DesiredChange> take_desired();

 private:
  std::mutex m_mutex;
  std::optional<Generation> m_generation;
  std::vector<Recheck> m_rechecks;
  std::vector<DesiredChange> m_desired;
};

class RegistryWatcher {
 public:
  static constexpr std::chrono::milliseconds kPollInterval{200};
  static constexpr std::chrono::seconds kRecheckInterval{60};

  // `start_mark`: the change mark the main thread's first generation was built at.
  RegistryWatcher(const BrokerConfig& config, LiveDevices& live, Inbox& inbox, LogQueue& log,
                  std::int64_t start_mark);
  ~RegistryWatcher();  // stops and joins
  RegistryWatcher(const RegistryWatcher&) = delete;  // owns a thread
  RegistryWatcher& operator=(const RegistryWatcher&) = delete;

 private:
  void run();
  bool poll(bool& admission_changed);  // false when the registry could not be read
  void recheck();

  const BrokerConfig& m_config;
  LiveDevices& m_live;
  Inbox& m_inbox;
  LogQueue& m_log;
  std::unique_ptr<engine::Registry> m_registry;
  std::int64_t m_mark;
  std::uint64_t m_generation = 1;
  std::mutex m_mutex;
  std::condition_variable m_wake;
  bool m_stop = false;
  std::thread m_thread;
};

}  // namespace fleetsign::broker
