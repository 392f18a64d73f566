// How long the token takes to sign, in this process: every SigningKey::sign_digest call (the
// device certificates' signatures; CRLs and CA certificates sign through OpenSSL and are not
// counted), retries included, as a histogram with fixed bounds. Lock-free: relaxed atomic counters
// per bucket, one steady_clock reading before and after each call. Thread-safe.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

namespace fleetsign::hsm {

// Upper bounds of the buckets in seconds (Prometheus "le"); the last bucket is +Inf.
inline constexpr std::array<double, 12> kSignLatencyBounds = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0};

struct SignLatency {
  std::array<std::uint64_t, kSignLatencyBounds.size() + 1> counts{};  // per bucket, not cumulative
  std::uint64_t sum_ns = 0;
  std::uint64_t total() const noexcept {
    std::uint64_t n = 0;
    for (const auto c : counts) n += c;
    return n;
  }
};

void record_sign_latency(std::chrono::nanoseconds elapsed) noexcept;
// What was recorded since the last take, and resets it (a record racing the take lands in the
// next one: nothing is counted twice or lost).
SignLatency take_sign_latency() noexcept;

// Records the time from its construction to its end.
class SignTimer {
 public:
  SignTimer() noexcept : m_start(std::chrono::steady_clock::now()) {}
  ~SignTimer() { record_sign_latency(std::chrono::steady_clock::now() - m_start); }
  SignTimer(const SignTimer&) = delete;
  SignTimer& operator=(const SignTimer&) = delete;

 private:
  std::chrono::steady_clock::time_point m_start;
};

}  // namespace fleetsign::hsm
