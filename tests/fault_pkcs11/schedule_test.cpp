// The fault schedule of fleetsign-fault-pkcs11 (schedule.hpp): its syntax and its triggers. The
// module itself is exercised through fleetsign in fault_batch_test and fault_job_test.
#include "schedule.hpp"

#include <gtest/gtest.h>

#include <thread>

namespace fleetsign::faultp11 {
namespace {

std::unique_ptr<Schedule> parse_ok(const std::string& text) {
  std::string error;
  auto s = Schedule::parse(text, error);
  EXPECT_TRUE(s) << text << ": " << error;
  return s;
}

// The call numbers (1..n) of `op` that get an error.
std::vector<std::uint64_t> failing(Schedule& s, Op op, int n) {
  std::vector<std::uint64_t> out;
  for (int i = 0; i < n; ++i) {
    const Fault f = s.next(op);
    if (f.error != CKR_OK) out.push_back(f.call);
  }
  return out;
}

TEST(FaultSchedule, EmptyTextIsHealthy) {
  for (const char* text : {"", "  \n", "# nothing\n;;"}) {
    auto s = parse_ok(text);
    const Fault f = s->next(Op::kSign);
    EXPECT_EQ(f.error, CKR_OK);
    EXPECT_FALSE(f.corrupt);
    EXPECT_EQ(f.latency_ms, 0);
  }
}

TEST(FaultSchedule, AtEveryFromAndAlways) {
  auto at = parse_ok("sign:error=DEVICE_REMOVED:at=3");
  EXPECT_EQ(failing(*at, Op::kSign, 10), (std::vector<std::uint64_t>{3}));
  auto every = parse_ok("sign:error=CKR_SESSION_HANDLE_INVALID:every=4");
  EXPECT_EQ(failing(*every, Op::kSign, 12), (std::vector<std::uint64_t>{4, 8, 12}));
  auto from = parse_ok("sign:error=GENERAL_ERROR:from=5");
  EXPECT_EQ(failing(*from, Op::kSign, 7), (std::vector<std::uint64_t>{5, 6, 7}));
  auto always = parse_ok("login:error=PIN_INCORRECT");
  EXPECT_EQ(failing(*always, Op::kLogin, 2), (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(always->next(Op::kLogin).error, static_cast<CK_RV>(CKR_PIN_INCORRECT));
}

TEST(FaultSchedule, OperationsAreCountedApart) {
  auto s = parse_ok("sign:error=DEVICE_MEMORY:at=2");
  EXPECT_EQ(s->next(Op::kSignInit).error, CKR_OK);
  EXPECT_EQ(s->next(Op::kSign).error, CKR_OK);
  EXPECT_EQ(s->next(Op::kSignInit).error, CKR_OK);
  EXPECT_EQ(s->next(Op::kSign).error, static_cast<CK_RV>(CKR_DEVICE_MEMORY));
  EXPECT_EQ(s->next(Op::kLogin).error, CKR_OK);
}

TEST(FaultSchedule, RateIsReproducibleFromItsSeed) {
  auto a = parse_ok("sign:error=GENERAL_ERROR:rate=0.1:seed=42");
  auto b = parse_ok("sign:error=GENERAL_ERROR:rate=0.1:seed=42");
  auto c = parse_ok("sign:error=GENERAL_ERROR:rate=0.1:seed=43");
  const auto fa = failing(*a, Op::kSign, 5000);
  EXPECT_EQ(fa, failing(*b, Op::kSign, 5000));
  EXPECT_NE(fa, failing(*c, Op::kSign, 5000));
  EXPECT_GT(fa.size(), 400u);  // about 500
  EXPECT_LT(fa.size(), 600u);
  auto none = parse_ok("sign:error=GENERAL_ERROR:rate=0");
  EXPECT_TRUE(failing(*none, Op::kSign, 1000).empty());
}

TEST(FaultSchedule, CorruptAndLatencyRules) {
  auto s = parse_ok("sign:latency=5-50; sign:corrupt:every=2\nsign:latency=7:at=1");
  for (int i = 1; i <= 200; ++i) {
    const Fault f = s->next(Op::kSign);
    EXPECT_EQ(f.error, CKR_OK);
    EXPECT_EQ(f.corrupt, i % 2 == 0) << i;
    const int extra = i == 1 ? 7 : 0;
    EXPECT_GE(f.latency_ms, 5 + extra) << i;
    EXPECT_LE(f.latency_ms, 50 + extra) << i;
  }
  // The first error or corrupt rule that fires wins; latency still applies.
  auto both = parse_ok("sign:error=DEVICE_REMOVED:at=1;sign:corrupt;sign:latency=5");
  Fault f = both->next(Op::kSign);
  EXPECT_EQ(f.error, static_cast<CK_RV>(CKR_DEVICE_REMOVED));
  EXPECT_FALSE(f.corrupt);
  EXPECT_EQ(f.latency_ms, 5);
  f = both->next(Op::kSign);
  EXPECT_EQ(f.error, CKR_OK);
  EXPECT_TRUE(f.corrupt);
}

TEST(FaultSchedule, MalformedRulesAreRefusedWithTheRule) {
  for (const char* text :
       {"sing:error=GENERAL_ERROR", "sign:error=NO_SUCH_ERROR", "sign", "sign:at=3",
        "sign:error=GENERAL_ERROR:at=0", "sign:error=GENERAL_ERROR:at=-1",
        "sign:error=GENERAL_ERROR:rate=1.5", "sign:latency=50-5", "sign:latency=abc",
        "sign:corrupt=1", "sign:error=GENERAL_ERROR:when=3", "sign:error=GENERAL_ERROR:every=x"}) {
    std::string error;
    EXPECT_FALSE(Schedule::parse(text, error)) << text;
    EXPECT_NE(error.find("rule '"), std::string::npos) << text << ": " << error;
  }
}

TEST(FaultSchedule, CountsAreExactAcrossThreads) {
  auto s = parse_ok("sign:error=SESSION_HANDLE_INVALID:every=10");
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (s->next(Op::kSign).error != CKR_OK) ++errors;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 800);
  EXPECT_EQ(s->next(Op::kSign).call, 8001u);
}

}  // namespace
}  // namespace fleetsign::faultp11
