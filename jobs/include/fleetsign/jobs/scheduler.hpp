// The rollover scheduler of `fleetsign serve`: pure decisions over the registry, from the policy's
// "rollover" section (rollover_schedule.hpp) and an injected clock. It creates jobs (it never runs
// them: `serve` does, through `job resume`) and raises expiry alerts.
//
// One tick, for every enrollment group:
//  1. Rollover, when the group's schedule is enabled, the clock is inside one of its maintenance
//     windows (or it has none), and no device-rollover job of the group is running or paused:
//     the group's devices whose certificate expires within before_expiry_days (plan_rollover),
//     less those with a conflict, those in a running or paused job, and those whose most recent
//     task settled (failed, or done) less than retry_failed_after_hours ago: a failed device is
//     re-run later, and one just rolled is not rolled again at the next tick. If any are
//     left, one job is created for them with the schedule's rate, wave, abort threshold, step
//     timeout and retries, and a deadline at the window's end (24 h without windows); an audit
//     row "job.scheduled" (subject: the job) names the group, the devices and the window.
//     Re-ticking inside the same window creates nothing more for the same devices.
//  2. Alerts, for each threshold of the group's alert_days (e.g. 30/14/7): the devices whose
//     current certificate (the later of their slots) expires within it and whose most recent task
//     is not done. Each (group, threshold) is raised at most once per UTC day; the audit row
//     "alert.expiry" (subject: the group) is that memory, so a restarted scheduler does not
//     repeat an alert of the same day.
//
// Errors: registry failures throw (fleetsign::Error); a group whose rollover cannot be planned is
// reported in Tick::problems and the other groups go on.
// Thread safety: none; one Scheduler per thread, over that thread's Stores.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::jobs {

struct Alert {
  std::string group;
  int days = 0;                      // the threshold
  std::int64_t count = 0;            // devices expiring within it, not rotated
  std::vector<std::string> devices;  // the first few, soonest to expire first
};

// One line for logs: "group G: N devices expire within D days and are not rotated: a, b, c…".
std::string alert_text(const Alert& alert);

class Scheduler final {
 public:
  // The references must outlive the Scheduler.
  Scheduler(engine::Stores& stores, const policy::Policy& policy, const engine::Clock& clock);

  struct Tick {
    std::vector<std::string> jobs_created;
    std::vector<Alert> alerts;
    std::vector<std::string> problems;  // "group G: …" for groups that could not be planned
  };
  // One pass over every group (see the header comment).
  Tick tick();

  static constexpr std::size_t kAlertDevices = 5;      // device IDs named in an alert
  static constexpr std::size_t kAuditedDevices = 100;  // device IDs named in "job.scheduled"

 private:
  struct LastTask {
    std::string device_id, state;
    std::int64_t at = 0;  // when it settled (or last changed, while unsettled)
  };
  struct History;
  void catch_up_alerts();
  const std::vector<LastTask>& settled_tasks(const engine::JobRecord& job);
  History read_history();
  void schedule_group(const engine::EnrollmentGroup& group, const History& history, Tick& tick);
  void alert_group(const engine::EnrollmentGroup& group, const History& history, Tick& tick);

  engine::Stores& m_stores;
  const policy::Policy& m_policy;
  const engine::Clock& m_clock;
  std::set<std::string> m_unknown_policy_groups;  // policy groups not in the registry, said once
  std::int64_t m_audit_mark = 0;                  // the last audit row read
  std::map<std::pair<std::string, int>, std::string> m_raised;  // (group, days) → UTC day
  // Settled jobs' tasks by job ID, with the job's "state@finished_at" they were read at.
  std::map<std::string, std::pair<std::string, std::vector<LastTask>>> m_settled;
};

}  // namespace fleetsign::jobs
