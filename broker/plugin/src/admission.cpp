// Identity and admission: see admission.hpp.
#include "admission.hpp"

#include "fleetsign/engine/x509_ossl.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::broker {

namespace {

constexpr std::string_view kServicePrefix = "fleetsign-service-";

Admission refuse(Admission a, std::string rule, std::string reason) {
  a.allowed = false;
  a.rule = std::move(rule);
  a.reason = std::move(reason);
  return a;
}

std::string quoted(std::string_view s) {
  // Bounded: a hostile client id or username must not flood the log.
  constexpr std::size_t kMax = 80;
  return "'" + std::string(s.substr(0, kMax)) + (s.size() > kMax ? "…'" : "'");
}

Admission admit_service(const Admission& base, std::string_view client_id) {
  Admission a = base;
  a.kind = ClientKind::kService;
  if (client_id.substr(0, kServicePrefix.size()) != kServicePrefix) {
    return refuse(a, "service-client-id",
                  "a service certificate must connect with a client id starting with "
                  "'fleetsign-service-', not " +
                      quoted(client_id));
  }
  a.allowed = true;
  a.rule = "service";
  a.reason = "service certificate " + a.sha256;
  return a;
}

}  // namespace

std::string_view client_kind_name(ClientKind kind) {
  switch (kind) {
    case ClientKind::kService:
      return "service";
    case ClientKind::kHubDevice:
      return "hub";
    case ClientKind::kDpsDevice:
      return "dps";
  }
  return "?";
}

std::optional<std::string_view> hub_username_device(std::string_view username) {
  const auto first = username.find('/');
  if (first == std::string_view::npos) {
    return std::nullopt;
  }
  const std::string_view rest = username.substr(first + 1);
  const auto second = rest.find('/');
  if (second == std::string_view::npos || second == 0 ||
      rest.substr(second + 1, 13) != "?api-version=") {
    return std::nullopt;
  }
  return rest.substr(0, second);
}

std::optional<std::string_view> dps_username_device(std::string_view username,
                                                    std::string_view id_scope) {
  const std::string prefix = std::string(id_scope) + "/registrations/";
  if (id_scope.empty() || username.substr(0, prefix.size()) != prefix) {
    return std::nullopt;
  }
  const std::string_view rest = username.substr(prefix.size());
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0 ||
      rest.substr(slash + 1, 12) != "api-version=") {
    return std::nullopt;
  }
  return rest.substr(0, slash);
}

Admission admit(const BrokerConfig& config, engine::Authenticator& auth,
                const ConnectRequest& request) {
  Admission a;
  if (request.leaf == nullptr) {
    return refuse(a, "no-certificate", "the client presented no certificate");
  }
  engine::CertSummary leaf;
  try {
    leaf = request.leaf_cert != nullptr
               ? engine::summarize_certificate(request.leaf_cert, *request.leaf)
               : engine::summarize_certificate(*request.leaf);
  } catch (const Error& e) {
    return refuse(a, "chain-malformed", e.what());
  }
  a.sha256 = leaf.sha256;
  a.serial = leaf.serial;
  if (config.service_sha256.count(leaf.sha256) != 0) {
    return admit_service(a, request.client_id);
  }
  // 1. Which protocol the username speaks, and the ID it claims.
  std::optional<std::string_view> claimed = hub_username_device(request.username);
  if (claimed) {
    a.kind = ClientKind::kHubDevice;
  } else if ((claimed = dps_username_device(request.username, config.id_scope))) {
    a.kind = ClientKind::kDpsDevice;
  } else {
    return refuse(a, "username-invalid",
                  "username " + quoted(request.username) +
                      " is neither '{host}/{deviceId}/?api-version=…' nor '" + config.id_scope +
                      "/registrations/{registrationId}/api-version=…'");
  }
  // 2. One identity: the certificate's CN, the client id and the username agree.
  a.device_id = leaf.common_name;
  if (const auto bad = policy::check_device_id(config.policy.device_id, leaf.common_name)) {
    return refuse(a, "registration-id-invalid", "certificate CN: " + *bad);
  }
  if (request.client_id != leaf.common_name) {
    return refuse(a, "client-id-mismatch",
                  "client id " + quoted(request.client_id) + " is not the certificate's CN '" +
                      leaf.common_name + "'");
  }
  if (*claimed != leaf.common_name) {
    return refuse(a, "registration-id-mismatch",
                  "the username names " + quoted(*claimed) + ", the certificate's CN is '" +
                      leaf.common_name + "'");
  }
  // 3. The decision. A DPS device that it refuses may still connect to hear DPS's 401 on its
  // register request, unless that would displace a live connection of the same client id.
  engine::AuthDecision d;
  try {
    d = auth.check(std::span<const engine::Der>(request.leaf, 1), request.now, *claimed);
  } catch (const Error& e) {
    // The registry could not answer: refuse (fail closed) and say why.
    return refuse(a, "registry-error", e.what());
  }
  if (a.kind == ClientKind::kDpsDevice && !d.allowed) {
    if (request.id_in_use) {
      return refuse(a, d.rule,
                    d.reason +
                        "; a DPS connection the decision refuses never replaces the live "
                        "connection of '" +
                        leaf.common_name + "'");
    }
    a.allowed = true;
    a.hears_refusal = true;
    a.rule = "dps-connect-refused";
    a.reason =
        "DPS registration connection; its register request will be answered 401 (" + d.rule + ")";
    return a;
  }
  a.allowed = d.allowed;
  a.rotation_only = d.allowed && d.rotation_only;
  a.rule = d.rule;
  a.reason = d.reason;
  return a;
}

}  // namespace fleetsign::broker
