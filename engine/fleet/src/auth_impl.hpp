// The Authenticator's insides (auth.hpp has the contract), shared by auth.cpp (loading, the fast
// and OpenSSL paths, the decision) and auth_incident.cpp (the pins of open incidents). Private
// to the fleet room.
#pragma once

#include <openssl/x509_vfy.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "fixed_key_verifier.hpp"
#include "fleetsign/engine/auth.hpp"
#include "leaf.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

namespace auth_detail {

struct Anchor {
  std::string group;
  Slot slot = Slot::kPrimary;
  bool enabled = false;
};

struct Ca {
  CaRecord rec;
  ossl::X509Ptr x509;
  std::string subject_der;                 // key of the issuer lookup
  std::unique_ptr<FixedKeyVerifier> fast;  // P-256 keys
  // SHA-256 of its whole SubjectPublicKeyInfo (algorithm, parameters, key): the issuer's part of
  // a remembered signature's identity (auth.cpp). `key_id_ok` false: nothing is remembered.
  std::array<std::uint8_t, 32> key_id{};
  bool key_id_ok = false;
  bool path_ok = false;         // its chain to its root verifies (signatures, pathLen)
  bool constrained = false;     // name/policy constraints: leave it to OpenSSL
  std::vector<Anchor> anchors;  // the group slots it sits in
  // Verified itself, or issued (path_ok) below a verified CA: DPS admits an intermediate signed
  // by a verified CA without a proof of possession of its own. `vouched_by` names that CA.
  bool vouched = false;
  std::string vouched_by;
};

using StorePtr = std::unique_ptr<X509_STORE, ossl::Deleter<X509_STORE_free>>;

inline AuthDecision refuse(std::string rule, std::string reason) {
  AuthDecision d;
  d.rule = std::move(rule);
  d.reason = std::move(reason);
  return d;
}

// Whether `issuer`'s key signed the leaf (false for an unsupported or inconsistent algorithm).
bool leaf_signed_by(const Ca& issuer, const LeafView& leaf);
// The leaf outside its validity at `at`: "not-yet-valid" or "expired"; nullopt inside it.
std::optional<AuthDecision> outside_validity(const LeafView& leaf, std::int64_t at);

}  // namespace auth_detail

// An incident as the decision uses it.
struct OpenIncident {
  std::int64_t id = 0, compromised_at = 0, opened_at = 0;
  std::string reason, scope_kind, scope;
  std::string job_id;  // its replacements carry it as their batch
};

struct Authenticator::Impl {
  Stores& registry;
  std::map<std::string, auth_detail::Ca> cas;
  std::map<std::string, OpenIncident> ca_incidents;  // CA name → its open incident
  std::map<std::string, std::int64_t> revoked_cas;   // CA name → when it was marked revoked
  std::vector<OpenIncident> lineage_incidents;       // open lot/site incidents that pin
  // A CA under an open incident → its replacement (the incident job's report): the group slots
  // the compromised CA left hold it, so they are the pinned devices' groups.
  std::map<std::string, std::string> replaced_by;

  std::unordered_map<std::string, std::vector<auth_detail::Ca*>> by_subject;
  auth_detail::StorePtr trusted;  // verified CAs in slots of enabled groups
  auth_detail::StorePtr
      everyone;  // every registry CA: explains refusals (which anchor would have matched)

  explicit Impl(Stores& r) : registry(r) {}

  void load();
  void vouch(auth_detail::Ca& ca);
  AuthDecision decide(const Der& leaf_der, const LeafView& leaf, std::span<const Der> chain,
                      std::int64_t at, bool force_openssl,
                      const std::optional<IndividualEnrollment>& individual);
  AuthDecision fast_path(const auth_detail::Ca& issuer, const LeafView& leaf, std::int64_t at);
  AuthDecision openssl_path(const Der& leaf_der, std::span<const Der> chain, std::int64_t at);
  AuthDecision classify_anchor(const auth_detail::Ca& ca);
  const auth_detail::Ca* ca_for_cert(const X509* cert);
  std::optional<AuthDecision> incident_decision(
      std::span<const Der> chain, const LeafView& leaf, const std::string& cn,
      const std::string& serial, std::int64_t at,
      const std::optional<IndividualEnrollment>& individual);
  // replaced_by from the report of the incident job `job_id` (the CA `scope` and those below it).
  void load_replacements(const std::string& job_id, const std::string& scope);
  const auth_detail::Ca* parent_of(const auth_detail::Ca& ca) const;
  // The first CA at or above `from` under an open incident or revoked; nullptr when none.
  const auth_detail::Ca* compromised_at_or_above(const auth_detail::Ca* from) const;
  AuthDecision ca_revoked(const auth_detail::Ca& ca) const;  // rule "ca-revoked"
  // The leaf's issuer among the registry's CAs (CAs sharing a subject: the key decides).
  const auth_detail::Ca* issuer_of(const LeafView& leaf);
  // A CA certificate of the presented chain that a compromised or revoked registry CA signed and
  // that the registry never made: minted with the stolen key.
  std::optional<AuthDecision> unrecorded_sub_ca(std::span<const Der> chain);
  struct Pin {
    const OpenIncident* incident = nullptr;
    std::string what;                         // "CA 'x'", "lot 'y'"
    const auth_detail::Ca* issuer = nullptr;  // the leaf's registry CA
  };
  AuthDecision pin(const Pin& p, const Der& leaf_der, const LeafView& leaf, const std::string& cn,
                   const std::string& serial, const std::optional<PinnedCert>& rec, std::int64_t at,
                   const std::optional<IndividualEnrollment>& individual);
  // The operator's word still counts for a pinned device: its individual enrollment disabled, or
  // every group it belongs to disabled, refuses it.
  std::optional<AuthDecision> enrollment_refusal(
      const auth_detail::Ca* issuer, const std::optional<IndividualEnrollment>& individual);
};

}  // namespace fleetsign::engine
