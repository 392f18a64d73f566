#include "fleetsign/jobs/jobs.hpp"

namespace fleetsign::jobs {
int job_store_version() noexcept { return 0; }
}  // namespace fleetsign::jobs
