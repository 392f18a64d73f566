// KeyRef: how a token key is named in config, registry and output — a small value, written as an
// RFC 7512 URI: pkcs11:token=Fleet;id=%01%02…;object=root-ca;type=private
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fleetsign::hsm {

enum class KeyType { kEcP256, kEcP384, kRsa2048, kRsa3072, kRsa4096 };

struct KeyRef {
  std::string token_label;
  std::vector<std::uint8_t> id;  // CKA_ID
  std::string label;             // CKA_LABEL

  std::string uri() const;
  // Parses the attributes fleetsign writes (token, id, object, type). Throws
  // Error(kInvalidArgument) naming the URI on anything else.
  static KeyRef parse_uri(std::string_view uri);
  bool operator==(const KeyRef&) const = default;
};

}  // namespace fleetsign::hsm
