// The real fleetsign-device program against a real mosquitto (TLS client authentication) on a
// free port. The test plays the service: until the broker plugin routes calls to one device, a
// publish to $iothub/methods/POST/... reaches every device of the agent, and the answers come
// back on $iothub/methods/res/#, which the test subscribes to.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <sstream>
#include <thread>

#include "device_fixture.hpp"

namespace fleetsign::testing {
namespace {

using namespace std::chrono_literals;

Poco::JSON::Object::Ptr parse(const std::string& text) {
  Poco::JSON::Parser parser;
  return parser.parse(text).extract<Poco::JSON::Object::Ptr>();
}

// The manifest's SHA-256 of a device's certificate (the batch wrote it; the agent must agree).
std::string manifest_sha256(const DevicePki& pki, const std::string& id) {
  std::istringstream lines(read_file(pki.batch / "manifest.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    const auto o = parse(line);
    if (o->getValue<std::string>("device_id") == id) return o->getValue<std::string>("sha256");
  }
  return "";
}

class AgentTest : public ::testing::Test {
 protected:
  const DevicePki& pki = DevicePki::get();
  TempDir dir;
  Broker broker{pki, dir.path() / "broker"};

  void SetUp() override { broker.start(); }

  std::vector<std::string> args(std::vector<std::string> extra) const {
    std::vector<std::string> a{"--broker", "localhost:" + std::to_string(broker.port()), "--trust",
                               pki.server_ca.string()};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  std::unique_ptr<Agent> agent(std::vector<std::string> extra, const std::string& name = "agent") {
    return std::make_unique<Agent>(dir.path() / name, args(std::move(extra)));
  }
  // A service-side client subscribed to the method answers.
  std::unique_ptr<MqttClient> service() {
    auto c = std::make_unique<MqttClient>(broker, pki, "caller-01");
    c->subscribe("$iothub/methods/res/#");
    return c;
  }
};

TEST_F(AgentTest, AnswersPingUnknownMethodsAndNonJsonPayloadsAsTheReferenceAgent) {
  auto a = agent({"--dir", pki.batch.string(), "--count", "1"});
  ASSERT_TRUE(a->wait_log("dev-01 connected to localhost:", 10s)) << a->log();
  auto svc = service();
  svc->publish("$iothub/methods/POST/ping/?$rid=r1", R"({"hello":[1,"two"]})");
  svc->publish("$iothub/methods/POST/ping/?$rid=r2", "42");
  svc->publish("$iothub/methods/POST/rotateNow/?$rid=r3", "{}");
  svc->publish("$iothub/methods/POST/ping/?$rid=r4", "{not json");
  svc->publish("$iothub/methods/POST/getCertificate/?$rid=r5", "null");

  const auto r1 = svc->wait_topic("$iothub/methods/res/200/?$rid=r1", 5s);
  ASSERT_TRUE(r1) << a->log();
  EXPECT_EQ(r1->payload, R"({"hello":[1,"two"]})");
  const auto r2 = svc->wait_topic("$iothub/methods/res/200/?$rid=r2", 5s);
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->payload, "42");
  const auto r3 = svc->wait_topic("$iothub/methods/res/501/?$rid=r3", 5s);
  ASSERT_TRUE(r3) << a->log();
  EXPECT_NE(parse(r3->payload)->getValue<std::string>("message").find("rotateNow"),
            std::string::npos);
  const auto r4 = svc->wait_topic("$iothub/methods/res/400/?$rid=r4", 5s);
  ASSERT_TRUE(r4) << a->log();
  EXPECT_TRUE(parse(r4->payload)->has("message"));
  const auto r5 = svc->wait_topic("$iothub/methods/res/200/?$rid=r5", 5s);
  ASSERT_TRUE(r5);
  const auto cert = parse(r5->payload);
  EXPECT_EQ(cert->getValue<std::string>("sha256"), manifest_sha256(pki, "dev-01"));
  EXPECT_EQ(cert->getValue<std::string>("slot"), "primary");
  EXPECT_EQ(cert->getValue<std::string>("notAfter").size(), 20u);
  // One device, one answer per call: nothing else came back.
  EXPECT_EQ(svc->received().size(), 5u);
}

TEST_F(AgentTest, FailFractionOneAnswersEveryMethod500) {
  auto a = agent({"--dir", pki.batch.string(), "--count", "2", "--fail-fraction", "1"});
  ASSERT_TRUE(a->wait_log(" connected to ", 10s, 2)) << a->log();
  auto svc = service();
  svc->publish("$iothub/methods/POST/ping/?$rid=f1", "{}");
  svc->publish("$iothub/methods/POST/getCertificate/?$rid=f2", "{}");
  const auto count = [&](const std::string& topic) {
    std::size_t n = 0;
    for (const auto& m : svc->received()) n += m.topic == topic ? 1 : 0;
    return n;
  };
  svc->wait_count(4, 5s);
  std::this_thread::sleep_for(200ms);  // a fifth answer would be a bug
  EXPECT_EQ(count("$iothub/methods/res/500/?$rid=f1"), 2u);
  EXPECT_EQ(count("$iothub/methods/res/500/?$rid=f2"), 2u);
  EXPECT_EQ(svc->received().size(), 4u);
}

TEST_F(AgentTest, AsksForItsTwinAndReportsItsCertificateOnConnect) {
  MqttClient spy(broker, pki, "caller-02");
  spy.subscribe("$iothub/twin/#");
  auto a = agent({"--dir", pki.batch.string(), "--count", "1"});
  const auto get = spy.wait_for(
      [](const Message& m) { return m.topic.rfind("$iothub/twin/GET/?$rid=", 0) == 0; }, 10s);
  ASSERT_TRUE(get) << a->log();
  const auto patch = spy.wait_for(
      [](const Message& m) {
        return m.topic.rfind("$iothub/twin/PATCH/properties/reported/?$rid=", 0) == 0;
      },
      5s);
  ASSERT_TRUE(patch);
  const auto cert = parse(patch->payload)->getObject("fleetsign")->getObject("certificate");
  ASSERT_TRUE(cert);
  EXPECT_EQ(cert->getValue<std::string>("sha256"), manifest_sha256(pki, "dev-01"));
  EXPECT_EQ(cert->getValue<std::string>("slot"), "primary");
  EXPECT_FALSE(cert->getValue<std::string>("serial").empty());
  // The MQTT identity is the one the Azure SDK presents.
  const std::string log = broker.log();
  EXPECT_NE(log.find("New client connected from 127.0.0.1"), std::string::npos);
  EXPECT_NE(log.find("as dev-01 (p2, c0, k180, u'dev-01')"), std::string::npos) << log;
}

TEST_F(AgentTest, ReconnectsAfterTheBrokerRestartsAndAnswersAgain) {
  auto a = agent({"--dir", pki.batch.string()});
  ASSERT_TRUE(a->wait_log(" connected to ", 10s, 3)) << a->log();
  broker.stop();
  ASSERT_TRUE(a->wait_log("disconnected from localhost:", 5s, 3)) << a->log();
  std::this_thread::sleep_for(300ms);
  broker.start();
  ASSERT_TRUE(a->wait_log(" connected to ", 15s, 6)) << a->log();
  auto svc = service();
  svc->publish("$iothub/methods/POST/ping/?$rid=after", "true");
  EXPECT_TRUE(svc->wait_count(3, 5s));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(svc->received().size(), 3u) << a->log();
}

TEST_F(AgentTest, OfflineFractionOneNeverConnectsAndJsonSummarySaysSo) {
  auto a =
      agent({"--dir", pki.batch.string(), "--offline-fraction", "1", "--duration", "1", "--json"});
  ASSERT_EQ(a->wait(10s), 0) << a->log();
  const auto summary = parse(a->out());
  EXPECT_EQ(summary->getValue<int>("devices"), 3);
  EXPECT_EQ(summary->getValue<int>("online"), 0);
  EXPECT_EQ(summary->getValue<int>("connects"), 0);
  EXPECT_EQ(broker.log().find("New client connected"), std::string::npos);
}

TEST_F(AgentTest, OfflineFractionIsExactAndChosenBySeed) {
  auto a = agent({"--dir", pki.batch.string(), "--offline-fraction", "0.34", "--duration", "2",
                  "--json", "--seed", "7"});
  ASSERT_EQ(a->wait(10s), 0) << a->log();
  const auto summary = parse(a->out());
  EXPECT_EQ(summary->getValue<int>("online"), 2);  // round(0.34 * 3) = 1 offline
  EXPECT_EQ(summary->getValue<int>("connected"), 2);
  EXPECT_EQ(count_of(broker.log(), "New client connected"), 2u);
}

TEST_F(AgentTest, StopsOnSigtermWithACleanDisconnectAndExitZero) {
  auto a = agent({"--dir", pki.batch.string(), "--count", "2", "--json"});
  ASSERT_TRUE(a->wait_log(" connected to ", 10s, 2)) << a->log();
  EXPECT_EQ(a->stop(SIGTERM), 0) << a->log();
  const auto summary = parse(a->out());
  EXPECT_EQ(summary->getValue<int>("signal"), SIGTERM);
  std::this_thread::sleep_for(200ms);
  const std::string log = broker.log();
  EXPECT_NE(log.find("Received DISCONNECT from dev-01"), std::string::npos) << log;
  EXPECT_NE(log.find("Received DISCONNECT from dev-02"), std::string::npos) << log;
}

TEST_F(AgentTest, RunsTheDevicesOfABundle) {
  auto a = agent({"--bundle", (pki.bundle / "bundle.pem").string()});
  ASSERT_TRUE(a->wait_log("bun-02 connected to ", 10s)) << a->log();
  EXPECT_TRUE(a->wait_log("bun-01 connected to ", 1s)) << a->log();
}

TEST_F(AgentTest, WritesTheStateDirectoryOnFirstRunAndReusesItAfter) {
  const fs::path state = dir.path() / "state";
  const fs::path flash = state / "dev-01";
  {
    auto a = agent({"--dir", pki.batch.string(), "--count", "1", "--state", state.string()});
    ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
    EXPECT_EQ(a->stop(), 0);
  }
  struct stat st {};
  ASSERT_EQ(::stat((flash / "primary.key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(flash.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(read_file(flash / "primary.key.pem"), read_file(pki.key("dev-01")));
  EXPECT_EQ(read_file(flash / "primary.chain.pem"), read_file(pki.cert("dev-01")));
  EXPECT_EQ(parse(read_file(flash / "slot.json"))->getValue<std::string>("active"), "primary");

  // What a rotation leaves in the flash: a new certificate for dev-01 in the secondary slot, made
  // active. The next run connects with it, not with the batch's.
  const fs::path reissued = dir.path() / "reissued";
  std::string out;
  ASSERT_EQ(fleetsign_cli(pki.home,
                          "issue --ca int --generate 1 --id-pattern dev-{02} --reissue "
                          "--out " +
                              reissued.string(),
                          &out),
            0)
      << out;
  write_file(flash / "secondary.chain.pem", read_file(reissued / "dev-01_fullchain.pem"));
  write_file(flash / "secondary.key.pem", read_file(reissued / "dev-01_key.pem"));
  write_file(flash / "slot.json", R"({"active":"secondary"})");
  auto a = agent({"--dir", pki.batch.string(), "--count", "1", "--state", state.string()}, "again");
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
  EXPECT_NE(a->log().find("dev-01 runs its secondary slot from the state directory"),
            std::string::npos)
      << a->log();
  auto svc = service();
  svc->publish("$iothub/methods/POST/getCertificate/?$rid=s1", "");
  const auto answer = svc->wait_topic("$iothub/methods/res/200/?$rid=s1", 5s);
  ASSERT_TRUE(answer) << a->log();
  EXPECT_EQ(parse(answer->payload)->getValue<std::string>("slot"), "secondary");
  EXPECT_NE(parse(answer->payload)->getValue<std::string>("sha256"),
            manifest_sha256(pki, "dev-01"));
}

TEST_F(AgentTest, RefusesAFlashWhoseKeyDoesNotMatchItsCertificateNamingTheFile) {
  const fs::path state = dir.path() / "state";
  std::string out;
  const std::string cmd = "--broker localhost:" + std::to_string(broker.port()) + " --trust " +
                          pki.server_ca.string() + " --dir " + pki.batch.string() +
                          " --count 1 --duration 0.2 --state " + state.string();
  ASSERT_EQ(run_device(cmd, &out), 0) << out;
  write_file(state / "dev-01" / "primary.key.pem", read_file(pki.key("dev-02")));
  EXPECT_EQ(run_device(cmd, &out), 4);  // key_cert_mismatch
  EXPECT_NE(out.find((state / "dev-01" / "primary.key.pem").string()), std::string::npos) << out;
  EXPECT_NE(out.find("does not match the certificate of dev-01"), std::string::npos) << out;
  EXPECT_NE(out.find("[key_cert_mismatch]"), std::string::npos) << out;
}

// The test plays DPS on the same broker: it answers the register request 202 (assigning), then
// the operation-status request 200 with this broker as the assigned hub.
TEST_F(AgentTest, RegistersThroughDpsThenConnectsToTheAssignedHub) {
  MqttClient dps(broker, pki, "caller-03");
  dps.subscribe("$dps/registrations/PUT/#");
  dps.subscribe("$dps/registrations/GET/#");
  auto a = agent({"--dir", pki.batch.string(), "--count", "1", "--dps", "0ne00FLEET"});
  const auto rid_of = [](const std::string& topic) {
    const auto at = topic.find("?$rid=");
    return topic.substr(at + 6, topic.find('&', at) - at - 6);
  };
  const auto reg = dps.wait_for(
      [](const Message& m) {
        return m.topic.rfind("$dps/registrations/PUT/iotdps-register/?$rid=", 0) == 0;
      },
      10s);
  ASSERT_TRUE(reg) << a->log();
  EXPECT_EQ(parse(reg->payload)->getValue<std::string>("registrationId"), "dev-01");
  dps.publish("$dps/registrations/res/202/?$rid=" + rid_of(reg->topic) + "&retry-after=1",
              R"({"operationId":"4.abc.op-1","status":"assigning"})");
  const auto status = dps.wait_for(
      [](const Message& m) {
        return m.topic.rfind("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=", 0) == 0;
      },
      5s);
  ASSERT_TRUE(status) << a->log();
  EXPECT_NE(status->topic.find("&operationId=4.abc.op-1"), std::string::npos);
  const std::string hub = "localhost:" + std::to_string(broker.port());
  dps.publish("$dps/registrations/res/200/?$rid=" + rid_of(status->topic),
              R"({"operationId":"4.abc.op-1","status":"assigned","registrationState":{)"
              R"("registrationId":"dev-01","assignedHub":")" +
                  hub +
                  R"(","deviceId":"dev-01","status":"assigned","substatus":"initialAssignment"}})");
  ASSERT_TRUE(a->wait_log("dev-01 registered through DPS: assigned to " + hub, 5s)) << a->log();
  ASSERT_TRUE(a->wait_log("dev-01 connected to " + hub, 5s)) << a->log();
  // Two sessions: DPS (clean) then the hub (clean session false).
  const std::string log = broker.log();
  EXPECT_NE(log.find("as dev-01 (p2, c1, k180"), std::string::npos) << log;
  EXPECT_NE(log.find("as dev-01 (p2, c0, k180"), std::string::npos) << log;
}

TEST_F(AgentTest, DpsRefusalIsLoggedAndRetriedWithBackoff) {
  MqttClient dps(broker, pki, "caller-03");
  dps.subscribe("$dps/registrations/PUT/#");
  auto a = agent({"--dir", pki.batch.string(), "--count", "1", "--dps", "0ne00FLEET"});
  const auto reg = dps.wait_for(
      [](const Message& m) { return m.topic.rfind("$dps/registrations/PUT/", 0) == 0; }, 10s);
  ASSERT_TRUE(reg) << a->log();
  const std::string rid = reg->topic.substr(reg->topic.find("?$rid=") + 6);
  dps.publish("$dps/registrations/res/401/?$rid=" + rid,
              R"({"errorCode":401002,"trackingId":"t","message":"enrollment is disabled"})");
  ASSERT_TRUE(
      a->wait_log("DPS refused the registration: 401: enrollment is disabled; retrying in", 5s))
      << a->log();
  // It comes back: a second register request, after the backoff.
  EXPECT_TRUE(dps.wait_count(2, 5s)) << a->log();
  EXPECT_EQ(a->log().find(" connected to "), std::string::npos);
}

}  // namespace
}  // namespace fleetsign::testing
