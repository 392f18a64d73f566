// Incident runs: see incident_records.hpp.
#include "incident_records.hpp"

#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <iterator>
#include <sstream>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::jobs::incident_records {

using Poco::JSON::Object;

std::string report_text(const Object& o) {
  std::ostringstream s;
  o.stringify(s);
  return s.str();
}

Object::Ptr report_of(const engine::JobRecord& job) {
  try {
    Poco::JSON::Parser parser;
    return parser.parse(job.report_json).extract<Object::Ptr>();
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kRegistryError, "job " + job.id + ": report: " + e.displayText());
  }
}

engine::JobRecord job_of(engine::Stores& stores, const std::string& job_id) {
  auto job = stores.find_job(job_id);
  if (!job) throw Error(ErrorCode::kNotFound, "no job '" + job_id + "'");
  if (job->kind != "incident") {
    throw Error(ErrorCode::kInvalidArgument, "job " + job_id + " is a " + job->kind);
  }
  return *job;
}

void set_phase(engine::Stores& stores, const std::string& job_id, Object::Ptr report,
               const std::string& phase) {
  report->set("phase", phase);
  stores.set_job_report(job_id, report_text(*report));
}

std::optional<engine::Incident> open_incident_for(engine::Stores& stores, const std::string& kind,
                                                  const std::string& scope) {
  for (auto& i : stores.list_incidents(true)) {
    if (i.scope_kind == kind && i.scope == scope) return i;
  }
  return std::nullopt;
}

std::vector<std::string> revoked_at_close(engine::Stores& stores, const std::string& kind,
                                          const std::string& scope,
                                          const std::vector<std::string>& jobs,
                                          std::int64_t until) {
  auto serials = stores.issued_serials_in_scope(kind, scope, jobs.empty() ? "" : jobs[0], until);
  for (std::size_t i = 1; i < jobs.size(); ++i) {
    if (jobs[i].empty() || jobs[i] == jobs[0]) continue;
    auto other = stores.issued_serials_in_scope(kind, scope, jobs[i], until);
    // Sorted here: a PostgreSQL collation may order the serials otherwise.
    std::sort(serials.begin(), serials.end());
    std::sort(other.begin(), other.end());
    std::vector<std::string> both;
    std::set_intersection(serials.begin(), serials.end(), other.begin(), other.end(),
                          std::back_inserter(both));
    serials = std::move(both);
  }
  return serials;
}

std::string continuing_job(engine::Stores& stores, const IncidentRequest& request) {
  for (const auto& job : stores.list_jobs(engine::ListPage{})) {
    if (job.kind != "incident" || job.state == "finished" || job.state == "canceled") continue;
    if (job.report_json.empty() || job.report_json == "{}") continue;
    const auto r = report_of(job);
    if (r->optValue<std::string>("scopeKind", "") == request.scope_kind &&
        r->optValue<std::string>("scope", "") == request.scope &&
        r->optValue<std::string>("phase", "") != "closed") {
      return job.id;
    }
  }
  return {};
}

// A CA named with --replacement-ca (or made by an earlier run) must be able to take the
// compromised CA's place: a working CA of this registry (not revoked, its key in the token),
// outside the compromised subtree, and issued by the compromised CA's own issuer, which the
// groups already trust (a CA under another issuer, the broker's service CA among them, would put
// a CA into the groups' slots that admits none of the devices). Checked before anything changes,
// so the dry run says it too.
void check_named_replacement(engine::Stores& stores, const engine::CaRecord& compromised,
                             const engine::CaRecord& r) {
  const std::string what = "--replacement-ca '" + r.name + "'";
  if (r.revoked_at != 0) {
    throw Error(ErrorCode::kInvalidArgument,
                what + " is revoked (" + r.revocation_reason + "): name a working CA");
  }
  if (engine::is_external(r)) {
    throw Error(ErrorCode::kInvalidArgument,
                what +
                    " is external: its key is not in the token, so it cannot sign the "
                    "devices' new certificates");
  }
  for (auto up = std::optional<engine::CaRecord>(r); up && !up->parent.empty();) {
    if (up->parent == compromised.name || up->name == compromised.name) {
      throw Error(ErrorCode::kInvalidArgument, what + " is under the compromised CA '" +
                                                   compromised.name + "': it is revoked with it");
    }
    if (up->parent == up->name) break;
    up = stores.find_ca(up->parent);
  }
  if (r.parent != compromised.parent) {
    throw Error(ErrorCode::kInvalidArgument,
                what + " is issued by '" + (r.parent.empty() ? r.name : r.parent) + "', not by '" +
                    compromised.parent +
                    "' (the compromised CA's issuer, which "
                    "its groups trust): leave --replacement-ca out to have one made there, or "
                    "name a CA that '" +
                    compromised.parent + "' issued");
  }
}

}  // namespace fleetsign::jobs::incident_records
