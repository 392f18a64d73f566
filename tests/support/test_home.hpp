// Test support: a fresh fleetsign home in a temporary directory, with its own SoftHSM2 token
// (SOFTHSM2_CONF points into the temp dir — never the system token), a real SQLite registry, and
// helpers to run the real `fleetsign` binary and openssl.
#pragma once

#include <gtest/gtest.h>
#include <openssl/x509.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/home.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/hsm/token.hpp"

namespace fleetsign::testing {

inline constexpr const char* kUserPin = "1234-user";
inline constexpr const char* kSoPin = "5678-so";

// A unique empty directory, removed when the object dies (unless FLEETSIGN_KEEP_TEST_DIRS=1).
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return m_path; }

 private:
  std::filesystem::path m_path;
};

// An initialised home with its embedded token, opened: registry, policy, token, CA service.
struct TestHome {
  TempDir dir;
  std::filesystem::path home_dir;
  std::unique_ptr<engine::Home> home;
  policy::Policy policy;
  std::unique_ptr<engine::Registry> registry;
  std::unique_ptr<hsm::Token> token;
  engine::SystemClock clock;
  engine::CsprngSource random;
  std::unique_ptr<engine::CaService> cas;

  TestHome();
  // root "root" (ec-p256) and intermediate "int1" (ec-p256) under it.
  void make_hierarchy();
  // The SQLite file, or the PostgreSQL URL of the postgres run.
  std::string registry_path_for_tests() const { return home->registry_path().string(); }
};

// Runs a shell command, returns its exit status; output goes to `output` when given.
int run(const std::string& command, std::string* output = nullptr);
// Runs `fn`, which must throw fleetsign::Error, and returns that error (a test failure if not).
template <typename Fn>
Error error_from(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected a fleetsign::Error";
  return Error(ErrorCode::kOk, "");
}

// Path of the built fleetsign binary (FLEETSIGN_BIN, set by CTest).
std::string fleetsign_bin();
// The mosquitto a test starts: $FLEETSIGN_MOSQUITTO (the sanitizer runs' wrapper, which preloads
// the runtime the instrumented plugin needs), else /usr/sbin/mosquitto.
std::string mosquitto_bin();
// Path of tests/data/make_csrs.sh.
std::string data_dir();
std::string read_file(const std::filesystem::path& path);
// Runs tests/data/make_csrs.sh into `out` (openssl makes the CSR fixtures); true on success.
bool make_csrs(const std::filesystem::path& out, std::string* output = nullptr);

struct X509Free {
  void operator()(X509* c) const noexcept { X509_free(c); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
// Exactly one DER certificate; throws (failing the test, not crashing it) otherwise.
X509Ptr parse_der_certificate(const std::vector<std::uint8_t>& der);
void write_file(const std::filesystem::path& path, const std::string& text);

}  // namespace fleetsign::testing
