// fleetsign-rollover-bench: a whole fleet rotated end to end, in one run on one machine.
//
//   1. a temp home (SoftHSM2 token + SQLite), a root CA proven to the registry, an enrollment
//      group, N device certificates (--generate, lot BENCH), `broker init` + `broker start`
//      (mosquitto with fleetsign's plugin) — all through the real CLI;
//   2. the N devices connect (fleetsign-device, one process; flash in /dev/shm with --sync never:
//      a simulated device's flash, not the host's disk, see device/README.md);
//   3. one rollover job over the lot, run in this process by the engine's runner exactly as
//      `fleetsign rollover start` runs it: new key + CSR on each device, sign in the token,
//      install, reprovision (the device reconnects with its new certificate), confirm from the
//      broker's session record, retire the old slot;
//   4. figures: devices_rotated_per_s, p50/p99 per-device time, the engine's and the broker's
//      peak RSS.
//
// Prints a human summary, or one JSON object with --json. Target (issue 9): >= 300 devices/s
// with 10,000 devices on a 2-core machine (all of them in under 35 s).
//
// --incident (issue 10's benchmark): instead of a rollover, an incident run over the lot (its
// certificates suspect, reason affiliationChanged): the time from the command to the last live
// session of the lot dropped (the devices come back pinned, rotation only), the time until the
// whole lot is back on replacement certificates, and the CRL signed at the end (every old
// certificate of the lot revoked). --drop-only stops after the drop (no rotation; about a minute
// instead of several).
#include <sqlite3.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fleet_setup.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/home.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/services.hpp"
#include "fleetsign/hsm/pin.hpp"
#include "fleetsign/jobs/fleet_config.hpp"
#include "fleetsign/jobs/incident.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

namespace {

struct Options {
  std::size_t devices = 10000;
  int in_flight = 512;
  // The simulator's cap on TLS handshakes in flight (fleetsign-device --max-handshakes). Real
  // devices each handshake on their own; the agent's default (64) is for 10,000 devices started
  // at once, and during a rotation it queued reconnections behind each other (119–132/s with 64,
  // 150–177/s with 512, back to back on 2026-11-29).
  int max_handshakes = 512;
  bool json = false;
  bool incident = false;
  bool drop_only = false;  // --incident: measure the drop, leave the rotation
  bool keep = false;       // keep the temp directory (home, logs, device flash) afterwards
  fs::path dir;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(
      stderr,
      "%s\nusage: fleetsign-rollover-bench [--devices N] [--in-flight N] [--max-handshakes N] "
      "[--dir DIR] [--keep] [--incident [--drop-only]] [--json]\n",
      msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--devices") {
      o.devices = std::stoul(value());
    } else if (a == "--in-flight") {
      o.in_flight = std::stoi(value());
    } else if (a == "--max-handshakes") {
      o.max_handshakes = std::stoi(value());
    } else if (a == "--dir") {
      o.dir = value();
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--keep") {
      o.keep = true;
    } else if (a == "--incident") {
      o.incident = true;
    } else if (a == "--drop-only") {
      o.drop_only = true;
    } else if (a == "--help" || a == "-h") {
      usage("fleetsign-rollover-bench: rotate a simulated fleet end to end and report the rate");
    } else {
      usage(("unknown option " + a).c_str());
    }
  }
  if (o.devices == 0 || o.in_flight < 1 || o.in_flight > 1000) usage("bad --devices/--in-flight");
  if (o.max_handshakes < 1 || o.max_handshakes > 100000) usage("bad --max-handshakes");
  if (o.drop_only && !o.incident) usage("--drop-only goes with --incident");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  const std::string tag = std::to_string(::getpid());
  const fs::path dir =
      opt.dir.empty() ? fs::temp_directory_path() / ("fleetsign-rollover-bench-" + tag) : opt.dir;
  const fs::path flash = fs::path("/dev/shm") / ("fleetsign-rollover-bench-flash-" + tag);
  fleetsign::bench::FleetSetup s(dir);
  const bool tty = ::isatty(STDERR_FILENO) != 0 && !opt.json;
  const auto say = [&](const char* what) {
    if (tty) std::fprintf(stderr, "%s\n", what);
  };

  say("setting up a home, a proven root CA, a group and the device certificates");
  s.init_with_proven_root();
  const fs::path out = s.dir / "devices";
  s.cli({"issue", "--ca", "root", "--generate", std::to_string(opt.devices), "--id-pattern",
         "bench-{06}", "--lot", "BENCH", "--out", out.string()});
  const int port = fleetsign::bench::free_port();
  s.cli({"broker", "init", "--port", std::to_string(port), "--host", "localhost"});
  s.cli({"broker", "start"});
  const int broker = fleetsign::bench::broker_pid(s.home);

  const std::string device_log = (s.dir / "devices.log").string();
  const pid_t devices = fleetsign::bench::spawn_logged(
      {FLEETSIGN_DEVICE_PATH, "--broker", "localhost:" + std::to_string(port), "--trust",
       (s.home / "broker" / "ca.pem").string(), "--dir", out.string(), "--state", flash.string(),
       "--sync", "never", "--log", device_log, "--max-handshakes",
       std::to_string(opt.max_handshakes)},
      device_log);
  auto registry = fleetsign::engine::Registry::open(s.home / "registry.db");
  say("connecting the devices");
  const auto connect_deadline = SteadyClock::now() + std::chrono::seconds(600);
  std::size_t connected = 0;
  while (connected < opt.devices && SteadyClock::now() < connect_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    connected = registry->connected_devices().size();
    if (tty) std::fprintf(stderr, "\r  %zu / %zu connected", connected, opt.devices);
  }
  if (tty) std::fprintf(stderr, "\n");
  std::this_thread::sleep_for(std::chrono::seconds(2));  // twin traffic settles

  say("rotating every device");
  ::setenv("FLEETSIGN_PIN", "bench-user-pin", 1);
  fleetsign::engine::Services services(
      fleetsign::engine::Home::open(s.home),
      [](const std::string&) { return fleetsign::hsm::Pin(std::string("bench-user-pin")); });
  services.token();
  fleetsign::jobs::RolloverParams params;
  params.selection.lot = "BENCH";
  params.in_flight = opt.in_flight;
  params.step_timeout_s = 60;
  std::string job;
  double drop_s = -1, start_s = 0;  // --incident: the command, and the last old session's drop
  auto t0 = SteadyClock::now();
  if (!opt.incident) {
    const auto plan = fleetsign::jobs::plan_rollover(services.stores(), services.policy(),
                                                     services.clock(), params);
    job = fleetsign::jobs::create_job(services.stores(), services.clock(), params, plan);
    t0 = SteadyClock::now();
  } else {
    // Sessions are recorded in whole seconds: start on a fresh second, so that every session
    // older than it is one the incident must cut off.
    const std::int64_t second = std::time(nullptr) + 1;
    while (std::time(nullptr) < second) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    t0 = SteadyClock::now();
    fleetsign::jobs::IncidentRequest req;
    req.scope_kind = "lot";
    req.scope = "BENCH";
    req.reason = "affiliationChanged";
    req.params = params;
    job = fleetsign::jobs::start_incident(services.stores(), services.cas(), services.policy(),
                                          services.clock(), req)
              .job_id;
    const auto returned = SteadyClock::now();
    start_s = std::chrono::duration<double>(returned - t0).count();
    say("waiting for the lot's live sessions to be dropped");
    // A count on a read-only connection of its own: listing the sessions every 20 ms would take
    // the CPU that the broker needs to drop them.
    sqlite3* db = nullptr;
    sqlite3_stmt* count = nullptr;
    if (sqlite3_open_v2((s.home / "registry.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) !=
            SQLITE_OK ||
        sqlite3_busy_timeout(db, 200) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "SELECT count(*) FROM device_sessions WHERE connected = 1 AND "
                           "connected_at < ?",
                           -1, &count, nullptr) != SQLITE_OK) {
      std::fprintf(stderr, "fleetsign-rollover-bench: reading the sessions: %s\n",
                   sqlite3_errmsg(db));
      fleetsign::bench::stop_child(devices);
      s.cli({"broker", "stop"});
      std::exit(1);
    }
    bool step_error_said = false;
    while (SteadyClock::now() - returned < std::chrono::seconds(60)) {
      sqlite3_bind_int64(count, 1, second);
      const bool read = sqlite3_step(count) == SQLITE_ROW;
      const std::int64_t old = read ? sqlite3_column_int64(count, 0) : -1;
      if (!read && !std::exchange(step_error_said, true)) {
        std::fprintf(stderr, "fleetsign-rollover-bench: reading the sessions: %s\n",
                     sqlite3_errmsg(db));
      }
      sqlite3_reset(count);
      if (old == 0) {
        drop_s = std::chrono::duration<double>(SteadyClock::now() - returned).count();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    sqlite3_finalize(count);
    sqlite3_close(db);
  }
  auto trigger = fleetsign::jobs::open_trigger(fleetsign::jobs::load_fleet_config(s.home), s.home,
                                               std::nullopt);
  std::vector<double> per_device_ms;
  per_device_ms.reserve(opt.devices);
  std::size_t done = 0;
  fleetsign::jobs::RunnerOptions options;
  options.runner = "bench:" + tag;
  options.on_settled = [&](const fleetsign::engine::JobTask& t, std::chrono::microseconds d) {
    if (t.state != "done") return;
    ++done;
    per_device_ms.push_back(static_cast<double>(d.count()) / 1000.0);
  };
  if (tty) {
    options.progress = [](const fleetsign::jobs::JobProgress& p) {
      std::fprintf(stderr, "\r  %lld / %lld rotated", static_cast<long long>(p.done),
                   static_cast<long long>(p.total));
    };
  }
  fleetsign::engine::JobRecord final_job;
  final_job.state = "not run (--drop-only)";
  if (!opt.drop_only) {
    final_job = fleetsign::jobs::run_job(services.stores(), services.cas(), services.policy(),
                                         services.clock(), *trigger, job, options);
  }
  const double wall_s = std::chrono::duration<double>(SteadyClock::now() - t0).count();
  if (tty) std::fprintf(stderr, "\n");
  // The CRL that lists the lot's old certificates, signed again now to time it alone.
  double crl_s = 0;
  std::int64_t crl_entries = 0;
  if (opt.incident && !opt.drop_only) {
    const std::string root = "root";
    const auto c0 = SteadyClock::now();
    const auto crls =
        fleetsign::engine::refresh_crls(services.stores(), services.cas(), services.policy().crl,
                                        services.clock(), std::span(&root, 1));
    crl_s = std::chrono::duration<double>(SteadyClock::now() - c0).count();
    if (!crls.empty()) crl_entries = crls.front().entries;
  }
  rusage self{};
  ::getrusage(RUSAGE_SELF, &self);
  const long engine_kb = self.ru_maxrss;
  const long broker_kb = broker > 0 ? fleetsign::bench::vm_hwm_kb(broker) : 0;

  trigger.reset();
  fleetsign::bench::stop_child(devices);
  s.cli({"broker", "stop"});
  std::error_code ec;
  fs::remove_all(flash, ec);
  if (!opt.keep && opt.dir.empty()) fs::remove_all(s.dir, ec);  // ~175 MB for 10,000 devices

  const double rate = static_cast<double>(done) / wall_s;
  const double p50 = fleetsign::bench::percentile(per_device_ms, 0.50);
  const double p99 = fleetsign::bench::percentile(per_device_ms, 0.99);
  if (opt.json) {
    std::printf("%s\n", fleetsign::engine::json_object(
                            {{"mode", std::string(opt.incident ? "incident" : "rollover")},
                             {"devices", static_cast<std::int64_t>(opt.devices)},
                             {"connected", static_cast<std::int64_t>(connected)},
                             {"rotated", static_cast<std::int64_t>(done)},
                             {"job_state", final_job.state},
                             {"in_flight", static_cast<std::int64_t>(opt.in_flight)},
                             {"max_handshakes", static_cast<std::int64_t>(opt.max_handshakes)},
                             {"wall_s", std::to_string(wall_s)},
                             {"devices_rotated_per_s", static_cast<std::int64_t>(rate)},
                             {"p50_ms", std::to_string(p50)},
                             {"p99_ms", std::to_string(p99)},
                             {"engine_peak_rss_mb", static_cast<std::int64_t>(engine_kb / 1024)},
                             {"broker_peak_rss_mb", static_cast<std::int64_t>(broker_kb / 1024)},
                             {"rate_vs_target", std::to_string(rate / 300.0)},
                             // --incident only (0 / -1 otherwise):
                             {"incident_start_s", std::to_string(start_s)},
                             {"last_session_dropped_after_return_s", std::to_string(drop_s)},
                             {"crl_entries", crl_entries},
                             {"crl_sign_s", std::to_string(crl_s)}})
                            .c_str());
  } else {
    std::printf("%s of %zu devices (%zu connected), %d in flight\n",
                opt.incident ? "incident run (lot)" : "rollover", opt.devices, connected,
                opt.in_flight);
    if (opt.incident) {
      std::printf(
          "  incident start       %.2f s; last live session dropped %.2f s after it "
          "returned (target < 2 s)\n",
          start_s, drop_s);
    }
    if (!opt.drop_only) {
      std::printf("  rotated              %zu in %.1f s: %.0f devices/s (target >= 300)\n", done,
                  wall_s, rate);
      std::printf("  per device           p50 %.0f ms, p99 %.0f ms\n", p50, p99);
    }
    std::printf("  peak RSS             engine %ld MB, broker %ld MB\n", engine_kb / 1024,
                broker_kb / 1024);
    if (opt.incident && !opt.drop_only) {
      std::printf("  CRL                  %lld entries signed and stored in %.2f s\n",
                  static_cast<long long>(crl_entries), crl_s);
    }
    std::printf("  job                  %s (%s)\n", job.c_str(), final_job.state.c_str());
  }
  if (opt.drop_only) return drop_s >= 0 ? 0 : 1;
  return done == opt.devices ? 0 : 1;
}
