// DeviceFleet: 1..N simulated devices in one process, each its own IoT Hub MQTT client over TLS
// with its own certificate, speaking the protocol of ../../../../broker/PROTOCOL.md exactly as
// the Azure device SDK does (MQTT 3.1.1, clean session false, client id = device ID, username
// `{host}/{deviceId}/?api-version=2021-04-12&DeviceClientType=fleetsign-device`).
//
// Each connected device subscribes to `$iothub/methods/POST/#`, `$iothub/twin/res/#` and
// `$iothub/twin/PATCH/properties/desired/#`, asks for its twin and reports
// `reported.fleetsign.certificate = {sha256, serial, slot}`; method calls go to the
// MethodRegistry. With `dps_id_scope` a device first registers through DPS's MQTT protocol and
// connects to the hub it is assigned. Lost connections come back with exponential backoff and
// jitter; at most `max_handshakes` TLS handshakes run at once.
//
// Scale: every client is driven from one epoll loop on the calling thread (libmosquitto's
// mosquitto_loop_read/write/misc, no thread per client). Each device has its own SSL_CTX built
// from memory; all share one X509_STORE holding the broker trust.
//
// Threads: construct, fill `methods()`, `start()` and `run_until()` on one thread (the fleet's
// thread; handlers and the log sink run there). `stop()` and `stats()` may be called from any
// thread. Errors: the constructor and start() throw fleetsign::Error (unreadable trust file,
// unwritable state); per-device failures (refused, unreachable) are logged and retried.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/device/identity.hpp"
#include "fleetsign/device/methods.hpp"

namespace fleetsign::device {

struct FleetOptions {
  std::string broker_host;  // DNS name or IP the broker's certificate names
  int broker_port = 8883;
  std::filesystem::path trust_file;  // PEM: the CA(s) the broker's server certificate chains to
  std::vector<Credential> devices;   // sorted by ID (load_batch_dir / load_bundle)
  policy::DeviceIdRule id_rule;      // checks IDs read back from the state directory
  std::optional<std::filesystem::path> state_dir;  // each device's flash (SlotStore)
  std::optional<std::string> dps_id_scope;         // register through DPS first
  // fsync every flash write (first-run provisioning, rotations). false: simulation only, a power
  // cut may lose or tear what was written (`--sync never`).
  bool sync = true;
  // createCsr reuses the key the device runs (a device that cannot make keys).
  bool reuse_key = false;
  // Fault knobs, each an exact fraction of the devices chosen by `seed` (independently):
  double offline_fraction = 0;  // never connect
  double fail_fraction = 0;     // answer every method 500
  std::uint64_t seed = 1;
  int keepalive_s = 180;
  int max_handshakes = 64;                            // TLS handshakes (and CONNECTs) in flight
  std::chrono::milliseconds connect_timeout{30'000};  // TCP + TLS + CONNACK
  std::chrono::milliseconds backoff_min{1'000}, backoff_max{60'000};
  // One line per device event ("dev-01 connected to localhost:8883 (primary ...)"), on the
  // fleet's thread; none when empty.
  std::function<void(std::string_view line)> log;
};

// Counters; a consistent-enough snapshot (each value atomic on its own).
struct FleetStats {
  std::int64_t devices = 0;           // in the fleet
  std::int64_t online = 0;            // that try to connect (devices - offline)
  std::int64_t connected = 0;         // connected now (CONNACK accepted)
  std::int64_t handshaking = 0;       // connection attempts in flight
  std::int64_t connects = 0;          // successful connections so far (reconnects included)
  std::int64_t connect_failures = 0;  // attempts refused, failed or timed out
  std::int64_t disconnects = 0;       // connections lost after CONNACK
  std::int64_t registrations = 0;     // DPS assignments received
  std::int64_t methods_answered = 0;
  std::int64_t twin_responses = 0;  // $iothub/twin/res/ messages received
  std::int64_t desired_patches = 0;
  double first_all_connected_s = -1;  // seconds from start() until every online device was
                                      // connected at once; -1 until then
};

class DeviceFleet final {
 public:
  // Loads the trust file and, with a state directory, each device's slot (writing it on first
  // run). The credentials are moved in.
  explicit DeviceFleet(FleetOptions options);
  ~DeviceFleet();                            // disconnects what is still connected (as shutdown())
  DeviceFleet(const DeviceFleet&) = delete;  // owns sockets and TLS contexts
  DeviceFleet& operator=(const DeviceFleet&) = delete;

  MethodRegistry& methods() noexcept;  // the builtin and rotation methods are already in it

  // Raises RLIMIT_NOFILE as far as allowed (throws kInvalidArgument when even that is short of
  // one descriptor per online device plus headroom) and schedules every online device's first
  // connection.
  void start();

  // Runs the loop until `done()` returns true (checked after each batch of events, at least every
  // 100 ms), `deadline` passes or stop() is called. Returns true when `done()` said so.
  bool run_until(const std::function<bool()>& done,
                 std::chrono::steady_clock::time_point deadline =
                     std::chrono::steady_clock::time_point::max());

  void stop() noexcept;  // any thread, signal handlers too: run_until returns soon, and at once
                         // from then on (sticky)
  bool stopped() const noexcept;

  // Sends DISCONNECT on every connected client (written at once: an idle socket takes it) and
  // closes every connection. Idempotent; the destructor calls it.
  void shutdown();

  FleetStats stats() const;  // any thread

  // Per-device view, for tests and the benchmark (fleet's thread only).
  bool is_offline(std::size_t index) const;  // chosen by offline_fraction
  bool is_failing(std::size_t index) const;  // chosen by fail_fraction
  const DeviceId& device_id(std::size_t index) const;
  std::size_t size() const noexcept;

 private:
  class Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace fleetsign::device
