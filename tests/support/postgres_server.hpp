// Test support: a real PostgreSQL server for the registry's PostgreSQL tests.
//
// initdb and pg_ctl from Debian's postgresql-15 (/usr/lib/postgresql/15/bin, else the highest
// /usr/lib/postgresql/*/bin) make a throwaway cluster in a temporary directory (under /dev/shm when
// it has 1 GiB free, else TMPDIR or /tmp), listening on a free 127.0.0.1 port and a Unix socket in
// that directory: trust authentication, user `fleetsign`, locale C (TEXT orders byte by byte, as in
// SQLite), durability off (fsync, synchronous_commit, full_page_writes). initdb refuses to run as
// root: under root (CI) the cluster belongs to the `postgres` system user, and its programs run
// through runuser.
//
// One server per test process (shared()), started on first use and stopped when the process that
// started it exits. A process forked from it (a CLI child, a death test) never stops it. If the
// test process dies without stopping it (SIGKILL, a CTest timeout), a watchdog process stops the
// server and removes the directory. FLEETSIGN_KEEP_TEST_DIRS=1 keeps the directory (data,
// postgres.log) for a post-mortem.
//
// Errors: every failure throws std::runtime_error naming the step, with the tail of the logs.
// Thread safety: shared() and create_database() may be called from any thread; stop() only when
// no other thread uses the server.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <initializer_list>
#include <mutex>
#include <string>
#include <vector>

namespace fleetsign::test {

class PostgresServer final {
 public:
  // The process's server, started (initdb, pg_ctl start) on the first call. A start that failed
  // throws, and the next call tries again.
  static PostgresServer& shared();

  PostgresServer(const PostgresServer&) = delete;  // owns a running server and its directory
  PostgresServer& operator=(const PostgresServer&) = delete;
  ~PostgresServer();

  // A fresh, empty database (from template0) for one test, never handed out twice; returns its
  // URL, postgresql://fleetsign@127.0.0.1:PORT/test_PID_N. Nothing drops it: the cluster goes.
  std::string create_database();
  // URL of the `postgres` maintenance database.
  std::string admin_url() const;
  int port() const { return m_port; }
  // pg_ctl stop -m fast, then removes the directory. Idempotent; does nothing in a process other
  // than the one that started the server.
  void stop();

 private:
  PostgresServer();
  // argv for a PostgreSQL program, through runuser when it must run as `postgres`.
  std::vector<std::string> command(const char* program, std::vector<std::string> args) const;
  void init_cluster();
  void start_cluster();  // on a free port, retried on another when that one was taken
  void spawn_watchdog();
  std::string url(const std::string& database) const;
  std::string logs_tail(std::initializer_list<const char*> names) const;  // of these logs

  std::filesystem::path m_bin;  // initdb, pg_ctl
  std::filesystem::path m_dir;  // data/, the socket, the logs
  bool m_as_postgres = false;   // programs run as the `postgres` user (we are root)
  pid_t m_owner = 0;            // the process that started the server
  int m_port = 0;
  bool m_running = false;
  int m_watchdog_fd = -1;  // write end of the watchdog's pipe: closing it wakes the watchdog
  std::mutex m_mutex;      // guards m_next_db
  int m_next_db = 1;
};

// Whether a server can be started here: the PostgreSQL binaries, and under root the `postgres`
// user and runuser. When false, `why` (if given) says what is missing. Tests that need a server
// fail when it is false, unless FLEETSIGN_TEST_NO_POSTGRES=1 (the caller decides).
bool postgres_available(std::string* why);

}  // namespace fleetsign::test
