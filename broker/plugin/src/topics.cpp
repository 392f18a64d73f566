// Topic grammar: see topics.hpp and PROTOCOL.md.
#include "topics.hpp"

#include <algorithm>
#include <charconv>

namespace fleetsign::broker {

namespace {

constexpr std::size_t kMaxQuery = 512;

bool all_of(std::string_view s, std::size_t max, bool (*ok)(char)) {
  return !s.empty() && s.size() <= max && std::all_of(s.begin(), s.end(), ok);
}

bool rid_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}
bool lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }
bool digit(char c) { return c >= '0' && c <= '9'; }

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::optional<int> small_int(std::string_view s, int lo, int hi) {
  if (!all_of(s, 6, digit)) {
    return std::nullopt;
  }
  int v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v >= lo && v <= hi ? std::optional(v) : std::nullopt;
}

// "?k=v&k=v": the values of the keys we know; false on a malformed or repeated key.
struct Query {
  std::string_view rid, ct, rt, operation_id;
};
bool parse_query(std::string_view q, Query& out) {
  if (q.size() > kMaxQuery || !starts_with(q, "?")) {
    return false;
  }
  q.remove_prefix(1);
  while (!q.empty()) {
    const auto amp = q.find('&');
    const std::string_view pair = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    const auto eq = pair.find('=');
    if (eq == std::string_view::npos) {
      continue;  // a bare flag: nothing we use
    }
    const std::string_view key = pair.substr(0, eq), value = pair.substr(eq + 1);
    std::string_view* slot = key == "$rid"          ? &out.rid
                             : key == "$ct"         ? &out.ct
                             : key == "$rt"         ? &out.rt
                             : key == "operationId" ? &out.operation_id
                                                    : nullptr;
    if (slot != nullptr) {
      if (!slot->empty()) {
        return false;
      }
      *slot = value;
    }
  }
  return true;
}

Request malformed(std::string problem, std::string_view rid = {}) {
  Request r;
  r.kind = Request::Kind::kMalformed;
  r.problem = std::move(problem);
  r.rid = rid;
  return r;
}

// "$fleetsign/methods/POST/{device}/{method}/?…"
Request parse_method_call(std::string_view rest) {
  Query q;
  const auto qpos = rest.find("/?");
  if (qpos == std::string_view::npos || !parse_query(rest.substr(qpos + 1), q)) {
    return malformed("the topic has no valid query (?$rid=…)");
  }
  const std::string_view rid = valid_call_rid(q.rid) ? q.rid : std::string_view();
  if (rid.empty()) {
    return malformed("$rid must be 32 lower-case hex digits");
  }
  const std::string_view path = rest.substr(0, qpos);
  const auto slash = path.find('/');
  if (slash == std::string_view::npos) {
    return malformed("the topic names no method", rid);
  }
  Request r;
  r.kind = Request::Kind::kMethodCall;
  r.rid = rid;
  r.device_id = path.substr(0, slash);
  r.method = path.substr(slash + 1);
  if (r.device_id.empty()) {
    return malformed("the topic names no device", rid);
  }
  if (!valid_method_name(r.method)) {
    return malformed("the method name must match [A-Za-z0-9_.-]{1,128}", rid);
  }
  if (!q.ct.empty()) {
    const auto ct = small_int(q.ct, 0, 300);
    if (!ct) return malformed("$ct must be an integer in 0..300", rid);
    r.connect_timeout_s = *ct;
  }
  if (!q.rt.empty()) {
    const auto rt = small_int(q.rt, 1, 300);
    if (!rt) return malformed("$rt must be an integer in 1..300", rid);
    r.response_timeout_s = *rt;
  }
  return r;
}

// "{status}/?$rid={drid}" after "$iothub/methods/res/".
Request parse_method_response(std::string_view rest) {
  Query q;
  const auto qpos = rest.find("/?");
  if (qpos == std::string_view::npos || !parse_query(rest.substr(qpos + 1), q) ||
      !valid_call_rid(q.rid)) {
    return malformed("a method answer needs ?$rid= with the call's 32 hex digits");
  }
  const auto status = small_int(rest.substr(0, qpos), 100, 999);
  if (!status) {
    return malformed("a method answer's status must be an integer in 100..999");
  }
  Request r;
  r.kind = Request::Kind::kMethodResponse;
  r.status = *status;
  r.rid = q.rid;
  return r;
}

// "?$rid=…" (and operationId for DPS status) after a fixed path.
Request parse_rid_only(Request::Kind kind, std::string_view query, bool operation) {
  Query q;
  if (!parse_query(query, q) || !valid_device_rid(q.rid)) {
    return malformed("$rid must match [A-Za-z0-9._-]{1,64}");
  }
  Request r;
  r.kind = kind;
  r.rid = q.rid;
  if (operation) {
    if (!all_of(q.operation_id, 64, rid_char)) {
      return malformed("operationId must match [A-Za-z0-9._-]{1,64}", q.rid);
    }
    r.operation_id = q.operation_id;
  }
  return r;
}

}  // namespace

bool valid_device_rid(std::string_view rid) { return all_of(rid, 64, rid_char); }
bool valid_call_rid(std::string_view rid) { return rid.size() == 32 && all_of(rid, 32, lower_hex); }
bool valid_method_name(std::string_view name) { return all_of(name, 128, rid_char); }

Request parse_request(std::string_view topic) {
  using K = Request::Kind;
  constexpr std::string_view kCall = "$fleetsign/methods/POST/";
  constexpr std::string_view kAnswer = "$iothub/methods/res/";
  constexpr std::string_view kTwinGet = "$iothub/twin/GET/";
  constexpr std::string_view kReported = "$iothub/twin/PATCH/properties/reported/";
  constexpr std::string_view kRegister = "$dps/registrations/PUT/iotdps-register/";
  constexpr std::string_view kStatus = "$dps/registrations/GET/iotdps-get-operationstatus/";
  if (starts_with(topic, kCall)) return parse_method_call(topic.substr(kCall.size()));
  if (starts_with(topic, kAnswer)) return parse_method_response(topic.substr(kAnswer.size()));
  if (starts_with(topic, kTwinGet)) {
    return parse_rid_only(K::kTwinGet, topic.substr(kTwinGet.size()), false);
  }
  if (starts_with(topic, kReported)) {
    return parse_rid_only(K::kTwinReported, topic.substr(kReported.size()), false);
  }
  if (starts_with(topic, kRegister)) {
    return parse_rid_only(K::kDpsRegister, topic.substr(kRegister.size()), false);
  }
  if (starts_with(topic, kStatus)) {
    return parse_rid_only(K::kDpsStatus, topic.substr(kStatus.size()), true);
  }
  if (starts_with(topic, "$iothub/") || starts_with(topic, "$dps/") ||
      starts_with(topic, "$fleetsign/")) {
    return malformed("no such request topic");
  }
  return Request{};
}

std::string device_method_topic(std::string_view method, std::string_view drid) {
  return "$iothub/methods/POST/" + std::string(method) + "/?$rid=" + std::string(drid);
}
std::string service_answer_topic(int status, std::string_view rid) {
  return "$fleetsign/methods/res/" + std::to_string(status) + "/?$rid=" + std::string(rid);
}
std::string twin_answer_topic(int status, std::string_view rid) {
  return "$iothub/twin/res/" + std::to_string(status) + "/?$rid=" + std::string(rid);
}
std::string twin_reported_answer_topic(std::string_view rid, std::int64_t version) {
  return "$iothub/twin/res/204/?$rid=" + std::string(rid) + "&$version=" + std::to_string(version);
}
std::string twin_desired_topic(std::int64_t version) {
  return "$iothub/twin/PATCH/properties/desired/?$version=" + std::to_string(version);
}
std::string dps_answer_topic(int status, std::string_view rid, bool retry_after) {
  return "$dps/registrations/res/" + std::to_string(status) + "/?$rid=" + std::string(rid) +
         (retry_after ? "&retry-after=1" : "");
}

bool rotation_method(std::string_view method) {
  return method == "createCsr" || method == "installCertificate" || method == "reprovision" ||
         method == "getCertificate";
}

std::string rotation_only_refusal(std::string_view device, std::string_view method) {
  return "device " + std::string(device) +
         " is admitted for the rotation methods only (an incident pins its certificate): " +
         std::string(method) + " is not one";
}

bool device_may_subscribe(std::string_view filter, bool dps_mode) {
  if (dps_mode) {
    return filter == "$dps/registrations/res/#";
  }
  return filter == "$iothub/methods/POST/#" || filter == "$iothub/twin/res/#" ||
         filter == "$iothub/twin/PATCH/properties/desired/#";
}
bool service_may_subscribe(std::string_view filter) { return filter == "$fleetsign/methods/res/#"; }

bool device_may_read(std::string_view topic, bool dps_mode) {
  if (dps_mode) {
    return starts_with(topic, "$dps/registrations/res/");
  }
  return starts_with(topic, "$iothub/methods/POST/") || starts_with(topic, "$iothub/twin/res/") ||
         starts_with(topic, "$iothub/twin/PATCH/properties/desired/");
}
bool service_may_read(std::string_view topic) {
  return starts_with(topic, "$fleetsign/methods/res/");
}

}  // namespace fleetsign::broker
