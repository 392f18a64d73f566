// JSON text, one writer per format. Small records (audit details, one line per device in an
// export) are built with json_object, which serialises through Poco::JSON: every string is
// escaped by the library, never by hand, and keys keep the order given. `append_json_string` is
// the one escaper for the batch hot path (manifests), where a Poco object per line would cost more
// than the line; it produces the same escaping. All functions are pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace fleetsign::engine {

// One member value: a string, an integer, a boolean, or null.
using JsonScalar = std::variant<std::string, std::int64_t, bool, std::nullptr_t>;
using JsonFields = std::initializer_list<std::pair<std::string_view, JsonScalar>>;

// {"key": value, …} on one line, keys in the order given. Strings must be UTF-8.
std::string json_object(JsonFields fields);

// Appends `value` as a JSON string literal, quotes included.
void append_json_string(std::string& out, std::string_view value);
inline std::string json_quote(std::string_view value) {
  std::string out;
  append_json_string(out, value);
  return out;
}

// `text` as well-formed UTF-8 (RFC 3629): every byte that does not belong to a valid sequence
// (stray continuation bytes, truncated, overlong or surrogate forms, code points above U+10FFFF) is
// replaced by U+FFFD. For messages that quote hostile bytes (a JSON parser's error names the byte
// it refused) before they go into JSON, which must be UTF-8: Poco writes strings byte for byte.
std::string valid_utf8(std::string_view text);

}  // namespace fleetsign::engine
