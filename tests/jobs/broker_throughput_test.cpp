// How fast the broker backend turns calls around with many in flight, against a plain mosquitto
// and the responder (one libmosquitto client answering for every device). It measures the trigger
// and the responder, not fleetsign's plugin: that figure is the benchmark's (issue 8 §5).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <vector>

#include "fleetsign/jobs/broker_trigger.hpp"
#include "jobs_support.hpp"
#include "test_home.hpp"

namespace fleetsign::testing {
namespace {

using Clock = std::chrono::steady_clock;

TEST(BrokerTriggerThroughput, ManyCallsInFlightAllAnswerAndReportRate) {
  TempDir dir;
  const TestPki pki = make_pki(dir.path() / "pki");
  Mosquitto broker(pki, dir.path() / "broker");
  Responder responder(pki, broker.port());
  jobs::BrokerTriggerOptions o;
  o.port = broker.port();
  o.ca_file = pki.file("ca.pem");
  o.cert_file = pki.file("service.crt");
  o.key_file = pki.file("service.key");
  o.max_in_flight = 1000;
  jobs::BrokerTrigger trigger(o);

  constexpr std::size_t kCalls = 20000;
  std::vector<Clock::time_point> started(kCalls), ended(kCalls);
  std::atomic<std::size_t> ok{0};
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < kCalls; ++i) {
    started[i] = Clock::now();
    trigger.invoke(jobs::MethodRequest{device_id("ok-" + std::to_string(i % 5000)), "ping",
                                       R"({"n":1})", 30, 0},
                   [&](jobs::CallId id, jobs::MethodOutcome outcome) {
                     ended[id - 1] = Clock::now();
                     if (outcome && outcome->status == 200) ++ok;
                   });
  }
  trigger.wait_idle();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> ms(kCalls);
  for (std::size_t i = 0; i < kCalls; ++i) {
    ms[i] = std::chrono::duration<double, std::milli>(ended[i] - started[i]).count();
  }
  std::sort(ms.begin(), ms.end());
  std::printf("broker trigger: %zu calls, 1000 in flight: %.0f calls/s, p50 %.1f ms, p99 %.1f ms\n",
              kCalls, kCalls / seconds, ms[kCalls / 2], ms[kCalls * 99 / 100]);
  EXPECT_EQ(ok.load(), kCalls);
  EXPECT_EQ(trigger.stats().own_deadlines, 0u);
  EXPECT_GT(kCalls / seconds, 1000.0);
}

}  // namespace
}  // namespace fleetsign::testing
