// fleetsign-workers-bench (issue 13's scale figures): batch issuance with the registry in
// PostgreSQL by 1 and 2 `batch work` processes (each with a clone of the token), against one
// `issue` on a SQLite home and on the PostgreSQL home, in one run; then the killed-worker drill:
// one of two workers is killed with SIGKILL mid-batch, and the survivor's time to finish the
// orphaned share (its lease's end included) is reported.
//
//   fleetsign-workers-bench --postgres postgresql://USER@HOST/EMPTY_DB [--devices N]
//                           [--threads N] [--lease S] [--json]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "fleet_setup.hpp"

namespace fs = std::filesystem;
using fleetsign::bench::FleetSetup;
using fleetsign::bench::json_number;
using fleetsign::bench::run_child;
using fleetsign::bench::seconds_since;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string postgres;
  long devices = 40000;
  int threads = 0;
  int lease = 5;
  bool json = false;
};

void note(const char* fmt, auto... args) {
  fleetsign::bench::note_as("fleetsign-workers-bench", fmt, args...);
}

// A home with root + intermediate "int" (ec-p256).
void make_cas(FleetSetup& s, const std::vector<std::string>& init_args) {
  std::vector<std::string> init{"init"};
  init.insert(init.end(), init_args.begin(), init_args.end());
  s.cli(init);
  s.cli({"ca", "create-root", "--name", "root", "--subject", "/CN=Workers Bench Root"});
  s.cli({"ca", "create-intermediate", "--name", "int", "--issuer", "root", "--subject",
         "/CN=Workers Bench Intermediate", "--key", "ec-p256"});
}

double issue_rate(FleetSetup& s, const std::string& tag, long n, int threads) {
  const std::string out =
      s.cli({"issue", "--ca", "int", "--generate", std::to_string(n), "--id-pattern", tag + "-{07}",
             "--bundle", "--out", (s.dir / ("out-" + tag)).string(), "--threads",
             std::to_string(threads), "--json"},
            true);
  const auto rate = json_number(out, "certs_per_s");
  if (!rate) throw std::runtime_error("issue " + tag + ": no certs_per_s in " + out);
  return *rate;
}

std::string share_batch(FleetSetup& s, const std::string& tag, long n, long share) {
  const std::string out =
      s.cli({"issue", "--ca", "int", "--generate", std::to_string(n), "--id-pattern", tag + "-{07}",
             "--bundle", "--out", (s.dir / ("out-" + tag)).string(), "--share",
             std::to_string(share), "--json"},
            true);
  const auto at = out.find("\"batch\":\"");
  if (at == std::string::npos) throw std::runtime_error("issue --share: " + out);
  return out.substr(at + 9, out.find('"', at + 9) - at - 9);
}

pid_t spawn_worker(const fs::path& home, int threads, int lease, const fs::path& log) {
  return fleetsign::bench::spawn_logged(
      {FLEETSIGN_CLI_PATH, "--home", home.string(), "batch", "work", "--drain", "--threads",
       std::to_string(threads), "--lease", std::to_string(lease)},
      log);
}

int wait_for(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The batch is finished with every device issued (else the bench fails: a figure of a batch
// that lost devices is no figure).
void check_finished(FleetSetup& s, const std::string& id, long n) {
  const std::string show = s.cli({"batch", "show", id, "--json"}, true);
  const auto issued = json_number(show, "issued");
  if (show.find("\"state\":\"finished\"") == std::string::npos || !issued ||
      static_cast<long>(*issued) != n) {
    throw std::runtime_error("batch " + id + " is not finished with " + std::to_string(n) +
                             " issued: " + show);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto need = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (a == "--postgres")
      o.postgres = need();
    else if (a == "--devices")
      o.devices = std::stol(need());
    else if (a == "--threads")
      o.threads = std::stoi(need());
    else if (a == "--lease")
      o.lease = std::stoi(need());
    else if (a == "--json")
      o.json = true;
    else {
      std::fprintf(stderr,
                   "usage: fleetsign-workers-bench --postgres URL [--devices N] [--threads N] "
                   "[--lease S] [--json]\n  URL: an empty PostgreSQL database (PGPASSWORD or "
                   "~/.pgpass for a password)\n");
      return a == "--help" ? 0 : 2;
    }
  }
  if (o.postgres.empty() || o.devices < 8) {
    std::fprintf(stderr, "fleetsign-workers-bench: --postgres URL is needed, --devices >= 8\n");
    return 2;
  }
  const int threads =
      o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
  const int half = std::max(1, threads / 2);
  const long n = o.devices, share = std::max(1L, n / 16);
  char tmpl[] = "/tmp/fleetsign-workers-bench.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return 1;
  const fs::path work = tmpl;
  try {
    FleetSetup sqlite(work / "sqlite"), pg(work / "pg");
    setenv("FLEETSIGN_PIN", pg.env["FLEETSIGN_PIN"].c_str(), 1);
    make_cas(sqlite, {});
    make_cas(pg, {"--registry", o.postgres});
    const fs::path w1 = work / "w1", w2 = work / "w2";
    pg.cli({"worker", "clone", w1.string()});
    pg.cli({"worker", "clone", w2.string()});

    note("issue --generate %ld, %d threads: SQLite home, then PostgreSQL home", n, threads);
    const double sqlite_rate = issue_rate(sqlite, "sq", n, threads);
    const double pg_rate = issue_rate(pg, "pg", n, threads);

    note("one worker (batch work, %d threads) on a shared batch of %ld", threads, n);
    const std::string b1 = share_batch(pg, "one", n, share);
    auto t = Clock::now();
    if (wait_for(spawn_worker(w1, threads, 30, pg.log)) != 0) throw std::runtime_error("worker");
    const double one_rate = static_cast<double>(n) / seconds_since(t);
    check_finished(pg, b1, n);

    note("two workers (%d threads each) on a shared batch of %ld", half, n);
    const std::string b2 = share_batch(pg, "two", n, share);
    t = Clock::now();
    const pid_t a = spawn_worker(w1, half, 30, pg.log), b = spawn_worker(w2, half, 30, pg.log);
    if (wait_for(a) != 0 || wait_for(b) != 0) throw std::runtime_error("a worker failed");
    const double two_rate = static_cast<double>(n) / seconds_since(t);
    check_finished(pg, b2, n);

    note("drill: two workers, one killed with SIGKILL at a third of the batch (lease %d s)",
         o.lease);
    const std::string b3 = share_batch(pg, "drill", n, share);
    t = Clock::now();
    const pid_t killed = spawn_worker(w1, half, o.lease, pg.log);
    const pid_t survivor = spawn_worker(w2, half, o.lease, pg.log);
    std::this_thread::sleep_for(
        std::chrono::duration<double>(static_cast<double>(n) / two_rate / 3));
    ::kill(killed, SIGKILL);
    wait_for(killed);
    const auto killed_at = Clock::now();
    const double before_kill = seconds_since(t);
    if (wait_for(survivor) != 0) throw std::runtime_error("the surviving worker failed");
    const double after_kill = seconds_since(killed_at);
    check_finished(pg, b3, n);
    const double total = before_kill + after_kill;

    if (o.json) {
      std::printf(
          "{\"devices\":%ld,\"threads\":%d,\"issue_sqlite_per_s\":%.1f,\"issue_pg_per_s\":%.1f,"
          "\"issue_pg_1_worker_per_s\":%.1f,\"issue_pg_2_workers_per_s\":%.1f,"
          "\"pg_vs_sqlite\":%.3f,\"two_vs_one_worker\":%.3f,\"drill_lease_s\":%d,"
          "\"drill_killed_after_s\":%.2f,\"drill_survivor_finished_after_kill_s\":%.2f,"
          "\"drill_total_s\":%.2f}\n",
          n, threads, sqlite_rate, pg_rate, one_rate, two_rate, pg_rate / sqlite_rate,
          two_rate / one_rate, o.lease, before_kill, after_kill, total);
    } else {
      std::printf(
          "fleetsign-workers-bench: %ld generated devices per run, %d threads, shares of "
          "%ld\n",
          n, threads, share);
      std::printf("  %-40s %10.0f certs/s\n", "issue, SQLite home", sqlite_rate);
      std::printf("  %-40s %10.0f certs/s  (%.2f x SQLite)\n", "issue, PostgreSQL home", pg_rate,
                  pg_rate / sqlite_rate);
      std::printf("  %-40s %10.0f certs/s  (%.2f x SQLite)\n", "1 worker, PostgreSQL (wall)",
                  one_rate, one_rate / sqlite_rate);
      std::printf("  %-40s %10.0f certs/s  (%.2f x 1 worker)\n", "2 workers, PostgreSQL (wall)",
                  two_rate, two_rate / one_rate);
      std::printf(
          "  drill: killed one of 2 workers after %.2f s; the survivor finished the batch "
          "(orphaned share included, lease %d s) %.2f s later; %.2f s in all\n",
          before_kill, o.lease, after_kill, total);
    }
    fs::remove_all(work);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fleetsign-workers-bench: %s (work dir %s kept)\n", e.what(),
                 work.c_str());
    return 1;
  }
}
