#include "fleetsign/engine/json.hpp"

#include <Poco/JSON/Object.h>

#include <sstream>

namespace fleetsign::engine {

std::string json_object(JsonFields fields) {
  Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  for (const auto& [key, value] : fields) {
    const std::string k(key);
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::nullptr_t>) {
            o.set(k, Poco::Dynamic::Var());
          } else {
            o.set(k, v);
          }
        },
        value);
  }
  std::ostringstream s;
  o.stringify(s);
  return s.str();
}

void append_json_string(std::string& out, std::string_view value) {
  static const char* kHex = "0123456789abcdef";
  out.push_back('"');
  for (const char ch : value) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 15]);
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[i + k]); };
    const unsigned char c = byte(0);
    const std::size_t n = c < 0x80                 ? 1
                          : c >= 0xC2 && c <= 0xDF ? 2
                          : c >= 0xE0 && c <= 0xEF ? 3
                          : c >= 0xF0 && c <= 0xF4 ? 4
                                                   : 0;
    bool ok = n != 0 && n <= text.size() - i;
    for (std::size_t k = 1; ok && k < n; ++k) ok = (byte(k) & 0xC0) == 0x80;
    // The second byte's range rules out overlong forms, surrogates and code points > U+10FFFF.
    if (ok && n >= 3) {
      ok = !(c == 0xE0 && byte(1) < 0xA0) && !(c == 0xED && byte(1) > 0x9F) &&
           !(c == 0xF0 && byte(1) < 0x90) && !(c == 0xF4 && byte(1) > 0x8F);
    }
    if (ok) {
      out.append(text.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER
      ++i;
    }
  }
  return out;
}

}  // namespace fleetsign::engine
