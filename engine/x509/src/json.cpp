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

}  // namespace fleetsign::engine
