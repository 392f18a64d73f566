#include "topics.hpp"

namespace fleetsign::jobs {

namespace {

bool is_lower_hex(std::string_view s) {
  for (const char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

}  // namespace

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const std::uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 0x0f];
  }
  return out;
}

std::string request_topic(const MethodRequest& request, std::string_view rid) {
  std::string topic(kRequestPrefix);
  topic += request.device.str();
  topic += '/';
  topic += request.method;
  topic += "/?$rid=";
  topic += rid;
  topic += "&$ct=" + std::to_string(request.connect_timeout_s);
  topic += "&$rt=" + std::to_string(request.response_timeout_s);
  return topic;
}

std::optional<AnswerTopic> parse_answer_topic(std::string_view topic) {
  if (topic.substr(0, kAnswerPrefix.size()) != kAnswerPrefix) {
    return std::nullopt;
  }
  std::string_view rest = topic.substr(kAnswerPrefix.size());
  // "{status}/?{query}"
  if (rest.size() < 5 || rest.substr(3, 2) != "/?") {
    return std::nullopt;
  }
  int status = 0;
  for (std::size_t i = 0; i < 3; ++i) {
    if (rest[i] < '0' || rest[i] > '9') {
      return std::nullopt;
    }
    status = status * 10 + (rest[i] - '0');
  }
  // Any three-digit status, as the broker forwards it (a device may answer 600..999).
  if (status < 100 || status > 999) {
    return std::nullopt;
  }
  std::string_view query = rest.substr(5);
  std::optional<std::string> rid;
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (param.substr(0, 5) == "$rid=") {
      if (rid) {
        return std::nullopt;  // two rids: ambiguous, so neither counts
      }
      rid = std::string(param.substr(5));
    }
  }
  if (!rid || rid->size() != kRidHexLength || !is_lower_hex(*rid)) {
    return std::nullopt;
  }
  return AnswerTopic{status, std::move(*rid)};
}

}  // namespace fleetsign::jobs
