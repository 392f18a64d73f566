// A rollover whose new certificates the hub refuses: the devices go back to their old slots (the
// device agent's trial), and the job says so and cleans up. The real fleetsign program with its
// stores wrapped (fleetsign-faulty, FLEETSIGN_FAULT=revoke_issued: every certificate is revoked
// right after it is committed, as an operator's `revoke` in another process could before the
// certificate reaches its device), fleetsign's broker and the real device agent.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "fleetsign/engine/registry.hpp"
#include "live_fleet.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

using testing::json;
using testing::quoted;

class RolloverRefused : public testing::LiveFleet {};

// Before, each task timed out at the confirm step, the registry kept the refused certificate in
// the device's free slot, and a later CA rollover left the device out (it looked rotated) and so
// locked it out. Now the task is `refused` with its reason, the refused certificate leaves the
// slot it went into, and the next rollover rotates the device like any other.
TEST_F(RolloverRefused, ADeviceBackOnItsOldCertificateFreesTheRefusedOneAndRollsNextTime) {
  fleet("LOT-R", "rr", 4);
  ASSERT_EQ(wait_connected("rr", 4), 4);
  const auto before = connected();
  std::map<std::string, std::string> old_serial;
  {
    auto reg = registry();
    for (const auto& [id, sha] : before) old_serial[id] = reg->find_device(id)->primary_serial;
  }

  std::string out;
  const int status = testing::run(
      "env -u FLEETSIGN_HOME FLEETSIGN_PIN=" + quoted(testing::kUserPin) +
          " FLEETSIGN_FAULT=revoke_issued " + quoted(FLEETSIGN_FAULTY_BIN) + " --home " +
          quoted(home.string()) +
          " rollover start --lot LOT-R --rate 900 --step-timeout 25 --retries 0 --json "
          "2>/dev/null </dev/null",
      &out);
  ASSERT_NE(out.find("\"id\""), std::string::npos) << status << out;
  const auto report = json(out);
  EXPECT_EQ(report->getValue<int>("done"), 0) << out;
  const std::string job = report->getValue<std::string>("id");

  auto reg = registry();
  const auto tasks = reg->job_tasks(job, "");
  ASSERT_EQ(tasks.size(), 4u);
  for (const auto& t : tasks) {
    SCOPED_TRACE(t.device_id);
    EXPECT_EQ(t.state, "refused");
    EXPECT_EQ(t.error_code, "new_certificate_refused");
    EXPECT_NE(t.last_error.find("the hub refused the new certificate 0x" + t.new_serial),
              std::string::npos)
        << t.last_error;
    // The registry shows what the device runs: its old certificate, the other slot free.
    const auto d = reg->find_device(t.device_id);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->primary_serial, old_serial[t.device_id]);
    EXPECT_EQ(d->secondary_serial, "");
    EXPECT_EQ(reg->cert_state(t.new_serial), engine::CertState::kRevoked);
    EXPECT_EQ(reg->cert_state(old_serial[t.device_id]), engine::CertState::kIssued);
    EXPECT_EQ(testing::active_slot(path("LOT-R-flash"), t.device_id), "primary");
  }
  EXPECT_EQ(connected(), before);  // every device is back on its old certificate
  const auto show = bin.run("job show " + job + " --json");
  EXPECT_EQ(show.status, 13) << "devices not rolled: " << show.err;
  EXPECT_EQ(json(show.out)->getObject("states")->getValue<int>("refused"), 4);
  EXPECT_EQ(status, 13) << "rollover start: the same exit";

  // The next rollover selects them by the certificate they run and rotates every one.
  const auto again = bin.run("rollover start --lot LOT-R --rate 900 --json");
  ASSERT_EQ(again.status, 0) << again.out << again.err;
  const std::string job2 = json(again.out)->getValue<std::string>("id");
  EXPECT_EQ(json(again.out)->getValue<int>("done"), 4);
  EXPECT_EQ(check_done_devices(job2, "LOT-R", false), 4);
}

}  // namespace
}  // namespace fleetsign
