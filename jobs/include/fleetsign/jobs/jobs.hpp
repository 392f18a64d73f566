// fleetsign::jobs — persisted multi-step operations over many devices (expiry scans, rollovers,
// revocation runs) and the triggers that reach devices. Empty until those issues land.
#pragma once

namespace fleetsign::jobs {
// Version of the job-store format this build understands.
int job_store_version() noexcept;
}  // namespace fleetsign::jobs
