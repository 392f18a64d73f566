// The HTTP API's route table and its OpenAPI document (http_api.hpp).
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <map>
#include <sstream>

#include "http_api.hpp"

namespace fleetsign::cli {

namespace {

using engine::OperatorRole;
using K = ApiParam::Kind;
using Poco::JSON::Array;
using Poco::JSON::Object;

constexpr Access kPublic{true, false, OperatorRole::kAuditor};
constexpr Access kDevice{true, true, OperatorRole::kAuditor};
constexpr Access kAuditor{false, false, OperatorRole::kAuditor};
constexpr Access kFactory{false, false, OperatorRole::kFactory};
constexpr Access kOperator{false, false, OperatorRole::kOperator};

ApiParam value(std::string name, std::string help) {
  return {std::move(name), K::kValue, std::move(help)};
}
ApiParam flag(std::string name, std::string help) {
  return {std::move(name), K::kFlag, std::move(help)};
}
ApiParam list(std::string name, std::string help) {
  return {std::move(name), K::kList, std::move(help)};
}

// A read: GET, auditor and up.
ApiRoute read(std::string path, std::vector<std::string> words, std::string summary,
              std::vector<ApiParam> params = {}) {
  ApiRoute r;
  r.method = "GET";
  r.path = std::move(path);
  r.access = kAuditor;
  r.summary = std::move(summary);
  r.words = std::move(words);
  r.params = std::move(params);
  return r;
}

// A change: POST (or DELETE), operator only unless said otherwise, audited.
ApiRoute change(std::string method, std::string path, std::vector<std::string> words,
                std::string summary, std::vector<ApiParam> params = {},
                std::vector<std::string> fixed = {}) {
  ApiRoute r;
  r.method = std::move(method);
  r.path = std::move(path);
  r.access = kOperator;
  r.summary = std::move(summary);
  r.words = std::move(words);
  r.params = std::move(params);
  r.fixed_args = std::move(fixed);
  r.changes = true;
  return r;
}

// The service's own routes (no CLI command behind them).
ApiRoute own(std::string method, std::string path, Access access, std::string summary,
             bool changes = false) {
  ApiRoute r;
  r.method = std::move(method);
  r.path = std::move(path);
  r.access = access;
  r.summary = std::move(summary);
  r.changes = changes;
  return r;
}

std::vector<ApiParam> selector_params() {
  return {value("group", "devices whose CA belongs to this enrollment group"),
          value("lot", "devices of this manufacturing lot"),
          value("expiring-within", "devices whose certificate expires within D (30d, 12h)"),
          list("device", "one device (repeat)"),
          value("ca", "sign the new certificates with this CA")};
}

std::vector<ApiParam> job_params() {
  return {value("rate", "devices started per minute at most"),
          value("exponential", "BASE,FACTOR,EVERY: a rate that grows"),
          value("wave", "devices per wave"),
          value("abort-if-failed", "stop when this share of settled devices failed"),
          value("min-executed", "… once at least N devices settled"),
          value("step-timeout", "seconds per method call and reconnection"),
          value("retries", "further tries of a device that failed a step"),
          value("offline-retry", "retry offline devices every S seconds"),
          value("deadline", "when the job stops waiting (30m, 7d, RFC 3339)"),
          value("in-flight", "devices in progress at once"),
          value("confirm", "session|method")};
}

// A list, a page at a time: limit (100 unless asked, at most 1000) and after, the cursor the
// last page answered as next_after.
ApiRoute paged(ApiRoute r, const std::string& key) {
  r.params.push_back(value("limit", "items on this page (" + std::to_string(kApiPageDefault) +
                                        ", at most " + std::to_string(kApiPageMax) + ")"));
  r.params.push_back(value(
      "after", "the " + key + " after which the page starts: the last " + "page's next_after"));
  r.paged = true;
  return r;
}

// Individual enrollments (by thumbprint: no server-side file), device twins, CA creation.
void add_more_changes(std::vector<ApiRoute>& r) {
  const std::string ind = "/api/v1/enrollments/individuals";
  r.push_back(paged(read(ind, {"enrollment", "individual", "list"},
                         "the individual enrollments, by registration ID"),
                    "registration ID"));
  r.push_back(read(ind + "/{id}", {"enrollment", "individual", "show"},
                   "one individual enrollment and its slots"));
  r.push_back(change(
      "POST", ind + "/{id}", {"enrollment", "individual", "create"},
      "create an individual enrollment trusting one device certificate, by SHA-256 thumbprint",
      {value("thumbprint", "the primary slot's SHA-256 thumbprint (64 hex digits)"),
       value("secondary-thumbprint", "the secondary slot's")}));
  r.back().success_status = 201;
  for (const char* verb : {"enable", "disable"}) {
    r.push_back(change("POST", ind + "/{id}/" + verb, {"enrollment", "individual", verb},
                       std::string(verb) + " an individual enrollment"));
  }
  r.push_back(change("POST", ind + "/{id}/slots/{slot}", {"enrollment", "individual", "set-slot"},
                     "put a thumbprint in a slot",
                     {value("thumbprint", "SHA-256 thumbprint (64 hex digits)")}));
  r.push_back(change("DELETE", ind + "/{id}/slots/{slot}",
                     {"enrollment", "individual", "clear-slot"}, "empty a slot"));
  r.push_back(read("/api/v1/devices/{id}/twin", {"twin", "show"},
                   "a device's twin: desired and reported properties, session"));
  r.push_back(change("POST", "/api/v1/devices/{id}/twin/desired", {"twin", "set-desired"},
                     "merge-patch the desired properties (RFC 7386); the broker pushes them",
                     {value("patch", "a JSON object, as text")}));
  r.push_back(change("POST", "/api/v1/cas", {"ca", "create-intermediate"},
                     "create an intermediate CA, its key made in the token",
                     {value("name", "the CA's name"), value("issuer", "the CA that signs it"),
                      value("subject", "its subject (/CN=…)"), value("key", "its key algorithm"),
                      value("days", "its validity"), value("path-len", "its pathLen")}));
  r.back().success_status = 201;
  r.push_back(change("POST", "/api/v1/cas/roots", {"ca", "create-root"},
                     "create a root CA, its key made in the token",
                     {value("name", "the CA's name"), value("subject", "its subject (/CN=…)"),
                      value("key", "its key algorithm"), value("days", "its validity")}));
  r.back().success_status = 201;
}

// The device lists of a revocation plan: 1,000 IDs each unless asked (the counts are whole), so a
// CA of a million devices answers a page, not a 16 MiB list.
ApiParam list_limit_param() {
  return value("list-limit", "device IDs per list of the plan (" +
                                 std::to_string(kApiPlanListDefault) + " unless asked; 0: all)");
}

template <typename... Lists>
std::vector<ApiParam> join(Lists... lists) {
  std::vector<ApiParam> out;
  (out.insert(out.end(), lists.begin(), lists.end()), ...);
  return out;
}

std::vector<ApiRoute> build_routes() {
  std::vector<ApiRoute> r;
  // Public: health, CA certificates, CRLs, EST's CA certificates, this document.
  r.push_back(own("GET", "/healthz", kPublic, "the service is up"));
  r.push_back(own("GET", "/readyz", kPublic,
                  "ready: the registry reads and writes, the token's files are sound, the broker "
                  "runs (when one is set up)"));
  r.push_back(own("GET", "/ca/{name}", kPublic,
                  "a CA certificate: {name}.crt (DER, application/pkix-cert) or {name}.pem"));
  r.push_back(own("GET", "/crl/{name}", kPublic,
                  "a CA's latest CRL: {name}.crl (DER, application/pkix-crl) or {name}.pem"));
  r.push_back(own("GET", "/api/openapi.json", kPublic, "this document"));
  r.push_back(own("GET", "/.well-known/est/cacerts", kPublic,
                  "EST (RFC 7030 4.1): the CA certificates, base64 PKCS#7 certs-only (one "
                  "enrollment group: its chain; else every CA)"));
  r.push_back(own("GET", "/.well-known/est/{label}/cacerts", kPublic,
                  "EST with a label: the chain of the enrollment group {label}"));
  for (const char* label : {"", "{label}/"}) {
    r.push_back(own("GET", std::string("/.well-known/est/") + label + "csrattrs", kPublic,
                    "EST (RFC 7030 4.5): 204, no attributes asked; the CSR is checked at "
                    "enrollment (subject = the registration ID, a new key the policy allows)"));
    r.back().success_status = 204;
  }
  for (const char* label : {"", "{label}/"}) {
    for (const char* op : {"simpleenroll", "simplereenroll"}) {
      ApiRoute e = own("POST", std::string("/.well-known/est/") + label + op, kDevice,
                       "EST (RFC 7030 4.2): a base64 PKCS#10 for the device whose current "
                       "certificate authenticates the TLS session; the new certificate (base64 "
                       "certs-only PKCS#7) goes into the device's free slot" +
                           std::string(*label ? "; the device must be in group {label}" : ""),
                       true);
      e.body = ApiBody::kPem;
      r.push_back(e);
    }
  }
  // The dashboard: its page and files (Chart.js from Debian), the jobs' event stream.
  r.push_back(own("GET", "/", kAuditor, "redirects to the dashboard, /ui/"));
  r.back().success_status = 302;
  r.push_back(own("GET", "/ui", kAuditor, "redirects to /ui/"));
  r.back().success_status = 302;
  r.push_back(own("GET", "/ui/", kAuditor, "the dashboard (a single page)"));
  r.push_back(own("GET", "/ui/{file}", kAuditor, "the dashboard's scripts and styles"));
  r.push_back(own("GET", "/api/v1/events", kAuditor,
                  "Server-Sent Events: \"jobs\", the newest jobs with task counts per state, "
                  "rate and ETA, sent when they change"));
  // Authenticated: who am I, metrics, batch upload and outputs.
  r.push_back(own("GET", "/api/v1/whoami", kAuditor, "the caller's operator record"));
  r.push_back(own("GET", "/metrics", kAuditor, "Prometheus text format"));
  {
    ApiRoute b = own("POST", "/api/v1/batches", kFactory,
                     "issue a batch from a PEM bundle of CSRs (the body, streamed to disk); a "
                     "factory only for its own groups; Idempotency-Key makes a retry resume the "
                     "same batch",
                     true);
    b.body = ApiBody::kPem;
    b.params = {value("ca", "the issuing CA (operator role)"),
                value("group", "the enrollment group (its CA issues; required for a factory)"),
                value("lot", "manufacturing lot"), value("line", "production line"),
                value("site", "site")};
    b.success_status = 201;
    r.push_back(b);
  }
  r.push_back(own("GET", "/api/v1/batches/{id}/files/{file}", kAuditor,
                  "an output of a batch issued through the API: bundle.pem, bundle.jsonl, "
                  "manifest.csv, manifest.jsonl, iothub-import.jsonl, rejects.csv"));

  // Reads of the CLI.
  r.push_back(paged(read("/api/v1/cas", {"ca", "list"}, "the CAs, oldest first"), "CA name"));
  r.push_back(read("/api/v1/cas/{name}", {"ca", "show"}, "one CA"));
  r.push_back(
      paged(read("/api/v1/batches", {"batch", "list"}, "the batches, newest first"), "batch id"));
  r.push_back(read("/api/v1/batches/{id}", {"batch", "show"}, "one batch"));
  r.push_back(paged(read("/api/v1/jobs", {"job", "list"}, "the jobs, newest first"), "job id"));
  r.push_back(read("/api/v1/jobs/{id}", {"job", "show"}, "a job: counts per state, rate, ETA",
                   {flag("all", "list the devices that are back too")}));
  r.push_back(paged(read("/api/v1/enrollments/groups", {"enrollment", "group", "list"},
                         "the enrollment groups, by name"),
                    "group name"));
  r.push_back(read("/api/v1/enrollments/groups/{name}", {"enrollment", "group", "show"},
                   "one enrollment group and its slots"));
  r.push_back(paged(read("/api/v1/devices", {"device", "list"}, "devices, by registration ID",
                         {value("group", "one enrollment group"), value("lot", "one lot"),
                          flag("connected", "the broker's live sessions (not paged)")}),
                    "registration ID"));
  r.push_back(read("/api/v1/devices/{id}", {"device", "show"}, "one device"));
  r.push_back(read("/api/v1/expiry", {"expiry", "report"}, "the expiry report",
                   {value("within", "days ahead"), value("group", "one enrollment group"),
                    value("limit", "due certificates listed")}));
  r.push_back(read("/api/v1/fleet", {"fleet", "overview"},
                   "devices per group, certificates expiring per week, the CA tree, devices "
                   "rollovers left behind",
                   {value("weeks", "weeks of the expiry horizon (52)")}));
  r.push_back(read(
      "/api/v1/audit", {"audit"}, "the audit log, newest first, a page at a time",
      {value("limit", "entries (50, at most 1000)"),
       value("before", "entries older than this id: the next page"),
       value("action", "actions starting with this"), value("actor", "one actor"),
       value("subject", "subjects starting with this"), value("since", "at or after this time")}));
  r.push_back(read("/api/v1/crls/{ca}", {"crl", "show"}, "a CA's CRL: number, dates, freshness"));
  r.push_back(paged(read("/api/v1/incidents", {"incident", "list"}, "the incidents, oldest first"),
                    "incident id"));
  r.push_back(
      paged(read("/api/v1/blocklist", {"blocklist", "list"}, "the blocked public keys, by hash"),
            "key hash"));
  r.push_back(paged(read("/api/v1/operators", {"operator", "list"}, "the operators, oldest first"),
                    "operator name"));
  {
    // Answered here, not by a child: the broker's decision at the rate the broker needs it.
    ApiRoute a = own("POST", "/api/v1/auth/check", kAuditor,
                     "the broker's decision for a device chain (the PEM body), as `fleetsign auth "
                     "check --json` gives it");
    a.body = ApiBody::kPem;
    a.params = {value("at", "judge at this time (RFC 3339, a date or unix seconds)"),
                value("registration-id", "the registration ID the device presents")};
    r.push_back(a);
  }
  // Changes.
  r.push_back(change("POST", "/api/v1/jobs/{id}/pause", {"job", "pause"}, "pause a job"));
  r.push_back(change("POST", "/api/v1/jobs/{id}/resume", {"job", "resume"},
                     "reopen a paused job (serve runs it)", {}, {"--no-run"}));
  r.push_back(change("POST", "/api/v1/jobs/{id}/cancel", {"job", "cancel"}, "cancel a job"));
  r.push_back(change("POST", "/api/v1/jobs/{id}/retry-failed", {"job", "retry-failed"},
                     "try the failed devices again (serve runs them)",
                     {value("deadline", "a new deadline")}, {"--no-run"}));
  r.push_back(
      change("POST", "/api/v1/rollovers/plan", {"rollover", "plan"},
             "what a rollover would do (changes nothing)",
             join(selector_params(), std::vector<ApiParam>{value("wave", "devices per wave")})));
  r.back().changes = false;
  r.back().access = kAuditor;
  r.push_back(change("POST", "/api/v1/rollovers", {"rollover", "start"},
                     "start a device rollover job (serve runs it)",
                     join(selector_params(), job_params()), {"--no-run"}));
  r.back().success_status = 201;
  r.push_back(change(
      "POST", "/api/v1/rollovers/breach", {"rollover", "breach"},
      "breach roll of one device's certificate (serve runs it)",
      {value("device", "the device"), value("serial", "the compromised certificate"),
       value("deadline", "stop waiting after D"), value("offline-retry", "retry every S seconds"),
       value("step-timeout", "seconds per step"), value("retries", "further tries")},
      {"--no-run"}));
  r.back().success_status = 201;
  r.back().may_continue = true;  // the device's open breach roll: 200, `"continued": true`
  r.push_back(change(
      "POST", "/api/v1/rollovers/ca", {"rollover", "ca"},
      "CA rollover of an enrollment group (serve runs it)",
      join(std::vector<ApiParam>{value("group", "the group"), value("name", "the new CA's name"),
                                 value("subject", "its subject"), value("days", "its validity"),
                                 value("key", "its key algorithm")},
           job_params()),
      {"--no-run"}));
  r.back().success_status = 201;
  r.push_back(change(
      "POST", "/api/v1/revocations", {"revoke"},
      "revoke certificates; dry-run is the blast radius and changes nothing",
      {value("serial", "one certificate"), value("device", "a device"),
       value("ca", "everything under a CA"), value("lot", "a lot"),
       value("batch", "a batch or job"), value("site", "a site"),
       value("line", "a production line"), value("key-sha256", "every certificate of a public key"),
       value("reason", "RFC 5280 reason"), flag("dry-run", "change nothing"),
       flag("yes", "revoke more than one device"), list_limit_param()}));
  // The blast radius alone, for anyone who reads: the same command, always a dry run.
  r.push_back(change(
      "POST", "/api/v1/revocations/preview", {"revoke"},
      "the blast radius of a revocation: what `revoke --dry-run` shows (changes "
      "nothing; auditors may call it)",
      {value("serial", "one certificate"), value("device", "a device"),
       value("ca", "everything under a CA"), value("lot", "a lot"),
       value("batch", "a batch or job"), value("site", "a site"),
       value("line", "a production line"), value("key-sha256", "every certificate of a public key"),
       value("reason", "RFC 5280 reason"), list_limit_param()},
      {"--dry-run"}));
  r.back().changes = false;
  r.back().access = kAuditor;
  r.push_back(change(
      "POST", "/api/v1/incidents", {"incident", "start"},
      "start an incident run (serve runs its job)",
      join(std::vector<ApiParam>{value("ca", "a compromised intermediate"),
                                 value("lot", "a suspect lot"), value("site", "a suspect site"),
                                 value("reason", "RFC 5280 reason"),
                                 value("replacement-ca", "the replacement CA"),
                                 value("compromised-at", "when (RFC 3339)"),
                                 value("key", "the replacement's key"),
                                 flag("dry-run", "change nothing"), flag("yes", "run it")},
           job_params()),
      {"--no-run"}));
  r.push_back(change("POST", "/api/v1/crls/{ca}/sign", {"crl", "sign"},
                     "sign a new CRL now and install the broker's"));
  r.push_back(change("POST", "/api/v1/blocklist", {"blocklist", "add"}, "block public keys",
                     {{"keys", K::kPositional, "SPKI SHA-256 hashes"}, value("reason", "why")}));
  r.push_back(change("DELETE", "/api/v1/blocklist/{hash}", {"blocklist", "remove"},
                     "unblock a public key"));
  r.push_back(change(
      "POST", "/api/v1/enrollments/groups/{name}", {"enrollment", "group", "create"},
      "create an enrollment group",
      {value("ca", "the primary slot's CA"), value("secondary-ca", "the secondary slot's CA")}));
  r.back().success_status = 201;
  for (const char* verb : {"enable", "disable"}) {
    r.push_back(change("POST", std::string("/api/v1/enrollments/groups/{name}/") + verb,
                       {"enrollment", "group", verb}, std::string(verb) + " an enrollment group"));
  }
  r.push_back(change("POST", "/api/v1/enrollments/groups/{name}/slots/{slot}",
                     {"enrollment", "group", "set-slot"}, "put a registry CA in a slot",
                     {value("ca", "the CA")}));
  r.push_back(change("DELETE", "/api/v1/enrollments/groups/{name}/slots/{slot}",
                     {"enrollment", "group", "clear-slot"}, "empty a slot"));
  r.push_back(change("POST", "/api/v1/devices/{id}/methods/{method}", {"method", "invoke"},
                     "invoke a direct method on a device",
                     {value("payload", "the method's payload (JSON text)"),
                      value("timeout", "seconds for the answer"),
                      value("connect-timeout", "seconds for an offline device to connect")}));
  r.push_back(change("DELETE", "/api/v1/operators/{name}", {"operator", "remove"},
                     "remove an operator: its certificate is refused at once"));
  add_more_changes(r);
  return r;
}

// What each route answers on success (ApiRoute::returns), by "METHOD PATH".
void set_returns(std::vector<ApiRoute>& routes) {
  const std::string ca =
      "name:string parent:string subject:string issuer:string serial:string key_type:string "
      "key_uri:string not_before:string not_after:string sha1:string sha256:string "
      "verified:boolean revoked:boolean";
  const std::string individual =
      "registration_id:string status:string primary:object? secondary:object? "
      "created_at:string updated_at:string";
  const std::string group =
      "name:string status:string primary:object? secondary:object? "
      "created_at:string updated_at:string";
  const std::string state = "id:string state:string";
  const std::map<std::string, std::string> returns = {
      {"GET /healthz", "status:string"},
      {"GET /readyz", "ready:boolean checks:object"},
      {"GET /ca/{name}", "media:application/pkix-cert media:application/x-pem-file"},
      {"GET /crl/{name}", "media:application/pkix-crl media:application/x-pem-file"},
      {"GET /api/openapi.json", "openapi:string info:object paths:object components:object"},
      {"GET /.well-known/est/cacerts", "media:application/pkcs7-mime"},
      {"GET /.well-known/est/{label}/cacerts", "media:application/pkcs7-mime"},
      {"GET /.well-known/est/csrattrs", "media:none"},
      {"GET /.well-known/est/{label}/csrattrs", "media:none"},
      {"POST /.well-known/est/simpleenroll", "media:application/pkcs7-mime"},
      {"POST /.well-known/est/simplereenroll", "media:application/pkcs7-mime"},
      {"POST /.well-known/est/{label}/simpleenroll", "media:application/pkcs7-mime"},
      {"POST /.well-known/est/{label}/simplereenroll", "media:application/pkcs7-mime"},
      {"GET /", "media:none"},
      {"GET /ui/", "media:text/html"},
      {"GET /ui/{file}", "media:text/javascript media:text/css"},
      {"GET /api/v1/events", "media:text/event-stream"},
      {"GET /api/v1/whoami",
       "name:string role:string groups:array cert_sha256:string not_after:string"},
      {"GET /metrics", "media:text/plain"},
      {"POST /api/v1/batches",
       "batch:string issued:integer rejected:integer total_issued:integer "
       "total_rejected:integer resumed:boolean already_finished:boolean seconds:number"},
      {"GET /api/v1/batches/{id}/files/{file}",
       "media:application/x-pem-file media:application/jsonl media:text/csv"},
      {"GET /api/v1/cas", "cas:array next_after:string?"},
      {"GET /api/v1/cas/{name}", ca},
      {"GET /api/v1/batches", "batches:array next_after:string?"},
      {"GET /api/v1/batches/{id}",
       "id:string ca:string state:string params:object issued:integer rejected:integer "
       "created_at:string finished_at:string watermark:integer"},
      {"GET /api/v1/jobs", "jobs:array next_after:string?"},
      {"GET /api/v1/jobs/{id}",
       "id:string kind:string state:string total:integer done:integer failed:integer "
       "states:object ratePerSecond:number etaSeconds:integer? createdAt:string notBack:array"},
      {"GET /api/v1/enrollments/groups", "count:integer groups:array next_after:string?"},
      {"GET /api/v1/enrollments/groups/{name}", group},
      {"GET /api/v1/devices",
       "count:integer devices:array? connected:array? broker_running:boolean? "
       "next_after:string?"},
      {"GET /api/v1/devices/{id}",
       "registration_id:string ca:string group:string lot:string status:string "
       "primary:object? secondary:object? individual_enrollment:string"},
      {"GET /api/v1/expiry",
       "as_of:string until:string within_days:integer thresholds:array status:integer "
       "summary:object groups:array cas:array findings:array due:array due_listed:integer "
       "crls:array"},
      {"GET /api/v1/fleet",
       "as_of:string weeks:integer thresholds:array devices:integer connected:integer "
       "groups:array cas:array not_back:array not_back_total:integer"},
      {"GET /api/v1/audit", "audit:array next_before:integer?"},
      {"GET /api/v1/crls/{ca}",
       "ca:string issuer:string number:integer this_update:string next_update:string "
       "entries:integer state:string fresh:boolean authority_key_id:string sha256:string"},
      {"GET /api/v1/incidents", "incidents:array next_after:string?"},
      {"GET /api/v1/blocklist", "keys:array next_after:string?"},
      {"GET /api/v1/operators", "operators:array next_after:string?"},
      {"POST /api/v1/auth/check",
       "allowed:boolean reason:string at:string rule:string? registration_id:string? "
       "enrollment:string? serial:string? sha256:string? slot:string?"},
      {"POST /api/v1/jobs/{id}/pause", state},
      {"POST /api/v1/jobs/{id}/resume", state},
      {"POST /api/v1/jobs/{id}/cancel", state},
      {"POST /api/v1/jobs/{id}/retry-failed", state},
      {"POST /api/v1/rollovers/plan",
       "devices:integer conflicts:integer waves:integer perGroup:object perLot:object "
       "perCa:object slots:object warnings:array conflictList:array"},
      {"POST /api/v1/rollovers", "id:string"},
      {"POST /api/v1/rollovers/breach",
       "id:string state:string continued:boolean? serial:string? alsoRevoked:string?"},
      {"POST /api/v1/rollovers/ca", state},
      {"POST /api/v1/revocations", "dry_run:boolean plan:object outcome:object?"},
      {"POST /api/v1/revocations/preview", "dry_run:boolean plan:object"},
      {"GET /ui", "media:none"},
      {"POST /api/v1/incidents",
       "scopeKind:string? scope:string? reason:string? devices:integer? certificates:integer? "
       "id:string? state:string?"},
      {"POST /api/v1/crls/{ca}/sign", "signed:array failed:array broker:string"},
      {"POST /api/v1/blocklist", "given:integer added:integer"},
      {"DELETE /api/v1/blocklist/{hash}", "removed:string"},
      {"POST /api/v1/enrollments/groups/{name}", group},
      {"POST /api/v1/enrollments/groups/{name}/enable", group},
      {"POST /api/v1/enrollments/groups/{name}/disable", group},
      {"POST /api/v1/enrollments/groups/{name}/slots/{slot}", group},
      {"DELETE /api/v1/enrollments/groups/{name}/slots/{slot}", group},
      {"POST /api/v1/devices/{id}/methods/{method}", "status:integer payload:object?"},
      {"DELETE /api/v1/operators/{name}", "removed:string"},
      {"GET /api/v1/enrollments/individuals",
       "count:integer individual_enrollments:array next_after:string?"},
      {"GET /api/v1/enrollments/individuals/{id}", individual},
      {"POST /api/v1/enrollments/individuals/{id}", individual},
      {"POST /api/v1/enrollments/individuals/{id}/enable", individual},
      {"POST /api/v1/enrollments/individuals/{id}/disable", individual},
      {"POST /api/v1/enrollments/individuals/{id}/slots/{slot}", individual},
      {"DELETE /api/v1/enrollments/individuals/{id}/slots/{slot}", individual},
      {"GET /api/v1/devices/{id}/twin", "deviceId:string properties:object connected:boolean"},
      {"POST /api/v1/devices/{id}/twin/desired", "deviceId:string desired_version:integer"},
      {"POST /api/v1/cas", ca},
      {"POST /api/v1/cas/roots", ca},
  };
  for (ApiRoute& r : routes) {
    const auto it = returns.find(r.method + " " + r.path);
    if (it != returns.end()) r.returns = it->second;
  }
}

}  // namespace

std::vector<std::string> split_route_path(const std::string& path) {
  std::vector<std::string> out;
  std::size_t start = 1;
  while (start <= path.size()) {
    const std::size_t end = path.find('/', start);
    out.push_back(path.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

bool is_path_placeholder(const std::string& s) {
  return s.size() > 2 && s.front() == '{' && s.back() == '}';
}

bool role_allows(engine::OperatorRole have, engine::OperatorRole need) noexcept {
  return static_cast<int>(have) >= static_cast<int>(need);
}

const std::vector<ApiRoute>& api_routes() {
  static const std::vector<ApiRoute> routes = [] {
    auto r = build_routes();
    set_returns(r);
    return r;
  }();
  return routes;
}

RouteMatch match_route(const std::string& method, const std::vector<std::string>& segments) {
  RouteMatch best;
  for (const ApiRoute& r : api_routes()) {
    const auto pattern = split_route_path(r.path);
    if (pattern.size() != segments.size()) continue;
    std::vector<std::string> values;
    bool ok = true;
    for (std::size_t i = 0; ok && i < pattern.size(); ++i) {
      if (is_path_placeholder(pattern[i])) {
        ok = !segments[i].empty();
        values.push_back(segments[i]);
      } else {
        ok = pattern[i] == segments[i];
      }
    }
    if (!ok) continue;
    // A literal segment wins over a placeholder (/batches/{id} vs /batches/…/files/…: sizes
    // differ; /est/cacerts vs /est/{label}/cacerts: sizes differ too), so the first full match
    // with the right method is the route.
    if (r.method == method) return {&r, std::move(values), true};
    if (best.route == nullptr) best = {&r, std::move(values), false};
  }
  return best;
}

}  // namespace fleetsign::cli
