// Certificate revocation lists signed in the token (RFC 5280 section 5): one per CA, v2, with a
// CRL number, the authority key identifier, thisUpdate/nextUpdate by policy ("crl"), and one
// entry per certificate the CA revoked — device certificates and the intermediates it signed —
// with its revocationDate and reasonCode (none for "unspecified").
//
// Signing is numbered steps (crl.cpp): read what the CA revoked → reserve the CRL number (a
// committed row: a number is never used twice, even after kill -9) → build the TBSCertList →
// the token signs → check the CRL against the CA certificate → store it.
//
// A CRL past its nextUpdate makes relying parties refuse every device of its CA: keeping CRLs
// fresh is an availability duty (`fleetsign serve` re-signs them, see crl_state).
// Not thread-safe (it looks token keys up): use it on one thread.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {

// RFC 5280 CRLReason by name ("unspecified" 0, "keyCompromise" 1, "cACompromise" 2,
// "affiliationChanged" 3, "superseded" 4, "cessationOfOperation" 5, "certificateHold" 6,
// "privilegeWithdrawn" 9, "aACompromise" 10); "" reads as unspecified. nullopt when unknown.
std::optional<int> crl_reason_code(std::string_view name) noexcept;

// Where a CA's latest CRL stands at `now` under the policy's schedule.
enum class CrlState {
  kMissing,  // never signed
  kFresh,    // more than resign_hours left
  kDue,      // less than resign_hours left: serve re-signs it
  kNear,     // less than warn_hours left: warn
  kStale,    // past nextUpdate: relying parties refuse the CA's devices
};
std::string_view crl_state_name(CrlState state) noexcept;  // "missing", "fresh", …
CrlState crl_state(const std::optional<CrlRecord>& latest, const policy::CrlSchedule& schedule,
                   std::int64_t now) noexcept;

// Whether fleetsign can sign a CRL for the CA: its key is in the token (not `ca import`ed).
inline bool can_sign_crl(const CaRecord& ca) noexcept { return !ca.key_uri.empty(); }

// What a CA's next CRL lists: its revoked device certificates and the intermediates it signed
// that are revoked, by serial. Throws the registry's errors.
std::vector<RevokedSerial> revoked_by(CrlStore& crls, CaStore& cas, const std::string& ca_name);

// A CA's CRL as `serve` and the expiry report see it.
struct CrlStatus {
  std::string ca_name;
  CrlState state = CrlState::kMissing;
  std::optional<CrlRecord> latest;  // without its DER
  std::int64_t revoked_now = 0;     // what the next CRL would list
  bool revoked_since = false;       // revocations the latest CRL does not list yet
  // Whether it should be signed now: missing, due, near or stale, or revoked_since.
  bool needs_signing() const noexcept { return state != CrlState::kFresh || revoked_since; }
};

// The CRL status of every CA that can have one (can_sign_crl), in the registry's CA order.
// Revocations are never undone, so a CRL listing fewer entries than the CA has revoked is behind.
std::vector<CrlStatus> crl_statuses(Stores& stores, const policy::CrlSchedule& schedule,
                                    std::int64_t now);

class CrlSigner final {
 public:
  // Borrows everything; they must outlive the signer.
  CrlSigner(Stores& stores, CaService& cas, const policy::CrlSchedule& schedule,
            const Clock& clock);

  // Signs and stores a new CRL for the CA (thisUpdate = now, nextUpdate = now + validity_hours).
  // Errors: kNotFound (no such CA), kKeyNotFound (an external CA: its key is not in the token),
  // kKeyCertMismatch / token errors, kCrlInvalid (the token's CRL does not verify: nothing is
  // stored, the reserved number stays unused), the registry's errors.
  CrlRecord sign(const std::string& ca_name);

 private:
  Stores& m_stores;
  CaService& m_cas;
  const policy::CrlSchedule& m_schedule;
  const Clock& m_clock;
};

// Re-signs the CRLs of `ca_names` now (each CA that can have one; an external CA is skipped) and
// returns them. What revocations call (revoke, a breach roll, an incident run) so that a new CRL
// follows every revocation; the broker's copy is then installed by the caller.
std::vector<CrlRecord> refresh_crls(Stores& stores, CaService& cas,
                                    const policy::CrlSchedule& schedule, const Clock& clock,
                                    std::span<const std::string> ca_names);

}  // namespace fleetsign::engine
