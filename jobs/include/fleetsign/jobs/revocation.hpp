// Revocation runs (issue 10 §1, §3): a selector names the certificates, one function computes the
// plan (the blast radius: certificates, devices by group, lot and site, who is connected now on a
// certificate being revoked, the groups and CAs affected, what the cloud is told, the replacement
// plan), `--dry-run` prints it, and the real run executes exactly that plan.
//
// Executing: device certificates are revoked in chunks (one transaction each, a device's
// certificates always in one chunk, with the disabled individual enrollment of a device left
// without a working certificate), so a large run survives an interruption: running the same
// revocation again plans only what is left and revokes nothing twice. Then the CAs (`--ca`) are
// marked revoked and their groups change: a revoked CA leaves a group's slot when the other slot
// holds a working CA, else the group is disabled (its slots kept, so `export dps` tells the cloud).
// Each chunk's audit row "cert.revoke" makes the broker drop live sessions on those certificates.
//
// Not thread-safe (uses one Stores). Errors: kInvalidArgument/kUsage for bad selector values
// (naming the option and the value), kNotFound for an unknown CA, registry errors as thrown.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::jobs {

struct RevocationSelector {
  // "serial" | "device" | "ca" | "lot" | "batch" | "site" | "line" | "issued-between" |
  // "key-sha256": the option's name without "--". "run": exact certificates (revoke_serials),
  // `value` the run's description.
  std::string kind;
  std::string value;              // normalized (serial and hash: upper-case hex)
  std::int64_t from = 0, to = 0;  // issued-between: created_at in [from, to)
  std::string describe() const;   // "--lot L7", "--issued-between 2026-01-01T00:00:00Z …"
};

// Checks and normalizes one selector. `values` are the option's arguments (two for
// issued-between). Serials: hex (0x and ':' allowed); device IDs: the policy's rule; key hashes:
// 64 hex digits; times: RFC 3339 ("2026-01-01T00:00:00Z"), a date ("2026-01-01", 00:00 UTC) or
// unix seconds, T1 < T2; names: 1..128 printable characters.
RevocationSelector parse_selector(const policy::Policy& policy, const std::string& kind,
                                  const std::vector<std::string>& values);
std::int64_t parse_time(std::string_view text, std::string_view what);
// A free-text option (a name, a reason): 1..128 characters, no control characters (a newline or
// an escape sequence would forge lines in a table or a log); kInvalidArgument naming --option.
std::string check_name(const std::string& option, const std::string& value);

// The RFC 5280 reasons a revocation takes (unspecified is not one: say why).
inline constexpr std::string_view kReasons[] = {
    "keyCompromise", "cACompromise", "affiliationChanged", "superseded", "cessationOfOperation"};
// `reason` when it is one of kReasons (kInvalidArgument otherwise); when empty: keyCompromise for
// a key-sha256 selector, else kUsage ("--reason is required").
std::string check_reason(const std::string& reason, const RevocationSelector& selector);

struct GroupChange {
  std::string group;
  std::vector<std::string> leave_slots;  // "primary"/"secondary": the revoked CA leaves it
  bool disable = false;                  // no working CA left: the group is disabled
};

struct RevocationPlan {
  RevocationSelector selector;
  std::string reason;
  std::int64_t at = 0;                           // the revocation time recorded
  std::vector<engine::RevocableCert> to_revoke;  // issued now, by device then serial
  std::int64_t already_revoked = 0;              // matched, revoked before: left alone
  // keyCompromise: of those, the ones revoked for another reason (superseded by a rollover, say):
  // their CRL entries get the reason keyCompromise (the revocation date stays), their keys blocked.
  std::vector<engine::RevocableCert> reason_raised;
  std::vector<std::string> devices;  // devices of to_revoke, sorted
  std::map<std::string, std::int64_t> devices_by_group, devices_by_lot, devices_by_site;
  std::vector<std::string> connected_dropped;  // connected now on a certificate in to_revoke
  std::int64_t connected_affected = 0;         // affected devices connected now (any certificate)
  std::vector<std::string> cas_revoked;        // --ca: the CA and every CA under it
  std::vector<std::string> cas_affected;       // CAs that issued a certificate in to_revoke
  std::vector<GroupChange> group_changes;
  std::vector<std::string> groups_without_devices;  // groups left with no device certificate
  // Devices left with no working certificate (their individual enrollment becomes disabled, or a
  // disabled one is created with the revoked certificate, when a group or enrollment admits them).
  std::vector<engine::IndividualEnrollment> disable_enrollments;
  std::vector<std::string> keys_to_block;  // keyCompromise: SPKI SHA-256s not yet blocked
  // The replacement plan. reprovision: own key compromised (keyCompromise), factory
  // re-provisioning. rotate_now: still holds a working certificate, the rotation protocol reaches
  // it. rotate_incident: no working certificate left, an incident run (registry pinning) brings it
  // back. retire: cessationOfOperation, nothing to replace.
  std::vector<std::string> reprovision, rotate_now, rotate_incident, retire;
};

// Reads the registry (certificates, devices, sessions, enrollments, CAs, blocklist); writes
// nothing. `at` is clock.now().
RevocationPlan plan_revocation(engine::Stores& stores, const engine::Clock& clock,
                               const RevocationSelector& selector, const std::string& reason);

struct RevocationOutcome {
  std::int64_t certificates_revoked = 0;  // became revoked now
  std::int64_t reasons_raised = 0;        // revoked before, their reason now keyCompromise
  std::int64_t enrollments_disabled = 0;
  std::int64_t keys_blocked = 0;
  std::int64_t cas_revoked = 0;
  std::int64_t groups_changed = 0;
  // The CAs whose CRLs list something new (the issuers of the revoked certificates, the parents
  // of revoked CAs): the caller re-signs them in the token and installs them (the broker's file).
  std::vector<std::string> crls_due;
};

// Executes `plan` (see the file comment); `progress(done, total)` after each chunk.
RevocationOutcome execute_revocation(
    engine::Stores& stores, const RevocationPlan& plan,
    const std::function<void(std::int64_t, std::int64_t)>& progress = {});

// Revokes exactly `serials` (issued ones; others are left alone) as a revocation run does: the
// devices left with no working certificate get a disabled individual enrollment, the keys are
// blocked for keyCompromise, one "revoke.run" audit row names `what` (an incident's close, say).
// The caller re-signs outcome.crls_due.
RevocationOutcome revoke_serials(engine::Stores& stores, const engine::Clock& clock,
                                 std::span<const std::string> serials, const std::string& reason,
                                 const std::string& what);

}  // namespace fleetsign::jobs
