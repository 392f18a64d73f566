// The `$fleetsign/methods/…` topics of broker/PROTOCOL.md, built and parsed in one place. Pure,
// thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "fleetsign/jobs/trigger.hpp"

namespace fleetsign::jobs {

inline constexpr std::string_view kServiceClientPrefix = "fleetsign-service-";
inline constexpr std::string_view kRequestPrefix = "$fleetsign/methods/POST/";
inline constexpr std::string_view kAnswerPrefix = "$fleetsign/methods/res/";
inline constexpr std::string_view kAnswerFilter = "$fleetsign/methods/res/#";
inline constexpr std::size_t kRidHexLength = 32;

// Lower-case hex.
std::string to_hex(std::span<const std::uint8_t> bytes);

// `$fleetsign/methods/POST/{deviceId}/{method}/?$rid={rid}&$ct={ct}&$rt={rt}`. The request must
// have passed check_request (the device ID its policy check).
std::string request_topic(const MethodRequest& request, std::string_view rid);

struct AnswerTopic {
  int status = 0;
  std::string rid;
};
// `$fleetsign/methods/res/{status}/?$rid={rid}`: status three digits in 100..599, rid 32
// lower-case hex; other query parameters are ignored. nullopt for anything else.
std::optional<AnswerTopic> parse_answer_topic(std::string_view topic);

}  // namespace fleetsign::jobs
