// A lot revoked under a live fleet, nothing mocked: fleetsign's broker (mosquitto + the plugin)
// with TLS client authentication, 1,000 simulated devices of lot A and 50 of lot B run by the real
// device agent. `revoke --lot A` must drop every lot-A session within 1 s of its return, the
// devices' reconnections must be refused, and lot B must stay connected.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <sstream>

#include "device_fixture.hpp"
#include "enrollment_support.hpp"
#include "fleet_support.hpp"
#include "fleetsign/engine/registry.hpp"
#include "live_fleet.hpp"
#include "registry_backend.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using testing::free_port;
using testing::json;
using testing::quoted;

class RevokeLive : public testing::LiveFleet {
 protected:
  // Connected devices whose ID starts with "{prefix}-", from the broker's session records.
  int count_connected(engine::Registry& reg, const std::string& prefix) {
    int n = 0;
    for (const auto& s : reg.connected_devices()) n += s.device_id.rfind(prefix + "-", 0) == 0;
    return n;
  }
  int wait_count_connected(engine::Registry& reg, const std::string& prefix, int want,
                           int seconds) {
    int n = 0;
    for (int i = 0; i < seconds * 10 && (n = count_connected(reg, prefix)) != want; ++i)
      ::usleep(100000);
    return n;
  }
};

TEST_F(RevokeLive, ALotOfAThousandConnectedDevicesIsDroppedWithinOneSecondAndStaysOut) {
  auto& lot_a = fleet("LOT-A", "ra", 1000, "--sync never");
  fleet("LOT-B", "rb", 50, "--sync never");
  auto reg = engine::Registry::open(test::home_registry_location(home));
  ASSERT_EQ(wait_count_connected(*reg, "ra", 1000, 120), 1000);
  ASSERT_EQ(wait_count_connected(*reg, "rb", 50, 60), 50);

  const auto dry = json(bin.ok("revoke --lot LOT-A --reason keyCompromise --dry-run --json").out);
  EXPECT_EQ(dry->getObject("plan")->getValue<std::int64_t>("connected_dropped"), 1000);
  EXPECT_EQ(count_connected(*reg, "ra"), 1000);  // the dry run changed nothing

  const auto started = Clock::now();
  const auto out = bin.ok("revoke --lot LOT-A --reason keyCompromise --yes --json");
  const auto returned = Clock::now();
  std::printf("revoke --lot LOT-A (1,000 devices) took %.3f s\n",
              std::chrono::duration<double>(returned - started).count());
  const auto plan = json(out.out)->getObject("plan");
  EXPECT_EQ(plan->getValue<std::int64_t>("certificates"), 1000);
  EXPECT_EQ(plan->getValue<std::int64_t>("connected_dropped"), 1000);
  EXPECT_EQ(plan->getObject("replacement")->getArray("reprovision")->size(), 1000u);
  int left = -1;
  while ((left = count_connected(*reg, "ra")) > 0 &&
         Clock::now() - returned < std::chrono::seconds(5)) {
    ::usleep(10000);
  }
  const double dropped_s = std::chrono::duration<double>(Clock::now() - returned).count();
  EXPECT_EQ(left, 0);
  EXPECT_LT(dropped_s, 1.0) << "last lot-A session dropped " << dropped_s
                            << " s after revoke returned";
  RecordProperty("last_session_dropped_s", std::to_string(dropped_s));
  std::printf("last lot-A session dropped %.3f s after `revoke` returned\n", dropped_s);

  // They try again (the agent reconnects with backoff) and are refused: none gets back in.
  const std::size_t failures_before = testing::count_of(lot_a.log(), "retrying in");
  for (int i = 0; i < 50 && testing::count_of(lot_a.log(), "retrying in") < failures_before + 500;
       ++i) {
    ::usleep(200000);
  }
  EXPECT_GE(testing::count_of(lot_a.log(), "retrying in"), failures_before + 500);
  EXPECT_EQ(count_connected(*reg, "ra"), 0);
  EXPECT_EQ(count_connected(*reg, "rb"), 50);  // the other lot is untouched
}

}  // namespace
}  // namespace fleetsign
