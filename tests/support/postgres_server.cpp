#include "postgres_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>

extern char** environ;

namespace fleetsign::test {

namespace fs = std::filesystem;

namespace {

constexpr const char* kUser = "fleetsign";
// Attempts at another port when the one found free was taken before the server bound it.
constexpr int kStartAttempts = 5;
// Free space /dev/shm must have to hold the cluster (see base_dir).
constexpr unsigned long long kShmNeeded = 1ULL << 30;

// Wakes when the test process is gone (its end of the pipe, stdin here, closes), stops a server
// still running (SIGINT: a fast shutdown), and removes the directory unless told to keep it.
// $1: the directory, $2: 1 to keep it.
constexpr const char* kWatchdogScript = R"sh(
cat >/dev/null
pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = postgres ]; then
  kill -INT "$pid"
  i=0
  while kill -0 "$pid" 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
fi
[ "$2" = 1 ] || rm -rf "$1"
)sh";

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("PostgreSQL test server: " + what);
}

bool executable(const fs::path& p) { return ::access(p.c_str(), X_OK) == 0; }

bool has_server_programs(const fs::path& bin) {
  return executable(bin / "initdb") && executable(bin / "pg_ctl") && executable(bin / "postgres");
}

// Not `pg_config --bindir`: on Debian that names the client's directory.
std::optional<fs::path> find_bindir() {
  const fs::path root = "/usr/lib/postgresql";
  if (has_server_programs(root / "15" / "bin")) return root / "15" / "bin";
  std::optional<fs::path> best;
  int best_version = -1;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const int version = std::atoi(entry.path().filename().c_str());
    if (version > best_version && has_server_programs(entry.path() / "bin")) {
      best_version = version;
      best = entry.path() / "bin";
    }
  }
  return best;
}

std::optional<std::pair<uid_t, gid_t>> postgres_user() {
  passwd pw{};
  passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (getpwnam_r("postgres", &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return std::nullopt;
  }
  return std::make_pair(pw.pw_uid, pw.pw_gid);
}

fs::path runuser_path() {
  for (const char* p : {"/usr/sbin/runuser", "/sbin/runuser"}) {
    if (executable(p)) return p;
  }
  return {};
}

bool keep_dirs() {
  const char* v = std::getenv("FLEETSIGN_KEEP_TEST_DIRS");
  return v != nullptr && std::string(v) == "1";
}

std::string tail_of(const fs::path& file, std::size_t lines) {
  std::ifstream in(file);
  std::deque<std::string> last;
  for (std::string line; std::getline(in, line);) {
    last.push_back(line);
    if (last.size() > lines) last.pop_front();
  }
  std::string out;
  for (const auto& l : last) out += l + "\n";
  return out;
}

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

// A port the kernel calls free now; the server binds it a moment later (start_cluster retries).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail(errno_text("socket"));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  const std::string error = ok ? "" : errno_text("binding 127.0.0.1:0");
  ::close(fd);
  if (!ok) fail(error);
  return ntohs(addr.sin_port);
}

// Where the cluster's directory goes: /dev/shm when it has room (a cluster takes about 40 MB and
// each database 8 MB), as nothing needs to reach a disk: the server starts in 1.1 to 1.5 s instead
// of 1.5 to 2.8 s, and a database takes 0.04 s instead of 0.05 to 0.5 s when the disk is busy.
// Else the temporary directory, or /tmp when the `postgres` user could not reach that one.
fs::path base_dir(bool as_postgres) {
  struct statvfs shm {};
  if (::statvfs("/dev/shm", &shm) == 0 && shm.f_bavail * shm.f_frsize >= kShmNeeded &&
      ::access("/dev/shm", W_OK | X_OK) == 0) {
    return "/dev/shm";
  }
  const fs::path base = fs::temp_directory_path();
  struct stat st {};
  if (as_postgres && (::stat(base.c_str(), &st) != 0 || (st.st_mode & S_IXOTH) == 0)) {
    return "/tmp";
  }
  return base;
}

// Spawns argv[0] (a path) with stdin from /dev/null, stdout and stderr appended to `log`, in
// `cwd`; waits and returns its exit status (128 + signal when killed).
int run_logged(const std::vector<std::string>& args, const fs::path& log, const fs::path& cwd) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    fail(args[0] + ": cannot start: " + std::strerror(rc));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct ConnDeleter {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
struct ResultDeleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};

// CREATE DATABASE `name`, empty (from template0), through the maintenance database at `admin`.
void create_empty_database(const std::string& admin, const std::string& name) {
  const std::unique_ptr<PGconn, ConnDeleter> conn(PQconnectdb(admin.c_str()));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    fail("connecting to " + admin + ": " + PQerrorMessage(conn.get()));
  }
  // FILE_COPY (PostgreSQL 15's default is WAL_LOG) copies the files after a checkpoint, cheap with
  // fsync off: 0.04 s a database instead of 0.07 s in /dev/shm (0.2 s on a disk), and stop() does
  // not write out the WAL of every copied page (0.3 s instead of 0.7 s).
  std::string sql = "CREATE DATABASE " + name + " TEMPLATE template0";
  if (PQserverVersion(conn.get()) >= 150000) sql += " STRATEGY FILE_COPY";
  const std::unique_ptr<PGresult, ResultDeleter> res(PQexec(conn.get(), sql.c_str()));
  if (PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
    fail(sql + ": " + PQerrorMessage(conn.get()));
  }
}

}  // namespace

bool postgres_available(std::string* why) {
  std::string missing;
  if (!find_bindir()) {
    missing =
        "no initdb, pg_ctl and postgres under /usr/lib/postgresql/*/bin (install postgresql-15)";
  } else if (::geteuid() == 0 && !postgres_user()) {
    missing = "running as root, and there is no `postgres` user to run the server as";
  } else if (::geteuid() == 0 && runuser_path().empty()) {
    missing = "running as root, and there is no runuser to run the server as `postgres`";
  }
  if (why != nullptr) *why = missing;
  return missing.empty();
}

PostgresServer& PostgresServer::shared() {
  static PostgresServer server;  // a constructor that threw is tried again on the next call
  return server;
}

PostgresServer::PostgresServer() : m_owner(::getpid()) {
  std::string why;
  if (!postgres_available(&why)) fail(why);
  m_bin = *find_bindir();
  m_as_postgres = ::geteuid() == 0;
  const fs::path base = base_dir(m_as_postgres);
  std::string templ = (base / "fleetsign-pg-XXXXXX").string();
  if (::mkdtemp(templ.data()) == nullptr) {
    fail(errno_text("mkdtemp " + templ));
  }
  m_dir = templ;
  if (m_as_postgres) {
    const auto [uid, gid] = *postgres_user();
    if (::chown(m_dir.c_str(), uid, gid) != 0) {
      const std::string error = errno_text("chown " + m_dir.string() + " to postgres");
      ::rmdir(m_dir.c_str());
      fail(error);
    }
  }
  spawn_watchdog();  // from here on, a failure leaves the cleanup to the watchdog
  try {
    init_cluster();
    start_cluster();
  } catch (...) {
    ::close(m_watchdog_fd);
    m_watchdog_fd = -1;
    throw;
  }
}

PostgresServer::~PostgresServer() {
  try {
    stop();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
  }
}

void PostgresServer::spawn_watchdog() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) fail(errno_text("pipe2"));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[0], 0);  // the copy loses O_CLOEXEC
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);  // not the test's stdout: CTest waits on it
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  // Its own session: a Ctrl-C that kills the test process leaves it alive to clean up.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
  const std::string dir = m_dir.string();
  const char* keep = keep_dirs() ? "1" : "0";
  const char* argv[] = {"/bin/sh",   "-c", kWatchdogScript, "fleetsign-pg-watchdog",
                        dir.c_str(), keep, nullptr};
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &actions, &attr, const_cast<char**>(argv), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(fds[0]);
  if (rc != 0) {
    ::close(fds[1]);
    fail(std::string("cannot start the watchdog: ") + std::strerror(rc));
  }
  m_watchdog_fd = fds[1];
}

std::vector<std::string> PostgresServer::command(const char* program,
                                                 std::vector<std::string> args) const {
  args.insert(args.begin(), (m_bin / program).string());
  if (m_as_postgres) args.insert(args.begin(), {runuser_path().string(), "-u", "postgres", "--"});
  return args;
}

void PostgresServer::init_cluster() {
  const int rc =
      run_logged(command("initdb", {"-D", (m_dir / "data").string(), "--auth=trust", "-U", kUser,
                                    "--no-sync", "-E", "UTF8", "--locale=C"}),
                 m_dir / "initdb.log", m_dir);
  if (rc != 0) {
    fail("initdb failed (exit " + std::to_string(rc) + ") in " + m_dir.string() + "\n" +
         logs_tail({"initdb.log"}));
  }
}

void PostgresServer::start_cluster() {
  const std::string data = (m_dir / "data").string();
  for (int attempt = 1; attempt <= kStartAttempts; ++attempt) {
    const int port = free_port();
    const std::string options = "-p " + std::to_string(port) + " -k '" + m_dir.string() +
                                "' -c listen_addresses=127.0.0.1 -c fsync=off"
                                " -c synchronous_commit=off -c full_page_writes=off"
                                " -c max_connections=200";
    const int rc = run_logged(command("pg_ctl", {"start", "-w", "-t", "60", "-D", data, "-l",
                                                 (m_dir / "postgres.log").string(), "-o", options}),
                              m_dir / "pg_ctl.log", m_dir);
    if (rc == 0) {
      m_port = port;
      m_running = true;
      return;
    }
    // A server that started too late for -w would hold the directory: stop it, ignore errors.
    run_logged(command("pg_ctl", {"stop", "-D", data, "-m", "immediate"}),
               m_dir / "pg_ctl_cleanup.log", m_dir);
    const std::string log = tail_of(m_dir / "postgres.log", 20);
    if (log.find("Address already in use") == std::string::npos || attempt == kStartAttempts) {
      fail("pg_ctl start failed (exit " + std::to_string(rc) + ") on port " + std::to_string(port) +
           "\n" + logs_tail({"pg_ctl.log", "postgres.log"}));
    }
  }
}

std::string PostgresServer::create_database() {
  if (!m_running) fail("create_database: the server is stopped");
  int n = 0;
  {
    const std::lock_guard lock(m_mutex);
    n = m_next_db++;
  }
  // The pid: a process forked from this one counts from the same n.
  const std::string name = "test_" + std::to_string(::getpid()) + "_" + std::to_string(n);
  create_empty_database(admin_url(), name);
  return url(name);
}

std::string PostgresServer::admin_url() const { return url("postgres"); }

std::string PostgresServer::url(const std::string& database) const {
  return std::string("postgresql://") + kUser + "@127.0.0.1:" + std::to_string(m_port) + "/" +
         database;
}

std::string PostgresServer::logs_tail(std::initializer_list<const char*> names) const {
  std::string out;
  for (const char* name : names) {
    const fs::path file = m_dir / name;
    if (fs::exists(file)) out += "--- " + file.string() + "\n" + tail_of(file, 20);
  }
  return out;
}

void PostgresServer::stop() {
  if (::getpid() != m_owner) return;
  std::string error;
  if (m_running) {
    m_running = false;
    const auto args = command(
        "pg_ctl", {"stop", "-w", "-t", "60", "-D", (m_dir / "data").string(), "-m", "fast"});
    const int rc = run_logged(args, m_dir / "pg_ctl.log", m_dir);
    if (rc != 0) {
      error = "PostgreSQL test server: pg_ctl stop failed (exit " + std::to_string(rc) + ")\n" +
              logs_tail({"pg_ctl.log", "postgres.log"});
    }
  }
  if (error.empty() && !keep_dirs()) {
    std::error_code ec;
    fs::remove_all(m_dir, ec);
  }
  if (m_watchdog_fd >= 0) {
    ::close(m_watchdog_fd);  // the watchdog stops a server pg_ctl could not, and cleans up
    m_watchdog_fd = -1;
  }
  if (!error.empty()) throw std::runtime_error(error);
}

}  // namespace fleetsign::test
