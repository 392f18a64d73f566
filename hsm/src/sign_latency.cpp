// The token's signing latency in this process (sign_latency.hpp).
#include "fleetsign/hsm/sign_latency.hpp"

#include <algorithm>
#include <atomic>

namespace fleetsign::hsm {

namespace {

std::array<std::atomic<std::uint64_t>, kSignLatencyBounds.size() + 1> g_counts{};
std::atomic<std::uint64_t> g_sum_ns{0};

}  // namespace

void record_sign_latency(std::chrono::nanoseconds elapsed) noexcept {
  const double seconds = std::chrono::duration<double>(elapsed).count();
  const auto bucket = static_cast<std::size_t>(
      std::lower_bound(kSignLatencyBounds.begin(), kSignLatencyBounds.end(), seconds) -
      kSignLatencyBounds.begin());
  g_counts[bucket].fetch_add(1, std::memory_order_relaxed);
  g_sum_ns.fetch_add(static_cast<std::uint64_t>(std::max<std::int64_t>(elapsed.count(), 0)),
                     std::memory_order_relaxed);
}

SignLatency take_sign_latency() noexcept {
  SignLatency s;
  for (std::size_t i = 0; i < g_counts.size(); ++i) {
    s.counts[i] = g_counts[i].exchange(0, std::memory_order_relaxed);
  }
  s.sum_ns = g_sum_ns.exchange(0, std::memory_order_relaxed);
  return s;
}

}  // namespace fleetsign::hsm
