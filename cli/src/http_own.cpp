// The routes the HTTP service answers itself (http_api.hpp's entries without CLI words): health,
// CA certificates and CRLs, EST's CA certificates, the OpenAPI document, who am I, metrics, and
// batch issuance from an uploaded CSR bundle.
#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <variant>

#include "cli.hpp"
#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/broker/broker_home.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/home.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/sign_metrics.hpp"
#include "fleetsign/engine/token_guard.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "http_internal.hpp"

namespace fleetsign::cli {

namespace fs = std::filesystem;

namespace {

using Poco::JSON::Object;

constexpr const char* kBatchFiles[] = {"bundle.pem",         "bundle.jsonl",   "chain.pem",
                                       "manifest.csv",       "manifest.jsonl", "rejects.csv",
                                       "iothub-import.jsonl"};

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string stringify(const Object& o) {
  std::ostringstream out;
  o.stringify(out);
  return out.str() + "\n";
}

// "{name}.crt" → name and "crt".
std::pair<std::string, std::string> split_ext(const std::string& file) {
  const auto dot = file.rfind('.');
  if (dot == std::string::npos || dot == 0) return {file, ""};
  return {file.substr(0, dot), file.substr(dot + 1)};
}

// `detailed`: a failing check says why (paths of this machine included) only to an operator's
// certificate; anyone else (a load balancer's probe) reads "failing".
Answer readyz(HttpService::Impl& impl, bool detailed) {
  Object checks(Poco::JSON_PRESERVE_KEY_ORDER);
  bool ready = true;
  const engine::Home home = engine::Home::open(impl.opt.home);
  try {
    impl.with_stores([&](engine::Stores& s) { s.list_cas(); });
    // A PostgreSQL registry answered the read above; its writes are the server's business.
    const bool writable =
        (!home.sqlite_registry() || ::access(home.registry_path().c_str(), W_OK) == 0) &&
        ::access(impl.opt.home.c_str(), W_OK) == 0;
    checks.set("registry", writable ? "ok" : "read-only");
    ready = ready && writable;
  } catch (const Error& e) {
    checks.set("registry", std::string(e.what()));
    ready = false;
  }
  std::string token = "ok";
  if (::access(home.config().module.c_str(), R_OK) != 0) {
    token = "the PKCS#11 module " + home.config().module.string() + " is not readable";
  } else if (home.config().softhsm_conf) {
    std::error_code ec;
    for (const auto& dir : fs::directory_iterator(home.config().dir / "tokens", ec)) {
      std::ifstream in(dir.path() / "token.object", std::ios::binary);
      const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                             std::istreambuf_iterator<char>());
      if (!engine::is_complete_token_object(bytes)) {
        token = "token metadata " + (dir.path() / "token.object").string() +
                " is damaged (the next command restores it from its copy)";
      }
    }
  }
  if (token == "ok" && impl.token_failed_at.load() > unix_now() - 300) {
    token = "a command failed to log in to the token in the last 5 minutes (PIN?)";
  }
  checks.set("token", token);
  ready = ready && token == "ok";
  const broker::BrokerHome bh(impl.opt.home);
  if (!bh.initialised()) {
    checks.set("broker", "absent");
  } else {
    const bool running = broker::Supervisor(bh).status(bh.load()).running;
    checks.set("broker", running ? "ok" : "not running");
    ready = ready && running;
  }
  if (!detailed) {
    for (const auto& name : checks.getNames()) {
      const std::string v = checks.getValue<std::string>(name);
      if (v != "ok" && v != "absent") checks.set(name, "failing (the reason: ask as an operator)");
    }
  }
  Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("ready", ready);
  o.set("checks", checks);
  return {ready ? 200 : 503, stringify(o)};
}

void metric(std::string& out, const std::string& name, const std::string& type,
            const std::string& help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

// A label value in the text format: backslash, quote and newline escaped.
std::string label(const std::string& v) {
  std::string out;
  for (const char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    out += c == '\n' ? std::string("\\n") : std::string(1, c);
  }
  return out;
}

// Device certificates (both slots) by alert threshold: expired, then within each threshold (not
// cumulative: a certificate counts in the smallest threshold it falls under), as the expiry report
// buckets them. One day-bucketed scan of the expiry indexes.
void expiry_buckets(std::string& out, engine::Stores& s, const std::vector<int>& thresholds,
                    std::int64_t now) {
  const int horizon =
      thresholds.empty() ? 0 : *std::max_element(thresholds.begin(), thresholds.end());
  std::map<int, std::int64_t> per_day;  // day index (-1: expired) → certificates
  for (const auto& b : s.expiry_histogram(now, 86400, horizon)) per_day[b.bucket] += b.count;
  std::vector<int> sorted(thresholds.begin(), thresholds.end());
  std::sort(sorted.begin(), sorted.end());
  metric(out, "fleetsign_device_certificates_expiring", "gauge",
         "Device certificates by alert threshold (expired, or the smallest threshold in days "
         "they expire within).");
  out += "fleetsign_device_certificates_expiring{within=\"expired\"} " +
         std::to_string(per_day[-1]) + "\n";
  int from = 0;
  for (const int d : sorted) {
    std::int64_t n = 0;
    for (auto it = per_day.lower_bound(from); it != per_day.end() && it->first < d; ++it) {
      n += it->second;
    }
    out += "fleetsign_device_certificates_expiring{within=\"" + std::to_string(d) + "d\"} " +
           std::to_string(n) + "\n";
    from = d;
  }
}

// The token's signing latency over every command of the home (engine/sign_metrics.hpp).
void sign_histogram(std::string& out, const fs::path& home) {
  const auto h = engine::load_sign_latency(home).value_or(hsm::SignLatency{});
  metric(out, "fleetsign_token_sign_seconds", "histogram",
         "Time the token took per device-certificate signature (C_SignInit + C_Sign, retries "
         "included), summed over every command of the home when each ends.");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    char le[32];
    if (i < hsm::kSignLatencyBounds.size()) {
      std::snprintf(le, sizeof le, "%g", hsm::kSignLatencyBounds[i]);
    } else {
      std::snprintf(le, sizeof le, "+Inf");
    }
    out += "fleetsign_token_sign_seconds_bucket{le=\"" + std::string(le) + "\"} " +
           std::to_string(cumulative) + "\n";
  }
  char sum[64];
  std::snprintf(sum, sizeof sum, "%.9f", static_cast<double>(h.sum_ns) / 1e9);
  out += "fleetsign_token_sign_seconds_sum " + std::string(sum) + "\n";
  out += "fleetsign_token_sign_seconds_count " + std::to_string(cumulative) + "\n";
}

Answer metrics(HttpService::Impl& impl) {
  std::string out;
  metric(out, "fleetsign_http_responses_total", "counter", "HTTP responses, by status class.");
  for (int c = 1; c <= 5; ++c) {
    out += "fleetsign_http_responses_total{class=\"" + std::to_string(c) + "xx\"} " +
           std::to_string(impl.answered[c].load()) + "\n";
  }
  metric(out, "fleetsign_http_commands_total", "counter", "CLI commands run for API requests.");
  out += "fleetsign_http_commands_total " + std::to_string(impl.commands_run.load()) + "\n";
  metric(out, "fleetsign_http_command_seconds_total", "counter", "Time spent in those commands.");
  out += "fleetsign_http_command_seconds_total " +
         std::to_string(static_cast<double>(impl.command_ms_total.load()) / 1000.0) + "\n";
  const std::vector<int> alert_days =
      impl.with_stores([&](engine::Stores&) { return impl.services_locked().policy().alert_days; });
  const std::int64_t now = unix_now();
  // On the report connection: a scan never holds up the requests being identified.
  impl.with_reports([&](engine::Stores& s) {
    std::map<std::string, int> jobs = {
        {"running", 0}, {"paused", 0}, {"finished", 0}, {"canceled", 0}, {"aborted", 0}};
    for (const auto& j : s.list_jobs(engine::ListPage{})) jobs[j.state]++;
    metric(out, "fleetsign_jobs", "gauge", "Jobs, by state.");
    for (const auto& [state, n] : jobs) {
      out += "fleetsign_jobs{state=\"" + state + "\"} " + std::to_string(n) + "\n";
    }
    metric(out, "fleetsign_devices", "gauge", "Devices in the registry.");
    out += "fleetsign_devices " + std::to_string(s.count_devices()) + "\n";
    metric(out, "fleetsign_connected_devices", "gauge", "Devices connected to the broker now.");
    out += "fleetsign_connected_devices " + std::to_string(s.connected_devices().size()) + "\n";
    // The scans of every certificate and device, at most every 5 s (a scraper that asks more
    // often must not read a registry of millions each time).
    {
      std::lock_guard cache(impl.metrics_mutex);
      const auto t = std::chrono::steady_clock::now();
      if (impl.metrics_scans.empty() || t - impl.metrics_at >= std::chrono::seconds(5)) {
        std::string scans;
        metric(scans, "fleetsign_certificates_issued_total", "counter",
               "Certificates issued, by CA and mode (batch: issue and API uploads; job: "
               "rollovers and incidents; single).");
        for (const auto& c : s.issued_counts()) {
          scans += "fleetsign_certificates_issued_total{ca=\"" + label(c.ca_name) + "\",mode=\"" +
                   c.mode + "\"} " + std::to_string(c.count) + "\n";
        }
        expiry_buckets(scans, s, alert_days, now);
        impl.metrics_scans = std::move(scans);
        impl.metrics_at = t;
      }
      out += impl.metrics_scans;
    }
    sign_histogram(out, impl.opt.home);
    std::int64_t active = 0;
    for (const auto& op : s.list_operators()) active += op.removed_at == 0 ? 1 : 0;
    metric(out, "fleetsign_operators", "gauge", "Active operators.");
    out += "fleetsign_operators " + std::to_string(active) + "\n";
    std::string age, left;
    for (const auto& ca : s.list_cas()) {
      const auto crl = s.latest_crl(ca.name);
      if (!crl) continue;
      age += "fleetsign_crl_age_seconds{ca=\"" + label(ca.name) + "\"} " +
             std::to_string(now - crl->this_update) + "\n";
      left += "fleetsign_crl_next_update_seconds{ca=\"" + label(ca.name) + "\"} " +
              std::to_string(crl->next_update - now) + "\n";
    }
    metric(out, "fleetsign_crl_age_seconds", "gauge", "Seconds since the CA's CRL's thisUpdate.");
    out += age;
    metric(out, "fleetsign_crl_next_update_seconds", "gauge",
           "Seconds until the CA's CRL's nextUpdate (negative: stale).");
    out += left;
  });
  return {200, out};
}

// POST /api/v1/batches: the body (a PEM bundle of CSRs) to DATA/uploads/ID.pem, then
// `fleetsign issue --csr-file … --bundle --out DATA/batches/ID --batch ID`. With an
// Idempotency-Key the batch ID is derived from it, so a retry (even after a crash of the service
// or the child) resumes or shows that same batch and never issues twice.
Answer post_batch(HttpService::Impl& impl, Request& r) {
  const Poco::URI uri(r.http.getURI());
  std::optional<std::string> group, ca;
  for (const auto& [k, v] : uri.getQueryParameters()) {
    if (k == "group") group = v;
    if (k == "ca") ca = v;
  }
  const engine::OperatorRecord& op = *r.caller.op;
  if (op.role == engine::OperatorRole::kFactory) {
    if (ca) {
      return error_answer(403, "forbidden",
                          "a factory issues through its groups: give group, not ca");
    }
    if (!group || std::find(op.groups.begin(), op.groups.end(), *group) == op.groups.end()) {
      std::string mine;
      for (const auto& g : op.groups) mine += (mine.empty() ? "" : ", ") + g;
      return error_answer(403, "forbidden",
                          "factory " + op.name + " issues for its groups only (" + mine +
                              "); group '" + group.value_or("") + "' is not one of them");
    }
  }
  if (!group && !ca) return error_answer(400, "usage", "give group or ca");
  const std::string key = r.http.get("Idempotency-Key", "");
  if (key.size() > 200) return error_answer(400, "invalid_argument", "Idempotency-Key: too long");
  const std::string id =
      "api-" + sha256_hex(key.empty()
                              ? r.caller.cert_sha256 + std::to_string(unix_now()) +
                                    std::to_string(
                                        std::chrono::steady_clock::now().time_since_epoch().count())
                              : r.caller.cert_sha256 + "\n" + key)
                   .substr(0, 24);
  std::vector<std::string> args = command_args(r, uri, "");
  // The group: an enrollment group's primary CA issues (a policy group of the same name adds its
  // settings, `issue --group`); else a policy group alone.
  if (group) {
    const bool policy_group = impl.with_stores(
        [&](engine::Stores&) { return impl.services_locked().policy().groups.count(*group) != 0; });
    const auto g = impl.with_stores([&](engine::Stores& s) { return s.find_group(*group); });
    if (g) {
      if (ca && *ca != g->primary_ca && *ca != g->secondary_ca) {
        return error_answer(400, "invalid_argument",
                            "CA '" + *ca + "' is in no slot of group '" + *group + "'");
      }
      if (!policy_group) std::erase(args, "--group=" + *group);
      if (!ca) args.push_back("--ca=" + (!g->primary_ca.empty() ? g->primary_ca : g->secondary_ca));
    } else if (!policy_group) {
      return error_answer(404, "not_found", "no group '" + *group + "'");
    }
  }
  // One request per batch at a time (a second copy: 409); other requests never wait for it.
  InFlight busy(impl, "batch " + id);
  const fs::path uploads = impl.opt.data_dir / "uploads";
  const fs::path part =
      uploads /
      (id + "." +
       sha256_hex(std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()))
           .substr(0, 8) +
       ".part");
  const fs::path upload = uploads / (id + ".pem");
  const fs::path out = impl.opt.data_dir / "batches" / id;
  const fs::path request_file = impl.opt.data_dir / "batches" / (id + ".request");
  const std::string body_sha = save_body(r.http, part, impl.opt.max_upload);
  const std::string request = sha256_hex(uri.getRawQuery() + "\n" + body_sha);
  std::error_code ec;
  const auto existing = impl.with_stores([&](engine::Stores& s) { return s.find_batch(id); });
  ApiRoute cmd = r.route;
  if (existing) {
    fs::remove(part, ec);
    std::ifstream in(request_file);
    std::string kept;
    std::getline(in, kept);
    if (kept != request) {
      return error_answer(400, "invalid_argument",
                          "this Idempotency-Key was used for another batch (parameters or CSRs "
                          "differ): batch " +
                              id);
    }
    // The same request again: the batch's state, or its resume when it was interrupted.
    r.resp.set("Idempotent-Replayed", "true");
    r.resp.set("Location", "/api/v1/batches/" + id);
    // A finished batch answers as its first answer did (already_finished: true), from the
    // registry; an unfinished one resumes.
    cmd.words = {"issue"};
    Request resume{r.http, r.resp, cmd, {}, r.caller};
    const Answer a = run_command(impl, resume, {"--resume=" + id});
    if (a.status < 300) fs::remove(upload, ec);
    return a;
  }
  fs::create_directories(out.parent_path());
  write_file_atomic(request_file, request + "\n", 0600);
  fs::rename(part, upload);
  args.push_back("--csr-file=" + upload.string());
  args.push_back("--bundle");
  args.push_back("--out=" + out.string());
  args.push_back("--batch=" + id);
  cmd.words = {"issue"};
  Request run{r.http, r.resp, cmd, {}, r.caller};
  Answer a = run_command(impl, run, args);
  // The input stays only while a recorded batch may need it to resume.
  const auto after = impl.with_stores([&](engine::Stores& s) { return s.find_batch(id); });
  if (!after || after->state == "finished") fs::remove(upload, ec);
  // Recorded, whatever the answer (a timeout included): where to see it, and the same
  // Idempotency-Key resumes it.
  if (after) r.resp.set("Location", "/api/v1/batches/" + id);
  return a;
}

// POST /api/v1/auth/check: `auth check --json`'s answer, from a pooled Authenticator.
Answer auth_check(HttpService::Impl& impl, Request& r) {
  std::optional<std::int64_t> at;
  std::string claimed;
  for (const auto& [k, v] : Poco::URI(r.http.getURI()).getQueryParameters()) {
    if (k == "at" && !at) {
      at = parse_auth_time(v);
    } else if (k == "registration-id" && claimed.empty()) {
      claimed = v;
    } else {
      return error_answer(400, "invalid_argument",
                          "parameter '" + engine::valid_utf8(k) +
                              "' is not one of POST /api/v1/auth/check's: at, registration-id "
                              "(each once)");
    }
  }
  const auto chain = engine::certificates_from_text(read_body(r.http, kChainFileLimit), "chain");
  const std::int64_t when = at.value_or(unix_now());
  auto slot = impl.take_auth();
  const engine::AuthDecision d = slot->auth->check(chain, when, claimed);
  impl.give_back(std::move(slot));
  return {200, stringify(auth_decision_json(d, when))};
}

// The path of an output of a batch issued through the API, or an error answer.
std::variant<fs::path, Answer> batch_file(HttpService::Impl& impl, Request& r) {
  const std::string& id = r.values[0];
  const std::string& file = r.values[1];
  bool known = false;
  for (const char* f : kBatchFiles) known = known || file == f;
  if (!is_safe_name(id) || !known) return error_answer(404, "not_found", "no such batch file");
  const fs::path path = impl.opt.data_dir / "batches" / id / file;
  // A running batch still appends to its outputs (and cuts them back on a resume): only a
  // finished one has files whose length holds while they are sent.
  const auto batch = impl.with_stores([&](engine::Stores& s) { return s.find_batch(id); });
  if (batch && batch->state != "finished") {
    return error_answer(409, "already_exists",
                        "batch " + id + " is " + batch->state + ": its files are not final yet");
  }
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return error_answer(404, "not_found",
                        "batch " + id + " has no " + file +
                            " here (only batches issued through the API keep their outputs with "
                            "the service)");
  }
  return path;
}

std::string content_type_of(const std::string& file) {
  if (file.size() > 4 && file.substr(file.size() - 4) == ".pem") return "application/x-pem-file";
  if (file.size() > 6 && file.substr(file.size() - 6) == ".jsonl") return "application/jsonl";
  return "text/csv";
}

}  // namespace

bool answer_own(HttpService::Impl& impl, Request& r) {
  const std::string& path = r.route.path;
  auto& resp = r.resp;
  if (path == "/healthz") {
    send_json(resp, 200, "{\"status\":\"ok\"}\n");
  } else if (path == "/readyz") {
    const Answer a = readyz(impl, r.caller.op.has_value());
    send_json(resp, a.status, a.body);
  } else if (path == "/api/openapi.json") {
    send_json(resp, 200, openapi_json());
  } else if (path == "/ca/{name}" || path == "/crl/{name}") {
    const auto [name, ext] = split_ext(r.values[0]);
    const bool cert = path == "/ca/{name}";
    if (!(ext == "pem" || ext == (cert ? "crt" : "crl"))) {
      send_error(resp, 404, "not_found",
                 std::string("ask for ") +
                     (cert ? "{name}.crt or {name}.pem" : "{name}.crl or {name}.pem"));
      return true;
    }
    std::optional<engine::Der> der =
        impl.with_stores([&](engine::Stores& s) -> std::optional<engine::Der> {
          if (cert) {
            const auto ca = s.find_ca(name);
            return ca && !ca->cert_der.empty() ? std::optional<engine::Der>(ca->cert_der)
                                               : std::nullopt;
          }
          const auto crl = s.latest_crl(name);
          return crl ? std::optional<engine::Der>(crl->der) : std::nullopt;
        });
    if (!der) {
      send_error(resp, 404, "not_found",
                 std::string(cert ? "no CA '" : "no CRL of CA '") + engine::valid_utf8(name) + "'");
    } else if (ext == "pem") {
      send_bytes(resp, 200, "application/x-pem-file",
                 engine::pem(*der, cert ? "CERTIFICATE" : "X509 CRL"));
    } else {
      send_bytes(resp, 200, cert ? "application/pkix-cert" : "application/pkix-crl",
                 std::string(der->begin(), der->end()));
    }
  } else if (path.rfind("/.well-known/est/", 0) == 0) {
    answer_est(impl, r);
  } else if (path == "/api/v1/whoami") {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("name", r.caller.op->name);
    o.set("role", std::string(engine::operator_role_name(r.caller.op->role)));
    Poco::JSON::Array groups;
    for (const auto& g : r.caller.op->groups) groups.add(g);
    o.set("groups", groups);
    o.set("cert_sha256", r.caller.cert_sha256);
    o.set("not_after", engine::iso8601(r.caller.op->not_after));
    send_json(resp, 200, stringify(o));
  } else if (path == "/metrics") {
    const Answer a = metrics(impl);
    send_bytes(resp, 200, "text/plain; version=0.0.4", a.body);
  } else if (path == "/api/v1/batches") {
    const Answer a = post_batch(impl, r);
    send_json(resp, a.status, a.body);
  } else if (path == "/api/v1/auth/check") {
    const Answer a = auth_check(impl, r);
    send_json(resp, a.status, a.body);
  } else if (path == "/api/v1/batches/{id}/files/{file}") {
    const auto found = batch_file(impl, r);
    if (const auto* a = std::get_if<Answer>(&found)) {
      send_json(resp, a->status, a->body);
    } else {
      // Streamed from the file: a bundle of 10^6 devices is never held in memory.
      resp.set("Cache-Control", "no-store");
      resp.set("X-Content-Type-Options", "nosniff");
      try {
        resp.sendFile(std::get<fs::path>(found).string(), content_type_of(r.values[1]));
      } catch (const Poco::FileNotFoundException&) {
        if (!resp.sent()) send_error(resp, 404, "not_found", "no such batch file");
      }
    }
  } else {
    return false;
  }
  return true;
}

}  // namespace fleetsign::cli
