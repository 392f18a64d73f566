// `fleetsign serve --http` from outside, with real clients: curl (PKCS#12 client certificates made
// by `fleetsign operator add`) and openssl. One service for the suite, on a free port, over a home
// with a root, an intermediate, a group and three operators (operator, auditor, factory).
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <sqlite3.h>
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

namespace fleetsign {
namespace {

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

std::string shell(const std::string& cmd, int* exit_code = nullptr) {
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
    bin->ok("init");
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
  // Rows of a query on the registry (read-only connection of our own), one line each.
  static std::string sql(const std::string& query) {
    sqlite3* db = nullptr;
    std::string out;
    if (sqlite3_open_v2((home / "registry.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
        SQLITE_OK) {
      sqlite3_busy_timeout(db, 5000);
      sqlite3_exec(
          db, query.c_str(),
          [](void* text, int n, char** cols, char**) {
            auto& s = *static_cast<std::string*>(text);
            for (int i = 0; i < n; ++i) s += std::string(i ? " " : "") + (cols[i] ? cols[i] : "");
            s += "\n";
            return 0;
          },
          &out, nullptr);
    }
    sqlite3_close(db);
    return out;
  }
  static std::int64_t count_certs(const std::string& where) {
    return std::atoll(sql("SELECT COUNT(*) FROM certificates WHERE " + where).c_str());
  }
};

TEST_F(Http, PublicRoutesAnswerWithoutACertificate) {
  EXPECT_EQ(get("/healthz").status, 200);
  const Reply ca = get("/ca/root.crt");
  ASSERT_EQ(ca.status, 200) << ca.body;
  std::ofstream(path("root.der"), std::ios::binary) << ca.body;
  EXPECT_NE(shell("openssl x509 -inform DER -in " + quoted(path("root.der")) + " -noout -subject")
                .find("Http-Root"),
            std::string::npos);
  const Reply crl = get("/crl/root.crl");
  ASSERT_EQ(crl.status, 200) << crl.body;
  std::ofstream(path("root.crl"), std::ios::binary) << crl.body;
  shell("openssl x509 -inform DER -in " + quoted(path("root.der")) + " -out " +
        quoted(path("root.pem")));
  int rc = -1;
  const std::string verified =
      shell("openssl crl -inform DER -in " + quoted(path("root.crl")) + " -CAfile " +
                quoted(path("root.pem")) + " -verify -noout 2>&1",
            &rc);
  EXPECT_EQ(rc, 0) << verified;
  EXPECT_EQ(get("/crl/nosuch.crl").status, 404);
  EXPECT_EQ(get("/ca/root.exe").status, 404);
  EXPECT_EQ(get("/nothing/here").status, 404);
  EXPECT_EQ(error_code(get("/nothing/here")), "not_found");
}

TEST_F(Http, EstCaCertsIsABase64CertsOnlyPkcs7OfTheGroupsChain) {
  const Reply r = get("/.well-known/est/fleet/cacerts");
  ASSERT_EQ(r.status, 200) << r.body;
  std::ofstream(path("cacerts.b64")) << r.body;
  const std::string certs = shell("openssl base64 -d -in " + quoted(path("cacerts.b64")) +
                                  " | openssl pkcs7 -inform DER -print_certs -noout");
  EXPECT_NE(certs.find("Http-Int1"), std::string::npos) << certs;
  EXPECT_NE(certs.find("Http-Root"), std::string::npos) << certs;
  EXPECT_EQ(certs.find("operators"), std::string::npos) << certs;
  EXPECT_EQ(get("/.well-known/est/nosuch/cacerts").status, 404);
}

TEST_F(Http, OpenApiDocumentsEveryRoute) {
  const Reply r = get("/api/openapi.json");
  ASSERT_EQ(r.status, 200);
  const auto doc = json(r.body);
  EXPECT_EQ(doc->getValue<std::string>("openapi"), "3.0.3");
  const auto paths = doc->getObject("paths");
  for (const auto& route : cli::api_routes()) {
    ASSERT_TRUE(paths->has(route.path)) << route.path;
    std::string method = route.method;
    for (auto& c : method) c = static_cast<char>(std::tolower(c));
    EXPECT_TRUE(paths->getObject(route.path)->has(method)) << route.method << " " << route.path;
  }
}

TEST_F(Http, EveryCommandRouteNamesARealCommandAndItsOptions) {
  // The table's CLI words and parameters must exist in the CLI (`fleetsign WORDS --help`).
  for (const auto& route : cli::api_routes()) {
    if (route.words.empty()) continue;
    std::string words;
    for (const auto& w : route.words) words += " " + w;
    const auto help = bin->run(words.substr(1) + " --help");
    ASSERT_EQ(help.status, 0) << words << ": " << help.err;
    for (const auto& p : route.params) {
      if (p.kind == cli::ApiParam::Kind::kPositional) continue;
      EXPECT_NE(help.out.find("--" + p.name), std::string::npos)
          << route.method << " " << route.path << ": `fleetsign" << words << "` has no --"
          << p.name;
    }
    for (const auto& f : route.fixed_args) {
      EXPECT_NE(help.out.find(f), std::string::npos) << words << " has no " << f;
    }
    if (route.body == cli::ApiBody::kPem) {
      EXPECT_NE(help.out.find("--" + route.file_option), std::string::npos) << words;
    }
  }
}

TEST_F(Http, OperatorRoutesNeedAnActiveOperatorsCertificate) {
  const Reply none = get("/api/v1/cas");
  EXPECT_EQ(none.status, 401) << none.body;
  EXPECT_EQ(error_code(none), "unauthenticated");
  const Reply alice = get("/api/v1/cas", "alice");
  ASSERT_EQ(alice.status, 200) << alice.body;
  EXPECT_NE(alice.body.find("int1"), std::string::npos);
  const Reply who = get("/api/v1/whoami", "carol");
  ASSERT_EQ(who.status, 200) << who.body;
  EXPECT_EQ(json(who.body)->getValue<std::string>("role"), "factory");

  // A device's certificate passes TLS (its CA is in the registry) but is nobody's operator.
  bin->ok("issue --ca int1 --generate 1 --id-pattern 'dev-{02}' --pfx --pfx-password-file " +
          quoted(path("p12pass")) + " --out " + quoted(path("devout")));
  fs::copy_file(path("devout/dev-01.pfx"), path("device.p12"),
                fs::copy_options::overwrite_existing);
  const Reply device = get("/api/v1/cas", "device");
  EXPECT_EQ(device.status, 403) << device.body;
  EXPECT_EQ(error_code(device), "forbidden");

  // Removal takes effect at once, no restart, no CRL.
  ASSERT_EQ(get("/api/v1/whoami", "dave").status, 200);
  bin->ok("operator remove dave");
  EXPECT_EQ(get("/api/v1/whoami", "dave").status, 403);

  // A certificate from a CA the registry does not know ends the handshake.
  const testing::MadeCert stranger_ca = testing::make_cert("Stranger-CA", true, 30);
  const testing::MadeCert stranger = testing::make_cert("alice", false, 30, &stranger_ca);
  {
    std::ofstream c(path("stranger.pem"));
    c << engine::pem(stranger.der, "CERTIFICATE");
    BIO* bio = BIO_new_file(path("stranger.key").c_str(), "w");
    PEM_write_bio_PrivateKey(bio, stranger.key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    BIO_free(bio);
  }
  int rc = 0;
  const std::string refused = shell(
      "curl -sS -o /dev/null -w '%{http_code}' --cacert " + quoted(path("operators.pem")) +
          " --cert " + quoted(path("stranger.pem")) + " --key " + quoted(path("stranger.key")) +
          " https://localhost:" + std::to_string(port) + "/api/v1/whoami 2>&1",
      &rc);
  EXPECT_NE(rc, 0) << refused;
  EXPECT_EQ(refused.find("200"), std::string::npos) << refused;
}

TEST_F(Http, RolesAreEnforcedAndAudited) {
  // auditor: reads yes, changes no (403, audited with the operator's name).
  EXPECT_EQ(get("/api/v1/jobs", "bob").status, 200);
  const Reply denied = post_json("/api/v1/jobs/nosuch/pause", "bob", "{}");
  EXPECT_EQ(denied.status, 403) << denied.body;
  // operator: the command runs (and says the job does not exist, with the CLI's code).
  const Reply missing = post_json("/api/v1/jobs/nosuch/pause", "alice", "{}");
  EXPECT_EQ(missing.status, 404) << missing.body;
  EXPECT_EQ(error_code(missing), "not_found");
  const std::string audit =
      sql("SELECT actor || ' ' || action || ' ' || subject || ' ' || detail FROM audit WHERE "
          "action = 'http.request'");
  EXPECT_NE(audit.find("bob"), std::string::npos) << audit;
  EXPECT_NE(audit.find("\"status\":403"), std::string::npos) << audit;
  EXPECT_NE(audit.find("alice"), std::string::npos) << audit;
  // factory: no revocations.
  EXPECT_EQ(post_json("/api/v1/revocations", "carol", R"({"lot":"L","dry-run":true})").status, 403);
  // Metrics for an auditor, not for nobody.
  const Reply m = get("/metrics", "bob");
  ASSERT_EQ(m.status, 200);
  EXPECT_NE(m.body.find("fleetsign_jobs{state=\"running\"}"), std::string::npos) << m.body;
  EXPECT_NE(m.body.find("fleetsign_crl_next_update_seconds{ca=\"root\"}"), std::string::npos);
  EXPECT_EQ(get("/metrics").status, 401);
}

TEST_F(Http, ParametersAreCheckedNeverPassedAsOptions) {
  // Unknown parameter: refused, named.
  const Reply unknown = get("/api/v1/jobs?home=/tmp", "alice");
  EXPECT_EQ(unknown.status, 400) << unknown.body;
  EXPECT_NE(unknown.body.find("'home'"), std::string::npos) << unknown.body;
  // A value that looks like an option stays a value (--limit=--home): the CLI refuses it.
  const Reply value = get("/api/v1/jobs?limit=--home", "alice");
  EXPECT_EQ(value.status, 400) << value.body;
  // A path value must not read as an option.
  const Reply dash = get("/api/v1/jobs/--help", "alice");
  EXPECT_EQ(dash.status, 400) << dash.body;
  // A JSON body of the wrong shape.
  EXPECT_EQ(post_json("/api/v1/revocations", "alice", "[1]").status, 400);
  EXPECT_EQ(post_json("/api/v1/revocations", "alice", R"({"dry-run":"maybe"})").status, 400);
  EXPECT_EQ(post_json("/api/v1/revocations", "alice", "{\"lot\":").status, 400);
  // Paths outside the table, traversal included.
  EXPECT_EQ(get("/api/v1/batches/x/files/..%2F..%2Fregistry.db", "alice").status, 404);
  EXPECT_EQ(get("/api/v1/batches/../../registry.db", "alice").status, 404);
  EXPECT_EQ(call("DELETE", "/api/v1/cas", "alice").status, 405);
}

TEST_F(Http, ABatchFromAnUploadedBundleIssuesOnceAndAFactoryOnlyForItsGroups) {
  std::string bundle;
  for (int i = 1; i <= 5; ++i) {
    bundle += engine::pem(testing::csr_der("api-dev-" + std::to_string(i)), "CERTIFICATE REQUEST");
  }
  bundle +=
      "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n";
  std::ofstream(path("bundle.pem")) << bundle;
  const std::string upload =
      "-H 'Content-Type: application/x-pem-file' --data-binary @" + quoted(path("bundle.pem"));
  // Another group than the factory's own: refused before anything is read into a batch.
  EXPECT_EQ(call("POST", "/api/v1/batches?group=other", "carol", upload).status, 403);
  EXPECT_EQ(call("POST", "/api/v1/batches?ca=int1", "carol", upload).status, 403);
  EXPECT_EQ(call("POST", "/api/v1/batches?group=fleet", "bob", upload).status, 403);

  const std::string keyed = upload + " -H 'Idempotency-Key: lot-2026-11-27'";
  const Reply first = call("POST", "/api/v1/batches?group=fleet&lot=API-LOT", "carol", keyed);
  ASSERT_EQ(first.status, 201) << first.body;
  const auto summary = json(first.body);
  EXPECT_EQ(summary->getValue<int>("issued"), 5);
  EXPECT_EQ(summary->getValue<int>("rejected"), 1);
  const std::string batch = summary->getValue<std::string>("batch");
  EXPECT_EQ(count_certs("lot = 'API-LOT' AND state = 'issued'"), 5);

  // The retry (a lost answer) issues nothing more and names the same batch.
  const Reply again = call("POST", "/api/v1/batches?group=fleet&lot=API-LOT", "carol", keyed);
  ASSERT_EQ(again.status, 201) << again.body;
  EXPECT_NE(again.body.find(batch), std::string::npos) << again.body;
  EXPECT_EQ(count_certs("lot = 'API-LOT'"), 5);

  const Reply pem = get("/api/v1/batches/" + batch + "/files/bundle.pem", "bob");
  ASSERT_EQ(pem.status, 200);
  std::size_t certs = 0;
  for (std::size_t at = pem.body.find("BEGIN CERTIFICATE"); at != std::string::npos;
       at = pem.body.find("BEGIN CERTIFICATE", at + 1)) {
    ++certs;
  }
  EXPECT_GE(certs, 5u);
  const Reply rejects = get("/api/v1/batches/" + batch + "/files/rejects.csv", "bob");
  ASSERT_EQ(rejects.status, 200);
  EXPECT_NE(rejects.body.find("csr_malformed"), std::string::npos) << rejects.body;
  // The children ran as the factory: the audit names it.
  const std::string actors =
      sql("SELECT DISTINCT actor FROM audit WHERE subject = '" + batch + "'");
  EXPECT_NE(actors.find("http:carol"), std::string::npos) << actors;
}

TEST_F(Http, AnIdempotencyKeyReplaysTheFirstAnswerAndRefusesAnotherRequest) {
  const std::string key = "-H 'Idempotency-Key: block-1'";
  const std::string hash(64, 'A');
  const Reply first = post_json("/api/v1/blocklist", "alice",
                                "{\"keys\":[\"" + hash + "\"],\"reason\":\"test\"}", key);
  ASSERT_EQ(first.status, 200) << first.body;
  const Reply replay = post_json("/api/v1/blocklist", "alice",
                                 "{\"keys\":[\"" + hash + "\"],\"reason\":\"test\"}", key);
  EXPECT_EQ(replay.status, 200);
  EXPECT_EQ(replay.body, first.body);
  const Reply other =
      post_json("/api/v1/blocklist", "alice", "{\"keys\":[\"" + std::string(64, 'B') + "\"]}", key);
  EXPECT_EQ(other.status, 400) << other.body;
  const Reply listed = get("/api/v1/blocklist", "bob");
  EXPECT_NE(listed.body.find(hash), std::string::npos);
  EXPECT_EQ(listed.body.find(std::string(64, 'B')), std::string::npos);
}

TEST_F(Http, ReadyzChecksTheRegistryAndTheToken) {
  const Reply r = get("/readyz");
  ASSERT_EQ(r.status, 200) << r.body;
  const auto o = json(r.body);
  EXPECT_TRUE(o->getValue<bool>("ready"));
  EXPECT_EQ(o->getObject("checks")->getValue<std::string>("token"), "ok");
  EXPECT_EQ(o->getObject("checks")->getValue<std::string>("broker"), "absent");
}

TEST_F(Http, OperatorAddChecksItsInputAndWritesAProtectedPkcs12) {
  const std::string pw = " --pfx-password-file " + quoted(path("p12pass"));
  const auto bad = [&](const std::string& args, const std::string& code) {
    const auto r = bin->run("operator add " + args + " --json");
    EXPECT_NE(r.status, 0) << args;
    EXPECT_NE(r.out.find("\"" + code + "\""), std::string::npos) << args << ": " << r.out;
  };
  bad("'../evil' --role operator --out " + quoted(path("e.p12")) + pw, "invalid_argument");
  bad("erin --role factory --out " + quoted(path("e.p12")) + pw, "invalid_argument");
  bad("erin --role auditor --group fleet --out " + quoted(path("e.p12")) + pw, "invalid_argument");
  bad("erin --role factory --group nosuch --out " + quoted(path("e.p12")) + pw, "not_found");
  bad("erin --role root --out " + quoted(path("e.p12")) + pw, "usage");
  bad("alice --role operator --out " + quoted(path("e.p12")) + pw, "already_exists");
  bad("erin --role operator --out " + quoted((home / "e.p12").string()) + pw, "invalid_argument");
  std::ofstream(path("empty-pass")).flush();
  bad("erin --role operator --out " + quoted(path("e.p12")) + " --pfx-password-file " +
          quoted(path("empty-pass")),
      "invalid_argument");
  EXPECT_FALSE(fs::exists(path("e.p12")));

  // The credential: the key, the certificate (CN = name, clientAuth) and the chain, under the
  // password; the registry knows its SHA-256 and role.
  const auto added =
      json(bin->ok("operator add erin --role auditor --json --out " + quoted(path("erin.p12")) + pw)
               .out);
  EXPECT_EQ(fs::status(path("erin.p12")).permissions() & fs::perms::group_all, fs::perms::none);
  int rc = -1;
  const std::string dump =
      shell("openssl pkcs12 -in " + quoted(path("erin.p12")) + " -passin pass:" + kP12Password +
                " -nodes 2>/dev/null | openssl x509 -noout -subject -ext extendedKeyUsage",
            &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(dump.find("CN = erin"), std::string::npos) << dump;
  EXPECT_NE(dump.find("TLS Web Client Authentication"), std::string::npos) << dump;
  const std::string wrong = shell("openssl pkcs12 -in " + quoted(path("erin.p12")) +
                                      " -passin pass:wrong -nokeys 2>&1 >/dev/null",
                                  &rc);
  EXPECT_NE(rc, 0) << wrong;
  const auto listed = json(bin->ok("operator list --json").out)->getArray("operators");
  bool found = false;
  for (std::size_t i = 0; i < listed->size(); ++i) {
    const auto op = listed->getObject(i);
    if (op->getValue<std::string>("name") != "erin") continue;
    found = true;
    EXPECT_EQ(op->getValue<std::string>("role"), "auditor");
    EXPECT_EQ(op->getValue<std::string>("sha256"), added->getValue<std::string>("sha256"));
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(get("/api/v1/whoami", "erin").status, 200);
  // The operator CA's key is in the token like every CA's: not exportable.
  EXPECT_NE(bin->ok("ca show operators --json").out.find("pkcs11:"), std::string::npos);
}

TEST_F(Http, EstReenrollmentIssuesIntoTheFreeSlotForTheDeviceItself) {
  bin->ok("issue --ca int1 --generate 2 --id-pattern 'est-{02}' --pfx --pfx-password-file " +
          quoted(path("p12pass")) + " --out " + quoted(path("estout")));
  fs::copy_file(path("estout/est-01.pfx"), path("est1.p12"), fs::copy_options::overwrite_existing);
  // A CSR (new key) as RFC 7030 wants it: base64 DER PKCS#10.
  const auto csr = [&](const std::string& cn, const std::string& key) {
    const std::string b64 = path(cn + ".b64");
    shell("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " +
          quoted(key) + " -subj /CN=" + cn + " -outform DER 2>/dev/null | openssl base64 > " +
          quoted(b64));
    return "-H 'Content-Type: application/pkcs10' --data-binary @" + quoted(b64);
  };
  const std::string mine = csr("est-01", path("est1-new.key"));
  EXPECT_EQ(call("POST", "/.well-known/est/simplereenroll", "", mine).status, 401);
  EXPECT_EQ(call("POST", "/.well-known/est/simplereenroll", "alice", mine).status, 403);
  const Reply other =
      call("POST", "/.well-known/est/simplereenroll", "est1", csr("est-02", path("est2-new.key")));
  EXPECT_EQ(other.status, 400) << other.body;
  EXPECT_EQ(call("POST", "/.well-known/est/other/simplereenroll", "est1", mine).status, 403);
  EXPECT_EQ(call("POST", "/.well-known/est/simplereenroll", "est1",
                 "-H 'Content-Type: application/pkcs10' --data-binary 'not base64!'")
                .status,
            400);

  const Reply r = call("POST", "/.well-known/est/fleet/simplereenroll", "est1", mine);
  ASSERT_EQ(r.status, 200) << r.body;
  std::ofstream(path("new.b64")) << r.body;
  int rc = -1;
  shell("openssl base64 -d -in " + quoted(path("new.b64")) +
            " | openssl pkcs7 -inform DER -print_certs -out " + quoted(path("new.pem")),
        &rc);
  ASSERT_EQ(rc, 0);
  const std::string subject =
      shell("openssl x509 -in " + quoted(path("new.pem")) + " -noout -subject -issuer");
  EXPECT_NE(subject.find("CN = est-01"), std::string::npos) << subject;
  EXPECT_NE(subject.find("Http-Int1"), std::string::npos) << subject;
  // Recorded, in the device's free slot, beside the one it holds.
  const auto device = json(bin->ok("device show est-01 --json").out);
  ASSERT_TRUE(device->getObject("primary") && device->getObject("secondary"))
      << bin->ok("device show est-01 --json").out;
  EXPECT_NE(device->getObject("primary")->getValue<std::string>("serial"),
            device->getObject("secondary")->getValue<std::string>("serial"));

  // The new certificate is a working credential: it re-enrolls in turn (with a new key).
  const std::string again = csr("est-01", path("est1-newer.key"));
  int crc = -1;
  const std::string code = shell(
      "curl -sS -o /dev/null -w '%{http_code}' --cacert " + quoted(path("operators.pem")) +
          " --cert " + quoted(path("new.pem")) + " --key " + quoted(path("est1-new.key")) + " " +
          again + " https://localhost:" + std::to_string(port) + "/.well-known/est/simpleenroll",
      &crc);
  EXPECT_EQ(code, "200");
  // Its own key again is refused (a rotation needs a new key pair).
  shell("openssl req -new -key " + quoted(path("est1-new.key")) +
        " -subj /CN=est-01 -outform DER 2>/dev/null | openssl base64 > " +
        quoted(path("same.b64")));
  const std::string same =
      shell("curl -sS -o /dev/null -w '%{http_code}' --cacert " + quoted(path("operators.pem")) +
            " --cert " + quoted(path("new.pem")) + " --key " + quoted(path("est1-new.key")) +
            " -H 'Content-Type: application/pkcs10' --data-binary @" + quoted(path("same.b64")) +
            " https://localhost:" + std::to_string(port) + "/.well-known/est/simpleenroll");
  EXPECT_EQ(same, "422");
}

TEST_F(Http, AuthCheckOverHttpGivesTheClisAnswer) {
  bin->ok("issue --ca int1 --generate 1 --id-pattern 'ac-{02}' --out " + quoted(path("acout")));
  const std::string chain = path("acout/ac-01_fullchain.pem");
  const auto compare = [&](const std::string& file, const std::string& at) {
    const auto cli =
        json(bin->run("auth check --chain " + quoted(file) + " --at " + at + " --json").out);
    const Reply http =
        call("POST", "/api/v1/auth/check?at=" + at, "bob", "--data-binary @" + quoted(file));
    ASSERT_EQ(http.status, 200) << http.body;
    const auto o = json(http.body);
    for (const char* field :
         {"rule", "reason", "registration_id", "enrollment", "slot", "serial", "sha256", "at"}) {
      EXPECT_EQ(o->getValue<std::string>(field), cli->getValue<std::string>(field)) << field;
    }
    EXPECT_EQ(o->getValue<bool>("allowed"), cli->getValue<bool>("allowed"));
  };
  compare(chain, "2027-01-01");
  EXPECT_TRUE(
      json(call("POST", "/api/v1/auth/check", "bob", "--data-binary @" + quoted(chain)).body)
          ->getValue<bool>("allowed"));
  compare(chain, "2040-01-01");  // expired by then: refused, for the same reason
  // The decision follows the registry: disabled groups refuse at once.
  bin->ok("enrollment group disable fleet");
  bin->ok("enrollment group disable other");
  EXPECT_FALSE(
      json(call("POST", "/api/v1/auth/check", "bob", "--data-binary @" + quoted(chain)).body)
          ->getValue<bool>("allowed"));
  bin->ok("enrollment group enable fleet");
  bin->ok("enrollment group enable other");
  EXPECT_TRUE(
      json(call("POST", "/api/v1/auth/check", "bob", "--data-binary @" + quoted(chain)).body)
          ->getValue<bool>("allowed"));
  std::ofstream(path("junk.pem"))
      << "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  const Reply junk =
      call("POST", "/api/v1/auth/check", "bob", "--data-binary @" + quoted(path("junk.pem")));
  EXPECT_EQ(junk.status, 422) << junk.body;
  EXPECT_EQ(error_code(junk), "certificate_malformed");
  EXPECT_EQ(
      call("POST", "/api/v1/auth/check?at=yesterday", "bob", "--data-binary @" + quoted(chain))
          .status,
      400);
  EXPECT_EQ(call("POST", "/api/v1/auth/check", "", "--data-binary @" + quoted(chain)).status, 401);
}

TEST_F(Http, ABatchKeyReusedWithAnotherRequestIsRefusedAndTheServerDecidesItsThreads) {
  std::ofstream(path("k1.pem")) << engine::pem(testing::csr_der("kb-1"), "CERTIFICATE REQUEST");
  std::ofstream(path("k2.pem")) << engine::pem(testing::csr_der("kb-2"), "CERTIFICATE REQUEST");
  const auto upload = [&](const std::string& file, const std::string& query) {
    return call("POST", "/api/v1/batches?" + query, "alice",
                "-H 'Idempotency-Key: kb' --data-binary @" + quoted(path(file)));
  };
  ASSERT_EQ(upload("k1.pem", "ca=int1&lot=KB").status, 201);
  const Reply other_body = upload("k2.pem", "ca=int1&lot=KB");
  EXPECT_EQ(other_body.status, 400) << other_body.body;
  EXPECT_EQ(upload("k1.pem", "ca=int1&lot=KB-2").status, 400);
  EXPECT_EQ(count_certs("device_id = 'kb-2'"), 0);
  const Reply same = upload("k1.pem", "ca=int1&lot=KB");
  EXPECT_EQ(same.status, 201) << same.body;
  EXPECT_EQ(count_certs("device_id = 'kb-1'"), 1);
  // Threads are the service's business, not a caller's.
  const Reply threads = call("POST", "/api/v1/batches?ca=int1&threads=2147483647", "alice",
                             "--data-binary @" + quoted(path("k2.pem")));
  EXPECT_EQ(threads.status, 400) << threads.body;
  // No upload is left behind by a refused or finished batch.
  std::size_t left = 0;
  std::error_code ec;
  for ([[maybe_unused]] const auto& f : fs::directory_iterator(data / "uploads", ec)) ++left;
  EXPECT_EQ(left, 0u);
}

TEST_F(Http, RefusedRequestsAreAuditedAndAnswerWithTheirReason) {
  const Reply bad = post_json("/api/v1/revocations", "alice", R"({"nosuch":"x"})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(sql("SELECT detail FROM audit WHERE action = 'http.request' AND subject = 'alice'")
                .find("\"status\":400"),
            std::string::npos);
  const Reply utf = get("/api/v1/devices?lot=%FF%FE", "alice");
  EXPECT_EQ(utf.status, 400) << utf.body;
  const std::string head = shell("curl -sS -i --cacert " + quoted(path("operators.pem")) +
                                 " https://localhost:" + std::to_string(port) + "/api/v1/cas");
  EXPECT_NE(head.find("401 Unauthorized"), std::string::npos) << head;
}

TEST_F(Http, OperatorCertificatesCanNeverBeDeviceIdentities) {
  const std::string pw = " --pfx-password-file " + quoted(path("p12pass"));
  // int1 sits in group fleet's slot: its certificates are devices, not operators.
  const auto r = bin->run("operator add mallory --role auditor --ca int1 --json --out " +
                          quoted(path("m.p12")) + pw);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("invalid_argument"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(path("m.p12")));
  // …and no group may trust the operators' chain.
  const auto g = bin->run("enrollment group create staff --ca operators --json");
  EXPECT_NE(g.status, 0);
  EXPECT_NE(g.out.find("invalid_argument"), std::string::npos) << g.out;
  EXPECT_NE(
      bin->run("operator add anonymous --role auditor --out " + quoted(path("a.p12")) + pw).status,
      0);
}

TEST_F(Http, ChildrenGetNoDescriptorBeyondTheirStandardStreams) {
  // A descriptor of ours without close-on-exec (as Poco's sockets are): the child must not see it.
  const int fd = ::dup(STDERR_FILENO);
  ASSERT_GT(fd, 2);
  cli::ChildSpec spec;
  spec.program = "/bin/sh";
  spec.args = {"-c", "ls /proc/self/fd"};
  const cli::ChildResult r = cli::run_child(spec);
  ::close(fd);
  EXPECT_EQ(r.exit_status, 0);
  std::istringstream in(r.out);
  std::set<std::string> fds;
  for (std::string line; std::getline(in, line);) fds.insert(line);
  // 0-2, and the directory `ls` itself opens.
  EXPECT_LE(fds.size(), 4u) << r.out;
  EXPECT_EQ(fds.count(std::to_string(fd)), fd > 3 ? 0u : fds.count(std::to_string(fd)));
}

}  // namespace
}  // namespace fleetsign
