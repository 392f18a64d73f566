// The registry watcher: see watcher.hpp.
#include "watcher.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <sstream>

#include "fleetsign/error.hpp"

namespace fleetsign::broker {

namespace {

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// {"version":N,"patch":{…}} as set_desired writes it.
std::optional<DesiredChange> desired_change(const engine::AuditEntry& row) {
  try {
    Poco::JSON::Parser parser;
    const auto o = parser.parse(row.detail).extract<Poco::JSON::Object::Ptr>();
    const auto patch = o->getObject("patch");
    if (!patch || !o->get("version").isInteger()) {
      return std::nullopt;
    }
    std::ostringstream s;
    patch->stringify(s);
    return DesiredChange{row.subject, o->get("version").convert<std::int64_t>(), s.str()};
  } catch (const Poco::Exception&) {
    return std::nullopt;
  }
}

}  // namespace

std::unique_ptr<engine::Registry> open_broker_registry(const std::filesystem::path& registry) {
  engine::RegistryOptions options;
  options.actor = "broker";
  options.now = unix_now;
  return engine::Registry::open(registry, options);
}

Generation build_generation(const std::filesystem::path& registry, std::uint64_t number) {
  Generation g;
  g.number = number;
  g.registry = open_broker_registry(registry);
  g.auth = std::make_unique<engine::Authenticator>(*g.registry);
  return g;
}

void Inbox::post(Generation generation) {
  const std::lock_guard lock(m_mutex);
  m_generation = std::move(generation);  // only the newest matters
}
void Inbox::post(Recheck recheck) {
  const std::lock_guard lock(m_mutex);
  m_rechecks.push_back(std::move(recheck));
}
void Inbox::post(std::vector<DesiredChange> changes) {
  const std::lock_guard lock(m_mutex);
  for (auto& c : changes) m_desired.push_back(std::move(c));
}
std::optional<Generation> Inbox::take_generation() {
  const std::lock_guard lock(m_mutex);
  std::optional<Generation> out = std::move(m_generation);
  m_generation.reset();
  return out;
}
std::vector<Recheck> Inbox::take_rechecks() {
  const std::lock_guard lock(m_mutex);
  return std::exchange(m_rechecks, {});
}
std::vector<DesiredChange> Inbox::take_desired() {
  const std::lock_guard lock(m_mutex);
  return std::exchange(m_desired, {});
}

RegistryWatcher::RegistryWatcher(const BrokerConfig& config, LiveDevices& live, Inbox& inbox,
                                 LogQueue& log, std::int64_t start_mark)
    : m_config(config), m_live(live), m_inbox(inbox), m_log(log), m_mark(start_mark) {
  m_registry = open_broker_registry(m_config.registry_path());
  m_thread = std::thread([this] { run(); });
}

RegistryWatcher::~RegistryWatcher() {
  {
    const std::lock_guard lock(m_mutex);
    m_stop = true;
  }
  m_wake.notify_all();
  m_thread.join();
}

void RegistryWatcher::run() {
  auto last_recheck = std::chrono::steady_clock::now();
  std::unique_lock lock(m_mutex);
  while (!m_wake.wait_for(lock, kPollInterval, [&] { return m_stop; })) {
    lock.unlock();
    bool changed = false;
    if (poll(changed) &&
        (changed || std::chrono::steady_clock::now() - last_recheck >= kRecheckInterval)) {
      recheck();
      last_recheck = std::chrono::steady_clock::now();
    }
    lock.lock();
  }
}

bool RegistryWatcher::poll(bool& admission_changed) {
  try {
    const std::int64_t mark = m_registry->change_mark();
    if (mark == m_mark) {
      return true;
    }
    if (mark < m_mark) {  // a registry restored from a backup: start over
      admission_changed = true;
      m_mark = mark;
      return true;
    }
    std::vector<DesiredChange> desired;
    while (m_mark < mark) {
      const auto rows = m_registry->audit_after(m_mark, 1000);
      if (rows.empty()) {
        break;
      }
      for (const auto& row : rows) {
        if (row.action != "twin.set-desired") {
          admission_changed = true;
        } else if (auto c = desired_change(row)) {
          desired.push_back(std::move(*c));
        }
        m_mark = row.id;
      }
    }
    m_mark = std::max(m_mark, mark);
    if (!desired.empty()) {
      m_inbox.post(std::move(desired));
    }
    return true;
  } catch (const Error& e) {
    m_log.push(LogLevel::kWarning, std::string("fleetsign: registry watcher: ") + e.what());
    return false;
  }
}

void RegistryWatcher::recheck() {
  try {
    // 1. New connections are decided on the new state as soon as the main thread takes it.
    const std::uint64_t number = ++m_generation;
    m_inbox.post(build_generation(m_config.registry_path(), number));
    // 2. Live sessions: each hub device with the certificate it connected with.
    engine::Authenticator auth(*m_registry);
    Recheck r;
    r.generation = number;
    const auto devices = m_live.snapshot(&r.snapshot_seq);
    const std::int64_t now = unix_now();
    for (const auto& d : devices) {
      const auto decision =
          auth.check(std::span<const engine::Der>(d.leaf.get(), 1), now, d.device_id);
      if (!decision.allowed) {
        r.refused.push_back(Refusal{d.device_id, d.seq, decision.rule, decision.reason});
      }
    }
    m_inbox.post(std::move(r));
  } catch (const Error& e) {
    m_log.push(LogLevel::kWarning, std::string("fleetsign: re-check: ") + e.what());
  }
}

}  // namespace fleetsign::broker
