// The dashboard in a real browser (issue 12): Debian's chromium driven by playwright-core
// (tests/browser/dashboard.mjs) with an operator's client certificate, over `fleetsign serve
// --http` with fleetsign's broker and a fleet of real device agents. The script loads each view
// and checks it against the figures this test reads from the registry, previews a revocation,
// and starts a rollover that it watches, pushed by the event stream, to its end; this test then
// checks the registry: the job rotated every device once, and the preview revoked nothing.
#include <Poco/JSON/Object.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include <fstream>

#include "cli_process.hpp"
#include "live_fleet.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::quoted;

constexpr const char* kPassword = "dash-secret-3";
constexpr int kValidityDays = 60;  // inside the 52-week horizon, beyond its 4-week column

std::string run_shell(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return "popen failed";
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int st = ::pclose(p);
  *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

class Dashboard : public testing::LiveFleet {
 protected:
  void prepare() override {
    const fs::path file = home / "policy.json";
    auto doc = testing::json(testing::read_file(file));
    Object::Ptr validity =
        doc->has("validity") ? doc->getObject("validity") : Object::Ptr(new Object);
    validity->set("device_days", kValidityDays);
    doc->set("validity", validity);
    std::ostringstream out;
    doc->stringify(out, 2);
    testing::write_file(file, out.str());
    std::ofstream(path("p12pass")) << kPassword;
    bin.ok("operator add alice --role operator --out " + quoted(path("alice.p12")) +
           " --pfx-password-file " + quoted(path("p12pass")));
    bin.ok("ca export operators --out " + quoted(path("operators.pem")));
    // Registry text that is markup: the page must show it as text.
    bin.ok(
        "ca create-intermediate --name xss-ca --issuer root --subject "
        "'/CN=<img src=x onerror=window.__xss=1>'");
  }

  // The first column of the first row of a query, on a read-only connection of our own.
  std::int64_t count(const std::string& sql) {
    sqlite3* db = nullptr;
    std::int64_t n = -1;
    if (sqlite3_open_v2((home / "registry.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
        SQLITE_OK) {
      sqlite3_busy_timeout(db, 5000);
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
          sqlite3_step(st) == SQLITE_ROW) {
        n = sqlite3_column_int64(st, 0);
      }
      sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return n;
  }
};

TEST_F(Dashboard, EveryViewShowsTheRegistryAndAJobRunsToItsEndInTheBrowser) {
  fleet("L1", "d1", 6);
  issue("L2", "d2", 4);  // never connected
  ASSERT_EQ(wait_connected("d1", 6), 6);
  bin.ok("crl sign --all");

  const int http_port = testing::free_port();
  testing::CliProcess serve(
      home, {"serve", "--tick", "60", "--http", "127.0.0.1:" + std::to_string(http_port),
             "--http-data", path("http-data")});
  const std::string url = "https://localhost:" + std::to_string(http_port);
  int status = -1;
  for (int i = 0; i < 200; ++i) {
    run_shell("curl -sf --cacert " + quoted(path("operators.pem")) + " " + url + "/healthz",
              &status);
    if (status == 0) break;
    ::usleep(100000);
  }
  ASSERT_EQ(status, 0) << "serve --http did not answer /healthz";

  // What the registry holds, for the script to compare with the page.
  const std::int64_t devices = count("SELECT COUNT(*) FROM devices");
  ASSERT_EQ(devices, 10);
  Object expect(Poco::JSON_PRESERVE_KEY_ORDER);
  expect.set("operator", "alice");
  expect.set("devices", devices);
  expect.set("connected", 6);
  Poco::JSON::Array groups;
  Object fleet_group(Poco::JSON_PRESERVE_KEY_ORDER);
  fleet_group.set("group", "fleet");
  fleet_group.set("devices", devices);
  fleet_group.set("connected", 6);
  fleet_group.set("primary_certs", count("SELECT COUNT(*) FROM devices WHERE primary_serial<>''"));
  fleet_group.set("expiring_52w", devices);
  fleet_group.set("expiring_4w", 0);
  fleet_group.set("week", (kValidityDays - 1) / 7);
  fleet_group.set("in_week", devices);
  groups.add(fleet_group);
  expect.set("groups", groups);
  expect.set("root", "root");
  expect.set("intermediate", "factory-1");
  expect.set("crl_ca", "root");
  expect.set("hostile_ca", "xss-ca");
  expect.set("preview_lot", "L2");
  expect.set("preview_certificates", count("SELECT COUNT(*) FROM certificates WHERE lot='L2' "
                                           "AND state='issued'"));
  expect.set("preview_devices", 4);
  expect.set("rollover_lot", "L1");
  expect.set("rollover_devices", 6);
  std::ostringstream expect_text;
  expect.stringify(expect_text);
  // Screenshots of each view stay in the build tree (FLEETSIGN_SHOTS_DIR), for a failure's reader.
  const std::string shots = FLEETSIGN_SHOTS_DIR;
  fs::create_directories(shots);

  const std::string cmd =
      "cd " + quoted(FLEETSIGN_BROWSER_DIR) + " && FLEETSIGN_URL=" + quoted(url) +
      " FLEETSIGN_P12=" + quoted(path("alice.p12")) + " FLEETSIGN_P12_PASSWORD=" + kPassword +
      " NODE_EXTRA_CA_CERTS=" + quoted(path("operators.pem")) +
      " FLEETSIGN_EXPECT=" + quoted(expect_text.str()) +
      " FLEETSIGN_RESULT=" + quoted(path("result.json")) + " FLEETSIGN_SHOTS=" + quoted(shots) +
      " timeout 300 node dashboard.mjs";
  const std::string out = run_shell(cmd, &status);
  ASSERT_EQ(status, 0) << out << "\n(screenshots in " << shots
                       << "; run `npm ci` in tests/browser and install Debian's chromium)";

  const auto result = testing::json(testing::read_file(path("result.json")));
  EXPECT_EQ(result->getArray("views")->size(), 6u);
  const std::string job = result->getValue<std::string>("job");
  // Seen live while it ran, then finished, without a reload.
  const auto seen = result->getArray("states_seen");
  ASSERT_GE(seen->size(), 1u);
  EXPECT_EQ(seen->getElement<std::string>(seen->size() - 1), "finished");
  // The registry: the rollover rotated each device of L1 once; the preview revoked nothing.
  EXPECT_EQ(check_done_devices(job, "L1", false), 6);
  // (the rollover retires L1's old certificates; the previewed lot L2 keeps every one)
  EXPECT_EQ(count("SELECT COUNT(*) FROM certificates WHERE lot='L2' AND state='revoked'"), 0);
  EXPECT_EQ(count("SELECT COUNT(*) FROM certificates WHERE lot='L2' AND state='issued'"), 4);
  EXPECT_EQ(count("SELECT COUNT(*) FROM audit WHERE action='revoke.run'"), 0);
  // The job the page paused, resumed and canceled, by the operator, through the API.
  const std::string controlled = result->getValue<std::string>("controlled");
  EXPECT_EQ(count("SELECT COUNT(*) FROM jobs WHERE id='" + controlled + "' AND state='canceled'"),
            1);
  for (const char* action : {"job.paused", "job.running", "job.canceled"}) {
    EXPECT_GE(count("SELECT COUNT(*) FROM audit WHERE subject='" + controlled + "' AND action='" +
                    action + "' AND actor='http:alice'"),
              1)
        << action;
  }
  // The browser's requests are in the audit log under the operator's name.
  EXPECT_GE(count("SELECT COUNT(*) FROM audit WHERE action='http.request' AND subject='alice' "
                  "AND detail LIKE '%/api/v1/rollovers%'"),
            1);
}

}  // namespace
}  // namespace fleetsign
