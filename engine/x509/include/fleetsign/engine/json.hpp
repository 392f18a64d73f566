// Minimal JSON text helpers for hand-built lines on hot paths (manifests, audit details), where
// building a Poco::JSON object per line would cost more than the line. Thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace fleetsign::engine {

// Appends `value` as a JSON string literal, quotes included.
void append_json_string(std::string& out, std::string_view value);
inline std::string json_quote(std::string_view value) {
  std::string out;
  append_json_string(out, value);
  return out;
}

}  // namespace fleetsign::engine
