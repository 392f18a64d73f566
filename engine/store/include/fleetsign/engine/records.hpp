// The registry's records (stores.hpp holds the contracts that read and write them): CAs,
// certificates and their intents, batches, enrollments and devices, counts and pages, CRLs, the
// audit log's entries, device sessions and twins.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fleetsign::engine {

struct CaRecord {
  std::string name;
  std::string parent;    // empty for a root
  std::string subject;   // one-line DN, openssl -subj form
  std::string key_uri;   // RFC 7512
  std::string key_type;  // "ec-p256", …
  std::vector<std::uint8_t> cert_der;
  std::int64_t not_before = 0;  // unix seconds
  std::int64_t not_after = 0;
  std::string sha1;  // upper-case hex thumbprints
  std::string sha256;
  bool verified = false;  // proof of possession checked (`ca verify`)
  std::int64_t created_at = 0;
  std::int64_t revoked_at = 0;    // schema v8: 0 = not revoked
  std::string revocation_reason;  // RFC 5280 CRLReason name when revoked
};

// Where a device certificate came from; recorded with every certificate.
struct Lineage {
  std::string lot, line, site, operator_name;
};

enum class CertState { kIntent, kIssued, kAbandoned, kRevoked };
std::string_view cert_state_name(CertState state) noexcept;  // "intent", "issued", …

// Step 1 of issuance: the serial and the intended certificate, committed before the token signs.
struct CertIntent {
  std::string serial;  // upper-case hex, no leading zeros dropped (as encoded), unique
  std::string device_id;
  std::string ca_name;
  std::string batch_id;  // empty for a single `issue --csr`
  std::int64_t seq = 0;  // input position within the batch (0-based); 0 for single issues
  std::string subject;
  std::int64_t not_before = 0;
  std::int64_t not_after = 0;
  std::vector<std::uint8_t> tbs_der;  // enough to rebuild/inspect what was meant
  Lineage lineage;
};

// Step 3: the signed certificate for an intent.
struct IssuedCert {
  std::string serial;
  std::vector<std::uint8_t> der;
  std::string sha1, sha256;  // upper-case hex
  std::string key_sha256;    // SHA-256 of the SubjectPublicKeyInfo, upper-case hex (schema v8)
};

struct CertRecord {
  std::string serial, device_id, ca_name, batch_id;
  std::int64_t seq = 0;
  CertState state = CertState::kIntent;
  std::string subject;
  std::int64_t not_before = 0, not_after = 0;
  std::string sha1, sha256;
  std::vector<std::uint8_t> der;  // certificate DER when issued, TBS DER while an intent
  Lineage lineage;
  std::int64_t created_at = 0;
};

struct BatchRecord {
  std::string id;
  std::string ca_name;
  std::string params_json;  // everything needed to resume (inputs, output dir, options)
  std::string state;        // "running" | "finished"
  std::int64_t created_at = 0, finished_at = 0;
  std::int64_t issued = 0, rejected = 0;
  std::int64_t watermark = -1;  // highest input seq whose outputs are completely written
  std::string offsets_json;     // output stream sizes at the watermark
};

// Enrollments mirror Azure DPS: a group trusts devices whose chain leads to the CA in its primary
// or secondary slot; an individual enrollment trusts one device by the certificate (or SHA-256
// thumbprint) in its primary or secondary slot. A disabled individual enrollment refuses its device
// even when an enabled group would accept it.
enum class Slot { kPrimary, kSecondary };
std::string_view slot_name(Slot slot) noexcept;  // "primary" | "secondary"

struct EnrollmentGroup {
  std::string name;
  bool enabled = true;
  std::string primary_ca, secondary_ca;  // CA names in this registry; empty = free slot
  std::int64_t created_at = 0, updated_at = 0;
};

struct IndividualEnrollment {
  std::string registration_id;
  bool enabled = true;
  std::vector<std::uint8_t> primary_cert, secondary_cert;  // DER; empty when only a thumbprint
  std::string primary_sha256, secondary_sha256;            // upper-case hex; empty = free slot
  std::int64_t created_at = 0, updated_at = 0;
};

// A device as the registry knows it: the certificate in each slot. Issuance fills the primary slot
// of a new device, or the secondary slot of a known one (rollover jobs alternate them later).
struct DeviceRecord {
  std::string registration_id;
  std::string primary_serial, secondary_serial;  // empty = free slot
  std::int64_t primary_not_after = 0, secondary_not_after = 0;
  std::string ca_name;  // issuer of the newest certificate
  std::string lot;
  std::string status;  // "enabled" | "disabled"
  std::int64_t created_at = 0, updated_at = 0;
};

// The dashboard's and the metrics' aggregates (expiry_histogram, device_counts_by_ca,
// issued_counts): counts, never rows per device.
struct CaBucketCount {
  std::string ca_name;  // the device's issuer (its newest certificate's CA)
  int bucket = 0;       // 0.. from `from`; -1: expired already
  std::int64_t count = 0;
};
struct IssuedCount {
  std::string ca_name;
  std::string mode;        // "batch" (issue, API uploads) | "job" (rollovers, incidents) | "single"
  std::int64_t count = 0;  // certificates issued (revoked ones included), intents not
};
struct CaDeviceCount {
  std::string ca_name;
  std::int64_t devices = 0, primary = 0, secondary = 0;  // devices; certificates per slot
  std::int64_t connected = 0;                            // with a live broker session
};

struct DeviceFilter {
  std::vector<std::string> ca_names;  // empty = any
  std::string lot;                    // empty = any
  std::int64_t limit = 0;             // 0 = no limit
  std::string after;                  // registration IDs after this one (the next page)
};

// One page of a list: at most `limit` items (0 = all) after the item whose key is `after`
// (empty = from the start), in the list's order. Lists keyed by an id refuse an id that names
// nothing (kNotFound); the blocklist, ordered by key, takes any key.
struct ListPage {
  std::int64_t limit = 0;
  std::string after;
};

// One row of the expiry scan: a device certificate in a slot expiring before `until`.
struct ExpiringCert {
  std::string registration_id, serial, ca_name, lot;
  Slot slot = Slot::kPrimary;
  std::int64_t not_after = 0;
};

// The expiry scan aggregated in the registry (the report at 10^7 devices): device certificates
// per CA, lot and days left, the days counted up to the next of the report's day marks (its alert
// thresholds): `days` is 0 for a certificate expired at `now` (not_after <= now), else the
// smallest mark m with not_after - now <= m days, or the largest mark + 1 when there is none.
// Every certificate in one row falls in the same bucket under any thresholds taken from the marks.
struct ExpiryCount {
  std::string ca_name, lot;
  std::int64_t days = 0;
  std::int64_t count = 0;
};

// A CA being created: recorded (committed) before its token key is generated, dropped in the
// transaction that records the CA. A row left behind means a creation was interrupted.
struct PendingCa {
  std::string name;
  std::string key_uri;  // RFC 7512 URI of the key about to be made (its CKA_ID chosen up front)
  std::int64_t created_at = 0;
};

// Step 1 for a CA or verification certificate: serial and TBS, committed before the token signs.
// Kept in `ca_certificates`, a sibling of the device certificates table; a serial is unique
// across both tables.
struct CaCertIntent {
  std::string serial;        // upper-case hex, as encoded
  std::string kind;          // "ca" | "verification" | "self-signed" (a device's own)
  std::string subject_name;  // the CA's name ("ca"), the verification code ("verification")
  std::string issuer_ca;     // the signing CA's name; a root names itself
  std::vector<std::uint8_t> tbs_der;
};

struct CaCertRecord {
  std::string serial, kind, subject_name, issuer_ca;
  std::string state;              // "intent" | "issued" | "abandoned"
  std::vector<std::uint8_t> der;  // certificate DER when issued, TBS DER otherwise
  std::int64_t created_at = 0;
};

// A certificate revocation list a CA signed (schema v8). Its number is reserved (committed)
// before the token signs, so a number is never used twice, even after kill -9.
struct CrlRecord {
  std::string ca_name;
  std::int64_t number = 0;  // cRLNumber, monotonic per CA
  std::int64_t this_update = 0, next_update = 0;
  std::int64_t entries = 0;                  // revoked certificates listed
  std::int64_t key_compromise_entries = -1;  // of those, reason keyCompromise (-1: not known)
  std::vector<std::uint8_t> der;
  std::int64_t created_at = 0;
};

// One certificate a CA revoked, as its CRL lists it.
struct RevokedSerial {
  std::string serial;  // upper-case hex, as encoded
  std::int64_t revoked_at = 0;
  std::string reason;  // RFC 5280 CRLReason name; "" or "unspecified": no reasonCode
};

struct AuditEntry {
  std::int64_t id = 0;
  std::int64_t at = 0;
  std::string actor, action, subject, detail;
};

// The fleet plane's state (schema v4): which certificate each device is connected with, as the
// broker saw it, and each device's twin. Written by the broker plugin; read by the CLI.
struct DeviceSession {
  std::string device_id;
  bool connected = false;
  std::string mode;                      // "hub" | "dps": the protocol the device connected with
  std::string cert_sha256, cert_serial;  // upper-case hex, of the certificate it presented
  std::int64_t connected_at = 0, disconnected_at = 0;  // unix seconds; 0 = never
};

// A device twin: desired and reported properties, each a JSON object (without "$version") and
// its version. A device with no twin row reads as empty documents at version 1.
struct Twin {
  std::string device_id;
  std::string desired = "{}", reported = "{}";
  std::int64_t desired_version = 1, reported_version = 1;
  std::int64_t updated_at = 0;
};

// A reported document the broker already merged (twin_doc.hpp), at its new version.
struct ReportedTwin {
  std::string device_id;
  std::string reported;
  std::int64_t version = 0;
};

inline constexpr std::size_t kTwinDocLimit = 32 * 1024;  // bytes of one twin document

}  // namespace fleetsign::engine
