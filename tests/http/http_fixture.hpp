// What the HTTP tests share (http_test.cpp, http_enroll_test.cpp): one `fleetsign serve --http`
// for the whole suite, on a free port, over a home with a root, an intermediate, groups "fleet" and
// "other", and operators alice (operator), bob (auditor), carol (factory of "fleet"), dave
// (operator, removed by a test); curl and openssl as the clients.
#pragma once

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "child.hpp"
#include "cli_process.hpp"
#include "enrollment_support.hpp"
#include "fleet_support.hpp"
#include "fleetsign/engine/registry.hpp"
#include "http_api.hpp"
#include "registry_backend.hpp"

namespace fleetsign::http_test {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::json;
using testing::quoted;

constexpr const char* kP12Password = "op-secret-7";

struct Reply {
  int status = 0;  // HTTP status; 0 when curl failed (TLS refused, …)
  int curl_exit = -1;
  std::string body;
};

inline std::string shell(const std::string& cmd, int* exit_code = nullptr) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = ::pclose(p);
  if (exit_code != nullptr) *exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

class Http : public ::testing::Test {
 protected:
  static inline std::unique_ptr<testing::TempDir> dir;
  static inline fs::path home, data;
  static inline std::unique_ptr<testing::Binary> bin;
  static inline std::unique_ptr<testing::CliProcess> serve;
  static inline int port = 0;

  static std::string path(const std::string& name) { return (dir->path() / name).string(); }

  static void SetUpTestSuite() {
    dir = std::make_unique<testing::TempDir>();
    home = dir->path() / "home";
    data = dir->path() / "http-data";
    bin = std::make_unique<testing::Binary>(home);
    std::ofstream(path("p12pass")) << kP12Password;
    bin->ok("init" + test::init_registry_suffix());  // PostgreSQL on the pg.* run
    bin->ok("ca create-root --name root --subject /CN=Http-Root");
    bin->ok("ca create-intermediate --name int1 --issuer root --subject /CN=Http-Int1");
    bin->ok("ca verification-cert --ca root --code POP --out " + quoted(path("pop.pem")));
    bin->ok("ca verify root --code POP --cert " + quoted(path("pop.pem")));
    bin->ok("enrollment group create fleet --ca int1");
    bin->ok("enrollment group create other --ca int1");
    const std::string pw = " --pfx-password-file " + quoted(path("p12pass"));
    bin->ok("operator add alice --role operator --out " + quoted(path("alice.p12")) + pw);
    bin->ok("operator add bob --role auditor --out " + quoted(path("bob.p12")) + pw);
    bin->ok("operator add carol --role factory --group fleet --out " + quoted(path("carol.p12")) +
            pw);
    bin->ok("operator add dave --role operator --out " + quoted(path("dave.p12")) + pw);
    bin->ok("ca export operators --out " + quoted(path("operators.pem")));
    // Every CRL now: serve would otherwise sign the missing ones in a child at its first tick, and
    // that child holds the home while a test runs a command of its own.
    bin->ok("crl sign --all");
    port = testing::free_port();
    serve = std::make_unique<testing::CliProcess>(
        home, std::vector<std::string>{"serve", "--tick", "3600", "--http",
                                       "127.0.0.1:" + std::to_string(port), "--http-data",
                                       data.string()});
    for (int i = 0; i < 200; ++i) {
      if (get("/healthz").status == 200) return;
      ::usleep(100000);
    }
    FAIL() << "the HTTP service did not answer /healthz within 20 s";
  }
  static void TearDownTestSuite() {
    serve.reset();
    bin.reset();
    dir.reset();
  }

  // curl as `who` (a .p12 in the temp dir; empty: no certificate).
  static Reply call(const std::string& method, const std::string& url_path,
                    const std::string& who = "", const std::string& extra = "") {
    const std::string body_file = path("reply.body");
    std::string cmd = "curl -sS -o " + quoted(body_file) + " -w '%{http_code}' -X " + method +
                      " --cacert " + quoted(path("operators.pem"));
    if (!who.empty()) {
      cmd += " --cert-type P12 --cert " + quoted(path(who + ".p12") + ":" + kP12Password);
    }
    cmd += " " + extra + " " + quoted("https://localhost:" + std::to_string(port) + url_path) +
           " 2>/dev/null";
    Reply r;
    std::error_code ec;
    fs::remove(body_file, ec);
    const std::string code = shell(cmd, &r.curl_exit);
    r.status = r.curl_exit == 0 ? std::atoi(code.c_str()) : 0;
    if (fs::exists(body_file)) r.body = testing::read_file(body_file);
    return r;
  }
  static Reply get(const std::string& p, const std::string& who = "") {
    return call("GET", p, who);
  }
  static Reply post_json(const std::string& p, const std::string& who, const std::string& body,
                         const std::string& extra = "") {
    std::ofstream(path("req.json")) << body;
    return call("POST", p, who,
                "-H 'Content-Type: application/json' --data-binary @" + quoted(path("req.json")) +
                    " " + extra);
  }

  static std::string error_code(const Reply& r) {
    try {
      return json(r.body)->getObject("error")->getValue<std::string>("code");
    } catch (const std::exception&) {
      return "(no JSON error: " + r.body + ")";
    }
  }
  // Rows of a query on the registry (a connection of our own, SQLite or PostgreSQL), one line
  // each, columns separated by a space.
  static std::string sql(const std::string& query) {
    std::string out;
    for (const auto& row : test::raw_query(test::home_registry_location(home), query)) {
      for (std::size_t i = 0; i < row.size(); ++i) out += (i ? " " : "") + row[i];
      out += "\n";
    }
    return out;
  }
  static std::int64_t count_certs(const std::string& where) {
    return std::atoll(sql("SELECT COUNT(*) FROM certificates WHERE " + where).c_str());
  }
};

}  // namespace fleetsign::http_test
