#include "fleet_setup.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "bench.hpp"
#include "fleetsign/bounded_read.hpp"

extern char** environ;

namespace fleetsign::bench {

namespace fs = std::filesystem;

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

long vm_hwm_kb(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return 0;
}

int broker_pid(const fs::path& home) {
  try {
    return std::stoi(
        read_bounded((home / "broker" / "mosquitto.pid").string(), 64, "broker pid file"));
  } catch (const std::exception&) {
    return 0;
  }
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

FleetSetup::FleetSetup(const fs::path& d) : dir(d), home(d / "home"), log(d / "bench.log") {
  fs::create_directories(dir);
  env = {{"FLEETSIGN_PIN", "bench-user-pin"}, {"FLEETSIGN_SO_PIN", "bench-so-pin"}};
}

std::string FleetSetup::cli(const std::vector<std::string>& args, bool capture) {
  std::vector<std::string> argv{FLEETSIGN_CLI_PATH, "--home", home.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto r = run_child(argv, env, log, capture);
  if (r.exit_status != 0) {
    std::string cmd;
    for (const auto& a : args) cmd += " " + a;
    std::fprintf(stderr, "fleetsign%s failed (%d); log %s:\n%s\n", cmd.c_str(), r.exit_status,
                 log.c_str(), tail_of(log).c_str());
    std::exit(1);
  }
  return r.out;
}

void FleetSetup::init_with_proven_root() {
  cli({"init"});
  cli({"ca", "create-root", "--name", "root", "--subject", "/CN=Bench Fleet Root"});
  const fs::path pop = dir / "pop.pem";
  cli({"ca", "verification-cert", "--ca", "root", "--code", "BENCH", "--out", pop.string()});
  cli({"ca", "verify", "root", "--code", "BENCH", "--cert", pop.string()});
  cli({"enrollment", "group", "create", "fleet", "--ca", "root"});
}

pid_t spawn_logged(const std::vector<std::string>& argv_in, const fs::path& log) {
  std::vector<std::string> argv = argv_in;
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log.c_str(),
                                   O_WRONLY | O_APPEND | O_CREAT, 0600);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, cargv[0], &actions, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    std::fprintf(stderr, "cannot start %s\n", cargv[0]);
    std::exit(1);
  }
  return pid;
}

void stop_child(pid_t pid) {
  ::kill(pid, SIGTERM);
  int st = 0;
  ::waitpid(pid, &st, 0);
}

}  // namespace fleetsign::bench
