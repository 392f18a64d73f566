// What travels through a real mosquitto with fleetsign's plugin: direct methods between a service
// client and one device (200, 404, 504, 400), isolation between devices, twins, DPS registration.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <ctime>
#include <thread>

#include "broker_fixture.hpp"
#include "fleetsign/engine/registry.hpp"

namespace fleetsign {
namespace {

using namespace std::chrono_literals;
using Poco::JSON::Object;
using testing::BrokerHome;
using testing::call_topic;
using testing::Message;
using testing::new_rid;
using testing::rid_of;
using testing::status_of;

Object::Ptr json(const std::string& text) {
  Poco::JSON::Parser parser;
  return parser.parse(text).extract<Object::Ptr>();
}

auto answer_to(const std::string& rid) {
  return [rid](const Message& m) {
    return m.topic.rfind("$fleetsign/methods/res/", 0) == 0 && rid_of(m.topic) == rid;
  };
}

class BrokerRouting : public ::testing::Test {
 protected:
  void SetUp() override {
    a = h.issue("dev-a");
    b = h.issue("dev-b");
    h.start_broker();
  }
  // Opens an incident on the devices' CA (both certificates recorded before the compromise) and
  // waits until the broker has taken it in: dev-a comes back pinned (no twin subscription).
  void open_incident_and_wait() {
    {
      auto reg = engine::Registry::open(h.home / "registry.db");
      engine::Incident incident;
      incident.scope_kind = "ca";
      incident.scope = "int";
      incident.reason = "cACompromise";
      incident.opened_at = std::time(nullptr);
      incident.compromised_at = incident.opened_at + 3600;
      reg->open_incident(incident);
    }
    bool pinned = false;
    for (int i = 0; i < 50 && !pinned; ++i) {
      auto probe = h.device(a);
      ASSERT_EQ(probe->connect(), 0) << h.broker_log();
      pinned = !probe->subscribe("$iothub/twin/res/#");
      probe->disconnect();
      if (!pinned) std::this_thread::sleep_for(200ms);
    }
    ASSERT_TRUE(pinned) << h.broker_log();
  }
  BrokerHome h;
  testing::DeviceFiles a, b;
};

TEST_F(BrokerRouting, AMethodCallReachesItsDeviceAndTheAnswerItsCaller) {
  auto dev = h.online_device(a);
  auto other = h.online_device(b);
  auto svc = h.online_service();
  const std::string rid = new_rid();
  svc->publish(call_topic("dev-a", "getConfig", rid, 0, 10), R"({"section":"net"})");
  const auto call = dev->wait_topic_prefix("$iothub/methods/POST/getConfig/?$rid=");
  ASSERT_TRUE(call) << h.broker_log();
  EXPECT_EQ(call->payload, R"({"section":"net"})");
  const std::string drid = rid_of(call->topic);
  EXPECT_EQ(drid.size(), 32u);
  EXPECT_NE(drid, rid) << "the device sees the broker's rid, never the caller's";
  dev->publish("$iothub/methods/res/200/?$rid=" + drid, R"({"mtu":1500})");
  const auto answer = svc->wait_for(answer_to(rid));
  ASSERT_TRUE(answer) << h.broker_log();
  EXPECT_EQ(status_of(answer->topic), 200);
  EXPECT_EQ(answer->payload, R"({"mtu":1500})");
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(other->received().empty()) << "dev-b saw: " << other->received().front().topic;
  // The answer counts once: a replay is dropped.
  dev->publish("$iothub/methods/res/200/?$rid=" + drid, R"({"mtu":9000})");
  EXPECT_FALSE(svc->wait_for(answer_to(rid), 500ms));
}

// A device answering with more than 128 KiB: the caller gets 502 at once (not a timeout later),
// with the device and the size, and the call is over.
TEST_F(BrokerRouting, AnAnswerOver128KiBFailsTheCallWith502AtOnce) {
  auto dev = h.online_device(a);
  auto svc = h.online_service();
  const std::string rid = new_rid();
  svc->publish(call_topic("dev-a", "createCsr", rid, 0, 30), "{}");
  const auto call = dev->wait_topic_prefix("$iothub/methods/POST/createCsr/?$rid=");
  ASSERT_TRUE(call) << h.broker_log();
  const std::string drid = rid_of(call->topic);
  const auto start = std::chrono::steady_clock::now();
  dev->publish("$iothub/methods/res/200/?$rid=" + drid,
               "\"" + std::string(128 * 1024 + 1, 'A') + "\"");
  const auto answer = svc->wait_for(answer_to(rid), 5s);
  ASSERT_TRUE(answer) << h.broker_log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_EQ(status_of(answer->topic), 502);
  const auto body = json(answer->payload);
  EXPECT_EQ(body->getValue<int>("errorCode"), 502001);
  EXPECT_NE(body->getValue<std::string>("message").find("dev-a answered createCsr with 131075"),
            std::string::npos)
      << answer->payload;
  // The call is over: a proper answer afterwards is dropped.
  dev->publish("$iothub/methods/res/200/?$rid=" + drid, "{}");
  EXPECT_FALSE(svc->wait_for(answer_to(rid), 500ms));
}

TEST_F(BrokerRouting, AnOfflineDeviceGets404WhenTheConnectTimeoutPasses) {
  auto svc = h.online_service();
  const std::string rid = new_rid();
  const auto start = std::chrono::steady_clock::now();
  svc->publish(call_topic("dev-a", "reboot", rid, 1, 10), "{}");
  const auto answer = svc->wait_for(answer_to(rid), 5s);
  ASSERT_TRUE(answer) << h.broker_log();
  EXPECT_EQ(status_of(answer->topic), 404);
  EXPECT_EQ(json(answer->payload)->getValue<int>("errorCode"), 404103);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 900ms);
}

TEST_F(BrokerRouting, ACallIsHeldUntilItsDeviceConnectsWithinTheConnectTimeout) {
  auto svc = h.online_service();
  const std::string rid = new_rid();
  svc->publish(call_topic("dev-a", "reboot", rid, 20, 10), R"({"delay":0})");
  std::this_thread::sleep_for(500ms);
  auto dev = h.online_device(a);
  const auto call = dev->wait_topic_prefix("$iothub/methods/POST/reboot/");
  ASSERT_TRUE(call) << h.broker_log();
  dev->publish("$iothub/methods/res/202/?$rid=" + rid_of(call->topic), "null");
  const auto answer = svc->wait_for(answer_to(rid));
  ASSERT_TRUE(answer);
  EXPECT_EQ(status_of(answer->topic), 202);
}

// The Azure SDK connects with clean session false: its subscription outlives a reconnect, so a
// held call goes out when it is back, even before (or without) it subscribes again.
TEST_F(BrokerRouting, APersistentSessionGetsHeldCallsWhenItComesBack) {
  {
    auto dev = h.device(a, "", false);
    ASSERT_EQ(dev->connect(), 0);
    ASSERT_TRUE(dev->subscribe("$iothub/methods/POST/#"));
    dev->disconnect();
  }
  auto svc = h.online_service();
  const std::string rid = new_rid();
  svc->publish(call_topic("dev-a", "resume", rid, 20, 10), "{}");
  std::this_thread::sleep_for(300ms);
  auto dev = h.device(a, "", false);
  ASSERT_EQ(dev->connect(), 0);
  const auto call = dev->wait_topic_prefix("$iothub/methods/POST/resume/");
  ASSERT_TRUE(call) << h.broker_log();
  dev->publish("$iothub/methods/res/200/?$rid=" + rid_of(call->topic), "{}", 1);
  const auto answer = svc->wait_for(answer_to(rid));
  ASSERT_TRUE(answer) << "a QoS 1 answer is served like a QoS 0 one";
  EXPECT_EQ(status_of(answer->topic), 200);
}

// A call held for an offline device that comes back pinned by an incident (issue 10 §4: rotation
// methods only) goes out only when it is a rotation method; any other is answered 400, as it is
// when the device is connected. Both ways back: a clean session that subscribes (dev-a), and a
// persistent one whose subscription outlived it (dev-b).
TEST_F(BrokerRouting, AHeldCallToADeviceBackPinnedByAnIncidentIsRefusedUnlessItRotates) {
  {
    auto dev = h.device(b, "", false);
    ASSERT_EQ(dev->connect(), 0);
    ASSERT_TRUE(dev->subscribe("$iothub/methods/POST/#"));
    dev->disconnect();
  }
  open_incident_and_wait();
  auto svc = h.online_service();
  for (const bool clean : {true, false}) {
    const testing::DeviceFiles& files = clean ? a : b;
    SCOPED_TRACE(files.id);
    const std::string twin_rid = new_rid(), rotation_rid = new_rid();
    svc->publish(call_topic(files.id, "getTwin", twin_rid, 20, 10), "{}");
    svc->publish(call_topic(files.id, "getCertificate", rotation_rid, 20, 10), "{}");
    std::this_thread::sleep_for(300ms);
    auto dev = h.device(files, "", clean);
    ASSERT_EQ(dev->connect(), 0) << h.broker_log();
    if (clean) {
      ASSERT_TRUE(dev->subscribe("$iothub/methods/POST/#"));
    }
    const auto refused = svc->wait_for(answer_to(twin_rid));
    ASSERT_TRUE(refused) << h.broker_log();
    EXPECT_EQ(status_of(refused->topic), 400);
    EXPECT_NE(refused->payload.find("admitted for the rotation methods only"), std::string::npos)
        << refused->payload;
    const auto call = dev->wait_topic_prefix("$iothub/methods/POST/getCertificate/");
    ASSERT_TRUE(call) << h.broker_log();
    dev->publish("$iothub/methods/res/200/?$rid=" + rid_of(call->topic), "{}");
    const auto answer = svc->wait_for(answer_to(rotation_rid));
    ASSERT_TRUE(answer) << h.broker_log();
    EXPECT_EQ(status_of(answer->topic), 200);
    for (const auto& m : dev->received()) {
      EXPECT_EQ(m.topic.find("/getTwin/"), std::string::npos)
          << "the pinned device got " << m.topic;
    }
  }
}

// A pinned session gets no twin (PROTOCOL.md "Incidents"): not even a desired-properties push,
// which the plugin sends to the device's client ID whatever it subscribed to.
TEST_F(BrokerRouting, APinnedDeviceGetsNoDesiredPush) {
  open_incident_and_wait();
  auto dev = h.device(a);
  ASSERT_EQ(dev->connect(), 0) << h.broker_log();
  ASSERT_TRUE(dev->subscribe("$iothub/methods/POST/#"));
  {
    auto reg = engine::Registry::open(h.home / "registry.db");
    EXPECT_EQ(reg->set_desired("dev-a", R"({"secret":"config"})"), 2);
  }
  // The push would go out at the plugin's next registry read (every 50 ms or so).
  std::this_thread::sleep_for(1500ms);
  for (const auto& m : dev->received()) {
    EXPECT_EQ(m.topic.find("$iothub/twin/"), std::string::npos)
        << "the pinned device got " << m.topic << " " << m.payload;
  }
}

TEST_F(BrokerRouting, ASilentDeviceGets504WhenTheResponseTimeoutPasses) {
  auto dev = h.online_device(a);
  auto svc = h.online_service();
  const std::string rid = new_rid();
  const auto start = std::chrono::steady_clock::now();
  svc->publish(call_topic("dev-a", "slow", rid, 0, 5), "{}");
  ASSERT_TRUE(dev->wait_topic_prefix("$iothub/methods/POST/slow/"));
  const auto answer = svc->wait_for(answer_to(rid), 10s);
  ASSERT_TRUE(answer) << h.broker_log();
  EXPECT_EQ(status_of(answer->topic), 504);
  EXPECT_EQ(json(answer->payload)->getValue<int>("errorCode"), 504101);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 4900ms);
}

TEST_F(BrokerRouting, MalformedCallsGet400NamingTheProblem) {
  auto svc = h.online_service();
  struct Case {
    std::string topic, needle;
  };
  const std::string r1 = new_rid(), r2 = new_rid(), r3 = new_rid();
  const std::vector<Case> cases = {
      {call_topic("bad_id!", "m", r1), "device ID"},
      {call_topic("dev-a", "bad*name", r2), "method name"},
      {"$fleetsign/methods/POST/dev-a/m/?$rid=" + r3 + "&$rt=1000", "$rt"},
  };
  for (const auto& c : cases) {
    svc->publish(c.topic, "{}");
    const auto answer = svc->wait_for(answer_to(rid_of(c.topic)));
    ASSERT_TRUE(answer) << c.topic << "\n" << h.broker_log();
    EXPECT_EQ(status_of(answer->topic), 400) << c.topic;
    EXPECT_EQ(json(answer->payload)->getValue<int>("errorCode"), 400027);
    EXPECT_NE(answer->payload.find(c.needle), std::string::npos) << answer->payload;
  }
}

TEST_F(BrokerRouting, ASpyDeviceSeesNothingOfAnotherDevice) {
  auto dev = h.online_device(a);
  auto spy = h.device(b);
  ASSERT_EQ(spy->connect(), 0);
  EXPECT_FALSE(spy->subscribe("#"));
  EXPECT_FALSE(spy->subscribe("$iothub/#"));
  EXPECT_FALSE(spy->subscribe("$fleetsign/methods/res/#"));
  EXPECT_FALSE(spy->subscribe("$dps/registrations/res/#")) << "a hub connection is not DPS";
  EXPECT_TRUE(spy->subscribe("$iothub/methods/POST/#")) << "its own calls, and only those";
  EXPECT_TRUE(spy->subscribe("$iothub/twin/res/#"));
  auto svc = h.online_service();
  const std::string rid = new_rid();
  svc->publish(call_topic("dev-a", "secret", rid), R"({"k":"v"})");
  const auto call = dev->wait_topic_prefix("$iothub/methods/POST/secret/");
  ASSERT_TRUE(call);
  dev->publish("$iothub/twin/GET/?$rid=t1", "");
  ASSERT_TRUE(dev->wait_topic_prefix("$iothub/twin/res/200/?$rid=t1"));
  dev->publish("$iothub/methods/res/200/?$rid=" + rid_of(call->topic), R"({"ok":1})");
  ASSERT_TRUE(svc->wait_for(answer_to(rid)));
  // A device publishing IoT Hub's own topics reaches no one: they are the broker's to serve.
  spy->publish("$iothub/methods/POST/secret/?$rid=1", "{}");
  spy->publish("$iothub/twin/res/200/?$rid=t2", "{}");
  spy->publish("devices/dev-a/messages/events/", "{}");
  std::this_thread::sleep_for(300ms);
  EXPECT_TRUE(spy->received().empty()) << "spy saw: " << spy->received().front().topic;
  EXPECT_TRUE(dev->received().empty()) << "dev-a saw: " << dev->received().front().topic;
}

TEST_F(BrokerRouting, AnAnswerWithAnotherDevicesRidIsIgnored) {
  auto dev = h.online_device(a);
  auto thief = h.online_device(b);
  auto svc = h.online_service();
  const std::string rid = new_rid();
  svc->publish(call_topic("dev-a", "getKey", rid), "{}");
  const auto call = dev->wait_topic_prefix("$iothub/methods/POST/getKey/");
  ASSERT_TRUE(call);
  thief->publish("$iothub/methods/res/200/?$rid=" + rid_of(call->topic), R"({"forged":true})");
  EXPECT_FALSE(svc->wait_for(answer_to(rid), 500ms)) << "dev-b answered for dev-a";
  dev->publish("$iothub/methods/res/200/?$rid=" + rid_of(call->topic), R"({"real":true})");
  const auto answer = svc->wait_for(answer_to(rid));
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->payload, R"({"real":true})");
}

TEST_F(BrokerRouting, TwinGetPatchAndDesiredPush) {
  auto dev = h.online_device(a);
  dev->publish("$iothub/twin/GET/?$rid=1", "");
  auto res = dev->wait_topic_prefix("$iothub/twin/res/");
  ASSERT_TRUE(res) << h.broker_log();
  EXPECT_EQ(res->topic, "$iothub/twin/res/200/?$rid=1");
  auto twin = json(res->payload);
  EXPECT_EQ(twin->getObject("desired")->getValue<int>("$version"), 1);
  EXPECT_EQ(twin->getObject("reported")->getValue<int>("$version"), 1);

  dev->publish("$iothub/twin/PATCH/properties/reported/?$rid=2",
               R"({"fleetsign":{"certificate":{"sha256":"AB","serial":"01","slot":"primary"}}})");
  res = dev->wait_topic_prefix("$iothub/twin/res/");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->topic, "$iothub/twin/res/204/?$rid=2&$version=2");
  dev->publish("$iothub/twin/PATCH/properties/reported/?$rid=3", "[1]");
  res = dev->wait_topic_prefix("$iothub/twin/res/");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->topic, "$iothub/twin/res/400/?$rid=3");
  dev->publish("$iothub/twin/PATCH/properties/reported/?$rid=4",
               R"({"big":")" + std::string(33 * 1024, 'x') + R"("})");
  res = dev->wait_topic_prefix("$iothub/twin/res/");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->topic, "$iothub/twin/res/400/?$rid=4");

  // The registry's desired properties change (what `fleetsign twin set-desired` does): pushed.
  auto reg = engine::Registry::open(h.home / "registry.db");
  EXPECT_EQ(reg->set_desired("dev-a", R"({"telemetryInterval":30})"), 2);
  const auto push = dev->wait_topic_prefix("$iothub/twin/PATCH/properties/desired/", 3s);
  ASSERT_TRUE(push) << h.broker_log();
  EXPECT_EQ(push->topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
  EXPECT_EQ(json(push->payload)->getValue<int>("telemetryInterval"), 30);
  EXPECT_EQ(json(push->payload)->getValue<int>("$version"), 2);

  dev->publish("$iothub/twin/GET/?$rid=5", "");
  res = dev->wait_topic_prefix("$iothub/twin/res/");
  ASSERT_TRUE(res);
  twin = json(res->payload);
  EXPECT_EQ(twin->getObject("desired")->getValue<int>("telemetryInterval"), 30);
  EXPECT_EQ(twin->getObject("reported")->getValue<int>("$version"), 2);
  EXPECT_EQ(twin->getObject("reported")
                ->getObject("fleetsign")
                ->getObject("certificate")
                ->getValue<std::string>("slot"),
            "primary");
  // Reported properties reach the registry (through the writer thread, in a batch).
  for (int i = 0; i < 40 && reg->twin("dev-a")->reported_version != 2; ++i) {
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(reg->twin("dev-a")->reported_version, 2);
  EXPECT_NE(reg->twin("dev-a")->reported.find("primary"), std::string::npos);
}

TEST_F(BrokerRouting, DpsRegistrationIsAssignedToThisBroker) {
  auto dev = h.dps_device(a);
  ASSERT_EQ(dev->connect(), 0) << h.broker_log();
  ASSERT_TRUE(dev->subscribe("$dps/registrations/res/#"));
  EXPECT_FALSE(dev->subscribe("$iothub/methods/POST/#")) << "a DPS connection is not a hub one";
  dev->publish("$dps/registrations/PUT/iotdps-register/?$rid=1", R"({"registrationId":"dev-a"})");
  auto res = dev->wait_topic_prefix("$dps/registrations/res/");
  ASSERT_TRUE(res) << h.broker_log();
  EXPECT_EQ(res->topic, "$dps/registrations/res/202/?$rid=1&retry-after=1");
  const std::string op = json(res->payload)->getValue<std::string>("operationId");
  EXPECT_EQ(json(res->payload)->getValue<std::string>("status"), "assigning");
  dev->publish("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=" + op, "");
  res = dev->wait_topic_prefix("$dps/registrations/res/");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->topic, "$dps/registrations/res/200/?$rid=2");
  const auto state = json(res->payload)->getObject("registrationState");
  EXPECT_EQ(state->getValue<std::string>("assignedHub"), "localhost:" + std::to_string(h.port));
  EXPECT_EQ(state->getValue<std::string>("deviceId"), "dev-a");
  EXPECT_EQ(state->getValue<std::string>("status"), "assigned");
  // Registering as someone else is refused.
  dev->publish("$dps/registrations/PUT/iotdps-register/?$rid=3", R"({"registrationId":"dev-b"})");
  res = dev->wait_topic_prefix("$dps/registrations/res/");
  ASSERT_TRUE(res);
  EXPECT_EQ(status_of(res->topic), 400);
}

TEST_F(BrokerRouting, DpsRefusesADeviceTheDecisionRefusesWith401) {
  h.cli_ok({"enrollment", "group", "disable", "g1"});
  auto dev = h.dps_device(a);
  ASSERT_EQ(dev->connect(), 0) << "DPS answers on the register request, not at connect";
  ASSERT_TRUE(dev->subscribe("$dps/registrations/res/#"));
  dev->publish("$dps/registrations/PUT/iotdps-register/?$rid=9", R"({"registrationId":"dev-a"})");
  const auto res = dev->wait_topic_prefix("$dps/registrations/res/");
  ASSERT_TRUE(res) << h.broker_log();
  EXPECT_EQ(res->topic, "$dps/registrations/res/401/?$rid=9");
  const auto body = json(res->payload);
  EXPECT_EQ(body->getValue<int>("errorCode"), 401002);
  EXPECT_NE(body->getValue<std::string>("message").find("group-disabled"), std::string::npos);
  EXPECT_FALSE(body->getValue<std::string>("trackingId").empty());
  EXPECT_FALSE(body->getValue<std::string>("timestampUtc").empty());
  auto wrong_scope = std::make_unique<testing::MqttClient>(
      h.port, h.broker_dir / "ca.pem",
      testing::ClientOptions{"dev-a", "0neOTHER/registrations/dev-a/api-version=2019-03-31", a.cert,
                             a.key});
  EXPECT_EQ(wrong_scope->connect(), 5) << "another ID scope";
}

}  // namespace
}  // namespace fleetsign
