// What the plugin reads from the home at start-up: HOME/broker/broker.json (PROTOCOL.md, "Files
// in a home") and the home's policy (device-ID rule). Values only; safe to share read-only.
#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "fleetsign/policy/policy.hpp"

namespace fleetsign::broker {

struct BrokerConfig {
  std::filesystem::path home;
  int port = 8883;
  std::vector<std::string> hosts;        // the first is the hub DPS assigns
  std::string id_scope;                  // DPS usernames must carry it
  std::set<std::string> service_sha256;  // upper-case hex, no separators
  policy::Policy policy;

  std::string registry_url;  // from HOME/fleetsign.json; empty: the SQLite file

  // HOME/registry.db, or the PostgreSQL URL (engine::Registry::open takes either).
  std::filesystem::path registry_path() const {
    return registry_url.empty() ? home / "registry.db" : std::filesystem::path(registry_url);
  }
  // "{first host}:{port}": the assignedHub of a DPS registration.
  std::string assigned_hub() const;
};

// Reads HOME/broker/broker.json (bounded, kConfigFileLimit) and HOME/policy.json. Throws
// Error(kIo | kInputTooLarge) when a file cannot be read, Error(kPolicyInvalid) naming the file
// and field when a value is missing or of the wrong type (port 1..65535, hosts non-empty strings,
// id_scope non-empty, service_sha256 64 hex digits each). Unknown fields are left to the CLI
// that writes the file.
BrokerConfig load_broker_config(const std::filesystem::path& home);

// A SHA-256 thumbprint as the config may give it ("ab:cd…", lower case) in the form
// thumbprint_sha256 prints; empty when it is not 64 hex digits.
std::string normalize_thumbprint(std::string_view text);

}  // namespace fleetsign::broker
