// A breach roll killed between recording its job and revoking the compromised certificate
// (fleetsign-faulty, FLEETSIGN_FAULT=job_created): the job records which certificate it is about,
// so its runner (`job resume`, or `serve`) or the same command run again revokes it, and a rerun
// never makes a second job or picks the device's other certificate. The real fleetsign program,
// fleetsign's broker and the real device agent.
#include <gtest/gtest.h>

#include <string>

#include "fleetsign/engine/registry.hpp"
#include "live_fleet.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

using testing::json;
using testing::quoted;

class BreachRecovery : public testing::LiveFleet {
 protected:
  // `rollover breach ARGS` by the faulty program, killed once its job is committed.
  int killed_after_the_job(const std::string& args) {
    std::string out;
    return testing::run("env -u FLEETSIGN_HOME FLEETSIGN_PIN=" + quoted(testing::kUserPin) +
                            " FLEETSIGN_FAULT=job_created:1 " + quoted(FLEETSIGN_FAULTY_BIN) +
                            " --home " + quoted(home.string()) + " rollover breach " + args +
                            " </dev/null",
                        &out);
  }
  // The certificate as its CA's CRL lists it (empty serial when it is not revoked).
  engine::RevokedSerial revoked(const std::string& serial) {
    auto reg = registry();
    for (auto& r : reg->revoked_certs_of(reg->find_cert(serial)->ca_name)) {
      if (r.serial == serial) return r;
    }
    return {};
  }
  std::vector<engine::JobRecord> breach_jobs() {
    std::vector<engine::JobRecord> out;
    for (auto& j : registry()->list_jobs({})) {
      if (j.kind == "breach-roll") out.push_back(std::move(j));
    }
    return out;
  }
};

// Before, the revocation came first and the job second: killed between them, the certificate was
// revoked with no job to roll the device, and the command run again (no --serial) picked the
// device's *other* certificate, the one it had reconnected with, and revoked that too.
TEST_F(BreachRecovery, RunAgainAfterAKillContinuesTheRecordedJobAndRevokesItsCertificate) {
  fleet("LOT-B", "rb", 2);
  ASSERT_EQ(wait_connected("rb", 2), 2);
  const std::string serial = registry()->find_device("rb-0001")->primary_serial;
  EXPECT_NE(killed_after_the_job("--device rb-0001 --no-run"), 0);
  auto jobs = breach_jobs();
  ASSERT_EQ(jobs.size(), 1u);
  const std::string job = jobs[0].id;
  EXPECT_EQ(registry()->cert_state(serial), engine::CertState::kIssued) << "killed before it";

  const auto again = bin.run("rollover breach --device rb-0001 --no-run --json");
  ASSERT_EQ(again.status, 0) << again.out << again.err;
  EXPECT_EQ(json(again.out)->getValue<std::string>("id"), job) << again.out;
  EXPECT_EQ(breach_jobs().size(), 1u) << "no second job";
  auto reg = registry();
  EXPECT_EQ(reg->cert_state(serial), engine::CertState::kRevoked);
  EXPECT_EQ(revoked(serial).reason, "keyCompromise");
  EXPECT_EQ(reg->find_device("rb-0001")->primary_serial, "");
  // The broker drops the device's session with it.
  bool dropped = false;
  for (int i = 0; i < 50 && !dropped; ++i) {
    ::usleep(100000);
    dropped = connected().count("rb-0001") == 0;
  }
  EXPECT_TRUE(dropped);
  EXPECT_EQ(connected().count("rb-0002"), 1u);
  // A third run: still that one job, still one revoked certificate; paused, it stays paused.
  bin.ok("job pause " + job);
  const auto third = bin.run("rollover breach --device rb-0001 --no-run --json");
  ASSERT_EQ(third.status, 0) << third.out << third.err;
  EXPECT_EQ(json(third.out)->getValue<std::string>("id"), job);
  EXPECT_EQ(json(third.out)->getValue<std::string>("state"), "paused");
  EXPECT_TRUE(json(third.out)->getValue<bool>("continued"));
  // A certificate the device does not hold: refused, naming the open job.
  const auto bogus = bin.run("rollover breach --device rb-0001 --serial 0A0B0C --no-run");
  EXPECT_NE(bogus.status, 0);
  EXPECT_NE(bogus.err.find(job), std::string::npos) << bogus.err;
}

// Killed the same way, then canceled: canceling stops the rolling, never the cut-off.
TEST_F(BreachRecovery, CancelingAJobKilledBeforeItsRevocationStillRevokes) {
  fleet("LOT-D", "rd", 1);
  ASSERT_EQ(wait_connected("rd", 1), 1);
  const std::string serial = registry()->find_device("rd-0001")->primary_serial;
  EXPECT_NE(killed_after_the_job("--device rd-0001 --no-run"), 0);
  const auto jobs = breach_jobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(registry()->cert_state(serial), engine::CertState::kIssued);
  bin.ok("job cancel " + jobs[0].id);
  EXPECT_EQ(registry()->cert_state(serial), engine::CertState::kRevoked);
  EXPECT_EQ(revoked(serial).reason, "keyCompromise");
  const auto crl =
      json(bin.ok("crl show " + registry()->find_cert(serial)->ca_name + " --json").out);
  EXPECT_FALSE(crl->getValue<bool>("behind")) << "its CRL follows";
  // Canceled again: refused, and nothing more is revoked or written.
  EXPECT_NE(bin.run("job cancel " + jobs[0].id).status, 0);
}

// Killed the same way, then resumed: the runner revokes the certificate before it rolls anything.
TEST_F(BreachRecovery, TheResumedJobRevokesTheCertificateItIsAbout) {
  fleet("LOT-C", "rc", 1);
  ASSERT_EQ(wait_connected("rc", 1), 1);
  const std::string serial = registry()->find_device("rc-0001")->primary_serial;
  EXPECT_NE(killed_after_the_job("--device rc-0001 --deadline 4s --offline-retry 1 --no-run"), 0);
  const auto jobs = breach_jobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(registry()->cert_state(serial), engine::CertState::kIssued);
  const auto resumed = bin.run("job resume " + jobs[0].id + " --json");
  EXPECT_EQ(resumed.status, 13) << resumed.out << resumed.err;  // the device cannot come back
  auto reg = registry();
  EXPECT_EQ(reg->cert_state(serial), engine::CertState::kRevoked);
  EXPECT_EQ(revoked(serial).revoked_at, jobs[0].created_at) << "dated at the breach";
  EXPECT_EQ(revoked(serial).reason, "keyCompromise");
  // The CRL follows the late revocation at once.
  const auto crl = json(bin.ok("crl show " + reg->find_cert(serial)->ca_name + " --json").out);
  EXPECT_FALSE(crl->getValue<bool>("behind"));
  const auto tasks = reg->job_tasks(jobs[0].id, "");
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_EQ(tasks[0].state, "offline");
  EXPECT_NE(tasks[0].last_error.find("re-provision"), std::string::npos) << tasks[0].last_error;
}

// A device that another job is rotating: its certificate is revoked at once all the same, and the
// breach roll leaves the rotation to that job. Before, the breach roll rotated it too, racing the
// other job for the device's slots (two new certificates, one of them retired under the other).
TEST_F(BreachRecovery, ADeviceInAnotherJobIsRevokedAtOnceAndLeftToThatJob) {
  fleet("LOT-E", "re", 2);
  ASSERT_EQ(wait_connected("re", 2), 2);
  const std::string serial = registry()->find_device("re-0001")->primary_serial;
  const std::string rollover =
      json(bin.ok("rollover start --lot LOT-E --expiring-within 400d --no-run --json").out)
          ->getValue<std::string>("id");
  bin.ok("job pause " + rollover);
  const auto breach = bin.run("rollover breach --device re-0001 --serial " + serial + " --no-run");
  ASSERT_EQ(breach.status, 0) << breach.out << breach.err;
  EXPECT_NE(breach.err.find("is in job " + rollover + " (paused)"), std::string::npos)
      << breach.err;
  auto reg = registry();
  EXPECT_EQ(reg->cert_state(serial), engine::CertState::kRevoked) << "the cut-off never waits";
  EXPECT_EQ(revoked(serial).reason, "keyCompromise");
  const auto jobs = breach_jobs();
  ASSERT_EQ(jobs.size(), 1u);
  const auto tasks = reg->job_tasks(jobs[0].id, "");
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_EQ(tasks[0].state, "conflict");
  EXPECT_NE(tasks[0].last_error.find(rollover), std::string::npos) << tasks[0].last_error;
  for (const auto& t : reg->job_tasks(rollover, "")) {
    EXPECT_EQ(t.state, "pending") << t.device_id << ": still the rollover's";
  }
  // Its runner settles the breach roll at once: nothing of the device is rotated there.
  const auto ran = bin.run("job resume " + jobs[0].id + " --json");
  EXPECT_EQ(json(ran.out)->getValue<std::string>("state"), "finished") << ran.out << ran.err;
  EXPECT_EQ(registry()->job_tasks(jobs[0].id, "conflict").size(), 1u);
  engine::CertQuery q;
  q.batch_id = jobs[0].id;
  EXPECT_TRUE(registry()->select_certs(q).empty()) << "no certificate issued";
}

}  // namespace
}  // namespace fleetsign
