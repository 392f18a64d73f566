// What the HTTP service's files share (http_service.cpp: server, callers, dispatch, CLI
// children; http_own.cpp: the routes it answers itself). Private to cli/.
#pragma once

#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/URI.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/services.hpp"
#include "http_api.hpp"
#include "http_guard.hpp"
#include "http_service.hpp"

namespace fleetsign::cli {

// Who called: the TLS client certificate (checked by the handshake against every CA of the
// registry) and the operator it belongs to, if any.
struct Caller {
  bool has_cert = false;
  std::string cert_sha256;
  engine::Der cert_der;
  std::optional<engine::OperatorRecord> op;
  std::string name() const {
    return op ? op->name : has_cert ? "cert:" + cert_sha256 : "anonymous";
  }
};

struct Request {
  Poco::Net::HTTPServerRequest& http;
  Poco::Net::HTTPServerResponse& resp;
  const ApiRoute& route;
  std::vector<std::string> values;  // the path's {segments}
  const Caller& caller;
};

struct HttpService::Impl {
  explicit Impl(HttpOptions o);

  HttpOptions opt;
  Poco::Net::Context::Ptr tls;
  std::int64_t trust_mark = -1;   // the registry's change mark when the trust was last read
  std::set<std::string> trusted;  // the CAs added to the TLS store by refresh_trust
  std::unique_ptr<ConnectionGuard> guard;  // before the server: it outlives the connections
  std::unique_ptr<Poco::Net::TCPServer> server;

  // The registry, read (and audited) under the mutex.
  template <typename F>
  auto with_stores(F&& f) {
    std::lock_guard lock(m_reg_mutex);
    return f(m_services->stores());
  }
  engine::Services& services_locked() { return *m_services; }  // with m_reg_mutex held
  std::mutex& registry_mutex() { return m_reg_mutex; }

  // A second registry connection for the reads that scan (metrics, the event stream's jobs), so
  // that a scan never holds up another request's identification; behind its own mutex.
  template <typename F>
  auto with_reports(F&& f) {
    std::lock_guard lock(m_report_mutex);
    if (!m_reports) m_reports = open_report_registry();
    return f(*m_reports);
  }

  // The event stream's payload (the newest jobs), computed at most once a second for all streams
  // (http_dashboard.cpp).
  std::string jobs_snapshot();
  std::mutex snapshot_mutex;
  std::string snapshot;
  std::chrono::steady_clock::time_point snapshot_at{};
  std::map<std::string, std::vector<std::pair<std::string, std::int64_t>>> snapshot_counts;

  // /metrics' scans of the registry (certificates issued, expiry buckets), kept for 5 s.
  std::mutex metrics_mutex;
  std::string metrics_scans;
  std::chrono::steady_clock::time_point metrics_at{};

  // Idempotency keys being answered now.
  std::mutex idem_mutex;
  std::set<std::string> idem_in_flight;

  // Authenticators for /api/v1/auth/check, each with a registry connection of its own (neither is
  // thread-safe), rebuilt when the registry's change mark moves.
  struct AuthSlot {
    std::unique_ptr<engine::Registry> registry;
    std::unique_ptr<engine::Authenticator> auth;
    std::int64_t mark = -1;
  };
  std::unique_ptr<AuthSlot> take_auth();
  void give_back(std::unique_ptr<AuthSlot> slot);

  std::atomic<std::uint64_t> answered[6] = {};  // by status class: [2] = 2xx, …
  std::atomic<std::uint64_t> commands_run{0};
  std::atomic<std::uint64_t> command_ms_total{0};
  std::atomic<std::int64_t> token_failed_at{0};  // a child's token error (exit 4): not ready
  std::atomic<bool> stopping{false};             // the service is stopping: streams end
  std::atomic<int> event_streams{0};             // /api/v1/events streams open now

 private:
  std::mutex m_reg_mutex;
  std::unique_ptr<engine::Services> m_services;
  std::mutex m_auth_mutex;
  std::vector<std::unique_ptr<AuthSlot>> m_auth_free;
  std::unique_ptr<engine::Registry> open_report_registry();
  std::mutex m_report_mutex;
  std::unique_ptr<engine::Registry> m_reports;
};

// Idempotency (POSTs with an Idempotency-Key header, http_params.cpp): the first definite
// answer is kept in DATA/idempotency and replayed for the same key and request; the key with
// another request is refused (400), and a second copy while the first runs gets 409.
class Idempotency {
 public:
  // kAlreadyExists while a request with this key (of this caller) is being answered.
  Idempotency(HttpService::Impl& impl, const Caller& caller, const std::string& key,
              const std::string& request_hash);
  ~Idempotency();
  Idempotency(const Idempotency&) = delete;
  Idempotency& operator=(const Idempotency&) = delete;

  // The kept answer, if any: {status, body}. kInvalidArgument when the key was used for another
  // request.
  std::optional<std::pair<int, std::string>> replay() const;
  void keep(int status, const std::string& body) const;

 private:
  HttpService::Impl& m_impl;
  std::string m_request, m_id;
  std::filesystem::path m_file;
};

// Responses.
void send_json(Poco::Net::HTTPServerResponse& resp, int status, const std::string& body);
void send_error(Poco::Net::HTTPServerResponse& resp, int status, const std::string& code,
                const std::string& message);
void send_bytes(Poco::Net::HTTPServerResponse& resp, int status, const std::string& type,
                const std::string& body);
// The HTTP status for one of the CLI's error codes ("not_found" → 404).
int http_status_for(const std::string& code);

// The service's own routes (http_own.cpp). Returns false when `r.route` is not one of them.
bool answer_own(HttpService::Impl& impl, Request& r);

// An answer to send: JSON unless said otherwise.
struct Answer {
  int status = 200;
  std::string body;
};
Answer error_answer(int status, const std::string& code, const std::string& message);

// The dashboard (http_dashboard.cpp): its page and assets, Chart.js from Debian's libjs-chart.js,
// and the jobs' Server-Sent Events stream. Returns false when `r.route` is not one of them.
bool answer_dashboard(HttpService::Impl& impl, Request& r);

// EST (RFC 7030, http_est.cpp): cacerts, simpleenroll, simplereenroll, with or without a label.
void answer_est(HttpService::Impl& impl, Request& r);

// Runs the route's CLI command for the caller: `args` are the command's arguments after its
// words (positional values and options, validated).
Answer run_command(HttpService::Impl& impl, const Request& r, const std::vector<std::string>& args);

// The route's command arguments: the path's values, then the parameters from the query string
// (GET, uploads) or a JSON object body, each checked against the route's table entry.
std::vector<std::string> command_args(Request& r, const Poco::URI& uri,
                                      const std::string& json_body);

// The request body, at most `limit` bytes (kInputTooLarge naming the limit).
std::string read_body(Poco::Net::HTTPServerRequest& req, std::size_t limit);
// Reads the request body to `file` (created 0600), at most `limit` bytes, and returns its SHA-256
// (upper-case hex): kInputTooLarge naming the limit, kIo naming the file on a write failure; the
// file is removed on every failure (a client that goes away included).
std::string save_body(Poco::Net::HTTPServerRequest& req, const std::filesystem::path& file,
                      std::uint64_t limit);

// Marks `what` as being answered for the guard's life: kAlreadyExists (409) while another request
// holds it. Nothing else waits.
class InFlight {
 public:
  InFlight(HttpService::Impl& impl, std::string what);
  ~InFlight();
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  HttpService::Impl& m_impl;
  std::string m_what;
};
// A safe single path segment for the service's own files ([A-Za-z0-9._-], not "." or "..").
bool is_safe_name(const std::string& s);
// Upper-case hex SHA-256 of `text`.
std::string sha256_hex(const std::string& text);

}  // namespace fleetsign::cli
