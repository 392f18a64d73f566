// Incident runs: see incident_records.hpp.
#include "incident_records.hpp"

#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <iterator>
#include <sstream>

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

}  // namespace fleetsign::jobs::incident_records
