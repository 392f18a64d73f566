// fleetsign-bench: one run, one machine, one thread count. It makes a fresh work directory with a
// fleetsign home (private SoftHSM2 token, EC P-256 intermediate), runs the CLI exactly as a user
// does (child processes), runs the Azure docs' `openssl x509 -req` loop, and last — after every
// child is done, because libp11 must never meet fork — opens the token in-process to measure its
// raw signing rate. See bench.hpp for the parts.
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "bench.hpp"

namespace fs = std::filesystem;
using namespace fleetsign::bench;

namespace {

constexpr const char* kUserPin = "bench-user-1234";
constexpr const char* kSoPin = "bench-so-5678";
constexpr const char* kCa = "int";
constexpr double kSeconds = 2.0;  // in-process measurements

struct Options {
  int threads = 0;
  std::size_t csrs = 20000;
  std::size_t rss_devices = 200000;
  std::size_t openssl_csrs = 300;
  std::size_t registry_devices = 1000000;
  bool json = false;
  bool crl_only = false;
  std::optional<fs::path> keep;
  std::string postgres;  // --postgres URL: the A/B with the registry in PostgreSQL
};

void usage(FILE* to) {
  std::fprintf(
      to,
      "usage: fleetsign-bench [--threads N] [--csrs N] [--rss-devices N] [--openssl-csrs N] "
      "[--registry-devices N] "
      "[--json] [--keep DIR] [--crl-only] [--postgres URL]\n"
      "Measures, in one run, fleetsign's issuance rate against the token-sign + ECDSA-verify "
      "ceiling and against the openssl x509 -req loop.\n"
      "  --threads N       threads for everything (default: hardware concurrency)\n"
      "  --csrs N          CSRs in the bundle; also the --generate count (default 20000)\n"
      "  --rss-devices N   devices of the peak-RSS run, issue --generate N --bundle (default "
      "200000)\n"
      "  --openssl-csrs N  CSRs for the sequential openssl x509 -req loop (default 300)\n"
      "  --registry-devices N  generated devices loaded for expiry_report_s / auth_checks_per_s "
      "(default 1000000)\n"
      "  --json            print one JSON object instead of a table\n"
      "  --keep DIR        work in DIR (created, must be empty) and keep it\n"
      "  --crl-only        only crl_100k_sign_s (issue 10's CRL figure)\n"
      "  --postgres URL    also issue the CSR bundle into a second home whose registry is this "
      "empty\n"
      "                    PostgreSQL database (init --registry URL), right after the SQLite "
      "run,\n"
      "                    and record 100000 intents + issued there (issue_pg_per_s, "
      "registry_record_pg_per_s)\n"
      "  -h, --help        show this help\n"
      "Progress notes go to stderr. FLEETSIGN_BENCH_CLI=PATH runs another fleetsign build.\n");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> value;
    if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg.resize(eq);
    }
    auto need = [&]() -> std::string {
      if (value) return *value;
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    auto count = [&](long long min) {
      const std::string v = need();
      char* end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || n < min) {
        throw std::invalid_argument(arg + " '" + v + "' is not a number >= " + std::to_string(min));
      }
      return n;
    };
    if (arg == "-h" || arg == "--help") {
      usage(stdout);
      std::exit(0);
    } else if (arg == "--threads")
      o.threads = static_cast<int>(count(1));
    else if (arg == "--csrs")
      o.csrs = static_cast<std::size_t>(count(1));
    else if (arg == "--rss-devices")
      o.rss_devices = static_cast<std::size_t>(count(1));
    else if (arg == "--openssl-csrs")
      o.openssl_csrs = static_cast<std::size_t>(count(1));
    else if (arg == "--registry-devices")
      o.registry_devices = static_cast<std::size_t>(count(1));
    else if (arg == "--json")
      o.json = true;
    else if (arg == "--crl-only")
      o.crl_only = true;
    else if (arg == "--keep")
      o.keep = need();
    else if (arg == "--postgres")
      o.postgres = need();
    else
      throw std::invalid_argument("unknown option '" + arg + "'");
  }
  if (o.threads == 0) {
    o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  return o;
}

// The fleetsign program the runs use: the one built beside this bench, or FLEETSIGN_BENCH_CLI (to
// compare two builds of fleetsign under one bench, back to back).
std::string cli_path() {
  const char* other = std::getenv("FLEETSIGN_BENCH_CLI");
  return other != nullptr && *other != '\0' ? other : FLEETSIGN_CLI_PATH;
}

void note(const char* fmt, auto... args) {
  std::fprintf(stderr, "fleetsign-bench: ");
  std::fprintf(stderr, fmt, args...);
  std::fputc('\n', stderr);
}

// The work directory: made fresh, removed at the end unless --keep.
class WorkDir {
 public:
  explicit WorkDir(const std::optional<fs::path>& keep) : m_keep(keep.has_value()) {
    if (keep) {
      fs::create_directories(*keep);
      if (!fs::is_empty(*keep)) throw std::runtime_error(keep->string() + " is not empty");
      m_dir = fs::absolute(*keep);
    } else {
      const char* tmp = std::getenv("TMPDIR");
      std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/fleetsign-bench-XXXXXX";
      if (mkdtemp(templ.data()) == nullptr) {
        throw std::runtime_error(templ + ": mkdtemp: " + std::strerror(errno));
      }
      m_dir = templ;
    }
  }
  ~WorkDir() {
    if (m_keep) return;
    // ~10^5 files: on a busy ext4 (discard) this alone has taken minutes.
    const auto t0 = std::chrono::steady_clock::now();
    std::error_code ec;
    fs::remove_all(m_dir, ec);
    std::fprintf(stderr, "fleetsign-bench: removed %s in %.1f s\n", m_dir.c_str(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const fs::path& path() const { return m_dir; }

 private:
  fs::path m_dir;
  bool m_keep;
};

class Bench {
 public:
  Bench(const Options& o, const fs::path& work, const std::string& home = "home",
        std::vector<std::string> init_args = {})
      : m_o(o), m_work(work), m_home(work / home), m_init_args(std::move(init_args)) {
    m_log = work / "children.log";
    m_env = {{"FLEETSIGN_PIN", kUserPin},
             {"FLEETSIGN_SO_PIN", kSoPin},
             {"SOFTHSM2_CONF", (m_home / "softhsm2.conf").string()}};
  }

  ChildResult run(const std::vector<std::string>& argv) {
    const auto r = run_child(argv, m_env, m_log);
    if (r.exit_status != 0) {
      std::string cmd;
      for (const auto& a : argv) cmd += a + " ";
      throw std::runtime_error(cmd + "exited " + std::to_string(r.exit_status) + "\n" + r.out +
                               tail_of(m_log));
    }
    return r;
  }

  // A child whose non-zero exit is an answer, not a failure (expiry report's statuses).
  ChildResult run_any(const std::vector<std::string>& argv) {
    return run_child(argv, m_env, m_log);
  }

  ChildResult cli(std::vector<std::string> args) {
    args.insert(args.begin(), {cli_path(), "--home", m_home.string()});
    return run(args);
  }

  // One `fleetsign issue … --json` run; returns the child's result and its certs_per_s.
  std::pair<ChildResult, double> issue(const std::string& tag, std::vector<std::string> args,
                                       std::size_t expect, int threads) {
    const fs::path out = m_work / ("out-" + tag);
    args.insert(args.begin(), {"issue", "--ca", kCa, "--out", out.string(), "--threads",
                               std::to_string(threads), "--json"});
    const auto r = cli(args);
    const auto rate = json_number(r.out, "certs_per_s");
    const auto issued = json_number(r.out, "issued");
    const auto rejected = json_number(r.out, "rejected");
    if (!rate || !issued || !rejected || *issued != static_cast<double>(expect) || *rejected != 0) {
      throw std::runtime_error("issue run '" + tag + "' did not issue all " +
                               std::to_string(expect) + ": " + r.out);
    }
    note("  %-14s %8zu certs  %9.0f certs/s  (wall %.2f s, CPU %.1f us/cert, max RSS %.0f MB)",
         tag.c_str(), expect, *rate, r.wall_s, r.cpu_s * 1e6 / static_cast<double>(expect),
         static_cast<double>(r.max_rss_kb) / 1024.0);
    // Outputs stay until the end: on ext4 with `discard`, deleting thousands of files just before
    // a run slows that run's file creation several-fold (measured: 4000/s -> 250/s).
    return {r, *rate};
  }

  void setup() {
    note("work dir %s, %d threads", m_work.c_str(), m_o.threads);
    std::vector<std::string> init{"init", "--json"};
    init.insert(init.end(), m_init_args.begin(), m_init_args.end());
    cli(init);
    cli({"ca", "create-root", "--name", "root", "--subject", "/CN=Bench Root CA/O=fleetsign-bench",
         "--key", "ec-p256", "--json"});
    cli({"ca", "create-intermediate", "--name", kCa, "--issuer", "root", "--subject",
         "/CN=Bench Intermediate CA/O=fleetsign-bench", "--key", "ec-p256", "--json"});
  }

  double openssl_loop() {
    const fs::path dir = m_work / "openssl";
    fs::create_directories(dir);
    const auto key = (dir / "int.key").string(), pem = (dir / "int.pem").string();
    run({"openssl",
         "req",
         "-x509",
         "-new",
         "-newkey",
         "ec",
         "-pkeyopt",
         "ec_paramgen_curve:prime256v1",
         "-nodes",
         "-keyout",
         key,
         "-out",
         pem,
         "-subj",
         "/CN=Bench Software Intermediate",
         "-days",
         "3650",
         "-addext",
         "basicConstraints=critical,CA:TRUE",
         "-addext",
         "keyUsage=critical,keyCertSign,cRLSign"});
    // Device IDs of their own (after the three CSR bundles).
    const auto csrs = make_csrs(3 * m_o.csrs, m_o.openssl_csrs, m_o.threads);
    std::vector<fs::path> files;
    for (std::size_t i = 0; i < csrs.size(); ++i) {
      files.push_back(dir / ("dev" + std::to_string(i)));
      write_bundle(files.back().string() + ".csr", csrs, i, 1);
    }
    note("openssl x509 -req loop over %zu CSRs (sequential, as the Azure docs do it)",
         files.size());
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& f : files) {
      run({"openssl", "x509", "-req", "-in", f.string() + ".csr", "-CA", pem, "-CAkey", key,
           "-CAcreateserial", "-out", f.string() + ".pem", "-days", "365", "-sha256"});
    }
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    note("  %zu certs in %.2f s", files.size(), wall);
    return static_cast<double>(files.size()) / wall;
  }

  const fs::path& home() const { return m_home; }
  const fs::path& work() const { return m_work; }

 private:
  const Options& m_o;
  fs::path m_work, m_home, m_log;
  std::vector<std::string> m_init_args;
  std::map<std::string, std::string> m_env;
};

struct Results {
  // CPU microseconds: per token signature, per verify, per certificate of the csr-bundle run
  // (the whole child process, start-up included).
  double token_sign_cpu_us = 0, raw_verify_cpu_us = 0, issue_cpu_us = 0;
  double token_sign = 0, raw_verify = 0, limit = 0, issue = 0, issue_files = 0, issue_1 = 0,
         generate = 0, generate_files = 0, openssl_loop = 0, peak_rss_mb = 0, speedup = 0,
         expiry_report_s = 0, auth_checks = 0, registry_record = 0, expiry_aggregate_s = 0,
         crl_100k_sign_s = 0, issue_pg = 0, registry_record_pg = 0;
  std::size_t devices_in_registry = 0;
};

void print(const Options& o, const Results& r) {
  const double vs_limit = r.limit > 0 ? r.issue / r.limit : 0;
  // The same ratio in CPU time: sign + verify as a share of what a certificate costs. The rates
  // above are taken minutes apart; on a shared machine their load differs, their CPU hardly does.
  const double vs_limit_cpu =
      r.issue_cpu_us > 0 ? (r.token_sign_cpu_us + r.raw_verify_cpu_us) / r.issue_cpu_us : 0;
  const double vs_openssl = r.openssl_loop > 0 ? r.issue / r.openssl_loop : 0;
  if (o.json) {
    std::printf(
        "{\"token_sign_per_s\":%.1f,\"raw_verify_per_s\":%.1f,\"limit_per_s\":%.1f,"
        "\"issue_per_s\":%.1f,\"issue_files_per_s\":%.1f,\"generate_per_s\":%.1f,"
        "\"generate_files_per_s\":%.1f,\"openssl_loop_per_s\":%.2f,\"peak_rss_mb\":%.1f,"
        "\"rss_devices\":%zu,\"issue_vs_limit\":%.4f,\"issue_vs_openssl_loop\":%.2f,"
        "\"speedup_threads\":%.3f,\"threads\":%d,\"csrs\":%zu,\"devices_in_registry\":%zu,"
        "\"expiry_report_s\":%.3f,\"auth_checks_per_s\":%.1f,\"registry_record_per_s\":%.1f,"
        "\"expiry_aggregate_1m_s\":%.3f,\"token_sign_cpu_us\":%.2f,\"raw_verify_cpu_us\":%.2f,"
        "\"issue_cpu_us_per_cert\":%.2f,\"issue_vs_limit_cpu\":%.4f,\"crl_100k_sign_s\":%.3f,"
        "\"issue_pg_per_s\":%.1f,\"issue_pg_vs_sqlite\":%.4f,\"registry_record_pg_per_s\":%.1f}\n",
        r.token_sign, r.raw_verify, r.limit, r.issue, r.issue_files, r.generate, r.generate_files,
        r.openssl_loop, r.peak_rss_mb, o.rss_devices, vs_limit, vs_openssl, r.speedup, o.threads,
        o.csrs, r.devices_in_registry, r.expiry_report_s, r.auth_checks, r.registry_record,
        r.expiry_aggregate_s, r.token_sign_cpu_us, r.raw_verify_cpu_us, r.issue_cpu_us,
        vs_limit_cpu, r.crl_100k_sign_s, r.issue_pg, r.issue > 0 ? r.issue_pg / r.issue : 0,
        r.registry_record_pg);
    return;
  }
  std::printf("fleetsign-bench: %d threads, %zu CSRs, EC P-256 intermediate in SoftHSM2\n\n",
              o.threads, o.csrs);
  auto row = [](const char* name, double v, const char* what) {
    std::printf("  %-22s %12.1f  %s\n", name, v, what);
  };
  row("token_sign_per_s", r.token_sign, "token C_Sign via SigningKey::sign_digest");
  row("raw_verify_per_s", r.raw_verify, "OpenSSL ECDSA P-256 verify, fresh EC_KEY each");
  row("limit_per_s", r.limit, "1 / (1/sign + 1/verify): the CSR ceiling");
  row("issue_per_s", r.issue, "issue --csr-file --bundle");
  row("issue_files_per_s", r.issue_files, "issue --csr-file, files per device");
  row("generate_per_s", r.generate, "issue --generate --bundle");
  row("generate_files_per_s", r.generate_files, "issue --generate, files per device");
  row("openssl_loop_per_s", r.openssl_loop, "openssl x509 -req per device, sequential");
  std::printf("  %-22s %12.1f  issue --generate %zu --bundle (child ru_maxrss)\n", "peak_rss_mb",
              r.peak_rss_mb, o.rss_devices);
  std::printf("\n  %-22s %12.3f  issue_per_s / limit_per_s\n", "issue_vs_limit", vs_limit);
  std::printf("  %-22s %12.3f  CPU: (sign %.1f + verify %.1f us) / %.1f us per certificate\n",
              "issue_vs_limit_cpu", vs_limit_cpu, r.token_sign_cpu_us, r.raw_verify_cpu_us,
              r.issue_cpu_us);
  std::printf("  %-22s %12.1f  issue_per_s / openssl_loop_per_s\n", "issue_vs_openssl_loop",
              vs_openssl);
  std::printf("  %-22s %12.2f  issue_per_s at %d threads / at 1 thread (%.1f/s)\n",
              "speedup_threads", r.speedup, o.threads, r.issue_1);
  std::printf("\n  registry with %zu devices:\n", r.devices_in_registry);
  std::printf("  %-22s %12.3f  fleetsign expiry report --within 400 --json (wall, whole report)\n",
              "expiry_report_s", r.expiry_report_s);
  std::printf("  %-22s %12.1f  auth check decisions, %d threads, one connection each\n",
              "auth_checks_per_s", r.auth_checks, o.threads);
  std::printf("\n  engine, in process:\n");
  std::printf("  %-22s %12.1f  intents + issued rows recorded, 100000 in 500-row chunks\n",
              "registry_record_per_s", r.registry_record);
  std::printf("  %-22s %12.3f  build_expiry_report over 1000000 due certificates in memory\n",
              "expiry_aggregate_1m_s", r.expiry_aggregate_s);
  std::printf("  %-22s %12.3f  CRL of 100000 entries: sign in the token, store, check, install\n",
              "crl_100k_sign_s", r.crl_100k_sign_s);
  if (r.issue_pg > 0) {
    std::printf("\n  registry on PostgreSQL (--postgres):\n");
    std::printf("  %-22s %12.1f  issue --csr-file --bundle, right after the SQLite run\n",
                "issue_pg_per_s", r.issue_pg);
    std::printf("  %-22s %12.3f  issue_pg_per_s / issue_per_s\n", "issue_pg_vs_sqlite",
                r.issue > 0 ? r.issue_pg / r.issue : 0);
    std::printf("  %-22s %12.1f  intents + issued rows recorded, 100000 in 500-row chunks\n",
                "registry_record_pg_per_s", r.registry_record_pg);
  }
}

int run_bench(const Options& o) {
  const auto t0 = std::chrono::steady_clock::now();
  WorkDir work(o.keep);
  Bench b(o, work.path());
  // Everything below that loads SoftHSM2 — children and this process — uses the private store.
  setenv("SOFTHSM2_CONF", (b.home() / "softhsm2.conf").c_str(), 1);
  b.setup();
  if (o.crl_only) {
    const double s = measure_crl_sign(b.home(), kUserPin, kCa, 100000);
    std::printf(o.json ? "{\"crl_100k_sign_s\":%.3f}\n"
                       : "  crl_100k_sign_s %.3f  CRL of 100000 entries: sign, store, check, "
                         "install\n",
                s);
    return 0;
  }

  const std::size_t n = o.csrs;
  note("making 3 x %zu P-256 CSRs", n);
  const fs::path bundle_a = work.path() / "csrs-bundle.pem",
                 bundle_b = work.path() / "csrs-files.pem",
                 bundle_c = work.path() / "csrs-1thread.pem";
  for (std::size_t k = 0; k < 3; ++k) {
    const auto pems = make_csrs(k * n, n, o.threads);  // distinct device IDs per run
    if (!openssl_accepts_csr(pems.front()) || !openssl_accepts_csr(pems.back())) {
      throw std::runtime_error("generated CSR does not verify with OpenSSL");
    }
    write_bundle(k == 0 ? bundle_a : k == 1 ? bundle_b : bundle_c, pems);
  }

  Results r;
  note("fleetsign issue runs");
  const auto bundle_run =
      b.issue("csr-bundle", {"--csr-file", bundle_a.string(), "--bundle"}, n, o.threads);
  r.issue = bundle_run.second;
  r.issue_cpu_us = bundle_run.first.cpu_s * 1e6 / static_cast<double>(n);
  r.issue_files = b.issue("csr-files", {"--csr-file", bundle_b.string()}, n, o.threads).second;
  r.issue_1 =
      o.threads == 1
          ? r.issue
          : b.issue("csr-bundle-1t", {"--csr-file", bundle_c.string(), "--bundle"}, n, 1).second;
  r.speedup = r.issue_1 > 0 ? r.issue / r.issue_1 : 0;
  if (!o.postgres.empty()) {
    // The same bundle size into a home whose registry is PostgreSQL, right after the SQLite run.
    Bench pg(o, work.path(), "home-pg", {"--registry", o.postgres});
    pg.setup();
    const fs::path bundle_pg = work.path() / "csrs-pg.pem";
    write_bundle(bundle_pg, make_csrs(3 * n + o.openssl_csrs, n, o.threads));
    r.issue_pg =
        pg.issue("csr-bundle-pg", {"--csr-file", bundle_pg.string(), "--bundle"}, n, o.threads)
            .second;
  }
  const std::string count = std::to_string(n);
  r.generate = b.issue("gen-bundle", {"--generate", count, "--id-pattern", "gen-{07}", "--bundle"},
                       n, o.threads)
                   .second;
  r.generate_files =
      b.issue("gen-files", {"--generate", count, "--id-pattern", "genf-{07}"}, n, o.threads).second;
  const auto rss = b.issue(
      "rss", {"--generate", std::to_string(o.rss_devices), "--id-pattern", "rss-{07}", "--bundle"},
      o.rss_devices, o.threads);
  r.peak_rss_mb = static_cast<double>(rss.first.max_rss_kb) / 1024.0;

  r.openssl_loop = b.openssl_loop();

  // Registry scale: a group that trusts the (verified) root, then 10^6 generated devices.
  b.cli({"ca", "verification-cert", "--ca", "root", "--code", "BENCH-POP", "--out",
         (work.path() / "pop.pem").string()});
  b.cli({"ca", "verify", "root", "--code", "BENCH-POP", "--cert",
         (work.path() / "pop.pem").string()});
  b.cli({"enrollment", "group", "create", "fleet", "--ca", "root"});
  note("loading %zu generated devices into the registry", o.registry_devices);
  load_synthetic_devices(b.home() / "registry.db", kCa, o.registry_devices, std::time(nullptr));
  r.devices_in_registry = o.registry_devices + 6 * n + o.rss_devices;
  const auto report = b.run_any(
      {cli_path(), "--home", b.home().string(), "expiry", "report", "--within", "400", "--json"});
  r.expiry_report_s = report.wall_s;
  note("  expiry report over the registry: %.3f s (exit %d)", report.wall_s, report.exit_status);

  // The runs above wrote gigabytes; SoftHSM2 touches its token files on every operation, so let
  // the kernel's writeback finish before the in-process rates are taken (measured: without this
  // the token's rate read 22k/s instead of 54k/s).
  note("sync and settle before the in-process measurements");
  ::sync();
  std::this_thread::sleep_for(std::chrono::seconds(5));

  // No more children from here on: the token may now be opened in this process.
  note("raw ECDSA P-256 verify, %d threads, %.0f s", o.threads, kSeconds);
  const Rate verify = measure_raw_verify(o.threads, kSeconds);
  r.raw_verify = verify.per_s;
  r.raw_verify_cpu_us = verify.cpu_us_per_op;
  note("token sign_digest, %d threads, %.0f s", o.threads, kSeconds);
  const Rate sign = measure_token_sign(b.home(), kUserPin, kCa, o.threads, kSeconds);
  r.token_sign = sign.per_s;
  r.token_sign_cpu_us = sign.cpu_us_per_op;
  r.limit = 1.0 / (1.0 / r.token_sign + 1.0 / r.raw_verify);
  note("auth checks, %d threads, %.0f s", o.threads, kSeconds);
  r.auth_checks =
      measure_auth_checks(b.home() / "registry.db", work.path() / "out-csr-bundle" / "bundle.pem",
                          2000, o.threads, kSeconds);

  note("registry recording, 100000 intents + issued");
  r.registry_record = measure_registry_record(work.path() / "record-bench.db", 100000);
  if (!o.postgres.empty()) {
    note("registry recording on PostgreSQL, 100000 intents + issued");
    r.registry_record_pg = measure_registry_record(o.postgres, 100000);
  }
  note("expiry aggregation over 1000000 due certificates");
  r.expiry_aggregate_s = measure_expiry_aggregate(1000000);
  note("CRL of 100000 revoked certificates: sign, store, check, install");
  r.crl_100k_sign_s = measure_crl_sign(b.home(), kUserPin, kCa, 100000);

  print(o, r);
  note("done in %.1f s%s%s",
       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
       o.keep ? ", kept " : "", o.keep ? work.path().c_str() : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fleetsign-bench: %s\n", e.what());
    usage(stderr);
    return 2;
  }
  try {
    return run_bench(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fleetsign-bench: error: %s\n", e.what());
    return 1;
  }
}
