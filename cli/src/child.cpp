// run_child (child.hpp): posix_spawn with stdout and stderr on pipes, read with poll() until both
// close, the child killed (SIGKILL) when it outlives its timeout.
#include "child.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "fleetsign/error.hpp"

extern char** environ;

namespace fleetsign::cli {

namespace {

constexpr std::size_t kErrLimit = 64u << 10;

struct Pipe {
  int fd[2] = {-1, -1};
  Pipe() {
    if (::pipe2(fd, O_CLOEXEC) != 0) {
      throw Error(ErrorCode::kInternal, std::string("pipe: ") + std::strerror(errno));
    }
  }
  ~Pipe() {
    for (int f : fd) {
      if (f >= 0) ::close(f);
    }
  }
  void close_end(int i) {
    if (fd[i] >= 0) ::close(fd[i]);
    fd[i] = -1;
  }
};

std::string env_name(const std::string& entry) { return entry.substr(0, entry.find('=')); }

}  // namespace

SpawnAttr::SpawnAttr() {
  posix_spawnattr_init(&m_attr);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&m_attr, &defaults);
  posix_spawnattr_setflags(&m_attr, POSIX_SPAWN_SETSIGDEF);
}

ChildResult run_child(ChildSpec spec) {
  std::vector<std::string> argv_s = {spec.program.string()};
  argv_s.insert(argv_s.end(), spec.args.begin(), spec.args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry(*e);
    bool replaced = false;
    for (const auto& x : spec.env) replaced = replaced || env_name(x) == env_name(entry);
    for (const auto& x : spec.unset) replaced = replaced || x == env_name(entry);
    if (!replaced) env_s.push_back(entry);
  }
  env_s.insert(env_s.end(), spec.env.begin(), spec.env.end());
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  Pipe out, err;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out.fd[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err.fd[1], 2);
  // Only 0-2: never the HTTP service's listening socket or another client's connection.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  pid_t pid = 0;
  const SpawnAttr attr;
  const int rc = posix_spawn(&pid, argv[0], &actions, attr.get(), argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  for (auto& e : env_s) explicit_bzero(e.data(), e.size());
  for (auto& e : spec.env) explicit_bzero(e.data(), e.size());
  if (rc != 0) {
    throw Error(ErrorCode::kInternal,
                "cannot start " + spec.program.string() + ": " + std::strerror(rc));
  }
  out.close_end(1);
  err.close_end(1);

  ChildResult result;
  const auto deadline = std::chrono::steady_clock::now() + spec.timeout;
  std::array<char, 65536> buf{};
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    std::array<pollfd, 2> fds{
        {{out_open ? out.fd[0] : -1, POLLIN, 0}, {err_open ? err.fd[0] : -1, POLLIN, 0}}};
    const int n =
        ::poll(fds.data(), fds.size(), static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      const ssize_t got = ::read(fds[i].fd, buf.data(), buf.size());
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        (i == 0 ? out_open : err_open) = false;
        continue;
      }
      if (i == 0) {
        const std::size_t room = spec.out_limit - std::min(spec.out_limit, result.out.size());
        result.out.append(buf.data(), std::min<std::size_t>(room, static_cast<std::size_t>(got)));
        result.truncated = result.truncated || static_cast<std::size_t>(got) > room;
      } else {
        result.err.append(buf.data(), static_cast<std::size_t>(got));
        if (result.err.size() > kErrLimit) result.err.erase(0, result.err.size() - kErrLimit);
      }
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

}  // namespace fleetsign::cli
