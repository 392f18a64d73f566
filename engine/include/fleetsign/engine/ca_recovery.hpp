// Keeping the token's CA keys and the registry's CA rows in step.
//
// A CA is created in four durable steps: (1) a pending row naming the key about to be made
// (its CKA_ID chosen up front) is committed; (2) the key pair is generated in the token, its
// whole protective template in the one C_GenerateKeyPair call; (3) the certificate's intent is
// committed, then the token signs; (4) one transaction records the CA row, marks the
// certificate issued and drops the pending row. A kill anywhere leaves either a pending row
// (with or without its key) or a complete CA; `recover_pending_cas` removes the former.
//
// Not thread-safe (token enumeration and key destruction); run with the home locked, before
// any signing starts.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "fleetsign/engine/stores.hpp"
#include "fleetsign/hsm/token.hpp"

namespace fleetsign::engine {

// For each pending CA: destroys its key if no CA row references it, then drops the pending
// row (its certificate intent stays, abandoned, so the serial is never reused). With
// `private_token` (the home's embedded SoftHSM2 token, where every key is fleetsign's), also
// destroys key objects without an ID: SoftHSM2 writes a new object before its
// attributes, so a kill inside key generation can leave one. Returns one line per action.
std::vector<std::string> recover_pending_cas(Stores& registry, hsm::Token& token,
                                             bool private_token);

struct TokenInventory {
  std::vector<hsm::KeyRef> orphan_keys;   // token private keys that no CA row references
  std::vector<CaRecord> cas_without_key;  // CA rows whose key is not in the token
  std::vector<PendingCa> pending;         // interrupted creations not yet cleaned up
};
TokenInventory take_inventory(Stores& registry, hsm::Token& token);

// Error(kRegistryMissing) when the registry at `registry_file` records no CA (and no pending
// one) while the token holds private keys: the registry was lost or replaced, and a new CA
// would be a second key beside unreachable ones. Only for a token private to this home.
void refuse_registry_without_cas(Stores& registry, hsm::Token& token,
                                 const std::filesystem::path& registry_file);

}  // namespace fleetsign::engine
