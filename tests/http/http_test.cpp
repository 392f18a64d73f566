// `fleetsign serve --http` from outside, with real clients: public routes, OpenAPI, who may call
// what, parameters, batch uploads and idempotency (the fixture: http_fixture.hpp).
#include <gtest/gtest.h>

#include "http_fixture.hpp"

namespace fleetsign::http_test {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::json;
using testing::quoted;

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
  EXPECT_EQ(doc->getValue<std::string>("openapi"), "3.1.0");
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

// Lists are paged: 100 items unless asked, at most 1,000, and next_after leads to the next page
// until it is null; every item comes once. (Keys from 'E…' sort after the other tests' keys.)
TEST_F(Http, ListsArePagedWithACursorAndABoundedPageSize) {
  {
    std::ofstream f(path("many-keys.txt"));
    for (int i = 0; i < 150; ++i) {
      std::string n = std::to_string(i);
      f << "E" << std::string(63 - n.size(), '0') << n << "\n";
    }
  }
  bin->ok("blocklist add --reason test --from-file " + quoted(path("many-keys.txt")));
  std::set<std::string> seen;
  std::string last;
  int pages = 0;
  for (std::string url = "/api/v1/blocklist"; pages < 10; ++pages) {
    const Reply r = get(url, "bob");
    ASSERT_EQ(r.status, 200) << r.body;
    const auto o = json(r.body);
    const auto keys = o->getArray("keys");
    if (pages == 0) {
      EXPECT_EQ(keys->size(), 100u);  // the default page
    }
    for (std::size_t i = 0; i < keys->size(); ++i) {
      const auto k = keys->getObject(static_cast<unsigned>(i))->getValue<std::string>("key_sha256");
      EXPECT_GT(k, last);  // in order, never twice
      last = k;
      if (k[0] == 'E') seen.insert(k);
    }
    if (o->isNull("next_after")) break;
    EXPECT_EQ(o->getValue<std::string>("next_after"), last);
    url = "/api/v1/blocklist?after=" + last;
  }
  EXPECT_EQ(pages, 1);
  EXPECT_EQ(seen.size(), 150u);
  // Asked sizes: 1..1000, else refused naming the parameter.
  const Reply small = get("/api/v1/blocklist?limit=7", "bob");
  ASSERT_EQ(small.status, 200) << small.body;
  EXPECT_EQ(json(small.body)->getArray("keys")->size(), 7u);
  for (const char* bad : {"0", "1001", "-1", "ten", "99999999999"}) {
    const Reply r = get(std::string("/api/v1/blocklist?limit=") + bad, "bob");
    EXPECT_EQ(r.status, 400) << bad << ": " << r.body;
    EXPECT_NE(r.body.find("'limit'"), std::string::npos) << r.body;
  }
  // Every list route takes the same two parameters; a cursor naming no item is a 404.
  EXPECT_EQ(get("/api/v1/jobs?after=no-such-job", "bob").status, 404);
  EXPECT_EQ(get("/api/v1/batches?after=no-such-batch", "bob").status, 404);
  // The page after a cursor starts with the CA that follows it in the whole list (creation order;
  // CAs made in the same second come roots first, then by name: which CA is first depends on the
  // clock, so the whole list says).
  const Reply all_cas = get("/api/v1/cas", "bob");
  ASSERT_EQ(all_cas.status, 200) << all_cas.body;
  const auto every_ca = json(all_cas.body)->getArray("cas");
  ASSERT_GE(every_ca->size(), 2u) << all_cas.body;
  const std::string first = every_ca->getObject(0)->getValue<std::string>("name");
  const Reply cas = get("/api/v1/cas?limit=1", "bob");
  ASSERT_EQ(cas.status, 200) << cas.body;
  EXPECT_EQ(json(cas.body)->getValue<std::string>("next_after"), first);
  const Reply after_first = get("/api/v1/cas?limit=1&after=" + first, "bob");
  ASSERT_EQ(after_first.status, 200) << after_first.body;
  EXPECT_EQ(json(after_first.body)->getArray("cas")->getObject(0)->getValue<std::string>("name"),
            every_ca->getObject(1)->getValue<std::string>("name"));
  for (const char* list : {"/api/v1/devices", "/api/v1/enrollments/groups", "/api/v1/incidents",
                           "/api/v1/operators", "/api/v1/jobs", "/api/v1/batches"}) {
    const Reply r = get(std::string(list) + "?limit=1", "bob");
    ASSERT_EQ(r.status, 200) << list << ": " << r.body;
    EXPECT_TRUE(json(r.body)->has("next_after")) << list << ": " << r.body;
  }
}

TEST_F(Http, ReadyzChecksTheRegistryAndTheToken) {
  const Reply r = get("/readyz");
  ASSERT_EQ(r.status, 200) << r.body;
  const auto o = json(r.body);
  EXPECT_TRUE(o->getValue<bool>("ready"));
  EXPECT_EQ(o->getObject("checks")->getValue<std::string>("token"), "ok");
  EXPECT_EQ(o->getObject("checks")->getValue<std::string>("broker"), "absent");
  // A failing check: its reason (a path of this machine) for an operator's certificate only.
  fs::path object;
  for (const auto& t : fs::directory_iterator(home / "tokens")) object = t.path() / "token.object";
  ASSERT_FALSE(object.empty());
  const std::string saved = testing::read_file(object.string());
  testing::write_file(object.string(), "");
  const Reply anonymous = get("/readyz");
  const Reply auditor = get("/readyz", "bob");
  testing::write_file(object.string(), saved);
  EXPECT_EQ(anonymous.status, 503) << anonymous.body;
  EXPECT_EQ(anonymous.body.find(object.string()), std::string::npos) << anonymous.body;
  EXPECT_NE(anonymous.body.find("failing"), std::string::npos) << anonymous.body;
  EXPECT_EQ(auditor.status, 503) << auditor.body;
  EXPECT_NE(auditor.body.find("token.object"), std::string::npos) << auditor.body;
  EXPECT_EQ(get("/readyz").status, 200);
}

}  // namespace
}  // namespace fleetsign::http_test
