// fleetsign-device: runs 1..N devices of a batch against a broker (see ../../broker/PROTOCOL.md).
// The operator's rehearsal tool too: point it at a batch and a broker, call methods, roll over.
#include <Poco/JSON/Object.h>
#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "fleetsign/device/fleet.hpp"
#include "fleetsign/device/identity.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace {

using fleetsign::Error;
using fleetsign::ErrorCode;
namespace dev = fleetsign::device;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: fleetsign-device --broker HOST:PORT --trust CA.pem (--dir BATCH_OUT_DIR | --bundle "
    "BUNDLE.pem)\n"
    "                        [--state DIR] [--count N] [--offline-fraction F] [--fail-fraction F]"
    " [--seed S]\n"
    "                        [--dps ID_SCOPE] [--log FILE] [--json] [--duration S]"
    " [--max-handshakes N]\n"
    "                        [--sync always|never] [--reuse-key] [--help]\n"
    "\n"
    "Runs the devices of a batch (`fleetsign issue --generate ... --out DIR`, per-device files or\n"
    "--bundle) as IoT Hub MQTT devices, each over TLS with its own certificate: they answer "
    "direct\n"
    "methods (ping, getCertificate, and the rotation methods createCsr, installCertificate,\n"
    "reprovision), report their certificate in the twin, and reconnect with\n"
    "backoff. Use it to rehearse a rollover against a broker before touching a real fleet.\n"
    "\n"
    "  --broker HOST:PORT      the broker (or DPS endpoint with --dps); [v6addr]:PORT for IPv6\n"
    "  --trust CA.pem          CA certificate(s) the broker's server certificate chains to\n"
    "  --dir DIR               a batch output directory ({id}_cert.pem, _fullchain.pem, _key.pem)\n"
    "  --bundle FILE           a batch's bundle.pem (each certificate followed by its key)\n"
    "  --state DIR             each device's flash: DIR/{id}/ (slots, keys); made on first run,\n"
    "                          reused afterwards (it wins over the batch)\n"
    "  --count N               run the first N devices (by ID)\n"
    "  --offline-fraction F    this fraction of devices (chosen by --seed) never connects\n"
    "  --fail-fraction F       this fraction answers every method with 500\n"
    "  --seed S                chooses the offline and failing devices (default 1)\n"
    "  --reuse-key             createCsr answers with a CSR for the key the device already runs\n"
    "                          (a device that cannot make keys)\n"
    "  --dps ID_SCOPE          register through DPS at --broker first, then connect to the hub\n"
    "                          it assigns\n"
    "  --log FILE              per-device events to FILE (default: stderr)\n"
    "  --json                  print a JSON summary on stdout at the end\n"
    "  --duration S            stop after S seconds (default: run until SIGINT/SIGTERM)\n"
    "  --max-handshakes N      TLS handshakes in flight at once (default 64)\n"
    "  --sync always|never     fsync each flash write (default always); never: simulation only,\n"
    "                          a power cut may lose what a rotation wrote\n";

volatile sig_atomic_t g_signal = 0;
dev::DeviceFleet* g_fleet = nullptr;

void on_signal(int sig) {
  g_signal = sig;
  if (g_fleet != nullptr) g_fleet->stop();  // an atomic store and a write(2): signal-safe
}

struct Args {
  std::map<std::string, std::string> values;
  bool json = false, help = false, reuse_key = false;
};

Args parse_args(int argc, char** argv) {
  static const char* kValued[] = {
      "broker",           "trust",         "dir", "bundle", "state",    "count",          "seed",
      "offline-fraction", "fail-fraction", "dps", "log",    "duration", "max-handshakes", "sync"};
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      a.help = true;
    } else if (arg == "--json") {
      a.json = true;
    } else if (arg == "--reuse-key") {
      a.reuse_key = true;
    } else if (arg.rfind("--", 0) == 0 && std::find(std::begin(kValued), std::end(kValued),
                                                    arg.substr(2)) != std::end(kValued)) {
      if (i + 1 >= argc) throw Error(ErrorCode::kUsage, arg + " needs a value");
      if (!a.values.emplace(arg.substr(2), argv[++i]).second) {
        throw Error(ErrorCode::kUsage, arg + " given twice");
      }
    } else {
      throw Error(ErrorCode::kUsage, "unknown argument '" + arg + "'");
    }
  }
  return a;
}

double parse_number(const Args& a, const std::string& name, double lo, double hi, double dflt) {
  const auto it = a.values.find(name);
  if (it == a.values.end()) return dflt;
  double v = 0;
  const std::string& s = it->second;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || !std::isfinite(v) || v < lo || v > hi) {
    std::ostringstream range;
    range << lo << ".." << hi;
    throw Error(ErrorCode::kUsage,
                "--" + name + " '" + s + "': must be a number in " + range.str());
  }
  return v;
}

std::pair<std::string, int> parse_broker(const std::string& text) {
  std::string host;
  std::string port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find("]:");
    if (close != std::string::npos) {
      host = text.substr(1, close - 1);
      port = text.substr(close + 2);
    }
  } else if (const auto colon = text.rfind(':'); colon != std::string::npos) {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  int p = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (host.empty() || ec != std::errc() || end != port.data() + port.size() || p < 1 || p > 65535) {
    throw Error(ErrorCode::kUsage, "--broker '" + text + "': expected HOST:PORT");
  }
  return {host, p};
}

long rss_kb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return 0;
}

// Timestamped lines to the log file or stderr; on a terminal, above the progress line.
class LogSink {
 public:
  LogSink(const std::optional<std::string>& file, bool tty) : m_tty(tty && !file) {
    if (file) {
      m_file.open(*file, std::ios::app);
      if (!m_file) throw Error(ErrorCode::kIo, "--log " + *file + ": cannot be opened");
    }
  }
  void operator()(std::string_view line) {
    std::ostream& out = m_file.is_open() ? static_cast<std::ostream&>(m_file) : std::cerr;
    if (m_tty) out << "\r\033[K";
    out << fleetsign::engine::iso8601(std::time(nullptr)) << ' ' << line << '\n';
    if (m_file.is_open()) m_file.flush();
  }

 private:
  bool m_tty;
  std::ofstream m_file;
};

int run(const Args& a) {
  for (const char* required : {"broker", "trust"}) {
    if (a.values.count(required) == 0) {
      throw Error(ErrorCode::kUsage, std::string("--") + required + " is required");
    }
  }
  if (a.values.count("dir") + a.values.count("bundle") != 1) {
    throw Error(ErrorCode::kUsage, "give exactly one of --dir and --bundle");
  }
  dev::FleetOptions o;
  std::tie(o.broker_host, o.broker_port) = parse_broker(a.values.at("broker"));
  o.trust_file = a.values.at("trust");
  o.offline_fraction = parse_number(a, "offline-fraction", 0, 1, 0);
  o.fail_fraction = parse_number(a, "fail-fraction", 0, 1, 0);
  o.reuse_key = a.reuse_key;
  o.seed = static_cast<std::uint64_t>(parse_number(a, "seed", 0, 9e15, 1));
  o.max_handshakes = static_cast<int>(parse_number(a, "max-handshakes", 1, 100000, 64));
  const double count = parse_number(a, "count", 1, 1e7, 0);
  const double duration = parse_number(a, "duration", 0.001, 1e9, 0);
  if (a.values.count("state")) o.state_dir = a.values.at("state");
  if (a.values.count("sync")) {
    const std::string& sync = a.values.at("sync");
    if (sync != "always" && sync != "never") {
      throw Error(ErrorCode::kUsage, "--sync '" + sync + "': expected always or never");
    }
    o.sync = sync == "always";
  }
  if (a.values.count("dps")) {
    const std::string& scope = a.values.at("dps");
    if (scope.empty() || scope.size() > 64 ||
        scope.find_first_not_of(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-") !=
            std::string::npos) {
      throw Error(ErrorCode::kUsage, "--dps '" + scope + "': an ID scope is [A-Za-z0-9-]{1,64}");
    }
    o.dps_id_scope = scope;
  }
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  std::optional<std::string> log_file;
  if (a.values.count("log")) log_file = a.values.at("log");
  LogSink sink(log_file, tty);
  o.log = [&sink](std::string_view line) { sink(line); };

  // 1. Devices from the batch's outputs, every file checked.
  o.devices = a.values.count("dir") ? dev::load_batch_dir(a.values.at("dir"), o.id_rule)
                                    : dev::load_bundle(a.values.at("bundle"), o.id_rule);
  if (count > 0) {
    const auto n = static_cast<std::size_t>(count);
    if (n > o.devices.size()) {
      throw Error(ErrorCode::kInvalidArgument, "--count " + std::to_string(n) + ": the batch has " +
                                                   std::to_string(o.devices.size()) + " devices");
    }
    o.devices.erase(o.devices.begin() + static_cast<std::ptrdiff_t>(n), o.devices.end());
  }
  const long rss_before = rss_kb();
  // 2. The fleet: state directories, TLS contexts, then the loop.
  dev::DeviceFleet fleet(std::move(o));
  g_fleet = &fleet;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  const auto started = Clock::now();
  fleet.start();
  const auto end =
      duration > 0 ? started + std::chrono::milliseconds(static_cast<std::int64_t>(duration * 1000))
                   : Clock::time_point::max();
  long rss_peak = 0;
  std::int64_t last_connects = 0;
  auto last = started;
  while (!fleet.stopped() && Clock::now() < end) {
    fleet.run_until(nullptr, std::min(end, Clock::now() + std::chrono::milliseconds(500)));
    rss_peak = std::max(rss_peak, rss_kb());
    const auto s = fleet.stats();
    if (tty) {
      const auto now = Clock::now();
      const double rate = static_cast<double>(s.connects - last_connects) /
                          std::max(1e-3, std::chrono::duration<double>(now - last).count());
      std::fprintf(stderr,
                   "\r\033[Kconnected %lld/%lld (of %lld)  %.0f connects/s  failures %lld"
                   "  methods %lld",
                   static_cast<long long>(s.connected), static_cast<long long>(s.online),
                   static_cast<long long>(s.devices), rate,
                   static_cast<long long>(s.connect_failures),
                   static_cast<long long>(s.methods_answered));
      std::fflush(stderr);
      last_connects = s.connects;
      last = now;
    }
  }
  const auto s = fleet.stats();
  fleet.shutdown();
  g_fleet = nullptr;
  if (tty) std::fprintf(stderr, "\n");
  if (a.json) {
    Poco::JSON::Object out(Poco::JSON_PRESERVE_KEY_ORDER);
    out.set("devices", s.devices);
    out.set("online", s.online);
    out.set("connected", s.connected);
    out.set("connects", s.connects);
    out.set("connect_failures", s.connect_failures);
    out.set("disconnects", s.disconnects);
    out.set("registrations", s.registrations);
    out.set("methods_answered", s.methods_answered);
    out.set("twin_responses", s.twin_responses);
    out.set("all_connected_s", s.first_all_connected_s);
    out.set("run_s", std::chrono::duration<double>(Clock::now() - started).count());
    out.set("rss_peak_kb", rss_peak);
    out.set("rss_per_device_kb", s.online > 0 ? static_cast<double>(rss_peak - rss_before) /
                                                    static_cast<double>(s.online)
                                              : 0.0);
    out.set("signal", static_cast<int>(g_signal));
    out.stringify(std::cout);
    std::cout << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse_args(argc, argv);
    if (a.help) {
      std::cout << kUsage;
      return 0;
    }
    return run(a);
  } catch (const Error& e) {
    std::cerr << "fleetsign-device: " << e.what() << " [" << fleetsign::error_code_name(e.code())
              << "]\n";
    if (e.code() == ErrorCode::kUsage) std::cerr << kUsage;
    return fleetsign::exit_status_for(e.code());
  } catch (const std::exception& e) {
    std::cerr << "fleetsign-device: " << e.what() << "\n";
    return 1;
  }
}
