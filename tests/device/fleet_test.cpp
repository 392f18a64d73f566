// DeviceFleet used as a library, as the benchmark uses it: the loop on its own thread, stats()
// read from another, handlers added by the caller. Against a real mosquitto with TLS client auth.
#include "fleetsign/device/fleet.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <dirent.h>
#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <thread>

#include "device_fixture.hpp"

namespace fleetsign::testing {
namespace {

using namespace std::chrono_literals;
using device::DeviceFleet;
using device::FleetOptions;
using device::MethodContext;
using device::MethodResponse;

class FleetTest : public ::testing::Test {
 protected:
  const DevicePki& pki = DevicePki::get();
  TempDir dir;
  Broker broker{pki, dir.path() / "broker"};
  std::vector<std::string> log;
  std::mutex log_mutex;

  void SetUp() override { broker.start(); }

  FleetOptions options() {
    FleetOptions o;
    o.broker_host = "localhost";
    o.broker_port = broker.port();
    o.trust_file = pki.server_ca;
    o.devices = device::load_batch_dir(pki.batch, o.id_rule);
    o.log = [this](std::string_view line) {
      std::lock_guard lock(log_mutex);
      log.emplace_back(line);
    };
    return o;
  }
  static bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!cond()) {
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::sleep_for(10ms);
    }
    return true;
  }
};

int open_descriptors() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  while (::readdir(d) != nullptr) ++n;
  ::closedir(d);
  return n;
}

TEST_F(FleetTest, CallerHandlersAnswerAndAReconnectAfterTheAnswerComesBack) {
  DeviceFleet fleet(options());
  fleet.methods().add("whoami", [](MethodContext& d, const Poco::Dynamic::Var&) {
    Poco::JSON::Object body;
    body.set("id", d.device_id().str());
    return MethodResponse::json(200, body);
  });
  fleet.methods().add("reconnect", [](MethodContext& d, const Poco::Dynamic::Var&) {
    d.reconnect_after_answer(false);
    return MethodResponse{202, "{}"};
  });
  const int before = open_descriptors();
  fleet.start();
  std::thread loop([&] { fleet.run_until(nullptr); });
  ASSERT_TRUE(wait_until([&] { return fleet.stats().connected == 3; }, 10s));
  // One descriptor per connected device: libmosquitto's socket pairs are not opened.
  EXPECT_LE(open_descriptors() - before, 3 + 1);
  EXPECT_GE(fleet.stats().first_all_connected_s, 0.0);

  MqttClient svc(broker, pki, "caller-01");
  svc.subscribe("$iothub/methods/res/#");
  svc.publish("$iothub/methods/POST/whoami/?$rid=w1", "{}");
  ASSERT_TRUE(svc.wait_count(3, 5s));
  std::set<std::string> ids;
  for (const auto& m : svc.received()) {
    EXPECT_EQ(m.topic, "$iothub/methods/res/200/?$rid=w1");
    Poco::JSON::Parser parser;
    ids.insert(
        parser.parse(m.payload).extract<Poco::JSON::Object::Ptr>()->getValue<std::string>("id"));
  }
  EXPECT_EQ(ids, (std::set<std::string>{"dev-01", "dev-02", "dev-03"}));

  svc.publish("$iothub/methods/POST/reconnect/?$rid=r1", "{}");
  ASSERT_TRUE(svc.wait_count(6, 5s));  // the answers come out before the DISCONNECTs
  EXPECT_EQ(svc.received().back().topic, "$iothub/methods/res/202/?$rid=r1");
  ASSERT_TRUE(wait_until([&] { return fleet.stats().connects == 6; }, 10s)) << broker.log();
  EXPECT_TRUE(wait_until([&] { return fleet.stats().connected == 3; }, 5s));
  EXPECT_EQ(fleet.stats().disconnects, 0);  // deliberate: not counted as lost
  EXPECT_EQ(count_of(broker.log(), "Received DISCONNECT from dev-0"), 3u);
  fleet.stop();
  loop.join();
  fleet.shutdown();
  EXPECT_EQ(fleet.stats().connected, 0);
}

TEST_F(FleetTest, RunUntilReturnsWhenDoneSaysSoOrAtTheDeadline) {
  DeviceFleet fleet(options());
  fleet.start();
  EXPECT_TRUE(fleet.run_until([&] { return fleet.stats().connected == 3; },
                              std::chrono::steady_clock::now() + 10s));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(fleet.run_until([] { return false; }, start + 300ms));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
  EXPECT_EQ(fleet.size(), 3u);
  EXPECT_EQ(fleet.device_id(0).str(), "dev-01");
}

TEST_F(FleetTest, UnreachableBrokerIsRetriedWithGrowingBackoff) {
  broker.stop();
  FleetOptions o = options();
  o.backoff_min = 100ms;
  o.backoff_max = 400ms;
  DeviceFleet fleet(std::move(o));
  fleet.start();
  fleet.run_until([&] { return fleet.stats().connect_failures >= 12; },
                  std::chrono::steady_clock::now() + 10s);
  EXPECT_GE(fleet.stats().connect_failures, 12);
  std::lock_guard lock(log_mutex);
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log.front().find("cannot connect to localhost:"), std::string::npos) << log.front();
  // Backoff stays within [max/2, max] once it has grown.
  EXPECT_NE(log.back().find("retrying in "), std::string::npos);
  const auto ms = std::stoi(log.back().substr(log.back().rfind("retrying in ") + 12));
  EXPECT_GE(ms, 200);
  EXPECT_LE(ms, 400);
}

}  // namespace
}  // namespace fleetsign::testing
