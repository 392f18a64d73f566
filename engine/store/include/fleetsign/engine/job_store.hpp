// The job store's contract (part of Stores, stores.hpp): persisted jobs, their tasks, and the
// runners that share them. Same durability and threading rules as stores.hpp.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "fleetsign/engine/records.hpp"

namespace fleetsign::engine {

// Persisted jobs (schema v6): multi-step operations over many devices — device rollovers, CA
// rollovers, breach rolls, and revocation runs next. A job keeps everything needed to resume it
// (params_json), a state, a lease (the process running it, with a heartbeat), and one task per
// device with the step it reached. Task rows are written in batches by the runner (one
// transaction per flush); every step they record is idempotent towards the device, so a flush
// lost to kill -9 only repeats steps.
struct JobRecord {
  std::string id;
  std::string kind;   // "device-rollover" | "ca-rollover" | "breach-roll" | "revocation"
  std::string state;  // "running" | "paused" | "canceled" | "aborted" | "finished"
  std::string params_json;
  std::string report_json = "{}";  // job-level progress that is not per task (a CA roll's phase)
  std::string runner;              // lease holder "host:pid"; empty when none
  std::int64_t heartbeat_at = 0;
  std::int64_t created_at = 0, updated_at = 0, finished_at = 0;
};

struct JobTask {
  std::string job_id;
  std::int64_t seq = 0;  // position in the job: waves and the certificates' seq follow it
  std::string device_id;
  // "pending" | "active" | "done" and the final failures "offline", "refused", "timed-out",
  // "aborted", "canceled", "conflict"
  std::string state = "pending";
  // The last step completed: "" (none) | "csr" | "sign" | "install" | "reprovision" | "confirm"
  // | "retire"
  std::string step;
  std::int64_t attempts = 0;
  std::string target_slot;  // "primary" | "secondary": the slot the new certificate goes into
  std::string old_serial;   // the certificate it replaces
  std::string new_serial, new_sha256;
  std::int64_t next_at = 0;  // not before this time (retry backoff); 0 = now
  int last_status = 0;       // the last method call's status (404, 504, the device's own)
  std::string last_error;    // why the task is not done, in a sentence
  std::int64_t started_at = 0, updated_at = 0, finished_at = 0;
  std::string error_code;  // the failure's error code name ("key_blocked"), when it has one
  // The runner that claimed it (schema v15; read only: claim_job_tasks sets it). It stays on a
  // task that ended, to say who ran it.
  std::string runner;
};

// How a job's open tasks stand among its runners (JobStore::job_share). Open: pending, active,
// or offline waiting for a retry.
struct JobShare {
  std::int64_t first_open_seq = -1;  // the lowest seq of a pending or active task; -1 when none
  std::int64_t open = 0;             // open tasks
  std::int64_t unclaimed = 0;        // open tasks held by no live runner
  std::int64_t first_unclaimed_seq = -1;  // the lowest seq of an open task with no runner; -1
  std::int64_t runners = 0;               // live runners (heartbeat at or after stale_before)
};

// A change to slots made in the same transaction as task rows.
struct SlotChange {
  enum class Kind {
    kRetireDevice,    // the device's slot that does not hold `serial` becomes free, and the
                      // certificate it held is revoked ("superseded": it cannot log in again)
    kIndividualSlot,  // the individual enrollment's `slot` holds `cert_der` (empty: free)
    kReleaseDevice,   // the device's slot that holds `serial` becomes free (none: no-op), and
                      // the certificate is revoked ("cessationOfOperation": never switched to)
  };
  Kind kind = Kind::kRetireDevice;
  std::string device_id;  // also the individual enrollment's registration ID
  std::string serial;     // kRetireDevice: the certificate that stays
  Slot slot = Slot::kPrimary;
  std::vector<std::uint8_t> cert_der;
};

class JobStore {
 public:
  virtual ~JobStore() = default;
  virtual int job_store_version() = 0;  // which job-store format a backend holds (0: none)

  // One transaction: the job and its tasks, with an audit row "job.create". kAlreadyExists when
  // the id is taken.
  virtual void create_job(const JobRecord& job, std::span<const JobTask> tasks) = 0;
  virtual std::optional<JobRecord> find_job(const std::string& id) = 0;
  virtual std::vector<JobRecord> list_jobs(const ListPage& page) = 0;  // newest first
  // The state (and finished_at, when `finished_at` is not 0) with an audit row "job.<state>".
  virtual void set_job_state(const std::string& id, const std::string& state,
                             std::int64_t finished_at) = 0;
  virtual void set_job_report(const std::string& id, const std::string& report_json) = 0;
  // Replaces the job's parameters (retry-failed extends a deadline that passed), with an audit
  // row "job.params". kNotFound when there is no such job.
  virtual void set_job_params(const std::string& id, const std::string& params_json) = 0;
  // Several runners share a job (schema v15; issue 13's workers): the one holding the job's
  // lease (acquire_job), which also does the job-level steps (an incident's cut-off, the end of a
  // CA rollover), and helpers (join_job). Each runner has a membership row that its heartbeat
  // renews. A runner writes only while its row lives (its writes are fenced by it,
  // WorkStore::fence_lease_writes), and the open tasks it claimed (claim_job_tasks) are its own
  // until then. A runner whose heartbeat went stale loses its row and its open tasks to the next
  // claim, or to acquire_job when it held the lease, in the same transaction.
  //
  // The lease: the job becomes `runner`'s when it has no runner, or `runner` holds it already,
  // or its heartbeat is older than `stale_before`. Returns whether `runner` holds it now; when it
  // does, `runner` is also a member. Both calls start a run: open tasks an earlier run under the
  // same name held (a restarted host with the same pid) are freed.
  virtual bool acquire_job(const std::string& id, const std::string& runner, std::int64_t now,
                           std::int64_t stale_before) = 0;
  // `runner` becomes (or stays) a member, without the lease. kNotFound when there is no job.
  virtual void join_job(const std::string& id, const std::string& runner, std::int64_t now) = 0;
  // Renews the membership (and the lease, for its holder). kHomeBusy when `runner` is no longer
  // a member (another runner took its tasks over).
  virtual void heartbeat_job(const std::string& id, const std::string& runner,
                             std::int64_t now) = 0;
  // The lease (when `runner` holds it), the membership, and the open tasks it holds, given back.
  virtual void release_job(const std::string& id, const std::string& runner) = 0;
  // One transaction: the members with a heartbeat older than `stale_before` lose their rows and
  // their open tasks; then up to `limit` (0: all) open tasks held by no runner, with seq below
  // `below_seq`, become `runner`'s, by seq. On PostgreSQL the rows are chosen FOR UPDATE SKIP
  // LOCKED, so runners claiming together get different tasks. The open intents of the tasks
  // claimed are abandoned (a runner that held them before writes no more). `runner` must be a
  // member. Returns the tasks claimed.
  virtual std::vector<JobTask> claim_job_tasks(const std::string& id, const std::string& runner,
                                               std::int64_t stale_before, std::int64_t below_seq,
                                               std::int64_t limit) = 0;
  virtual JobShare job_share(const std::string& id, std::int64_t stale_before) = 0;

  // Tasks by seq; `state` empty = all.
  virtual std::vector<JobTask> job_tasks(const std::string& id, const std::string& state) = 0;
  virtual std::vector<std::pair<std::string, std::int64_t>> count_job_tasks(
      const std::string& id) = 0;  // (state, count), by state
  // One transaction: each task row replaces the row with its (job_id, device_id) (kNotFound when
  // there is none; a writer that is not a job's runner, such as retry-failed, also frees the
  // task for the next claim), then the slot changes apply in order. kRetireDevice: kRegistryError
  // when `serial` is in neither slot of the device. kIndividualSlot: kNotFound without the
  // enrollment; it writes the audit row "enrollment.individual.set-slot" (admission changes).
  virtual void save_job_tasks(std::span<const JobTask> tasks,
                              std::span<const SlotChange> changes) = 0;
  // Appends tasks to an existing job (retry-failed keeps rows; this is for jobs that grow, such
  // as a CA rollover adding devices). kAlreadyExists on a device already in the job.
  virtual void add_job_tasks(std::span<const JobTask> tasks) = 0;
};

}  // namespace fleetsign::engine
