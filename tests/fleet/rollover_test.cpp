// Rollover jobs end to end, nothing mocked: the real `fleetsign` binary with its SoftHSM2 token
// and SQLite registry, fleetsign's broker (Debian's mosquitto + the plugin) with TLS client
// authentication, and fleets of the real device agent (fleetsign-device) that keep their slots in
// a flash directory. Each test checks what matters afterwards from three sides: the registry
// (slots, certificates per job), each device's flash (the slot it runs), and the broker's
// session records (the certificate it is connected with).
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "cli_process.hpp"
#include "device_fixture.hpp"
#include "enrollment_support.hpp"
#include "fleet_support.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "live_fleet.hpp"
#include "registry_backend.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::quoted;

using testing::free_port;
using testing::json;

using testing::active_slot;
using testing::leaf_sha256;

class Rollover : public testing::LiveFleet {
 protected:
  // 200 connected devices of `lot` (IDs PREFIX-…), worker homes w1 and w2 (`worker clone`), and a
  // rollover job over the lot that nobody runs yet: its ID ("" when the fleet did not connect).
  std::string workers_and_a_job(const std::string& lot, const std::string& prefix) {
    fleet(lot, prefix, 200);
    if (wait_connected(prefix, 200) != 200) return "";
    for (const char* w : {"w1", "w2"}) bin.ok("worker clone " + quoted(path(w)));
    return json(bin.ok("rollover start --lot " + lot + " --no-run --rate 900 --json").out)
        ->getValue<std::string>("id");
  }
};

// The pid of the job's runner (a child of `serve`, named in the job's lease) once `done` of its
// devices are done; -1 when that does not happen within a minute, or the serve dies.
pid_t runner_once_done(engine::Registry& reg, const std::string& job, testing::CliProcess& serve,
                       std::size_t done) {
  pid_t runner = -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (runner <= 0 || reg.job_tasks(job, "done").size() < done) {
    if (std::chrono::steady_clock::now() > deadline || !serve.running()) return -1;
    const auto j = reg.find_job(job);
    if (!j) return -1;
    const auto colon = j->runner.rfind(':');
    if (colon != std::string::npos) runner = std::stoi(j->runner.substr(colon + 1));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return runner;
}

// The heart of the product: 1,000 devices roll onto new certificates (new key on each device,
// signed in the token, installed, reprovisioned, confirmed, old slot retired); a second rollover
// alternates the slots.
TEST_F(Rollover, AThousandDevicesRollAndASecondRolloverAlternatesTheSlots) {
  fleet("LOT-A", "ra", 1000);
  ASSERT_EQ(wait_connected("ra", 1000), 1000);
  const auto plan = json(bin.ok("rollover plan --group fleet --expiring-within 400d --json").out);
  EXPECT_EQ(plan->getValue<int>("devices"), 1000);
  EXPECT_EQ(plan->getValue<int>("conflicts"), 0);
  EXPECT_EQ(plan->getObject("slots")->getValue<int>("secondary"), 1000);
  const auto before = connected();

  const auto first = bin.run("rollover start --group fleet --expiring-within 400d --json");
  ASSERT_EQ(first.status, 0) << first.out << first.err;
  const auto report = json(first.out);
  EXPECT_EQ(report->getValue<std::string>("state"), "finished");
  EXPECT_EQ(report->getValue<int>("done"), 1000);
  const std::string job = report->getValue<std::string>("id");
  EXPECT_EQ(check_done_devices(job, "LOT-A", false), 1000);
  const auto after = connected();
  for (const auto& [id, sha] : before) EXPECT_NE(after.at(id), sha) << id;
  EXPECT_EQ(active_slot(path("LOT-A-flash"), "ra-0001"), "secondary");
  // The retired certificate is superseded: it cannot log in again.
  const auto retired = json(
      bin.run("auth check --chain " + quoted(path("LOT-A/ra-0001_fullchain.pem")) + " --json").out);
  EXPECT_FALSE(retired->getValue<bool>("allowed"));
  EXPECT_EQ(retired->getValue<std::string>("rule"), "revoked");
  // A CA the device's enrollment does not trust (the broker's own) is a conflict, and so is an
  // empty device list rather than "every device".
  const auto wrong_ca = json(bin.ok("rollover plan --device ra-0002 --ca broker-ca --json").out);
  EXPECT_EQ(wrong_ca->getValue<int>("conflicts"), 1);
  EXPECT_EQ(wrong_ca->getValue<int>("devices"), 0);
  testing::write_file(path("empty.txt"), "# nothing\n");
  EXPECT_EQ(bin.run("rollover start --group fleet --devices " + quoted(path("empty.txt"))).status,
            2);

  // `job show` tells the story; the job is listed.
  const auto show = json(bin.ok("job show " + job + " --json").out);
  EXPECT_EQ(show->getObject("states")->getValue<int>("done"), 1000);
  EXPECT_EQ(show->getArray("notBack")->size(), 0u);
  EXPECT_NE(bin.ok("job list").out.find(job), std::string::npos);

  const auto second = bin.run("rollover start --lot LOT-A --json");
  ASSERT_EQ(second.status, 0) << second.out << second.err;
  const std::string job2 = json(second.out)->getValue<std::string>("id");
  EXPECT_EQ(check_done_devices(job2, "LOT-A", true), 1000);
  EXPECT_EQ(active_slot(path("LOT-A-flash"), "ra-0001"), "primary");
}

// A hostile device list is refused naming the file and the problem, and no job is recorded.
TEST_F(Rollover, ABadDeviceListIsRefusedNamingItAndRecordsNoJob) {
  testing::write_file(path("bad-id.txt"), "ok-1\n../x\n");
  auto out = bin.run("rollover start --devices " + quoted(path("bad-id.txt")));
  EXPECT_EQ(out.status, 2) << out.err;
  EXPECT_NE(out.err.find("bad-id.txt:2"), std::string::npos) << out.err;
  out = bin.run("rollover start --devices /dev/zero");
  EXPECT_EQ(out.status, 2) << out.err;
  EXPECT_NE(out.err.find("device list"), std::string::npos) << out.err;
  EXPECT_NE(bin.run("rollover start --devices " + quoted(dir.path().string())).status, 0);
  EXPECT_NE(bin.run("rollover start --devices " + quoted(path("missing.txt"))).status, 0);
  EXPECT_EQ(bin.run("rollover plan --lot L --expiring-within 30x").status, 2);
  EXPECT_EQ(bin.run("rollover start --lot L --exponential 10,nan,5").status, 2);
  EXPECT_EQ(json(bin.ok("job list --json").out)->getArray("jobs")->size(), 0u);
}

// 5% of the devices never connect: they are retried until the deadline and reported; the rest
// finish.
TEST_F(Rollover, OfflineDevicesAreRetriedUntilTheDeadlineAndListed) {
  fleet("LOT-B", "rb", 200, "--offline-fraction 0.05 --seed 7");
  const int online = wait_connected("rb", -1);
  ASSERT_GT(online, 170);
  ASSERT_LT(online, 200);
  const auto out = bin.run("rollover start --lot LOT-B --deadline 12s --offline-retry 2 --json");
  EXPECT_EQ(out.status, 13) << out.out << out.err;
  const auto report = json(out.out);
  EXPECT_EQ(report->getValue<int>("done"), online);
  const auto not_back = report->getArray("notBack");
  EXPECT_EQ(static_cast<int>(not_back->size()), 200 - online);
  for (std::size_t i = 0; i < not_back->size(); ++i) {
    EXPECT_EQ(not_back->getObject(i)->getValue<std::string>("state"), "offline");
    EXPECT_EQ(not_back->getObject(i)->getValue<int>("status"), 404);
  }
  // Offline devices were tried more than once.
  const std::string job = report->getValue<std::string>("id");
  EXPECT_EQ(check_done_devices(job, "LOT-B", false), online);
  // retry-failed after the deadline: the devices go again with a new deadline (else they would
  // time out at once), and each keeps the reason it failed until a new outcome.
  const std::int64_t before = std::time(nullptr);
  EXPECT_EQ(bin.run("job retry-failed " + job + " --deadline 0s --no-run").status, 2);
  const auto retried = bin.run("job retry-failed " + job + " --deadline 2h --no-run --json");
  ASSERT_EQ(retried.status, 0) << retried.err;
  EXPECT_EQ(json(retried.out)->getValue<int>("retried"), 200 - online) << retried.out;
  auto reg = registry();
  const auto params = json(reg->find_job(job)->params_json);
  EXPECT_GE(params->getValue<std::int64_t>("deadline"), before + 7200);
  EXPECT_LE(params->getValue<std::int64_t>("deadline"), std::time(nullptr) + 7200);
  const auto again = reg->job_tasks(job, "pending");
  EXPECT_EQ(static_cast<int>(again.size()), 200 - online);
  for (const auto& t : again) EXPECT_FALSE(t.last_error.empty()) << t.device_id;
  EXPECT_EQ(reg->find_job(job)->state, "running");
}

// 10% of the devices answer every method with an error: the abort threshold stops the job, the
// devices not started are aborted, and the ones that finished are consistent.
TEST_F(Rollover, TheAbortThresholdStopsAJobWhoseDevicesAnswerErrors) {
  fleet("LOT-C", "rc", 200, "--fail-fraction 0.1 --seed 3");
  ASSERT_EQ(wait_connected("rc", 200), 200);
  const auto out = bin.run(
      "rollover start --lot LOT-C --abort-if-failed 5 --min-executed 20 --retries 0 "
      "--in-flight 10 --json");
  EXPECT_EQ(out.status, 13) << out.out << out.err;
  const auto report = json(out.out);
  EXPECT_EQ(report->getValue<std::string>("state"), "aborted");
  const auto states = report->getObject("states");
  EXPECT_GT(states->optValue<int>("refused", 0), 0);
  EXPECT_GT(states->optValue<int>("aborted", 0), 0);
  EXPECT_LT(report->getValue<int>("done"), 200);
  const std::string job = report->getValue<std::string>("id");
  check_done_devices(job, "LOT-C", false);
  // A certificate signed for a device that never switched to it is revoked, never left valid.
  auto reg = registry();
  for (const auto& t : reg->job_tasks(job, "")) {
    if (t.state == "done" || t.new_serial.empty() || t.step != "sign") continue;
    EXPECT_EQ(reg->cert_state(t.new_serial), engine::CertState::kRevoked) << t.device_id;
  }
}

// Confirmation by asking the device (getCertificate), as with IoT Hub, which records no
// sessions: the same end state.
TEST_F(Rollover, ConfirmationByAskingTheDeviceReachesTheSameEndState) {
  fleet("LOT-I", "ri", 50);
  ASSERT_EQ(wait_connected("ri", 50), 50);
  const auto out = bin.run("rollover start --lot LOT-I --confirm method --json");
  ASSERT_EQ(out.status, 0) << out.out << out.err;
  const auto report = json(out.out);
  EXPECT_EQ(report->getValue<int>("done"), 50);
  EXPECT_EQ(check_done_devices(report->getValue<std::string>("id"), "LOT-I", false), 50);
  // Kept with the job: `job resume` and `serve` confirm the same way.
  EXPECT_EQ(json(registry()->find_job(report->getValue<std::string>("id"))->params_json)
                ->getValue<std::string>("confirm"),
            "method");
  EXPECT_EQ(bin.run("rollover start --lot LOT-I --confirm twin").status, 2);
}

// A device that cannot make keys answers createCsr with the key it already runs. When that key is
// on the blocklist, its CSR is refused with the machine-readable code key_blocked (kept with the
// task for `job show`), nothing is issued for it, and the other devices roll. Off the blocklist,
// the same CSR is still refused, as a reused key (key_rejected).
TEST_F(Rollover, ABlockedKeyIsRefusedWithItsCodeAndTheOthersRoll) {
  fleet("LOT-K", "rk", 2);
  fleet("LOT-Q", "rq", 1, "--reuse-key");
  ASSERT_EQ(wait_connected("rk", 2), 2);
  ASSERT_EQ(wait_connected("rq", 1), 1);
  std::string key, old_serial;
  {
    auto reg = registry();
    old_serial = reg->find_device("rq-0001")->primary_serial;
    key = engine::key_sha256_of_cert(reg->find_cert(old_serial)->der);
  }
  ASSERT_EQ(key.size(), 64u);
  bin.ok("blocklist add " + key + " --reason 'sold on a forum'");
  testing::write_file(path("devices.txt"), "rk-0001\nrk-0002\nrq-0001\n");
  const auto out =
      bin.run("rollover start --devices " + quoted(path("devices.txt")) + " --retries 0 --json");
  EXPECT_EQ(out.status, 13) << out.out << out.err;
  const auto report = json(out.out);
  const std::string job = report->getValue<std::string>("id");
  EXPECT_EQ(report->getValue<int>("done"), 2);
  EXPECT_EQ(check_done_devices(job, "LOT-K", false), 2);
  const auto refusal = [&](const Poco::JSON::Object::Ptr& shown) {
    const auto not_back = shown->getArray("notBack");
    EXPECT_EQ(not_back->size(), 1u) << out.out;
    const auto t = not_back->getObject(0);
    EXPECT_EQ(t->getValue<std::string>("device"), "rq-0001");
    EXPECT_EQ(t->getValue<std::string>("state"), "refused");
    return std::make_pair(t->optValue<std::string>("code", ""), t->getValue<std::string>("reason"));
  };
  for (const auto& shown : {report, json(bin.run("job show " + job + " --json").out)}) {
    const auto [code, reason] = refusal(shown);
    EXPECT_EQ(code, "key_blocked");
    EXPECT_NE(reason.find("blocklist"), std::string::npos) << reason;
  }
  // The refused device keeps running its certificate; the job issued it none.
  {
    auto reg = registry();
    EXPECT_EQ(reg->find_device("rq-0001")->primary_serial, old_serial);
    for (const auto& c : reg->batch_issued_after(job, -1)) EXPECT_NE(c.device_id, "rq-0001");
  }
  EXPECT_EQ(connected().at("rq-0001"), leaf_sha256(path("LOT-Q/rq-0001_cert.pem")));

  // Off the blocklist, and tried again: still refused, now as a reused key.
  bin.ok("blocklist remove " + key);
  EXPECT_EQ(bin.run("job retry-failed " + job + " --json").status, 13);
  const auto [code, reason] = refusal(json(bin.run("job show " + job + " --json").out));
  EXPECT_EQ(code, "key_rejected");
  EXPECT_NE(reason.find("reuses the key"), std::string::npos) << reason;
}

// kill -9 of the runner at random moments, several times, then a resume to the end: no device
// has two certificates from the job, none is lost, every slot matches what the device runs.
TEST_F(Rollover, KillNineAtRandomMomentsThenResumeKeepsEveryDeviceConsistent) {
  fleet("LOT-D", "rd", 300);
  ASSERT_EQ(wait_connected("rd", 300), 300);
  const auto created = bin.run("rollover start --lot LOT-D --no-run --in-flight 32 --json");
  ASSERT_EQ(created.status, 0) << created.err;
  const std::string job = json(created.out)->getValue<std::string>("id");
  std::mt19937 rng(std::random_device{}());
  int landed = 0;
  for (int round = 0; round < 6; ++round) {
    testing::CliProcess runner(home, {"job", "resume", job});
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<int>(300, 1500)(rng)));
    landed += runner.kill_now() ? 1 : 0;
  }
  EXPECT_GE(landed, 3);
  const auto end = bin.run("job resume " + job + " --json");
  ASSERT_EQ(end.status, 0) << end.out << end.err;
  EXPECT_EQ(json(end.out)->getValue<int>("done"), 300);
  EXPECT_EQ(check_done_devices(job, "LOT-D", false), 300);
  // Every intent of the job became a certificate or was abandoned; none is open.
  auto reg = registry();
  EXPECT_EQ(reg->count_certs(job, engine::CertState::kIntent), 0);
}

// The broker restarts in the middle of a job: calls in flight fail, the runner retries them, and
// the job still ends with every device rolled.
TEST_F(Rollover, ABrokerRestartMidJobIsRidden) {
  fleet("LOT-E", "re", 300);
  ASSERT_EQ(wait_connected("re", 300), 300);
  testing::CliProcess runner(home, {"rollover", "start", "--lot", "LOT-E", "--in-flight", "16"});
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  bin.ok("broker restart");
  EXPECT_EQ(runner.wait(), 0);
  auto reg = registry();
  const auto jobs = reg->list_jobs({.limit = 1});
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].state, "finished");
  ASSERT_EQ(wait_connected("re", 300), 300);
  EXPECT_EQ(check_done_devices(jobs[0].id, "LOT-E", false), 300);
}

// Pause stops starting devices; resume finishes the job; cancel cancels what has not started.
TEST_F(Rollover, PauseResumeAndCancelAreHonoured) {
  fleet("LOT-F", "rf", 120);
  ASSERT_EQ(wait_connected("rf", 120), 120);
  const std::string job = json(bin.ok("rollover start --lot LOT-F --no-run --rate 600 --json").out)
                              ->getValue<std::string>("id");
  testing::CliProcess runner(home, {"job", "resume", job});
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));
  bin.ok("job pause " + job);
  EXPECT_EQ(runner.wait(), 0);
  auto show = json(bin.run("job show " + job + " --json").out);
  EXPECT_EQ(show->getValue<std::string>("state"), "paused");
  const int done_at_pause = show->getValue<int>("done");
  EXPECT_GT(done_at_pause, 0);
  EXPECT_LT(done_at_pause, 120);
  EXPECT_EQ(show->getObject("states")->optValue<int>("active", 0), 0);
  // Nothing moves while paused.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(json(bin.run("job show " + job + " --json").out)->getValue<int>("done"), done_at_pause);
  EXPECT_EQ(bin.run("job cancel " + job).status, 0);
  show = json(bin.run("job show " + job + " --json").out);
  EXPECT_EQ(show->getValue<std::string>("state"), "canceled");
  EXPECT_EQ(show->getObject("states")->getValue<int>("canceled"), 120 - done_at_pause);
  EXPECT_EQ(check_done_devices(job, "LOT-F", false), done_at_pause);
  EXPECT_EQ(bin.run("job pause " + job).status, 2);
}

// Issue 13's "done": a rollover runs on a worker (`serve --worker` on a home made by `worker
// clone`, which reaches the fleet through the broker's client files it copied); that worker and
// its job runner are killed with kill -9 mid-job (a machine gone), and the other worker's serve
// takes the job over and finishes it: every device rolled once.
// Done devices by the runner ("host:pid") that rolled each.
std::map<std::string, std::size_t> done_by_runner(engine::Registry& reg, const std::string& job) {
  std::map<std::string, std::size_t> out;
  for (const auto& t : reg.job_tasks(job, "done")) ++out[t.runner];
  return out;
}

// Two workers share one rollover: the lease's holder and a helper (w2's child) each roll devices
// of their own, at the job's rate between them. The helper is killed half-way; the holder takes
// its devices over once its heartbeat is stale and finishes the job: every device exactly once.
TEST_F(Rollover, TwoWorkersShareARolloverAndTheSurvivorFinishesAKilledOnesDevices) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  const std::string job = workers_and_a_job("LOT-S", "rs");
  ASSERT_FALSE(job.empty());
  auto reg = registry();
  testing::CliProcess w1(path("w1"), {"serve", "--worker", "--tick", "1"});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (reg->find_job(job)->runner.empty()) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "w1 never ran the job";
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const std::string lead = reg->find_job(job)->runner;
  testing::CliProcess w2(path("w2"), {"serve", "--worker", "--tick", "1"});
  std::string helper;
  while (helper.empty() || done_by_runner(*reg, job)[helper] < 10) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "w2 never helped";
    for (const auto& [runner, n] : done_by_runner(*reg, job)) {
      if (runner != lead && !runner.empty()) helper = runner;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(reg->find_job(job)->runner, lead) << "one holder of the lease";
  EXPECT_TRUE(w2.kill_now());  // the serve first: it would start another runner
  EXPECT_EQ(::kill(std::stoi(helper.substr(helper.rfind(':') + 1)), SIGKILL), 0);
  EXPECT_LT(reg->job_tasks(job, "done").size(), 200u) << "the job ended before the kill";
  while (reg->find_job(job)->state != "finished") {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline + std::chrono::seconds(60))
        << "w1 never finished the job";
    ASSERT_TRUE(w1.running());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ::kill(w1.pid(), SIGTERM);
  EXPECT_EQ(w1.wait(), 0);
  EXPECT_EQ(check_done_devices(job, "LOT-S", false), 200);
  EXPECT_EQ(reg->count_certs(job, engine::CertState::kIntent), 0);
  const auto by = done_by_runner(*reg, job);
  EXPECT_GE(by.at(helper), 10u);
  EXPECT_EQ(by.at(helper) + by.at(lead), 200u);
}

TEST_F(Rollover, AWorkerKilledMidRolloverLeavesItToTheOtherWorker) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  const std::string job = workers_and_a_job("LOT-W", "rw");
  ASSERT_FALSE(job.empty());
  // The broker's client side came along, its service key owner-only; not the broker's own key.
  EXPECT_EQ(
      fs::status(fs::path(path("w1")) / "broker" / "service.key").permissions() & fs::perms::all,
      fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_FALSE(fs::exists(fs::path(path("w1")) / "broker" / "server.key"));
  auto reg = registry();
  {
    testing::CliProcess w1(path("w1"), {"serve", "--worker", "--tick", "1"});
    const pid_t runner = runner_once_done(*reg, job, w1, 20);
    ASSERT_GT(runner, 0) << "w1 never ran the job";
    ASSERT_NE(runner, w1.pid()) << "serve runs a job in a child";
    EXPECT_TRUE(w1.kill_now());  // the serve first: it would start another runner
    EXPECT_EQ(::kill(runner, SIGKILL), 0);
  }
  const std::size_t done_at_kill = reg->job_tasks(job, "done").size();
  EXPECT_LT(done_at_kill, 200u) << "the job ended before the kill";
  testing::CliProcess w2(path("w2"), {"serve", "--worker", "--tick", "1"});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (reg->find_job(job)->state != "finished") {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "w2 never finished the job";
    ASSERT_TRUE(w2.running());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ::kill(w2.pid(), SIGTERM);
  EXPECT_EQ(w2.wait(), 0);
  EXPECT_EQ(check_done_devices(job, "LOT-W", false), 200);
  EXPECT_EQ(reg->count_certs(job, engine::CertState::kIntent), 0);
}

// A job runner frozen mid-job (SIGSTOP, a paused VM) stops heartbeating; another worker's serve
// takes the job over and finishes it. Woken, the frozen runner records nothing more (its writes
// are fenced by the job's lease) and ends: every device rolled once, the job finished once.
TEST_F(Rollover, AFrozenRunnerWokenAfterAnotherWorkerTookItsJobRecordsNothing) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  const std::string job = workers_and_a_job("LOT-Z", "rz");
  ASSERT_FALSE(job.empty());
  auto reg = registry();
  testing::CliProcess w1(path("w1"), {"serve", "--worker", "--tick", "1"});
  const pid_t runner = runner_once_done(*reg, job, w1, 20);
  ASSERT_GT(runner, 0) << "w1 never ran the job";
  ASSERT_NE(runner, w1.pid()) << "serve runs a job in a child";
  ASSERT_EQ(::kill(runner, SIGSTOP), 0);
  const std::string frozen_runner = reg->find_job(job)->runner;
  testing::CliProcess w2(path("w2"), {"serve", "--worker", "--tick", "1"});
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (reg->find_job(job)->state != "finished") {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "w2 never finished the job";
    ASSERT_TRUE(w2.running());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const auto finished = reg->find_job(job);
  EXPECT_NE(finished->runner, frozen_runner);
  // The audit rows of the job and its devices (the scheduling serve re-signs CRLs meanwhile).
  const auto job_rows = [&] {
    auto rows = reg->audit_log(0);
    std::erase_if(rows, [](const engine::AuditEntry& e) { return e.action.starts_with("crl."); });
    return rows;
  };
  const auto audit_before = job_rows().size();
  ASSERT_EQ(::kill(runner, SIGCONT), 0);
  // Woken, it ends (its serve reaps it) without a write.
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (::kill(runner, 0) == 0) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the woken runner kept running";
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const auto audit_after = job_rows();
  EXPECT_EQ(audit_after.size(), audit_before)
      << "the woken runner wrote: " << audit_after.front().action << " "
      << audit_after.front().subject << " " << audit_after.front().detail;
  EXPECT_EQ(reg->find_job(job)->state, "finished");
  EXPECT_EQ(reg->find_job(job)->updated_at, finished->updated_at);
  for (auto* w : {&w1, &w2}) {
    ::kill(w->pid(), SIGTERM);
    EXPECT_EQ(w->wait(), 0);
  }
  EXPECT_EQ(check_done_devices(job, "LOT-Z", false), 200);
  EXPECT_EQ(reg->count_certs(job, engine::CertState::kIntent), 0);
}

// A CA rollover: a new intermediate enters the group's free slot (both trusted during the
// overlap), every device moves onto a certificate under it, then it becomes the primary and the
// old intermediate leaves: a device certificate under the old one is refused from then on.
TEST_F(Rollover, ACaRolloverMovesTheGroupOntoANewIntermediateWithAnOverlap) {
  // Only the group "line" (which trusts the intermediate itself) admits these devices.
  bin.ok("enrollment group disable fleet");
  bin.ok("enrollment group create line --ca factory-1");
  // A few devices never come: the job ends at its deadline, and they are told why they are lost.
  fleet("LOT-G", "rg", 100, "--offline-fraction 0.04 --seed 11");
  const int online = wait_connected("rg", -1);
  ASSERT_GT(online, 90);
  ASSERT_LT(online, 100);
  // A connected device's chain: it is admitted during the overlap and refused after the swap.
  const std::string old_chain = [&] {
    auto reg = registry();
    const auto sessions = reg->connected_devices();
    for (const auto& d : sessions) {
      if (d.device_id.rfind("rg-", 0) == 0) return path("LOT-G/" + d.device_id + "_fullchain.pem");
    }
    return std::string();
  }();
  ASSERT_FALSE(old_chain.empty());
  const auto started = bin.run(
      "rollover ca --group line --name factory-2 --deadline 25s --offline-retry 2 --no-run --json");
  ASSERT_EQ(started.status, 0) << started.out << started.err;
  const std::string job = json(started.out)->getValue<std::string>("id");
  {
    auto reg = registry();
    const auto g = reg->find_group("line");
    ASSERT_TRUE(g.has_value());
    EXPECT_EQ(g->primary_ca, "factory-1");
    EXPECT_EQ(g->secondary_ca, "factory-2");
    EXPECT_EQ(reg->find_ca("factory-2")->parent, "root");
  }
  // The overlap: the old intermediate's devices are still admitted.
  EXPECT_TRUE(json(bin.ok("auth check --chain " + quoted(old_chain) + " --json").out)
                  ->getValue<bool>("allowed"));
  // Running the same request again continues it: no second CA, the same job.
  const auto again = bin.run("rollover ca --group line --name factory-2 --no-run --json");
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_EQ(json(again.out)->getValue<std::string>("id"), job);

  const auto end = bin.run("job resume " + job + " --json");
  ASSERT_EQ(end.status, 13) << end.out << end.err;
  const auto report = json(end.out);
  EXPECT_EQ(report->getValue<int>("done"), online);
  EXPECT_EQ(report->getObject("report")->getValue<std::string>("phase"), "finalized");
  EXPECT_EQ(check_done_devices(job, "LOT-G", false), online);
  const auto not_back = report->getArray("notBack");
  ASSERT_EQ(static_cast<int>(not_back->size()), 100 - online);
  for (std::size_t i = 0; i < not_back->size(); ++i) {
    const std::string reason = not_back->getObject(i)->getValue<std::string>("reason");
    EXPECT_NE(reason.find("CA factory-1 has left group line"), std::string::npos) << reason;
  }
  auto reg = registry();
  const auto g = reg->find_group("line");
  EXPECT_EQ(g->primary_ca, "factory-2");
  EXPECT_EQ(g->secondary_ca, "");
  for (const auto& t : reg->job_tasks(job, "done")) {
    EXPECT_EQ(reg->find_cert(t.new_serial)->ca_name, "factory-2") << t.device_id;
  }
  // The old intermediate left its slot: its device certificates are no longer admitted.
  const auto old = json(bin.run("auth check --chain " + quoted(old_chain) + " --json").out);
  EXPECT_FALSE(old->getValue<bool>("allowed")) << old->getValue<std::string>("reason");
  // …and a new one is.
  const auto t = reg->job_tasks(job, "done").front();
  testing::write_file(path("new.pem"),
                      engine::pem(reg->find_cert(t.new_serial)->der, "CERTIFICATE") +
                          engine::pem(reg->find_ca("factory-2")->cert_der, "CERTIFICATE"));
  EXPECT_TRUE(json(bin.ok("auth check --chain " + quoted(path("new.pem")) + " --json").out)
                  ->getValue<bool>("allowed"));
}

// A breach roll: the compromised certificate is revoked and out of its slot at once (no
// overlap): the broker drops the device within a second, `auth check` refuses the certificate as
// revoked, and a device that held no other certificate is reported as needing re-provisioning.
TEST_F(Rollover, ABreachRollRevokesAtOnceWithNoOverlap) {
  fleet("LOT-H", "rh", 3);
  ASSERT_EQ(wait_connected("rh", 3), 3);
  const std::string old_chain = path("LOT-H/rh-0001_fullchain.pem");
  std::string serial;
  {
    auto reg = registry();
    serial = reg->find_device("rh-0001")->primary_serial;
  }
  testing::CliProcess job(home, {"rollover", "breach", "--device", "rh-0001", "--deadline", "6s",
                                 "--offline-retry", "2"});
  // Within a couple of seconds: revoked, refused, and dropped by the broker.
  bool dropped = false;
  for (int i = 0; i < 40 && !dropped; ++i) {
    ::usleep(100000);
    const auto c = connected();
    dropped = c.count("rh-0001") == 0 && c.count("rh-0002") == 1;
  }
  EXPECT_TRUE(dropped);
  const auto check = json(bin.run("auth check --chain " + quoted(old_chain) + " --json").out);
  EXPECT_FALSE(check->getValue<bool>("allowed"));
  EXPECT_EQ(check->getValue<std::string>("rule"), "revoked");
  EXPECT_EQ(job.wait(), 13);
  auto reg = registry();
  EXPECT_EQ(reg->find_cert(serial)->state, engine::CertState::kRevoked);
  const auto d = reg->find_device("rh-0001");
  EXPECT_EQ(d->primary_serial, "");
  EXPECT_EQ(d->secondary_serial, "");
  const auto jobs = reg->list_jobs({.limit = 1});
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].kind, "breach-roll");
  const auto tasks = reg->job_tasks(jobs[0].id, "");
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_EQ(tasks[0].state, "offline");
  EXPECT_NE(tasks[0].last_error.find("re-provision"), std::string::npos) << tasks[0].last_error;
  // The other devices are untouched.
  EXPECT_EQ(reg->find_cert(reg->find_device("rh-0002")->primary_serial)->state,
            engine::CertState::kIssued);
}

}  // namespace
}  // namespace fleetsign
