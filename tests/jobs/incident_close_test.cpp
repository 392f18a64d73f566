// What an incident of a lot revokes when it closes (jobs/incident.hpp, finish_incident), over a
// real registry and token: the lot's certificates recorded until the incident opened, less the
// replacements of the jobs that ran it, and the dry run's count while it is open equals that.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "enrollment_support.hpp"
#include "fleetsign/engine/batch.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/jobs/incident.hpp"
#include "fleetsign/jobs/rollover.hpp"
#include "registry_backend.hpp"

namespace fleetsign::jobs {
namespace {

class IncidentClose : public ::testing::Test {
 protected:
  testing::TestHome th;
  // The incident opens after every certificate below was recorded: by time they all precede it,
  // so only a job's batch can make one a replacement.
  engine::FixedClock clock{std::time(nullptr) + 100};

  void SetUp() override {
    th.make_hierarchy();
    engine::EnrollmentService(*th.registry, th.policy, th.clock).create_group("fleet", "int1", "");
  }

  // A certificate of the lot that a job issued (its batch is the job's ID).
  std::string issued_by_job(const std::string& id, const std::string& job) {
    const std::string serial = testing::issue_device(th, "int1", id, "LOT-T");
    test::raw_query(th.registry_path_for_tests(), "UPDATE certificates SET batch_id = '" + job +
                                                      "' WHERE serial = '" + serial + "'");
    return serial;
  }

  engine::CertState state_of(const std::string& serial) {
    return th.registry->find_cert(serial)->state;
  }

  IncidentRequest request() {
    IncidentRequest r;
    r.scope_kind = "lot";
    r.scope = "LOT-T";
    r.reason = "affiliationChanged";
    return r;
  }
};

// The first job is canceled and a second one takes the open incident over. The close keeps the
// replacements of both (the first job's are what the broker admits as replacements: the incident
// keeps its ID), revokes the rest of the lot, and the dry run of the open incident counts exactly
// what the close revokes.
TEST_F(IncidentClose, KeepsTheReplacementsOfEveryJobThatRanIt) {
  const std::string old1 = testing::issue_device(th, "int1", "lt-0001", "LOT-T");
  const std::string old2 = testing::issue_device(th, "int1", "lt-0002", "LOT-T");
  const std::string other_lot = testing::issue_device(th, "int1", "lu-0001", "LOT-U");

  const IncidentStart first = start_incident(*th.registry, *th.cas, th.policy, clock, request());
  ASSERT_FALSE(first.job_id.empty());
  ASSERT_EQ(th.registry->find_incident(first.incident_id)->job_id, first.job_id);
  const std::string by_first = issued_by_job("lt-0003", first.job_id);
  cancel_job(*th.registry, first.job_id);

  const IncidentStart second = start_incident(*th.registry, *th.cas, th.policy, clock, request());
  ASSERT_NE(second.job_id, first.job_id);
  EXPECT_EQ(second.incident_id, first.incident_id) << "the second job continues the open incident";
  const std::string by_second = issued_by_job("lt-0004", second.job_id);

  // The dry run of the open incident: what its close will revoke.
  const IncidentPlan dry = plan_incident(*th.registry, th.policy, clock, request());
  EXPECT_EQ(dry.certificates, 2);
  EXPECT_EQ(dry.continues, second.job_id);

  finish_incident(*th.registry, *th.cas, th.policy, clock, second.job_id);
  EXPECT_EQ(state_of(old1), engine::CertState::kRevoked);
  EXPECT_EQ(state_of(old2), engine::CertState::kRevoked);
  EXPECT_EQ(state_of(by_first), engine::CertState::kIssued)
      << "the first job's replacement was revoked at the second job's close";
  EXPECT_EQ(state_of(by_second), engine::CertState::kIssued);
  EXPECT_EQ(state_of(other_lot), engine::CertState::kIssued);
  EXPECT_NE(th.registry->find_incident(first.incident_id)->closed_at, 0);
}

// The broker refuses a certificate of the scope recorded at or after the compromise time: its
// device can never come back for a rotation, so the plan sends it to the factory instead of
// counting it among the rotations (and the report listing it as offline).
TEST_F(IncidentClose, ACertificateRecordedAfterTheCompromiseGoesToTheFactory) {
  const std::string before = testing::issue_device(th, "int1", "lt-0001", "LOT-T");
  const std::string after = testing::issue_device(th, "int1", "lt-0002", "LOT-T");
  const std::int64_t recorded = th.registry->find_cert(after)->created_at;
  test::raw_query(th.registry_path_for_tests(),
                  "UPDATE certificates SET created_at = " + std::to_string(recorded - 100) +
                      " WHERE serial = '" + before + "'");
  for (const std::string kind : {"lot", "ca"}) {
    SCOPED_TRACE(kind);
    IncidentRequest r = request();
    if (kind == "ca") {
      r.scope_kind = "ca";
      r.scope = "int1";
      r.reason = "cACompromise";
    }
    r.compromised_at = recorded - 50;
    const IncidentPlan plan = plan_incident(*th.registry, th.policy, clock, r);
    ASSERT_EQ(plan.devices.size(), 2u);
    for (const auto& d : plan.devices) {
      EXPECT_EQ(d.action, d.device_id == "lt-0001" ? "rotate" : "factory") << d.device_id;
    }
    EXPECT_EQ(plan.rotate, 1);
    EXPECT_EQ(plan.factory, 1);
    const auto late = std::find_if(plan.devices.begin(), plan.devices.end(),
                                   [](const auto& d) { return d.device_id == "lt-0002"; });
    EXPECT_NE(late->why.find("not before the compromise"), std::string::npos) << late->why;
  }
}

// A batch may not pose as a job: its certificates would pass for the job's replacements.
TEST_F(IncidentClose, ABatchCannotTakeAJobsId) {
  engine::BatchOptions o;
  o.batch_id = "roll-20261129-120000-abcdef";
  o.ca_name = "int1";
  o.input.kind = engine::BatchInput::Kind::kGenerate;
  o.input.count = 1;
  o.input.id_pattern = "rb-{04}";
  o.out_dir = (th.dir.path() / "out").string();
  engine::BatchRunner runner(*th.registry, *th.cas, th.policy, th.clock, th.random);
  const Error e = testing::error_from([&] { runner.run(o, nullptr); });
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(std::string(e.what()).find("roll-"), std::string::npos) << e.what();
  EXPECT_EQ(th.registry->find_batch(o.batch_id), std::nullopt);
}

}  // namespace
}  // namespace fleetsign::jobs
