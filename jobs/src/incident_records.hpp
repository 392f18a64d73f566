// Incident runs (incident.hpp): what the job's phases read and record of the job and of the
// incident, and the certificates an incident's close revokes.
#pragma once

#include <Poco/JSON/Object.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fleetsign/engine/stores.hpp"
#include "fleetsign/jobs/incident.hpp"

namespace fleetsign::jobs::incident_records {

std::string report_text(const Poco::JSON::Object& report);
// The job's report (kRegistryError when it is not JSON).
Poco::JSON::Object::Ptr report_of(const engine::JobRecord& job);
// The incident job `job_id` (kNotFound; kInvalidArgument for another kind of job).
engine::JobRecord job_of(engine::Stores& stores, const std::string& job_id);
// Records the report with its phase set to `phase`.
void set_phase(engine::Stores& stores, const std::string& job_id, Poco::JSON::Object::Ptr report,
               const std::string& phase);

std::optional<engine::Incident> open_incident_for(engine::Stores& stores, const std::string& kind,
                                                  const std::string& scope);

// The issued certificates of a scope that an incident revokes when it closes: those recorded
// until the second it opened (`until`), less the replacements of the jobs that ran it (`jobs`):
// the job that opened it (its ID is on the incident, and the broker admits that job's
// certificates as replacements) and the one that closes it, when another job took the open
// incident over. Empty IDs are ignored.
std::vector<std::string> revoked_at_close(engine::Stores& stores, const std::string& kind,
                                          const std::string& scope,
                                          const std::vector<std::string>& jobs, std::int64_t until);

// The unfinished job of an earlier run of the same request, which a new start continues; empty
// when there is none.
std::string continuing_job(engine::Stores& stores, const IncidentRequest& request);

// A CA named with --replacement-ca must be able to take the compromised CA's place (a working CA
// of this registry, outside the compromised subtree, issued by the compromised CA's issuer);
// kInvalidArgument naming what is wrong otherwise.
void check_named_replacement(engine::Stores& stores, const engine::CaRecord& compromised,
                             const engine::CaRecord& replacement);

}  // namespace fleetsign::jobs::incident_records
