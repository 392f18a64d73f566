// CA rollover jobs (rollover.hpp): a new intermediate in the group's free slot, a device rollover
// under it, and the slot swap at the end. Each step checks what is already done, so the same
// request after a crash continues instead of making a second CA.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <ctime>
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

}  // namespace

CaRolloverStart start_ca_rollover(engine::Stores& stores, engine::CaService& cas,
                                  const policy::Policy& policy, const engine::Clock& clock,
                                  const CaRolloverRequest& request) {
  engine::EnrollmentService enrollments(stores, policy, clock);
  engine::EnrollmentGroup group = enrollments.group(request.group);  // kNotFound
  const std::string new_name =
      request.new_name.empty() ? group.primary_ca + "-r" + today(clock) : request.new_name;

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

  // An earlier run of the same request that got this far has its job already.
  for (const auto& job : stores.list_jobs(engine::ListPage{})) {
    // A canceled or aborted one is not continued: a new job takes the group's devices again.
    if (job.kind != "ca-rollover" || job.state == "canceled" || job.state == "aborted") continue;
    try {
      Poco::JSON::Parser parser;
      auto r = parser.parse(job.report_json).extract<Poco::JSON::Object::Ptr>();
      if (r->optValue<std::string>("newCa", "") == new_name &&
          r->optValue<std::string>("group", "") == request.group) {
        out.job_id = job.id;
        return out;
      }
    } catch (const Poco::Exception&) {
    }
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
    if (task.state == "done" || task.state == "conflict" || !is_final_task_state(task.state)) {
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
