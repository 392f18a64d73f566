// FaultStores: a Stores that forwards every call to a real backend (the SQLite registry) and lets
// a test act around chosen calls: die with SIGKILL exactly like `kill -9` after the Nth commit of
// intents, throw the error a failing disk or a locked database would, and so on. Crash tests wrap
// the real store this way (leveldb's fault-injection Env) instead of a hook in production code.
//
// Not thread-safe beyond what the wrapped store is (the batch pipeline calls its stores from its
// serial stages, under its own lock).
#pragma once

#include <functional>
#include <map>
#include <span>
#include <string>

#include "fleetsign/engine/stores.hpp"

namespace fleetsign::test {

class FaultStores final : public engine::Stores {
 public:
  // Called before (phase "before") and after (phase "after") each write that matters to the
  // exactly-once invariants, with its name ("record_intents", "record_issued",
  // "update_batch_progress", "add_ca", …) and the 1-based count of calls of that name so far.
  using Hook = std::function<void(const std::string& op, const char* phase, int call)>;

  FaultStores(engine::Stores& inner, Hook hook) : m_inner(inner), m_hook(std::move(hook)) {}

  // Called with the certificates of each record_issued after it committed (the store they went
  // into at hand): a test acts on exactly those, as another process could right then.
  using IssuedHook =
      std::function<void(engine::Stores& inner, std::span<const engine::IssuedCert> certs)>;
  void after_issued(IssuedHook hook) { m_after_issued = std::move(hook); }

  // CaStore
  void add_ca(const engine::CaRecord& ca) override {
    write("add_ca", [&] { m_inner.add_ca(ca); });
  }
  std::optional<engine::CaRecord> find_ca(const std::string& name) override {
    return m_inner.find_ca(name);
  }
  std::vector<engine::CaRecord> list_cas() override { return m_inner.list_cas(); }
  void set_ca_verified(const std::string& name, bool verified) override {
    write("set_ca_verified", [&] { m_inner.set_ca_verified(name, verified); });
  }
  void add_pending_ca(const engine::PendingCa& pending) override {
    write("add_pending_ca", [&] { m_inner.add_pending_ca(pending); });
  }
  std::vector<engine::PendingCa> list_pending_cas() override { return m_inner.list_pending_cas(); }
  void drop_pending_ca(const std::string& name) override {
    write("drop_pending_ca", [&] { m_inner.drop_pending_ca(name); });
  }
  void complete_ca(const engine::CaRecord& ca, const std::string& serial) override {
    write("complete_ca", [&] { m_inner.complete_ca(ca, serial); });
  }
  void record_ca_cert_intent(const engine::CaCertIntent& intent) override {
    write("record_ca_cert_intent", [&] { m_inner.record_ca_cert_intent(intent); });
  }
  void record_ca_cert_issued(const std::string& serial,
                             const std::vector<std::uint8_t>& der) override {
    write("record_ca_cert_issued", [&] { m_inner.record_ca_cert_issued(serial, der); });
  }
  void abandon_ca_cert_intent(const std::string& serial) override {
    write("abandon_ca_cert_intent", [&] { m_inner.abandon_ca_cert_intent(serial); });
  }
  std::optional<engine::CaCertRecord> find_ca_cert(const std::string& serial) override {
    return m_inner.find_ca_cert(serial);
  }
  std::vector<engine::CaCertRecord> ca_certs_of(const std::string& subject_name) override {
    return m_inner.ca_certs_of(subject_name);
  }
  bool revoke_ca(const std::string& name, const std::string& reason, std::int64_t at) override {
    bool changed = false;
    write("revoke_ca", [&] { changed = m_inner.revoke_ca(name, reason, at); });
    return changed;
  }

  // CrlStore
  std::vector<engine::RevokedSerial> revoked_certs_of(const std::string& ca_name) override {
    return m_inner.revoked_certs_of(ca_name);
  }
  std::int64_t reserve_crl_number(const std::string& ca_name) override {
    std::int64_t n = 0;
    write("reserve_crl_number", [&] { n = m_inner.reserve_crl_number(ca_name); });
    return n;
  }
  void store_crl(const engine::CrlRecord& crl) override {
    write("store_crl", [&] { m_inner.store_crl(crl); });
  }
  std::optional<engine::CrlRecord> latest_crl(const std::string& ca_name) override {
    return m_inner.latest_crl(ca_name);
  }

  // CertificateStore
  void record_intents(std::span<const engine::CertIntent> intents) override {
    write("record_intents", [&] { m_inner.record_intents(intents); });
  }
  void record_issued(std::span<const engine::IssuedCert> certs) override {
    write("record_issued", [&] { m_inner.record_issued(certs); });
    if (m_after_issued) m_after_issued(m_inner, certs);
  }
  std::int64_t abandon_intents(const std::string& batch_id) override {
    std::int64_t n = 0;
    write("abandon_intents", [&] { n = m_inner.abandon_intents(batch_id); });
    return n;
  }
  std::int64_t revoke_certs(std::span<const std::string> serials, const std::string& reason,
                            std::int64_t at) override {
    std::int64_t n = 0;
    write("revoke_certs", [&] { n = m_inner.revoke_certs(serials, reason, at); });
    return n;
  }

  std::optional<engine::CertRecord> find_cert(const std::string& serial) override {
    return m_inner.find_cert(serial);
  }
  std::optional<engine::CertState> cert_state(const std::string& serial) override {
    return m_inner.cert_state(serial);
  }
  std::vector<std::string> devices_with_valid_cert(std::span<const std::string> ids,
                                                   std::int64_t now) override {
    return m_inner.devices_with_valid_cert(ids, now);
  }
  std::vector<engine::CertRecord> batch_issued_after(const std::string& batch_id,
                                                     std::int64_t after_seq) override {
    return m_inner.batch_issued_after(batch_id, after_seq);
  }
  std::vector<std::string> batch_device_ids(const std::string& batch_id) override {
    return m_inner.batch_device_ids(batch_id);
  }
  std::int64_t count_certs(const std::string& batch_id, engine::CertState state) override {
    return m_inner.count_certs(batch_id, state);
  }
  std::vector<engine::CertRecord> certs_of_device(const std::string& device_id) override {
    return m_inner.certs_of_device(device_id);
  }

  // BatchStore
  void create_batch(const engine::BatchRecord& batch) override {
    write("create_batch", [&] { m_inner.create_batch(batch); });
  }
  std::optional<engine::BatchRecord> find_batch(const std::string& id) override {
    return m_inner.find_batch(id);
  }
  std::vector<engine::BatchRecord> list_batches(const engine::ListPage& page) override {
    return m_inner.list_batches(page);
  }
  void update_batch_progress(const std::string& id, std::int64_t watermark,
                             const std::string& offsets_json, std::int64_t issued,
                             std::int64_t rejected) override {
    write("update_batch_progress",
          [&] { m_inner.update_batch_progress(id, watermark, offsets_json, issued, rejected); });
  }
  void finish_batch(const std::string& id, std::int64_t finished_at) override {
    write("finish_batch", [&] { m_inner.finish_batch(id, finished_at); });
  }

  // EnrollmentStore
  void save_group(const engine::EnrollmentGroup& group, const std::string& action,
                  bool create) override {
    write("save_group", [&] { m_inner.save_group(group, action, create); });
  }
  std::optional<engine::EnrollmentGroup> find_group(const std::string& name) override {
    return m_inner.find_group(name);
  }
  std::vector<engine::EnrollmentGroup> list_groups() override { return m_inner.list_groups(); }
  void save_individual(const engine::IndividualEnrollment& ie, const std::string& action,
                       bool create) override {
    write("save_individual", [&] { m_inner.save_individual(ie, action, create); });
  }
  std::optional<engine::IndividualEnrollment> find_individual(const std::string& id) override {
    return m_inner.find_individual(id);
  }
  std::vector<engine::IndividualEnrollment> list_individuals() override {
    return m_inner.list_individuals();
  }
  std::optional<engine::IndividualEnrollment> find_individual_slots(
      const std::string& id) override {
    return m_inner.find_individual_slots(id);
  }
  std::optional<engine::DeviceRecord> find_device(const std::string& id) override {
    return m_inner.find_device(id);
  }
  std::vector<engine::DeviceRecord> list_devices(const engine::DeviceFilter& filter) override {
    return m_inner.list_devices(filter);
  }
  std::int64_t count_devices() override { return m_inner.count_devices(); }
  std::vector<engine::ExpiringCert> expiring_device_certs(std::int64_t until,
                                                          const engine::DeviceFilter& filter,
                                                          std::size_t limit) override {
    return m_inner.expiring_device_certs(until, filter, limit);
  }
  std::vector<engine::ExpiryCount> expiry_counts(std::int64_t now, std::int64_t until,
                                                 const std::vector<int>& marks,
                                                 const engine::DeviceFilter& filter) override {
    return m_inner.expiry_counts(now, until, marks, filter);
  }
  std::vector<std::pair<std::string, std::int64_t>> latest_leaf_expiry_by_ca() override {
    return m_inner.latest_leaf_expiry_by_ca();
  }
  std::vector<engine::CaBucketCount> expiry_histogram(std::int64_t from, std::int64_t bucket_s,
                                                      int buckets) override {
    return m_inner.expiry_histogram(from, bucket_s, buckets);
  }
  std::vector<engine::IssuedCount> issued_counts() override { return m_inner.issued_counts(); }
  std::vector<engine::CaDeviceCount> device_counts_by_ca() override {
    return m_inner.device_counts_by_ca();
  }

  // AuditLog
  void audit(const std::string& action, const std::string& subject,
             const std::string& detail) override {
    write("audit", [&] { m_inner.audit(action, subject, detail); });
  }
  std::vector<engine::AuditEntry> audit_log(std::int64_t limit) override {
    return m_inner.audit_log(limit);
  }
  std::vector<engine::AuditEntry> audit_page(const engine::AuditQuery& query) override {
    return m_inner.audit_page(query);
  }

  // JobStore
  int job_store_version() override { return m_inner.job_store_version(); }
  void create_job(const engine::JobRecord& job, std::span<const engine::JobTask> tasks) override {
    write("create_job", [&] { m_inner.create_job(job, tasks); });
  }
  std::optional<engine::JobRecord> find_job(const std::string& id) override {
    return m_inner.find_job(id);
  }
  std::vector<engine::JobRecord> list_jobs(const engine::ListPage& page) override {
    return m_inner.list_jobs(page);
  }
  void set_job_state(const std::string& id, const std::string& state,
                     std::int64_t finished_at) override {
    write("set_job_state", [&] { m_inner.set_job_state(id, state, finished_at); });
  }
  void set_job_report(const std::string& id, const std::string& report_json) override {
    write("set_job_report", [&] { m_inner.set_job_report(id, report_json); });
  }
  void set_job_params(const std::string& id, const std::string& params_json) override {
    write("set_job_params", [&] { m_inner.set_job_params(id, params_json); });
  }
  bool acquire_job(const std::string& id, const std::string& runner, std::int64_t now,
                   std::int64_t stale_before) override {
    bool held = false;
    write("acquire_job", [&] { held = m_inner.acquire_job(id, runner, now, stale_before); });
    return held;
  }
  void heartbeat_job(const std::string& id, const std::string& runner, std::int64_t now) override {
    write("heartbeat_job", [&] { m_inner.heartbeat_job(id, runner, now); });
  }
  void join_job(const std::string& id, const std::string& runner, std::int64_t now) override {
    write("join_job", [&] { m_inner.join_job(id, runner, now); });
  }
  std::vector<engine::JobTask> claim_job_tasks(const std::string& id, const std::string& runner,
                                               std::int64_t stale_before, std::int64_t below_seq,
                                               std::int64_t limit) override {
    std::vector<engine::JobTask> out;
    write("claim_job_tasks",
          [&] { out = m_inner.claim_job_tasks(id, runner, stale_before, below_seq, limit); });
    return out;
  }
  engine::JobShare job_share(const std::string& id, std::int64_t stale_before) override {
    return m_inner.job_share(id, stale_before);
  }
  void release_job(const std::string& id, const std::string& runner) override {
    write("release_job", [&] { m_inner.release_job(id, runner); });
  }
  std::vector<engine::JobTask> job_tasks(const std::string& id, const std::string& state) override {
    return m_inner.job_tasks(id, state);
  }
  std::vector<std::pair<std::string, std::int64_t>> count_job_tasks(
      const std::string& id) override {
    return m_inner.count_job_tasks(id);
  }
  void save_job_tasks(std::span<const engine::JobTask> tasks,
                      std::span<const engine::SlotChange> changes) override {
    write("save_job_tasks", [&] { m_inner.save_job_tasks(tasks, changes); });
  }
  void add_job_tasks(std::span<const engine::JobTask> tasks) override {
    write("add_job_tasks", [&] { m_inner.add_job_tasks(tasks); });
  }

  // FleetStateStore
  std::int64_t set_desired(const std::string& device_id, const std::string& patch) override {
    std::int64_t v = 0;
    write("set_desired", [&] { v = m_inner.set_desired(device_id, patch); });
    return v;
  }
  std::optional<engine::Twin> twin(const std::string& device_id) override {
    return m_inner.twin(device_id);
  }
  std::int64_t apply_reported(const std::string& device_id, const std::string& patch) override {
    std::int64_t v = 0;
    write("apply_reported", [&] { v = m_inner.apply_reported(device_id, patch); });
    return v;
  }
  void store_reported(std::span<const engine::ReportedTwin> twins) override {
    write("store_reported", [&] { m_inner.store_reported(twins); });
  }
  void record_sessions(std::span<const engine::DeviceSession> sessions) override {
    write("record_sessions", [&] { m_inner.record_sessions(sessions); });
  }
  std::int64_t mark_all_disconnected(std::int64_t at) override {
    std::int64_t n = 0;
    write("mark_all_disconnected", [&] { n = m_inner.mark_all_disconnected(at); });
    return n;
  }
  std::vector<engine::DeviceSession> connected_devices() override {
    return m_inner.connected_devices();
  }
  std::vector<engine::DeviceSession> connected_sessions_of(
      std::span<const std::string> device_ids) override {
    return m_inner.connected_sessions_of(device_ids);
  }
  std::int64_t change_mark() override { return m_inner.change_mark(); }
  std::vector<engine::AuditEntry> audit_after(std::int64_t after_id, std::int64_t limit) override {
    return m_inner.audit_after(after_id, limit);
  }

  // IncidentStore
  std::int64_t open_incident(const engine::Incident& incident) override {
    std::int64_t id = 0;
    write("open_incident", [&] { id = m_inner.open_incident(incident); });
    return id;
  }
  void set_incident_job(std::int64_t id, const std::string& job_id) override {
    write("set_incident_job", [&] { m_inner.set_incident_job(id, job_id); });
  }
  void mark_incident_ca_revoked(std::int64_t id, std::int64_t at) override {
    write("mark_incident_ca_revoked", [&] { m_inner.mark_incident_ca_revoked(id, at); });
  }
  void close_incident(std::int64_t id, std::int64_t at) override {
    write("close_incident", [&] { m_inner.close_incident(id, at); });
  }
  std::vector<engine::Incident> list_incidents(bool open_only) override {
    return m_inner.list_incidents(open_only);
  }
  std::optional<engine::Incident> find_incident(std::int64_t id) override {
    return m_inner.find_incident(id);
  }
  std::optional<engine::PinnedCert> pinned_cert(const std::string& serial) override {
    return m_inner.pinned_cert(serial);
  }
  std::vector<std::string> issued_serials_in_scope(const std::string& scope_kind,
                                                   const std::string& scope,
                                                   const std::string& except_batch,
                                                   std::int64_t recorded_until) override {
    return m_inner.issued_serials_in_scope(scope_kind, scope, except_batch, recorded_until);
  }

  // RevocationStore
  std::vector<engine::RevocableCert> select_certs(const engine::CertQuery& query) override {
    return m_inner.select_certs(query);
  }
  std::int64_t apply_revocation(const engine::RevocationChunk& chunk) override {
    std::int64_t n = 0;
    write("apply_revocation", [&] { n = m_inner.apply_revocation(chunk); });
    return n;
  }
  std::vector<std::string> revoked_ca_names() override { return m_inner.revoked_ca_names(); }
  std::int64_t add_blocked_keys(std::span<const engine::BlockedKey> keys) override {
    std::int64_t n = 0;
    write("add_blocked_keys", [&] { n = m_inner.add_blocked_keys(keys); });
    return n;
  }
  void remove_blocked_key(const std::string& key_sha256) override {
    write("remove_blocked_key", [&] { m_inner.remove_blocked_key(key_sha256); });
  }
  std::vector<engine::BlockedKey> list_blocked_keys(const engine::ListPage& page) override {
    return m_inner.list_blocked_keys(page);
  }
  std::vector<std::string> blocked_key_hashes() override { return m_inner.blocked_key_hashes(); }

  // OperatorStore
  void add_operator(const engine::OperatorRecord& op) override {
    write("add_operator", [&] { m_inner.add_operator(op); });
  }
  std::optional<engine::OperatorRecord> find_operator_by_cert(const std::string& sha256) override {
    return m_inner.find_operator_by_cert(sha256);
  }
  std::vector<engine::OperatorRecord> list_operators() override { return m_inner.list_operators(); }
  void remove_operator(const std::string& name, std::int64_t at) override {
    write("remove_operator", [&] { m_inner.remove_operator(name, at); });
  }

  // WorkStore: passed through (the shared batch's own writes are not fault points).
  void create_shared_batch(const engine::BatchRecord& parent,
                           std::span<const engine::BatchShare> shares) override {
    m_inner.create_shared_batch(parent, shares);
  }
  std::optional<engine::BatchShare> claim_batch_share(const std::string& holder, std::int64_t now,
                                                      std::int64_t lease_s) override {
    return m_inner.claim_batch_share(holder, now, lease_s);
  }
  bool renew_batch_share(const std::string& batch_id, std::int64_t share, const std::string& holder,
                         std::int64_t until) override {
    return m_inner.renew_batch_share(batch_id, share, holder, until);
  }
  bool finish_batch_share(const engine::BatchShare& share, const std::string& holder,
                          std::int64_t now) override {
    return m_inner.finish_batch_share(share, holder, now);
  }
  std::vector<engine::BatchShare> batch_shares(const std::string& batch_id) override {
    return m_inner.batch_shares(batch_id);
  }
  void fence_writes(std::optional<engine::ShareFence> fence) override {
    m_inner.fence_writes(std::move(fence));
  }
  void fence_lease_writes(std::optional<engine::LeaseFence> fence) override {
    m_inner.fence_lease_writes(std::move(fence));
  }
  std::int64_t claimable_batch_shares(std::int64_t now) override {
    return m_inner.claimable_batch_shares(now);
  }
  bool take_lease(const std::string& name, const std::string& holder, std::int64_t now,
                  std::int64_t lease_s, const std::string& stale_holder,
                  std::string* current) override {
    return m_inner.take_lease(name, holder, now, lease_s, stale_holder, current);
  }
  void release_lease(const std::string& name, const std::string& holder) override {
    m_inner.release_lease(name, holder);
  }
  std::int64_t registry_time() override { return m_inner.registry_time(); }

 private:
  template <typename F>
  void write(const std::string& op, F&& f) {
    const int call = ++m_calls[op];
    m_hook(op, "before", call);
    f();
    m_hook(op, "after", call);
  }
  engine::Stores& m_inner;
  Hook m_hook;
  IssuedHook m_after_issued;
  std::map<std::string, int> m_calls;
};

}  // namespace fleetsign::test
