// Issue 10's CRL figure: a CRL of 100,000 revoked certificates signed in the token, stored,
// checked as a relying party would, and installed as the broker's CRL file (the target is < 5 s
// on the 2-core machine). Printed, never asserted.
#include <sqlite3.h>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "bench.hpp"
#include "fleetsign/broker/crl_install.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/crl_check.hpp"
#include "fleetsign/engine/home.hpp"

namespace fleetsign::bench {

namespace {

// 100,000 revoked certificates of `ca_name`, straight into the registry file (the revocation
// path itself is not what this figure measures).
void load_revoked(const std::filesystem::path& db_file, const std::string& ca_name,
                  std::size_t count) {
  sqlite3* db = nullptr;
  if (sqlite3_open(db_file.c_str(), &db) != SQLITE_OK) {
    throw std::runtime_error("cannot open " + db_file.string());
  }
  const std::string sql =
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < " +
      std::to_string(count) +
      ") INSERT INTO certificates (serial, device_id, ca_name, state, created_at, revoked_at, "
      "revocation_reason) SELECT printf('6A%036X', i * 7919), 'crl-bench-' || i, '" +
      ca_name +
      "', 'revoked', 1, 1700000000 + i, CASE i % 3 WHEN 0 THEN 'keyCompromise' WHEN 1 THEN "
      "'superseded' ELSE 'unspecified' END FROM n";
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  const std::string why = error != nullptr ? error : "";
  sqlite3_free(error);
  sqlite3_close(db);
  if (rc != SQLITE_OK) throw std::runtime_error("loading revoked certificates: " + why);
}

}  // namespace

double measure_crl_sign(const std::filesystem::path& home_dir, const std::string& user_pin,
                        const std::string& ca_name, std::size_t entries) {
  load_revoked(home_dir / "registry.db", ca_name, entries);
  const auto home = engine::Home::open(home_dir);
  const policy::Policy policy = home.load_policy();
  auto registry = home.open_registry();
  const auto token = home.open_token(hsm::Pin(user_pin));
  engine::SystemClock clock;
  engine::CsprngSource random;
  engine::CaService cas(*registry, *token, policy, clock, random);
  cas.load_key(cas.get(ca_name));  // the key lookup is start-up work, not the CRL's
  const broker::BrokerHome broker_home(home_dir / "crl-bench");
  std::filesystem::create_directories(broker_home.dir());

  const auto start = std::chrono::steady_clock::now();
  engine::CrlSigner signer(*registry, cas, policy.crl, clock);
  const engine::CrlRecord crl = signer.sign(ca_name);  // read, number, build, sign, check, store
  const auto installed =
      broker::install_crl_bundle(broker_home, {{cas.get(ca_name), crl.der}}, true, "", clock.now());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (crl.entries < static_cast<std::int64_t>(entries) || !installed.enabled) {
    throw std::runtime_error("the CRL bench did not sign and install " + std::to_string(entries) +
                             " entries");
  }
  std::fprintf(stderr, "fleetsign-bench:   CRL number %lld of %s: %lld entries, %zu bytes\n",
               static_cast<long long>(crl.number), ca_name.c_str(),
               static_cast<long long>(crl.entries), crl.der.size());
  return seconds;
}

}  // namespace fleetsign::bench
