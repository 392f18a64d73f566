// Identity and admission (PROTOCOL.md, "Identity and admission"): who a connecting client is,
// from its certificate, client id and username, and whether it may connect. Runs on the broker's
// main thread with that thread's Authenticator.
#pragma once

#include <openssl/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "config.hpp"
#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/x509.hpp"

namespace fleetsign::broker {

enum class ClientKind { kService, kHubDevice, kDpsDevice };
std::string_view client_kind_name(ClientKind kind);  // "service" | "hub" | "dps"

// The device ID a username claims: hub "{host}/{deviceId}/?api-version=…", DPS
// "{idScope}/registrations/{registrationId}/api-version=…" (the ID scope must be `id_scope`).
std::optional<std::string_view> hub_username_device(std::string_view username);
std::optional<std::string_view> dps_username_device(std::string_view username,
                                                    std::string_view id_scope);

struct ConnectRequest {
  std::string_view client_id, username;  // username may be empty (none sent)
  const engine::Der* leaf = nullptr;     // the certificate TLS verified; null when none
  std::int64_t now = 0;                  // unix seconds
  // Another live connection holds this client id: a DPS connection the decision refuses must not
  // replace it (mosquitto would disconnect the live one).
  bool id_in_use = false;
  X509* leaf_cert = nullptr;  // *leaf decoded, when the caller has it (null: admit decodes it)
};

struct Admission {
  bool allowed = false;
  ClientKind kind = ClientKind::kHubDevice;
  std::string rule;    // the decision's rule ("enrollment-group", "client-id-mismatch", …)
  std::string reason;  // a sentence for the broker log
  std::string device_id, sha256, serial;
  // An incident pins the certificate (the decision's "incident-pinned"): the session may only
  // receive the rotation methods and answer them (PROTOCOL.md, "Incidents").
  bool rotation_only = false;
  // A DPS device the decision refuses, connected only to hear DPS's 401: not a session of the
  // device (the engine's confirmation and `device list --connected` never see it).
  bool hears_refusal = false;
};

// The decision: a service client by thumbprint; a hub device exactly when the Authenticator
// allows its leaf and CN == client id == the username's device; a DPS device when its CN is a
// valid device ID and equals the client id and the username's registration ID, and either the
// decision allows it or no live connection holds that client id (a refused device is then
// admitted only to hear DPS's 401 on its register request; it never displaces a live session).
// Never throws for a client's input: a malformed certificate is a refusal ("chain-malformed").
Admission admit(const BrokerConfig& config, engine::Authenticator& auth,
                const ConnectRequest& request);

}  // namespace fleetsign::broker
