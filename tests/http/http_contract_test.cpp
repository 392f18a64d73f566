// The API's contract from outside: every route of the OpenAPI document the service serves
// (GET /api/openapi.json) is called, and each answer is checked against that document: the status
// is one it declares, a JSON answer has every required key with its declared type (optional ones
// may be null or absent), an error is {"error":{"code","message"}}, and any other answer has a
// declared media type. A route added without an example here fails the test.
#include <Poco/JSON/Array.h>

#include <map>

#include "http_fixture.hpp"

namespace fleetsign::http_test {
namespace {

using Poco::Dynamic::Var;
using Poco::JSON::Array;

struct Example {
  std::string method, path, who, extra;  // extra: curl arguments (body, headers)
  int status = 200;                      // the status this example must get
};

// The JSON Schema type of a value, as OpenAPI 3.0 names it ("integer" is also a "number").
bool has_type(const Var& v, const std::string& type) {
  if (type == "string") return v.isString();
  if (type == "boolean") return v.isBoolean();
  if (type == "integer") return v.isInteger();
  if (type == "number") return v.isNumeric();
  if (type == "array") return v.type() == typeid(Array::Ptr);
  if (type == "object") return v.type() == typeid(Object::Ptr);
  return false;
}

// Why `body` does not match the object schema `schema` ("" when it does).
std::string mismatch(const Object::Ptr& schema, const std::string& body) {
  Object::Ptr doc;
  try {
    doc = json(body);
  } catch (const std::exception& e) {
    return std::string("not a JSON object: ") + e.what();
  }
  if (const auto req = schema->getArray("required")) {
    for (std::size_t i = 0; i < req->size(); ++i) {
      const std::string key = req->getElement<std::string>(i);
      if (!doc->has(key)) return "no required key '" + key + "'";
    }
  }
  const auto props = schema->getObject("properties");
  if (!props) return "";
  for (const auto& key : props->getNames()) {
    if (!doc->has(key)) continue;
    const Var v = doc->get(key);
    const auto p = props->getObject(key);
    // "type": "T", or ["T", "null"] for a key that may be null (OpenAPI 3.1).
    std::string type;
    if (const auto types = p->getArray("type")) {
      if (v.isEmpty()) continue;
      type = types->getElement<std::string>(0);
    } else {
      type = p->getValue<std::string>("type");
    }
    if (!has_type(v, type)) return "key '" + key + "' is not of type " + type + ": " + v.toString();
  }
  return "";
}

class Contract : public Http {
 protected:
  // One request: status, Content-Type and body.
  struct Answer {
    int status = 0;
    std::string type, body;
  };
  static Answer fetch(const Example& e) {
    const std::string body_file = path("contract.body");
    std::string cmd = "curl -sS -o " + quoted(body_file) +
                      " -w '%{http_code} %{content_type}' -X " + e.method + " --cacert " +
                      quoted(path("operators.pem"));
    if (!e.who.empty()) {
      cmd += " --cert-type P12 --cert " + quoted(path(e.who + ".p12") + ":" + kP12Password);
    }
    cmd += " " + e.extra + " " + quoted("https://localhost:" + std::to_string(port) + e.path) +
           " 2>/dev/null";
    std::error_code ec;
    fs::remove(body_file, ec);
    Answer a;
    const std::string w = shell(cmd);
    a.status = std::atoi(w.c_str());
    if (const auto sp = w.find(' '); sp != std::string::npos) a.type = w.substr(sp + 1);
    if (fs::exists(body_file)) a.body = testing::read_file(body_file);
    return a;
  }
};

TEST_F(Contract, EveryRouteAnswersAsTheOpenApiDocumentSays) {
  // What the examples need: a device with a PKCS#12 (EST), a CA and a group of this test's own,
  // a job nothing runs, a CSR bundle for an upload.
  const std::string pw = " --pfx-password-file " + quoted(path("p12pass"));
  bin->ok("issue --ca int1 --generate 1 --id-pattern 'ctr-{02}' --lot CTR --pfx" + pw + " --out " +
          quoted(path("ctr")));
  fs::copy_file(path("ctr/ctr-01.pfx"), path("ctr1.p12"), fs::copy_options::overwrite_existing);
  bin->ok("issue --ca int1 --generate 1 --id-pattern 'ctc-{02}' --lot CTC --out " +
          quoted(path("ctc")));
  bin->ok("issue --ca int1 --generate 1 --id-pattern 'ctb-{02}' --lot CTB --out " +
          quoted(path("ctb")));
  bin->ok("ca create-intermediate --name ctr-ca --issuer root --subject /CN=Contract-CA");
  const std::string job =
      json(bin->ok("rollover start --lot CTR --no-run --json").out)->getValue<std::string>("id");
  const std::string batch = json(bin->ok("batch list --json").out)
                                ->getArray("batches")
                                ->getObject(0)
                                ->getValue<std::string>("id");
  shell("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " +
        quoted(path("ctr-new.key")) + " -subj /CN=ctr-01 -outform DER 2>/dev/null | " +
        "openssl base64 > " + quoted(path("ctr.b64")));
  shell("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " +
        quoted(path("ctu.key")) + " -subj /CN=ctu-01 -out " + quoted(path("ctu.csr")) +
        " 2>/dev/null");
  const std::string hash(64, 'c');
  const std::string json_body = "-H 'Content-Type: application/json' --data ";
  const std::string est =
      "-H 'Content-Type: application/pkcs10' --data-binary @" + quoted(path("ctr.b64"));

  std::vector<Example> examples = {
      {"GET", "/healthz", "", ""},
      {"GET", "/readyz", "", ""},
      {"GET", "/ca/root.crt", "", ""},
      {"GET", "/ca/nosuch.crt", "", "", 404},
      {"GET", "/crl/root.crl", "", ""},
      {"GET", "/api/openapi.json", "", ""},
      {"GET", "/.well-known/est/cacerts", "", ""},
      {"GET", "/.well-known/est/fleet/cacerts", "", ""},
      {"GET", "/.well-known/est/csrattrs", "", "", 204},
      {"GET", "/.well-known/est/fleet/csrattrs", "", "", 204},
      {"GET", "/.well-known/est/nosuch/csrattrs", "", "", 404},
      {"POST", "/.well-known/est/simplereenroll", "ctr1", est},
      {"POST", "/.well-known/est/simpleenroll", "", est, 401},
      {"POST", "/.well-known/est/fleet/simpleenroll", "bob", est, 403},
      {"POST", "/.well-known/est/other/simplereenroll", "ctr1", est, 403},
      {"GET", "/", "bob", "", 302},
      {"GET", "/ui", "bob", "", 302},
      {"GET", "/ui/", "bob", ""},
      {"GET", "/ui/app.js", "bob", ""},
      {"GET", "/api/v1/whoami", "bob", ""},
      {"GET", "/metrics", "bob", ""},
      {"POST", "/api/v1/batches?group=fleet&lot=CTU", "carol",
       "-H 'Content-Type: application/x-pem-file' --data-binary @" + quoted(path("ctu.csr")), 201},
      {"GET", "/api/v1/cas", "bob", ""},
      {"GET", "/api/v1/cas/root", "bob", ""},
      {"GET", "/api/v1/batches", "bob", ""},
      {"GET", "/api/v1/batches/" + batch, "bob", ""},
      {"GET", "/api/v1/batches/nosuch/files/manifest.csv", "bob", "", 404},
      {"GET", "/api/v1/jobs?limit=5", "bob", ""},
      {"GET", "/api/v1/jobs/" + job, "bob", ""},
      {"GET", "/api/v1/enrollments/groups", "bob", ""},
      {"GET", "/api/v1/enrollments/groups/fleet", "bob", ""},
      {"GET", "/api/v1/devices?limit=5", "bob", ""},
      {"GET", "/api/v1/devices?connected=true", "bob", ""},
      {"GET", "/api/v1/devices/ctc-01", "bob", ""},
      {"GET", "/api/v1/expiry", "bob", ""},
      {"GET", "/api/v1/fleet", "bob", ""},
      {"GET", "/api/v1/audit?limit=5", "bob", ""},
      {"GET", "/api/v1/crls/root", "bob", ""},
      {"GET", "/api/v1/incidents", "bob", ""},
      {"GET", "/api/v1/blocklist", "bob", ""},
      {"GET", "/api/v1/operators", "bob", ""},
      {"POST", "/api/v1/auth/check", "bob",
       "-H 'Content-Type: application/x-pem-file' --data-binary @" +
           quoted(path("ctc/ctc-01_fullchain.pem"))},
      {"POST", "/api/v1/jobs/" + job + "/pause", "alice", json_body + "'{}'"},
      {"POST", "/api/v1/jobs/" + job + "/cancel", "alice", json_body + "'{}'"},
      {"POST", "/api/v1/jobs/" + job + "/resume", "alice", json_body + "'{}'"},
      {"POST", "/api/v1/jobs/" + job + "/retry-failed", "alice", json_body + "'{}'", 400},
      {"POST", "/api/v1/rollovers/plan", "bob", json_body + R"('{"lot":"CTC"}')"},
      {"POST", "/api/v1/rollovers", "alice", json_body + R"('{"lot":"NO-SUCH-LOT"}')", 400},
      {"POST", "/api/v1/rollovers/breach", "alice", json_body + R"('{"device":"nosuch-1"}')", 404},
      {"POST", "/api/v1/rollovers/ca", "alice", json_body + R"('{"group":"nosuch","name":"x-ca"}')",
       404},
      {"POST", "/api/v1/revocations", "alice",
       json_body + R"('{"lot":"CTC","reason":"superseded","dry-run":true}')"},
      {"POST", "/api/v1/revocations/preview", "bob",
       json_body + R"('{"lot":"CTC","reason":"superseded"}')"},
      {"POST", "/api/v1/incidents", "alice",
       json_body + R"('{"lot":"CTC","reason":"keyCompromise","dry-run":true}')"},
      {"POST", "/api/v1/crls/root/sign", "alice", json_body + "'{}'"},
      {"POST", "/api/v1/blocklist", "alice",
       json_body + "'{\"keys\":[\"" + hash + "\"],\"reason\":\"contract\"}'"},
      {"DELETE", "/api/v1/blocklist/" + hash, "alice", ""},
      {"POST", "/api/v1/enrollments/groups/zz-contract", "alice", json_body + R"('{"ca":"root"}')",
       201},
      {"POST", "/api/v1/enrollments/groups/zz-contract/disable", "alice", ""},
      {"POST", "/api/v1/enrollments/groups/zz-contract/enable", "alice", ""},
      {"POST", "/api/v1/enrollments/groups/zz-contract/slots/secondary", "alice",
       json_body + R"('{"ca":"ctr-ca"}')"},
      {"DELETE", "/api/v1/enrollments/groups/zz-contract/slots/secondary", "alice", ""},
      {"POST", "/api/v1/devices/ctc-01/methods/ping", "alice", json_body + R"('{"timeout":"1"}')",
       404},
      {"DELETE", "/api/v1/operators/nobody", "alice", "", 404},
      {"POST", "/api/v1/enrollments/individuals/zz-ind", "alice",
       json_body + "'{\"thumbprint\":\"" + std::string(64, 'D') + "\"}'", 201},
      {"GET", "/api/v1/enrollments/individuals?limit=5", "bob", ""},
      {"GET", "/api/v1/enrollments/individuals/zz-ind", "bob", ""},
      {"POST", "/api/v1/enrollments/individuals/zz-ind/disable", "alice", ""},
      {"POST", "/api/v1/enrollments/individuals/zz-ind/enable", "alice", ""},
      {"POST", "/api/v1/enrollments/individuals/zz-ind/slots/secondary", "alice",
       json_body + "'{\"thumbprint\":\"" + std::string(64, 'E') + "\"}'"},
      {"DELETE", "/api/v1/enrollments/individuals/zz-ind/slots/secondary", "alice", ""},
      {"GET", "/api/v1/devices/ctc-01/twin", "bob", ""},
      {"POST", "/api/v1/devices/ctc-01/twin/desired", "alice",
       json_body + R"('{"patch":"{\"interval\":30}"}')"},
      {"POST", "/api/v1/cas", "alice",
       json_body + R"('{"name":"zz-int","issuer":"root","subject":"/CN=Contract-Int"}')", 201},
      {"POST", "/api/v1/cas/roots", "alice",
       json_body + R"('{"name":"zz-root","subject":"/CN=Contract-Root"}')", 201},
      // A breach roll creates its job; the same request again continues it (200, not 201).
      {"POST", "/api/v1/rollovers/breach", "alice", json_body + R"('{"device":"ctb-01"}')", 201},
      {"POST", "/api/v1/rollovers/breach", "alice", json_body + R"('{"device":"ctb-01"}')"},
  };

  const auto doc = json(get("/api/openapi.json").body);
  const auto paths = doc->getObject("paths");
  const auto error_schema = doc->getObject("components")->getObject("schemas")->getObject("Error");
  std::set<std::string> covered;
  for (const Example& e : examples) {
    SCOPED_TRACE(e.method + " " + e.path);
    std::vector<std::string> segments;
    const std::string bare = e.path.substr(0, e.path.find('?'));
    for (std::size_t start = 1; start <= bare.size();) {
      const std::size_t end = bare.find('/', start);
      segments.push_back(bare.substr(start, end == std::string::npos ? end : end - start));
      if (end == std::string::npos) break;
      start = end + 1;
    }
    const auto m = cli::match_route(e.method, segments);
    ASSERT_TRUE(m.route != nullptr && m.method_ok);
    covered.insert(e.method + " " + m.route->path);
    // The document, not the table: what a client reads.
    ASSERT_TRUE(paths->has(m.route->path));
    std::string method = e.method;
    for (auto& c : method) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const auto op = paths->getObject(m.route->path)->getObject(method);
    ASSERT_TRUE(op);
    const auto responses = op->getObject("responses");

    const Answer a = fetch(e);
    EXPECT_EQ(a.status, e.status) << a.body;
    const std::string code = std::to_string(a.status);
    const bool success = a.status < 400;
    if (!(success ? responses->has(code) : responses->has("default"))) {
      ADD_FAILURE() << "status " << code << " is not in the document: " << a.body;
      continue;
    }
    const auto declared = responses->getObject(success ? code : "default");
    if (!success) {
      EXPECT_EQ(a.type.rfind("application/json", 0), 0u) << a.type;
      EXPECT_EQ(mismatch(error_schema, a.body), "") << a.body;
      const auto err = json(a.body)->getObject("error");
      EXPECT_TRUE(err && err->has("code") && err->has("message")) << a.body;
      continue;
    }
    if (!declared->has("content")) {
      EXPECT_TRUE(a.body.empty()) << a.body;
      continue;
    }
    const auto content = declared->getObject("content");
    const std::string media = a.type.substr(0, a.type.find(';'));
    if (!content->has(media)) {
      ADD_FAILURE() << "media type '" << a.type << "' is not in the document";
      continue;
    }
    if (media == "application/json") {
      EXPECT_EQ(mismatch(content->getObject(media)->getObject("schema"), a.body), "") << a.body;
    } else {
      EXPECT_FALSE(a.body.empty());
    }
  }
  // The event stream, which never ends by itself: its status and media type from the headers.
  {
    int rc = -1;
    shell("curl -sS -N --max-time 2 -D " + quoted(path("events.head")) + " -o /dev/null --cacert " +
              quoted(path("operators.pem")) + " --cert-type P12 --cert " +
              quoted(path("bob.p12") + ":" + kP12Password) +
              " https://localhost:" + std::to_string(port) + "/api/v1/events",
          &rc);
    const std::string head = testing::read_file(path("events.head"));
    EXPECT_NE(head.find("HTTP/1.1 200"), std::string::npos) << head;
    EXPECT_NE(head.find("Content-Type: text/event-stream"), std::string::npos) << head;
    EXPECT_TRUE(paths->getObject("/api/v1/events")
                    ->getObject("get")
                    ->getObject("responses")
                    ->getObject("200")
                    ->getObject("content")
                    ->has("text/event-stream"));
    covered.insert("GET /api/v1/events");
  }
  // A successful batch answer has its files: one of them, by the declared media types.
  covered.insert("GET /api/v1/batches/{id}/files/{file}");
  // Every route of the document has an example.
  for (const auto& p : paths->getNames()) {
    for (const auto& method : paths->getObject(p)->getNames()) {
      std::string upper = method;
      for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      EXPECT_TRUE(covered.count(upper + " " + p)) << upper << " " << p << " has no example";
    }
  }
}

}  // namespace
}  // namespace fleetsign::http_test
