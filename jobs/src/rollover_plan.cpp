// Rollover jobs outside the runner: parameters as JSON, the plan, the job's creation, its
// progress figures, and the requests other processes make (pause, cancel, reopen, retry-failed).
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <limits>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/revocation.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {

namespace {

using engine::JobRecord;
using engine::JobTask;

std::string slot_text(engine::Slot s) { return std::string(engine::slot_name(s)); }

template <typename T>
T get_or(const Poco::JSON::Object::Ptr& o, const std::string& key, T fallback,
         std::string_view origin) {
  if (!o->has(key)) return fallback;
  try {
    return o->getValue<T>(key);
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string(origin) + ": field '" + key + "': " + e.displayText());
  }
}

}  // namespace

bool is_final_task_state(std::string_view s) noexcept {
  return s == "done" || s == "offline" || s == "refused" || s == "timed-out" || s == "aborted" ||
         s == "canceled" || s == "conflict";
}

bool is_failed_task_state(std::string_view s) noexcept {
  return s == "offline" || s == "refused" || s == "timed-out" || s == "conflict";
}

std::int64_t parse_duration(std::string_view text, std::string_view what) {
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [p, ec] = std::from_chars(text.data(), end, value);
  std::int64_t unit = 1;
  bool ok = ec == std::errc() && value >= 0 && p != text.data();
  if (ok && p != end) {
    const std::string_view suffix(p, static_cast<std::size_t>(end - p));
    if (suffix == "s")
      unit = 1;
    else if (suffix == "m")
      unit = 60;
    else if (suffix == "h")
      unit = 3600;
    else if (suffix == "d")
      unit = 86400;
    else
      ok = false;
  }
  if (!ok || value > (std::int64_t{1} << 40) / unit) {
    throw Error(ErrorCode::kUsage, std::string(what) + ": '" + std::string(text) +
                                       "' is not a duration (e.g. 30d, 12h, 90m, 45s)");
  }
  return value * unit;
}

std::int64_t parse_deadline(std::string_view text, std::int64_t now, std::string_view what) {
  const auto bad = [&](const std::string& why) {
    return Error(ErrorCode::kUsage, std::string(what) + ": '" + std::string(text) + "' " + why);
  };
  if (text.find_first_of("-:T") != std::string_view::npos) {
    const std::int64_t at = parse_time(text, what);
    if (at <= now) throw bad("is not in the future");
    return at;
  }
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos) {
    const std::string n(text);
    throw bad("has no unit: write " + n + "d, " + n + "h, " + n + "m or " + n +
              "s, or an RFC 3339 time");
  }
  const std::int64_t s = parse_duration(text, what);
  if (s < 1) throw bad("must be at least 1s");
  return now + s;
}

std::string params_json(const RolloverParams& p) {
  Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  Poco::JSON::Object sel(Poco::JSON_PRESERVE_KEY_ORDER);
  if (!p.selection.group.empty()) sel.set("group", p.selection.group);
  if (!p.selection.lot.empty()) sel.set("lot", p.selection.lot);
  if (p.selection.expiring_within_s >= 0) sel.set("expiringWithin", p.selection.expiring_within_s);
  if (!p.selection.devices.empty()) {
    Poco::JSON::Array devices;
    for (const auto& d : p.selection.devices) devices.add(d);
    sel.set("devices", devices);
  }
  o.set("kind", p.kind);
  o.set("selection", sel);
  o.set("ca", p.ca);
  if (!p.ca_map.empty()) {
    Poco::JSON::Object map(Poco::JSON_PRESERVE_KEY_ORDER);
    for (const auto& [from, to] : p.ca_map) map.set(from, to);
    o.set("caMap", map);
  }
  o.set("keyType", p.key_type);
  o.set("perMinute", p.rollout.per_minute);
  o.set("basePerMinute", p.rollout.base_per_minute);
  o.set("factor", p.rollout.factor);
  o.set("every", p.rollout.every);
  o.set("wave", p.wave);
  o.set("abortPercent", p.abort_percent);
  o.set("minExecuted", p.min_executed);
  o.set("stepTimeout", p.step_timeout_s);
  o.set("retries", p.retries);
  o.set("offlineRetry", p.offline_retry_s);
  o.set("deadline", p.deadline);
  o.set("inFlight", p.in_flight);
  o.set("confirm", p.confirm);
  std::ostringstream s;
  o.stringify(s);
  return s.str();
}

RolloverParams parse_params(std::string_view text, std::string_view origin) {
  Poco::JSON::Object::Ptr o;
  try {
    Poco::JSON::Parser parser;
    o = parser.parse(std::string(text)).extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string(origin) + ": not a JSON object: " + e.displayText());
  }
  RolloverParams p;
  p.kind = get_or<std::string>(o, "kind", p.kind, origin);
  if (auto sel = o->getObject("selection")) {
    p.selection.group = get_or<std::string>(sel, "group", "", origin);
    p.selection.lot = get_or<std::string>(sel, "lot", "", origin);
    p.selection.expiring_within_s = get_or<std::int64_t>(sel, "expiringWithin", -1, origin);
    if (auto devices = sel->getArray("devices")) {
      for (std::size_t i = 0; i < devices->size(); ++i) {
        p.selection.devices.push_back(devices->getElement<std::string>(i));
      }
    }
  }
  p.ca = get_or<std::string>(o, "ca", "", origin);
  if (auto map = o->getObject("caMap")) {
    for (const auto& name : map->getNames()) {
      p.ca_map[name] = get_or<std::string>(map, name, "", origin);
    }
  }
  p.key_type = get_or<std::string>(o, "keyType", p.key_type, origin);
  p.rollout.per_minute = get_or<int>(o, "perMinute", 0, origin);
  p.rollout.base_per_minute = get_or<int>(o, "basePerMinute", 0, origin);
  p.rollout.factor = get_or<double>(o, "factor", 1.0, origin);
  p.rollout.every = get_or<int>(o, "every", 0, origin);
  p.wave = get_or<int>(o, "wave", 0, origin);
  p.abort_percent = get_or<double>(o, "abortPercent", 0, origin);
  p.min_executed = get_or<int>(o, "minExecuted", 0, origin);
  p.step_timeout_s = get_or<int>(o, "stepTimeout", p.step_timeout_s, origin);
  p.retries = get_or<int>(o, "retries", p.retries, origin);
  p.offline_retry_s = get_or<int>(o, "offlineRetry", p.offline_retry_s, origin);
  p.deadline = get_or<std::int64_t>(o, "deadline", 0, origin);
  p.in_flight = get_or<int>(o, "inFlight", p.in_flight, origin);
  p.confirm = get_or<std::string>(o, "confirm", p.confirm, origin);
  if (p.confirm != "session" && p.confirm != "method") {
    throw Error(
        ErrorCode::kInvalidArgument,
        std::string(origin) + ": confirm must be session or method, not '" + p.confirm + "'");
  }
  return p;
}

std::unordered_map<std::string, std::string> held_devices(engine::Stores& stores) {
  // A device already in a running or paused job is that job's until it settles there; so is one
  // in a job aborted or canceled but not ended (its runner died: serve runs it to its end, and a
  // device half-way through a switch finishes it). Registry::create_job checks the same.
  std::unordered_map<std::string, std::string> busy;
  for (const auto& job : stores.list_jobs(engine::ListPage{})) {
    if (job.state != "running" && job.state != "paused" && !job_is_stopping(job)) continue;
    for (const auto& t : stores.job_tasks(job.id, "")) {
      if (!is_final_task_state(t.state) || (t.state == "offline" && t.next_at != 0)) {
        busy.emplace(t.device_id, job.id);
      }
    }
  }
  return busy;
}

RolloverPlan plan_rollover(engine::Stores& stores, const policy::Policy& policy,
                           const engine::Clock& clock, const RolloverParams& params) {
  if (params.selection.empty()) {
    throw Error(ErrorCode::kUsage,
                "select devices: --group, --lot, --expiring-within, --devices FILE or --device ID");
  }
  const std::int64_t now = clock.now();
  const engine::GroupIndex index = engine::GroupIndex::load(stores);
  if (!params.ca.empty()) {
    const auto* ca = index.find_ca(params.ca);
    if (ca == nullptr) throw Error(ErrorCode::kNotFound, "--ca: no CA named '" + params.ca + "'");
  }

  engine::DeviceFilter filter;
  if (!params.selection.group.empty()) {
    filter.ca_names = index.cas_of_group(params.selection.group);  // kNotFound when unknown
    if (filter.ca_names.empty()) {
      // A group with no CA in its slots has no devices (an empty filter would mean "any CA").
      RolloverPlan none;
      none.warnings.push_back("group '" + params.selection.group + "' has no CA in its slots");
      return none;
    }
  }
  filter.lot = params.selection.lot;
  const std::set<std::string> group_cas(filter.ca_names.begin(), filter.ca_names.end());

  std::vector<engine::DeviceRecord> candidates;
  std::vector<std::string> missing;
  if (!params.selection.devices.empty()) {
    std::unordered_set<std::string> seen;
    for (const auto& id : params.selection.devices) {
      if (!seen.insert(id).second) continue;
      auto device = stores.find_device(id);
      if (!device) {
        missing.push_back(id);
        continue;
      }
      if (!group_cas.empty() && group_cas.count(device->ca_name) == 0) continue;
      if (!filter.lot.empty() && device->lot != filter.lot) continue;
      candidates.push_back(std::move(*device));
    }
  } else if (!filter.ca_names.empty() || !filter.lot.empty() ||
             params.selection.expiring_within_s < 0) {
    candidates = stores.list_devices(filter);
  }
  if (params.selection.expiring_within_s >= 0) {
    std::unordered_set<std::string> expiring;
    for (const auto& c :
         stores.expiring_device_certs(now + params.selection.expiring_within_s, filter,
                                      std::numeric_limits<std::size_t>::max())) {
      expiring.insert(c.registration_id);
    }
    if (params.selection.devices.empty() && filter.ca_names.empty() && filter.lot.empty()) {
      for (const auto& id : expiring) {
        if (auto device = stores.find_device(id)) candidates.push_back(std::move(*device));
      }
    } else {
      std::erase_if(candidates,
                    [&](const auto& d) { return expiring.count(d.registration_id) == 0; });
    }
  }

  const auto busy = held_devices(stores);

  std::unordered_map<std::string, engine::DeviceSession> sessions;
  for (auto& s : stores.connected_devices()) sessions.emplace(s.device_id, std::move(s));

  RolloverPlan plan;
  std::unordered_map<std::string, std::string> ca_conflicts;  // CA → conflict ("" = fine)
  auto ca_conflict = [&](const std::string& ca_name, const std::string& group) -> std::string {
    const std::string key = ca_name + "\n" + group;
    if (auto it = ca_conflicts.find(key); it != ca_conflicts.end()) return it->second;
    std::string why;
    const auto* ca = index.find_ca(ca_name);
    if (ca == nullptr) {
      why = "its CA '" + ca_name + "' is not in this registry";
    } else if (engine::is_external(*ca)) {
      why = "its CA '" + ca_name + "' is external (no key in the token to sign with)";
    } else {
      const std::int64_t wanted =
          now + std::int64_t{policy::device_days_for(policy, group)} * 86400;
      if (ca->not_after < wanted) {
        why = "CA '" + ca_name + "' ends " + engine::iso8601(ca->not_after) +
              ", before a new certificate would (" + engine::iso8601(wanted) +
              "): roll the CA first";
        plan.warnings.push_back(why);
      }
    }
    ca_conflicts.emplace(key, why);
    return why;
  };

  for (const auto& d : candidates) {
    PlannedDevice p;
    p.device_id = d.registration_id;
    p.lot = d.lot;
    p.ca_name = params.ca.empty() ? d.ca_name : params.ca;
    if (const auto* g = index.group_of_ca(d.ca_name)) p.group = g->name;
    const bool has_primary = !d.primary_serial.empty();
    const bool has_secondary = !d.secondary_serial.empty();
    if (has_primary && has_secondary) {
      const auto s = sessions.find(d.registration_id);
      const std::string in_use = s == sessions.end() ? "" : s->second.cert_serial;
      if (in_use == d.primary_serial || in_use == d.secondary_serial) {
        p.old_serial = in_use;
      } else {
        p.conflict =
            "both slots hold certificates and the broker has not seen which one the "
            "device uses; retire one first";
      }
    } else if (has_primary || has_secondary) {
      p.old_serial = has_primary ? d.primary_serial : d.secondary_serial;
    } else {
      p.conflict = "the device holds no certificate to roll";
    }
    if (!p.old_serial.empty()) {
      const bool old_is_primary = p.old_serial == d.primary_serial;
      p.old_not_after = old_is_primary ? d.primary_not_after : d.secondary_not_after;
      p.target_slot = slot_text(old_is_primary ? engine::Slot::kSecondary : engine::Slot::kPrimary);
    }
    if (p.conflict.empty() && d.status != "enabled") p.conflict = "the device is " + d.status;
    if (const auto b = busy.find(d.registration_id); p.conflict.empty() && b != busy.end()) {
      p.conflict = "the device is in job " + b->second + ", which has not settled it yet";
      p.held_by = b->second;
    }
    if (auto ie = stores.find_individual_slots(d.registration_id)) {
      p.enrollment = ie->registration_id;
      if (p.conflict.empty() && !ie->enabled) p.conflict = "its individual enrollment is disabled";
    }
    if (p.conflict.empty() && p.enrollment.empty()) {
      // The new certificate must be admitted: its CA in the chain of an enabled group's slot
      // (the device's own group; an individual enrollment takes the certificate itself).
      const auto* signing_group = index.group_of_ca(p.ca_name);
      if (signing_group == nullptr || !signing_group->enabled) {
        p.conflict = "the signing CA '" + p.ca_name +
                     "' is not in a slot (or under one) of an enabled enrollment group: the "
                     "broker would refuse the new certificate";
      } else if (!p.group.empty() && signing_group->name != p.group) {
        p.conflict = "the signing CA '" + p.ca_name + "' belongs to group '" + signing_group->name +
                     "', not to the device's group '" + p.group + "'";
      }
    }
    if (p.conflict.empty()) p.conflict = ca_conflict(p.ca_name, p.group);
    plan.devices.push_back(std::move(p));
  }
  for (const auto& id : missing) {
    PlannedDevice p;
    p.device_id = id;
    p.conflict = "not a device of this registry";
    plan.devices.push_back(std::move(p));
  }
  std::stable_sort(plan.devices.begin(), plan.devices.end(), [](const auto& a, const auto& b) {
    if (a.conflict.empty() != b.conflict.empty()) return a.conflict.empty();
    if (a.old_not_after != b.old_not_after) return a.old_not_after < b.old_not_after;
    return a.device_id < b.device_id;
  });
  for (const auto& p : plan.devices) {
    if (!p.conflict.empty()) {
      ++plan.conflicts;
      continue;
    }
    ++plan.per_group[p.group.empty() ? "(none)" : p.group];
    ++plan.per_lot[p.lot.empty() ? "(none)" : p.lot];
    ++plan.per_ca[p.ca_name];
    ++plan.per_slot[p.target_slot];
  }
  const std::int64_t runnable = static_cast<std::int64_t>(plan.devices.size()) - plan.conflicts;
  plan.waves =
      params.wave > 0 ? std::max<std::int64_t>(1, (runnable + params.wave - 1) / params.wave) : 1;
  return plan;
}

std::string create_job(engine::Stores& stores, const engine::Clock& clock,
                       const RolloverParams& params, const RolloverPlan& plan) {
  const std::int64_t now = clock.now();
  const std::time_t t = static_cast<std::time_t>(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
  std::uint8_t suffix[3];
  engine::CsprngSource().fill(suffix);
  std::string id = "roll-" + std::string(stamp) + "-" + engine::hex_upper(suffix);
  std::transform(id.begin(), id.end(), id.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });

  RolloverParams stored = params;
  if (stored.deadline == 0) stored.deadline = now + 86400;
  JobRecord job;
  job.id = id;
  job.kind = params.kind;
  job.state = "running";
  job.params_json = params_json(stored);
  job.created_at = job.updated_at = now;

  std::vector<JobTask> tasks;
  tasks.reserve(plan.devices.size());
  std::int64_t seq = 0;
  for (const auto& p : plan.devices) {
    JobTask task;
    task.job_id = id;
    task.seq = seq++;
    task.device_id = p.device_id;
    task.target_slot = p.target_slot;
    task.old_serial = p.old_serial;
    task.updated_at = now;
    if (!p.conflict.empty()) {
      task.state = "conflict";
      task.last_error = p.conflict;
      task.finished_at = now;
    }
    tasks.push_back(std::move(task));
  }
  stores.create_job(job, tasks);
  return id;
}

JobProgress job_progress(engine::Stores& stores, const std::string& job_id, std::int64_t now) {
  JobProgress p;
  auto job = stores.find_job(job_id);
  if (!job) throw Error(ErrorCode::kNotFound, "no job '" + job_id + "'");
  p.job = std::move(*job);
  for (const auto& [state, count] : stores.count_job_tasks(job_id)) {
    p.states[state] = count;
    p.total += count;
    if (is_final_task_state(state)) p.settled += count;
    if (state == "done") p.done += count;
    if (is_failed_task_state(state)) p.failed += count;
  }
  const std::int64_t started = p.job.created_at;
  const std::int64_t end = p.job.finished_at != 0 ? p.job.finished_at : now;
  if (end > started && p.done > 0) {
    p.rate_per_s = static_cast<double>(p.done) / static_cast<double>(end - started);
  }
  const std::int64_t left = p.total - p.settled;
  if (left == 0) {
    p.eta_s = 0;
  } else if (p.rate_per_s > 0) {
    p.eta_s = static_cast<std::int64_t>(static_cast<double>(left) / p.rate_per_s);
  }
  return p;
}

namespace {

std::string change_state(engine::Stores& stores, const std::string& job_id,
                         std::initializer_list<std::string_view> from, const std::string& to,
                         std::string_view verb) {
  auto job = stores.find_job(job_id);
  if (!job) throw Error(ErrorCode::kNotFound, "no job '" + job_id + "'");
  if (std::find(from.begin(), from.end(), job->state) == from.end()) {
    throw Error(ErrorCode::kInvalidArgument,
                "job " + job_id + " is " + job->state + ": it cannot be " + std::string(verb));
  }
  stores.set_job_state(job_id, to, 0);
  return to;
}

}  // namespace

std::string pause_job(engine::Stores& stores, const std::string& job_id) {
  return change_state(stores, job_id, {"running"}, "paused", "paused");
}

std::string cancel_job(engine::Stores& stores, const std::string& job_id) {
  // A breach roll canceled before its revocation (killed between the two): the revocation is
  // made first. Canceling stops the rolling, never the cut-off.
  if (const auto breach = stores.find_job(job_id);
      breach && breach->kind == "breach-roll" &&
      (breach->state == "running" || breach->state == "paused")) {
    for (const auto& t : stores.job_tasks(job_id, "")) {
      revoke_breached(stores, t.old_serial, breach->created_at);
    }
  }
  // Tasks not started are canceled here; a running runner settles the ones in progress (a device
  // in the middle of a switch finishes it) and stops.
  change_state(stores, job_id, {"running", "paused"}, "canceled", "canceled");
  // A task claimed by the job's runners while one holds the lease is theirs to settle: a runner
  // may have started it since its last flush.
  const auto job = stores.find_job(job_id);
  const bool run_now = job && !job->runner.empty() &&
                       job->heartbeat_at >= stores.registry_time() - kJobHeartbeatStale;
  std::vector<JobTask> canceled;
  for (auto& task : stores.job_tasks(job_id, "pending")) {
    if (run_now && !task.runner.empty()) continue;
    task.state = "canceled";
    task.last_error = "the job was canceled before this device started";
    canceled.push_back(std::move(task));
  }
  stores.save_job_tasks(canceled, {});
  return "canceled";
}

std::string reopen_job(engine::Stores& stores, const std::string& job_id) {
  return change_state(stores, job_id, {"running", "paused", "aborted"}, "running", "resumed");
}

std::int64_t retry_failed(engine::Stores& stores, const engine::Clock& clock,
                          const std::string& job_id, std::int64_t new_deadline) {
  auto job = stores.find_job(job_id);
  if (!job) throw Error(ErrorCode::kNotFound, "no job '" + job_id + "'");
  if (job->state == "canceled") {
    throw Error(ErrorCode::kInvalidArgument, "job " + job_id + " is " + job->state);
  }
  const std::int64_t now = clock.now();
  if (new_deadline != 0 && new_deadline <= now) {
    throw Error(ErrorCode::kInvalidArgument,
                "job " + job_id + ": the new deadline must be in the future");
  }
  RolloverParams params = parse_params(job->params_json, "job " + job_id + " parameters");
  if (new_deadline != 0 || (params.deadline != 0 && params.deadline <= now)) {
    params.deadline = new_deadline != 0 ? new_deadline : now + 86400;
    stores.set_job_params(job_id, params_json(params));
  }
  std::vector<JobTask> again;
  std::int64_t retried = 0;
  const auto busy = held_devices(stores);
  for (auto& task : stores.job_tasks(job_id, "")) {
    if (task.state != "offline" && task.state != "refused" && task.state != "timed-out" &&
        task.state != "aborted") {
      continue;
    }
    // Offline with a retry to come: still its runner's (it retries until the deadline).
    if (task.state == "offline" && task.next_at != 0) continue;
    // Taken by another job since (the scheduler, a new rollover): that job rotates it; sending it
    // here too would rotate it twice. It stays as it ended, with a note.
    if (const auto b = busy.find(task.device_id); b != busy.end() && b->second != job_id) {
      if (task.last_error.find("is in job " + b->second) == std::string::npos) {
        task.last_error += "; not retried: the device is in job " + b->second;
        task.updated_at = clock.now();
        again.push_back(std::move(task));
      }
      continue;
    }
    task.state = "pending";
    task.attempts = 0;
    task.next_at = 0;
    task.finished_at = 0;
    task.updated_at = clock.now();
    again.push_back(std::move(task));
    ++retried;
  }
  stores.save_job_tasks(again, {});
  if (job->state != "running") stores.set_job_state(job_id, "running", 0);
  return retried;
}

}  // namespace fleetsign::jobs
