#include "fleetsign/engine/ca_recovery.hpp"

#include <Poco/JSON/Object.h>

#include <algorithm>
#include <sstream>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

bool same_id(const hsm::KeyRef& a, const std::string& key_uri) {
  if (key_uri.empty()) {
    return false;  // an external CA: its key lives elsewhere
  }
  return hsm::KeyRef::parse_uri(key_uri).id == a.id;
}

bool referenced(const hsm::KeyRef& key, const std::vector<CaRecord>& cas) {
  return std::any_of(cas.begin(), cas.end(),
                     [&](const CaRecord& ca) { return same_id(key, ca.key_uri); });
}

}  // namespace

std::vector<std::string> recover_pending_cas(Stores& registry, hsm::Token& token,
                                             bool private_token) {
  std::vector<std::string> notices;
  const auto pending = registry.list_pending_cas();
  if (pending.empty()) {
    return notices;
  }
  if (private_token) {
    if (const std::size_t n = token.destroy_unidentified_keys(); n > 0) {
      notices.push_back("destroyed " + std::to_string(n) +
                        " half-made key object(s) (no ID) left by an interrupted key "
                        "generation");
    }
  }
  const auto cas = registry.list_cas();
  for (const PendingCa& p : pending) {
    const hsm::KeyRef ref = hsm::KeyRef::parse_uri(p.key_uri);
    std::string what = "an interrupted creation of CA '" + p.name + "' was cleaned up";
    if (!referenced(ref, cas)) {
      const auto keys = token.list_private_keys();
      const bool present = std::any_of(keys.begin(), keys.end(),
                                       [&](const hsm::KeyRef& k) { return k.id == ref.id; });
      token.destroy_key(ref);
      what += present ? ": destroyed its unrecorded token key " + p.key_uri
                      : ": its key had not been made";
    }
    registry.drop_pending_ca(p.name);
    Poco::JSON::Object detail;
    detail.set("key", p.key_uri);
    std::ostringstream text;
    detail.stringify(text);
    registry.audit("ca.recover", p.name, text.str());
    notices.push_back(what);
  }
  return notices;
}

TokenInventory take_inventory(Stores& registry, hsm::Token& token) {
  TokenInventory inv;
  const auto cas = registry.list_cas();
  const auto keys = token.list_private_keys();
  for (const auto& key : keys) {
    if (!referenced(key, cas)) {
      inv.orphan_keys.push_back(key);
    }
  }
  for (const auto& ca : cas) {
    if (ca.key_uri.empty()) {
      continue;
    }
    const auto id = hsm::KeyRef::parse_uri(ca.key_uri).id;
    if (std::none_of(keys.begin(), keys.end(), [&](const hsm::KeyRef& k) { return k.id == id; })) {
      inv.cas_without_key.push_back(ca);
    }
  }
  inv.pending = registry.list_pending_cas();
  return inv;
}

void refuse_registry_without_cas(Stores& registry, hsm::Token& token,
                                 const std::filesystem::path& registry_file) {
  const auto cas = registry.list_cas();
  const bool any_token_ca =
      std::any_of(cas.begin(), cas.end(), [](const CaRecord& ca) { return !ca.key_uri.empty(); });
  if (any_token_ca || !registry.list_pending_cas().empty()) {
    return;
  }
  const auto keys = token.list_private_keys();
  if (keys.empty()) {
    return;
  }
  throw Error(
      ErrorCode::kRegistryMissing,
      "registry " + redacted_registry_url(registry_file.string()) + " records no CA, but token '" +
          token.label() + "' holds " + std::to_string(keys.size()) + " private key(s) (first: '" +
          keys.front().label +
          "'): the registry was lost or replaced. Restore it (registry.db, or the PostgreSQL "
          "database) from a backup; "
          "a CA whose row is gone cannot be re-attached to its key");
}

}  // namespace fleetsign::engine
