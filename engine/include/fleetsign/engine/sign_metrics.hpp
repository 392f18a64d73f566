// The token's signing latency across every command of a home: each process adds what it measured
// (hsm/sign_latency.hpp) to HOME/metrics/token-sign.txt when its command ends, under an flock,
// written atomically; `fleetsign serve --http` exports the sum on /metrics as a histogram. A home
// whose file is missing or from other bucket bounds starts from zero.
#pragma once

#include <filesystem>
#include <optional>

#include "fleetsign/hsm/sign_latency.hpp"

namespace fleetsign::engine {

// Adds this process's measurements (taken, so a second call adds only what came since). Does
// nothing when there are none. Throws Error(kIo) naming the file when it cannot be written.
void save_sign_latency(const std::filesystem::path& home_dir);
// The home's sum; nullopt when nothing was recorded yet.
std::optional<hsm::SignLatency> load_sign_latency(const std::filesystem::path& home_dir);

}  // namespace fleetsign::engine
