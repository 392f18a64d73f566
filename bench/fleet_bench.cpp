// fleetsign-fleet-bench: the fleet plane under load, in one run on one machine.
//
//   1. a temp home (SoftHSM2 token + SQLite), a root CA proven to the registry, an enrollment
//      group, N device certificates with --generate, `broker init` + `broker start` (Debian's
//      mosquitto with fleetsign's plugin) — all through the real CLI;
//   2. N devices connect over TLS with their own certificates (fleetsign-device, one process for
//      all of them): connect_per_s, from the sessions the broker records;
//   3. one service client (the trigger layer's broker backend) invokes `ping` on every device,
//      `--in-flight` calls at a time: method_calls_per_s, p50 and p99 latency;
//   4. the broker's peak RSS (VmHWM).
//
// Prints a human summary, or one JSON object with --json. Targets (issue 8): method_calls_per_s
// >= 5000 with 10,000 devices, p99 < 100 ms with 1,000 calls in flight, broker RSS < 400 MB.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "fleet_setup.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/jobs/broker_trigger.hpp"
#include "fleetsign/policy/policy.hpp"

extern char** environ;

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::size_t devices = 10000;
  std::size_t calls = 0;  // 0: one per device
  std::size_t in_flight = 1000;
  bool json = false;
  bool keep = false;
  fs::path dir;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "%s\nusage: fleetsign-fleet-bench [--devices N] [--calls N] [--in-flight N] "
               "[--dir DIR] [--keep] [--json]\n",
               msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    const auto number = [&](const std::string& v) -> std::size_t {
      try {
        const long long n = std::stoll(v);
        if (n < 1 || n > 10'000'000) throw std::out_of_range(v);
        return static_cast<std::size_t>(n);
      } catch (const std::exception&) {
        usage((a + " needs a number 1..10000000, not '" + v + "'").c_str());
      }
    };
    if (a == "--devices")
      o.devices = number(next());
    else if (a == "--calls")
      o.calls = number(next());
    else if (a == "--in-flight")
      o.in_flight = number(next());
    else if (a == "--dir")
      o.dir = next();
    else if (a == "--json")
      o.json = true;
    else if (a == "--keep")
      o.keep = true;
    else if (a == "--help" || a == "-h")
      usage("fleetsign-fleet-bench: the fleet plane under load");
    else
      usage(("unknown option " + a).c_str());
  }
  if (o.calls == 0) o.calls = o.devices;
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  const fs::path dir = opt.dir.empty() ? fs::temp_directory_path() /
                                             ("fleetsign-fleet-bench-" + std::to_string(::getpid()))
                                       : opt.dir;
  fleetsign::bench::FleetSetup s(dir);
  const bool tty = ::isatty(STDERR_FILENO) != 0 && !opt.json;
  const auto say = [&](const char* what) {
    if (tty) std::fprintf(stderr, "%s\n", what);
  };

  say("setting up a home, a proven root CA, a group and the device certificates");
  s.init_with_proven_root();
  const fs::path out = s.dir / "devices";
  s.cli({"issue", "--ca", "root", "--generate", std::to_string(opt.devices), "--id-pattern",
         "bench-{06}", "--out", out.string()});
  const int port = fleetsign::bench::free_port();
  s.cli({"broker", "init", "--port", std::to_string(port), "--host", "localhost"});
  s.cli({"broker", "start"});
  const int pid = fleetsign::bench::broker_pid(s.home);

  // The devices run in their own process, as on their own machines: the service client's
  // libmosquitto loop (select(2)) must not share a process with 10,000 device sockets.
  const std::string trust = (s.home / "broker" / "ca.pem").string();
  const std::string device_log = (s.dir / "devices.log").string();
  std::vector<std::string> dev_argv{FLEETSIGN_DEVICE_PATH,
                                    "--broker",
                                    "localhost:" + std::to_string(port),
                                    "--trust",
                                    trust,
                                    "--dir",
                                    out.string(),
                                    "--log",
                                    device_log};
  const pid_t devices = fleetsign::bench::spawn_logged(dev_argv, device_log);
  auto registry = fleetsign::engine::Registry::open(s.home / "registry.db");
  const auto connected_now = [&] {
    return static_cast<std::int64_t>(registry->connected_devices().size());
  };
  const auto stop_devices = [&] { fleetsign::bench::stop_child(devices); };

  say("connecting the devices");
  const auto connect_start = Clock::now();
  const auto connect_deadline = connect_start + std::chrono::seconds(600);
  std::int64_t connected = 0;
  while (connected < static_cast<std::int64_t>(opt.devices) && Clock::now() < connect_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    connected = connected_now();
    if (tty)
      std::fprintf(stderr, "\r  %lld / %zu connected", static_cast<long long>(connected),
                   opt.devices);
  }
  const double connect_s = std::chrono::duration<double>(Clock::now() - connect_start).count();
  if (tty) std::fprintf(stderr, "\n");
  // The devices' twin GET and reported PATCH settle before the calls are timed.
  std::this_thread::sleep_for(std::chrono::seconds(2));

  say("invoking ping on every device");
  auto options = fleetsign::jobs::broker_options_for_home(s.home);
  options.max_in_flight = opt.in_flight;
  options.connect_wait = std::chrono::seconds(120);
  const auto service_start = Clock::now();
  std::unique_ptr<fleetsign::jobs::BrokerTrigger> trigger_owner;
  try {
    trigger_owner = std::make_unique<fleetsign::jobs::BrokerTrigger>(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "the service client cannot connect: %s\n", e.what());
    stop_devices();
    s.cli({"broker", "stop"});
    return 1;
  }
  fleetsign::jobs::BrokerTrigger& trigger = *trigger_owner;
  const double service_connect_s =
      std::chrono::duration<double>(Clock::now() - service_start).count();
  const fleetsign::policy::Policy policy{};
  std::vector<fleetsign::engine::DeviceId> ids;
  for (std::size_t i = 0; i < opt.devices; ++i) {
    char id[32];
    std::snprintf(id, sizeof id, "bench-%06zu", i + 1);
    ids.push_back(fleetsign::engine::DeviceId::check(policy, id).value());
  }
  std::mutex mu;
  std::vector<double> latencies_ms;
  latencies_ms.reserve(opt.calls);
  std::map<int, std::size_t> statuses;
  std::size_t failures = 0;
  const auto calls_start = Clock::now();
  for (std::size_t i = 0; i < opt.calls; ++i) {
    fleetsign::jobs::MethodRequest req{ids[i % ids.size()], "ping", "{\"n\":1}", 30, 0};
    const auto t0 = Clock::now();
    trigger.invoke(
        std::move(req), [&, t0](fleetsign::jobs::CallId, fleetsign::jobs::MethodOutcome r) {
          const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
          std::lock_guard lock(mu);
          latencies_ms.push_back(ms);
          if (r)
            ++statuses[r.value().status];
          else
            ++failures;
        });
  }
  trigger.wait_idle();
  const double calls_s = std::chrono::duration<double>(Clock::now() - calls_start).count();
  const long rss_kb = pid > 0 ? fleetsign::bench::vm_hwm_kb(pid) : 0;

  stop_devices();
  s.cli({"broker", "stop"});

  const double calls_per_s = static_cast<double>(opt.calls) / calls_s;
  const double p50 = fleetsign::bench::percentile(latencies_ms, 0.50),
               p99 = fleetsign::bench::percentile(latencies_ms, 0.99);
  const std::size_t ok = statuses[200];
  if (opt.json) {
    std::printf(
        "%s\n",
        fleetsign::engine::json_object(
            {{"devices", static_cast<std::int64_t>(opt.devices)},
             {"connected", static_cast<std::int64_t>(connected)},
             {"connect_s", std::to_string(connect_s)},
             {"connect_per_s",
              static_cast<std::int64_t>(static_cast<double>(connected) / connect_s)},
             {"calls", static_cast<std::int64_t>(opt.calls)},
             {"calls_ok", static_cast<std::int64_t>(ok)},
             {"calls_failed", static_cast<std::int64_t>(opt.calls - ok)},
             {"in_flight", static_cast<std::int64_t>(opt.in_flight)},
             {"service_connect_s", std::to_string(service_connect_s)},
             {"method_calls_per_s", static_cast<std::int64_t>(calls_per_s)},
             {"p50_ms", std::to_string(p50)},
             {"p99_ms", std::to_string(p99)},
             {"broker_peak_rss_mb", static_cast<std::int64_t>(rss_kb / 1024)},
             {"calls_vs_target", std::to_string(calls_per_s / 5000.0)},
             {"p99_vs_target", std::to_string(p99 / 100.0)},
             {"rss_vs_target", std::to_string(static_cast<double>(rss_kb) / 1024.0 / 400.0)}})
            .c_str());
  } else {
    std::printf("fleet plane, %zu devices, %zu calls with %zu in flight\n", opt.devices, opt.calls,
                opt.in_flight);
    std::printf("  connected            %lld in %.1f s (%.0f/s)\n",
                static_cast<long long>(connected), connect_s,
                static_cast<double>(connected) / connect_s);
    std::printf("  service client       connected in %.2f s\n", service_connect_s);
    std::printf("  method calls         %zu ok of %zu, %.0f/s (target >= 5000)\n", ok, opt.calls,
                calls_per_s);
    std::printf("  latency              p50 %.1f ms, p99 %.1f ms (target p99 < 100)\n", p50, p99);
    std::printf("  broker peak RSS      %ld MB (target < 400)\n", rss_kb / 1024);
    for (const auto& [status, n] : statuses) {
      if (status != 200) std::printf("  status %d            %zu\n", status, n);
    }
    if (failures > 0) std::printf("  transport failures   %zu\n", failures);
  }
  if (!opt.keep && opt.dir.empty()) {
    std::error_code ec;
    fs::remove_all(s.dir, ec);
  }
  return ok == opt.calls ? 0 : 1;
}
