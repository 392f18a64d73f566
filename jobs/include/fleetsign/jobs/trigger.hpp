// The trigger seam: "invoke a direct method on one device", the way IoT Hub's service API does,
// over one of two transports (broker_trigger.hpp: fleetsign's own broker; iothub_trigger.hpp:
// Azure IoT Hub's REST API). Rollover and revocation jobs, the CLI and the benchmark use only this
// contract.
//
// Outcomes follow IoT Hub. A call ends with exactly one completion carrying either
//   - a MethodResult {status, payload}: the device's own answer (its status, usually 200 or 501),
//     or the service's verdict in IoT Hub's shape: 404 (device not online once the connect timeout
//     passed), 504 (no answer by the response timeout; also the caller's own deadline), 429
//     (throttled, and the backend gave up retrying), 400/401/… as the service answers; or
//   - a Failure: the request was refused before it was sent (kInvalidArgument, kInputTooLarge), or
//     the transport failed (kServiceUnavailable: broker or hub unreachable, connection lost, an
//     answer that breaks the protocol).
// A per-device outcome is a value, never an exception: a batch of calls is never cancelled by one.
//
// Thread safety: a Trigger is thread-safe; any thread may call invoke. Completions run on a
// backend thread (or, for a request refused before sending, on the caller's thread inside
// invoke); they must be quick and must not call invoke (use a CompletionQueue to drive calls from
// your own thread). A completion that throws has its exception swallowed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/result.hpp"

namespace fleetsign::jobs {

// IoT Hub's limits, which both backends apply.
inline constexpr std::size_t kMaxMethodPayload = 128 * 1024;  // request and answer payloads
inline constexpr std::size_t kMaxMethodNameLength = 128;
inline constexpr int kMaxTimeoutSeconds = 300;

// Statuses with a meaning of their own (IoT Hub's), and the errorCode IoT Hub puts in the body.
inline constexpr int kStatusDeviceOffline = 404;  // errorCode 404103
inline constexpr int kStatusTimeout = 504;        // errorCode 504101
inline constexpr int kStatusNotImplemented = 501;
inline constexpr int kStatusThrottled = 429;

struct MethodRequest {
  engine::DeviceId device;       // passed the policy's check: safe as a topic level or URL part
  std::string method;            // [A-Za-z0-9_.-]{1,128}
  std::string payload = "null";  // JSON text, at most kMaxMethodPayload bytes
  int response_timeout_s = 30;   // 1..300 (IoT Hub itself accepts 5..300)
  int connect_timeout_s = 0;     // 0..300: how long a call waits for an offline device
};

struct MethodResult {
  int status = 0;       // the device's status, or the service's (404, 504, 429, …)
  std::string payload;  // JSON text: the device's answer, or the service's error object
};

using MethodOutcome = Result<MethodResult>;
using CallId = std::uint64_t;  // unique per Trigger, in invoke order, starting at 1
using Completion = std::function<void(CallId, MethodOutcome)>;

// The checks both backends make before sending: the method name, the payload (valid JSON within
// the limit), the timeouts. nullopt when the request may be sent; else kInvalidArgument or
// kInputTooLarge naming the field.
std::optional<Failure> check_request(const MethodRequest& request);

// IoT Hub's error body for a verdict the caller makes itself (own deadline): {"errorCode":…,
// "message":…} as JSON text.
std::string service_error_payload(int error_code, std::string_view message);

class Trigger {
 public:
  virtual ~Trigger() = default;
  Trigger() = default;
  Trigger(const Trigger&) = delete;  // owns connections and threads
  Trigger& operator=(const Trigger&) = delete;

  // Starts one call and returns at once with its id, except for back-pressure: while the
  // backend's max-in-flight calls are outstanding, invoke blocks until one completes. `done` is
  // called exactly once, also when the Trigger is destroyed first (kServiceUnavailable), and
  // possibly before invoke returns.
  virtual CallId invoke(MethodRequest request, Completion done) = 0;
  // Blocks until no call is outstanding.
  virtual void wait_idle() = 0;
  virtual std::size_t in_flight() const = 0;
  virtual std::string_view backend_name() const = 0;  // "broker" | "iothub"
};

// Results as they come, for a thread that drives many calls: pass sink() as the completion, then
// pop(). Thread-safe. The queue must outlive every call given its sink (wait_idle first).
class CompletionQueue final {
 public:
  struct Item {
    CallId id;
    MethodOutcome outcome;
  };
  Completion sink();
  // The next completed call, or nullopt when none arrives within `timeout`.
  std::optional<Item> pop(std::chrono::milliseconds timeout);
  std::size_t size() const;

 private:
  mutable std::mutex m_mutex;
  std::condition_variable m_ready;
  std::deque<Item> m_items;
};

// One call, waited for: invoke + wait for its completion.
MethodOutcome invoke_and_wait(Trigger& trigger, MethodRequest request);

}  // namespace fleetsign::jobs
