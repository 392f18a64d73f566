// CA rollover jobs (rollover.hpp): a new intermediate in the group's free slot, a device rollover
// under it, and the slot swap at the end. Each step checks what is already done, so the same
// request after a crash continues instead of making a second CA.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <ctime>
#include <map>
#include <sstream>

#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {

namespace {

using engine::Slot;

std::string today(const engine::Clock& clock) {
  const std::time_t t = static_cast<std::time_t>(clock.now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y%m%d", &tm);
  return buf;
}

// The old CA's subject with " {stamp}" appended to its CN ("/CN=Factory 1/O=X" →
// "/CN=Factory 1 20261126/O=X"); "/CN={stamp}" appended when it has no CN.
std::string renamed_subject(const std::string& subject, const std::string& stamp) {
  const auto cn = subject.find("/CN=");
  if (cn == std::string::npos) return subject + "/CN=" + stamp;
  auto end = subject.find('/', cn + 4);
  if (end == std::string::npos) end = subject.size();
  std::string out = subject;
  out.insert(end, " " + stamp);
  return out;
}

std::string report_json(const std::string& group, const std::string& old_ca,
                        const std::string& new_ca, const std::string& new_slot,
                        const std::string& phase) {
  Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("group", group);
  o.set("oldCa", old_ca);
  o.set("newCa", new_ca);
  o.set("newSlot", new_slot);
  o.set("phase", phase);
  std::ostringstream s;
  o.stringify(s);
  return s.str();
}

// The CA that makes the new one admitted as DPS does: the new CA itself when it exists verified,
// else the first verified CA above it (from its issuer up); empty when there is none.
std::string vouching_ca(engine::Stores& stores, const std::string& new_name,
                        const std::string& issuer) {
  if (const auto n = stores.find_ca(new_name); n && n->verified) return new_name;
  std::string name = issuer;
  for (int depth = 0; !name.empty() && depth < 16; ++depth) {
    const auto ca = stores.find_ca(name);
    if (!ca) break;
    if (ca->verified) return name;
    name = ca->parent;
  }
  return "";
}

// The ID of the CA rollover job an earlier run of this request made (continued, not made again);
// empty when there is none. A canceled or aborted one is not continued.
std::string earlier_job(engine::Stores& stores, const std::string& group,
                        const std::string& new_name) {
  for (const auto& job : stores.list_jobs(engine::ListPage{})) {
    if (job.kind != "ca-rollover" || job.state == "canceled" || job.state == "aborted") continue;
    try {
      Poco::JSON::Parser parser;
      auto r = parser.parse(job.report_json).extract<Poco::JSON::Object::Ptr>();
      if (r->optValue<std::string>("newCa", "") == new_name &&
          r->optValue<std::string>("group", "") == group) {
        return job.id;
      }
    } catch (const Poco::Exception&) {
    }
  }
  return "";
}

// Refuses a CA rollover that would lock the group's devices out: one whose new CA the broker
// would refuse (neither it nor a CA above it verified), or one whose devices another job still
// holds (they would be conflicts, and the swap at the end would leave them behind under a CA
// that is no longer in a slot).
// Also one whose new CA ends before the devices' new certificates would: every device would be
// a conflict, and the swap at the end would leave them all under a CA no slot holds.
void check_ca_rollover(engine::Stores& stores, const policy::Policy& policy,
                       const engine::Clock& clock, const std::string& group,
                       const std::string& new_name, const engine::CaRecord& old,
                       const RolloverParams& base, std::optional<int> days) {
  const std::int64_t now = clock.now();
  const auto existing = stores.find_ca(new_name);
  const int ca_days = days.value_or(policy.validity.intermediate_days);
  // A CA is made backdated by a minute (CaService): `days` of it end a minute before `days` from
  // now. An hour's margin covers the time until the job's plan compares the two again.
  const std::int64_t ca_end =
      existing ? existing->not_after : now - 60 + std::int64_t{ca_days} * 86400;
  const int device_days = policy::device_days_for(policy, group);
  const std::int64_t wanted = now + std::int64_t{device_days} * 86400;
  if (ca_end < wanted + 3600) {
    throw Error(ErrorCode::kInvalidArgument,
                "group '" + group + "': the new CA '" + new_name + "' " +
                    (existing ? "ends " : "would end ") + engine::iso8601(ca_end) +
                    ", before the devices' new certificates (" + std::to_string(device_days) +
                    " days, to " + engine::iso8601(wanted) +
                    "): no device could be rotated under it, and the swap would lock the group "
                    "out. " +
                    (existing ? "Name a CA that lasts longer with --name"
                              : "Give --days " + std::to_string(device_days + 1) + " or more"));
  }
  if (vouching_ca(stores, new_name, old.parent).empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "group '" + group + "': the broker would refuse every device under the new CA '" +
                    new_name + "' (ca-not-verified): neither it nor a CA above it ('" + old.parent +
                    "'…) has proved possession of its key, as DPS requires ('" + old.name +
                    "' is verified on its own). Verify '" + old.parent +
                    "' (fleetsign ca verification-cert --ca " + old.parent +
                    " --code CODE --out F, then fleetsign ca verify " + old.parent +
                    " --code CODE --cert F), or create the new CA, verify it and name it with "
                    "--name");
  }
  RolloverParams params = base;
  params.ca.clear();
  params.selection = Selection{};
  params.selection.group = group;
  std::map<std::string, std::int64_t> held;  // other job → devices of the group it holds
  for (const auto& d : plan_rollover(stores, policy, clock, params).devices) {
    if (!d.held_by.empty()) ++held[d.held_by];
  }
  if (held.empty()) return;
  std::string jobs;
  for (const auto& [id, n] : held) {
    jobs += (jobs.empty() ? "" : ", ") + id + " (" + std::to_string(n) + " devices)";
  }
  throw Error(ErrorCode::kInvalidArgument,
              "group '" + group + "': its devices are in jobs that have not settled them: " + jobs +
                  ". A CA rollover now would leave them behind when the old CA leaves its slot: "
                  "let those jobs finish (fleetsign job resume JOB) or cancel them (fleetsign "
                  "job cancel JOB) first");
}

}  // namespace

CaRolloverStart start_ca_rollover(engine::Stores& stores, engine::CaService& cas,
                                  const policy::Policy& policy, const engine::Clock& clock,
                                  const CaRolloverRequest& request) {
  engine::EnrollmentService enrollments(stores, policy, clock);
  engine::EnrollmentGroup group = enrollments.group(request.group);  // kNotFound
  std::string new_name = request.new_name;
  if (new_name.empty()) {
    // "{old}-r{YYYYMMDD}"; one that an earlier run of this request put into the other slot (on
    // an earlier day, before a crash) is continued.
    new_name = group.primary_ca + "-r" + today(clock);
    for (const auto& [from, to] : {std::pair{group.primary_ca, group.secondary_ca},
                                   std::pair{group.secondary_ca, group.primary_ca}}) {
      const std::string prefix = from + "-r";
      if (!from.empty() && to.size() == prefix.size() + 8 && to.rfind(prefix, 0) == 0 &&
          to.find_first_not_of("0123456789", prefix.size()) == std::string::npos) {
        new_name = to;
      }
    }
  }

  // Which slot holds the CA being replaced, and which is free (or already holds the new one).
  std::string old_ca;
  Slot new_slot = Slot::kSecondary;
  if (!group.primary_ca.empty() && group.primary_ca != new_name) {
    old_ca = group.primary_ca;
    new_slot = Slot::kSecondary;
  } else if (!group.secondary_ca.empty() && group.secondary_ca != new_name) {
    old_ca = group.secondary_ca;
    new_slot = Slot::kPrimary;
  }
  if (old_ca.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "group '" + request.group + "' has no CA in a slot to roll over");
  }
  const std::string& in_new_slot =
      new_slot == Slot::kPrimary ? group.primary_ca : group.secondary_ca;
  if (!in_new_slot.empty() && in_new_slot != new_name) {
    throw Error(ErrorCode::kInvalidArgument,
                "group '" + request.group + "': both slots hold CAs ('" + group.primary_ca +
                    "', '" + group.secondary_ca +
                    "'); a CA rollover needs the free slot: clear one first");
  }
  const engine::CaRecord old = cas.get(old_ca);
  if (old.parent.empty() || engine::is_external(old)) {
    throw Error(ErrorCode::kInvalidArgument,
                "group '" + request.group + "' trusts CA '" + old_ca + "', which is " +
                    (old.parent.empty() ? "a root" : "external") +
                    ": a CA rollover replaces an intermediate of this registry");
  }

  // A request that got as far as its job before a crash continues; a new one is checked first.
  const std::string earlier = earlier_job(stores, request.group, new_name);
  if (earlier.empty()) {
    check_ca_rollover(stores, policy, clock, request.group, new_name, old, request.params,
                      request.days);
  }

  CaRolloverStart out;
  out.old_ca = old_ca;
  out.new_ca = new_name;
  out.new_slot = std::string(engine::slot_name(new_slot));
  if (!stores.find_ca(new_name)) {
    engine::CaSpec spec;
    spec.name = new_name;
    spec.issuer = old.parent;
    // Not the old subject itself: two CAs of one name would leave chain building to key IDs.
    spec.subject =
        request.subject.empty() ? renamed_subject(old.subject, today(clock)) : request.subject;
    spec.key = request.key;
    spec.days = request.days;
    cas.create_intermediate(spec);
    out.ca_created = true;
  } else if (stores.find_ca(new_name)->parent != old.parent) {
    throw Error(ErrorCode::kAlreadyExists,
                "a CA named '" + new_name + "' exists with another issuer; choose --name");
  }
  // Its first CRL before any device connects under it: the broker refuses a device whose issuer
  // has no CRL in its CRL file (the caller installs the file).
  if (!stores.latest_crl(new_name)) {
    engine::refresh_crls(stores, cas, policy.crl, clock, std::span(&new_name, 1));
  }
  if (in_new_slot != new_name) enrollments.set_group_slot(request.group, new_slot, new_name);

  if (!earlier.empty()) {
    out.job_id = earlier;
    return out;
  }

  RolloverParams params = request.params;
  params.kind = "ca-rollover";
  params.ca = new_name;
  params.selection = Selection{};
  params.selection.group = request.group;
  out.plan = plan_rollover(stores, policy, clock, params);
  out.job_id = create_job(stores, clock, params, out.plan);
  stores.set_job_report(out.job_id,
                        report_json(request.group, old_ca, new_name, out.new_slot, "rolling"));
  return out;
}

void finish_ca_rollover(engine::Stores& stores, const policy::Policy& policy,
                        const engine::Clock& clock, const std::string& job_id) {
  const auto job = stores.find_job(job_id);
  if (!job) throw Error(ErrorCode::kNotFound, "no job '" + job_id + "'");
  Poco::JSON::Object::Ptr r;
  try {
    Poco::JSON::Parser parser;
    r = parser.parse(job->report_json).extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kRegistryError, "job " + job_id + ": report: " + e.displayText());
  }
  if (r->optValue<std::string>("phase", "") == "finalized") return;
  const std::string group_name = r->getValue<std::string>("group");
  const std::string old_ca = r->getValue<std::string>("oldCa");
  const std::string new_ca = r->getValue<std::string>("newCa");
  engine::EnrollmentService enrollments(stores, policy, clock);
  engine::EnrollmentGroup group = enrollments.group(group_name);
  // One transaction: the new CA becomes the primary as the old one leaves (no moment in which
  // the group trusts neither, or still both).
  if (group.primary_ca != new_ca || !group.secondary_ca.empty()) {
    group.primary_ca = new_ca;
    group.secondary_ca.clear();
    stores.save_group(group, "enrollment.group.ca-rollover", false);
  }
  // The devices left behind lost their way in with the old CA: their report says so (idempotent:
  // a finish interrupted after the swap annotates them once when it runs again).
  const std::string note = "; CA " + old_ca + " has left group " + group_name +
                           ", so this device cannot connect until it is re-provisioned";
  std::vector<engine::JobTask> behind;
  for (auto& task : stores.job_tasks(job_id, "")) {
    if (task.state == "done" || !is_final_task_state(task.state)) {
      continue;
    }
    if (task.last_error.find(note) != std::string::npos) continue;
    task.last_error += note;
    task.updated_at = clock.now();
    behind.push_back(std::move(task));
  }
  if (!behind.empty()) stores.save_job_tasks(behind, {});
  stores.set_job_report(job_id, report_json(group_name, old_ca, new_ca,
                                            r->optValue<std::string>("newSlot", ""), "finalized"));
}

}  // namespace fleetsign::jobs
