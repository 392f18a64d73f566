// IoT Hub's service credentials: the connection string, parsed strictly, and the SAS token made
// from it (HMAC-SHA256 with OpenSSL).
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <array>
#include <cctype>
#include <map>

#include "fleetsign/error.hpp"
#include "fleetsign/jobs/iothub_trigger.hpp"

namespace fleetsign::jobs {

namespace {

constexpr std::string_view kWhat = "service connection string";

Error bad(const std::string& why) {
  return Error(ErrorCode::kInvalidArgument, std::string(kWhat) + ": " + why);
}

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Strict base64 (RFC 4648 §4, padded): nullopt for anything else. Never echoes the input.
std::optional<std::vector<std::uint8_t>> base64_decode(std::string_view text) {
  if (text.empty() || text.size() % 4 != 0) {
    return std::nullopt;
  }
  std::vector<std::uint8_t> out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    std::array<int, 4> v{};
    int pad = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      const char c = text[i + j];
      if (c == '=' && last && j >= 2) {
        ++pad;
        v[j] = 0;
        continue;
      }
      v[j] = pad > 0 ? -1 : base64_value(c);
      if (v[j] < 0) {
        OPENSSL_cleanse(out.data(), out.size());
        return std::nullopt;
      }
    }
    const std::uint32_t n = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out.push_back(static_cast<std::uint8_t>(n >> 16));
    if (pad < 2) out.push_back(static_cast<std::uint8_t>(n >> 8));
    if (pad < 1) out.push_back(static_cast<std::uint8_t>(n));
  }
  return out;
}

bool is_host_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '.';
}

// host[:port]: DNS labels of letters, digits and '-', a port in 1..65535.
std::optional<std::string> check_host(std::string_view value) {
  if (value.find("://") != std::string_view::npos || value.find('/') != std::string_view::npos) {
    return "HostName must be a host name such as myhub.azure-devices.net, not a URL";
  }
  const std::size_t colon = value.find(':');
  const std::string_view name = value.substr(0, colon);
  if (name.empty() || name.size() > 253 || name.front() == '.' || name.back() == '.' ||
      name.front() == '-') {
    return "HostName is not a host name";
  }
  for (const char c : name) {
    if (!is_host_char(c)) {
      return "HostName contains a character that no host name has";
    }
  }
  if (colon != std::string_view::npos) {
    const std::string_view port = value.substr(colon + 1);
    int n = 0;
    bool ok = !port.empty() && port.size() <= 5;
    for (const char c : port) {
      ok = ok && c >= '0' && c <= '9';
      n = ok ? n * 10 + (c - '0') : 0;
    }
    if (!ok || n < 1 || n > 65535) {
      return "HostName's port must be a number in 1..65535";
    }
  }
  return std::nullopt;
}

bool is_key_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_' || c == '.';
}

// A part's name, for a message: only when it cannot be a piece of the key.
std::string printable_name(std::string_view name, std::size_t index) {
  bool plain = !name.empty() && name.size() <= 32;
  for (const char c : name) {
    plain = plain && std::isalpha(static_cast<unsigned char>(c)) != 0;
  }
  return plain ? "'" + std::string(name) + "'" : "part " + std::to_string(index + 1);
}

}  // namespace

ServiceConnectionString::~ServiceConnectionString() {
  if (!m_key.empty()) {
    OPENSSL_cleanse(m_key.data(), m_key.size());
  }
}

ServiceConnectionString ServiceConnectionString::parse(std::string_view text) {
  if (!text.empty() && text.back() == ';') {
    text.remove_suffix(1);  // the portal's copy has none, some tools add one
  }
  if (text.empty()) {
    throw bad("is empty");
  }
  std::map<std::string, std::string_view> parts;
  std::size_t index = 0;
  while (true) {
    const std::size_t semi = text.find(';');
    const std::string_view part = text.substr(0, semi);
    const std::size_t eq = part.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      throw bad("part " + std::to_string(index + 1) + " is not Name=Value");
    }
    const std::string name(part.substr(0, eq));
    if (name == "DeviceId" || name == "ModuleId") {
      throw bad("this is a device connection string (it has " + name +
                "); invoking methods needs a service connection string, with "
                "SharedAccessKeyName (a policy such as 'service')");
    }
    if (name != "HostName" && name != "SharedAccessKeyName" && name != "SharedAccessKey") {
      throw bad("unknown part " + printable_name(name, index) +
                "; expected HostName, SharedAccessKeyName and SharedAccessKey");
    }
    if (!parts.emplace(name, part.substr(eq + 1)).second) {
      throw bad(name + " appears twice");
    }
    if (part.size() == eq + 1) {
      throw bad(name + " is empty");
    }
    ++index;
    if (semi == std::string_view::npos) {
      break;
    }
    text.remove_prefix(semi + 1);
  }
  for (const char* required : {"HostName", "SharedAccessKeyName", "SharedAccessKey"}) {
    if (parts.count(required) == 0) {
      throw bad(std::string("missing ") + required);
    }
  }
  ServiceConnectionString out;
  if (auto why = check_host(parts["HostName"])) {
    throw bad(*why);
  }
  out.m_host = std::string(parts["HostName"]);
  const std::string_view key_name = parts["SharedAccessKeyName"];
  for (const char c : key_name) {
    if (!is_key_name_char(c) || key_name.size() > 256) {
      throw bad("SharedAccessKeyName may hold only letters, digits, '-', '_' and '.'");
    }
  }
  out.m_key_name = std::string(key_name);
  auto key = base64_decode(parts["SharedAccessKey"]);
  if (!key) {
    throw bad("SharedAccessKey is not base64 (the key itself is not shown)");
  }
  out.m_key = std::move(*key);
  return out;
}

std::string url_encode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0x0f];
    }
  }
  return out;
}

std::string sas_token(const ServiceConnectionString& connection, std::int64_t expiry) {
  std::string resource = connection.host();
  for (char& c : resource) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  const std::string sr = url_encode(resource);
  const std::string se = std::to_string(expiry);
  const std::string to_sign = sr + "\n" + se;
  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  unsigned int mac_len = 0;
  const auto& key = connection.key();
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(to_sign.data()), to_sign.size(), mac.data(),
           &mac_len) == nullptr) {
    throw Error(ErrorCode::kInternal, "HMAC-SHA256 for the IoT Hub SAS token failed");
  }
  std::array<unsigned char, 4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1> b64{};
  const int b64_len = EVP_EncodeBlock(b64.data(), mac.data(), static_cast<int>(mac_len));
  const std::string sig(reinterpret_cast<const char*>(b64.data()),
                        static_cast<std::size_t>(b64_len));
  return "SharedAccessSignature sr=" + sr + "&sig=" + url_encode(sig) + "&se=" + se +
         "&skn=" + url_encode(connection.key_name());
}

}  // namespace fleetsign::jobs
