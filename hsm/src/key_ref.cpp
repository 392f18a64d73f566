#include "fleetsign/hsm/key_ref.hpp"

#include <cctype>

#include "fleetsign/error.hpp"

namespace fleetsign::hsm {

namespace {

// RFC 7512 pchar without '%' plus a few safe characters; everything else is %XX-encoded.
bool is_plain(unsigned char c) {
  return std::isalnum(c) != 0 || c == '-' || c == '.' || c == '_' || c == '~';
}

void append_encoded(std::string& out, std::string_view value, bool encode_all) {
  static const char* kHex = "0123456789ABCDEF";
  for (const unsigned char c : value) {
    if (!encode_all && is_plain(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string decode(std::string_view value, std::string_view uri) {
  std::string out;
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (value[i] != '%') {
      out.push_back(value[i]);
      continue;
    }
    const int hi = i + 2 < value.size() ? hex_value(value[i + 1]) : -1;
    const int lo = i + 2 < value.size() ? hex_value(value[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      throw Error(ErrorCode::kInvalidArgument,
                  "key URI '" + std::string(uri) + "': bad percent-encoding");
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

}  // namespace

std::string KeyRef::uri() const {
  std::string out = "pkcs11:token=";
  append_encoded(out, token_label, false);
  out += ";id=";
  append_encoded(out, std::string_view(reinterpret_cast<const char*>(id.data()), id.size()), true);
  out += ";object=";
  append_encoded(out, label, false);
  out += ";type=private";
  return out;
}

KeyRef KeyRef::parse_uri(std::string_view uri) {
  constexpr std::string_view kScheme = "pkcs11:";
  if (uri.substr(0, kScheme.size()) != kScheme) {
    throw Error(ErrorCode::kInvalidArgument,
                "key URI '" + std::string(uri) + "': does not start with pkcs11:");
  }
  KeyRef ref;
  std::string_view rest = uri.substr(kScheme.size());
  while (!rest.empty()) {
    const auto end = rest.find(';');
    const std::string_view attr = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
    const auto eq = attr.find('=');
    if (eq == std::string_view::npos) {
      throw Error(ErrorCode::kInvalidArgument,
                  "key URI '" + std::string(uri) + "': attribute without '='");
    }
    const std::string_view name = attr.substr(0, eq);
    const std::string value = decode(attr.substr(eq + 1), uri);
    if (name == "token") {
      ref.token_label = value;
    } else if (name == "id") {
      ref.id.assign(value.begin(), value.end());
    } else if (name == "object") {
      ref.label = value;
    } else if (name != "type") {
      throw Error(
          ErrorCode::kInvalidArgument,
          "key URI '" + std::string(uri) + "': unsupported attribute '" + std::string(name) + "'");
    }
  }
  if (ref.id.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "key URI '" + std::string(uri) + "': no id");
  }
  return ref;
}

}  // namespace fleetsign::hsm
