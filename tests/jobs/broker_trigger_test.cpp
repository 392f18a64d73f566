// The broker backend against a real mosquitto (TLS, client certificates required) and a
// responder client standing in for the plugin and its devices (jobs_support.hpp). When the plugin
// lands, the same calls run against it in tests/broker.
#include "fleetsign/jobs/broker_trigger.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "jobs_support.hpp"
#include "test_home.hpp"

namespace fleetsign::testing {
namespace {

using jobs::BrokerTrigger;
using jobs::BrokerTriggerOptions;
using jobs::MethodRequest;
using Clock = std::chrono::steady_clock;

class BrokerTriggerTest : public ::testing::Test {
 protected:
  TempDir dir;
  TestPki pki = make_pki(dir.path() / "pki");
  Mosquitto broker{pki, dir.path() / "broker"};
  Responder responder{pki, broker.port()};

  BrokerTriggerOptions options() const {
    BrokerTriggerOptions o;
    o.host = "localhost";
    o.port = broker.port();
    o.ca_file = pki.file("ca.pem");
    o.cert_file = pki.file("service.crt");
    o.key_file = pki.file("service.key");
    o.deadline_grace = std::chrono::milliseconds(300);
    return o;
  }
  static MethodRequest request(const std::string& device, const std::string& method = "ping",
                               const std::string& payload = R"({"n":1})") {
    return MethodRequest{device_id(device), method, payload, 5, 0};
  }
};

Poco::JSON::Object::Ptr object(const std::string& text) {
  return Poco::JSON::Parser().parse(text).extract<Poco::JSON::Object::Ptr>();
}

TEST_F(BrokerTriggerTest, RoundTripCarriesTheDevicesStatusAndPayload) {
  BrokerTrigger trigger(options());
  auto r = MethodRequest{device_id("ok-1"), "reboot", R"({"delay":3})", 7, 2};
  const auto outcome = jobs::invoke_and_wait(trigger, r);
  ASSERT_TRUE(outcome) << outcome.error().message;
  EXPECT_EQ(outcome->status, 200);
  const auto answer = object(outcome->payload);
  EXPECT_EQ(answer->getValue<std::string>("device"), "ok-1");
  EXPECT_EQ(answer->getValue<std::string>("method"), "reboot");
  EXPECT_EQ(answer->getObject("payload")->getValue<int>("delay"), 3);
  EXPECT_EQ(answer->getValue<int>("ct"), 2);
  EXPECT_EQ(answer->getValue<int>("rt"), 7);
  EXPECT_EQ(trigger.stats().answers_matched, 1u);
}

TEST_F(BrokerTriggerTest, RequestTopicFollowsTheProtocolWithFreshRandomRids) {
  BrokerTrigger trigger(options());
  EXPECT_EQ(trigger.client_id().rfind("fleetsign-service-", 0), 0u);
  EXPECT_EQ(trigger.client_id().size(), std::string("fleetsign-service-").size() + 16);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(jobs::invoke_and_wait(trigger, request("ok-" + std::to_string(i))));
  }
  std::set<std::string> rids;
  for (const auto& req : responder.requests()) {
    EXPECT_EQ(req.topic,
              "$fleetsign/methods/POST/" + req.device + "/ping/?$rid=" + req.rid + "&$ct=0&$rt=5");
    ASSERT_EQ(req.rid.size(), 32u);
    EXPECT_EQ(req.rid.find_first_not_of("0123456789abcdef"), std::string::npos) << req.rid;
    rids.insert(req.rid);
  }
  EXPECT_EQ(rids.size(), 20u);  // 128 random bits each: no two alike
}

TEST_F(BrokerTriggerTest, StatusesOfDeviceAndBrokerPassThrough) {
  BrokerTrigger trigger(options());
  const auto not_implemented = jobs::invoke_and_wait(trigger, request("nomethod-1"));
  ASSERT_TRUE(not_implemented);
  EXPECT_EQ(not_implemented->status, 501);
  const auto offline = jobs::invoke_and_wait(trigger, request("offline-1"));
  ASSERT_TRUE(offline);
  EXPECT_EQ(offline->status, 404);
  EXPECT_EQ(object(offline->payload)->getValue<int>("errorCode"), 404103);
}

TEST_F(BrokerTriggerTest, SilentBrokerGets504AtTheCallersOwnDeadline) {
  BrokerTrigger trigger(options());
  const auto start = Clock::now();
  const auto outcome =
      jobs::invoke_and_wait(trigger, MethodRequest{device_id("silent-1"), "ping", "null", 1, 0});
  const auto elapsed = Clock::now() - start;
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->status, 504);
  EXPECT_EQ(object(outcome->payload)->getValue<int>("errorCode"), 504101);
  EXPECT_GE(elapsed, std::chrono::milliseconds(1300));  // 1 s + 300 ms grace
  EXPECT_LT(elapsed, std::chrono::milliseconds(3000));
  EXPECT_EQ(trigger.stats().own_deadlines, 1u);
}

TEST_F(BrokerTriggerTest, OnlyTheFirstAnswerUnderTheCallsRidCounts) {
  BrokerTrigger trigger(options());
  const auto forged = jobs::invoke_and_wait(trigger, request("wrongrid-1"));
  ASSERT_TRUE(forged);
  EXPECT_FALSE(object(forged->payload)->has("forged"));  // the answer under another rid
  EXPECT_EQ(object(forged->payload)->getValue<std::string>("device"), "wrongrid-1");
  const auto dup = jobs::invoke_and_wait(trigger, request("dup-1"));
  ASSERT_TRUE(dup);
  EXPECT_FALSE(object(dup->payload)->has("second"));
  // Malformed answer topics are dropped as well.
  responder.publish("$fleetsign/methods/res/200/?$rid=XYZ", "{}");
  responder.publish("$fleetsign/methods/res/2000/?$rid=0123456789abcdef0123456789abcdef", "{}");
  responder.publish("$fleetsign/methods/res/abc", "{}");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(trigger.stats().answers_matched, 2u);
  EXPECT_EQ(trigger.stats().answers_dropped, 5u);  // forged, second, three malformed
}

TEST_F(BrokerTriggerTest, OversizedAnswerIsAFailureNotAResult) {
  BrokerTrigger trigger(options());
  const auto outcome = jobs::invoke_and_wait(trigger, request("big-1"));
  ASSERT_FALSE(outcome);
  EXPECT_EQ(outcome.error().code, ErrorCode::kServiceUnavailable);
  EXPECT_NE(outcome.error().message.find("131073 bytes"), std::string::npos);
}

TEST_F(BrokerTriggerTest, BadRequestsAreRefusedBeforeAnythingIsPublished) {
  BrokerTrigger trigger(options());
  const auto name = jobs::invoke_and_wait(trigger, request("ok-1", "re boot"));
  ASSERT_FALSE(name);
  EXPECT_EQ(name.error().code, ErrorCode::kInvalidArgument);
  const auto wildcard = jobs::invoke_and_wait(trigger, request("ok-1", "#"));
  ASSERT_FALSE(wildcard);
  const auto payload = jobs::invoke_and_wait(trigger, request("ok-1", "ping", "{not json"));
  ASSERT_FALSE(payload);
  EXPECT_NE(payload.error().message.find("not JSON"), std::string::npos);
  const auto big = jobs::invoke_and_wait(
      trigger, request("ok-1", "ping", "\"" + std::string(jobs::kMaxMethodPayload, 'a') + "\""));
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, ErrorCode::kInputTooLarge);
  auto timeout = request("ok-1");
  timeout.response_timeout_s = 301;
  EXPECT_FALSE(jobs::invoke_and_wait(trigger, timeout));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_TRUE(responder.requests().empty());
  EXPECT_EQ(trigger.stats().published, 0u);
}

TEST_F(BrokerTriggerTest, BackPressureHoldsCallsInFlightAtTheLimitAndAnswersMatchByRid) {
  auto o = options();
  o.max_in_flight = 8;
  BrokerTrigger trigger(o);
  constexpr int kCalls = 40;
  jobs::CompletionQueue queue;
  std::map<jobs::CallId, std::string> device_of;
  std::mutex device_mutex;
  std::thread caller([&] {
    for (int i = 0; i < kCalls; ++i) {
      const std::string device = "held-" + std::to_string(i);
      const auto id = trigger.invoke(request(device), queue.sink());
      const std::lock_guard lock(device_mutex);
      device_of[id] = device;
    }
  });
  std::size_t done = 0;
  std::size_t saw_full = 0;
  while (done < kCalls) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    saw_full += responder.held() == 8 && trigger.in_flight() == 8 ? 1 : 0;
    responder.release_held();  // newest first: answers come back out of order
    while (auto item = queue.pop(std::chrono::milliseconds(200))) {
      ASSERT_TRUE(item->outcome) << item->outcome.error().message;
      EXPECT_EQ(item->outcome->status, 200);
      const std::lock_guard lock(device_mutex);
      EXPECT_EQ(object(item->outcome->payload)->getValue<std::string>("device"),
                device_of[item->id]);
      ++done;
    }
  }
  caller.join();
  EXPECT_LE(responder.max_held(), 8u);
  EXPECT_GE(saw_full, 3u);  // the caller was held back at the limit, again and again
  EXPECT_EQ(trigger.in_flight(), 0u);
}

TEST_F(BrokerTriggerTest, LosingTheBrokerFailsCallsInFlightAtOnce) {
  BrokerTrigger trigger(options());
  jobs::CompletionQueue queue;
  trigger.invoke(request("held-1"), queue.sink());
  ASSERT_TRUE(responder.wait_requests(1, 2000));
  const auto start = Clock::now();
  broker.stop();
  const auto item = queue.pop(std::chrono::seconds(5));
  ASSERT_TRUE(item);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
  ASSERT_FALSE(item->outcome);
  EXPECT_EQ(item->outcome.error().code, ErrorCode::kServiceUnavailable);
  // While the broker is gone, a call fails at once instead of waiting for its deadline.
  const auto later = jobs::invoke_and_wait(trigger, request("ok-1"));
  ASSERT_FALSE(later);
  EXPECT_EQ(later.error().code, ErrorCode::kServiceUnavailable);
}

TEST_F(BrokerTriggerTest, ClosingTheTriggerCompletesEveryCallInFlight) {
  jobs::CompletionQueue queue;
  {
    BrokerTrigger trigger(options());
    trigger.invoke(request("held-1"), queue.sink());
    trigger.invoke(request("held-2"), queue.sink());
    ASSERT_TRUE(responder.wait_requests(2, 2000));
  }
  for (int i = 0; i < 2; ++i) {
    const auto item = queue.pop(std::chrono::milliseconds(100));
    ASSERT_TRUE(item);
    ASSERT_FALSE(item->outcome);
    EXPECT_EQ(item->outcome.error().code, ErrorCode::kServiceUnavailable);
  }
}

TEST_F(BrokerTriggerTest, UnreachableOrUntrustedBrokerIsServiceUnavailable) {
  auto closed = options();
  closed.port = free_port();
  const Error refused = error_from([&] { BrokerTrigger t(closed); });
  EXPECT_EQ(refused.code(), ErrorCode::kServiceUnavailable);
  EXPECT_NE(std::string(refused.what()).find("localhost:" + std::to_string(closed.port)),
            std::string::npos)
      << refused.what();

  auto untrusted = options();
  untrusted.ca_file = pki.file("other-ca.pem");
  const Error tls = error_from([&] { BrokerTrigger t(untrusted); });
  EXPECT_EQ(tls.code(), ErrorCode::kServiceUnavailable);
  EXPECT_NE(std::string(tls.what()).find("certificate verify failed"), std::string::npos)
      << tls.what();

  auto wrong_name = options();
  wrong_name.host = "127.0.0.1";  // the broker's certificate names only localhost
  const Error name = error_from([&] { BrokerTrigger t(wrong_name); });
  EXPECT_EQ(name.code(), ErrorCode::kServiceUnavailable);

  auto no_key = options();
  no_key.key_file = dir.path() / "missing.key";
  EXPECT_EQ(error_from([&] { BrokerTrigger t(no_key); }).code(), ErrorCode::kIo);
}

}  // namespace
}  // namespace fleetsign::testing
