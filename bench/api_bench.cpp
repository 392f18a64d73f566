// fleetsign-api-bench: the HTTP service's figures (issue 12 §5), in one run on one machine.
//
//   1. a temp home through the real CLI: a root proven to the registry, intermediate "int1", group
//      "fleet" trusting the root, an operator certificate for the bench;
//   2. batch issuance, interleaved: `fleetsign issue --csr-file A --bundle` (the CLI), then the
//      same size of bundle uploaded to `POST /api/v1/batches` with curl (the API), `--rounds`
//      times; api_vs_cli = the API's rate / the CLI's (medians; target >= 0.7);
//   3. `POST /api/v1/auth/check` at a fixed rate (--auth-rate, default 1,000/s) for --seconds,
//      over --connections keep-alive TLS connections (open loop: each request's latency
//      counts from when it was due, so a slow answer delays no measurement), after a 2 s warm-up
//      at the same rate: p50, p99 (target < 5 ms) and the rate reached.
//
// Prints a human table, or one JSON object with --json.
#include <Poco/Net/Context.h>
#include <Poco/Net/SecureStreamSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "bench.hpp"
#include "fleet_setup.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::size_t csrs = 10000;
  int rounds = 2;
  int threads = 0;
  double auth_rate = 1000;
  double seconds = 10;
  int connections = 8;
  bool json = false;
  bool keep = false;
  fs::path dir;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "%s\nusage: fleetsign-api-bench [--csrs N] [--rounds N] [--threads N] "
               "[--auth-rate R] [--seconds S] [--connections N] [--dir DIR] [--keep] [--json]\n",
               msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> double {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      try {
        const double v = std::stod(argv[++i]);
        if (v <= 0 || v > 1e7) throw std::out_of_range(a);
        return v;
      } catch (const std::exception&) {
        usage((a + " needs a positive number").c_str());
      }
    };
    if (a == "--csrs") {
      o.csrs = static_cast<std::size_t>(next());
    } else if (a == "--rounds") {
      o.rounds = static_cast<int>(next());
    } else if (a == "--threads") {
      o.threads = static_cast<int>(next());
    } else if (a == "--auth-rate") {
      o.auth_rate = next();
    } else if (a == "--seconds") {
      o.seconds = next();
    } else if (a == "--connections") {
      o.connections = static_cast<int>(next());
    } else if (a == "--dir") {
      if (i + 1 >= argc) usage("missing value for --dir");
      o.dir = argv[++i];
    } else if (a == "--keep") {
      o.keep = true;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--help" || a == "-h") {
      usage("fleetsign-api-bench: the HTTP service's batch and auth-check figures");
    } else {
      usage(("unknown argument " + a).c_str());
    }
  }
  return o;
}

double median(std::vector<double> v) { return fleetsign::bench::percentile(std::move(v), 0.5); }

// The operator's PKCS#12 as PEM files, for curl and Poco.
void split_p12(const fs::path& p12, const std::string& password, const fs::path& cert,
               const fs::path& key) {
  BIO* in = BIO_new_file(p12.c_str(), "rb");
  PKCS12* p = in ? d2i_PKCS12_bio(in, nullptr) : nullptr;
  BIO_free(in);
  EVP_PKEY* pkey = nullptr;
  X509* x = nullptr;
  if (p == nullptr || PKCS12_parse(p, password.c_str(), &pkey, &x, nullptr) != 1) {
    std::fprintf(stderr, "cannot read %s\n", p12.c_str());
    std::exit(1);
  }
  PKCS12_free(p);
  BIO* c = BIO_new_file(cert.c_str(), "w");
  PEM_write_bio_X509(c, x);
  BIO_free(c);
  BIO* k = BIO_new_file(key.c_str(), "w");
  PEM_write_bio_PrivateKey(k, pkey, nullptr, nullptr, 0, nullptr, nullptr);
  BIO_free(k);
  X509_free(x);
  EVP_PKEY_free(pkey);
}

struct AuthFigures {
  double p50_ms = 0, p99_ms = 0, max_ms = 0, reached_per_s = 0;
  std::size_t sent = 0, failed = 0;
};

AuthFigures load_auth(const Options& o, double seconds, int port, const fs::path& cert,
                      const fs::path& key, const fs::path& ca, const std::string& chain_pem) {
  Poco::Net::Context::Params params;
  params.certificateFile = cert.string();
  params.privateKeyFile = key.string();
  params.caLocation = ca.string();
  params.verificationMode = Poco::Net::Context::VERIFY_RELAXED;
  params.loadDefaultCAs = false;
  const Poco::Net::Context::Ptr ctx =
      new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, params);
  const auto total = static_cast<std::size_t>(o.auth_rate * seconds);
  const double gap_s = 1.0 / o.auth_rate;
  std::vector<std::vector<double>> latencies(static_cast<std::size_t>(o.connections));
  std::atomic<std::size_t> failed{0};
  const auto start = Clock::now() + std::chrono::milliseconds(200);
  // One raw keep-alive TLS connection per worker, the request written in one piece with
  // TCP_NODELAY (as curl does), so the figure is the service's, not a client's Nagle delay.
  const std::string head =
      "POST /api/v1/auth/check HTTP/1.1\r\nHost: localhost\r\n"
      "Content-Type: application/x-pem-file\r\nContent-Length: " +
      std::to_string(chain_pem.size()) + "\r\n\r\n";
  const std::string request = head + chain_pem;
  std::vector<std::thread> workers;
  for (int t = 0; t < o.connections; ++t) {
    workers.emplace_back([&, t] {
      std::unique_ptr<Poco::Net::SecureStreamSocket> sock;
      std::string buf;
      const auto connect = [&] {
        sock = std::make_unique<Poco::Net::SecureStreamSocket>(
            Poco::Net::SocketAddress("127.0.0.1", static_cast<Poco::UInt16>(port)), "localhost",
            ctx);
        sock->setNoDelay(true);
        buf.clear();
      };
      // One response: headers, then Content-Length bytes; true when 200 and allowed.
      const auto exchange = [&]() -> bool {
        sock->sendBytes(request.data(), static_cast<int>(request.size()));
        char chunk[16384];
        std::size_t header_end = std::string::npos;
        while ((header_end = buf.find("\r\n\r\n")) == std::string::npos) {
          const int n = sock->receiveBytes(chunk, sizeof chunk);
          if (n <= 0) return false;
          buf.append(chunk, static_cast<std::size_t>(n));
        }
        const auto cl = buf.find("Content-Length: ");
        const std::size_t length =
            cl == std::string::npos || cl > header_end ? 0 : std::stoul(buf.substr(cl + 16));
        while (buf.size() < header_end + 4 + length) {
          const int n = sock->receiveBytes(chunk, sizeof chunk);
          if (n <= 0) return false;
          buf.append(chunk, static_cast<std::size_t>(n));
        }
        const bool ok = buf.compare(0, 12, "HTTP/1.1 200") == 0 &&
                        buf.find("\"allowed\":true", header_end) != std::string::npos;
        buf.erase(0, header_end + 4 + length);
        return ok;
      };
      for (std::size_t i = static_cast<std::size_t>(t); i < total;
           i += static_cast<std::size_t>(o.connections)) {
        const auto due = start + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(gap_s * static_cast<double>(i)));
        std::this_thread::sleep_until(due);
        try {
          if (!sock) connect();
          if (!exchange()) {
            ++failed;
            sock.reset();
          }
        } catch (const Poco::Exception&) {
          ++failed;
          sock.reset();
        }
        latencies[static_cast<std::size_t>(t)].push_back(
            std::chrono::duration<double, std::milli>(Clock::now() - due).count());
      }
    });
  }
  for (auto& w : workers) w.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  AuthFigures f;
  f.sent = all.size();
  f.failed = failed.load();
  f.p50_ms = fleetsign::bench::percentile(all, 0.5);
  f.p99_ms = fleetsign::bench::percentile(all, 0.99);
  f.max_ms = fleetsign::bench::percentile(all, 1.0);
  f.reached_per_s = static_cast<double>(all.size()) / elapsed;
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const int threads = o.threads > 0
                          ? o.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  char tmpl[] = "/tmp/fleetsign-api-bench-XXXXXX";
  const fs::path dir = o.dir.empty() ? fs::path(::mkdtemp(tmpl)) : o.dir;
  fleetsign::bench::FleetSetup s(dir);
  const std::string password = "bench-p12-password";
  s.env["FLEETSIGN_PFX_PASSWORD"] = password;
  s.init_with_proven_root();
  s.cli({"ca", "create-intermediate", "--name", "int1", "--issuer", "root", "--subject",
         "/CN=Bench API Int1"});
  s.cli({"operator", "add", "bench", "--role", "operator", "--out", (dir / "bench.p12").string()});
  s.cli({"ca", "export", "operators", "--out", (dir / "operators.pem").string()});
  split_p12(dir / "bench.p12", password, dir / "bench.crt", dir / "bench.key");

  // Bundles: 2 * rounds of N CSRs, each with IDs of its own.
  const auto rounds = static_cast<std::size_t>(o.rounds);
  const auto pems = fleetsign::bench::make_csrs(0, 2 * rounds * o.csrs, threads);
  for (std::size_t b = 0; b < 2 * rounds; ++b) {
    fleetsign::bench::write_bundle(dir / ("bundle-" + std::to_string(b) + ".pem"), pems, b * o.csrs,
                                   o.csrs);
  }
  for (const auto& [k, v] : s.env) ::setenv(k.c_str(), v.c_str(), 1);
  const int port = fleetsign::bench::free_port();
  const pid_t serve = fleetsign::bench::spawn_logged(
      {FLEETSIGN_CLI_PATH, "--home", s.home.string(), "serve", "--tick", "3600", "--http",
       "127.0.0.1:" + std::to_string(port), "--http-data", (dir / "http-data").string(),
       "--http-threads", std::to_string(std::max(16, o.connections * 2))},
      s.log);
  const std::string base = "https://localhost:" + std::to_string(port);
  const std::vector<std::string> curl = {"curl",
                                         "-sS",
                                         "--fail-with-body",
                                         "--cacert",
                                         (dir / "operators.pem").string(),
                                         "--cert",
                                         (dir / "bench.crt").string(),
                                         "--key",
                                         (dir / "bench.key").string()};
  bool up = false;
  for (int i = 0; i < 200 && !up; ++i) {
    auto argv_up = curl;
    argv_up.push_back(base + "/healthz");
    up = fleetsign::bench::run_child(argv_up, {}, s.log).exit_status == 0;
    if (!up) ::usleep(100000);
  }
  if (!up) {
    std::fprintf(stderr, "serve --http did not come up; log %s:\n%s\n", s.log.c_str(),
                 fleetsign::bench::tail_of(s.log).c_str());
    fleetsign::bench::stop_child(serve);
    return 1;
  }

  std::vector<double> cli_rates, api_rates;
  for (std::size_t r = 0; r < rounds; ++r) {
    const auto cli = fleetsign::bench::run_child(
        {FLEETSIGN_CLI_PATH, "--home", s.home.string(), "issue", "--ca", "int1", "--csr-file",
         (dir / ("bundle-" + std::to_string(2 * r) + ".pem")).string(), "--bundle", "--out",
         (dir / ("cli-out-" + std::to_string(r))).string(), "--threads", std::to_string(threads),
         "--json"},
        s.env, s.log);
    auto up_argv = curl;
    up_argv.insert(up_argv.end(),
                   {"-o", (dir / ("api-" + std::to_string(r) + ".json")).string(), "-H",
                    "Content-Type: application/x-pem-file", "--data-binary",
                    "@" + (dir / ("bundle-" + std::to_string(2 * r + 1) + ".pem")).string(),
                    base + "/api/v1/batches?ca=int1"});
    const auto api = fleetsign::bench::run_child(up_argv, {}, s.log);
    if (cli.exit_status != 0 || api.exit_status != 0) {
      std::fprintf(stderr, "round %zu failed (cli %d, api %d); log %s:\n%s\n", r, cli.exit_status,
                   api.exit_status, s.log.c_str(), fleetsign::bench::tail_of(s.log).c_str());
      fleetsign::bench::stop_child(serve);
      return 1;
    }
    cli_rates.push_back(static_cast<double>(o.csrs) / cli.wall_s);
    api_rates.push_back(static_cast<double>(o.csrs) / api.wall_s);
  }

  std::ifstream chain_in(dir / "cli-out-0" / "bundle.pem");
  std::stringstream chain_text;
  chain_text << chain_in.rdbuf();
  // The first device's certificate (the bundle holds certificate blocks; the CA is the registry's).
  const std::string all = chain_text.str();
  const auto begin = all.find("-----BEGIN CERTIFICATE-----");
  const auto end = all.find("-----END CERTIFICATE-----", begin);
  const std::string chain = all.substr(begin, end + 26 - begin);
  // A warm-up (connections, TLS sessions, the service's Authenticators), then the measurement.
  load_auth(o, 2.0, port, dir / "bench.crt", dir / "bench.key", dir / "operators.pem", chain);
  const AuthFigures a = load_auth(o, o.seconds, port, dir / "bench.crt", dir / "bench.key",
                                  dir / "operators.pem", chain);
  fleetsign::bench::stop_child(serve);

  const double cli_rate = median(cli_rates), api_rate = median(api_rates);
  if (o.json) {
    std::printf(
        "{\"csrs\":%zu,\"rounds\":%d,\"threads\":%d,\"cli_issue_per_s\":%.1f,\"api_issue_per_s\":"
        "%.1f,\"api_vs_cli\":%.3f,\"auth_rate_asked\":%.0f,\"auth_rate_reached\":%.1f,"
        "\"auth_p50_ms\":%.3f,\"auth_p99_ms\":%.3f,\"auth_max_ms\":%.3f,\"auth_requests\":%zu,"
        "\"auth_failed\":%zu}\n",
        o.csrs, o.rounds, threads, cli_rate, api_rate, api_rate / cli_rate, o.auth_rate,
        a.reached_per_s, a.p50_ms, a.p99_ms, a.max_ms, a.sent, a.failed);
  } else {
    std::printf("fleetsign-api-bench: %zu CSRs a batch, %d round(s), %d thread(s)\n", o.csrs,
                o.rounds, threads);
    std::printf("  %-22s %12.1f  issue --csr-file --bundle (median)\n", "cli_issue_per_s",
                cli_rate);
    std::printf("  %-22s %12.1f  POST /api/v1/batches with curl, same size (median)\n",
                "api_issue_per_s", api_rate);
    std::printf("  %-22s %12.3f  target >= 0.7\n", "api_vs_cli", api_rate / cli_rate);
    std::printf("  %-22s %12.3f  at %.0f/s asked, %.1f/s reached, %zu requests, %zu failed\n",
                "auth_p50_ms", a.p50_ms, o.auth_rate, a.reached_per_s, a.sent, a.failed);
    std::printf("  %-22s %12.3f  target < 5 ms\n", "auth_p99_ms", a.p99_ms);
    std::printf("  %-22s %12.3f\n", "auth_max_ms", a.max_ms);
  }
  if (!o.keep && o.dir.empty()) fs::remove_all(dir);
  return a.failed == 0 ? 0 : 1;
}
