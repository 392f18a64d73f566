// The decision a cloud (Azure DPS / IoT Hub) makes when a device presents its certificate chain,
// with the rule that decided it:
//   - the leaf's CN is the registration ID and must be a valid device ID in the cloud's alphabet
//     (letters, digits and "-._:", at most 128: the widest a policy allows);
//   - a revoked certificate is refused;
//   - an individual enrollment for that ID wins over any group: disabled refuses, even when an
//     enabled group would accept; enabled allows only the certificate (or SHA-256 thumbprint) in
//     its primary or secondary slot, valid at the time;
//   - otherwise the chain must validate (RFC 5280: signatures, validity at the time,
//     basicConstraints, pathLen, name constraints, keyUsage/EKU) to a *verified* CA sitting in a
//     slot of an *enabled* group. As in DPS, a CA in a slot counts as verified when it proved
//     possession itself, or when its registry path validates up to a CA that did (an intermediate
//     signed by a verified root needs no proof of its own);
//   - incidents (stores.hpp, IncidentStore), checked before everything above: under a CA that is
//     marked revoked every certificate is refused ("ca-revoked"), unless an incident is open for
//     that CA; while one is open, a certificate whose issuer is that CA is admitted only when it
//     is exactly one the registry recorded (same serial, SHA-256 thumbprint, CN = the recorded
//     device, state issued — or revoked by the incident's own reason after it opened) and
//     recorded before the operator's compromise time, and then only for the rotation methods
//     ("incident-pinned", rotation_only); else "incident-unrecorded" (a certificate forged with
//     the stolen key) or "incident-after-compromise". An open lot or site incident (not
//     keyCompromise) pins the recorded certificates of that lot or site the same way;
//   - a time before any certificate's notBefore is "not-yet-valid"; after the leaf's notAfter
//     "expired", after a CA's notAfter "ca-expired".
//
// Two paths give the same answers (the table-driven tests run both): a fast path for leaves issued
// by a CA of this registry — the CA paths are validated once, with OpenSSL, when the Authenticator
// is built, and each check verifies one signature with precomputed tables — and OpenSSL's
// X509_verify_cert for anything else. Not thread-safe (it queries the registry): one per thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "fleetsign/engine/stores.hpp"
#include "fleetsign/engine/x509.hpp"

namespace fleetsign::engine {

struct AuthDecision {
  bool allowed = false;
  // Stable rule names: "individual-enrollment", "enrollment-group" (allowed); "chain-malformed",
  // "registration-id-invalid", "registration-id-mismatch", "revoked", "individual-disabled",
  // "individual-mismatch", "not-yet-valid", "expired", "chain-invalid", "ca-not-verified",
  // "group-disabled", "ca-expired", "no-enrollment" (refused); "incident-pinned" (allowed, for
  // the rotation methods only), "incident-unrecorded", "incident-after-compromise", "ca-revoked"
  // (refused).
  std::string rule;
  std::string reason;  // a sentence naming the enrollment, slot, CA or check that decided
  std::string registration_id;
  std::string enrollment;  // group name, or the registration ID for an individual enrollment
  std::string slot;        // "primary" | "secondary" when allowed
  std::string leaf_serial, leaf_sha256;
  bool fast_path = false;
  // Allowed only to answer the rotation methods (an incident pins the certificate): the broker
  // lets such a session receive $iothub/methods/POST/# and answer, nothing else.
  bool rotation_only = false;
};

class Authenticator final {
 public:
  // Loads groups and CAs from the registry and validates every registry CA's path once.
  explicit Authenticator(Stores& registry);
  ~Authenticator();
  Authenticator(const Authenticator&) = delete;  // owns OpenSSL stores and verifiers
  Authenticator& operator=(const Authenticator&) = delete;

  // `chain`: the leaf first, then any intermediates the device presents. `at`: unix seconds.
  // `claimed_id`: the registration ID the device sends (empty: take the CN); refused with
  // "registration-id-mismatch" when it differs from the CN. `force_openssl`: skip the fast path
  // (for tests that compare both).
  AuthDecision check(std::span<const Der> chain, std::int64_t at, std::string_view claimed_id = {},
                     bool force_openssl = false);

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace fleetsign::engine
