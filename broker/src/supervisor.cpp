// Supervision of Debian's mosquitto: spawned (posix_spawn, never fork: the CLI may have a PKCS#11
// module loaded), daemonised by mosquitto itself (`-d`), found again through its pid file.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/conf.h>
#include <openssl/err.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/broker/broker_home.hpp"
#include "fleetsign/broker/crl_install.hpp"
#include "fleetsign/error.hpp"

extern char** environ;

namespace fleetsign::broker {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kLogTail = 2000;

std::string log_tail(const fs::path& log) {
  std::ifstream in(log, std::ios::binary);
  if (!in) {
    return "(no log at " + log.string() + ")";
  }
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff from = size > static_cast<std::streamoff>(kLogTail)
                                  ? size - static_cast<std::streamoff>(kLogTail)
                                  : 0;
  in.seekg(from);
  std::string text(static_cast<std::size_t>(size - from), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  return text;
}

bool port_accepts(const BrokerSettings& settings) {
  const std::string host = settings.bind.empty() ? "127.0.0.1" : settings.bind;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(settings.port).c_str(), &hints, &found) != 0) {
    return false;
  }
  bool ok = false;
  for (addrinfo* a = found; a != nullptr && !ok; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd >= 0) {
      ok = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0;
      ::close(fd);
    }
  }
  ::freeaddrinfo(found);
  return ok;
}

// The pid is this home's mosquitto: a mosquitto started with this home's configuration (a pid
// file can be stale, and its pid reused by any process, another home's broker included).
bool is_our_mosquitto(pid_t pid, const fs::path& config) {
  try {
    const std::string cmdline =
        read_bounded("/proc/" + std::to_string(pid) + "/cmdline", 8192, "process command line");
    const std::string conf_arg = std::string("-c") + '\0' + config.string() + '\0';
    return cmdline.find("mosquitto") != std::string::npos &&
           cmdline.find(conf_arg) != std::string::npos;
  } catch (const Error&) {
    return false;
  }
}

// The pid file names a process that is gone; false while the file is missing or half written.
bool daemon_died(const fs::path& pid_file) {
  try {
    const std::string text = read_bounded(pid_file.string(), 64, "broker pid file");
    const pid_t pid = static_cast<pid_t>(std::stol(text));
    return pid > 1 && ::kill(pid, 0) != 0;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

Supervisor::Supervisor(const BrokerHome& home, fs::path mosquitto)
    : m_home(home), m_mosquitto(std::move(mosquitto)) {}

std::optional<pid_t> Supervisor::running_pid() const {
  std::string text;
  try {
    text = read_bounded(m_home.pid_path().string(), 64, "broker pid file");
  } catch (const Error&) {
    return std::nullopt;
  }
  pid_t pid = 0;
  try {
    pid = static_cast<pid_t>(std::stol(text));
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (pid <= 1 || ::kill(pid, 0) != 0 || !is_our_mosquitto(pid, m_home.config_path())) {
    return std::nullopt;  // stale: a previous broker that died
  }
  return pid;
}

BrokerStatus Supervisor::status(const BrokerSettings& settings) const {
  BrokerStatus st;
  if (const auto pid = running_pid()) {
    st.running = true;
    st.pid = *pid;
    st.accepting = port_accepts(settings);
  }
  return st;
}

namespace {

// Whether OpenSSL's default configuration (OPENSSL_CONF, else the system's openssl.cnf) sets up
// no module: its openssl_conf section is absent or empty (Debian's), or the file is missing.
bool system_openssl_config_is_plain() {
  const char* named = std::getenv("OPENSSL_CONF");
  if (named != nullptr && named[0] != '\0') return false;  // the operator's choice stands
  std::unique_ptr<char, void (*)(char*)> path(CONF_get1_default_config_file(),
                                              [](char* p) { OPENSSL_free(p); });
  std::unique_ptr<CONF, decltype(&NCONF_free)> conf(NCONF_new(nullptr), &NCONF_free);
  bool plain = true;
  long line = 0;
  if (path && conf && NCONF_load(conf.get(), path.get(), &line) > 0) {
    const char* init = NCONF_get_string(conf.get(), nullptr, "openssl_conf");
    const STACK_OF(CONF_VALUE)* section =
        init != nullptr ? NCONF_get_section(conf.get(), init) : nullptr;
    plain = section == nullptr || sk_CONF_VALUE_num(section) == 0;
  }
  ERR_clear_error();
  return plain;
}

}  // namespace

BrokerStatus Supervisor::start(const BrokerSettings& settings, int wait_seconds) {
  if (const auto pid = running_pid()) {
    throw Error(ErrorCode::kAlreadyExists,
                "the broker of this home is running already (pid " + std::to_string(*pid) + ")");
  }
  if (port_accepts(settings)) {
    throw Error(ErrorCode::kBrokerFailed, "port " + std::to_string(settings.port) +
                                              " is taken by another program; choose another with "
                                              "`fleetsign broker init --port N`");
  }
  std::error_code ec;
  fs::remove(m_home.pid_path(), ec);
  // What this mosquitto will read: the CRL file its config names now, or none (crl_install.hpp).
  write_crl_marker(m_home, installed_crl_marker(m_home));
  const std::string conf = m_home.config_path().string();
  const std::string exe = m_mosquitto.string();
  std::vector<char*> argv{const_cast<char*>(exe.c_str()), const_cast<char*>("-c"),
                          const_cast<char*>(conf.c_str()), const_cast<char*>("-d"), nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, m_home.log_path().c_str(),
                                   O_WRONLY | O_APPEND | O_CREAT, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  // Nothing else of ours: a daemon that outlives this process must not keep its sockets (the
  // HTTP service's listening socket: a restarted serve would share the port with it).
  posix_spawn_file_actions_addclosefrom_np(&actions, STDERR_FILENO + 1);
  pid_t child = 0;
  // OpenSSL reads the home's openssl.cnf (BrokerHome::write_config) only where it replaces
  // nothing: the environment names no configuration and the system's sets no module (no
  // ssl_conf, providers or crypto policy, as on Debian). Otherwise the tickets stay on.
  const std::string openssl_conf = "OPENSSL_CONF=" + m_home.openssl_config_path().string();
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "OPENSSL_CONF=", 13) != 0 || (*e)[13] != '\0') env.push_back(*e);
  }
  if (system_openssl_config_is_plain() && fs::exists(m_home.openssl_config_path(), ec)) {
    env.push_back(const_cast<char*>(openssl_conf.c_str()));
  }
  // mosquitto stamps every log line with localtime(); without TZ, glibc stats /etc/localtime
  // for each one (about 3% of the broker's time while a fleet reconnects). The same zone, read
  // once.
  const std::string tz = "TZ=:/etc/localtime";
  if (std::getenv("TZ") == nullptr) env.push_back(const_cast<char*>(tz.c_str()));
  env.push_back(nullptr);
  const int rc = ::posix_spawn(&child, exe.c_str(), &actions, nullptr, argv.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    throw Error(ErrorCode::kBrokerFailed, exe + " cannot be started: " + std::strerror(rc));
  }
  int wstatus = 0;
  while (::waitpid(child, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    throw Error(ErrorCode::kBrokerFailed, "mosquitto refused to start; the end of " +
                                              m_home.log_path().string() + ":\n" +
                                              log_tail(m_home.log_path()));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    const BrokerStatus st = status(settings);
    if (st.running && st.accepting) {
      return st;
    }
    if (!st.running && daemon_died(m_home.pid_path())) {
      // The daemon wrote its pid and died (a plugin or certificate it could not load). A pid
      // file that exists but is not written yet is not a death.
      throw Error(ErrorCode::kBrokerFailed, "mosquitto exited while starting; the end of " +
                                                m_home.log_path().string() + ":\n" +
                                                log_tail(m_home.log_path()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const auto pid = running_pid();
  if (pid) {
    ::kill(*pid, SIGTERM);
  }
  throw Error(ErrorCode::kBrokerFailed,
              "mosquitto did not accept connections on port " + std::to_string(settings.port) +
                  " within " + std::to_string(wait_seconds) + " s; the end of " +
                  m_home.log_path().string() + ":\n" + log_tail(m_home.log_path()));
}

bool Supervisor::stop(int wait_seconds) {
  const auto pid = running_pid();
  if (!pid) {
    return false;
  }
  ::kill(*pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (::kill(*pid, 0) != 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(*pid, SIGKILL);
  for (int i = 0; i < 100 && ::kill(*pid, 0) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (::kill(*pid, 0) == 0) {
    throw Error(ErrorCode::kBrokerFailed,
                "mosquitto (pid " + std::to_string(*pid) + ") does not stop");
  }
  return true;
}

void Supervisor::reload() {
  const auto pid = running_pid();
  if (!pid) {
    throw Error(ErrorCode::kBrokerFailed,
                "the broker of this home is not running: start it with `fleetsign broker start`");
  }
  if (::kill(*pid, SIGHUP) != 0) {
    throw Error(ErrorCode::kBrokerFailed, "mosquitto (pid " + std::to_string(*pid) +
                                              ") cannot be signalled: " + std::strerror(errno));
  }
}

}  // namespace fleetsign::broker
