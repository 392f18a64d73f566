// Direct methods (PROTOCOL.md, "Direct methods"): the pending-rid table between service callers
// and devices.
//
// A call gets a fresh drid (128-bit random) and is sent to its one device with the Transport, or
// held until the device is ready (connected and subscribed) or $ct passes (404). A sent call waits
// for the device's answer until $rt passes (504). An answer counts only when its drid is pending
// and was sent to the device that publishes it; it goes to the calling service client only.
// Main thread only; time is passed in (steady milliseconds).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "topics.hpp"
#include "transport.hpp"

namespace fleetsign::broker {

inline constexpr std::size_t kMethodPayloadLimit = 128 * 1024;
inline constexpr std::size_t kMaxPendingCalls = 200'000;
inline constexpr std::size_t kMaxHeldPerDevice = 64;

class MethodRouter {
 public:
  MethodRouter(Transport& transport, engine::RandomSource& random)
      : m_transport(transport), m_random(random) {}
  MethodRouter(const MethodRouter&) = delete;  // holds iterators into its own maps
  MethodRouter& operator=(const MethodRouter&) = delete;

  // A call from service client `service`; `req` is a parsed kMethodCall whose device ID the caller
  // has checked. `ready`: the device is connected and subscribed now.
  void call(const std::string& service, const Request& req, std::string_view payload, bool ready,
            std::int64_t now_ms);
  // Answers 400 to `service` for a call it cannot make (bad device ID, malformed topic).
  void refuse(const std::string& service, std::string_view rid, const std::string& message);
  // The device is ready: its held calls go out now. A device pinned by an incident
  // (`rotation_only`) gets only the rotation methods; any other held call is answered 400 as a
  // call made while it was connected would be.
  void device_ready(const std::string& device_id, std::int64_t now_ms, bool rotation_only);
  // An answer published by `device_id` (the publisher's checked identity). False when dropped.
  bool answer(const std::string& device_id, const Request& req, std::string_view payload);
  // 404 for held calls past $ct, 504 for sent calls past $rt.
  void expire(std::int64_t now_ms);
  // The service client left: its calls are dropped (nobody to answer).
  void service_gone(const std::string& service);

  std::size_t pending() const { return m_calls.size(); }
  std::uint64_t routed() const { return m_routed; }  // answers delivered, since start

 private:
  struct Call {
    std::string service, rid, device, method, payload;
    int response_timeout_s = 30;
    bool sent = false;
    std::multimap<std::int64_t, std::string>::iterator deadline;
  };
  std::string new_drid();
  void send(const std::string& drid, Call& call, std::int64_t now_ms);
  void finish(const std::string& drid);
  void error_answer(const Call& call, int status, std::int64_t code, const std::string& message);

  Transport& m_transport;
  engine::RandomSource& m_random;
  std::unordered_map<std::string, Call> m_calls;                     // by drid
  std::unordered_map<std::string, std::vector<std::string>> m_held;  // device -> drids, in order
  std::multimap<std::int64_t, std::string> m_deadlines;              // deadline ms -> drid
  std::unordered_set<std::string> m_caller_rids;                     // service + ' ' + rid
  std::unordered_map<std::string, std::size_t> m_per_service;        // pending calls per caller
  std::uint64_t m_routed = 0;
};

}  // namespace fleetsign::broker
