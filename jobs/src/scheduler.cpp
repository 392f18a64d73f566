// The rollover scheduler (scheduler.hpp): which devices to roll now, and which alerts to raise.
#include "fleetsign/jobs/scheduler.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <limits>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {

namespace {

constexpr std::int64_t kDay = 86400;
constexpr std::size_t kAll = std::numeric_limits<std::size_t>::max();
constexpr std::int64_t kAuditPage = 1000;
constexpr const char* kAlertAction = "alert.expiry";

std::string utc_day(std::int64_t t) { return engine::iso8601(t).substr(0, 10); }

std::string stringify(const Poco::JSON::Object& o) {
  std::ostringstream s;
  o.stringify(s);
  return s.str();
}

Poco::JSON::Array first_ids(const std::vector<std::string>& ids, std::size_t limit) {
  Poco::JSON::Array out;
  for (std::size_t i = 0; i < ids.size() && i < limit; ++i) out.add(ids[i]);
  return out;
}

bool is_active_job(const engine::JobRecord& job) {
  return job.state == "running" || job.state == "paused";
}

// When a task last changed: its end, or its last update while unfinished.
std::int64_t task_time(const engine::JobTask& t) {
  return t.finished_at != 0 ? t.finished_at : t.updated_at;
}

}  // namespace

std::string alert_text(const Alert& a) {
  std::string ids;
  for (const auto& id : a.devices) ids += (ids.empty() ? "" : ", ") + id;
  if (a.count > static_cast<std::int64_t>(a.devices.size())) ids += "…";
  const bool one = a.count == 1;
  return "group " + a.group + ": " + std::to_string(a.count) +
         (one ? " device expires within " : " devices expire within ") + std::to_string(a.days) +
         (one ? " days and is not rotated: " : " days and are not rotated: ") + ids;
}

// What the jobs say about devices, read once per tick.
struct Scheduler::History {
  std::unordered_set<std::string> busy;            // devices in a running or paused job
  std::unordered_set<std::string> busy_groups;     // groups with a running or paused rollover
  std::unordered_map<std::string, LastTask> last;  // each device's most recent task
};

Scheduler::Scheduler(engine::Stores& stores, const policy::Policy& policy,
                     const engine::Clock& clock)
    : m_stores(stores), m_policy(policy), m_clock(clock) {}

// Reads the audit rows added since the last call: the alerts raised (by this or an earlier run).
void Scheduler::catch_up_alerts() {
  while (true) {
    const auto rows = m_stores.audit_after(m_audit_mark, kAuditPage);
    for (const auto& row : rows) {
      m_audit_mark = row.id;
      if (row.action != kAlertAction) continue;
      try {
        const auto o = Poco::JSON::Parser().parse(row.detail).extract<Poco::JSON::Object::Ptr>();
        auto& day = m_raised[{o->getValue<std::string>("group"), o->getValue<int>("days")}];
        day = std::max(day, o->getValue<std::string>("day"));
      } catch (const Poco::Exception&) {
        // A row this scheduler did not write: it remembers no alert.
      }
    }
    if (static_cast<std::int64_t>(rows.size()) < kAuditPage) return;
  }
}

// A settled job's tasks change only when it is reopened (its state changes): they are read once.
const std::vector<Scheduler::LastTask>& Scheduler::settled_tasks(const engine::JobRecord& job) {
  const std::string key = job.state + "@" + std::to_string(job.finished_at);
  auto& cached = m_settled[job.id];
  if (cached.first != key || cached.second.empty()) {
    cached.first = key;
    cached.second.clear();
    for (const auto& t : m_stores.job_tasks(job.id, "")) {
      cached.second.push_back({t.device_id, t.state, task_time(t)});
    }
  }
  return cached.second;
}

Scheduler::History Scheduler::read_history() {
  History h;
  const auto note = [&h](const LastTask& task) {
    auto [it, added] = h.last.try_emplace(task.device_id, task);
    if (!added && task.at > it->second.at) it->second = task;
  };
  for (const auto& job : m_stores.list_jobs({.limit = 0})) {
    if (!is_active_job(job)) {
      for (const auto& task : settled_tasks(job)) note(task);
      continue;
    }
    m_settled.erase(job.id);
    if (job.kind == "device-rollover") {
      try {
        const auto params = parse_params(job.params_json, "job " + job.id);
        if (!params.selection.group.empty()) h.busy_groups.insert(params.selection.group);
      } catch (const Error&) {
        // Its devices are still skipped below.
      }
    }
    for (const auto& t : m_stores.job_tasks(job.id, "")) {
      h.busy.insert(t.device_id);
      note({t.device_id, t.state, task_time(t)});
    }
  }
  return h;
}

Scheduler::Tick Scheduler::tick() {
  catch_up_alerts();
  const History history = read_history();
  Tick tick;
  const auto groups = m_stores.list_groups();
  // A policy override for a group the registry does not have (a typo, a group not created yet)
  // applies to nothing: its windows and rates would silently not hold. Said once per process.
  for (const auto& [name, settings] : m_policy.groups) {
    // Only what the scheduler reads: a group entry for issuance alone (intermediate, validity)
    // is `issue --group`'s, with no enrollment group needed.
    const policy::RolloverOverrides& r = settings.rollover;
    const bool schedules = !settings.alert_days.empty() || r.enabled || r.before_expiry_days ||
                           r.windows || r.rate_per_minute || r.wave_size || r.abort_percent ||
                           r.min_executed || r.step_timeout_s || r.retries ||
                           r.retry_failed_after_hours;
    if (!schedules) continue;
    const bool known =
        std::any_of(groups.begin(), groups.end(),
                    [&](const engine::EnrollmentGroup& g) { return g.name == name; });
    if (known) {
      m_unknown_policy_groups.erase(name);
    } else if (m_unknown_policy_groups.insert(name).second) {
      tick.problems.push_back("policy: groups." + name +
                              " names no enrollment group in the registry, so its rollover "
                              "schedule and alerts apply to no device");
    }
  }
  for (const auto& group : groups) {
    try {
      schedule_group(group, history, tick);
    } catch (const Error& e) {
      // A fenced write refused: this process no longer holds the scheduling (its caller's lease
      // went to another), so the tick ends here rather than failing group after group.
      if (e.code() == ErrorCode::kHomeBusy) throw;
      tick.problems.push_back("group " + group.name + ": " + e.what());
    }
    alert_group(group, history, tick);
  }
  return tick;
}

void Scheduler::schedule_group(const engine::EnrollmentGroup& group, const History& history,
                               Tick& tick) {
  const policy::RolloverSchedule s = policy::rollover_for(m_policy, group.name);
  if (!s.enabled || !group.enabled || history.busy_groups.count(group.name) != 0) return;
  const std::int64_t now = m_clock.now();
  std::optional<policy::WindowSpan> window = policy::WindowSpan{now, now + kDay};
  if (!s.windows.empty()) window = policy::open_window(s.windows, now);
  if (!window) return;
  // A group with no CA in its slots has no devices (and plan_rollover would select every CA).
  if (engine::GroupIndex::load(m_stores).cas_of_group(group.name).empty()) return;

  RolloverParams params;
  params.selection.group = group.name;
  params.selection.expiring_within_s = std::int64_t{s.before_expiry_days} * kDay;
  RolloverPlan plan = plan_rollover(m_stores, m_policy, m_clock, params);
  const std::int64_t retry_after = std::int64_t{s.retry_failed_after_hours} * 3600;
  std::erase_if(plan.devices, [&](const PlannedDevice& d) {
    if (!d.conflict.empty() || d.group != group.name || history.busy.count(d.device_id) != 0) {
      return true;
    }
    const auto last = history.last.find(d.device_id);
    // Done recently too: a policy whose new certificates already fall within
    // before_expiry_days must not roll the same devices at every tick.
    return last != history.last.end() && is_final_task_state(last->second.state) &&
           now - last->second.at < retry_after;
  });
  if (plan.devices.empty()) return;

  for (const auto& d : plan.devices) params.selection.devices.push_back(d.device_id);
  params.rollout.per_minute = s.rate_per_minute;
  params.wave = s.wave_size;
  params.abort_percent = s.abort_percent;
  params.min_executed = s.min_executed;
  params.step_timeout_s = s.step_timeout_s;
  params.retries = s.retries;
  params.deadline = window->end;
  const std::string id = create_job(m_stores, m_clock, params, plan);

  std::string window_text = "any time";
  if (!s.windows.empty()) {
    window_text.clear();
    for (const auto& w : s.windows) {
      window_text += (window_text.empty() ? "" : "; ") + policy::window_text(w);
    }
  }
  Poco::JSON::Object detail(Poco::JSON_PRESERVE_KEY_ORDER);
  detail.set("group", group.name);
  detail.set("devices", static_cast<std::int64_t>(params.selection.devices.size()));
  detail.set("device_ids", first_ids(params.selection.devices, kAuditedDevices));
  detail.set("window", window_text);
  detail.set("window_start", engine::iso8601(window->start));
  detail.set("window_end", engine::iso8601(window->end));
  detail.set("before_expiry_days", s.before_expiry_days);
  m_stores.audit("job.scheduled", id, stringify(detail));
  tick.jobs_created.push_back(id);
}

void Scheduler::alert_group(const engine::EnrollmentGroup& group, const History& history,
                            Tick& tick) {
  const std::vector<int>& thresholds = policy::alert_days_for(m_policy, group.name);
  engine::DeviceFilter filter;
  filter.ca_names = engine::GroupIndex::load(m_stores).cas_of_group(group.name);
  if (thresholds.empty() || filter.ca_names.empty()) return;
  const std::int64_t now = m_clock.now();
  const int widest = *std::max_element(thresholds.begin(), thresholds.end());

  // Each device once, by the later of its slots (a rotated device's new certificate counts).
  std::vector<std::pair<std::int64_t, std::string>> due;  // (expiry, device)
  std::unordered_set<std::string> seen;
  for (const auto& c : m_stores.expiring_device_certs(now + widest * kDay, filter, kAll)) {
    if (!seen.insert(c.registration_id).second) continue;
    // A rolled device counts by its new certificate (the later slot), never by having been
    // rolled once: when the new one nears its end, it is due again.
    const auto device = m_stores.find_device(c.registration_id);
    if (!device) continue;
    std::int64_t expiry = 0;
    if (!device->primary_serial.empty()) expiry = device->primary_not_after;
    if (!device->secondary_serial.empty()) expiry = std::max(expiry, device->secondary_not_after);
    due.emplace_back(expiry, c.registration_id);
  }
  std::sort(due.begin(), due.end());

  const std::string today = utc_day(now);
  for (const int days : thresholds) {
    Alert alert;
    alert.group = group.name;
    alert.days = days;
    for (const auto& [expiry, id] : due) {
      if (expiry >= now + days * kDay) break;
      if (alert.devices.size() < kAlertDevices) alert.devices.push_back(id);
      ++alert.count;
    }
    auto& raised = m_raised[{group.name, days}];
    if (alert.count == 0 || raised == today) continue;
    Poco::JSON::Object detail(Poco::JSON_PRESERVE_KEY_ORDER);
    detail.set("group", group.name);
    detail.set("days", days);
    detail.set("day", today);
    detail.set("count", alert.count);
    detail.set("devices", first_ids(alert.devices, kAlertDevices));
    m_stores.audit(kAlertAction, group.name, stringify(detail));
    raised = today;
    tick.alerts.push_back(std::move(alert));
  }
}

}  // namespace fleetsign::jobs
