// The topics of PROTOCOL.md: parsing what clients publish (every byte hostile: bounded, checked
// against a small alphabet before it is echoed into a topic) and building what the plugin sends.
// Pure functions on string views; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fleetsign::broker {

// A request id a device chose ($rid): echoed into answer topics, so only [A-Za-z0-9._-]{1,64}.
bool valid_device_rid(std::string_view rid);
// A service call's rid, and the plugin's own drid: 32 lower-case hex digits (128 bits).
bool valid_call_rid(std::string_view rid);
// A method name: [A-Za-z0-9_.-]{1,128}.
bool valid_method_name(std::string_view name);

// What a publish asks for, by its topic. Fields not used by a kind stay empty. A topic that
// names a known kind but breaks its grammar is kMalformed (the plugin answers 400 where it can).
struct Request {
  enum class Kind {
    kNone,            // not a fleetsign / IoT Hub / DPS topic
    kMalformed,       // a known prefix with a broken grammar
    kMethodCall,      // $fleetsign/methods/POST/{device}/{method}/?$rid=&$ct=&$rt=
    kMethodResponse,  // $iothub/methods/res/{status}/?$rid={drid}
    kTwinGet,         // $iothub/twin/GET/?$rid=
    kTwinReported,    // $iothub/twin/PATCH/properties/reported/?$rid=
    kDpsRegister,     // $dps/registrations/PUT/iotdps-register/?$rid=
    kDpsStatus,       // $dps/registrations/GET/iotdps-get-operationstatus/?$rid=&operationId=
  };
  Kind kind = Kind::kNone;
  std::string_view device_id, method, rid, operation_id;
  int status = 0;               // kMethodResponse: 100..999
  int connect_timeout_s = 0;    // kMethodCall: $ct, 0..300 (default 0)
  int response_timeout_s = 30;  // kMethodCall: $rt, 1..300 (default 30)
  std::string problem;          // kMalformed: why, for the log and a 400 answer
};

// Parses a published topic; views point into `topic`.
Request parse_request(std::string_view topic);

// Topics the plugin publishes.
std::string device_method_topic(std::string_view method, std::string_view drid);
std::string service_answer_topic(int status, std::string_view rid);
std::string twin_answer_topic(int status, std::string_view rid);
std::string twin_reported_answer_topic(std::string_view rid, std::int64_t version);
std::string twin_desired_topic(std::int64_t version);
std::string dps_answer_topic(int status, std::string_view rid, bool retry_after);

// Subscriptions a client may hold (the ACL's subscribe check), by filter text.
// The rotation protocol's methods (PROTOCOL.md, "Rotation methods"), and getCertificate that
// confirms one: all a session pinned by an incident may be called with.
bool rotation_method(std::string_view method);
// Why a call of `method` to pinned `device` is refused (400, errorCode 400027).
std::string rotation_only_refusal(std::string_view device, std::string_view method);
bool device_may_subscribe(std::string_view filter, bool dps_mode);
bool service_may_subscribe(std::string_view filter);
// What a client may receive: the plugin addresses everything it sends to one client id, so a
// client reads only the answer topics of its own kind.
bool device_may_read(std::string_view topic, bool dps_mode);
bool service_may_read(std::string_view topic);

}  // namespace fleetsign::broker
