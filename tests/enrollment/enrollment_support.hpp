// Support for the enrollment tests: certificates made with OpenSSL directly (CSRs, external CAs,
// verification certificates), single issuance through the real token, the real binary, and the
// registry tampered with through a connection of our own where no API can make a situation.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "test_home.hpp"

namespace fleetsign::testing {

struct PkeyFree {
  void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Pkey ec_key();
// A P-256 CSR with CN = `cn`, DER.
engine::Der csr_der(const std::string& cn);

// A certificate made outside fleetsign: CA (basicConstraints CA:TRUE, keyCertSign) or not, self-
// signed when `issuer_key` is null.
struct MadeCert {
  engine::Der der;
  Pkey key;
};
MadeCert make_cert(const std::string& cn, bool ca, int days, const MadeCert* issuer = nullptr);

// Issues one device certificate from `ca` through the engine's single-issue path; fails the test
// on a per-item failure. Returns the serial.
std::string issue_device(TestHome& th, const std::string& ca, const std::string& id,
                         const std::string& lot = "");

// Runs SQL on the registry file through a separate SQLite connection.
void tamper(const std::filesystem::path& registry_db, const std::string& sql);

// error_from: see tests/support/test_home.hpp.

// The real binary against a home in a temporary directory.
struct Outcome {
  int status = -1;
  std::string out, err;
};

class Binary {
 public:
  explicit Binary(std::filesystem::path home) : m_home(std::move(home)) {}
  // `fleetsign --home HOME ARGS`, PINs in the environment, stdin /dev/null.
  Outcome run(const std::string& args) const;
  // The same, failing the test unless it exits 0.
  Outcome ok(const std::string& args) const;

 private:
  std::filesystem::path m_home;
};

std::string quoted(const std::string& s);

}  // namespace fleetsign::testing
