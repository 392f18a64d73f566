// `serve`'s children (cmd_serve.cpp): each a `fleetsign --home HOME ...` process known by a
// label ("job ID", "crl", "shares"), started with the PIN in its environment (never in argv) and a
// status channel on its descriptor 3, on which it names the error that ended it (run.cpp). A PIN
// the token refuses (or a token gone) stops all further children; any other failure is the
// child's own.
#include "serve_children.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "child.hpp"
#include "fleetsign/error.hpp"

extern char** environ;

namespace fleetsign::cli {

namespace {

// Exit 4 is every token error. These say the PIN or the token itself failed, so that trying
// again only spends login attempts; a child that reported nothing is taken the same way.
bool stops_the_token(const std::string& error) {
  for (const ErrorCode c : {ErrorCode::kPinIncorrect, ErrorCode::kPinLocked, ErrorCode::kPinMissing,
                            ErrorCode::kTokenNotFound, ErrorCode::kModuleNotFound}) {
    if (error == error_code_name(c)) return true;
  }
  return error.empty();
}

}  // namespace

void ServeChildren::spawn(const std::string& label, const std::vector<std::string>& args,
                          const hsm::Pin& pin) {
  const std::string home = m_home.string();
  // --wait: the home's lock is one process's at a time, so a second job's runner queues.
  std::vector<std::string> argv_s = {m_self.string(), "--home", home};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "FLEETSIGN_PIN=", 14) != 0 &&
        std::strncmp(*e, "FLEETSIGN_SO_PIN=", 17) != 0 &&
        std::strncmp(*e, "FLEETSIGN_PFX_PASSWORD=", 23) != 0) {
      env_s.emplace_back(*e);
    }
  }
  // Who spawned it: `batch work` dies with this process (PR_SET_PDEATHSIG), so that killing a
  // worker's serve stops its signing too, and its shares' leases run out for the other workers.
  env_s.push_back("FLEETSIGN_SERVE_PID=" + std::to_string(::getpid()));
  // Its status channel (run.cpp): the name of the error that ended it, on its descriptor 3. The
  // write end is moved above 3 first, so that dup2 onto 3 always clears close-on-exec.
  int status_read = -1, status_write = -1;
  if (int fds[2]; ::pipe2(fds, O_CLOEXEC) == 0) {
    status_read = fds[0];
    status_write = ::fcntl(fds[1], F_DUPFD_CLOEXEC, 10);
    ::close(fds[1]);
    ::fcntl(status_read, F_SETFL, O_NONBLOCK);
  }
  if (status_write >= 0) env_s.emplace_back("FLEETSIGN_STATUS_FD=3");
  env_s.push_back(std::string("FLEETSIGN_PIN=") + pin.c_str());  // last: wiped below
  std::vector<char*> env;
  for (auto& e : env_s) env.push_back(e.data());
  env.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, 2, 1);  // its report goes to the log, not our stdout
  if (status_write >= 0) posix_spawn_file_actions_adddup2(&actions, status_write, 3);
  // None of our other descriptors (the HTTP service's sockets).
  posix_spawn_file_actions_addclosefrom_np(&actions, status_write >= 0 ? 4 : 3);
  pid_t pid = 0;
  const SpawnAttr attr;
  const int rc = posix_spawn(&pid, argv[0], &actions, attr.get(), argv.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  explicit_bzero(env_s.back().data(), env_s.back().size());
  if (status_write >= 0) ::close(status_write);
  if (rc != 0) {
    if (status_read >= 0) ::close(status_read);
    m_log(label + ": cannot start " + m_self.string() + ": " + std::strerror(rc));
    return;
  }
  m_children.emplace(pid, label);
  if (status_read >= 0) m_status.emplace(pid, status_read);
  m_log(label + ": running it in process " + std::to_string(pid));
}

bool ServeChildren::has(const std::string& label) const {
  return std::any_of(m_children.begin(), m_children.end(),
                     [&](const auto& child) { return child.second == label; });
}

void ServeChildren::reap(bool all) {
  // Each of ours by its pid: the HTTP service's request threads wait for children of their own.
  for (auto it = m_children.begin(); it != m_children.end();) {
    int status = 0;
    const pid_t pid = ::waitpid(it->first, &status, all ? 0 : WNOHANG);
    if (pid == 0) {
      ++it;
      continue;
    }
    if (pid < 0) {
      if (errno == EINTR) continue;
      take_status(it->first);
      it = m_children.erase(it);
      continue;
    }
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    const std::string error = take_status(pid);
    m_log(it->second + ": process " + std::to_string(pid) +
          (code >= 0 ? " exited with status " + std::to_string(code)
                     : " died by signal " + std::to_string(WTERMSIG(status))) +
          (error.empty() ? "" : " (" + error + ")"));
    // A PIN the token refuses (or a token gone) would only spend login attempts if tried again:
    // stop running jobs until an operator restarts serve. Other token errors are the child's own
    // (a CA key this home's token lacks): logged, and the next tick goes on.
    if (code == exit_status_for(ErrorCode::kPinIncorrect) && stops_the_token(error) &&
        !m_token_failed) {
      m_token_failed = true;
      m_log(
          "the token refused the job's runner (exit 4): no more jobs are run until serve is "
          "restarted with a working PIN");
    } else if (error == error_code_name(ErrorCode::kKeyNotFound)) {
      m_log(it->second +
            ": a CA's key is not in this home's token (a worker home cloned before "
            "the CA was made? clone it again: worker clone)");
    }
    it = m_children.erase(it);
  }
}

std::string ServeChildren::take_status(pid_t pid) {
  const auto f = m_status.find(pid);
  if (f == m_status.end()) return {};
  char buf[64];
  const ssize_t n = ::read(f->second, buf, sizeof buf);
  ::close(f->second);
  m_status.erase(f);
  std::string word(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
  // An error code's name, nothing else (a child writes only that).
  for (const char c : word)
    if ((c < 'a' || c > 'z') && c != '_') return {};
  return word;
}

void ServeChildren::stop_all() {
  for (const auto& [pid, job] : m_children) {
    m_log(job + ": stopping process " + std::to_string(pid));
    ::kill(pid, SIGTERM);
  }
  reap(true);
}

}  // namespace fleetsign::cli
