// Test support: the real `fleetsign` binary as a child process — run to completion, or started
// and killed with SIGKILL at a chosen moment (crash tests), with PINs from the environment.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "test_home.hpp"

extern char** environ;

namespace fleetsign::testing {

struct CliResult {
  int status = -1;     // exit status, -1 when killed by a signal
  std::string output;  // stdout and stderr together
};

inline std::string shell_quoted(const std::string& s) {
  std::string out = "'";
  for (const char c : s) {
    out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  }
  return out + "'";
}

// Runs `fleetsign --home HOME ARGS…` with the test PINs in its environment.
inline CliResult run_cli(const std::filesystem::path& home, const std::vector<std::string>& args) {
  std::string cmd = "FLEETSIGN_PIN=" + shell_quoted(kUserPin) +
                    " FLEETSIGN_SO_PIN=" + shell_quoted(kSoPin) + " " +
                    shell_quoted(fleetsign_bin()) + " --home " + shell_quoted(home.string());
  for (const auto& a : args) {
    cmd += " " + shell_quoted(a);
  }
  CliResult r;
  r.status = run(cmd, &r.output);
  return r;
}

// The whole environment of a child the tests spawn: the test PINs, a PATH, and a sanitizer run's
// settings (ci/sanitize.sh: where reports go, suppressions, the mosquitto wrapper), so that the
// child and what it starts report like every other process of the run.
inline std::vector<std::string> child_environment() {
  std::vector<std::string> env = {std::string("FLEETSIGN_PIN=") + kUserPin,
                                  std::string("FLEETSIGN_SO_PIN=") + kSoPin, "PATH=/usr/bin:/bin"};
  for (const char* name : {"ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS",
                           "FLEETSIGN_MOSQUITTO", "FLEETSIGN_SANITIZER_PRELOAD"}) {
    if (const char* value = std::getenv(name)) env.push_back(std::string(name) + "=" + value);
  }
  return env;
}

// A started `fleetsign` process (stdout/stderr to /dev/null); kill() or wait() it.
class CliProcess {
 public:
  CliProcess(const std::filesystem::path& home, const std::vector<std::string>& args) {
    std::vector<std::string> argv_s = {fleetsign_bin(), "--home", home.string()};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_s = child_environment();
    std::vector<char*> env;
    for (auto& e : env_s) env.push_back(e.data());
    env.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    if (posix_spawn(&m_pid, argv[0], &actions, nullptr, argv.data(), env.data()) != 0) {
      m_pid = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
  }
  CliProcess(const CliProcess&) = delete;
  CliProcess& operator=(const CliProcess&) = delete;
  ~CliProcess() {
    if (m_pid > 0) {  // never leave a child behind a failed assertion
      kill_now();
    }
  }
  pid_t pid() const { return m_pid; }
  // SIGKILL (if still running) and reap. True when the kill landed before the process exited.
  bool kill_now() {
    const bool landed = ::kill(m_pid, SIGKILL) == 0;
    int status = 0;
    ::waitpid(m_pid, &status, 0);
    m_pid = -1;
    return landed && WIFSIGNALED(status);
  }
  // Waits for the exit; its status, or -1 when it died by a signal.
  int wait() {
    if (m_pid > 0) {
      ::waitpid(m_pid, &m_status, 0);
      m_pid = -1;
    }
    return WIFEXITED(m_status) ? WEXITSTATUS(m_status) : -1;
  }
  // True while the process has not exited (an exited one is reaped; wait() then returns).
  bool running() {
    if (m_pid > 0 && ::waitpid(m_pid, &m_status, WNOHANG) == m_pid) {
      m_pid = -1;
    }
    return m_pid > 0;
  }

 private:
  pid_t m_pid = -1;
  int m_status = 0;
};

}  // namespace fleetsign::testing
