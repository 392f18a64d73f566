// The broker backend of the trigger seam: one libmosquitto client, connected as a fleetsign
// service client (see broker/PROTOCOL.md, "Direct methods").
//
//   TLS with the service certificate and key, trusting the broker's CA; client id
//   `fleetsign-service-{16 random hex}`; subscribes `$fleetsign/methods/res/#`; each call publishes
//   `$fleetsign/methods/POST/{deviceId}/{method}/?$rid={rid}&$ct={connect s}&$rt={response s}`
//   with a fresh 128-bit rid (32 lower-case hex from the random source) and waits for
//   `$fleetsign/methods/res/{status}/?$rid={rid}`.
//
// An answer counts only for a pending rid, once; anything else on the answer topics is dropped
// and counted. The caller's own deadline (connect + response timeout + grace) ends a call with
// 504 when the broker stays silent. Losing the connection fails the calls in flight with
// kServiceUnavailable; libmosquitto reconnects in the background and later calls work again.
//
// Thread safety: as Trigger. Errors: the constructor throws Error(kServiceUnavailable) naming the
// broker when it cannot connect (TCP, TLS, CONNACK refused, no SUBACK within connect_wait) and
// Error(kIo) when a certificate or key file cannot be read.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/jobs/trigger.hpp"

namespace fleetsign::jobs {

struct BrokerTriggerOptions {
  std::string host = "localhost";  // must match the broker certificate's names
  int port = 8883;
  std::filesystem::path ca_file;    // trusted for the broker's certificate (HOME/broker/ca.pem)
  std::filesystem::path cert_file;  // the service client certificate (HOME/broker/service.crt)
  std::filesystem::path key_file;   // its key (HOME/broker/service.key)
  std::size_t max_in_flight = 1000;
  std::chrono::milliseconds deadline_grace{2000};  // added to ct + rt for the caller's deadline
  std::chrono::milliseconds connect_wait{10000};   // CONNACK + SUBACK, in the constructor
  int keepalive_s = 60;
  engine::RandomSource* random = nullptr;  // rids and the client id; default: OpenSSL's CSPRNG
};

// The options for a home's broker: HOME/broker/broker.json (`port`, first of `hosts`) and the
// service client's files there. Errors: kNotFound naming the missing file, kInvalidArgument naming
// the bad field, kInputTooLarge / kIo from the bounded read.
BrokerTriggerOptions broker_options_for_home(const std::filesystem::path& home);

class BrokerTrigger final : public Trigger {
 public:
  struct Stats {
    std::uint64_t published = 0;
    std::uint64_t answers_matched = 0;
    std::uint64_t answers_dropped = 0;  // unknown or repeated rid, or a malformed answer topic
    std::uint64_t own_deadlines = 0;    // calls ended with 504 by this client's deadline
  };

  // Connects and subscribes before returning (see the header comment for errors).
  explicit BrokerTrigger(BrokerTriggerOptions options);
  // Disconnects; calls still in flight complete with kServiceUnavailable.
  ~BrokerTrigger() override;

  CallId invoke(MethodRequest request, Completion done) override;
  void wait_idle() override;
  std::size_t in_flight() const override;
  std::string_view backend_name() const override { return "broker"; }

  Stats stats() const;
  const std::string& client_id() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> m_impl;
};

}  // namespace fleetsign::jobs
