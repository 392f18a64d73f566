// FleetBroker: what fleetsign's plugin does inside mosquitto (PROTOCOL.md), one method per plugin
// event. It owns the parts: the admission decision (an Authenticator rebuilt whenever the
// registry's change mark says the enrollments changed: checked at every connect), presence
// (SessionTable), direct methods (MethodRouter), twins (TwinService), DPS (DpsService), the
// registry writer and watcher threads.
//
// Every publish a client makes on a fleetsign, IoT Hub or DPS topic is served here and then
// refused to mosquitto (`kConsume`), so it is never routed to any subscriber: mosquitto drops a
// refused QoS 0 publish silently and answers a refused QoS 1 publish with a PUBACK (in MQTT 3.1.1
// a plain one; in MQTT 5 with reason "not authorised"). Everything the plugin sends goes to one
// client id through the Transport.
//
// All methods run on mosquitto's main thread. They never throw: a failure is logged and the
// request refused.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "admission.hpp"
#include "config.hpp"
#include "dps.hpp"
#include "log_queue.hpp"
#include "methods.hpp"
#include "sessions.hpp"
#include "twins.hpp"
#include "watcher.hpp"
#include "writer.hpp"

namespace fleetsign::broker {

enum class Verdict { kAllow, kDeny, kConsume };

class FleetBroker {
 public:
  // Opens the registry (migrating it), marks every session disconnected, builds the first
  // decision and starts the writer and watcher threads. Throws Error when the registry cannot be
  // opened.
  FleetBroker(BrokerConfig config, Transport& transport);
  ~FleetBroker();  // stops the threads; queued registry writes are committed first
  FleetBroker(const FleetBroker&) = delete;  // owns threads and connections
  FleetBroker& operator=(const FleetBroker&) = delete;

  // MOSQ_EVT_BASIC_AUTH: true admits the connection.
  bool on_connect(const void* connection, const ConnectRequest& request, bool clean_session);
  // MOSQ_EVT_ACL_CHECK, by access kind.
  Verdict on_publish(const void* connection, const std::string& client_id, std::string_view topic,
                     std::string_view payload);
  Verdict on_subscribe(const void* connection, const std::string& client_id,
                       std::string_view filter);
  Verdict on_read(const void* connection, const std::string& client_id, std::string_view topic);
  // MOSQ_EVT_DISCONNECT: every connection that ends, admitted or not.
  void on_disconnect(const void* connection, const std::string& client_id);
  // MOSQ_EVT_TICK: takes what the threads handed over, kicks, expires method calls.
  void on_tick();
  // MOSQ_EVT_RELOAD (SIGHUP, `fleetsign broker reload`, a new CRL): broker.json and the policy
  // are read again; on an error the running configuration stays and the error is logged. Until
  // the next tick, on_connect admits the stored sessions of disconnected clients that mosquitto
  // re-authenticates after a reload (see on_connect).
  void on_reload();

  // For tests and measurements.
  std::uint64_t routed_calls() const { return m_methods.routed(); }
  bool flush_writes(std::chrono::milliseconds timeout) { return m_writer.flush(timeout); }

 private:
  void serve_service(const Session& s, const Request& req, std::string_view payload);
  void serve_device(Session& s, const Request& req, std::string_view payload);
  // Catches up with the registry: rebuilds the decision after an admission change, pushes
  // desired-property changes. Cheap when nothing changed (one indexed query).
  void refresh();
  void apply_recheck(const Recheck& r);
  // The sessions one pass disconnected, by rule: the count, and the first device and reason.
  class KickLog {
   public:
    void add(const std::string& device_id, const std::string& rule, const std::string& reason);
    void write(Transport& transport) const;

   private:
    struct Group {
      std::string rule, first_device, first_reason;
      std::size_t count = 0;
    };
    std::vector<Group> m_groups;  // few rules: a linear search
  };
  void kick(const std::string& device_id, const std::string& rule, const std::string& reason,
            KickLog& log);
  std::int64_t now_ms() const;

  BrokerConfig m_config;
  Transport& m_transport;
  engine::CsprngSource m_random;
  engine::SystemClock m_clock;
  LogQueue m_log;
  LiveDevices m_live;
  Inbox m_inbox;
  std::unique_ptr<engine::Registry> m_reads;      // the main thread's connection
  std::unique_ptr<engine::Authenticator> m_auth;  // the main thread's decision, on m_reads
  std::int64_t m_mark = 0;                        // the change mark m_auth and m_twins follow
  SessionTable m_sessions{m_live};
  RegistryWriter m_writer;
  MethodRouter m_methods{m_transport, m_random};
  TwinService m_twins;
  DpsService m_dps{m_config, m_transport, m_random};
  std::unordered_set<std::string> m_method_subscribers;  // persistent sessions' subscriptions
  std::vector<std::string> m_ready;                      // devices to tell the router about
  std::int64_t m_last_evict_ms = 0, m_last_refresh_ms = 0;
  bool m_reloading = false;                    // from MOSQ_EVT_RELOAD to the next tick
  std::unique_ptr<RegistryWatcher> m_watcher;  // last: it starts its thread when all is ready
};

}  // namespace fleetsign::broker
