// The token's signing latency across every command of a home: each process adds what it measured
// (hsm/sign_latency.hpp) to HOME/metrics/token-sign.txt as it runs and when its command ends,
// under an flock,
// written atomically; `fleetsign serve --http` exports the sum on /metrics as a histogram. A home
// whose file is missing or from other bucket bounds starts from zero.
#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>

#include "fleetsign/hsm/sign_latency.hpp"

namespace fleetsign::engine {

// Adds this process's measurements (taken, so a second call adds only what came since). Does
// nothing when there are none. Throws Error(kIo) naming the file when it cannot be written.
void save_sign_latency(const std::filesystem::path& home_dir);
// The home's sum; nullopt when nothing was recorded yet.
std::optional<hsm::SignLatency> load_sign_latency(const std::filesystem::path& home_dir);

// Saves every `every` while it lives (a long job reports as it goes, and a command stopped by a
// signal loses at most that much), then once more when it ends. Write errors go to stderr.
class SignLatencyFlusher {
 public:
  SignLatencyFlusher(std::filesystem::path home_dir, std::chrono::seconds every);
  ~SignLatencyFlusher();
  SignLatencyFlusher(const SignLatencyFlusher&) = delete;
  SignLatencyFlusher& operator=(const SignLatencyFlusher&) = delete;

 private:
  std::filesystem::path m_home;
  std::chrono::seconds m_every;
  std::mutex m_mutex;
  std::condition_variable m_wake;
  bool m_stop = false;
  std::thread m_thread;
};

}  // namespace fleetsign::engine
