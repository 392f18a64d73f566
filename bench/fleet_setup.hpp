// What the fleet benchmarks share: a temp home driven through the real CLI, a free port, the
// device agent as a child process, and the figures read from /proc.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace fleetsign::bench {

inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// "TOOL: message" on stderr (the benches' progress lines).
template <typename... Args>
void note_as(const char* tool, const char* fmt, Args... args) {
  std::fprintf(stderr, "%s: ", tool);
  std::fprintf(stderr, fmt, args...);
  std::fputc('\n', stderr);
}

int free_port();
long vm_hwm_kb(int pid);  // peak RSS of a process, from /proc/PID/status
int broker_pid(const std::filesystem::path& home);
double percentile(std::vector<double> values, double p);  // p in [0, 1]

// A home in `dir`, with the bench's PINs; cli() runs `fleetsign --home HOME ARGS` and exits the
// bench with the log's tail when it fails.
struct FleetSetup {
  std::filesystem::path dir, home, log;
  std::map<std::string, std::string> env;
  explicit FleetSetup(const std::filesystem::path& dir);
  std::string cli(const std::vector<std::string>& args, bool capture = false);
  // init, a root proven to the registry, and group "fleet" trusting it.
  void init_with_proven_root();
};

// Starts `argv` (the device agent) with stdout to /dev/null and stderr appended to `log`;
// exits the bench when it cannot.
pid_t spawn_logged(const std::vector<std::string>& argv, const std::filesystem::path& log);
void stop_child(pid_t pid);  // SIGTERM and reap

}  // namespace fleetsign::bench
