// The pins of open incidents (auth_impl.hpp): under a compromised CA, or in a lot or site under
// an incident, only exactly the certificate recorded for a device before the compromise is
// admitted, and for the rotation methods only.
#include "auth_impl.hpp"
#include "fleetsign/engine/x509.hpp"

namespace fleetsign::engine {

using auth_detail::Ca;
using auth_detail::leaf_signed_by;
using auth_detail::outside_validity;
using auth_detail::refuse;

// Exactly the recorded certificate, recorded before the compromise: admitted for rotation only.
AuthDecision Authenticator::Impl::pin(const OpenIncident& incident, const std::string& what,
                                      const Der& leaf_der, const LeafView& leaf,
                                      const std::string& cn, const std::string& serial,
                                      const std::optional<PinnedCert>& rec, std::int64_t at) {
  const std::string prefix = "incident " + std::to_string(incident.id) + " (" + what + "): ";
  if (!rec || rec->sha256 != thumbprint_sha256(leaf_der) || rec->device_id != cn) {
    return refuse("incident-unrecorded",
                  prefix + "certificate serial " + serial +
                      " is not exactly one this registry recorded (a forgery with the stolen key "
                      "is refused)");
  }
  const bool revoked_by_incident = rec->state == CertState::kRevoked &&
                                   rec->revocation_reason == incident.reason &&
                                   rec->revoked_at >= incident.opened_at;
  if (rec->state != CertState::kIssued && !revoked_by_incident) {
    return refuse(rec->state == CertState::kRevoked ? "revoked" : "incident-unrecorded",
                  prefix + "certificate serial " + serial + " is " +
                      std::string(cert_state_name(rec->state)));
  }
  if (rec->created_at >= incident.compromised_at) {
    return refuse("incident-after-compromise", prefix + "certificate serial " + serial +
                                                   " was recorded at " + iso8601(rec->created_at) +
                                                   ", not before the compromise at " +
                                                   iso8601(incident.compromised_at));
  }
  if (auto outside = outside_validity(leaf, at)) return *outside;
  AuthDecision d;
  d.allowed = true;
  d.rule = "incident-pinned";
  d.rotation_only = true;
  d.enrollment = rec->device_id;
  d.reason = prefix + "certificate serial " + serial +
             " is the one recorded for this device before the compromise: admitted for the "
             "rotation methods only";
  return d;
}

std::optional<AuthDecision> Authenticator::Impl::incident_decision(const Der& leaf_der,
                                                                   const LeafView& leaf,
                                                                   const std::string& cn,
                                                                   const std::string& serial,
                                                                   std::int64_t at) {
  if (!ca_incidents.empty() || !revoked_cas.empty()) {
    auto it = by_subject.find(
        std::string(reinterpret_cast<const char*>(leaf.issuer.data()), leaf.issuer.size()));
    if (it != by_subject.end()) {
      for (const Ca* issuer : it->second) {
        // CAs sharing a subject (a CA rollover keeps the old one's): the key decides.
        if (it->second.size() > 1 && !leaf_signed_by(*issuer, leaf)) continue;
        // The issuer, then its issuers: a CA under a revoked or compromised one is no better
        // (a stolen key with pathLen >= 1 can mint sub-CAs).
        int depth = 0;
        for (const Ca* ca = issuer; ca != nullptr && depth < 16; ++depth) {
          const std::string& name = ca->rec.name;
          if (auto open = ca_incidents.find(name); open != ca_incidents.end()) {
            return pin(open->second, "CA '" + name + "'", leaf_der, leaf, cn, serial,
                       registry.pinned_cert(serial), at);
          }
          if (auto revoked = revoked_cas.find(name); revoked != revoked_cas.end()) {
            return refuse("ca-revoked", "CA '" + name + "' was revoked at " +
                                            iso8601(revoked->second) +
                                            ": nothing signed under it is admitted");
          }
          const auto parent = cas.find(ca->rec.parent);
          ca = ca->rec.parent.empty() || parent == cas.end() ? nullptr : &parent->second;
        }
      }
    }
  }
  if (!lineage_incidents.empty()) {
    const auto rec = registry.pinned_cert(serial);
    if (rec) {
      for (const auto& i : lineage_incidents) {
        const std::string& value = i.scope_kind == "lot" ? rec->lot : rec->site;
        // Replacements are admitted as usual (a lot's CA is not compromised): the incident job's
        // own (its batch), and whatever was recorded after the second it opened. A certificate
        // recorded in that second is pinned: it may predate the incident (by time alone it passed
        // as a replacement, with no pin at all).
        const bool replacement =
            (!i.job_id.empty() && rec->batch_id == i.job_id) || rec->created_at > i.opened_at;
        if (value == i.scope && !replacement) {
          return pin(i, i.scope_kind + " '" + i.scope + "'", leaf_der, leaf, cn, serial, rec, at);
        }
      }
    }
  }
  return std::nullopt;
}

}  // namespace fleetsign::engine
