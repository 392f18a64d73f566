#include "topics.hpp"

#include <charconv>

namespace fleetsign::device::topics {

namespace {

constexpr std::size_t kMaxToken = 128;

bool is_token_char(char c, bool colon) noexcept {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-' || (colon && c == ':');
}

bool is_token(std::string_view s, bool colon) noexcept {
  if (s.empty() || s.size() > kMaxToken) return false;
  for (const char c : s) {
    if (!is_token_char(c, colon)) return false;
  }
  return true;
}

std::optional<std::int64_t> to_int(std::string_view s) {
  std::int64_t v = 0;
  if (s.empty() || s.size() > 18) return std::nullopt;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < 0) return std::nullopt;
  return v;
}

// The value of `key` in "k=v&k=v"; nullopt when absent, empty when present without value.
std::optional<std::string_view> query_value(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const std::size_t eq = pair.find('=');
    if (pair.substr(0, eq) == key) {
      return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

// "{prefix}{status}/?{query}": the status and the query, or nullopt.
std::optional<Response> parse_response(std::string_view topic, std::string_view prefix) {
  if (topic.substr(0, prefix.size()) != prefix) return std::nullopt;
  topic.remove_prefix(prefix.size());
  const std::size_t slash = topic.find("/?");
  if (slash == std::string_view::npos) return std::nullopt;
  const auto status = to_int(topic.substr(0, slash));
  const std::string_view query = topic.substr(slash + 2);
  const auto rid = query_value(query, "$rid");
  if (!status || *status > 999 || !rid || !is_request_id(*rid)) return std::nullopt;
  Response r;
  r.status = static_cast<int>(*status);
  r.rid = std::string(*rid);
  if (const auto v = query_value(query, "$version")) r.version = to_int(*v);
  if (const auto v = query_value(query, "retry-after")) r.retry_after = to_int(*v);
  return r;
}

}  // namespace

bool is_method_name(std::string_view name) noexcept { return is_token(name, false); }
bool is_request_id(std::string_view rid) noexcept { return is_token(rid, true); }

std::optional<MethodCall> parse_method_call(std::string_view topic) {
  constexpr std::string_view kPrefix = "$iothub/methods/POST/";
  if (topic.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  topic.remove_prefix(kPrefix.size());
  const std::size_t slash = topic.find("/?");
  if (slash == std::string_view::npos) return std::nullopt;
  const auto rid = query_value(topic.substr(slash + 2), "$rid");
  if (!rid || !is_request_id(*rid)) return std::nullopt;
  const std::string_view name = topic.substr(0, slash);
  return MethodCall{is_method_name(name) ? std::string(name) : std::string(), std::string(*rid)};
}

std::optional<Response> parse_twin_response(std::string_view topic) {
  return parse_response(topic, "$iothub/twin/res/");
}

std::optional<Response> parse_dps_response(std::string_view topic) {
  return parse_response(topic, "$dps/registrations/res/");
}

std::optional<std::int64_t> parse_desired_patch(std::string_view topic) {
  constexpr std::string_view kPrefix = "$iothub/twin/PATCH/properties/desired/?";
  if (topic.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  const auto v = query_value(topic.substr(kPrefix.size()), "$version");
  return v ? to_int(*v) : std::nullopt;
}

std::string method_response(int status, std::string_view rid) {
  return "$iothub/methods/res/" + std::to_string(status) + "/?$rid=" + std::string(rid);
}
std::string twin_get(std::string_view rid) { return "$iothub/twin/GET/?$rid=" + std::string(rid); }
std::string twin_report(std::string_view rid) {
  return "$iothub/twin/PATCH/properties/reported/?$rid=" + std::string(rid);
}
std::string dps_register(std::string_view rid) {
  return "$dps/registrations/PUT/iotdps-register/?$rid=" + std::string(rid);
}
std::string dps_status(std::string_view rid, std::string_view operation_id) {
  return "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=" + std::string(rid) +
         "&operationId=" + std::string(operation_id);
}

std::string hub_username(std::string_view host, std::string_view device_id) {
  return std::string(host) + "/" + std::string(device_id) +
         "/?api-version=2021-04-12&DeviceClientType=fleetsign-device";
}
std::string dps_username(std::string_view id_scope, std::string_view registration_id) {
  return std::string(id_scope) + "/registrations/" + std::string(registration_id) +
         "/api-version=2019-03-31";
}

std::optional<HostPort> parse_host_port(std::string_view text, int default_port) {
  HostPort out{std::string(), default_port};
  const std::size_t colon = text.rfind(':');
  std::string_view host = text.substr(0, colon);
  if (colon != std::string_view::npos) {
    const auto port = to_int(text.substr(colon + 1));
    if (!port || *port < 1 || *port > 65535) return std::nullopt;
    out.port = static_cast<int>(*port);
  }
  if (host.empty() || host.size() > 253) return std::nullopt;
  for (const char c : host) {
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '-')) {
      return std::nullopt;
    }
  }
  out.host = std::string(host);
  return out;
}

}  // namespace fleetsign::device::topics
