// The IoT Hub backend against a local HTTPS server that implements IoT Hub's published contract
// for direct methods (fake_iothub.hpp). These tests check fleetsign against that contract — the
// path, api-version, headers, body and SAS signature Azure documents, and the answers it documents
// (200, 404, 504, 429, 401) — not against the cloud itself, which this machine cannot reach.
#include "fleetsign/jobs/iothub_trigger.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "fake_iothub.hpp"
#include "jobs_support.hpp"
#include "test_home.hpp"

namespace fleetsign::testing {
namespace {

using jobs::IotHubTrigger;
using jobs::IotHubTriggerOptions;
using jobs::MethodRequest;
using jobs::ServiceConnectionString;
using Clock = std::chrono::steady_clock;

class IotHubTriggerTest : public ::testing::Test {
 protected:
  TempDir dir;
  TestPki pki = make_pki(dir.path() / "pki");
  FakeIotHub hub{pki, "service", "shared-key-of-the-fake-hub"};

  IotHubTriggerOptions options(const std::string& connection) const {
    IotHubTriggerOptions o(ServiceConnectionString::parse(connection));
    o.ca_file = pki.file("ca.pem");
    o.backoff_initial = std::chrono::milliseconds(20);
    o.deadline_grace = std::chrono::milliseconds(300);
    return o;
  }
  IotHubTriggerOptions options() const { return options(hub.connection_string()); }
  static MethodRequest request(const std::string& device, const std::string& payload = "null") {
    return MethodRequest{device_id(device), "ping", payload, 5, 0};
  }
};

Poco::JSON::Object::Ptr object(const std::string& text) {
  return Poco::JSON::Parser().parse(text).extract<Poco::JSON::Object::Ptr>();
}

TEST_F(IotHubTriggerTest, RoundTripPassesEveryCheckOfTheContract) {
  IotHubTrigger trigger(options());
  const auto outcome = jobs::invoke_and_wait(
      trigger, MethodRequest{device_id("ok-1"), "reboot", R"({"delay":3,"why":"a\"b"})", 7, 2});
  ASSERT_TRUE(outcome) << outcome.error().message;
  EXPECT_EQ(outcome->status, 200) << outcome->payload;
  const auto echo = object(outcome->payload);
  EXPECT_EQ(echo->getValue<std::string>("device"), "ok-1");
  EXPECT_EQ(echo->getObject("payload")->getValue<std::string>("why"), "a\"b");
  const auto seen = hub.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].uri, "/twins/ok-1/methods?api-version=2021-04-12");
  EXPECT_EQ(seen[0].content_type, "application/json; charset=utf-8");
  EXPECT_EQ(seen[0].body, R"({"methodName":"reboot","payload":{"delay":3,"why":"a\"b"},)"
                          R"("responseTimeoutInSeconds":7,"connectTimeoutInSeconds":2})");
}

TEST_F(IotHubTriggerTest, DeviceIdIsEncodedInThePath) {
  policy::Policy wide;
  wide.device_id.extra_chars = ":._";
  auto id = engine::DeviceId::check(wide, "ok-plant:1");
  ASSERT_TRUE(id);
  IotHubTrigger trigger(options());
  const auto outcome = jobs::invoke_and_wait(trigger, MethodRequest{*id, "ping", "null", 5, 0});
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->status, 200);
  EXPECT_EQ(hub.seen().at(0).uri, "/twins/ok-plant%3A1/methods?api-version=2021-04-12");
}

TEST_F(IotHubTriggerTest, HubVerdictsAndDeviceStatusesPassThrough) {
  IotHubTrigger trigger(options());
  const auto offline = jobs::invoke_and_wait(trigger, request("offline-1"));
  ASSERT_TRUE(offline);
  EXPECT_EQ(offline->status, 404);
  EXPECT_EQ(object(offline->payload)->getValue<int>("errorCode"), 404103);
  const auto silent = jobs::invoke_and_wait(trigger, request("silent-1"));
  ASSERT_TRUE(silent);
  EXPECT_EQ(silent->status, 504);
  EXPECT_EQ(object(silent->payload)->getValue<int>("errorCode"), 504101);
  const auto not_implemented = jobs::invoke_and_wait(trigger, request("nomethod-1"));
  ASSERT_TRUE(not_implemented);
  EXPECT_EQ(not_implemented->status, 501);
  EXPECT_EQ(object(not_implemented->payload)->getValue<std::string>("message"), "not implemented");
}

TEST_F(IotHubTriggerTest, ThrottlingIsRetriedNoSoonerThanRetryAfter) {
  hub.throttle("ok-throttled", 1, 1);
  IotHubTrigger trigger(options());
  const auto start = Clock::now();
  const auto outcome = jobs::invoke_and_wait(trigger, request("ok-throttled"));
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->status, 200);
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(1000));
  EXPECT_EQ(hub.requests_for("ok-throttled"), 2);
  EXPECT_EQ(trigger.stats().retries_429, 1u);
}

TEST_F(IotHubTriggerTest, ThrottlingGivesUpAfterMaxAttemptsWith429) {
  hub.throttle("ok-always", 100, 0);
  auto o = options();
  o.max_attempts = 3;
  IotHubTrigger trigger(std::move(o));
  const auto start = Clock::now();
  const auto outcome = jobs::invoke_and_wait(trigger, request("ok-always"));
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->status, 429);
  EXPECT_EQ(hub.requests_for("ok-always"), 3);
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(60));  // 20 ms, then 40 ms
}

TEST_F(IotHubTriggerTest, WrongKeyOrExpiredTokenGets401) {
  const std::string wrong = "HostName=localhost:" + std::to_string(hub.port()) +
                            ";SharedAccessKeyName=service;SharedAccessKey=d3Jvbmcta2V5";
  IotHubTrigger bad_key(options(wrong));
  const auto refused = jobs::invoke_and_wait(bad_key, request("ok-1"));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);
  EXPECT_NE(refused->payload.find("bad signature"), std::string::npos);

  engine::FixedClock past(std::time(nullptr) - 7200);
  auto o = options();
  o.clock = &past;  // the token expired an hour ago
  IotHubTrigger expired(std::move(o));
  const auto late = jobs::invoke_and_wait(expired, request("ok-1"));
  ASSERT_TRUE(late);
  EXPECT_EQ(late->status, 401);
  EXPECT_NE(late->payload.find("expired"), std::string::npos);
}

TEST_F(IotHubTriggerTest, OneWorkerReusesOneConnection) {
  auto o = options();
  o.workers = 1;
  IotHubTrigger trigger(std::move(o));
  for (int i = 0; i < 20; ++i) {
    const auto outcome = jobs::invoke_and_wait(trigger, request("ok-" + std::to_string(i)));
    ASSERT_TRUE(outcome);
    EXPECT_EQ(outcome->status, 200);
  }
  EXPECT_EQ(hub.total_connections(), 1);
  EXPECT_EQ(trigger.stats().requests, 20u);
}

TEST_F(IotHubTriggerTest, WorkersRunCallsConcurrentlyAndResultsComeAsTheyFinish) {
  auto o = options();
  o.workers = 4;
  o.max_in_flight = 8;
  IotHubTrigger trigger(std::move(o));
  jobs::CompletionQueue queue;
  std::map<jobs::CallId, std::string> device_of;
  const auto start = Clock::now();
  for (int i = 0; i < 24; ++i) {
    const std::string device = "slow-" + std::to_string(i);
    device_of[trigger.invoke(request(device), queue.sink())] = device;
    EXPECT_LE(trigger.in_flight(), 8u);
  }
  trigger.wait_idle();
  const auto elapsed = Clock::now() - start;
  ASSERT_EQ(queue.size(), 24u);
  while (auto item = queue.pop(std::chrono::milliseconds(10))) {
    ASSERT_TRUE(item->outcome);
    EXPECT_EQ(object(item->outcome->payload)->getValue<std::string>("device"), device_of[item->id]);
  }
  EXPECT_EQ(hub.max_concurrent(), 4);
  EXPECT_LE(hub.total_connections(), 4);
  EXPECT_LT(elapsed, std::chrono::milliseconds(24 * 100 / 2));  // 24 × 100 ms, 4 at a time
}

TEST_F(IotHubTriggerTest, UntrustedOrMisnamedHubIsServiceUnavailable) {
  auto system_only = options();
  system_only.ca_file.reset();  // the system store does not know the test CA
  IotHubTrigger untrusted(std::move(system_only));
  const auto a = jobs::invoke_and_wait(untrusted, request("ok-1"));
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().code, ErrorCode::kServiceUnavailable);

  // The certificate names localhost; 127.0.0.1 is the same server under a name it lacks.
  const std::string by_ip = "HostName=127.0.0.1:" + std::to_string(hub.port()) +
                            ";SharedAccessKeyName=service;SharedAccessKey=c2hhcmVk";
  IotHubTrigger misnamed(options(by_ip));
  const auto b = jobs::invoke_and_wait(misnamed, request("ok-1"));
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kServiceUnavailable);
  EXPECT_TRUE(hub.seen().empty());  // neither request got past the handshake
}

TEST_F(IotHubTriggerTest, OversizedOrMalformedAnswersAreFailures) {
  IotHubTrigger trigger(options());
  const auto big = jobs::invoke_and_wait(trigger, request("big-1"));
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, ErrorCode::kServiceUnavailable);
  const auto html = jobs::invoke_and_wait(trigger, request("badjson-1"));
  ASSERT_FALSE(html);
  EXPECT_NE(html.error().message.find("not a method result"), std::string::npos);
  // The connection dropped after the oversized body is replaced: the next call works.
  const auto next = jobs::invoke_and_wait(trigger, request("ok-2"));
  ASSERT_TRUE(next);
  EXPECT_EQ(next->status, 200);
}

TEST_F(IotHubTriggerTest, NoAnswerWithinTheTimeoutsIs504FromTheCallersDeadline) {
  IotHubTrigger trigger(options());
  const auto start = Clock::now();
  const auto outcome = jobs::invoke_and_wait(trigger, request("hang-1"));
  const auto elapsed = Clock::now() - start;
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->status, 504);
  EXPECT_GE(elapsed, std::chrono::milliseconds(5300));  // rt 5 s + 300 ms grace
  EXPECT_LT(elapsed, std::chrono::milliseconds(7500));
}

TEST_F(IotHubTriggerTest, BadRequestsNeverReachTheHub) {
  IotHubTrigger trigger(options());
  EXPECT_FALSE(jobs::invoke_and_wait(trigger, request("ok-1", "{nope")));
  EXPECT_FALSE(jobs::invoke_and_wait(trigger, MethodRequest{device_id("ok-1"), "a/b", "1", 5, 0}));
  EXPECT_TRUE(hub.seen().empty());
}

}  // namespace
}  // namespace fleetsign::testing
