// fleetsign-bench internals: child processes (child.cpp), CSR generation (csrgen.cpp) and the
// in-process measurements (measure.cpp). main.cpp orchestrates one run.
//
// Fork rule (design.md, libp11): no token may be open in this process while it starts a child.
// All child runs happen first; the token is opened in-process only for the last measurement.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace fleetsign::bench {

// ---- child.cpp -------------------------------------------------------------------------------

struct ChildResult {
  int exit_status = -1;  // exit code, or 128 + signal
  std::string out;       // captured stdout (when asked for)
  double wall_s = 0;     // spawn to reap
  long max_rss_kb = 0;   // the child's own ru_maxrss (wait4), kilobytes
  double cpu_s = 0;      // the child's user + system CPU time (wait4), seconds
};

// Runs argv[0] (searched in PATH) with this process's environment plus `env` (overriding), stdout
// captured (or sent to /dev/null) and stderr appended to `log`. posix_spawn + wait4.
ChildResult run_child(const std::vector<std::string>& argv,
                      const std::map<std::string, std::string>& env,
                      const std::filesystem::path& log, bool capture_stdout = true);

// A number field of a flat JSON object, e.g. "certs_per_s": 123.4 (child.cpp).
std::optional<double> json_number(const std::string& json, const std::string& key);

// The last `max_bytes` of a file (for error messages).
std::string tail_of(const std::filesystem::path& file, std::size_t max_bytes = 2000);

// ---- csrgen.cpp ------------------------------------------------------------------------------

// `count` valid P-256 CSRs (PEM, one string each) with CN = bench-%06d for first..first+count-1,
// each with its own fresh key, made in parallel on `threads` threads.
std::vector<std::string> make_csrs(std::size_t first, std::size_t count, int threads);

// Writes PEMs concatenated to `file`.
void write_bundle(const std::filesystem::path& file, const std::vector<std::string>& pems,
                  std::size_t from = 0, std::size_t count = static_cast<std::size_t>(-1));

// Parses and X509_REQ_verify()s a PEM CSR with OpenSSL's own decoder (a sanity check on our DER).
bool openssl_accepts_csr(const std::string& pem);

// ---- measure.cpp -----------------------------------------------------------------------------

// A rate measured on N threads, and the CPU time its operations took (the threads' own
// CLOCK_THREAD_CPUTIME_ID): unlike the rate, the CPU per operation hardly changes when other
// processes share the cores.
struct Rate {
  double per_s = 0;
  double cpu_us_per_op = 0;
};

// ECDSA P-256 verifies per second on `threads` threads for ~`seconds`: each thread its own
// pre-made key/signature pairs; every verify builds its EC_KEY from the point, as the CSR check
// does.
Rate measure_raw_verify(int threads, double seconds);

// Signs per second through fleetsign::hsm::SigningKey::sign_digest with the home's CA key.
// Opens the token in this process: call it only after every child process is done.
Rate measure_token_sign(const std::filesystem::path& home, const std::string& user_pin,
                        const std::string& ca_name, int threads, double seconds);

// ---- registry_scale.cpp ----------------------------------------------------------------------

// Loads `count` generated devices (an issued certificate row and a device row each, expiries
// spread over 400 days) into the registry in one transaction. No child may run meanwhile.
void load_synthetic_devices(const std::filesystem::path& db_file, const std::string& ca_name,
                            std::size_t count, std::int64_t now);

// Authentication decisions per second on `threads` threads (one registry connection and one
// Authenticator each) over the device certificates in `bundle_pem`; every one must be allowed.
double measure_auth_checks(const std::filesystem::path& db_file,
                           const std::filesystem::path& bundle_pem, std::size_t max_chains,
                           int threads, double seconds);

// ---- engine_scale.cpp ------------------------------------------------------------------------

// Intents + issued rows recorded per second: `total` of each, in the batch runner's 500-row
// chunks, into a fresh registry file (no signing). Was a < 10 s assertion in registry_test.
double measure_registry_record(const std::filesystem::path& db_file, std::size_t total);

// Seconds for build_expiry_report to aggregate `count` due certificates held in memory (groups,
// lots, buckets, the first 1000 listed). Was a < 1 s assertion in expiry_test.
double measure_expiry_aggregate(std::size_t count);
// Seconds to sign (in the token), store, check and install as the broker's file a CRL of
// `entries` revoked certificates of `ca_name` (crl_bench.cpp; loads them into the registry first).
double measure_crl_sign(const std::filesystem::path& home_dir, const std::string& user_pin,
                        const std::string& ca_name, std::size_t entries);

}  // namespace fleetsign::bench
