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
#include "registry_backend.hpp"
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
  // Each release is in the audit log like any revocation.
  EXPECT_EQ(test::raw_query(test::home_registry_location(home),
                            "SELECT count(*) FROM audit WHERE action = 'cert.revoke' AND detail "
                            "LIKE '%cessationOfOperation%'")
                .at(0)
                .at(0),
            "0")
      << "revoked by the fault first (superseded): the release revokes nothing more";
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

// The broker's session writes stall (a trigger refuses them; the broker retries), so the registry
// still shows the device connected on its old certificate, from before the reprovision, while
// it runs the new one. That row proves nothing: the task times out and the new certificate stays
// valid in its slot. Revoking it (as a first version of the rule did) locked the device out for
// good, since its trial had ended when the hub admitted it.
TEST_F(RolloverRefused, AStaleSessionRowOnTheOldCertificateNeverRevokesTheNewOne) {
  fleet("LOT-S", "rs", 1);
  ASSERT_EQ(wait_connected("rs", 1), 1);
  const std::string old_sha = connected().at("rs-0001");
  const std::string db = test::home_registry_location(home);
  testing::tamper(db, test::test_registry_is_postgres()
                          ? "CREATE FUNCTION stall() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                            "'stalled'; END $$ LANGUAGE plpgsql; CREATE TRIGGER stall BEFORE "
                            "INSERT OR UPDATE ON device_sessions FOR EACH ROW EXECUTE FUNCTION "
                            "stall()"
                          : "CREATE TRIGGER stall_u BEFORE UPDATE ON device_sessions BEGIN "
                            "SELECT RAISE(ABORT, 'stalled'); END; CREATE TRIGGER stall_i BEFORE "
                            "INSERT ON device_sessions BEGIN SELECT RAISE(ABORT, 'stalled'); END");
  const auto first = bin.run("rollover start --lot LOT-S --step-timeout 6 --retries 0 --json");
  EXPECT_EQ(first.status, 13) << first.out << first.err;
  const std::string job = json(first.out)->getValue<std::string>("id");
  auto reg = registry();
  const auto tasks = reg->job_tasks(job, "");
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_EQ(tasks[0].state, "timed-out") << tasks[0].last_error;
  EXPECT_EQ(reg->cert_state(tasks[0].new_serial), engine::CertState::kIssued);
  EXPECT_EQ(reg->find_device("rs-0001")->secondary_serial, tasks[0].new_serial);
  EXPECT_EQ(testing::active_slot(path("LOT-S-flash"), "rs-0001"), "secondary");
  EXPECT_EQ(connected().at("rs-0001"), old_sha) << "the stale row";

  testing::tamper(db, test::test_registry_is_postgres()
                          ? "DROP TRIGGER stall ON device_sessions"
                          : "DROP TRIGGER stall_u; DROP TRIGGER stall_i");
  bool caught_up = false;
  for (int i = 0; i < 100 && !caught_up; ++i) {
    ::usleep(100000);
    caught_up = connected().at("rs-0001") == tasks[0].new_sha256;
  }
  ASSERT_TRUE(caught_up) << "the broker's retried writes land";
  const auto again = bin.run("job retry-failed " + job + " --json");
  EXPECT_EQ(again.status, 0) << again.out << again.err;
  EXPECT_EQ(check_done_devices(job, "LOT-S", false), 1);
}

}  // namespace
}  // namespace fleetsign
