// Incident runs (issue 10 §4): a job of kind "incident" that cuts a compromised scope off and
// brings its good devices back.
//
//   scope "ca" (cACompromise: the intermediate's key is stolen). The registry knows every
//   certificate it really issued, so the devices' own certificates stay usable for one thing:
//   while the incident is open the decision admits one only when it is exactly a recorded one
//   from before the compromise, and only for the rotation methods (auth.hpp, "incident-pinned").
//   Steps, each recorded in the job's report ("phase") so that a crash at any point continues:
//     open     → the incident opens (live sessions under the CA and the CAs below it are cut
//                off; they come back pinned), the CA is marked revoked, and it and the CAs
//                below it leave their groups' slots;
//     revoked  → a replacement intermediate is made in the token (same issuer, the CA rollover's
//                creation code) or the one named is used; each CA below gets a replacement under
//                its issuer's replacement; each replacement enters its CA's slot;
//     rotating → the rollover runner takes every good device onto a certificate under the
//                replacement of its CA;
//     closed   → the incident closes, the CAs below are revoked, and every certificate still
//                under the subtree is revoked (cACompromise); the job's report lists who is
//                back and who is not, and why.
//   scope "lot" / "site": the device certificates of a lot or site are suspect. With
//   keyCompromise the devices' own keys are: they cannot be rotated over the network, their
//   certificates are revoked at once and they are listed for factory re-provisioning. With any
//   other reason they are pinned like a CA's devices and rotated under their own CA.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/jobs/rollover.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::jobs {

struct IncidentRequest {
  std::string scope_kind;  // "ca" | "lot" | "site"
  std::string scope;
  std::string reason = "cACompromise";         // an RFC 5280 CRLReason name
  std::string replacement_ca;                  // "ca" scope: empty = make "{ca}-i{YYYYMMDD}"
  std::optional<std::int64_t> compromised_at;  // default: now
  policy::KeyAlgorithm key = policy::KeyAlgorithm::kEcP256;  // a replacement's key
  RolloverParams params;  // rate, waves, timeouts, deadline (selection, ca and kind set here)
};

struct IncidentDevice {
  std::string device_id, lot, group, serial;  // serial: its certificate in the scope
  std::string target_slot;                    // the registry slot its new certificate takes
  bool connected = false;
  std::string action;  // "rotate" | "factory" (never rotated) | "conflict"
  std::string why;     // factory and conflict
};

// A CA of the compromised subtree ("ca" scope) and the CA made to replace it.
struct IncidentCa {
  std::string ca, replacement;
  std::string issuer;           // the replacement's issuer: the old issuer's, or its replacement
  std::optional<int> path_len;  // the old CA's pathLen (or what the CAs below it need)
  bool exists = false;          // the replacement is in the registry already
};

// A group slot that holds a CA of the subtree: the replacement takes it.
struct IncidentSlot {
  std::string group, slot, ca, replacement;
};

struct IncidentPlan {
  std::string scope_kind, scope, reason;
  std::int64_t compromised_at = 0;
  std::string group, slot;  // "ca": the group slot the CA sits in ("" = trusted through its issuer)
  std::string replacement_ca;
  bool replacement_exists = false;
  // "ca": the compromised CA first, then every CA below it, parents first (a stolen key with
  // pathLen >= 1 makes the whole subtree untrustworthy: each CA gets a replacement under the
  // replacement of its issuer, and its devices rotate onto it).
  std::vector<IncidentCa> replacements;
  std::vector<IncidentSlot> slots;
  std::vector<IncidentDevice> devices;
  std::map<std::string, std::int64_t> per_lot, per_group;
  std::int64_t rotate = 0, factory = 0, conflicts = 0, connected = 0;
  std::int64_t certificates = 0;  // issued certificates of the scope that end revoked
  // The unfinished job of an earlier start that a start now continues with its own tasks (the
  // devices above are what a new job would take); empty when a start records a new job.
  std::string continues;
};

// What `start` would do; reads only (the dry run). kNotFound for an unknown CA, kInvalidArgument
// for a bad scope or reason, a root or external CA, or a replacement with another issuer.
IncidentPlan plan_incident(engine::Stores& stores, const policy::Policy& policy,
                           const engine::Clock& clock, const IncidentRequest& request);

struct IncidentStart {
  std::string job_id;
  std::int64_t incident_id = 0;
  bool resumed = false;  // an earlier run of the same request had recorded the job
  IncidentPlan plan;
};
// Records the job (or finds the unfinished one of an earlier run for the same scope) and
// advances it through "open" and "revoked"; run it with run_job.
IncidentStart start_incident(engine::Stores& stores, engine::CaService& cas,
                             const policy::Policy& policy, const engine::Clock& clock,
                             const IncidentRequest& request);

// Takes an incident job through the phases before "rotating" (idempotent; run_job calls it).
void advance_incident(engine::Stores& stores, engine::CaService& cas, const policy::Policy& policy,
                      const engine::Clock& clock, const std::string& job_id);
// The last step (run_job calls it when an incident job finishes): revoke what is left, close.
void finish_incident(engine::Stores& stores, engine::CaService& cas, const policy::Policy& policy,
                     const engine::Clock& clock, const std::string& job_id);

// Marks CA `ca` revoked for the decision (its open incident's record, audit row "ca.revoke").
// kNotFound when no incident is open for it.
void revoke_ca_record(engine::Stores& stores, const std::string& ca, const std::string& reason,
                      std::int64_t at);

}  // namespace fleetsign::jobs
