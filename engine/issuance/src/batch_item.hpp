// What flows through the batch pipeline: chunks of devices. Private to engine/.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine::batch {

struct Item {
  std::int64_t seq = 0;  // input position, 0-based
  std::string source;    // "dir/x.csr", "bundle.pem:123" or the generated device ID
  Der input;             // CSR DER (CSR inputs)
  std::string device_id;
  Der key_pkcs8;  // generated device key (--generate)
  std::optional<PreparedCert> prepared;
  std::optional<SignedCert> cert;
  ErrorCode error = ErrorCode::kOk;  // per-item outcome: a reject when not kOk
  std::string reason;
  bool committed_before = false;  // resume: certificate already recorded by an earlier run
  bool extensions_ignored = false;

  bool ok() const { return error == ErrorCode::kOk; }
  void reject(ErrorCode code, std::string why) {
    error = code;
    reason = std::move(why);
    prepared.reset();
    cert.reset();
  }
  Item() = default;
  Item(Item&&) noexcept = default;
  Item& operator=(Item&&) noexcept = default;
  Item(const Item&) = delete;  // holds a private key: moved, never copied
  ~Item();                     // wipes key_pkcs8
};

enum Stream {
  kManifestCsv,
  kManifestJsonl,
  kIotHubImport,
  kRejects,
  kBundlePem,
  kBundleJsonl,
  kStreamCount
};

struct Chunk {
  std::int64_t index = 0;
  std::vector<Item> items;
  std::array<std::string, kStreamCount> text;  // rendered stream output of this chunk
};

}  // namespace fleetsign::engine::batch
