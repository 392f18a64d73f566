// IoT Hub's and DPS's device topics (see broker/PROTOCOL.md), parsed strictly: a topic is
// hostile input, so every part is checked against a small alphabet and a length before use.
// Private to device/. Pure functions, thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fleetsign::device::topics {

inline constexpr std::string_view kMethodsSubscription = "$iothub/methods/POST/#";
inline constexpr std::string_view kTwinResponses = "$iothub/twin/res/#";
inline constexpr std::string_view kDesiredPatches = "$iothub/twin/PATCH/properties/desired/#";
inline constexpr std::string_view kDpsResponses = "$dps/registrations/res/#";

// [A-Za-z0-9_.-]{1,128}: a method name (PROTOCOL.md) and, with ':' added, a request id.
bool is_method_name(std::string_view name) noexcept;
bool is_request_id(std::string_view rid) noexcept;

// "$iothub/methods/POST/{name}/?$rid={rid}"; `name` is empty when it fails is_method_name
// (the call can still be answered 400 on its rid). nullopt when there is no valid rid.
struct MethodCall {
  std::string name, rid;
};
std::optional<MethodCall> parse_method_call(std::string_view topic);

// "$iothub/twin/res/{status}/?$rid={rid}[&$version={n}]" and
// "$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]".
struct Response {
  int status = 0;
  std::string rid;
  std::optional<std::int64_t> version;      // $version
  std::optional<std::int64_t> retry_after;  // retry-after, seconds
};
std::optional<Response> parse_twin_response(std::string_view topic);
std::optional<Response> parse_dps_response(std::string_view topic);
// "$iothub/twin/PATCH/properties/desired/?$version={n}": the version (nullopt if not that topic).
std::optional<std::int64_t> parse_desired_patch(std::string_view topic);

std::string method_response(int status, std::string_view rid);
std::string twin_get(std::string_view rid);
std::string twin_report(std::string_view rid);
std::string dps_register(std::string_view rid);
std::string dps_status(std::string_view rid, std::string_view operation_id);

// The usernames the Azure SDKs send.
std::string hub_username(std::string_view host, std::string_view device_id);
std::string dps_username(std::string_view id_scope, std::string_view registration_id);

// "host[:port]" from a DPS assignment: host [A-Za-z0-9.-]{1,253}, port 1..65535 (default
// `default_port`). nullopt when malformed.
struct HostPort {
  std::string host;
  int port = 0;
};
std::optional<HostPort> parse_host_port(std::string_view text, int default_port);

}  // namespace fleetsign::device::topics
