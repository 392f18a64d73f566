// Runs this program (or another) as a child and collects what it prints: the HTTP service runs
// every CLI command it offers this way, so the API and the CLI share one code path, one exit
// status and one JSON error format, and the home's lock is taken per request, as for any command.
#pragma once

#include <spawn.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace fleetsign::cli {

struct ChildResult {
  int exit_status = -1;  // -1: killed by a signal (a timeout included)
  bool timed_out = false;
  bool truncated = false;  // stdout passed `out_limit`; the rest was read and dropped
  std::string out;         // stdout, at most `out_limit` bytes
  std::string err;         // stderr, at most 64 KiB (its tail)
};

struct ChildSpec {
  std::filesystem::path program;
  std::vector<std::string> args;  // argv[1..]
  // NAME=VALUE entries added to (and replacing the same names in) this process's environment.
  // Cleared from memory after the child started (a PIN travels this way, never in argv).
  std::vector<std::string> env;
  std::vector<std::string> unset;  // names left out of the child's environment
  std::chrono::seconds timeout{600};
  std::size_t out_limit = 16u << 20;
};

// posix_spawn attributes that give the child the default SIGPIPE action: `serve --http` ignores
// SIGPIPE (a browser that leaves an event stream must not kill the service), its children must
// not inherit that.
class SpawnAttr {
 public:
  SpawnAttr();
  ~SpawnAttr() { posix_spawnattr_destroy(&m_attr); }
  SpawnAttr(const SpawnAttr&) = delete;
  SpawnAttr& operator=(const SpawnAttr&) = delete;
  const posix_spawnattr_t* get() const { return &m_attr; }

 private:
  posix_spawnattr_t m_attr;
};

// Throws Error(kInternal) when the child cannot be started; every other outcome is a result.
// Thread-safe: waits for its own child only (waitpid on its pid).
ChildResult run_child(ChildSpec spec);

}  // namespace fleetsign::cli
