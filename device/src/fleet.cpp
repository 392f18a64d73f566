// DeviceFleet: the epoll loop that drives every client, the handshake cap, the timers (backoff,
// attempt deadlines, DPS polls) and the counters.
#include "fleetsign/device/fleet.hpp"

#include <mosquitto.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <mutex>
#include <numeric>
#include <queue>
#include <random>

#include "client.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::device {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

enum TimerKind : std::uint8_t { kRetry = 0, kDeadline = 1, kPoll = 2, kTimerKinds = 3 };

struct Timer {
  Clock::time_point when;
  std::uint32_t index;
  std::uint32_t gen;
  TimerKind kind;
  bool operator>(const Timer& o) const { return when > o.when; }
};

// The fleet's bookkeeping for one device.
struct Entry {
  std::unique_ptr<DeviceClient> client;
  bool offline = false, failing = false;
  int fd = -1;  // the socket as registered with epoll
  std::uint32_t events = 0;
  std::uint32_t gen[kTimerKinds] = {0, 0, 0};
  int attempts = 0;  // failed attempts since the last stable connection
  bool holds_slot = false, queued = false;
  Clock::time_point connected_at;
};

// Exactly round(fraction * n) of [0, n) chosen by `seed`.
std::vector<bool> choose(std::size_t n, double fraction, std::uint64_t seed) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const auto k = static_cast<std::size_t>(std::llround(std::clamp(fraction, 0.0, 1.0) * n));
  std::vector<bool> chosen(n, false);
  for (std::size_t i = 0; i < k; ++i) chosen[order[i]] = true;
  return chosen;
}

void ignore_sigpipe() {
  // A broker that closes a socket mid-write must not kill the process (libmosquitto writes
  // through OpenSSL's socket BIO, without MSG_NOSIGNAL).
  static std::once_flag once;
  std::call_once(once, [] {
    ::signal(SIGPIPE, SIG_IGN);
    mosquitto_lib_init();
  });
}

}  // namespace

class DeviceFleet::Impl {
 public:
  explicit Impl(FleetOptions options)
      : m_options(std::move(options)),
        m_tls(m_options.trust_file),
        m_shared{m_options, m_tls, m_methods, m_counters},
        m_rng(std::random_device{}()) {
    ignore_sigpipe();
    add_builtin_methods(m_methods);
    add_rotation_methods(m_methods, m_options.reuse_key);
    if (m_options.broker_host.empty() || m_options.broker_port < 1 ||
        m_options.broker_port > 65535) {
      throw Error(ErrorCode::kInvalidArgument, "broker: needs HOST:PORT with a port in 1..65535");
    }
    if (m_options.max_handshakes < 1) {
      throw Error(ErrorCode::kInvalidArgument, "max_handshakes must be at least 1");
    }
    const std::size_t n = m_options.devices.size();
    const auto offline = choose(n, m_options.offline_fraction, m_options.seed);
    const auto failing = choose(n, m_options.fail_fraction, m_options.seed * 31 + 7);
    m_entries.resize(n);
    provision(offline, failing);
    m_options.devices.clear();  // the clients hold what they need; keys are wiped here
    m_epoll = ::epoll_create1(EPOLL_CLOEXEC);
    m_wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (m_epoll < 0 || m_wake < 0) {
      throw Error(ErrorCode::kIo, std::string("epoll/eventfd: ") + std::strerror(errno));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kWakeTag;
    ::epoll_ctl(m_epoll, EPOLL_CTL_ADD, m_wake, &ev);
  }

  ~Impl() {
    shutdown();
    if (m_epoll >= 0) ::close(m_epoll);
    if (m_wake >= 0) ::close(m_wake);
  }

  MethodRegistry& methods() { return m_methods; }

  void start() {
    raise_fd_limit();
    m_started = Clock::now();
    for (std::uint32_t i = 0; i < m_entries.size(); ++i) {
      if (!m_entries[i].offline) enqueue(i, false);
    }
  }

  bool run_until(const std::function<bool()>& done, Clock::time_point deadline) {
    std::vector<epoll_event> events(1024);
    while (!m_stop.load()) {
      if (done && done()) return true;
      const auto now = Clock::now();
      if (now >= deadline) return false;
      pump();
      auto wake = std::min({deadline, m_next_misc, now + milliseconds(100)});
      if (!m_timers.empty()) wake = std::min(wake, m_timers.top().when);
      const auto wait_ms = std::chrono::ceil<milliseconds>(wake - now).count();
      const int n = ::epoll_wait(m_epoll, events.data(), static_cast<int>(events.size()),
                                 static_cast<int>(std::max<std::int64_t>(wait_ms, 0)));
      for (int i = 0; i < n; ++i) handle(events[static_cast<std::size_t>(i)]);
      fire_timers(Clock::now());
      if (Clock::now() >= m_next_misc) misc();
      note_all_connected();
    }
    return false;
  }

  void stop() noexcept {
    m_stop.store(true);
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(m_wake, &one, sizeof one);
  }
  bool stopped() const noexcept { return m_stop.load(); }

  void shutdown() {
    if (m_shut) return;
    m_shut = true;
    for (Entry& e : m_entries) {
      if (!e.client) continue;
      if (e.client->phase() == DeviceClient::Phase::kConnected) {
        m_counters.connected.fetch_sub(1);
      }
      unwatch(e);
      e.client->disconnect();
    }
    m_counters.handshaking.store(0);
  }

  FleetStats stats() const {
    FleetStats s;
    s.devices = static_cast<std::int64_t>(m_entries.size());
    s.online = m_online;
    s.connected = m_counters.connected.load();
    s.handshaking = m_counters.handshaking.load();
    s.connects = m_counters.connects.load();
    s.connect_failures = m_counters.connect_failures.load();
    s.disconnects = m_counters.disconnects.load();
    s.registrations = m_counters.registrations.load();
    s.methods_answered = m_counters.methods_answered.load();
    s.twin_responses = m_counters.twin_responses.load();
    s.desired_patches = m_counters.desired_patches.load();
    s.first_all_connected_s = m_all_connected_s.load();
    return s;
  }

  bool is_offline(std::size_t i) const { return m_entries.at(i).offline; }
  bool is_failing(std::size_t i) const { return m_entries.at(i).failing; }
  const DeviceId& device_id(std::size_t i) const { return m_entries.at(i).client->device_id(); }
  std::size_t size() const { return m_entries.size(); }

 private:
  static constexpr std::uint64_t kWakeTag = ~std::uint64_t{0};

  // Each device's client, from its flash when there is a state directory (written on first run).
  void provision(const std::vector<bool>& offline, const std::vector<bool>& failing) {
    if (m_options.state_dir) {
      std::filesystem::create_directories(*m_options.state_dir);
      std::filesystem::permissions(*m_options.state_dir, std::filesystem::perms::owner_all);
    }
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      Credential& batch = m_options.devices[i];
      Entry& e = m_entries[i];
      e.offline = offline[i];
      e.failing = failing[i];
      m_online += e.offline ? 0 : 1;
      std::optional<SlotStore> store;
      if (m_options.state_dir) {
        const CertInfo from_batch = batch.cert();
        store.emplace(*m_options.state_dir, batch.id(), m_options.id_rule);
        store->set_sync(m_options.sync);
        auto [credential, slot] = store->load_or_create(std::move(batch), false);
        if (credential.cert().sha256 != from_batch.sha256) {
          m_shared.log(credential.id(), "runs its " + std::string(slot_name(slot)) +
                                            " slot from the state directory, certificate " +
                                            credential.cert().serial + ", not the batch's " +
                                            from_batch.serial);
        }
        e.client = std::make_unique<DeviceClient>(m_shared, std::move(credential), slot,
                                                  std::move(store), e.failing);
      } else {
        e.client = std::make_unique<DeviceClient>(m_shared, std::move(batch), Slot::kPrimary,
                                                  std::nullopt, e.failing);
      }
    }
    // One flush for all first runs.
    if (m_options.state_dir && m_options.sync) sync_state_dir(*m_options.state_dir);
  }

  // One descriptor per client (mosquitto_new.cpp), plus room for the rest of the process.
  void raise_fd_limit() {
    rlimit lim{};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    const rlim_t need = static_cast<rlim_t>(m_online) + 64;
    if (lim.rlim_cur >= need) return;
    if (lim.rlim_max < need) {
      rlimit raised{need, need};
      if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) return;
    }
    lim.rlim_cur = std::min(lim.rlim_max, need);
    ::setrlimit(RLIMIT_NOFILE, &lim);
    ::getrlimit(RLIMIT_NOFILE, &lim);
    if (lim.rlim_cur < need) {
      throw Error(ErrorCode::kInvalidArgument,
                  std::to_string(m_online) + " devices need " + std::to_string(need) +
                      " file descriptors; the limit is " + std::to_string(lim.rlim_cur) +
                      " (raise `ulimit -Hn` or run fewer devices)");
    }
  }

  // --- handshake slots ---------------------------------------------------------------------

  void enqueue(std::uint32_t i, bool front) {
    Entry& e = m_entries[i];
    if (e.queued || m_shut) return;
    e.queued = true;
    if (front) {
      m_queue.push_front(i);
    } else {
      m_queue.push_back(i);
    }
  }

  void pump() {
    while (m_in_flight < m_options.max_handshakes && !m_queue.empty() && !m_shut) {
      const std::uint32_t i = m_queue.front();
      m_queue.pop_front();
      Entry& e = m_entries[i];
      e.queued = false;
      if (!e.client->open()) {
        failed(i);
        continue;
      }
      take_slot(e);
      add_timer(i, kDeadline, Clock::now() + m_options.connect_timeout);
      watch(i);
    }
  }

  void take_slot(Entry& e) {
    if (e.holds_slot) return;
    e.holds_slot = true;
    ++m_in_flight;
    m_counters.handshaking.fetch_add(1);
  }
  void release_slot(Entry& e) {
    if (!e.holds_slot) return;
    e.holds_slot = false;
    --m_in_flight;
    m_counters.handshaking.fetch_sub(1);
  }

  // --- epoll -----------------------------------------------------------------------------------

  void watch(std::uint32_t i) {
    Entry& e = m_entries[i];
    const int fd = e.client->socket();
    const std::uint32_t want = e.client->wanted_events();
    if (fd < 0) {
      e.fd = -1;  // closed inside libmosquitto: the close removed it from epoll
      return;
    }
    epoll_event ev{};
    ev.events = want;
    ev.data.u64 = i;
    if (e.fd != fd) {
      e.fd = fd;
      e.events = want;
      ::epoll_ctl(m_epoll, EPOLL_CTL_ADD, fd, &ev);
    } else if (e.events != want) {
      e.events = want;
      ::epoll_ctl(m_epoll, EPOLL_CTL_MOD, fd, &ev);
    }
  }

  void unwatch(Entry& e) {
    // Only while libmosquitto still has the socket open: once it closed it, the number may
    // already belong to nobody, and epoll dropped it with the close.
    if (e.fd >= 0 && e.client->socket() == e.fd) {
      ::epoll_ctl(m_epoll, EPOLL_CTL_DEL, e.fd, nullptr);
    }
    e.fd = -1;
    e.events = 0;
  }

  void handle(const epoll_event& ev) {
    if (ev.data.u64 == kWakeTag) {
      std::uint64_t drained = 0;
      [[maybe_unused]] const auto n = ::read(m_wake, &drained, sizeof drained);
      return;
    }
    const auto i = static_cast<std::uint32_t>(ev.data.u64);
    if (i >= m_entries.size() || m_entries[i].fd < 0) return;
    m_entries[i].client->on_io(ev.events);
    settle(i);
  }

  // Acts on what the last call into the client's libmosquitto object did.
  void settle(std::uint32_t i) {
    Entry& e = m_entries[i];
    DeviceClient& c = *e.client;
    const unsigned out = c.take_outcome();
    if ((out & DeviceClient::kDpsConnected) != 0) release_slot(e);
    if ((out & DeviceClient::kPollLater) != 0) {
      add_timer(i, kPoll, Clock::now() + c.poll_after());
    }
    if ((out & (DeviceClient::kFailed | DeviceClient::kLost)) != 0) {
      if ((out & DeviceClient::kLost) != 0 || c.phase() == DeviceClient::Phase::kConnected) {
        lost(i);
      } else {
        unwatch(e);
        c.close();
        failed(i);
      }
      return;
    }
    if ((out & DeviceClient::kAssigned) != 0) {
      unwatch(e);
      c.close();
      release_slot(e);
      cancel(e, kDeadline);
      cancel(e, kPoll);
      enqueue(i, true);
      return;
    }
    if ((out & DeviceClient::kConnected) != 0) {
      release_slot(e);
      cancel(e, kDeadline);
      e.connected_at = Clock::now();
      m_counters.connected.fetch_add(1);
      m_counters.connects.fetch_add(1);
      m_shared.log(c.device_id(), "connected to " + c.target() + " (" +
                                      std::string(slot_name(c.slot())) + " slot, certificate " +
                                      c.certificate().serial + ")");
    }
    if ((out & DeviceClient::kReconnect) != 0) {
      reconnect(i);
      return;
    }
    watch(i);
  }

  void failed(std::uint32_t i) {
    Entry& e = m_entries[i];
    release_slot(e);
    cancel(e, kDeadline);
    cancel(e, kPoll);
    m_counters.connect_failures.fetch_add(1);
    if (const std::string back = e.client->after_failed_attempt(); !back.empty()) {
      m_shared.log(e.client->device_id(), back);
      e.attempts = 0;
    }
    const auto delay = backoff(e);
    m_shared.log(e.client->device_id(),
                 e.client->failure() + "; retrying in " + std::to_string(delay.count()) + " ms");
    add_timer(i, kRetry, Clock::now() + delay);
  }

  void lost(std::uint32_t i) {
    Entry& e = m_entries[i];
    unwatch(e);
    e.client->close();
    m_counters.connected.fetch_sub(1);
    m_counters.disconnects.fetch_add(1);
    // A connection that stayed up a minute was stable: start the backoff again from the bottom.
    if (Clock::now() - e.connected_at >= std::chrono::minutes(1)) e.attempts = 0;
    const auto delay = backoff(e);
    m_shared.log(e.client->device_id(), e.client->failure() + "; reconnecting in " +
                                            std::to_string(delay.count()) + " ms");
    add_timer(i, kRetry, Clock::now() + delay);
  }

  void reconnect(std::uint32_t i) {
    Entry& e = m_entries[i];
    DeviceClient& c = *e.client;
    const bool reprovision = c.reprovision_requested();
    c.on_io(EPOLLOUT);  // the answer goes out before the DISCONNECT
    c.take_outcome();
    unwatch(e);
    c.disconnect();
    m_counters.connected.fetch_sub(1);
    if (!c.reload_credential()) {
      failed(i);
      return;
    }
    m_shared.log(c.device_id(), std::string(reprovision ? "reprovisioning" : "reconnecting") +
                                    " with its " + std::string(slot_name(c.slot())) +
                                    " slot, certificate " + c.certificate().serial);
    enqueue(i, true);
  }

  // Full jitter within [d/2, d], d = min(max, min * 2^attempts).
  milliseconds backoff(Entry& e) {
    const double base = static_cast<double>(m_options.backoff_min.count()) *
                        std::ldexp(1.0, std::min(e.attempts, 20));
    const double d = std::min(base, static_cast<double>(m_options.backoff_max.count()));
    ++e.attempts;
    std::uniform_real_distribution<double> jitter(d / 2, d);
    return milliseconds(static_cast<std::int64_t>(jitter(m_rng)));
  }

  // --- timers --------------------------------------------------------------------------------

  void add_timer(std::uint32_t i, TimerKind kind, Clock::time_point when) {
    Entry& e = m_entries[i];
    m_timers.push(Timer{when, i, ++e.gen[kind], kind});
  }
  void cancel(Entry& e, TimerKind kind) { ++e.gen[kind]; }

  void fire_timers(Clock::time_point now) {
    while (!m_timers.empty() && m_timers.top().when <= now) {
      const Timer t = m_timers.top();
      m_timers.pop();
      Entry& e = m_entries[t.index];
      if (t.gen != e.gen[t.kind]) continue;  // cancelled or replaced
      ++e.gen[t.kind];
      switch (t.kind) {
        case kRetry:
          enqueue(t.index, false);
          break;
        case kDeadline:
          e.client->fail("connecting to " + e.client->target() + ": no answer within " +
                         std::to_string(m_options.connect_timeout.count()) + " ms");
          settle(t.index);
          break;
        case kPoll:
          e.client->poll_dps();
          settle(t.index);
          break;
        case kTimerKinds:
          break;
      }
    }
  }

  // Keepalive for every open client, once a second.
  void misc() {
    m_next_misc = Clock::now() + std::chrono::seconds(1);
    for (std::uint32_t i = 0; i < m_entries.size(); ++i) {
      if (m_entries[i].fd < 0) continue;
      m_entries[i].client->on_misc();
      settle(i);
    }
  }

  void note_all_connected() {
    if (m_all_connected_s.load() >= 0 || m_online == 0) return;
    if (m_counters.connected.load() == m_online) {
      m_all_connected_s.store(std::chrono::duration<double>(Clock::now() - m_started).count());
    }
  }

  FleetOptions m_options;
  TlsContexts m_tls;
  MethodRegistry m_methods;
  FleetCounters m_counters;
  FleetShared m_shared;
  std::vector<Entry> m_entries;
  std::int64_t m_online = 0;
  std::deque<std::uint32_t> m_queue;
  int m_in_flight = 0;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> m_timers;
  std::mt19937_64 m_rng;  // jitter: random per process, so agents do not retry in step
  int m_epoll = -1, m_wake = -1;
  std::atomic<bool> m_stop{false};
  bool m_shut = false;
  Clock::time_point m_started, m_next_misc;
  std::atomic<double> m_all_connected_s{-1};
};

DeviceFleet::DeviceFleet(FleetOptions options)
    : m_impl(std::make_unique<Impl>(std::move(options))) {}
DeviceFleet::~DeviceFleet() = default;
MethodRegistry& DeviceFleet::methods() noexcept { return m_impl->methods(); }
void DeviceFleet::start() { m_impl->start(); }
bool DeviceFleet::run_until(const std::function<bool()>& done, Clock::time_point deadline) {
  return m_impl->run_until(done, deadline);
}
void DeviceFleet::stop() noexcept { m_impl->stop(); }
bool DeviceFleet::stopped() const noexcept { return m_impl->stopped(); }
void DeviceFleet::shutdown() { m_impl->shutdown(); }
FleetStats DeviceFleet::stats() const { return m_impl->stats(); }
bool DeviceFleet::is_offline(std::size_t i) const { return m_impl->is_offline(i); }
bool DeviceFleet::is_failing(std::size_t i) const { return m_impl->is_failing(i); }
const DeviceId& DeviceFleet::device_id(std::size_t i) const { return m_impl->device_id(i); }
std::size_t DeviceFleet::size() const noexcept { return m_impl->size(); }

}  // namespace fleetsign::device
