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

RegistryChanges read_changes(engine::FleetStateStore& store, std::int64_t* mark) {
  RegistryChanges out;
  const std::int64_t now = store.change_mark();
  if (now < *mark) {  // a registry restored from a backup: everything may differ
    out.admission = true;
    *mark = now;
    return out;
  }
  while (*mark < now) {
    const auto rows = store.audit_after(*mark, 1000);
    if (rows.empty()) {
      break;
    }
    for (const auto& row : rows) {
      if (row.action.starts_with("job.") || row.action.starts_with("alert.") ||
          row.action.starts_with("http.") || row.action.starts_with("operator.")) {
        // A job's own rows (create, state changes), the scheduler's alerts and the HTTP
        // service's requests and operators never change admission; the slot changes a job
        // makes write their own enrollment rows.
      } else if (row.action != "twin.set-desired") {
        out.admission = true;
      } else if (auto c = desired_change(row)) {
        out.desired.push_back(std::move(*c));
      }
      *mark = row.id;
    }
  }
  *mark = std::max(*mark, now);
  return out;
}

void Inbox::post(Recheck recheck) {
  const std::lock_guard lock(m_mutex);
  m_rechecks.push_back(std::move(recheck));
}
std::vector<Recheck> Inbox::take_rechecks() {
  const std::lock_guard lock(m_mutex);
  return std::exchange(m_rechecks, {});
}

RegistryWatcher::RegistryWatcher(const std::filesystem::path& registry, LiveDevices& live,
                                 Inbox& inbox, LogQueue& log, std::int64_t start_mark)
    : m_live(live), m_inbox(inbox), m_log(log), m_mark(start_mark) {
  m_registry = open_broker_registry(registry);
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
  bool pending = false;  // a change seen, its re-check not run yet (kMinRecheckGap)
  std::unique_lock lock(m_mutex);
  while (!m_wake.wait_for(lock, kPollInterval, [&] { return m_stop; })) {
    lock.unlock();
    bool changed = false;
    if (poll(changed)) {
      pending = pending || changed;
      const auto since = std::chrono::steady_clock::now() - last_recheck;
      if ((pending && since >= kMinRecheckGap) || since >= kRecheckInterval) {
        recheck(m_mark);
        last_recheck = std::chrono::steady_clock::now();
        pending = false;
      }
    }
    lock.lock();
  }
}

bool RegistryWatcher::poll(bool& admission_changed) {
  try {
    admission_changed = read_changes(*m_registry, &m_mark).admission;
    return true;
  } catch (const Error& e) {
    m_log.push(LogLevel::kWarning, std::string("fleetsign: registry watcher: ") + e.what());
    return false;
  }
}

void RegistryWatcher::recheck(std::int64_t mark) {
  try {
    engine::Authenticator auth(*m_registry);
    Recheck r;
    r.mark = mark;
    const auto devices = m_live.snapshot(&r.snapshot_seq);
    const std::int64_t now = unix_now();
    for (const auto& d : devices) {
      const auto decision =
          auth.check(std::span<const engine::Der>(d.leaf.get(), 1), now, d.device_id);
      if (!decision.allowed) {
        r.refused.push_back(Refusal{d.device_id, d.seq, decision.rule, decision.reason});
      } else if (decision.rotation_only != d.rotation_only) {
        // An incident opened (or closed) for its certificate: cut the session off; it comes
        // back in the mode the decision now gives (rotation only, or full rights).
        r.refused.push_back(Refusal{d.device_id, d.seq, decision.rule,
                                    "admission mode changed: " + decision.reason});
      }
    }
    m_inbox.post(std::move(r));
  } catch (const Error& e) {
    m_log.push(LogLevel::kWarning, std::string("fleetsign: re-check: ") + e.what());
  }
}

}  // namespace fleetsign::broker
