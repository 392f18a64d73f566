// Registry: every store contract (stores.hpp) over one SQL connection, on SQLite (the embedded
// default, a file) or PostgreSQL (a postgresql:// URL), through the driver seam in
// store/src/sql.hpp. The SQL is written once; statements are prepared once per connection.
//
// Durability: SQLite runs a WAL journal with synchronous=FULL; every write is one transaction
// that takes the registry's write lock first (BEGIN IMMEDIATE on SQLite, a transaction-scoped
// advisory lock on PostgreSQL), so writers from several processes run one after another.
// Thread safety: one Registry = one connection; NOT thread-safe. Use one per thread, or guard it.
// Only start-up code (Home, Services) names this class; components take the contracts.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string_view>

#include "fleetsign/engine/stores.hpp"

namespace fleetsign::engine {

// What the registry stamps on what it records. Services passes its injected clock and the
// front end's user; without a clock (tools and tests that open a registry file directly), the
// registry uses the system time.
struct RegistryOptions {
  std::function<std::int64_t()> now;  // unix seconds
  std::string actor = "unknown";      // who acts, in every audit row
  // PostgreSQL: a database without the registry's tables is Error(kRegistryMissing), not made
  // (Home::open_registry; only init creates a registry).
  bool must_exist = false;
};

// True for a postgresql:// or postgres:// URL (Registry::open then connects instead of opening a
// file).
bool is_postgres_url(std::string_view text);
// True when a registry URL carries a password (in its user part, or a password= or sslpassword=
// parameter, however percent-encoded).
bool registry_url_holds_password(const std::string& url);
// Whether a PostgreSQL URL names its database (/DATABASE or dbname=).
bool registry_url_names_database(const std::string& url);
// The URL with its passwords replaced by "***", for messages.
std::string redacted_registry_url(const std::string& url);

class Registry final : public Stores {
 public:
  // Opens or creates the database and migrates its schema to the current version. `file` is a
  // SQLite file, or a postgresql:// URL (the database must exist; its tables are created). Throws
  // Error(kSchemaTooNew) when it was written by a newer fleetsign, kRegistryError on I/O or when
  // the server cannot be reached (the message never shows a password).
  static std::unique_ptr<Registry> open(const std::filesystem::path& file,
                                        RegistryOptions options = {});
  ~Registry() override;
  Registry(const Registry&) = delete;  // owns a connection
  Registry& operator=(const Registry&) = delete;

  static constexpr int kSchemaVersion = 16;
  int schema_version();

  // CaStore
  void add_ca(const CaRecord& ca) override;
  std::optional<CaRecord> find_ca(const std::string& name) override;
  std::vector<CaRecord> list_cas() override;
  void set_ca_verified(const std::string& name, bool verified) override;
  void add_pending_ca(const PendingCa& pending) override;
  std::vector<PendingCa> list_pending_cas() override;
  void drop_pending_ca(const std::string& name) override;
  void complete_ca(const CaRecord& ca, const std::string& serial) override;
  void record_ca_cert_intent(const CaCertIntent& intent) override;
  void record_ca_cert_issued(const std::string& serial,
                             const std::vector<std::uint8_t>& der) override;
  void abandon_ca_cert_intent(const std::string& serial) override;
  std::optional<CaCertRecord> find_ca_cert(const std::string& serial) override;
  std::vector<CaCertRecord> ca_certs_of(const std::string& subject_name) override;
  bool revoke_ca(const std::string& name, const std::string& reason, std::int64_t at) override;

  // CertificateStore
  void record_intents(std::span<const CertIntent> intents) override;
  std::vector<RefusedDevice> record_new_device_intents(std::span<const CertIntent> intents,
                                                       std::int64_t now) override;
  void record_issued(std::span<const IssuedCert> certs) override;
  std::int64_t abandon_intents(const std::string& batch_id) override;
  std::int64_t revoke_certs(std::span<const std::string> serials, const std::string& reason,
                            std::int64_t at) override;
  std::optional<CertRecord> find_cert(const std::string& serial) override;
  std::optional<CertState> cert_state(const std::string& serial) override;
  std::vector<std::string> devices_with_valid_cert(std::span<const std::string> device_ids,
                                                   std::int64_t now) override;
  std::vector<CertRecord> batch_issued_after(const std::string& batch_id,
                                             std::int64_t after_seq) override;
  std::vector<std::string> batch_device_ids(const std::string& batch_id) override;
  std::int64_t count_certs(const std::string& batch_id, CertState state) override;
  std::vector<CertRecord> certs_of_device(const std::string& device_id) override;

  // BatchStore
  void create_batch(const BatchRecord& batch) override;
  std::optional<BatchRecord> find_batch(const std::string& id) override;
  std::vector<BatchRecord> list_batches(const ListPage& page) override;
  void update_batch_progress(const std::string& id, std::int64_t watermark,
                             const std::string& offsets_json, std::int64_t issued,
                             std::int64_t rejected) override;
  void finish_batch(const std::string& id, std::int64_t finished_at) override;

  // EnrollmentStore (point lookups for the auth decision run on statements prepared once)
  void save_group(const EnrollmentGroup& group, const std::string& action, bool create) override;
  std::optional<EnrollmentGroup> find_group(const std::string& name) override;
  std::vector<EnrollmentGroup> list_groups() override;
  void save_individual(const IndividualEnrollment& ie, const std::string& action,
                       bool create) override;
  std::optional<IndividualEnrollment> find_individual(const std::string& registration_id) override;
  std::vector<IndividualEnrollment> list_individuals() override;
  std::optional<IndividualEnrollment> find_individual_slots(
      const std::string& registration_id) override;
  std::optional<DeviceRecord> find_device(const std::string& registration_id) override;
  std::vector<DeviceRecord> list_devices(const DeviceFilter& filter) override;
  std::int64_t count_devices() override;
  AuthLookup auth_lookup(const std::string& serial, const std::string& registration_id) override;
  std::vector<ExpiringCert> expiring_device_certs(std::int64_t until, const DeviceFilter& filter,
                                                  std::size_t limit) override;
  std::vector<ExpiryCount> expiry_counts(std::int64_t now, std::int64_t until,
                                         const std::vector<int>& marks,
                                         const DeviceFilter& filter) override;
  std::vector<std::pair<std::string, std::int64_t>> latest_leaf_expiry_by_ca() override;
  std::vector<CaBucketCount> expiry_histogram(std::int64_t from, std::int64_t bucket_s,
                                              int buckets) override;
  std::vector<IssuedCount> issued_counts() override;
  std::vector<CaDeviceCount> device_counts_by_ca() override;

  // AuditLog (append-only: the table refuses UPDATE and DELETE by trigger)
  void audit(const std::string& action, const std::string& subject,
             const std::string& detail) override;
  std::vector<AuditEntry> audit_log(std::int64_t limit) override;
  std::vector<AuditEntry> audit_page(const AuditQuery& query) override;

  // JobStore (registry_jobs.cpp; schema v6)
  int job_store_version() override;
  void create_job(const JobRecord& job, std::span<const JobTask> tasks) override;
  std::optional<JobRecord> find_job(const std::string& id) override;
  std::vector<JobRecord> list_jobs(const ListPage& page) override;
  void set_job_state(const std::string& id, const std::string& state,
                     std::int64_t finished_at) override;
  void set_job_report(const std::string& id, const std::string& report_json) override;
  void set_job_params(const std::string& id, const std::string& params_json) override;
  bool acquire_job(const std::string& id, const std::string& runner, std::int64_t now,
                   std::int64_t stale_before) override;
  void heartbeat_job(const std::string& id, const std::string& runner, std::int64_t now) override;
  void join_job(const std::string& id, const std::string& runner, std::int64_t now) override;
  std::vector<JobTask> claim_job_tasks(const std::string& id, const std::string& runner,
                                       std::int64_t stale_before, std::int64_t below_seq,
                                       std::int64_t limit) override;
  JobShare job_share(const std::string& id, std::int64_t stale_before) override;
  void release_job(const std::string& id, const std::string& runner) override;
  std::vector<JobTask> job_tasks(const std::string& id, const std::string& state) override;
  std::vector<std::pair<std::string, std::int64_t>> count_job_tasks(const std::string& id) override;
  void save_job_tasks(std::span<const JobTask> tasks, std::span<const SlotChange> changes) override;
  void add_job_tasks(std::span<const JobTask> tasks) override;

  // FleetStateStore (registry_fleet_state.cpp)
  std::int64_t set_desired(const std::string& device_id, const std::string& patch_json) override;
  std::optional<Twin> twin(const std::string& device_id) override;
  std::int64_t apply_reported(const std::string& device_id, const std::string& patch_json) override;
  void store_reported(std::span<const ReportedTwin> twins) override;
  void record_sessions(std::span<const DeviceSession> sessions) override;
  std::int64_t mark_all_disconnected(std::int64_t at) override;
  std::vector<DeviceSession> connected_devices() override;
  std::vector<DeviceSession> connected_sessions_of(
      std::span<const std::string> device_ids) override;
  std::int64_t change_mark() override;
  std::vector<AuditEntry> audit_after(std::int64_t after_id, std::int64_t limit) override;

  // CrlStore (registry_crls.cpp; schema v8)
  std::vector<RevokedSerial> revoked_certs_of(const std::string& ca_name) override;
  std::int64_t reserve_crl_number(const std::string& ca_name) override;
  void store_crl(const CrlRecord& crl) override;
  std::optional<CrlRecord> latest_crl(const std::string& ca_name) override;

  // IncidentStore (registry_incidents.cpp; schema v8)
  std::int64_t open_incident(const Incident& incident) override;
  void set_incident_job(std::int64_t id, const std::string& job_id) override;
  void mark_incident_ca_revoked(std::int64_t id, std::int64_t at) override;
  void close_incident(std::int64_t id, std::int64_t at) override;
  std::vector<Incident> list_incidents(bool open_only) override;
  std::optional<Incident> find_incident(std::int64_t id) override;
  std::optional<PinnedCert> pinned_cert(const std::string& serial) override;
  std::vector<std::string> issued_serials_in_scope(const std::string& scope_kind,
                                                   const std::string& scope,
                                                   const std::string& except_batch,
                                                   std::int64_t recorded_until) override;

  // RevocationStore (registry_revocation.cpp; schema v10)
  std::vector<RevocableCert> select_certs(const CertQuery& query) override;
  std::int64_t apply_revocation(const RevocationChunk& chunk) override;
  std::vector<std::string> revoked_ca_names() override;
  std::int64_t add_blocked_keys(std::span<const BlockedKey> keys) override;
  void remove_blocked_key(const std::string& key_sha256) override;
  std::vector<BlockedKey> list_blocked_keys(const ListPage& page) override;
  std::vector<std::string> blocked_key_hashes() override;

  // OperatorStore (registry_operators.cpp; schema v13)
  void add_operator(const OperatorRecord& op) override;
  std::optional<OperatorRecord> find_operator_by_cert(const std::string& sha256) override;
  std::vector<OperatorRecord> list_operators() override;
  void remove_operator(const std::string& name, std::int64_t at) override;

  // WorkStore (registry_work.cpp; schema v14)
  void create_shared_batch(const BatchRecord& parent, std::span<const BatchShare> shares) override;
  std::optional<BatchShare> claim_batch_share(const std::string& holder, std::int64_t now,
                                              std::int64_t lease_s) override;
  bool renew_batch_share(const std::string& batch_id, std::int64_t share, const std::string& holder,
                         std::int64_t until) override;
  bool finish_batch_share(const BatchShare& share, const std::string& holder,
                          std::int64_t now) override;
  std::vector<BatchShare> batch_shares(const std::string& batch_id) override;
  std::int64_t claimable_batch_shares(std::int64_t now) override;
  bool take_lease(const std::string& name, const std::string& holder, std::int64_t now,
                  std::int64_t lease_s, const std::string& stale_holder,
                  std::string* current) override;
  void release_lease(const std::string& name, const std::string& holder) override;
  void fence_writes(std::optional<ShareFence> fence) override;
  void fence_lease_writes(std::optional<LeaseFence> fence) override;
  std::int64_t registry_time() override;

  struct Impl;  // registry_impl.hpp (shared by the registry_*.cpp files)

 private:
  // record_intents, and record_new_device_intents when `check_at` is set.
  void insert_intents(std::span<const CertIntent> intents, const std::int64_t* check_at,
                      std::vector<RefusedDevice>* refused);
  explicit Registry(std::unique_ptr<Impl> impl);
  static std::unique_ptr<Registry> open_postgres(const std::string& url, RegistryOptions options);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace fleetsign::engine
