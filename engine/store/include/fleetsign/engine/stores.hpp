// The registry's contracts: the records fleetsign keeps (CAs, certificates and their intents,
// batches, enrollments and devices, the audit log, jobs, device sessions and twins) and one narrow
// interface per kind of record. Components take the narrowest contract they need; a backend
// (SQLite's Registry in registry.hpp, PostgreSQL later) implements them all as `Stores`, and tests
// wrap a real backend to inject faults (tests/support/fault_stores.hpp).
//
// Durability: every write method is one transaction unless it says otherwise; a committed
// transaction survives kill -9 and power loss. Failures throw Error(kRegistryError,
// kRegistryBusy, kAlreadyExists, kNotFound) whose message says what was being written
// ("recording 512 intents (first serial 0x…): database is locked").
// Thread safety: an implementation is one connection, not thread-safe: one per thread, or guarded.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "fleetsign/engine/job_store.hpp"
#include "fleetsign/engine/operator_store.hpp"
#include "fleetsign/engine/records.hpp"

namespace fleetsign::engine {

// ---------------------------------------------------------------------------------------------
// The contracts.

// The CA hierarchy's records.
class CaStore {
 public:
  virtual ~CaStore() = default;
  virtual void add_ca(const CaRecord& ca) = 0;  // kAlreadyExists when the name is taken
  virtual std::optional<CaRecord> find_ca(const std::string& name) = 0;
  virtual std::vector<CaRecord> list_cas() = 0;  // by created_at
  virtual void set_ca_verified(const std::string& name, bool verified) = 0;

  // CA creation survives kill -9 (ca_recovery.hpp): a pending row is committed before the key
  // is made, and the CA row replaces it in one transaction.
  // kAlreadyExists when a CA or a pending CA has that name.
  virtual void add_pending_ca(const PendingCa& pending) = 0;
  virtual std::vector<PendingCa> list_pending_cas() = 0;
  // One transaction: the pending row goes, and the CA's certificate intents become abandoned.
  virtual void drop_pending_ca(const std::string& name) = 0;
  // One transaction: the CA row, its certificate intent (serial) becomes issued, the pending row
  // goes. kAlreadyExists when the name is taken; kRegistryError when the intent is not open.
  virtual void complete_ca(const CaRecord& ca, const std::string& serial) = 0;

  // CA and verification certificates: intent (serial + TBS) before the token signs, like device
  // certificates. kAlreadyExists when the serial is in either certificates table.
  virtual void record_ca_cert_intent(const CaCertIntent& intent) = 0;
  // The intent becomes issued with its DER (kRegistryError when it is not an open intent).
  virtual void record_ca_cert_issued(const std::string& serial,
                                     const std::vector<std::uint8_t>& der) = 0;
  virtual void abandon_ca_cert_intent(const std::string& serial) = 0;
  virtual std::optional<CaCertRecord> find_ca_cert(const std::string& serial) = 0;
  virtual std::vector<CaCertRecord> ca_certs_of(const std::string& subject_name) = 0;

  // Schema v8: the CA is revoked at `at` for `reason` (an RFC 5280 CRLReason name), with an audit
  // row "ca.revoke" ({"reason","parent"}) in the same transaction. Its issuer's CRL lists it from
  // then on. Already revoked: nothing changes and it returns false. kNotFound for an unknown CA.
  // The CA's own certificates are not touched: revoking them is the caller's (revoke --ca).
  virtual bool revoke_ca(const std::string& name, const std::string& reason, std::int64_t at) = 0;
};

// Certificate revocation lists (schema v8): the numbering, the signed lists, and what they list.
class CrlStore {
 public:
  virtual ~CrlStore() = default;
  // Device certificates of `ca_name` in state revoked, by serial. (Revoked intermediates are
  // CaRecords with revoked_at != 0 and parent = ca_name.)
  virtual std::vector<RevokedSerial> revoked_certs_of(const std::string& ca_name) = 0;
  // Commits and returns the CA's next CRL number: one more than any number reserved or stored
  // before (1 for the first). Called before the token signs, so a kill between reserving and
  // storing leaves a gap, never a reused number.
  virtual std::int64_t reserve_crl_number(const std::string& ca_name) = 0;
  // Stores a signed CRL with an audit row "crl.sign" ({"number","entries","next_update"}).
  // kAlreadyExists when the CA has a CRL with that number; kRegistryError when the number was
  // never reserved.
  virtual void store_crl(const CrlRecord& crl) = 0;
  // The CA's CRL with the highest number, if any.
  virtual std::optional<CrlRecord> latest_crl(const std::string& ca_name) = 0;
};

// Certificates and their intents: the exactly-once record of issuance.
class CertificateStore {
 public:
  virtual ~CertificateStore() = default;
  // One transaction for the whole span. A serial already present (in any state) makes the whole
  // call fail with Error(kAlreadyExists) naming it, and nothing is written.
  virtual void record_intents(std::span<const CertIntent> intents) = 0;
  // One transaction: each serial must be in state intent; it becomes issued with its DER and
  // thumbprints, and fills its device's slot. Any other state is Error(kRegistryError) and
  // nothing is written.
  virtual void record_issued(std::span<const IssuedCert> certs) = 0;
  // Marks every intent of `batch_id` abandoned (their serials stay, never reused). Returns count.
  virtual std::int64_t abandon_intents(const std::string& batch_id) = 0;
  // One transaction (schema v7): each serial in state issued becomes revoked at `at` with
  // `reason` (an RFC 5280 CRLReason name: "keyCompromise", "superseded", …); the device slots
  // that held it are freed, and so is an individual enrollment's slot holding its SHA-256; one
  // audit row "cert.revoke" ({"count","reason","first"}) makes the broker re-check live sessions.
  // For "keyCompromise" the certificates' keys join the blocklist (schema v10; the audit detail
  // then adds "keys_blocked"). Serials already revoked are skipped; one that is not an issued or
  // revoked certificate is kNotFound and nothing is written. Returns how many became revoked.
  virtual std::int64_t revoke_certs(std::span<const std::string> serials, const std::string& reason,
                                    std::int64_t at) = 0;
  virtual std::optional<CertRecord> find_cert(const std::string& serial) = 0;
  virtual std::optional<CertState> cert_state(const std::string& serial) = 0;
  // Of `device_ids`, those that hold an issued certificate valid at `now` (not_after > now).
  virtual std::vector<std::string> devices_with_valid_cert(std::span<const std::string> device_ids,
                                                           std::int64_t now) = 0;
  // A batch's intents for devices that must be new: those whose device holds an issued
  // certificate valid at `now`, or an open intent of another batch, are refused and not
  // recorded; the rest are recorded as record_intents does. The check and the insert are one
  // write transaction on a backend (Registry): two processes' batches over the same devices
  // (workers with homes of their own) cannot both pass it. Returns the refused, in input order.
  struct RefusedDevice {
    std::string device_id;
    std::string open_batch;  // the batch holding an open intent; empty: a valid certificate
  };
  virtual std::vector<RefusedDevice> record_new_device_intents(std::span<const CertIntent> intents,
                                                               std::int64_t now) {
    // Checked, then written: atomic only where the backend overrides it (wrappers, tests).
    std::vector<std::string> ids;
    for (const auto& i : intents) ids.push_back(i.device_id);
    const auto held = devices_with_valid_cert(ids, now);
    std::vector<RefusedDevice> refused;
    std::vector<CertIntent> rest;
    for (const auto& i : intents) {
      if (std::find(held.begin(), held.end(), i.device_id) != held.end()) {
        refused.push_back(RefusedDevice{i.device_id, {}});
      } else {
        rest.push_back(i);
      }
    }
    record_intents(rest);
    return refused;
  }
  // Issued certificates of a batch with seq > after_seq, ordered by seq.
  virtual std::vector<CertRecord> batch_issued_after(const std::string& batch_id,
                                                     std::int64_t after_seq) = 0;
  // Device IDs with an issued certificate in a batch (resume rebuilds its duplicate check).
  virtual std::vector<std::string> batch_device_ids(const std::string& batch_id) = 0;
  // Counts by state for a batch (or for everything when batch_id is empty).
  virtual std::int64_t count_certs(const std::string& batch_id, CertState state) = 0;
  virtual std::vector<CertRecord> certs_of_device(const std::string& device_id) = 0;
};

// Issuance runs: parameters to resume, progress, the output watermark.
class BatchStore {
 public:
  virtual ~BatchStore() = default;
  virtual void create_batch(const BatchRecord& batch) = 0;  // kAlreadyExists on a taken id
  virtual std::optional<BatchRecord> find_batch(const std::string& id) = 0;
  virtual std::vector<BatchRecord> list_batches(const ListPage& page) = 0;  // newest first
  virtual void update_batch_progress(const std::string& id, std::int64_t watermark,
                                     const std::string& offsets_json, std::int64_t issued,
                                     std::int64_t rejected) = 0;
  virtual void finish_batch(const std::string& id, std::int64_t finished_at) = 0;
};

// Enrollments (the DPS model) and devices with their slots. Each save writes its audit row in the
// same transaction.
class EnrollmentStore {
 public:
  virtual ~EnrollmentStore() = default;
  virtual void save_group(const EnrollmentGroup& group, const std::string& action, bool create) = 0;
  virtual std::optional<EnrollmentGroup> find_group(const std::string& name) = 0;
  virtual std::vector<EnrollmentGroup> list_groups() = 0;
  virtual void save_individual(const IndividualEnrollment& ie, const std::string& action,
                               bool create) = 0;
  virtual std::optional<IndividualEnrollment> find_individual(
      const std::string& registration_id) = 0;
  virtual std::vector<IndividualEnrollment> list_individuals() = 0;
  // Point lookup for the authentication decision (thousands a second): the slots' thumbprints,
  // not the certificates.
  virtual std::optional<IndividualEnrollment> find_individual_slots(
      const std::string& registration_id) = 0;
  virtual std::optional<DeviceRecord> find_device(const std::string& registration_id) = 0;
  virtual std::vector<DeviceRecord> list_devices(const DeviceFilter& filter) = 0;
  virtual std::int64_t count_devices() = 0;
  // Device certificates (current slots) with not_after < until, ordered by not_after (then
  // registration ID); the first `limit` of them (std::numeric_limits<std::size_t>::max(): all).
  virtual std::vector<ExpiringCert> expiring_device_certs(std::int64_t until,
                                                          const DeviceFilter& filter,
                                                          std::size_t limit) = 0;
  // The same certificates counted per CA, lot and day mark as of `now` (ExpiryCount; `marks`
  // positive). Counted in the registry: no row per device leaves it. A key may appear twice.
  virtual std::vector<ExpiryCount> expiry_counts(std::int64_t now, std::int64_t until,
                                                 const std::vector<int>& marks,
                                                 const DeviceFilter& filter) = 0;
  // Latest not_after of the device certificates each CA issued (current slots only).
  virtual std::vector<std::pair<std::string, std::int64_t>> latest_leaf_expiry_by_ca() = 0;
  // Device certificates (both slots) expiring before from + buckets·bucket_s, counted per issuing
  // CA and bucket of bucket_s seconds (-1: expired before `from`); one indexed range scan per slot.
  virtual std::vector<CaBucketCount> expiry_histogram(std::int64_t from, std::int64_t bucket_s,
                                                      int buckets) = 0;
  // Certificates issued per CA and mode (one scan of the certificates).
  virtual std::vector<IssuedCount> issued_counts() = 0;
  // Devices, certificates per slot and live sessions, per issuing CA.
  virtual std::vector<CaDeviceCount> device_counts_by_ca() = 0;
};

// A page of the audit log, newest first: entries with id < before_id (0: from the newest), at
// most `limit`, whose action and subject start with the prefixes given and whose actor is `actor`
// (empty: any), at or after `since` (unix seconds; 0: any).
struct AuditQuery {
  std::int64_t before_id = 0;
  std::int64_t limit = 100;
  std::string action_prefix, actor, subject_prefix;
  std::int64_t since = 0;
};

// The append-only audit log.
class AuditLog {
 public:
  virtual ~AuditLog() = default;
  virtual void audit(const std::string& action, const std::string& subject,
                     const std::string& detail) = 0;
  virtual std::vector<AuditEntry> audit_log(std::int64_t limit) = 0;
  virtual std::vector<AuditEntry> audit_page(const AuditQuery& query) = 0;
};

// Sessions and twins (the broker plugin writes them through a writer thread, in batches).
class FleetStateStore {
 public:
  virtual ~FleetStateStore() = default;
  // Merge-patches (RFC 7386) the device's desired properties and returns the new version (the
  // previous one + 1), with an audit row "twin.set-desired" (subject: the device; detail:
  // {"version":N,"patch":{…}}) in the same transaction: the broker pushes the patch from there.
  // kInvalidArgument when `patch_json` is not a JSON object (or names a "$" key),
  // kInputTooLarge when the patch or the result is over kTwinDocLimit.
  virtual std::int64_t set_desired(const std::string& device_id, const std::string& patch_json) = 0;
  virtual std::optional<Twin> twin(const std::string& device_id) = 0;
  // One transaction: merge-patches the reported properties and returns the new version.
  virtual std::int64_t apply_reported(const std::string& device_id,
                                      const std::string& patch_json) = 0;
  // One transaction for the span: each device's reported document becomes the one given, unless
  // the stored version is already as new (a replayed batch changes nothing).
  virtual void store_reported(std::span<const ReportedTwin> twins) = 0;
  // One transaction for the span, in order: each row replaces the device's session row.
  virtual void record_sessions(std::span<const DeviceSession> sessions) = 0;
  // Every session becomes not connected (disconnected_at = at where it was connected): the
  // broker starts with nobody connected. Returns how many were connected.
  virtual std::int64_t mark_all_disconnected(std::int64_t at) = 0;
  virtual std::vector<DeviceSession> connected_devices() = 0;  // by device ID
  // The connected sessions of just these devices (a job's waiting few among a fleet), by device
  // ID; a device not connected, unknown or named twice gives no row or one.
  virtual std::vector<DeviceSession> connected_sessions_of(
      std::span<const std::string> device_ids) = 0;
  // The registry's change mark: the id of the newest audit row (0 when none). Every change that
  // matters to admission writes an audit row, so a poller compares marks.
  virtual std::int64_t change_mark() = 0;
  // Audit rows with id > after_id, oldest first, at most `limit`.
  virtual std::vector<AuditEntry> audit_after(std::int64_t after_id, std::int64_t limit) = 0;
};

// Incident response (schema v8, issue 10 §4). An incident is opened for one scope — a CA whose key
// is suspected stolen ("ca"), or a manufacturing lot or site whose device certificates are suspect
// ("lot", "site") — with the operator's compromise time. While it is open the authentication
// decision admits a certificate of that scope only when it is exactly one the registry recorded
// before the compromise, and only for the rotation methods (auth.hpp, "incident-pinned").
struct Incident {
  std::int64_t id = 0;
  std::string scope_kind;  // "ca" | "lot" | "site"
  std::string scope;       // the CA's name, the lot or the site
  std::string reason;      // RFC 5280 CRLReason name ("cACompromise", "keyCompromise", …)
  std::int64_t compromised_at = 0;            // unix seconds, given by the operator
  std::int64_t opened_at = 0, closed_at = 0;  // closed_at 0: open
  std::string job_id;                         // the incident job, once recorded
  std::int64_t ca_revoked_at = 0;             // "ca" scope: when the CA was marked revoked
};

// What the decision needs to pin one certificate: a point query by serial (the primary key).
struct PinnedCert {
  std::string serial, device_id, ca_name, sha256, lot, site;
  std::string batch_id;  // an incident job's own replacements carry its job id
  CertState state = CertState::kIntent;
  std::int64_t created_at = 0, revoked_at = 0;
  std::string revocation_reason;
};

class IncidentStore {
 public:
  virtual ~IncidentStore() = default;
  // Records an open incident with an audit row "incident.open" (the broker's watcher re-checks
  // live sessions on it). Returns its id. kAlreadyExists when one is open for that scope.
  virtual std::int64_t open_incident(const Incident& incident) = 0;
  virtual void set_incident_job(std::int64_t id, const std::string& job_id) = 0;
  // The CA of a "ca" incident is marked revoked (once: a later call keeps the first time), with
  // an audit row "incident.ca-revoke" ({"reason","incident"}).
  virtual void mark_incident_ca_revoked(std::int64_t id, std::int64_t at) = 0;
  // Closes it (once) with an audit row "incident.close".
  virtual void close_incident(std::int64_t id, std::int64_t at) = 0;
  virtual std::vector<Incident> list_incidents(bool open_only) = 0;  // by id
  virtual std::optional<Incident> find_incident(std::int64_t id) = 0;
  virtual std::optional<PinnedCert> pinned_cert(const std::string& serial) = 0;
  // Serials of the issued certificates of a scope ("ca": ca_name, "lot", "site": lineage)
  // recorded at or before `recorded_until`, less those of batch `except_batch` when it is not
  // empty: the certificates an incident revokes when it closes (recorded until the second it
  // opened), less its job's own replacements. Certificates are recorded to the second, so the
  // bound is inclusive and the job's batch, not the time, tells its replacements.
  virtual std::vector<std::string> issued_serials_in_scope(const std::string& scope_kind,
                                                           const std::string& scope,
                                                           const std::string& except_batch,
                                                           std::int64_t recorded_until) = 0;
};

// Revocation runs (schema v10, issue 10): the certificates a selector names, CA revocation, and the
// compromised-key blocklist (SPKI SHA-256 of keys a CSR may never use again).
struct CertQuery {
  // Every non-empty field must match; a query with no field set is refused (kInvalidArgument).
  std::string serial, device_id, batch_id, lot, site, line, key_sha256;
  std::vector<std::string> ca_names;            // the issuing CA is one of these
  std::int64_t issued_from = 0, issued_to = 0;  // created_at in [from, to) when to > 0
};

// A device certificate as a revocation sees it (state issued or revoked; never intents).
struct RevocableCert {
  std::string serial, device_id, ca_name, batch_id, lot, line, site;
  CertState state = CertState::kIssued;
  std::string sha256, key_sha256;  // upper-case hex
  std::int64_t not_after = 0, created_at = 0;
  std::string revocation_reason;  // when revoked
};

struct BlockedKey {
  std::string key_sha256;  // upper-case hex, 64 characters
  std::string reason;      // free text or an RFC 5280 reason name
  std::string source;      // "revoke 0x<serial>", "blocklist add", a file name
  std::int64_t added_at = 0;
};

// One chunk of a revocation run, written in one transaction.
struct RevocationChunk {
  std::vector<std::string> serials;  // become revoked (revoke_certs' rules: slots freed, audit)
  std::string reason;                // RFC 5280 CRLReason name
  std::int64_t at = 0;
  // keyCompromise: the keys of the certificates revoked here join the blocklist (source
  // "revoke 0x<serial>").
  bool block_keys = false;
  // Devices left with no working certificate: their individual enrollment becomes disabled, or a
  // disabled one is created with this certificate in its primary slot (DPS then refuses the
  // device even though its group trusts the chain). Audit row "enrollment.individual.disable".
  std::vector<IndividualEnrollment> disable;
};

class RevocationStore {
 public:
  virtual ~RevocationStore() = default;
  // Device certificates in state issued or revoked matching `query`, by serial.
  virtual std::vector<RevocableCert> select_certs(const CertQuery& query) = 0;
  // One transaction: the chunk (see RevocationChunk). Returns how many certificates became
  // revoked (already revoked ones are skipped; an unknown serial is kNotFound, nothing written).
  virtual std::int64_t apply_revocation(const RevocationChunk& chunk) = 0;
  // A CA becomes revoked through CaStore::revoke_ca; these are the revoked ones, by name.
  virtual std::vector<std::string> revoked_ca_names() = 0;
  // The blocklist. add: keys already blocked are kept as they are; returns how many are new;
  // one audit row "blocklist.add". remove: kNotFound when absent; audit "blocklist.remove".
  virtual std::int64_t add_blocked_keys(std::span<const BlockedKey> keys) = 0;
  virtual void remove_blocked_key(const std::string& key_sha256) = 0;
  virtual std::vector<BlockedKey> list_blocked_keys(const ListPage& page) = 0;  // by key
  virtual std::vector<std::string> blocked_key_hashes() = 0;  // what issuance loads per batch
};

// Work shared by several `fleetsign serve --worker` processes over one registry (schema v14).
// A shared batch is a parent batch (BatchRecord, params with "shares") split into shares: ranges of
// its inputs, each run as a batch of its own (ID "PARENT.sNNNN", outputs in OUT/sNNNN) by the
// worker holding the share's lease. A worker killed mid-share stops renewing; once the lease has
// expired another worker claims the share and resumes its batch (intents abandoned, outputs
// re-emitted), so the batch's exactly-once rules hold across workers.
struct BatchShare {
  std::string batch_id;  // the parent
  std::int64_t share = 0;
  std::int64_t first = 0, count = 0;  // the inputs: positions [first, first + count)
  std::string state;                  // "pending" | "done"
  std::string holder;                 // "host:pid" of the last claimant ("" when never claimed)
  std::int64_t lease_until = 0, attempts = 0, done_at = 0;
  std::int64_t issued = 0, rejected = 0;  // the share batch's totals, once done
};

// Who may write for a share while a worker runs it (WorkStore::fence_writes).
struct ShareFence {
  std::string batch_id;
  std::int64_t share = 0;
  std::string holder;
};

// Who may write while holding a lease (WorkStore::fence_lease_writes): a named lease (the
// scheduler's), or a job's (JobStore::acquire_job: `name` is the job's ID).
struct LeaseFence {
  std::string name;
  std::string holder;
  bool job = false;
};

// How long a PostgreSQL connection that holds a lease's lock may sit idle before the server
// ends it, freeing the lock (WorkStore::take_lease).
constexpr std::int64_t kLeaseIdleLimit = 60;

class WorkStore {
 public:
  virtual ~WorkStore() = default;
  // One transaction: the parent batch (state "running") and its shares (state pending), with an
  // audit row "batch.share" ({"shares","devices"}). kAlreadyExists on a taken batch id.
  virtual void create_shared_batch(const BatchRecord& parent,
                                   std::span<const BatchShare> shares) = 0;
  // Claims the first pending share (oldest batch first) that nobody holds or whose lease ended
  // before `now`: it becomes `holder`'s until now + lease_s, and its attempts count up. One
  // conditional UPDATE (with FOR UPDATE SKIP LOCKED on PostgreSQL): two claimants never both win.
  virtual std::optional<BatchShare> claim_batch_share(const std::string& holder, std::int64_t now,
                                                      std::int64_t lease_s) = 0;
  // Extends the lease to `until`; false when `holder` lost it (expired and claimed by another).
  virtual bool renew_batch_share(const std::string& batch_id, std::int64_t share,
                                 const std::string& holder, std::int64_t until) = 0;
  // One transaction: the share is done with its totals (only while `holder` holds it: else
  // kHomeBusy and nothing changes); when it was the batch's last pending share, the parent batch
  // is finished with the sum of its shares' totals and true is returned.
  virtual bool finish_batch_share(const BatchShare& share, const std::string& holder,
                                  std::int64_t now) = 0;
  virtual std::vector<BatchShare> batch_shares(const std::string& batch_id) = 0;  // by share
  // Pending shares that a claim at `now` could take (a worker's tick asks before it spawns).
  virtual std::int64_t claimable_batch_shares(std::int64_t now) = 0;
  // A named lease (the scheduler's): taken when free, expired, already `holder`'s, or held by
  // `stale_holder` (non-empty: a holder the caller knows is dead). Renewing is taking it again.
  // Returns whether `holder` holds it until now + lease_s; `current` (optional) gets the holder.
  //
  // On PostgreSQL the lease is also a session advisory lock of this store's connection, and the
  // lock decides: while another connection holds it, the lease is not taken, whatever its expiry
  // says; when this connection takes the lock, the lease is its holder's at once (the previous
  // holder's connection has ended). The server frees the lock the moment the holder's
  // connection ends: the process exited or was killed, its machine stopped answering TCP
  // keepalives (about 20 s), or it sat idle longer than kLeaseIdleLimit (frozen). The holder
  // must therefore touch the registry more often than that. So a slow holder keeps the lease as
  // long as it works, and a dead one loses it without waiting for the expiry.
  virtual bool take_lease(const std::string& name, const std::string& holder, std::int64_t now,
                          std::int64_t lease_s, const std::string& stale_holder,
                          std::string* current) = 0;
  // Ends `holder`'s lease (and on PostgreSQL this connection's lock); another holder's stays.
  virtual void release_lease(const std::string& name, const std::string& holder) = 0;
  // A fencing token for a lease holder's writes: while set, every write transaction of this
  // store's connection first checks that `holder` still holds lease `name` (on PostgreSQL: that
  // this connection still holds its lock), or job `name` when `job`, and throws kHomeBusy with
  // nothing written when not. The scheduler sets it for its tick, so that a serve that lost the
  // lease mid-tick (frozen, its connection cut) creates no job after another serve took the
  // scheduling over; a job's runner sets it for its run, so that a runner frozen past its
  // heartbeat records nothing (no task state, no certificate) once another runner took the job.
  virtual void fence_lease_writes(std::optional<LeaseFence> fence) = 0;
  // A fencing token for the writes of this store's connection: while set, every write
  // transaction first reads the share's holder under the registry's write lock, and when another
  // worker claimed it, throws kHomeBusy with nothing written. A worker sets it while it runs a
  // share, so that a worker frozen past its lease (SIGSTOP, a VM pause) writes nothing after the
  // share was taken over, even before its lease keeper notices. nullopt lifts it.
  virtual void fence_writes(std::optional<ShareFence> fence) = 0;
  // The registry's clock (Unix seconds; PostgreSQL: the server's): what workers stamp and compare
  // leases with, so that workers on machines whose clocks differ agree on when a lease ends.
  virtual std::int64_t registry_time() = 0;
};

// A write fence (WorkStore::fence_writes or fence_lease_writes) for the life of this object:
// set when it is made, lifted when it goes.
class FenceScope {
 public:
  FenceScope(WorkStore& store, ShareFence fence) : m_store(store), m_lease(false) {
    store.fence_writes(std::move(fence));
  }
  FenceScope(WorkStore& store, LeaseFence fence) : m_store(store), m_lease(true) {
    store.fence_lease_writes(std::move(fence));
  }
  FenceScope(const FenceScope&) = delete;  // one fence, lifted once
  FenceScope& operator=(const FenceScope&) = delete;
  ~FenceScope() {
    if (m_lease) {
      m_store.fence_lease_writes(std::nullopt);
    } else {
      m_store.fence_writes(std::nullopt);
    }
  }

 private:
  WorkStore& m_store;
  bool m_lease;
};

// Every contract at once: what start-up code hands to components that use several. A backend
// (SQLite's Registry below, PostgreSQL later) or a wrapper (tests' fault injection) implements it.
class Stores : public CaStore,
               public CertificateStore,
               public BatchStore,
               public EnrollmentStore,
               public AuditLog,
               public JobStore,
               public FleetStateStore,
               public CrlStore,
               public IncidentStore,
               public RevocationStore,
               public OperatorStore,
               public WorkStore {
 public:
  // The two point lookups of one authentication decision, the certificate's state and the
  // individual enrollment of its CN: a backend answers both in one round trip (on PostgreSQL the
  // round trip is most of a decision's cost).
  struct AuthLookup {
    std::optional<CertState> state;
    std::optional<IndividualEnrollment> individual;
  };
  virtual AuthLookup auth_lookup(const std::string& serial, const std::string& registration_id) {
    return AuthLookup{cert_state(serial), find_individual_slots(registration_id)};
  }
};

}  // namespace fleetsign::engine
