// `fleetsign serve` as the real binary: it starts a stopped broker (Debian's mosquitto with
// fleetsign's plugin, TLS client authentication), runs a job through a child `job resume`, creates
// the jobs the policy schedules and logs the expiry alerts, and stops cleanly on SIGTERM.
// The devices here are never connected (the device agent's rotation methods arrive on another
// branch): each job still runs through its child and records every device as offline.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ctime>
#include <fstream>
#include <sstream>

#include "cli_process.hpp"
#include "enrollment_support.hpp"
#include "fleet_support.hpp"
#include "registry_backend.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::quoted;

using testing::free_port;
using testing::json;

bool alive(pid_t pid) { return pid > 0 && ::kill(pid, 0) == 0; }

class Serve : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";
  testing::Binary bin{home};
  int port = free_port();

  void SetUp() override {
    testing::init_fleet_home(bin, dir.path(), port, FLEETSIGN_PLUGIN_PATH);
    bin.ok("issue --ca factory-1 --generate 3 --id-pattern 'dev-{02}' --lot L1 --out " +
           quoted(path("L1")));
  }
  void TearDown() override { bin.run("broker stop"); }

  std::string path(const std::string& name) const { return (dir.path() / name).string(); }

  bool broker_running() { return bin.run("broker status").status == 0; }

  // `job show` exits 13 for a settled job that left devices behind: its JSON is what counts.
  Object::Ptr job(const std::string& id) { return json(bin.run("job show " + id + " --json").out); }

  // Rewrites the home's policy.json with `rollover` as its "rollover" section.
  void set_rollover(const std::string& rollover) {
    const fs::path file = home / "policy.json";
    auto doc = json(testing::read_file(file));
    doc->set("rollover", json(rollover));
    std::ostringstream out;
    doc->stringify(out, 2);
    testing::write_file(file, out.str());
  }
};

TEST_F(Serve, OnceStartsTheStoppedBrokerAndRunsAJobThroughAChild) {
  const std::string id =
      json(bin.ok("rollover start --group fleet --no-run --deadline 4s --offline-retry 1 "
                  "--json")
               .out)
          ->getValue<std::string>("id");
  EXPECT_EQ(job(id)->getValue<std::string>("state"), "running");
  ASSERT_FALSE(broker_running());

  const auto served = bin.run("serve --once --json");
  ASSERT_EQ(served.status, 0) << served.err;
  const auto summary = json(served.out);
  EXPECT_EQ(summary->getValue<std::string>("broker"), "started");
  ASSERT_EQ(summary->getArray("jobs_spawned")->size(), 1u) << served.out;
  EXPECT_EQ(summary->getArray("jobs_spawned")->getElement<std::string>(0), id);
  EXPECT_NE(served.err.find("job " + id + ": running it in process"), std::string::npos)
      << served.err;
  EXPECT_NE(served.err.find("exited with status"), std::string::npos) << served.err;
  EXPECT_TRUE(broker_running());  // serve leaves it running

  // The child ran the job to its end: every device settled (never connected, so not rolled
  // before the deadline) and reported with its reason.
  const auto shown = job(id);
  std::ostringstream text;
  shown->stringify(text);
  EXPECT_EQ(shown->getValue<std::string>("state"), "finished") << text.str();
  EXPECT_EQ(shown->getValue<int>("total"), 3);
  const auto states = shown->getObject("states");
  EXPECT_FALSE(states->has("pending") || states->has("active")) << text.str();
  EXPECT_EQ(shown->getArray("notBack")->size(), 3u) << text.str();
  EXPECT_NE(text.str().find("the job's deadline passed"), std::string::npos) << text.str();

  // A second tick finds nothing left to run.
  const auto again = json(bin.ok("serve --once --json").out);
  EXPECT_EQ(again->getValue<std::string>("broker"), "running");
  EXPECT_EQ(again->getArray("jobs_spawned")->size(), 0u);
}

TEST_F(Serve, SchedulesTheRolloverThePolicyAsksForAndLogsAlerts) {
  set_rollover(R"({"enabled": true, "before_expiry_days": 400, "step_timeout_s": 2,
                  "windows": [{"days": "daily", "start": "00:00", "end": "24:00"}]})");
  // The scheduler's clock three days back: the job's deadline (that day's window end) has passed
  // for its runner, which keeps the system clock, so the child settles the offline devices at once.
  const std::int64_t back = std::time(nullptr) - 3 * 86400;
  const auto served = bin.run("serve --once --json --now " + std::to_string(back));
  ASSERT_EQ(served.status, 0) << served.err;
  const auto summary = json(served.out);
  ASSERT_EQ(summary->getArray("jobs_created")->size(), 1u) << served.out << served.err;
  const std::string id = summary->getArray("jobs_created")->getElement<std::string>(0);
  ASSERT_EQ(summary->getArray("jobs_spawned")->size(), 1u);
  EXPECT_EQ(summary->getArray("jobs_spawned")->getElement<std::string>(0), id);
  const auto shown = job(id);
  EXPECT_EQ(shown->getValue<int>("total"), 3);
  // The devices expire in about 365 days: no 30/14/7 alert today. A year on they all do.
  EXPECT_EQ(summary->getArray("alerts")->size(), 0u);
  EXPECT_EQ(shown->getValue<std::string>("state"), "finished");
  set_rollover(R"({"enabled": false})");  // alerts alone
  const std::int64_t year_on = std::time(nullptr) + 360 * 86400;
  const auto later = bin.run("serve --once --json --now " + std::to_string(year_on));
  ASSERT_EQ(later.status, 0) << later.err;
  EXPECT_NE(later.err.find("fleetsign serve: alert: group fleet: 3 devices expire within 7 days "
                           "and are not rotated: dev-"),
            std::string::npos)
      << later.err;
}

TEST_F(Serve, SigtermStopsSpawningStopsTheChildrenAndExitsZero) {
  const std::string id =
      json(bin.ok("rollover start --group fleet --no-run --deadline 120s --offline-retry 1 --json")
               .out)
          ->getValue<std::string>("id");
  testing::CliProcess serve(home, {"serve", "--tick", "1"});
  ASSERT_GT(serve.pid(), 0);
  pid_t runner = 0;
  for (int i = 0; i < 150 && runner == 0; ++i) {  // the child takes the job's lease
    ::usleep(100000);
    const std::string holder = job(id)->optValue<std::string>("runner", "");
    if (!holder.empty())
      runner = static_cast<pid_t>(std::stol(holder.substr(holder.rfind(':') + 1)));
  }
  ASSERT_GT(runner, 0) << "no child took the job";
  EXPECT_NE(runner, serve.pid());
  EXPECT_TRUE(alive(runner));
  // The PIN reaches the child through its environment, never its command line.
  const std::string cmdline = testing::read_file("/proc/" + std::to_string(runner) + "/cmdline");
  EXPECT_NE(cmdline.find("resume"), std::string::npos);
  EXPECT_EQ(cmdline.find(testing::kUserPin), std::string::npos);
  const std::string environment =
      testing::read_file("/proc/" + std::to_string(runner) + "/environ");
  EXPECT_NE(environment.find(std::string("FLEETSIGN_PIN=") + testing::kUserPin), std::string::npos);

  ASSERT_EQ(::kill(serve.pid(), SIGTERM), 0);
  bool exited = false;
  for (int i = 0; i < 300 && !exited; ++i) {
    ::usleep(100000);
    exited = !serve.running();
  }
  ASSERT_TRUE(exited) << "serve did not stop within 30 s of SIGTERM";
  EXPECT_EQ(serve.wait(), 0);
  EXPECT_FALSE(alive(runner));  // its child went with it
  EXPECT_TRUE(broker_running());
  // The job stays resumable: a later serve or `job resume` continues it.
  EXPECT_EQ(job(id)->getValue<std::string>("state"), "running");
}

// A job another runner aborted (its devices crossed the threshold) or that was canceled, whose
// lease holder then died before ending it: its open tasks wait for a runner. serve runs it to its
// end, never reopening it: the devices settle as aborted and the job records when it ended.
TEST_F(Serve, RunsToItsEndAJobStoppedByARunnerThatDiedBeforeEndingIt) {
  // A job canceled before any runner took it: no open task, never ended. serve ends it too.
  const std::string empty =
      json(bin.ok("rollover start --group fleet --no-run --json").out)->getValue<std::string>("id");
  bin.ok("job cancel " + empty);
  ASSERT_FALSE(job(empty)->has("finishedAt"));
  const std::string id =
      json(bin.ok("rollover start --group fleet --no-run --deadline 120s --offline-retry 1 --json")
               .out)
          ->getValue<std::string>("id");
  {
    // A runner on another host took the job and its devices, recorded the abort, and went silent.
    auto reg = engine::Registry::open(test::home_registry_location(home));
    const std::int64_t long_ago = reg->registry_time() - 3600;
    ASSERT_TRUE(reg->acquire_job(id, "elsewhere:4242", long_ago, long_ago));
    ASSERT_EQ(reg->claim_job_tasks(id, "elsewhere:4242", long_ago, 1000, 0).size(), 3u);
    reg->set_job_state(id, "aborted", 0);
  }
  ASSERT_FALSE(job(id)->has("finishedAt"));
  // Its devices are still its own: a new rollover cannot take them before it ended.
  const auto plan = json(bin.ok("rollover plan --group fleet --json").out);
  EXPECT_EQ(plan->getValue<int>("conflicts"), 3) << bin.ok("rollover plan --group fleet").out;

  const auto served = bin.run("serve --once --json");
  ASSERT_EQ(served.status, 0) << served.err;
  const auto summary = json(served.out);
  ASSERT_EQ(summary->getArray("jobs_spawned")->size(), 2u) << served.out << served.err;
  EXPECT_TRUE(job(empty)->has("finishedAt"));
  EXPECT_EQ(job(empty)->getValue<std::string>("state"), "canceled");
  const auto shown = job(id);
  std::ostringstream text;
  shown->stringify(text);
  EXPECT_EQ(shown->getValue<std::string>("state"), "aborted") << text.str();
  EXPECT_TRUE(shown->has("finishedAt")) << text.str();
  const auto states = shown->getObject("states");
  EXPECT_FALSE(states->has("pending") || states->has("active")) << text.str();
  EXPECT_EQ(states->optValue<int>("aborted", 0), 3) << text.str();
  // Ended: the next tick leaves it alone.
  EXPECT_EQ(json(bin.ok("serve --once --json").out)->getArray("jobs_spawned")->size(), 0u);

  // Retried, then canceled before any runner took it: running again cleared its end, so the
  // cancel leaves it stopping, and serve ends it again.
  bin.ok("job retry-failed " + id + " --no-run");
  EXPECT_FALSE(job(id)->has("finishedAt"));
  bin.ok("job cancel " + id);
  const auto again = json(bin.ok("serve --once --json").out);
  ASSERT_EQ(again->getArray("jobs_spawned")->size(), 1u);
  EXPECT_TRUE(job(id)->has("finishedAt"));
}

// Several serves over one PostgreSQL registry: a worker's serve holds the scheduler's lease and
// re-signs CRLs into the registry, never into a broker of its own (its home holds only the
// broker's client side); the serve beside the broker installs the registry's new CRL into the
// broker's CRL file at its next tick.
TEST_F(Serve, TheBrokersCrlFileFollowsACrlSignedByAWorker) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  bin.ok("crl sign --all");  // the broker's CRL file exists from here on
  bin.ok("broker start");    // running: a start would install the registry's CRLs anyway
  bin.ok("worker clone " + quoted(path("w1")));
  testing::Binary worker{dir.path() / "w1"};
  testing::CliProcess w1(dir.path() / "w1", {"serve", "--worker", "--tick", "1"});
  // w1 takes the free scheduler's lease at its first tick.
  const std::string holder = "SELECT COUNT(*) FROM leases WHERE name = 'scheduler'";
  for (int i = 0; test::raw_query(test::home_registry_location(home), holder).at(0).at(0) == "0";
       ++i) {
    ASSERT_LT(i, 300) << "w1's serve never took the scheduler's lease";
    ::usleep(100000);
  }
  const auto signed_by_worker = worker.run("crl sign factory-1");
  ASSERT_EQ(signed_by_worker.status, 0) << signed_by_worker.err;
  EXPECT_EQ(signed_by_worker.out.find("broker"), std::string::npos) << signed_by_worker.out;
  EXPECT_FALSE(fs::exists(dir.path() / "w1" / "broker" / "crl.pem"));
  const std::string latest = bin.ok("crl export factory-1").out;
  const fs::path crl_file = home / "broker" / "crl.pem";
  EXPECT_EQ(testing::read_file(crl_file).find(latest), std::string::npos) << "not yet";
  const auto tick = json(bin.ok("serve --once --json").out);
  EXPECT_FALSE(tick->getValue<bool>("scheduling"));
  EXPECT_NE(testing::read_file(crl_file).find(latest), std::string::npos)
      << "the broker's CRL file does not hold the CRL the worker signed";
}

// A PIN the token refuses ends the child with pin_incorrect on serve's status channel: serve runs
// no more children (each would spend a login attempt) and exits with the token's status.
TEST_F(Serve, APinTheTokenRefusesStopsItsChildren) {
  const std::string id =
      json(bin.ok("rollover start --group fleet --no-run --deadline 60s --json").out)
          ->getValue<std::string>("id");
  testing::write_file(path("wrong-pin"), "99999999\n");
  const auto served = bin.run("serve --once --json --pin-file " + quoted(path("wrong-pin")));
  EXPECT_EQ(served.status, 4) << served.err;
  EXPECT_NE(served.err.find("(pin_incorrect)"), std::string::npos) << served.err;
  EXPECT_NE(served.err.find("no more jobs are run"), std::string::npos) << served.err;
  EXPECT_EQ(job(id)->getValue<std::string>("state"), "running");
}

// A worker home cloned before a CA was made has no key for it: the CRL that CA is due is not
// this worker's to sign. Its serve says so and goes on running jobs; only a PIN the token refuses
// (or a token gone) stops a serve's children, since trying again would only spend login attempts.
TEST_F(Serve, AWorkersTokenWithoutANewCasKeyDoesNotStopItsJobs) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  bin.ok("worker clone " + quoted(path("w1")));
  bin.ok("ca create-intermediate --name late --issuer root --days 365 --subject /CN=Late");
  // Every CA's CRL near its nextUpdate by the real clock (signed 150 h ago; 168 h of validity),
  // the new CA's too: serve's CRL duty runs on the system clock, whatever its --now says.
  bin.ok("crl sign --all --now " + std::to_string(std::time(nullptr) - 150 * 3600));
  testing::Binary worker{dir.path() / "w1"};
  const std::string month_on = std::to_string(std::time(nullptr) + 30 * 86400);
  const auto served = worker.run("serve --worker --once --json --now " + month_on);
  EXPECT_EQ(served.status, 0) << served.err;  // was 4: taken for a PIN the token refused
  const auto summary = json(served.out);
  EXPECT_TRUE(summary->getValue<bool>("scheduling")) << served.out;
  EXPECT_NE(served.err.find("crl: process"), std::string::npos) << served.err;
  EXPECT_NE(served.err.find("(key_not_found)"), std::string::npos) << served.err;
  EXPECT_NE(served.err.find("a CA's key is not in this home's token"), std::string::npos)
      << served.err;
  EXPECT_EQ(served.err.find("no more jobs are run"), std::string::npos) << served.err;
  // The CA's CRL is signed where its key is.
  EXPECT_EQ(bin.run("crl sign --due").status, 0);
  EXPECT_NE(bin.ok("crl export late").out.find("BEGIN X509 CRL"), std::string::npos);
}

}  // namespace
}  // namespace fleetsign
