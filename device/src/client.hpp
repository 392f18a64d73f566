// One device's MQTT connection, driven by the fleet's epoll loop. Private to device/.
//
// A client owns at most one libmosquitto object at a time: made by open() for one attempt (to DPS
// or to the hub), destroyed by close(). libmosquitto calls back (connect, disconnect, message) only
// inside the calls this class makes on it, and those callbacks only record what happened as an
// Outcome; the fleet takes the outcome after each call and does the bookkeeping (epoll, timers,
// handshake slots, backoff). Not thread-safe: the fleet's thread only.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "fleetsign/device/fleet.hpp"
#include "fleetsign/device/methods.hpp"
#include "fleetsign/device/state.hpp"
#include "tls.hpp"
#include "topics.hpp"

struct mosquitto;
struct mosquitto_message;

namespace fleetsign::device {

// mosquitto_new() without the socket pair libmosquitto opens for its threaded mode (see
// mosquitto_new.cpp): one descriptor per client.
mosquitto* new_mosquitto_client(const char* id, bool clean_session, void* userdata);

// Counters the clients bump and stats() reads from any thread.
struct FleetCounters {
  std::atomic<std::int64_t> connected{0}, handshaking{0}, connects{0}, connect_failures{0},
      disconnects{0}, registrations{0}, methods_answered{0}, twin_responses{0}, desired_patches{0};
};

// What the clients of one fleet share.
struct FleetShared {
  const FleetOptions& options;
  TlsContexts& tls;
  const MethodRegistry& methods;
  FleetCounters& counters;
  void log(const DeviceId& id, const std::string& message) const;
};

class DeviceClient final : public MethodContext {
 public:
  enum class Phase { kIdle, kDpsConnecting, kDpsRegistering, kHubConnecting, kConnected };
  // What happened inside the last call; a bit set, taken (and cleared) by take_outcome().
  enum Outcome : unsigned {
    kNone = 0,
    kDpsConnected = 1u << 0,  // DPS accepted the connection: the registration request is out
    kPollLater = 1u << 1,     // DPS said "assigning": ask again after poll_after()
    kAssigned = 1u << 2,      // DPS assigned a hub: close() and open() again (to the hub)
    kConnected = 1u << 3,     // the hub accepted the connection (CONNACK 0)
    kFailed = 1u << 4,        // an attempt failed before kConnected/kAssigned (see failure())
    kLost = 1u << 5,          // a hub connection was lost after kConnected (see failure())
    kReconnect = 1u << 6,     // a method asked for a reconnect once its answer is out
  };

  DeviceClient(const FleetShared& shared, Credential credential, Slot slot,
               std::optional<SlotStore> store, bool failing);
  ~DeviceClient() override;
  DeviceClient(const DeviceClient&) = delete;  // libmosquitto holds a pointer to it

  // Starts an attempt: to DPS when the fleet uses DPS and no hub is assigned yet, else to the hub.
  // False when it failed at once (failure() says why); nothing to watch then.
  bool open();
  void on_io(std::uint32_t epoll_events);  // the socket is ready (or in error)
  void on_misc();                          // keepalive: PINGREQ when due, timeout when late
  void poll_dps();                         // after kPollLater: the operation-status request
  void fail(std::string reason);           // the fleet gave up on this attempt (timeout)
  void disconnect();                       // clean MQTT DISCONNECT, best effort, then close()
  void close();                            // destroys the libmosquitto object (its socket closes)
  // After kReconnect: re-reads the store's active slot; false (failure() says why) if unusable.
  bool reload_credential();
  void forget_assignment() { m_hub.reset(); }
  // After a failed attempt (kFailed): when the slot a rotation switched to is on trial (the hub
  // has not admitted it yet) and it was refused (before a CONNACK: a TLS alert, a close, CONNACK 4
  // or 5; or DPS's answer 401 or 403; not a timeout, an unreachable host, or a close after a
  // CONNACK) kTrialRefusals times in a row, the device goes back to its other slot (durably) and
  // says so in the returned line; empty otherwise.
  std::string after_failed_attempt();
  static constexpr int kTrialRefusals = 3;

  int socket() const;                   // -1 when closed
  std::uint32_t wanted_events() const;  // EPOLLIN, plus EPOLLOUT when it has bytes to send
  unsigned take_outcome() { return std::exchange(m_outcome, kNone); }
  const std::string& failure() const { return m_failure; }
  std::chrono::seconds poll_after() const { return m_poll_after; }
  Phase phase() const { return m_phase; }
  bool reprovision_requested() const { return m_reprovision; }
  const std::string& target() const { return m_target; }  // "host:port" of the last attempt

  // MethodContext
  const DeviceId& device_id() const override { return m_id; }
  const CertInfo& certificate() const override { return m_cert; }
  Slot slot() const override { return m_slot; }
  SlotStore* store() override { return m_store ? &*m_store : nullptr; }
  void reconnect_after_answer(bool reprovision) override;

 private:
  static void on_connect(mosquitto*, void* self, int rc);
  static void on_disconnect(mosquitto*, void* self, int rc);
  static void on_message(mosquitto*, void* self, const mosquitto_message* message);
  static void on_log(mosquitto*, void* self, int level, const char* text);

  template <typename Fn>
  static void guarded(void* self, Fn&& fn) noexcept;
  void connect_done(int rc);
  void disconnect_done(int rc);
  void message(const mosquitto_message* m);
  bool start(bool dps);
  void connected_to_hub();
  void end_trial();  // the hub's CONNACK 0: the active slot's certificate is admitted
  bool awaiting_connack() const {
    return m_phase == Phase::kDpsConnecting || m_phase == Phase::kHubConnecting;
  }
  void connected_to_dps();
  void handle_method(const std::string& topic, std::string_view payload);
  void handle_twin(const std::string& topic, std::string_view payload);
  void handle_dps(const std::string& topic, std::string_view payload);
  void publish(const std::string& topic, const std::string& payload, int qos = 0);
  void check(int rc);  // records a failure libmosquitto reported only through `rc`
  std::string next_rid() { return std::to_string(++m_rid); }
  void log(const std::string& message) const { m_shared.log(m_id, message); }

  const FleetShared& m_shared;
  DeviceId m_id;
  CertInfo m_cert;
  Slot m_slot;
  std::unique_ptr<TlsIdentity> m_identity;
  std::optional<SlotStore> m_store;
  bool m_failing;

  mosquitto* m_mosq = nullptr;
  Phase m_phase = Phase::kIdle;
  bool m_tcp_pending = false;  // no socket event yet: the TCP connect may still be in progress
  unsigned m_outcome = kNone;
  std::string m_failure, m_last_log, m_target;
  std::uint64_t m_rid = 0;
  std::string m_dps_rid, m_operation_id;
  std::chrono::seconds m_poll_after{1};
  std::optional<topics::HostPort> m_hub;  // assigned by DPS
  bool m_reconnect = false, m_reprovision = false;
  bool m_trial = false;    // the active slot was switched to and the hub has not admitted it
  bool m_refused = false;  // this attempt was refused by the peer (not lost on the way)
  int m_trial_refusals = 0;
};

}  // namespace fleetsign::device
