// The IoT Hub backend: a queue, worker threads each holding one keep-alive HTTPS session, and a
// cached SAS token. One call = one POST (more while the hub answers 429).
#include "fleetsign/jobs/iothub_trigger.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/HTTPSClientSession.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/NetSSL.h>
#include <Poco/Net/RejectCertificateHandler.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <sys/socket.h>

#include <algorithm>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/json_value.hpp"

namespace fleetsign::jobs {

namespace {

using SteadyClock = std::chrono::steady_clock;

// A 200's envelope around a payload of at most kMaxMethodPayload; error bodies are small.
constexpr std::size_t kMaxResponseBody = kMaxMethodPayload + 16 * 1024;

struct HttpAnswer {
  int status = 0;
  std::string body;
  std::chrono::seconds retry_after{0};
};

Poco::Timespan span(std::chrono::milliseconds ms) {
  return Poco::Timespan(static_cast<Poco::Timespan::TimeDiff>(ms.count()) * 1000);
}

// Reads at most `limit` bytes; nullopt when the body holds more.
std::optional<std::string> read_body(std::istream& in, std::size_t limit) {
  std::string body(limit + 1, '\0');
  in.read(body.data(), static_cast<std::streamsize>(body.size()));
  const auto got = static_cast<std::size_t>(in.gcount());
  if (got > limit) {
    return std::nullopt;
  }
  body.resize(got);
  return body;
}

std::chrono::seconds retry_after(const Poco::Net::HTTPResponse& response) {
  const std::string value = response.get("Retry-After", "");
  if (value.empty() || value.size() > 6 ||
      !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::chrono::seconds(0);  // an HTTP date is not worth trusting a clock over
  }
  return std::chrono::seconds(std::stoi(value));
}

std::string request_body(const MethodRequest& request) {
  Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("methodName", request.method);
  body.set("payload", parse_json_value(request.payload));  // checked by check_request
  body.set("responseTimeoutInSeconds", request.response_timeout_s);
  body.set("connectTimeoutInSeconds", request.connect_timeout_s);
  std::ostringstream out;
  body.stringify(out);
  return out.str();
}

// A 200 carries {"status": N, "payload": …}; anything else is the hub's verdict as it stands.
MethodOutcome to_outcome(const HttpAnswer& answer, const std::string& device) {
  if (answer.status != 200) {
    return MethodResult{answer.status, answer.body};
  }
  try {
    Poco::JSON::Parser parser;
    const auto obj = parser.parse(answer.body).extract<Poco::JSON::Object::Ptr>();
    if (!obj->has("status") || !obj->get("status").isInteger()) {
      throw Poco::DataFormatException("no integer \"status\"");
    }
    const int status = obj->getValue<int>("status");
    std::ostringstream payload;
    Poco::JSON::Stringifier::condense(
        obj->has("payload") ? obj->get("payload") : Poco::Dynamic::Var(), payload);
    return MethodResult{status, payload.str()};
  } catch (const Poco::Exception& e) {
    return fail(ErrorCode::kServiceUnavailable, "IoT Hub's answer for device " + device +
                                                    " is not a method result: " + e.displayText());
  } catch (const std::exception& e) {  // Poco::Dynamic::Var's bad casts
    return fail(ErrorCode::kServiceUnavailable,
                "IoT Hub's answer for device " + device + " is not a method result: " + e.what());
  }
}

}  // namespace

struct IotHubTrigger::Impl {
  struct Job {
    CallId id;
    MethodRequest request;
    Completion done;
  };
  struct Worker {
    std::size_t index = 0;
    std::unique_ptr<Poco::Net::HTTPSClientSession> session;
  };
  // A worker's read in progress. Poco's receive timeout on a blocking TLS socket waits twice
  // over (SO_RCVTIMEO, then a poll), so the deadline is kept here: the watchdog shuts the socket
  // down when it passes, and the worker's read fails at once.
  struct Watch {
    bool armed = false;
    bool fired = false;
    int fd = -1;
    SteadyClock::time_point deadline;
  };

  IotHubTriggerOptions opt;
  engine::SystemClock system_clock;
  std::string host;  // without the port
  Poco::UInt16 port = 443;
  Poco::Net::Context::Ptr context;

  mutable std::mutex mutex;
  std::condition_variable work;    // a job queued, or stopping
  std::condition_variable slots;   // a call ended
  std::condition_variable idle;    // nothing queued or running
  std::condition_variable wakeup;  // stopping (ends a backoff sleep)
  std::deque<Job> queue;
  std::size_t running = 0;
  CallId next_id = 1;
  bool stopping = false;
  Stats stats;
  std::string token;
  std::int64_t token_expiry = 0;
  std::vector<std::thread> workers;
  std::vector<Watch> watches;  // one per worker
  std::condition_variable watch_cv;
  std::thread watchdog;

  explicit Impl(IotHubTriggerOptions o) : opt(std::move(o)) {
    if (opt.clock == nullptr) {
      opt.clock = &system_clock;
    }
    const std::string& h = opt.connection.host();
    const std::size_t colon = h.find(':');
    host = h.substr(0, colon);
    if (colon != std::string::npos) {
      port = static_cast<Poco::UInt16>(std::stoi(h.substr(colon + 1)));
    }
    make_context();
  }

  void make_context() {
    static std::once_flag once;
    std::call_once(once, [] { Poco::Net::initializeSSL(); });
    Poco::Net::Context::Params params;
    params.verificationMode = Poco::Net::Context::VERIFY_STRICT;
    params.loadDefaultCAs = true;
    params.cipherList = "HIGH:!aNULL:!MD5";
    // The extra trust is read here, bounded like every input (OpenSSL would read a path whole,
    // /dev/zero for ever), and added to the context's store below.
    std::vector<engine::Der> extra_trust;
    if (opt.ca_file) {
      extra_trust = engine::read_certificates(*opt.ca_file, "IoT Hub CA file", kChainFileLimit);
    }
    try {
      context = new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, params);
    } catch (const Poco::Exception& e) {
      throw Error(ErrorCode::kIo, "TLS trust for IoT Hub: " + e.displayText());
    }
    X509_STORE* store = SSL_CTX_get_cert_store(context->sslContext());
    for (const engine::Der& der : extra_trust) {
      const unsigned char* p = der.data();
      X509* cert = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
      const bool added = cert != nullptr && X509_STORE_add_cert(store, cert) == 1;
      X509_free(cert);
      if (!added) {
        throw Error(ErrorCode::kIo, "IoT Hub CA file '" + opt.ca_file->string() +
                                        "': cannot be added to the trust");
      }
    }
    context->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
    context->setInvalidCertificateHandler(new Poco::Net::RejectCertificateHandler(false));
    // OpenSSL checks the hub's name in the handshake (Poco skips it for loopback addresses).
    X509_VERIFY_PARAM* param = SSL_CTX_get0_param(context->sslContext());
    X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
  }

  // The cached SAS token, renewed when less than a quarter of its lifetime is left.
  std::string current_token() {
    const std::int64_t now = opt.clock->now();
    const std::lock_guard lock(mutex);
    if (token.empty() || token_expiry - now < opt.token_lifetime_s / 4) {
      token_expiry = now + opt.token_lifetime_s;
      token = sas_token(opt.connection, token_expiry);
    }
    return token;
  }

  std::unique_ptr<Poco::Net::HTTPSClientSession> new_session() const {
    auto session = std::make_unique<Poco::Net::HTTPSClientSession>(host, port, context);
    session->setKeepAlive(true);
    session->setKeepAliveTimeout(Poco::Timespan(60, 0));
    return session;
  }

  void arm(std::size_t worker, int fd, SteadyClock::time_point deadline) {
    const std::lock_guard lock(mutex);
    watches[worker] = Watch{true, stopping, fd, deadline};
    if (stopping) {
      ::shutdown(fd, SHUT_RDWR);  // the watchdog is gone: cut this read short here
    }
    watch_cv.notify_one();
  }
  // True when the watchdog shut the socket down (the deadline passed, or the trigger closed).
  bool disarm(std::size_t worker) {
    const std::lock_guard lock(mutex);
    watches[worker].armed = false;
    return watches[worker].fired;
  }
  void run_watchdog() {
    std::unique_lock lock(mutex);
    while (true) {
      auto next = SteadyClock::time_point::max();
      const auto now = SteadyClock::now();
      for (Watch& w : watches) {
        if (w.armed && !w.fired && (stopping || w.deadline <= now)) {
          ::shutdown(w.fd, SHUT_RDWR);
          w.fired = true;
        } else if (w.armed && !w.fired) {
          next = std::min(next, w.deadline);
        }
      }
      if (stopping) {
        return;
      }
      if (next == SteadyClock::time_point::max()) {
        watch_cv.wait(lock);
      } else {
        watch_cv.wait_until(lock, next);
      }
    }
  }

  Result<HttpAnswer> exchange(Worker& worker, const Job& job, const std::string& body);
  struct Received {
    Result<HttpAnswer> answer;
    bool closed_silently = false;  // no answer at all: the caller may retry on a fresh connection
  };
  Received receive(Worker& worker, const Job& job, SteadyClock::time_point deadline);
  MethodOutcome call(Worker& worker, const Job& job);
  void run_worker(std::size_t index);
};

Result<HttpAnswer> IotHubTrigger::Impl::exchange(Worker& worker, const Job& job,
                                                 const std::string& body) {
  const MethodRequest& r = job.request;
  const auto wait = std::chrono::seconds(r.connect_timeout_s + r.response_timeout_s);
  const std::string path = "/twins/" + url_encode(r.device.str()) +
                           "/methods?api-version=" + std::string(kIotHubApiVersion);
  auto& session = worker.session;
  for (int attempt = 0;; ++attempt) {
    const auto deadline = SteadyClock::now() + wait + opt.deadline_grace;
    const bool reused = session != nullptr && session->connected();
    if (session == nullptr) {
      session = new_session();
    }
    // Poco's own read timeout is only a backstop (see Watch); connect and send use theirs.
    const auto backstop =
        std::chrono::duration_cast<std::chrono::milliseconds>(2 * (wait + opt.deadline_grace));
    session->setTimeout(span(opt.connect_timeout), span(opt.connect_timeout), span(backstop));
    Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_POST, path,
                                   Poco::Net::HTTPMessage::HTTP_1_1);
    request.setContentType("application/json; charset=utf-8");
    request.set("Accept", "application/json");
    request.set("Authorization", current_token());
    request.set("User-Agent", "fleetsign");
    request.setContentLength(static_cast<std::streamsize>(body.size()));
    request.setKeepAlive(true);
    {
      const std::lock_guard lock(mutex);
      ++stats.requests;
    }
    try {
      std::ostream& out = session->sendRequest(request);
      out.write(body.data(), static_cast<std::streamsize>(body.size()));
    } catch (const Poco::Exception& e) {
      session.reset();
      if (reused && attempt == 0) {
        continue;  // a stale keep-alive connection: once more on a fresh one
      }
      return fail(ErrorCode::kServiceUnavailable, "calling IoT Hub " + opt.connection.host() +
                                                      " for device " + r.device.str() + ": " +
                                                      e.displayText());
    }
    Received received = receive(worker, job, deadline);
    if (received.closed_silently && reused && attempt == 0) {
      continue;  // the hub closed an idle keep-alive connection: once more on a fresh one
    }
    return std::move(received.answer);
  }
}

// The answer, read under the watchdog.
IotHubTrigger::Impl::Received IotHubTrigger::Impl::receive(Worker& worker, const Job& job,
                                                           SteadyClock::time_point deadline) {
  const MethodRequest& r = job.request;
  const std::string where = "IoT Hub " + opt.connection.host();
  arm(worker.index, worker.session->socket().impl()->sockfd(), deadline);
  std::optional<Result<HttpAnswer>> result;
  bool silent = false;
  try {
    Poco::Net::HTTPResponse response;
    std::istream& in = worker.session->receiveResponse(response);
    HttpAnswer answer{static_cast<int>(response.getStatus()), {}, retry_after(response)};
    if (auto text = read_body(in, kMaxResponseBody)) {
      answer.body = std::move(*text);
      result = std::move(answer);
    } else {
      worker.session.reset();  // the rest of the body is unread: this connection is done
      result = fail(ErrorCode::kServiceUnavailable,
                    where + " answered for device " + r.device.str() + " with more than " +
                        std::to_string(kMaxResponseBody) + " bytes");
    }
  } catch (const Poco::Net::NoMessageException&) {
    worker.session.reset();
    silent = true;
    result = fail(ErrorCode::kServiceUnavailable,
                  where + " closed the connection without answering for device " + r.device.str());
  } catch (const Poco::Exception& e) {
    worker.session.reset();
    result =
        fail(ErrorCode::kServiceUnavailable, "reading the answer of " + where + " for device " +
                                                 r.device.str() + ": " + e.displayText());
  }
  if (!disarm(worker.index)) {
    return Received{std::move(*result), silent};
  }
  worker.session.reset();  // shut down by the watchdog: whatever was read is incomplete
  const std::lock_guard lock(mutex);
  if (stopping) {
    return Received{fail(ErrorCode::kServiceUnavailable,
                         "method call to device " + r.device.str() + ": the trigger was closed")};
  }
  const std::string message = "device " + r.device.str() + " did not answer in " +
                              std::to_string(r.connect_timeout_s + r.response_timeout_s) +
                              " s (no answer from " + where + ")";
  return Received{HttpAnswer{kStatusTimeout, service_error_payload(504101, message), {}}};
}

MethodOutcome IotHubTrigger::Impl::call(Worker& worker, const Job& job) {
  const std::string body = request_body(job.request);
  for (int attempt = 1;; ++attempt) {
    auto answer = exchange(worker, job, body);
    if (!answer) {
      return answer.error();
    }
    if (answer->status != kStatusThrottled || attempt >= opt.max_attempts) {
      return to_outcome(*answer, job.request.device.str());
    }
    // Exponential backoff, at least what the hub asked for, at most backoff_max.
    const auto exponential = opt.backoff_initial * (1LL << std::min(attempt - 1, 20));
    const auto delay = std::min<std::chrono::milliseconds>(
        opt.backoff_max, std::max<std::chrono::milliseconds>(exponential, answer->retry_after));
    std::unique_lock lock(mutex);
    ++stats.retries_429;
    if (wakeup.wait_for(lock, delay, [this] { return stopping; })) {
      return fail(ErrorCode::kServiceUnavailable,
                  "method call to device " + job.request.device.str() +
                      ": the trigger closed while IoT Hub was throttling");
    }
  }
}

void IotHubTrigger::Impl::run_worker(std::size_t index) {
  Worker worker{index, nullptr};
  std::unique_lock lock(mutex);
  while (true) {
    work.wait(lock, [this] { return stopping || !queue.empty(); });
    if (stopping) {
      return;
    }
    Job job = std::move(queue.front());
    queue.pop_front();
    ++running;
    lock.unlock();
    MethodOutcome outcome = call(worker, job);
    try {
      job.done(job.id, std::move(outcome));
    } catch (...) {  // see trigger.hpp: a completion's exception is swallowed
    }
    lock.lock();
    --running;
    slots.notify_one();
    if (queue.empty() && running == 0) {
      idle.notify_all();
    }
  }
}

IotHubTrigger::IotHubTrigger(IotHubTriggerOptions options)
    : m_impl(std::make_unique<Impl>(std::move(options))) {
  const std::size_t n = std::max<std::size_t>(1, m_impl->opt.workers);
  m_impl->watches.resize(n);
  m_impl->watchdog = std::thread([this] { m_impl->run_watchdog(); });
  for (std::size_t i = 0; i < n; ++i) {
    m_impl->workers.emplace_back([this, i] { m_impl->run_worker(i); });
  }
}

IotHubTrigger::~IotHubTrigger() {
  Impl& s = *m_impl;
  std::deque<Impl::Job> left;
  {
    const std::lock_guard lock(s.mutex);
    s.stopping = true;
    left.swap(s.queue);
  }
  s.work.notify_all();
  s.wakeup.notify_all();
  s.slots.notify_all();
  s.watch_cv.notify_all();  // cuts reads in progress short
  s.watchdog.join();
  for (auto& t : s.workers) {
    t.join();
  }
  for (auto& job : left) {
    try {
      job.done(job.id, fail(ErrorCode::kServiceUnavailable,
                            "method call to device " + job.request.device.str() +
                                ": the trigger was closed before it was sent"));
    } catch (...) {
    }
  }
}

CallId IotHubTrigger::invoke(MethodRequest request, Completion done) {
  Impl& s = *m_impl;
  std::unique_lock lock(s.mutex);
  const CallId id = s.next_id++;
  lock.unlock();
  if (auto refused = check_request(request)) {
    done(id, std::move(*refused));
    return id;
  }
  lock.lock();
  s.slots.wait(lock,
               [&s] { return s.stopping || s.queue.size() + s.running < s.opt.max_in_flight; });
  if (s.stopping) {
    lock.unlock();
    done(id, fail(ErrorCode::kServiceUnavailable,
                  "method call to device " + request.device.str() + ": the trigger is closing"));
    return id;
  }
  s.queue.push_back(Impl::Job{id, std::move(request), std::move(done)});
  lock.unlock();
  s.work.notify_one();
  return id;
}

void IotHubTrigger::wait_idle() {
  std::unique_lock lock(m_impl->mutex);
  m_impl->idle.wait(lock, [this] { return m_impl->queue.empty() && m_impl->running == 0; });
}

std::size_t IotHubTrigger::in_flight() const {
  const std::lock_guard lock(m_impl->mutex);
  return m_impl->queue.size() + m_impl->running;
}

IotHubTrigger::Stats IotHubTrigger::stats() const {
  const std::lock_guard lock(m_impl->mutex);
  return m_impl->stats;
}

}  // namespace fleetsign::jobs
