// The dashboard's side of the HTTP service from outside (curl and openssl): its page and assets
// under a strict content policy, the event stream, the fleet overview and the audit pages, the
// metrics the issue names, the refusal of cross-origin changes, and the CRL and CA URLs the
// policy can put in device certificates, fetched and used by openssl.
#include "http_fixture.hpp"

namespace fleetsign::http_test {
namespace {

std::int64_t metric_sum(const std::string& text, const std::string& family) {
  std::int64_t sum = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(family + "{", 0) == 0)
      sum += std::atoll(line.substr(line.rfind(' ') + 1).c_str());
  }
  return sum;
}

TEST_F(Http, TheDashboardIsServedUnderAStrictContentPolicy) {
  const Reply page = call("GET", "/ui/", "bob", "-D " + quoted(path("reply.head")));
  const std::string head = testing::read_file(path("reply.head"));
  const std::string& body = page.body;
  EXPECT_NE(head.find("HTTP/1.1 200"), std::string::npos) << head;
  EXPECT_NE(head.find("Content-Security-Policy: default-src 'none'; script-src 'self'"),
            std::string::npos)
      << head;
  EXPECT_NE(head.find("text/html"), std::string::npos) << head;
  EXPECT_NE(body.find("<script src=\"/ui/app.js\""), std::string::npos);
  EXPECT_EQ(body.find("<script>"), std::string::npos) << "no inline script";
  EXPECT_EQ(get("/ui/app.js", "bob").status, 200);
  EXPECT_EQ(get("/ui/app.css", "bob").status, 200);
  // Chart.js is Debian's, read from libjs-chart.js.
  const Reply chart = get("/ui/chart.js", "bob");
  ASSERT_EQ(chart.status, 200);
  EXPECT_NE(chart.body.find("Chart.js v3"), std::string::npos);
  EXPECT_EQ(get("/ui/nope.js", "bob").status, 404);
  EXPECT_EQ(get("/ui/..%2Fregistry.db", "bob").status, 404);
  EXPECT_EQ(get("/ui/").status, 401) << "the page needs an operator's certificate";
  const Reply root = call("GET", "/", "bob", "-D " + quoted(path("reply.head")));
  EXPECT_EQ(root.status, 302);
  EXPECT_NE(testing::read_file(path("reply.head")).find("Location: /ui/"), std::string::npos);
}

TEST_F(Http, ACrossOriginRequestMayNotChangeAnything) {
  const std::string origin = "https://localhost:" + std::to_string(port);
  // Another site's page posting with the operator's certificate: refused before anything runs.
  const auto before = sql("SELECT COUNT(*) FROM crls");
  const Reply evil =
      post_json("/api/v1/crls/root/sign", "alice", "{}", "-H 'Origin: https://evil.example'");
  EXPECT_EQ(evil.status, 403) << evil.body;
  EXPECT_NE(evil.body.find("cross-origin"), std::string::npos) << evil.body;
  const Reply site =
      post_json("/api/v1/crls/root/sign", "alice", "{}", "-H 'Sec-Fetch-Site: cross-site'");
  EXPECT_EQ(site.status, 403) << site.body;
  const Reply null_origin = post_json("/api/v1/crls/root/sign", "alice", "{}", "-H 'Origin: null'");
  EXPECT_EQ(null_origin.status, 403) << null_origin.body;
  EXPECT_EQ(sql("SELECT COUNT(*) FROM crls"), before);
  // The dashboard's own origin, and scripts that send no Origin, are served.
  const Reply own =
      post_json("/api/v1/crls/root/sign", "alice", "{}",
                "-H " + quoted("Origin: " + origin) + " -H 'Sec-Fetch-Site: same-origin'");
  EXPECT_EQ(own.status, 200) << own.body;
  // Reads from anywhere are still reads (the browser keeps their answers from the other site).
  EXPECT_EQ(call("GET", "/api/v1/cas", "bob", "-H 'Sec-Fetch-Site: cross-site'").status, 200);
}

TEST_F(Http, TheEventStreamPushesTheJobsAsServerSentEvents) {
  // A job that nothing runs (serve ticks hourly here and was not woken: the CLI made it).
  bin->ok("issue --ca int1 --generate 1 --id-pattern 'sse-{02}' --lot SSE --out " +
          quoted(path("sse")));
  const std::string job =
      json(bin->ok("rollover start --lot SSE --no-run --json").out)->getValue<std::string>("id");
  int exit_code = -1;
  const std::string out =
      shell("curl -sS -N --max-time 3 --cacert " + quoted(path("operators.pem")) +
                " --cert-type P12 --cert " + quoted(path("bob.p12") + ":" + kP12Password) +
                " https://localhost:" + std::to_string(port) + "/api/v1/events",
            &exit_code);
  EXPECT_EQ(exit_code, 28) << "the stream stays open until the client leaves: " << out;
  EXPECT_EQ(out.rfind("retry: 2000\n\n", 0), 0u) << out;
  const auto at = out.find("event: jobs\ndata: ");
  ASSERT_NE(at, std::string::npos) << out;
  const std::string data = out.substr(at + 18, out.find('\n', at + 18) - at - 18);
  const auto event = json(data);
  const auto jobs = event->getArray("jobs");
  bool found = false;
  for (std::size_t i = 0; i < jobs->size(); ++i) {
    const auto j = jobs->getObject(i);
    if (j->getValue<std::string>("id") != job) continue;
    found = true;
    EXPECT_EQ(j->getValue<std::string>("kind"), "device-rollover");
    EXPECT_TRUE(j->has("tasks") && j->has("rate_per_min") && j->has("eta_s"));
  }
  EXPECT_TRUE(found) << data;
  bin->ok("job cancel " + job);
  EXPECT_EQ(get("/api/v1/events").status, 401);
}

TEST_F(Http, TheFleetOverviewAndTheAuditLogArePagedReads) {
  const Reply f = get("/api/v1/fleet?weeks=8", "bob");
  ASSERT_EQ(f.status, 200) << f.body;
  const auto fleet = json(f.body);
  EXPECT_EQ(fleet->getValue<int>("weeks"), 8);
  EXPECT_EQ(fleet->getValue<std::int64_t>("devices"),
            std::atoll(sql("SELECT COUNT(*) FROM devices").c_str()));
  std::set<std::string> cas;
  const auto ca_list = fleet->getArray("cas");
  for (std::size_t i = 0; i < ca_list->size(); ++i) {
    const auto c = ca_list->getObject(i);
    cas.insert(c->getValue<std::string>("name"));
    if (c->getValue<std::string>("name") == "root") {
      EXPECT_TRUE(c->getValue<bool>("verified"));
    }
  }
  EXPECT_TRUE(cas.count("root") && cas.count("int1")) << f.body;
  EXPECT_EQ(get("/api/v1/fleet?weeks=0", "bob").status, 400);

  // Pages: newest first, `before` continues strictly below, filters narrow.
  const Reply p1 = get("/api/v1/audit?limit=3", "bob");
  ASSERT_EQ(p1.status, 200) << p1.body;
  const auto page1 = json(p1.body);
  const auto rows1 = page1->getArray("audit");
  ASSERT_EQ(rows1->size(), 3u);
  const auto next = page1->getValue<std::int64_t>("next_before");
  EXPECT_EQ(next, rows1->getObject(2)->getValue<std::int64_t>("id"));
  EXPECT_GT(rows1->getObject(0)->getValue<std::int64_t>("id"), next);
  const auto page2 = json(get("/api/v1/audit?limit=3&before=" + std::to_string(next), "bob").body);
  const auto rows2 = page2->getArray("audit");
  ASSERT_EQ(rows2->size(), 3u);
  EXPECT_LT(rows2->getObject(0)->getValue<std::int64_t>("id"), next);
  const auto ops = json(get("/api/v1/audit?action=operator.&limit=100", "bob").body);
  const auto op_rows = ops->getArray("audit");
  EXPECT_GE(op_rows->size(), 4u) << "alice, bob, carol, dave were added";
  for (std::size_t i = 0; i < op_rows->size(); ++i) {
    EXPECT_EQ(op_rows->getObject(i)->getValue<std::string>("action").rfind("operator.", 0), 0u);
  }
  EXPECT_TRUE(ops->get("next_before").isEmpty()) << "the last page says so";
  EXPECT_EQ(get("/api/v1/audit?limit=0", "bob").status, 400);
  EXPECT_EQ(get("/api/v1/audit?before=abc", "bob").status, 400);
  EXPECT_EQ(get("/api/v1/audit?limit=5000", "bob").status, 400);
}

TEST_F(Http, MetricsCountIssuedCertificatesByCaAndModeAndExpiryBuckets) {
  bin->ok("issue --ca int1 --generate 2 --id-pattern 'met-{02}' --out " + quoted(path("met")));
  // The scans are kept 5 s: a scrape within 6 s shows these certificates.
  const std::int64_t want = std::atoll(
      sql("SELECT COUNT(*) FROM certificates WHERE state IN ('issued','revoked')").c_str());
  Reply m;
  for (int i = 0; i < 30; ++i) {
    m = get("/metrics", "bob");
    ASSERT_EQ(m.status, 200);
    if (metric_sum(m.body, "fleetsign_certificates_issued_total") == want) break;
    ::usleep(250000);
  }
  EXPECT_EQ(metric_sum(m.body, "fleetsign_certificates_issued_total"), want) << m.body;
  EXPECT_NE(m.body.find("fleetsign_certificates_issued_total{ca=\"int1\",mode=\"batch\"}"),
            std::string::npos)
      << m.body;
  // The token's signing latency: every device certificate signed by a command of this home.
  const auto count_at = m.body.find("fleetsign_token_sign_seconds_count ");
  ASSERT_NE(count_at, std::string::npos) << m.body;
  EXPECT_GE(std::atoll(m.body.c_str() + count_at + 35), 2) << m.body;
  EXPECT_NE(m.body.find("fleetsign_token_sign_seconds_bucket{le=\"+Inf\"}"), std::string::npos);
  for (const char* within : {"expired", "7d", "14d", "30d"}) {
    EXPECT_NE(m.body.find(std::string("fleetsign_device_certificates_expiring{within=\"") + within +
                          "\"}"),
              std::string::npos)
        << within << "\n"
        << m.body;
  }
}

TEST_F(Http, DeviceCertificatesCanCarryTheServicesCrlAndCaUrls) {
  const std::string base = "https://localhost:" + std::to_string(port);
  const fs::path policy = home / "policy.json";
  const std::string original = testing::read_file(policy);
  auto doc = json(original);
  Object::Ptr publish = new Object;
  publish->set("base_url", base + "/");
  doc->set("publish", publish);
  std::ostringstream text;
  doc->stringify(text, 2);
  testing::write_file(policy, text.str());
  bin->ok("issue --ca int1 --generate 1 --id-pattern 'pub-{02}' --out " + quoted(path("pub")));
  testing::write_file(policy, original);
  const std::string leaf = path("pub/pub-01_cert.pem");

  // The extensions, as openssl reads them.
  int code = -1;
  const std::string dump = shell("openssl x509 -in " + quoted(leaf) + " -noout -text", &code);
  ASSERT_EQ(code, 0) << dump;
  EXPECT_NE(dump.find("X509v3 CRL Distribution Points"), std::string::npos) << dump;
  EXPECT_NE(dump.find("URI:" + base + "/crl/int1.crl"), std::string::npos) << dump;
  EXPECT_NE(dump.find("CA Issuers - URI:" + base + "/ca/int1.crt"), std::string::npos) << dump;

  // A relying party follows them: the issuer's certificate and its CRL, then a CRL check.
  const std::string tls = "--cacert " + quoted(path("operators.pem"));
  ASSERT_EQ(call("POST", "/api/v1/crls/int1/sign", "alice",
                 "-H 'Content-Type: application/json' --data '{}'")
                .status,
            200);
  shell("curl -sSf " + tls + " -o " + quoted(path("pub-int1.der")) + " " + base + "/ca/int1.crt",
        &code);
  ASSERT_EQ(code, 0);
  shell("curl -sSf " + tls + " -o " + quoted(path("pub-int1.crl")) + " " + base + "/crl/int1.crl",
        &code);
  ASSERT_EQ(code, 0);
  bin->ok("ca export root --out " + quoted(path("pub-root.pem")));
  shell("openssl x509 -inform DER -in " + quoted(path("pub-int1.der")) + " -out " +
            quoted(path("pub-int1.pem")) + " && openssl crl -inform DER -in " +
            quoted(path("pub-int1.crl")) + " -out " + quoted(path("pub-crl.pem")),
        &code);
  ASSERT_EQ(code, 0);
  const std::string verify =
      shell("openssl verify -crl_check -CAfile " + quoted(path("pub-root.pem")) + " -untrusted " +
                quoted(path("pub-int1.pem")) + " -CRLfile " + quoted(path("pub-crl.pem")) + " " +
                quoted(leaf) + " 2>&1",
            &code);
  EXPECT_EQ(code, 0) << verify;
  EXPECT_NE(verify.find(": OK"), std::string::npos) << verify;

  // A URL that is not one is refused by the policy, naming the field: another scheme, no host,
  // a second name smuggled in after a comma, a query.
  for (const char* bad : {"javascript:alert(1)", "https:///nohost", "https://:8443/x",
                          "https://pki.example.com,URI:ldap:evil", "https://a.example/x?y=1",
                          "https://a b.example"}) {
    SCOPED_TRACE(bad);
    doc->getObject("publish")->set("base_url", std::string(bad));
    std::ostringstream bad_policy;
    doc->stringify(bad_policy, 2);
    testing::write_file(policy, bad_policy.str());
    const auto refused = bin->run("issue --ca int1 --generate 1 --id-pattern 'bad-{02}' --out " +
                                  quoted(path("bad")));
    testing::write_file(policy, original);
    EXPECT_NE(refused.status, 0);
    EXPECT_NE(refused.err.find("publish.base_url"), std::string::npos) << refused.err;
  }
  // The auditor's preview of a revocation: the dry run, and nothing else.
  const Reply preview = post_json("/api/v1/revocations/preview", "bob",
                                  R"({"device":"pub-01","reason":"superseded"})");
  EXPECT_EQ(preview.status, 200) << preview.body;
  EXPECT_TRUE(json(preview.body)->getValue<bool>("dry_run")) << preview.body;
  EXPECT_EQ(post_json("/api/v1/revocations/preview", "bob", R"({"lot":"x","yes":true})").status,
            400)
      << "no --yes on the preview";
}

// A revocation plan over many devices answers a page: each device list holds list-limit IDs
// (1,000 unless asked) while the counts stay whole.
TEST_F(Http, ARevocationPlanListsAPageOfDevicesAndWholeCounts) {
  bin->ok("issue --ca int1 --generate 3 --id-pattern 'plan-{02}' --lot PLAN-L --out " +
          quoted(path("plan")));
  const Reply r = post_json("/api/v1/revocations/preview", "bob",
                            R"({"lot":"PLAN-L","reason":"superseded","list-limit":"1"})");
  ASSERT_EQ(r.status, 200) << r.body;
  const auto plan = json(r.body)->getObject("plan");
  EXPECT_EQ(plan->getValue<int>("devices"), 3);
  EXPECT_EQ(plan->getValue<int>("list_limit"), 1);
  const auto lists = plan->getObject("replacement");
  const auto counts = plan->getObject("replacement_counts");
  int listed_total = 0;
  for (const auto& name : counts->getNames()) {
    const auto listed = lists->getArray(name)->size();
    const int count = counts->getValue<int>(name);
    EXPECT_EQ(listed, static_cast<std::size_t>(std::min(count, 1))) << name;
    listed_total += count;
  }
  EXPECT_GE(listed_total, 3) << r.body;  // every device is in the replacement plan
  const Reply whole =
      post_json("/api/v1/revocations/preview", "bob", R"({"lot":"PLAN-L","reason":"superseded"})");
  ASSERT_EQ(whole.status, 200) << whole.body;
  EXPECT_EQ(json(whole.body)->getObject("plan")->getValue<int>("list_limit"), 1000);
  EXPECT_EQ(post_json("/api/v1/revocations/preview", "bob",
                      R"({"lot":"PLAN-L","reason":"superseded","list-limit":"-1"})")
                .status,
            400);
}

}  // namespace
}  // namespace fleetsign::http_test
