// Registry: the durable record of CAs, issued certificates, batches and the audit log, in SQLite
// through Poco::Data (the SQL is kept portable to PostgreSQL: no SQLite-only types in tables,
// TEXT/BIGINT/BLOB, explicit transactions).
//
// Durability: WAL journal, synchronous=FULL, so a committed transaction survives kill -9 and
// power loss. Every write method is one transaction (BEGIN IMMEDIATE … COMMIT) unless stated;
// a failure rolls back and throws Error(kRegistryError or kRegistryBusy) whose message says what
// was being written ("recording 512 intents (first serial 0x…): database is locked").
//
// Thread safety: one Registry = one connection; NOT thread-safe. Use one per thread, or guard it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace fleetsign::engine {

struct CaRecord {
  std::string name;
  std::string parent;  // empty for a root
  std::string subject;  // one-line DN, openssl -subj form
  std::string key_uri;  // RFC 7512
  std::string key_type;  // "ec-p256", …
  std::vector<std::uint8_t> cert_der;
  std::int64_t not_before = 0;  // unix seconds
  std::int64_t not_after = 0;
  std::string sha1;    // upper-case hex thumbprints
  std::string sha256;
  bool verified = false;  // proof of possession checked (`ca verify`)
  std::int64_t created_at = 0;
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

struct AuditEntry {
  std::int64_t id = 0;
  std::int64_t at = 0;
  std::string actor, action, subject, detail;
};

class Registry final {
 public:
  // Opens or creates the database and migrates its schema to the current version. Throws
  // Error(kSchemaTooNew) when the file was written by a newer fleetsign, kRegistryError on I/O.
  static std::unique_ptr<Registry> open(const std::filesystem::path& file);
  ~Registry();
  Registry(const Registry&) = delete;  // owns a connection
  Registry& operator=(const Registry&) = delete;

  static constexpr int kSchemaVersion = 1;
  int schema_version();

  // --- CAs
  void add_ca(const CaRecord& ca);  // kAlreadyExists when the name is taken
  std::optional<CaRecord> find_ca(const std::string& name);
  std::vector<CaRecord> list_cas();  // by created_at
  void set_ca_verified(const std::string& name, bool verified);

  // --- certificates
  // One transaction for the whole span. A serial already present (in any state) makes the whole
  // call fail with Error(kAlreadyExists) naming it, and nothing is written.
  void record_intents(std::span<const CertIntent> intents);
  // One transaction: each serial must be in state intent; it becomes issued with its DER and
  // thumbprints. Any other state is Error(kRegistryError) and nothing is written.
  void record_issued(std::span<const IssuedCert> certs);
  // Marks every intent of `batch_id` abandoned (their serials stay, never reused). Returns count.
  std::int64_t abandon_intents(const std::string& batch_id);
  std::optional<CertRecord> find_cert(const std::string& serial);
  // Of `device_ids`, those that hold an issued certificate valid at `now` (not_after > now).
  std::vector<std::string> devices_with_valid_cert(std::span<const std::string> device_ids,
                                                   std::int64_t now);
  // Issued certificates of a batch with seq > after_seq, ordered by seq.
  std::vector<CertRecord> batch_issued_after(const std::string& batch_id, std::int64_t after_seq);
  // Device IDs with an issued certificate in a batch (resume rebuilds its duplicate check).
  std::vector<std::string> batch_device_ids(const std::string& batch_id);
  // Counts by state for a batch (or for everything when batch_id is empty).
  std::int64_t count_certs(const std::string& batch_id, CertState state);
  std::vector<CertRecord> certs_of_device(const std::string& device_id);

  // --- batches
  void create_batch(const BatchRecord& batch);  // kAlreadyExists on a taken id
  std::optional<BatchRecord> find_batch(const std::string& id);
  std::vector<BatchRecord> list_batches();  // newest first
  void update_batch_progress(const std::string& id, std::int64_t watermark,
                             const std::string& offsets_json, std::int64_t issued,
                             std::int64_t rejected);
  void finish_batch(const std::string& id, std::int64_t finished_at);

  // --- audit (append-only: the table refuses UPDATE and DELETE by trigger)
  void audit(const std::string& action, const std::string& subject, const std::string& detail);
  std::vector<AuditEntry> audit_log(std::int64_t limit);

 private:
  struct Impl;
  explicit Registry(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace fleetsign::engine
