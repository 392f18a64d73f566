// The Azure IoT Hub backend of the trigger seam: IoT Hub's service REST API,
//   POST https://{hub}/twins/{deviceId}/methods?api-version=2021-04-12
//   {"methodName":…, "payload":…, "responseTimeoutInSeconds":…, "connectTimeoutInSeconds":…}
// authorised by a SAS token made from a service connection string. A 200 carries the device's
// {"status":…, "payload":…}; any other HTTP status is the hub's verdict, passed on as the result's
// status with the hub's body (404 offline, 504 timeout, 401 refused, …). 429 is retried with
// exponential backoff (at least the Retry-After the hub sends, at most backoff_max) up to
// max_attempts, then reported as 429.
//
// A small pool of worker threads, each with its own keep-alive HTTPS connection (reused from call
// to call). Trust: the system's CA store, plus ca_file when given. The hub's host name is checked
// against its certificate by OpenSSL during the handshake. Response bodies are read up to a bound.
//
// Thread safety: as Trigger. ServiceConnectionString and sas_token are pure values/functions.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/jobs/trigger.hpp"

namespace fleetsign::jobs {

inline constexpr std::string_view kIotHubApiVersion = "2021-04-12";

// `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` (any order, each exactly once, nothing
// else). HostName is a DNS name, optionally with `:port` (a local endpoint); the key is base64.
// The key is kept in memory that is wiped when the value dies, and never appears in a message.
class ServiceConnectionString final {
 public:
  // Error(kInvalidArgument) naming the part that is wrong ("service connection string:
  // SharedAccessKey is not base64"), never quoting the key. A device connection string (with
  // DeviceId) is refused with a sentence saying so.
  static ServiceConnectionString parse(std::string_view text);

  ServiceConnectionString(const ServiceConnectionString& other) = default;
  ServiceConnectionString(ServiceConnectionString&& other) noexcept = default;
  // No assignment: it would free the old key without wiping it.
  ServiceConnectionString& operator=(const ServiceConnectionString&) = delete;
  ~ServiceConnectionString();  // wipes the key

  const std::string& host() const noexcept { return m_host; }          // as written (host[:port])
  const std::string& key_name() const noexcept { return m_key_name; }  // SharedAccessKeyName
  const std::vector<std::uint8_t>& key() const noexcept { return m_key; }  // base64-decoded

 private:
  ServiceConnectionString() = default;
  std::string m_host;
  std::string m_key_name;
  std::vector<std::uint8_t> m_key;
};

// Percent-encoding as Azure's SDKs do it (encodeURIComponent / quote_plus): letters, digits and
// "-_.~" stay, every other byte becomes %XX with upper-case hex.
std::string url_encode(std::string_view text);

// `SharedAccessSignature sr={url_encode(lower-case host)}&sig={url_encode(base64(HMAC-SHA256(key,
// sr + "\n" + expiry)))}&se={expiry}&skn={key name}`: IoT Hub's service token.
std::string sas_token(const ServiceConnectionString& connection, std::int64_t expiry);

struct IotHubTriggerOptions {
  explicit IotHubTriggerOptions(ServiceConnectionString c) : connection(std::move(c)) {}
  ServiceConnectionString connection;
  std::optional<std::filesystem::path> ca_file;  // trusted besides the system store
  std::size_t workers = 4;                       // HTTPS connections, one per worker
  std::size_t max_in_flight = 64;                // queued + running, before invoke blocks
  int max_attempts = 5;                          // tries per call while the hub answers 429
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{30000};
  std::chrono::milliseconds deadline_grace{5000};  // added to ct + rt for the read timeout
  std::chrono::milliseconds connect_timeout{10000};
  std::int64_t token_lifetime_s = 3600;
  const engine::Clock* clock = nullptr;  // the SAS expiry; default: the system clock
};

class IotHubTrigger final : public Trigger {
 public:
  struct Stats {
    std::uint64_t requests = 0;     // HTTP requests sent (retries included)
    std::uint64_t retries_429 = 0;  // of those, retries after a 429
  };

  // Starts the workers; connects lazily. Error(kIo) when ca_file cannot be read.
  explicit IotHubTrigger(IotHubTriggerOptions options);
  // Stops the workers: calls still queued complete with kServiceUnavailable; a call a worker is
  // running finishes (at most its read timeout).
  ~IotHubTrigger() override;

  CallId invoke(MethodRequest request, Completion done) override;
  void wait_idle() override;
  std::size_t in_flight() const override;
  std::string_view backend_name() const override { return "iothub"; }
  Stats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> m_impl;
};

}  // namespace fleetsign::jobs
