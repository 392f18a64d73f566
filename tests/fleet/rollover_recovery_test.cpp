// A rollover's runner killed (kill -9) while its devices install and reprovision, then the job is
// stopped before anyone resumes it: canceled, or its deadline passes. The resumed runner knows only
// the steps that reached the registry (task rows are flushed every 100 ms), so a device recorded at
// "sign" may already run its new certificate. Nothing mocked: the CLI, the broker with its plugin,
// a fleet of fleetsign-device keeping its slots in a flash directory.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "cli_process.hpp"
#include "live_fleet.hpp"

namespace fleetsign {
namespace {

using testing::active_slot;
using testing::leaf_sha256;

class RolloverRecovery : public testing::LiveFleet {
 protected:
  static constexpr int kDevices = 200;

  // The certificate each device's flash runs (SHA-256), by device ID.
  std::map<std::string, std::string> running(const std::string& lot) {
    std::map<std::string, std::string> out;
    const std::filesystem::path flash = path(lot + "-flash");
    for (const auto& entry : std::filesystem::directory_iterator(flash)) {
      if (!entry.is_directory()) continue;
      const std::string id = entry.path().filename().string();
      out[id] = leaf_sha256(entry.path() / (active_slot(flash, id) + ".chain.pem"));
    }
    return out;
  }

  // Devices whose running certificate is not a valid one in their registry slots: locked out.
  int locked_out(const std::string& lot) {
    auto reg = registry();
    int n = 0;
    for (const auto& [id, sha] : running(lot)) {
      const auto d = reg->find_device(id);
      bool ok = false;
      for (const std::string* serial : {&d->primary_serial, &d->secondary_serial}) {
        if (serial->empty()) continue;
        const auto c = reg->find_cert(*serial);
        ok = ok || (c && c->sha256 == sha && c->state == engine::CertState::kIssued);
      }
      if (!ok)
        ADD_FAILURE() << id << " runs " << sha << ", which its registry slots do not hold "
                      << "valid (primary " << d->primary_serial << ", secondary "
                      << d->secondary_serial << ")";
      n += ok ? 0 : 1;
    }
    return n;
  }
};

// Canceled after the kill, or past its deadline: the resumed runner finishes the switch of every
// device that has a certificate from the job (installing it again is answered "already"), so no
// device loses the certificate it runs, and one that switched is reported done with its old
// certificate retired, not timed out with two valid certificates.
TEST_F(RolloverRecovery, AJobStoppedAfterAKillNeverRevokesWhatADeviceRuns) {
  fleet("LOT-K", "rk", kDevices);
  ASSERT_EQ(wait_connected("rk", kDevices), kDevices);
  const struct {
    bool deadline;
    int kill_after_ms;
  } rounds[] = {{false, 450}, {true, 450}, {false, 350}};
  for (const auto& r : rounds) {
    SCOPED_TRACE(r.deadline ? "deadline" : "cancel");
    // A call that reaches a device while it reconnects is lost (QoS 0) and answered 504 when the
    // step times out: short steps keep the retries quick.
    std::vector<std::string> args = {"rollover", "start", "--lot", "LOT-K", "--step-timeout", "5"};
    if (r.deadline) args.insert(args.end(), {"--deadline", "4s"});
    const auto started = std::chrono::steady_clock::now();
    {
      testing::CliProcess runner(home, args);
      std::this_thread::sleep_for(std::chrono::milliseconds(r.kill_after_ms));
      runner.kill_now();
    }
    const auto jobs = registry()->list_jobs({.limit = 1, .after = {}});
    ASSERT_EQ(jobs.size(), 1u);
    const std::string job = jobs.front().id;
    if (r.deadline) {
      std::this_thread::sleep_until(started + std::chrono::seconds(5));
    } else {
      bin.ok("job cancel " + job);
    }
    bin.run("job resume " + job);  // exits non-zero: the job ends canceled or timed out

    EXPECT_EQ(locked_out("LOT-K"), 0);
    auto reg = registry();
    std::map<std::string, int> issued;
    for (const auto& c : reg->batch_issued_after(job, -1)) {
      if (c.state == engine::CertState::kIssued) ++issued[c.device_id];
    }
    const auto runs = running("LOT-K");
    int switched = 0;
    for (const auto& t : reg->job_tasks(job, "")) {
      SCOPED_TRACE(t.device_id);
      EXPECT_LE(issued[t.device_id], 1);
      if (t.new_sha256.empty() || runs.at(t.device_id) != t.new_sha256) continue;
      ++switched;
      EXPECT_EQ(t.state, "done") << t.last_error;
      EXPECT_EQ(t.step, "retire");
    }
    std::printf("round: %d of %d devices on the job's certificate\n", switched, kDevices);
    ASSERT_EQ(wait_connected("rk", kDevices), kDevices) << "a device could not come back";
  }
}

}  // namespace
}  // namespace fleetsign
