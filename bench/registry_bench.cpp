// fleetsign-registry-bench (issue 13's registry figures): a registry of N devices (default 10^7) on
// PostgreSQL (and, with --sqlite, the same on the embedded SQLite file), then the whole expiry
// report through the CLI and authentication decisions per second.
//
// The registry holds a real batch (2,000 certificates signed in the token, whose leaves the auth
// checks present) plus N generated rows: one issued certificate row and one device row each, with
// expiries spread over 400 days and lots of 10,000. The generated rows are made by the database
// itself (generate_series on PostgreSQL, a recursive CTE on SQLite), a million per statement, and
// carry no DER (the report and the decision never read it).
//
//   fleetsign-registry-bench --postgres postgresql://USER@HOST/EMPTY_DB [--sqlite]
//                            [--devices N] [--threads N] [--seconds S] [--keep] [--json]
#include <libpq-fe.h>
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "fleet_setup.hpp"

namespace fs = std::filesystem;
using fleetsign::bench::FleetSetup;
using fleetsign::bench::seconds_since;
using Clock = std::chrono::steady_clock;

namespace {

constexpr long kChunk = 1'000'000;
constexpr long kReal = 2000;

struct Options {
  std::string postgres;
  bool sqlite = false;
  long devices = 10'000'000;
  int threads = 0;
  double seconds = 5;
  bool json = false;
  // --home H --bundle F: measure again over a registry this bench loaded before (H's registry
  // holds the N devices and F the real batch's certificates), without loading it again.
  std::string home, bundle;
  bool keep = false;  // --keep: leave the loaded homes for --home H --bundle F
};

struct Figures {
  double load_s = 0, report_s = 0, report_best_s = 0, auth_per_s = 0;
  long report_rss_mb = 0;
};

void note(const char* fmt, auto... args) {
  fleetsign::bench::note_as("fleetsign-registry-bench", fmt, args...);
}

// A home with a root proven to the registry, group "fleet" trusting it, intermediate "int", and
// a real batch whose bundle.pem the auth checks present.
void make_home(FleetSetup& s, const std::vector<std::string>& init_args) {
  std::vector<std::string> init{"init"};
  init.insert(init.end(), init_args.begin(), init_args.end());
  s.cli(init);
  s.cli({"ca", "create-root", "--name", "root", "--subject", "/CN=Registry Bench Root"});
  const fs::path pop = s.dir / "pop.pem";
  s.cli({"ca", "verification-cert", "--ca", "root", "--code", "BENCH", "--out", pop.string()});
  s.cli({"ca", "verify", "root", "--code", "BENCH", "--cert", pop.string()});
  s.cli({"enrollment", "group", "create", "fleet", "--ca", "root"});
  s.cli({"ca", "create-intermediate", "--name", "int", "--issuer", "root", "--subject",
         "/CN=Registry Bench Intermediate", "--key", "ec-p256"});
  s.cli({"issue", "--ca", "int", "--generate", std::to_string(kReal), "--id-pattern", "real-{06}",
         "--bundle", "--out", (s.dir / "real").string()});
}

void pg_exec(PGconn* c, const std::string& sql) {
  PGresult* r = PQexec(c, sql.c_str());
  const auto status = PQresultStatus(r);
  const std::string err = PQresultErrorMessage(r);
  PQclear(r);
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    throw std::runtime_error(sql.substr(0, 60) + "…: " + err);
  }
}

void load_postgres(const std::string& url, long n, std::int64_t now) {
  PGconn* c = PQconnectdb(url.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    const std::string err = PQerrorMessage(c);
    PQfinish(c);
    throw std::runtime_error("cannot connect: " + err);
  }
  const std::string t = std::to_string(now);
  try {
    for (long lo = 0; lo < n; lo += kChunk) {
      const std::string range = "generate_series(" + std::to_string(lo) + ", " +
                                std::to_string(std::min(n, lo + kChunk) - 1) + ") i";
      const std::string id = "'syn-' || lpad(i::text, 8, '0')";
      const std::string serial = "'7F' || lpad(to_hex(i), 30, '0')";
      const std::string expiry = t + " + (i % 400) * 86400 + 3600";
      const std::string lot = "'SYN-' || lpad((i / 10000)::text, 4, '0')";
      pg_exec(c, "BEGIN");
      pg_exec(
          c,
          "INSERT INTO certificates (serial, device_id, ca_name, batch_id, seq, state, "
          "subject, not_before, not_after, sha256, key_sha256, lot, created_at) SELECT " +
              serial + ", " + id + ", 'int', 'synthetic', i, 'issued', '/CN=' || " + id + ", " +
              expiry + " - 31536000, " + expiry +
              ", md5(i::text) || md5((i + 1)::text), md5((i + 2)::text) || md5((i + 3)::text), " +
              lot + ", " + t + " FROM " + range);
      pg_exec(c,
              "INSERT INTO devices (registration_id, primary_serial, primary_not_after, ca_name, "
              "lot, status, created_at, updated_at) SELECT " +
                  id + ", " + serial + ", " + expiry + ", 'int', " + lot + ", 'enabled', " + t +
                  ", " + t + " FROM " + range);
      pg_exec(c, "COMMIT");
      note("  %ld of %ld rows loaded", std::min(n, lo + kChunk), n);
    }
    pg_exec(c, "VACUUM ANALYZE certificates");  // the visibility map: index-only scans
    pg_exec(c, "VACUUM ANALYZE devices");
  } catch (...) {
    PQfinish(c);
    throw;
  }
  PQfinish(c);
}

void sqlite_exec(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    const std::string msg = err != nullptr ? err : "?";
    sqlite3_free(err);
    throw std::runtime_error(sql.substr(0, 60) + "…: " + msg);
  }
}

void load_sqlite(const fs::path& db_file, long n, std::int64_t now) {
  sqlite3* db = nullptr;
  if (sqlite3_open(db_file.c_str(), &db) != SQLITE_OK) {
    sqlite3_close(db);
    throw std::runtime_error(db_file.string() + ": cannot open");
  }
  const std::string t = std::to_string(now);
  try {
    sqlite_exec(db, "PRAGMA journal_mode = WAL");
    sqlite_exec(db, "PRAGMA cache_size = -1000000");
    for (long lo = 0; lo < n; lo += kChunk) {
      const std::string range = "WITH RECURSIVE s(i) AS (SELECT " + std::to_string(lo) +
                                " UNION ALL SELECT i + 1 FROM s WHERE i < " +
                                std::to_string(std::min(n, lo + kChunk) - 1) + ") ";
      const std::string id = "printf('syn-%08d', i)";
      const std::string serial = "printf('7F%030X', i)";
      const std::string expiry = t + " + (i % 400) * 86400 + 3600";
      const std::string lot = "printf('SYN-%04d', i / 10000)";
      sqlite_exec(db, "BEGIN IMMEDIATE");
      sqlite_exec(db, range +
                          "INSERT INTO certificates (serial, device_id, ca_name, batch_id, seq, "
                          "state, subject, not_before, not_after, sha256, key_sha256, lot, "
                          "created_at) SELECT " +
                          serial + ", " + id + ", 'int', 'synthetic', i, 'issued', '/CN=' || " +
                          id + ", " + expiry + " - 31536000, " + expiry +
                          ", hex(randomblob(32)), hex(randomblob(32)), " + lot + ", " + t +
                          " FROM s");
      sqlite_exec(db, range +
                          "INSERT INTO devices (registration_id, primary_serial, "
                          "primary_not_after, ca_name, lot, status, created_at, updated_at) "
                          "SELECT " +
                          id + ", " + serial + ", " + expiry + ", 'int', " + lot + ", 'enabled', " +
                          t + ", " + t + " FROM s");
      sqlite_exec(db, "COMMIT");
      note("  %ld of %ld rows loaded", std::min(n, lo + kChunk), n);
    }
    sqlite_exec(db, "ANALYZE");
  } catch (...) {
    sqlite3_close(db);
    throw;
  }
  sqlite3_close(db);
}

// The expiry report through the CLI, three times (the first reads cold pages); every run must
// count every device.
void measure_report(FleetSetup& s, long n, Figures& f) {
  std::vector<double> runs;
  for (int i = 0; i < 3; ++i) {
    const auto r = fleetsign::bench::run_child({FLEETSIGN_CLI_PATH, "--home", s.home.string(),
                                                "expiry", "report", "--within", "400", "--json"},
                                               s.env, s.log);
    // Exit status 2: devices due within the last threshold (they are, by construction).
    const auto total = fleetsign::bench::json_number(r.out, "total");
    if (r.exit_status != 2 || !total || static_cast<long>(*total) != n + kReal) {
      throw std::runtime_error("expiry report (exit " + std::to_string(r.exit_status) +
                               ") did not count " + std::to_string(n + kReal) +
                               " devices: " + r.out.substr(0, 300));
    }
    runs.push_back(r.wall_s);
    f.report_rss_mb = std::max(f.report_rss_mb, r.max_rss_kb / 1024);
  }
  std::sort(runs.begin(), runs.end());
  f.report_best_s = runs.front();
  f.report_s = runs[1];  // the median of three
}

Figures measure_again(FleetSetup& s, const std::string& registry, const Options& o, int threads) {
  Figures f;
  s.home = o.home;
  note("expiry report --within 400 over %ld devices, 3 runs (registry loaded before)",
       o.devices + kReal);
  measure_report(s, o.devices, f);
  note("auth checks, %d threads, %.0f s", threads, o.seconds);
  f.auth_per_s =
      fleetsign::bench::measure_auth_checks(registry, o.bundle, kReal, threads, o.seconds);
  return f;
}

Figures run_backend(FleetSetup& s, const std::string& registry, bool postgres, const Options& o,
                    int threads) {
  if (!o.home.empty()) return measure_again(s, registry, o, threads);
  Figures f;
  make_home(
      s, postgres ? std::vector<std::string>{"--registry", registry} : std::vector<std::string>{});
  note("loading %ld generated devices (%s)", o.devices, postgres ? "PostgreSQL" : "SQLite");
  const auto t = Clock::now();
  if (postgres) {
    load_postgres(registry, o.devices, std::time(nullptr));
  } else {
    load_sqlite(s.home / "registry.db", o.devices, std::time(nullptr));
  }
  f.load_s = seconds_since(t);
  note("expiry report --within 400 over %ld devices, 3 runs", o.devices + kReal);
  measure_report(s, o.devices, f);
  note("auth checks, %d threads, %.0f s", threads, o.seconds);
  f.auth_per_s = fleetsign::bench::measure_auth_checks(
      postgres ? fs::path(registry) : s.home / "registry.db", s.dir / "real" / "bundle.pem", kReal,
      threads, o.seconds);
  return f;
}

void print(const char* name, const Figures& f, long devices, bool json, bool first) {
  if (json) {
    std::printf(
        "%s\"%s\":{\"devices\":%ld,\"load_s\":%.1f,\"expiry_report_s\":%.3f,"
        "\"expiry_report_best_s\":%.3f,\"expiry_report_peak_rss_mb\":%ld,"
        "\"auth_checks_per_s\":%.0f}",
        first ? "" : ",", name, devices, f.load_s, f.report_s, f.report_best_s, f.report_rss_mb,
        f.auth_per_s);
    return;
  }
  std::printf(
      "  %-10s loaded in %.0f s; expiry report %.2f s (median of 3, best %.2f s, peak "
      "%ld MB); auth checks %.0f/s\n",
      name, f.load_s, f.report_s, f.report_best_s, f.report_rss_mb, f.auth_per_s);
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
    else if (a == "--sqlite")
      o.sqlite = true;
    else if (a == "--devices")
      o.devices = std::stol(need());
    else if (a == "--threads")
      o.threads = std::stoi(need());
    else if (a == "--seconds")
      o.seconds = std::stod(need());
    else if (a == "--keep")
      o.keep = true;
    else if (a == "--json")
      o.json = true;
    else if (a == "--home")
      o.home = need();
    else if (a == "--bundle")
      o.bundle = need();
    else {
      std::fprintf(
          stderr,
          "usage: fleetsign-registry-bench --postgres URL [--sqlite] [--devices N] "
          "[--threads N] [--seconds S] [--keep] [--json]\n  URL: an empty PostgreSQL database "
          "(PGPASSWORD or ~/.pgpass for a password)\n  --sqlite: the same on a SQLite "
          "home, after PostgreSQL\n  --home H --bundle F: measure again over a "
          "registry loaded before (H's, with --devices N; F: its real certificates)\n  --keep: "
          "leave the loaded homes (the line to measure them again is printed)\n");
      return a == "--help" ? 0 : 2;
    }
  }
  if (o.home.empty() != o.bundle.empty() || (!o.home.empty() && o.sqlite)) {
    std::fprintf(stderr,
                 "fleetsign-registry-bench: --home and --bundle go together (PostgreSQL only)\n");
    return 2;
  }
  if (o.postgres.empty() || o.devices < 1 || o.seconds <= 0) {
    std::fprintf(stderr, "fleetsign-registry-bench: --postgres URL is needed, --devices >= 1\n");
    return 2;
  }
  const int threads =
      o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
  char tmpl[] = "/tmp/fleetsign-registry-bench.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return 1;
  const fs::path work = tmpl;
  try {
    FleetSetup pg(work / "pg");
    setenv("FLEETSIGN_PIN", pg.env["FLEETSIGN_PIN"].c_str(), 1);
    const Figures p = run_backend(pg, o.postgres, true, o, threads);
    Figures q;
    if (o.sqlite) {
      FleetSetup sq(work / "sqlite");
      q = run_backend(sq, {}, false, o, threads);
    }
    if (o.json) {
      std::printf("{\"threads\":%d,", threads);
      print("postgresql", p, o.devices + kReal, true, true);
      if (o.sqlite) print("sqlite", q, o.devices + kReal, true, false);
      std::printf("}\n");
    } else {
      std::printf(
          "fleetsign-registry-bench: %ld devices, %d threads (targets: report < 5 s, "
          "auth >= 10,000/s)\n",
          o.devices + kReal, threads);
      print("PostgreSQL", p, o.devices + kReal, false, true);
      if (o.sqlite) print("SQLite", q, o.devices + kReal, false, false);
    }
    if (o.keep) {
      note("kept %s (measure again: --home %s --bundle %s)", work.c_str(), pg.home.c_str(),
           (pg.dir / "real" / "bundle.pem").c_str());
    } else {
      fs::remove_all(work);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fleetsign-registry-bench: %s (work dir %s kept)\n", e.what(),
                 work.c_str());
    return 1;
  }
}
