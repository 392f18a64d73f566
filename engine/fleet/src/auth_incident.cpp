// The pins of open incidents (auth_impl.hpp): under a compromised CA, or in a lot or site under
// an incident, only exactly the certificate recorded for a device before the compromise is
// admitted, and for the rotation methods only.
#include <Poco/JSON/Parser.h>
#include <openssl/err.h>

#include <algorithm>

#include "auth_impl.hpp"
#include "fleetsign/engine/x509.hpp"

namespace fleetsign::engine {

using auth_detail::Anchor;
using auth_detail::Ca;
using auth_detail::leaf_signed_by;
using auth_detail::outside_validity;
using auth_detail::refuse;

void Authenticator::Impl::load_replacements(const std::string& job_id, const std::string& scope) {
  if (job_id.empty()) return;
  const auto job = registry.find_job(job_id);
  if (!job) return;
  try {
    Poco::JSON::Parser parser;
    const auto r = parser.parse(job->report_json).extract<Poco::JSON::Object::Ptr>();
    if (const auto a = r->getArray("replacements")) {
      for (std::size_t i = 0; i < a->size(); ++i) {
        const auto o = a->getObject(i);
        if (!o) continue;
        const std::string ca = o->optValue<std::string>("ca", "");
        const std::string replacement = o->optValue<std::string>("replacement", "");
        if (!ca.empty() && !replacement.empty()) replaced_by[ca] = replacement;
      }
    } else if (const std::string replacement = r->optValue<std::string>("replacementCa", "");
               !replacement.empty()) {
      replaced_by[scope] = replacement;
    }
  } catch (const Poco::Exception&) {
    // A report that does not parse names no replacement: the groups are found by the chain only.
  }
}

const Ca* Authenticator::Impl::issuer_of(const LeafView& leaf) {
  const auto it = by_subject.find(
      std::string(reinterpret_cast<const char*>(leaf.issuer.data()), leaf.issuer.size()));
  if (it == by_subject.end()) return nullptr;
  for (const Ca* ca : it->second) {
    if (it->second.size() == 1 || leaf_signed_by(*ca, leaf)) return ca;
  }
  return nullptr;
}

const Ca* Authenticator::Impl::parent_of(const Ca& ca) const {
  const auto parent = cas.find(ca.rec.parent);
  return ca.rec.parent.empty() || parent == cas.end() ? nullptr : &parent->second;
}

// `from`, then its issuers: a CA under a revoked or compromised one is no better (a stolen key
// with pathLen >= 1 can mint sub-CAs). An open incident wins over a revocation of the same CA.
const Ca* Authenticator::Impl::compromised_at_or_above(const Ca* from) const {
  int depth = 0;
  for (const Ca* ca = from; ca != nullptr && depth < 16; ca = parent_of(*ca), ++depth) {
    if (ca_incidents.count(ca->rec.name) != 0 || revoked_cas.count(ca->rec.name) != 0) return ca;
  }
  return nullptr;
}

AuthDecision Authenticator::Impl::ca_revoked(const Ca& ca) const {
  return refuse("ca-revoked", "CA '" + ca.rec.name + "' was revoked at " +
                                  iso8601(revoked_cas.at(ca.rec.name)) +
                                  ": nothing signed under it is admitted");
}

std::optional<AuthDecision> Authenticator::Impl::enrollment_refusal(
    const Ca* issuer, const std::optional<IndividualEnrollment>& individual) {
  // An individual enrollment wins over any group, as without an incident.
  if (individual) {
    if (individual->enabled) return std::nullopt;
    return refuse("individual-disabled", "individual enrollment '" + individual->registration_id +
                                             "' is disabled (an incident's pin does not lift it)");
  }
  // The groups: those trusting the issuer or a CA above it, and those that took the replacement
  // of a compromised CA on the way into the slot it left.
  std::vector<const Anchor*> anchors;
  int depth = 0;
  for (const Ca* ca = issuer; ca != nullptr && depth < 16; ca = parent_of(*ca), ++depth) {
    for (const auto& a : ca->anchors) anchors.push_back(&a);
    if (const auto r = replaced_by.find(ca->rec.name); r != replaced_by.end()) {
      if (const auto c = cas.find(r->second); c != cas.end()) {
        for (const auto& a : c->second.anchors) anchors.push_back(&a);
      }
    }
  }
  if (anchors.empty()) return std::nullopt;
  for (const Anchor* a : anchors) {
    if (a->enabled) return std::nullopt;
  }
  return refuse("group-disabled", "the device's group '" + anchors.front()->group +
                                      "' is disabled (an incident's pin does not lift it)");
}

// Exactly the recorded certificate, recorded before the compromise, still valid in the registry
// and not refused by the operator's enrollments: admitted for rotation only.
AuthDecision Authenticator::Impl::pin(const Pin& p, const Der& leaf_der, const LeafView& leaf,
                                      const std::string& cn, const std::string& serial,
                                      const std::optional<PinnedCert>& rec, std::int64_t at,
                                      const std::optional<IndividualEnrollment>& individual) {
  const OpenIncident& incident = *p.incident;
  const std::string prefix = "incident " + std::to_string(incident.id) + " (" + p.what + "): ";
  if (!rec || rec->sha256 != thumbprint_sha256(leaf_der) || rec->device_id != cn) {
    return refuse("incident-unrecorded",
                  prefix + "certificate serial " + serial +
                      " is not exactly one this registry recorded (a forgery with the stolen key "
                      "is refused)");
  }
  // Revoked is revoked, also while pinned: no incident revokes a certificate it still rotates
  // (a lot's at its close, a compromised key's devices go to the factory), so a revocation
  // during the incident is the operator cutting the device off.
  if (rec->state != CertState::kIssued) {
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
  if (auto refused = enrollment_refusal(p.issuer, individual)) {
    refused->reason = prefix + refused->reason;
    return *refused;
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

// The broker passes the leaf alone: this reads the CA certificates of a chain given whole (`auth
// check`, the HTTP API), which OpenSSL's path would otherwise accept up to a trusted root.
std::optional<AuthDecision> Authenticator::Impl::unrecorded_sub_ca(std::span<const Der> chain) {
  for (std::size_t i = 1; i < chain.size() && i < 16; ++i) {
    const std::string tp = thumbprint_sha256(chain[i]);
    if (std::any_of(cas.begin(), cas.end(),
                    [&](const auto& c) { return c.second.rec.sha256 == tp; })) {
      continue;  // one of ours
    }
    const auto cert = ossl::from_der(chain[i]);
    if (!cert) continue;  // the path checks refuse it
    unsigned char* buf = nullptr;
    const int len = i2d_X509_NAME(X509_get_issuer_name(cert.get()), &buf);
    const std::string issuer_der(reinterpret_cast<char*>(buf), len > 0 ? std::size_t(len) : 0);
    OPENSSL_free(buf);
    const auto it = by_subject.find(issuer_der);
    if (it == by_subject.end()) continue;
    for (const Ca* signer : it->second) {
      if (X509_verify(cert.get(), X509_get0_pubkey(signer->x509.get())) != 1) {
        ERR_clear_error();
        continue;
      }
      const Ca* ca = compromised_at_or_above(signer);
      if (ca == nullptr) continue;
      const auto open = ca_incidents.find(ca->rec.name);
      if (open == ca_incidents.end()) return ca_revoked(*ca);
      return refuse("incident-unrecorded",
                    "incident " + std::to_string(open->second.id) + " (CA '" + ca->rec.name +
                        "'): certificate " + std::to_string(i + 1) +
                        " of the chain is a CA certificate under it that this registry never "
                        "made (one minted with the stolen key is refused)");
    }
  }
  return std::nullopt;
}

std::optional<AuthDecision> Authenticator::Impl::incident_decision(
    std::span<const Der> chain, const LeafView& leaf, const std::string& cn,
    const std::string& serial, std::int64_t at,
    const std::optional<IndividualEnrollment>& individual) {
  const Der& leaf_der = chain[0];
  const Ca* issuer = nullptr;
  if (!ca_incidents.empty() || !revoked_cas.empty()) {
    if (auto forged = unrecorded_sub_ca(chain)) return forged;
    issuer = issuer_of(leaf);
    // The issuer, then its issuers: a CA under a revoked or compromised one is no better (a
    // stolen key with pathLen >= 1 can mint sub-CAs).
    if (const Ca* ca = compromised_at_or_above(issuer)) {
      const auto open = ca_incidents.find(ca->rec.name);
      if (open == ca_incidents.end()) return ca_revoked(*ca);
      return pin(Pin{&open->second, "CA '" + ca->rec.name + "'", issuer}, leaf_der, leaf, cn,
                 serial, registry.pinned_cert(serial), at, individual);
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
          if (issuer == nullptr) issuer = issuer_of(leaf);
          return pin(Pin{&i, i.scope_kind + " '" + i.scope + "'", issuer}, leaf_der, leaf, cn,
                     serial, rec, at, individual);
        }
      }
    }
  }
  return std::nullopt;
}

}  // namespace fleetsign::engine
