// The broker backend: a libmosquitto client with its network thread (mosquitto_loop_start), a
// deadline thread, and a table of pending calls keyed by rid. Completions run outside the lock.
#include "fleetsign/jobs/broker_trigger.hpp"

#include <mosquitto.h>
#include <sys/select.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"
#include "topics.hpp"

namespace fleetsign::jobs {

namespace {

using SteadyClock = std::chrono::steady_clock;

void init_library() {
  static std::once_flag once;
  std::call_once(once, [] { mosquitto_lib_init(); });
}

constexpr std::size_t kServiceKeyLimit = 64 * 1024;  // a PEM private key

// libmosquitto (OpenSSL) reads the TLS files itself, whole: only a regular file within `limit`
// is handed to it, so a device or a huge file there is refused naming it instead of being read.
void require_readable(const std::filesystem::path& file, const char* what, std::size_t limit) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) {
    throw Error(ErrorCode::kIo,
                std::string(what) + " '" + file.string() + "': not a readable file");
  }
  if (const auto size = std::filesystem::file_size(file, ec); !ec && size > limit) {
    throw Error(ErrorCode::kInputTooLarge, std::string(what) + " '" + file.string() +
                                               "': larger than the limit of " +
                                               std::to_string(limit) + " bytes");
  }
}

}  // namespace

struct BrokerTrigger::Impl {
  struct Pending {
    CallId id = 0;
    Completion done;
    SteadyClock::time_point deadline;
    std::string device;
    int waited_s = 0;
  };
  enum class State { kConnecting, kReady, kLost, kRefused };

  BrokerTriggerOptions opt;
  engine::CsprngSource default_random;
  std::string client_id;
  std::string where;  // "broker host:port", for messages
  mosquitto* mosq = nullptr;
  bool loop_started = false;

  mutable std::mutex mutex;
  std::condition_variable slots;     // a pending call ended, or stopping
  std::condition_variable idle;      // nothing pending or being delivered
  std::condition_variable timer_cv;  // a new earliest deadline, or stopping
  std::condition_variable state_cv;  // the connection state changed
  std::unordered_map<std::string, Pending> pending;
  std::set<std::pair<SteadyClock::time_point, std::string>> deadlines;
  std::size_t delivering = 0;
  CallId next_id = 1;
  State state = State::kConnecting;
  int subscribe_mid = -1;
  std::string last_error;
  Stats stats;
  bool stopping = false;
  std::thread timer;

  explicit Impl(BrokerTriggerOptions o) : opt(std::move(o)) {
    if (opt.random == nullptr) {
      opt.random = &default_random;
    }
    where = "broker " + opt.host + ":" + std::to_string(opt.port);
  }
  ~Impl() {
    if (mosq != nullptr) {
      if (loop_started) {
        mosquitto_disconnect(mosq);
        mosquitto_loop_stop(mosq, false);
      }
      mosquitto_destroy(mosq);
    }
  }

  std::string random_hex(std::size_t bytes) {
    std::vector<std::uint8_t> raw(bytes);
    opt.random->fill(raw);
    return to_hex(raw);
  }

  // Removes a pending call under the lock; the caller delivers it outside and then calls
  // `delivered()`. Frees a slot at once, so back-pressure eases as soon as an answer is in.
  std::optional<Pending> take_locked(const std::string& rid) {
    auto it = pending.find(rid);
    if (it == pending.end()) {
      return std::nullopt;
    }
    Pending p = std::move(it->second);
    pending.erase(it);
    deadlines.erase({p.deadline, rid});
    ++delivering;
    slots.notify_one();
    return p;
  }

  void deliver(Pending& p, MethodOutcome outcome) {
    try {
      p.done(p.id, std::move(outcome));
    } catch (...) {  // a completion must not take the network thread down (trigger.hpp)
    }
    const std::lock_guard lock(mutex);
    --delivering;
    if (pending.empty() && delivering == 0) {
      idle.notify_all();
    }
  }

  // Fails every pending call (connection lost, or closing).
  void fail_all(const std::string& why) {
    std::vector<Pending> taken;
    {
      const std::lock_guard lock(mutex);
      std::vector<std::string> rids;
      rids.reserve(pending.size());
      for (const auto& [rid, p] : pending) {
        rids.push_back(rid);
      }
      for (const auto& rid : rids) {
        taken.push_back(*take_locked(rid));
      }
      slots.notify_all();
    }
    for (auto& p : taken) {
      deliver(p, fail(ErrorCode::kServiceUnavailable,
                      "method call to device " + p.device + ": " + why));
    }
  }

  void run_timer() {
    std::unique_lock lock(mutex);
    while (!stopping) {
      if (deadlines.empty()) {
        timer_cv.wait(lock);
        continue;
      }
      const auto [when, rid] = *deadlines.begin();
      if (SteadyClock::now() < when) {
        timer_cv.wait_until(lock, when);
        continue;
      }
      std::optional<Pending> p = take_locked(rid);
      ++stats.own_deadlines;
      lock.unlock();
      const std::string message = "device " + p->device + " did not answer in " +
                                  std::to_string(p->waited_s) + " s (no answer from the " + where +
                                  ")";
      deliver(*p, MethodResult{kStatusTimeout, service_error_payload(504101, message)});
      lock.lock();
    }
  }

  void on_message(const mosquitto_message& msg) {
    const auto answer = parse_answer_topic(msg.topic != nullptr ? msg.topic : "");
    std::optional<Pending> p;
    {
      const std::lock_guard lock(mutex);
      if (answer) {
        p = take_locked(answer->rid);
      }
      if (!p) {
        ++stats.answers_dropped;
        return;
      }
      ++stats.answers_matched;
    }
    const auto size = static_cast<std::size_t>(msg.payloadlen > 0 ? msg.payloadlen : 0);
    if (size > kMaxMethodPayload) {
      deliver(*p, fail(ErrorCode::kServiceUnavailable,
                       "answer of device " + p->device + " is " + std::to_string(size) +
                           " bytes; the limit is " + std::to_string(kMaxMethodPayload)));
      return;
    }
    std::string payload(static_cast<const char*>(msg.payload), size);
    deliver(*p, MethodResult{answer->status, std::move(payload)});
  }

  void on_connect(int rc) {
    if (rc != 0) {
      const std::lock_guard lock(mutex);
      state = State::kRefused;
      last_error = std::string("CONNACK: ") + mosquitto_connack_string(rc);
      state_cv.notify_all();
      return;
    }
    int mid = 0;
    const int sub = mosquitto_subscribe(mosq, &mid, std::string(kAnswerFilter).c_str(), 0);
    const std::lock_guard lock(mutex);
    if (sub != MOSQ_ERR_SUCCESS) {
      state = State::kRefused;
      last_error = std::string("subscribing: ") + mosquitto_strerror(sub);
      state_cv.notify_all();
    } else {
      subscribe_mid = mid;
    }
  }

  void on_subscribe(int mid, int count, const int* granted) {
    const std::lock_guard lock(mutex);
    if (mid != subscribe_mid) {
      return;
    }
    if (count < 1 || granted[0] > 2) {
      state = State::kRefused;
      last_error = "the broker refused the subscription to " + std::string(kAnswerFilter);
    } else {
      state = State::kReady;
    }
    state_cv.notify_all();
  }

  void on_disconnect(int rc) {
    {
      const std::lock_guard lock(mutex);
      if (stopping) {
        return;
      }
      if (state == State::kConnecting) {
        last_error = last_error.empty() ? "disconnected before CONNACK" : last_error;
        state = State::kRefused;
      } else {
        state = State::kLost;
      }
      state_cv.notify_all();
    }
    fail_all("connection to the " + where + " lost (" + mosquitto_strerror(rc) + ")");
  }

  void on_log(int level, const char* text) {
    if ((level & MOSQ_LOG_ERR) != 0 && text != nullptr) {
      const std::lock_guard lock(mutex);
      last_error = text;
      state_cv.notify_all();  // a TLS failure shows here first (no disconnect callback)
    }
  }

  void connect();
};

void BrokerTrigger::Impl::connect() {
  init_library();
  require_readable(opt.ca_file, "broker CA file", kChainFileLimit);
  require_readable(opt.cert_file, "service certificate", kCertFileLimit);
  require_readable(opt.key_file, "service key", kServiceKeyLimit);
  client_id = std::string(kServiceClientPrefix) + random_hex(8);
  mosq = mosquitto_new(client_id.c_str(), true, this);
  if (mosq == nullptr) {
    throw Error(ErrorCode::kInternal, "libmosquitto: cannot create a client");
  }
  const int tls = mosquitto_tls_set(mosq, opt.ca_file.c_str(), nullptr, opt.cert_file.c_str(),
                                    opt.key_file.c_str(), nullptr);
  if (tls != MOSQ_ERR_SUCCESS) {
    throw Error(ErrorCode::kIo, "TLS files for the " + where + ": " + mosquitto_strerror(tls));
  }
  mosquitto_connect_callback_set(
      mosq, [](mosquitto*, void* self, int rc) { static_cast<Impl*>(self)->on_connect(rc); });
  mosquitto_subscribe_callback_set(mosq, [](mosquitto*, void* self, int mid, int n, const int* g) {
    static_cast<Impl*>(self)->on_subscribe(mid, n, g);
  });
  mosquitto_message_callback_set(mosq, [](mosquitto*, void* self, const mosquitto_message* m) {
    static_cast<Impl*>(self)->on_message(*m);
  });
  mosquitto_disconnect_callback_set(
      mosq, [](mosquitto*, void* self, int rc) { static_cast<Impl*>(self)->on_disconnect(rc); });
  mosquitto_log_callback_set(mosq, [](mosquitto*, void* self, int level, const char* text) {
    static_cast<Impl*>(self)->on_log(level, text);
  });
  mosquitto_reconnect_delay_set(mosq, 1, 30, true);
  // Blocking connect: TCP and the TLS handshake finish (or fail) here; CONNACK comes in the loop.
  const int rc = mosquitto_connect(mosq, opt.host.c_str(), opt.port, opt.keepalive_s);
  if (rc != MOSQ_ERR_SUCCESS) {
    const std::string cause = rc == MOSQ_ERR_ERRNO ? std::strerror(errno)
                              : last_error.empty()
                                  ? mosquitto_strerror(rc)
                                  : std::string(mosquitto_strerror(rc)) + ": " + last_error;
    throw Error(ErrorCode::kServiceUnavailable, "cannot connect to the " + where + ": " + cause);
  }
  // libmosquitto's network thread waits with select(2): a descriptor at or past FD_SETSIZE would
  // be written outside its fd_set. Refuse it instead (a process holding thousands of sockets, e.g.
  // simulated devices, must call from another process).
  if (const int fd = mosquitto_socket(mosq); fd >= FD_SETSIZE) {
    throw Error(ErrorCode::kServiceUnavailable,
                "cannot use the " + where + " from this process: its connection got descriptor " +
                    std::to_string(fd) + ", past what libmosquitto's select(2) loop can watch (" +
                    std::to_string(FD_SETSIZE) + ")");
  }
  if (const int loop = mosquitto_loop_start(mosq); loop != MOSQ_ERR_SUCCESS) {
    throw Error(ErrorCode::kInternal,
                std::string("libmosquitto loop: ") + mosquitto_strerror(loop));
  }
  loop_started = true;
  std::unique_lock lock(mutex);
  state_cv.wait_for(lock, opt.connect_wait,
                    [this] { return state != State::kConnecting || !last_error.empty(); });
  if (state != State::kReady) {
    const std::string cause =
        !last_error.empty()
            ? last_error
            : "no CONNACK and SUBACK within " + std::to_string(opt.connect_wait.count()) + " ms";
    stopping = true;  // the disconnect that follows is ours
    throw Error(ErrorCode::kServiceUnavailable, "cannot connect to the " + where + ": " + cause);
  }
  lock.unlock();
  timer = std::thread([this] { run_timer(); });
}

BrokerTrigger::BrokerTrigger(BrokerTriggerOptions options)
    : m_impl(std::make_unique<Impl>(std::move(options))) {
  m_impl->connect();
}

BrokerTrigger::~BrokerTrigger() {
  Impl& s = *m_impl;
  {
    const std::lock_guard lock(s.mutex);
    s.stopping = true;
  }
  s.timer_cv.notify_all();
  s.slots.notify_all();
  if (s.timer.joinable()) {
    s.timer.join();
  }
  mosquitto_disconnect(s.mosq);
  mosquitto_loop_stop(s.mosq, false);
  s.loop_started = false;
  s.fail_all("the trigger was closed before an answer came");
}

CallId BrokerTrigger::invoke(MethodRequest request, Completion done) {
  Impl& s = *m_impl;
  Impl::Pending p{0,
                  std::move(done),
                  {},
                  request.device.str(),
                  request.connect_timeout_s + request.response_timeout_s};
  {
    const std::lock_guard lock(s.mutex);
    p.id = s.next_id++;
  }
  const CallId id = p.id;
  if (auto refused = check_request(request)) {
    p.done(id, std::move(*refused));
    return id;
  }
  const std::string rid = s.random_hex(16);
  const std::string topic = request_topic(request, rid);
  std::unique_lock lock(s.mutex);
  s.slots.wait(lock, [&s] { return s.stopping || s.pending.size() < s.opt.max_in_flight; });
  if (s.stopping || s.state != Impl::State::kReady || s.pending.count(rid) != 0) {
    const std::string why =
        s.stopping ? "the trigger is closing" : "not connected to the " + s.where;
    lock.unlock();
    p.done(id,
           fail(ErrorCode::kServiceUnavailable, "method call to device " + p.device + ": " + why));
    return id;
  }
  p.deadline = SteadyClock::now() + std::chrono::seconds(p.waited_s) + s.opt.deadline_grace;
  const bool earliest = s.deadlines.empty() || p.deadline < s.deadlines.begin()->first;
  s.deadlines.insert({p.deadline, rid});
  s.pending.emplace(rid, std::move(p));
  ++s.stats.published;
  lock.unlock();
  if (earliest) {
    s.timer_cv.notify_one();
  }
  const int rc =
      mosquitto_publish(s.mosq, nullptr, topic.c_str(), static_cast<int>(request.payload.size()),
                        request.payload.data(), 0, false);
  if (rc != MOSQ_ERR_SUCCESS) {
    lock.lock();
    std::optional<Impl::Pending> taken = s.take_locked(rid);
    lock.unlock();
    if (taken) {
      s.deliver(*taken, fail(ErrorCode::kServiceUnavailable,
                             "publishing the call to device " + taken->device + " to the " +
                                 s.where + ": " + mosquitto_strerror(rc)));
    }
  }
  return id;
}

void BrokerTrigger::wait_idle() {
  std::unique_lock lock(m_impl->mutex);
  m_impl->idle.wait(lock, [this] { return m_impl->pending.empty() && m_impl->delivering == 0; });
}

std::size_t BrokerTrigger::in_flight() const {
  const std::lock_guard lock(m_impl->mutex);
  return m_impl->pending.size();
}

BrokerTrigger::Stats BrokerTrigger::stats() const {
  const std::lock_guard lock(m_impl->mutex);
  return m_impl->stats;
}

const std::string& BrokerTrigger::client_id() const { return m_impl->client_id; }

}  // namespace fleetsign::jobs
