// What a CA rollover refuses before it makes anything (jobs/rollover.hpp): a new CA whose devices
// the broker would refuse (neither it nor a CA above it verified: only the old intermediate was),
// and a group whose devices another job still holds (they would be conflicts, and the swap at the
// end would leave them under a CA that no slot trusts). The same request after a crash continues.
#include <gtest/gtest.h>

#include "enrollment_support.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {
namespace {

class CaRolloverGuard : public ::testing::Test {
 protected:
  testing::TestHome th;
  CaRolloverRequest request;

  void SetUp() override {
    th.make_hierarchy();
    engine::EnrollmentService(*th.registry, th.policy, th.clock).create_group("line", "int1", "");
    testing::issue_device(th, "int1", "cg-0001", "LOT-C");
    testing::issue_device(th, "int1", "cg-0002", "LOT-C");
    request.group = "line";
    request.new_name = "int1-next";
  }
  Error refused() {
    const Error e = testing::error_from(
        [&] { start_ca_rollover(*th.registry, *th.cas, th.policy, th.clock, request); });
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    EXPECT_FALSE(th.registry->find_ca("int1-next")) << "nothing is made when it is refused";
    const auto g = engine::EnrollmentService(*th.registry, th.policy, th.clock).group("line");
    EXPECT_EQ(g.primary_ca, "int1");
    EXPECT_TRUE(g.secondary_ca.empty());
    return e;
  }
};

TEST_F(CaRolloverGuard, ANewCaTheBrokerWouldRefuseIsNotMade) {
  th.registry->set_ca_verified("int1", true);  // the usual DPS set-up: the intermediate only
  const std::string why = refused().what();
  EXPECT_NE(why.find("ca-not-verified"), std::string::npos) << why;
  EXPECT_NE(why.find("ca verify root"), std::string::npos) << why;
  th.registry->set_ca_verified("root", true);
  const auto started = start_ca_rollover(*th.registry, *th.cas, th.policy, th.clock, request);
  EXPECT_TRUE(started.ca_created);
  EXPECT_EQ(started.plan.devices.size(), 2u);
  EXPECT_EQ(started.plan.conflicts, 0);
}

// A new CA that ends before the devices' new certificates: every device would be a conflict,
// and the swap at the deadline would lock the whole group out.
TEST_F(CaRolloverGuard, ANewCaThatEndsBeforeTheDevicesNewCertificatesIsNotMade) {
  th.registry->set_ca_verified("root", true);
  request.days = 100;  // the devices' certificates last 365 days
  const std::string why = refused().what();
  EXPECT_NE(why.find("--days 366"), std::string::npos) << why;
  request.days = 365;  // a CA is backdated a minute: it would end a minute before them
  refused();
  request.days = 400;
  EXPECT_EQ(start_ca_rollover(*th.registry, *th.cas, th.policy, th.clock, request).plan.conflicts,
            0);
}

TEST_F(CaRolloverGuard, DevicesHeldByAnotherJobAreWaitedForNotLeftBehind) {
  th.registry->set_ca_verified("root", true);
  RolloverParams params;
  params.selection.group = "line";
  const RolloverPlan plan = plan_rollover(*th.registry, th.policy, th.clock, params);
  const std::string other = create_job(*th.registry, th.clock, params, plan);  // as --no-run
  const std::string why = refused().what();
  EXPECT_NE(why.find(other + " (2 devices)"), std::string::npos) << why;
  EXPECT_NE(why.find("job cancel"), std::string::npos) << why;

  th.registry->set_job_state(other, "canceled", th.clock.now());
  const auto started = start_ca_rollover(*th.registry, *th.cas, th.policy, th.clock, request);
  EXPECT_EQ(started.plan.conflicts, 0);
  // The same request again (a crash after the job was made): its own job holds the devices now,
  // and it is continued, not refused.
  const auto again = start_ca_rollover(*th.registry, *th.cas, th.policy, th.clock, request);
  EXPECT_EQ(again.job_id, started.job_id);
  EXPECT_FALSE(again.ca_created);
}

// `rollover ca --group G` without --name, run again after a crash on a later UTC day: the new CA
// an earlier run put into the free slot is continued, not refused as "both slots hold CAs".
TEST_F(CaRolloverGuard, TheSameRequestOnALaterDayContinuesTheEarlierRun) {
  th.registry->set_ca_verified("root", true);
  request.new_name.clear();
  engine::FixedClock day1(th.clock.now());
  const auto first = start_ca_rollover(*th.registry, *th.cas, th.policy, day1, request);
  EXPECT_EQ(first.new_ca.rfind("int1-r", 0), 0u) << first.new_ca;
  engine::FixedClock day2(day1.now() + 86400);
  const auto again = start_ca_rollover(*th.registry, *th.cas, th.policy, day2, request);
  EXPECT_EQ(again.new_ca, first.new_ca);
  EXPECT_EQ(again.job_id, first.job_id);
  EXPECT_FALSE(again.ca_created);
}

}  // namespace
}  // namespace fleetsign::jobs
