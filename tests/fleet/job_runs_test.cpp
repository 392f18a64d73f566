// Job runs from the command line: the rollout's options, and a job shared by several runners.
//
// A job shared by several runners is judged as one job: the abort threshold counts the devices
// every runner settled, not each runner's own part. The job's runner here is the real binary
// (`job resume`); the other runner is played through the registry's job store, as a worker on
// another machine would act on it. The devices are never connected (each one is offline for the
// runner that holds it), so only the other runner's refusals can cross the threshold.
#include <Poco/JSON/Object.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <sstream>

#include "cli_process.hpp"
#include "enrollment_support.hpp"
#include "fleet_support.hpp"
#include "fleetsign/engine/registry.hpp"
#include "registry_backend.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::json;
using testing::quoted;

class JobRuns : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";
  testing::Binary bin{home};
  int port = testing::free_port();

  void SetUp() override {
    testing::init_fleet_home(bin, dir.path(), port, FLEETSIGN_PLUGIN_PATH);
    bin.ok("issue --ca factory-1 --generate 12 --id-pattern 'dev-{02}' --lot L1 --out " +
           quoted((dir.path() / "L1").string()));
  }
  void TearDown() override { bin.run("broker stop"); }

  // `job show` exits 13 for a settled job that left devices behind: its JSON is what counts.
  Object::Ptr job(const std::string& id) { return json(bin.run("job show " + id + " --json").out); }

  // Whether `p` exited within `seconds` (reaped when it did).
  static bool exits_within(testing::CliProcess& p, int seconds) {
    for (int i = 0; i < seconds * 10; ++i) {
      if (!p.running()) {
        p.wait();
        return true;
      }
      ::usleep(100000);
    }
    return false;
  }
};

TEST_F(JobRuns, AnotherRunnersFailuresCrossTheJobsAbortThreshold) {
  // 12 devices at 6 a minute: the runner claims 8 at its start and leaves 4 to the other one.
  const std::string id =
      json(bin.ok("rollover start --group fleet --no-run --rate 6/min --deadline 60s "
                  "--offline-retry 1 --abort-if-failed 50 --min-executed 3 --json")
               .out)
          ->getValue<std::string>("id");
  bin.ok("broker start");  // the runner's method calls go through it
  testing::CliProcess runner(home, {"job", "resume", id});
  ASSERT_GT(runner.pid(), 0);
  auto reg = engine::Registry::open(test::home_registry_location(home));
  for (int i = 0; job(id)->optValue<std::string>("runner", "").empty(); ++i) {
    ASSERT_LT(i, 300) << "the runner never took the job";
    ::usleep(100000);
  }
  ::usleep(300000);  // its first claim, after it took the lease

  // The other runner joins, claims what is left, and its devices all refuse the rotation.
  const std::string other = "elsewhere:4242";
  const std::int64_t now = reg->registry_time();
  reg->join_job(id, other, now);
  auto mine = reg->claim_job_tasks(id, other, now - 15, 1000, 0);
  ASSERT_EQ(mine.size(), 4u) << "the runner should have claimed 8 of the 12 devices";
  for (auto& t : mine) {
    t.state = "refused";
    t.last_error = "the device answered 500";
    t.finished_at = now;
  }
  reg->save_job_tasks(mine, {});

  // 4 of the job's 4 settled devices failed: the runner stops the whole job, its own devices too.
  ASSERT_TRUE(exits_within(runner, 20)) << "the runner did not stop the job within 20 s";
  const auto shown = job(id);
  std::ostringstream text;
  shown->stringify(text);
  EXPECT_EQ(shown->getValue<std::string>("state"), "aborted") << text.str();
  EXPECT_TRUE(shown->has("finishedAt")) << text.str();
  const auto states = shown->getObject("states");
  EXPECT_EQ(states->optValue<int>("refused", 0), 4) << text.str();
  // The runner's own 8: stopped before their rotation, or left offline (never connected).
  EXPECT_EQ(states->optValue<int>("aborted", 0) + states->optValue<int>("offline", 0), 8)
      << text.str();
  EXPECT_GE(states->optValue<int>("aborted", 0), 1) << text.str();
  EXPECT_FALSE(states->has("pending") || states->has("active")) << text.str();
  EXPECT_NE(text.str().find("4 of 4 devices failed"), std::string::npos) << text.str();
}

// Two workers run a job; the lease's holder is killed. The helper takes over the holder's devices
// and, with nothing left to claim and the holder gone, takes the lease and ends the job itself:
// no serve need be running for the job to end.
TEST_F(JobRuns, AHelperWhoseHolderDiedEndsTheJob) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  bin.ok("broker start");
  bin.ok("worker clone " + quoted((dir.path() / "w1").string()));
  const std::string id =
      json(bin.ok("rollover start --group fleet --no-run --rate 6/min --deadline 8s "
                  "--offline-retry 1 --json")
               .out)
          ->getValue<std::string>("id");
  testing::CliProcess holder(home, {"job", "resume", id});
  for (int i = 0; job(id)->optValue<std::string>("runner", "").empty(); ++i) {
    ASSERT_LT(i, 300) << "no runner took the job";
    ::usleep(100000);
  }
  testing::CliProcess helper(dir.path() / "w1", {"job", "resume", id});
  const std::string members = "SELECT COUNT(*) FROM job_runners WHERE job_id = '" + id + "'";
  for (int i = 0; test::raw_query(test::home_registry_location(home), members).at(0).at(0) != "2";
       ++i) {
    ASSERT_LT(i, 300) << "the second worker never joined the job";
    ::usleep(100000);
  }
  holder.kill_now();
  ASSERT_TRUE(exits_within(helper, 60)) << "the helper did not end within 60 s";
  const auto shown = job(id);
  std::ostringstream text;
  shown->stringify(text);
  EXPECT_EQ(shown->getValue<std::string>("state"), "finished") << text.str();
  EXPECT_TRUE(shown->has("finishedAt")) << text.str();
  const auto states = shown->getObject("states");
  EXPECT_FALSE(states->has("pending") || states->has("active")) << text.str();
}

// --rate takes devices per minute, written N or N/min, or per second, N/s; anything else is a
// usage error that names the option, and no job is recorded.
TEST_F(JobRuns, RateIsPerMinuteOrPerSecondAndAnythingElseIsRefused) {
  auto rate_of = [&](const std::string& rate) {
    const auto started = json(bin.ok("rollover start --lot L1 --no-run --json --rate " + rate).out);
    const std::string id = started->getValue<std::string>("id");
    bin.ok("job cancel " + id);
    return job(id)->getObject("params")->getValue<int>("perMinute");
  };
  EXPECT_EQ(rate_of("120"), 120);
  EXPECT_EQ(rate_of("120/min"), 120);
  EXPECT_EQ(rate_of("5/s"), 300);
  for (const char* bad :
       {"0", "-5", "1.5/min", "5/h", "/min", "ten", "5/s/s", "99999999/s", "1e3", ""}) {
    const auto out = bin.run("rollover start --lot L1 --no-run --rate '" + std::string(bad) + "'");
    EXPECT_EQ(out.status, 2) << bad << ": " << out.err;
    EXPECT_NE(out.err.find("--rate"), std::string::npos) << bad << ": " << out.err;
  }
  EXPECT_EQ(json(bin.ok("job list --json").out)->getArray("jobs")->size(), 3u);
}

}  // namespace
}  // namespace fleetsign
