// A device stays its job's however many jobs came after (jobs/rollover.hpp, jobs/incident.hpp):
// the plans read the whole job history, not the newest page of it. The scheduler of a fleet with
// many groups makes jobs every day, so a paused job soon lies behind a thousand newer ones.
#include <gtest/gtest.h>

#include "enrollment_support.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/jobs/incident.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {
namespace {

class JobHistory : public ::testing::Test {
 protected:
  testing::TestHome th;
  std::string serial;
  const std::string paused_job = "roll-20260101-000000-aaaaaa";

  void SetUp() override {
    th.make_hierarchy();
    engine::EnrollmentService(*th.registry, th.policy, th.clock).create_group("fleet", "int1", "");
    serial = testing::issue_device(th, "int1", "jh-0001", "LOT-H");

    // A job paused with the device half-way (its CSR signed), then 1,001 newer settled jobs.
    engine::JobRecord paused;
    paused.id = paused_job;
    paused.kind = "device-rollover";
    paused.state = "paused";
    paused.params_json = "{}";
    paused.created_at = th.clock.now() - 86400;
    engine::JobTask task;
    task.device_id = "jh-0001";
    task.state = "active";
    task.step = "sign";
    task.target_slot = "secondary";
    task.old_serial = serial;
    th.registry->create_job(paused, std::span(&task, 1));
    for (int i = 0; i < 1001; ++i) {
      engine::JobRecord done;
      char id[64];
      std::snprintf(id, sizeof id, "roll-20260102-000000-%06d", i);
      done.id = id;
      done.kind = "device-rollover";
      done.state = "finished";
      done.params_json = "{}";
      done.created_at = th.clock.now();
      th.registry->create_job(done, {});
    }
    ASSERT_EQ(th.registry->list_jobs({.limit = 1000, .after = {}}).back().id,
              "roll-20260102-000000-000001")
        << "the paused job must lie beyond the newest 1,000";
  }
};

TEST_F(JobHistory, ARolloverPlanSeesAPausedJobBehindAThousandNewerOnes) {
  RolloverParams params;
  params.selection.devices = {"jh-0001"};
  const RolloverPlan plan = plan_rollover(*th.registry, th.policy, th.clock, params);
  ASSERT_EQ(plan.devices.size(), 1u);
  EXPECT_NE(plan.devices[0].conflict.find(paused_job), std::string::npos)
      << "a second job would take the device from the paused one: '" << plan.devices[0].conflict
      << "'";
  EXPECT_EQ(plan.conflicts, 1);
}

TEST_F(JobHistory, AnIncidentPlanSeesAPausedJobBehindAThousandNewerOnes) {
  IncidentRequest request;
  request.scope_kind = "lot";
  request.scope = "LOT-H";
  request.reason = "affiliationChanged";
  const IncidentPlan plan = plan_incident(*th.registry, th.policy, th.clock, request);
  ASSERT_EQ(plan.devices.size(), 1u);
  EXPECT_EQ(plan.devices[0].action, "conflict");
  EXPECT_NE(plan.devices[0].why.find(paused_job), std::string::npos) << plan.devices[0].why;
  EXPECT_EQ(plan.rotate, 0);
}

}  // namespace
}  // namespace fleetsign::jobs
