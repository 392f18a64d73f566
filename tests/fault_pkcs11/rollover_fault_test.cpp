// A rollover job end to end (`rollover start`, fleetsign's broker with its plugin, a fleet of the
// real device agent) whose signing step goes through a token that fails on purpose: the home's
// module is fleetsign-fault-pkcs11 in front of SoftHSM2. Transient session errors are retried
// and the job completes; a token that goes away, or a signature that does not verify, stops the
// job with a message naming `fleetsign job resume JOB`, and the resume completes it once the
// token is healthy. Afterwards every device holds exactly one certificate of the job, recorded,
// in its registry slot and in its flash, and it is connected with it.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "batch_support.hpp"
#include "fault_env.hpp"
#include "live_fleet.hpp"

namespace fleetsign::faulttest {
namespace {

using testing::json;

constexpr int kDevices = 30;

class RolloverFault : public testing::LiveFleet {
 protected:
  FaultEnv env;  // before the home: SOFTHSM2_CONF and the schedule file for every child

  std::string init_command() const override {
    return std::string("init --module ") + testing::quoted(kFaultModule) +
           " --token-label faulty --init-token";
  }

  // The only job of the home (a failed `rollover start` prints no report).
  std::string only_job() {
    const auto jobs = registry()->list_jobs({.limit = 10});
    EXPECT_EQ(jobs.size(), 1u);
    return jobs.empty() ? std::string() : jobs.front().id;
  }

  // Every device of the lot back on exactly one certificate of the job, and every certificate
  // the job recorded verifies under its CA; the devices' chains pass `auth check`.
  void expect_all_rolled(const std::string& job) {
    EXPECT_EQ(check_done_devices(job, "LOT-F", false), kDevices);
    auto reg = registry();
    EXPECT_EQ(static_cast<int>(reg->batch_issued_after(job, -1).size()), kDevices);
    EXPECT_TRUE(batchtest::unverified_certs(*reg, job).empty());
    const std::string flash = path("LOT-F-flash");
    for (int i = 1; i <= kDevices; i += 7) {
      char id[16];
      std::snprintf(id, sizeof id, "rf-%04d", i);
      const std::string chain =
          flash + "/" + id + "/" + testing::active_slot(flash, id) + ".chain.pem";
      const auto check =
          json(bin.run("auth check --chain " + testing::quoted(chain) + " --json").out);
      EXPECT_TRUE(check->getValue<bool>("allowed")) << id;
    }
  }
};

// Every 4th C_Sign fails with a session-level error: retried on a fresh session, the job
// completes in one run.
TEST_F(RolloverFault, TransientSignErrorsAreRetriedAndTheJobCompletes) {
  fleet("LOT-F", "rf", kDevices);
  ASSERT_EQ(wait_connected("rf", kDevices), kDevices);
  env.clear_log();
  env.schedule("sign:error=SESSION_HANDLE_INVALID:every=4");
  const auto out = bin.run("rollover start --lot LOT-F --json");
  ASSERT_EQ(out.status, 0) << out.out << out.err;
  EXPECT_GE(env.injected_count("CKR_SESSION_HANDLE_INVALID"), 3u) << "the faults were injected";
  env.schedule("");
  expect_all_rolled(json(out.out)->getValue<std::string>("id"));
}

// The token goes away (every C_Sign from the 5th on is CKR_DEVICE_REMOVED), or it signs wrongly
// (the 3rd signature has its first byte flipped): the job stops, naming the resume command;
// nothing unverifiable is recorded or installed; `job resume` completes it once the token is
// healthy.
struct TokenStop {
  const char* name;
  const char* schedule;
  const char* named;  // what the stop message names
};
constexpr TokenStop kTokenStops[] = {
    {"DeviceRemoved", "sign:error=DEVICE_REMOVED:from=5", "CKR_DEVICE_REMOVED"},
    {"WrongSignature", "sign:corrupt:at=3", "does not verify"},
};

// The parameter indexes kTokenStops (an int keeps the CTest names plain).
class RolloverTokenStop : public RolloverFault, public ::testing::WithParamInterface<int> {};

TEST_P(RolloverTokenStop, StopsTheJobAndJobResumeCompletesIt) {
  const auto [name, schedule, named] = kTokenStops[GetParam()];
  fleet("LOT-F", "rf", kDevices);
  ASSERT_EQ(wait_connected("rf", kDevices), kDevices);
  env.clear_log();
  env.schedule(schedule);
  const auto stopped = bin.run("rollover start --lot LOT-F --json");
  EXPECT_NE(stopped.status, 0) << stopped.out << stopped.err;
  const std::string job = only_job();
  ASSERT_FALSE(job.empty());
  EXPECT_NE(stopped.err.find(named), std::string::npos) << stopped.err;
  EXPECT_NE(stopped.err.find("fleetsign job resume " + job), std::string::npos) << stopped.err;
  EXPECT_GE(env.injected().size(), 1u);
  {
    // What the stop left: the job resumable, fewer than all done, and every certificate it
    // recorded verifies (a flipped signature is never recorded).
    auto reg = registry();
    EXPECT_EQ(reg->find_job(job)->state, "running");
    EXPECT_LT(static_cast<int>(reg->job_tasks(job, "done").size()), kDevices);
  }
  EXPECT_TRUE(batchtest::unverified_certs(*registry(), job).empty());

  env.schedule("");
  const auto resumed = bin.run("job resume " + job + " --json");
  ASSERT_EQ(resumed.status, 0) << resumed.out << resumed.err;
  expect_all_rolled(job);
}

INSTANTIATE_TEST_SUITE_P(Fault, RolloverTokenStop, ::testing::Values(0, 1),
                         [](const auto& info) { return kTokenStops[info.param].name; });

}  // namespace
}  // namespace fleetsign::faulttest
