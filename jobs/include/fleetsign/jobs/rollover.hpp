// Device rollovers as jobs: a selection of devices, a plan (what would happen, changing nothing),
// a persisted job (JobStore), and the runner that takes every device through the rotation
// protocol of broker/PROTOCOL.md ("Rotation methods"):
//
//   createCsr → sign (job_issue.hpp: intent → token → record) → installCertificate → [individual
//   enrollment: the new certificate enters the enrollment's free slot] → reprovision → confirm
//   (the broker records the device connected with the new certificate) → retire (the old
//   certificate leaves its slot, in the transaction that marks the task done)
//
// Every step is idempotent towards the device and keyed by (job, device, step), so a runner
// killed at any moment is resumed by another (`job resume`, `serve`) that repeats at most the
// steps whose record it lost, and never signs a second certificate for a device in one job.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/jobs/trigger.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::jobs {

// Which devices a job covers; every filter given applies. At least one is required.
struct Selection {
  std::string group;                    // devices whose CA belongs to the enrollment group
  std::string lot;                      // devices of a manufacturing lot
  std::int64_t expiring_within_s = -1;  // a current certificate expires within this; -1 = any
  std::vector<std::string> devices;     // explicit IDs (--devices FILE, --device ID)
  bool empty() const noexcept {
    return group.empty() && lot.empty() && expiring_within_s < 0 && devices.empty();
  }
};

// AWS IoT Jobs' rollout: a constant rate, or an exponential one that grows by `factor` after
// every `every` devices done, starting at `base` per minute. 0 = unlimited.
struct Rollout {
  int per_minute = 0;
  int base_per_minute = 0;
  double factor = 1.0;
  int every = 0;
};

struct RolloverParams {
  Selection selection;
  std::string ca;  // the CA that signs the new certificates; empty = each device's current CA
  // An incident's replacements: a device whose current CA is a key here is signed by the value
  // (the compromised CA and every CA below it each have their own); before `ca`.
  std::map<std::string, std::string> ca_map;
  std::string key_type = "ec-p256";  // the device's new key (createCsr's keyType)
  Rollout rollout;
  int wave = 0;              // devices per wave: a wave starts when the last one is settled
  double abort_percent = 0;  // stop when failures reach this share of settled devices; 0 = never
  int min_executed = 0;      // … once at least this many are settled
  int step_timeout_s = 30;   // each method call, and the wait for the reconnection
  int retries = 1;           // further tries of a device that timed out or answered an error
  int offline_retry_s = 30;  // an offline device is tried again after this, until the deadline
  std::int64_t deadline =
      0;                // unix seconds: offline devices stop being retried; 0 = 24 h after start
  int in_flight = 256;  // devices in progress at once
  // How a reconnection is confirmed: "session" (the broker's session records; with IoT Hub the
  // device is asked anyway) or "method" (ask the device with getCertificate). Kept with the job,
  // so `job resume` and `serve` confirm as `start` did.
  std::string confirm = "session";
  std::string kind = "device-rollover";
};

std::string params_json(const RolloverParams& params);
// kInvalidArgument naming `origin` and the field.
RolloverParams parse_params(std::string_view json_text, std::string_view origin);
// "30d", "12h", "90m", "45s" or a plain number of seconds; kUsage naming `what` otherwise.
std::int64_t parse_duration(std::string_view text, std::string_view what);
// A deadline: a duration from `now` with its unit ("30m", "7d") or an RFC 3339 time after `now`.
// A bare number is refused (is "7" seven seconds or seven days?); kUsage naming `what`.
std::int64_t parse_deadline(std::string_view text, std::int64_t now, std::string_view what);

struct PlannedDevice {
  std::string device_id, ca_name, group, lot;
  std::string old_serial;
  std::int64_t old_not_after = 0;
  std::string target_slot;  // the registry slot the new certificate goes into
  std::string enrollment;   // the individual enrollment's ID, when one decides for the device
  std::string conflict;     // why the device cannot be rolled (empty: it can)
  std::string held_by;      // the unsettled job that holds the device (then the conflict says so)
};

struct RolloverPlan {
  std::vector<PlannedDevice> devices;  // in job order (oldest certificate first)
  std::map<std::string, std::int64_t> per_group, per_lot, per_ca, per_slot;
  std::int64_t waves = 1;
  std::int64_t conflicts = 0;
  std::vector<std::string> warnings;  // job-level conflicts (a CA ending before new certificates)
};

// What `start` would do; reads only. kNotFound for an unknown group, CA or device file entry
// that is not a device of the registry is a per-device conflict.
RolloverPlan plan_rollover(engine::Stores& stores, const policy::Policy& policy,
                           const engine::Clock& clock, const RolloverParams& params);

// Records the job: one task per planned device (a conflicting one starts in state "conflict").
// Returns its ID ("roll-YYYYMMDD-HHMMSS-xxxxxx").
std::string create_job(engine::Stores& stores, const engine::Clock& clock,
                       const RolloverParams& params, const RolloverPlan& plan);

// A job's figures for `job show` and progress lines.
struct JobProgress {
  engine::JobRecord job;
  std::map<std::string, std::int64_t> states;  // task state → count
  std::int64_t total = 0, settled = 0, done = 0, failed = 0;
  double rate_per_s = 0;    // devices done per second since the first task started
  std::int64_t eta_s = -1;  // -1: unknown
  std::int64_t first_started_at = 0, last_finished_at = 0;
};
JobProgress job_progress(engine::Stores& stores, const std::string& job_id, std::int64_t now);

struct RunnerOptions {
  std::string runner;  // the lease holder's name ("host:pid")
  // Called about twice a second from the runner's thread (a progress line).
  std::function<void(const JobProgress&)> progress;
  std::chrono::milliseconds flush_every{100};
  std::chrono::milliseconds confirm_poll{200};
  // How a reconnection is confirmed: from the broker's session records (the default with the
  // broker backend), or by asking the device (getCertificate: always so with IoT Hub).
  bool confirm_by_method = false;
  // Called on the runner's thread as each device settles, with how long it took from its start
  // in this run (the benchmark's per-device figures).
  std::function<void(const engine::JobTask&, std::chrono::microseconds)> on_settled;
  // Called on the runner's thread after the job changed CRLs in the registry (an incident's
  // revocations and replacement CA): the caller installs them where they are used (the broker).
  std::function<void()> crls_changed;
  // Called on the runner's thread after the runner itself revoked a certificate (a breach roll
  // recorded before its revocation), and when the job ends (its retirements): the caller signs
  // the CRLs behind a revocation and installs them.
  std::function<void()> crls_behind;
  // Test hook: called after every flush with the number of flushes so far.
  std::function<void(std::int64_t)> after_flush;
};

// Runs the job until it is finished, paused, canceled or aborted (by its threshold or another
// process), and returns its final record. Takes the job's lease, and does the job's own steps.
// When a live runner holds the lease and the job can be shared (can_share_job), it helps that
// runner instead: it claims tasks of its own (JobStore::claim_job_tasks; the job's rate is split
// among the runners), and returns once nothing is left to claim; otherwise kHomeBusy.
// Per-device outcomes are task states; token, registry and trigger set-up failures throw (the
// job stays resumable).
// Seconds without a heartbeat after which a job's runner counts as gone.
inline constexpr std::int64_t kJobHeartbeatStale = 15;

// Whether runners other than the lease's holder may take tasks of the job: a running device or
// CA rollover, or an incident whose job-level steps are done (its devices are moving).
bool can_share_job(const engine::JobRecord& job);
// Aborted or canceled but not ended (its runner died before ending it): its open tasks are still
// its own, and serve runs it to its end.
inline bool job_is_stopping(const engine::JobRecord& job) {
  return (job.state == "aborted" || job.state == "canceled") && job.finished_at == 0;
}
// Whether a helper would find a task to claim now: a shared job with a task no runner holds in an
// open wave (`serve --worker` starts a helper only then, never one that would leave at once).
bool wants_helper(const engine::JobRecord& job, const engine::JobShare& share);
engine::JobRecord run_job(engine::Stores& stores, engine::CaService& cas,
                          const policy::Policy& policy, const engine::Clock& clock,
                          Trigger& trigger, const std::string& job_id,
                          const RunnerOptions& options);

// Another process's requests: the running runner sees them within a second. Each returns the new
// state, or throws kInvalidArgument when the job's state does not allow it (a finished job
// cannot be paused).
std::string pause_job(engine::Stores& stores, const std::string& job_id);
std::string cancel_job(engine::Stores& stores, const std::string& job_id);
// paused/aborted/canceled → running (not run here: `job resume` or `serve` runs it).
std::string reopen_job(engine::Stores& stores, const std::string& job_id);
// Tasks in a final failure state ("offline", "refused", "timed-out", "aborted") go back to
// pending with their attempts reset (their last error stays until a new outcome), and the job to
// running. The job's deadline becomes `new_deadline` (unix seconds) when given, or 24 h from now
// when it has passed: a retry after the deadline would otherwise time out at once. kInvalidArgument
// for a `new_deadline` not in the future. Returns how many tasks go again.
std::int64_t retry_failed(engine::Stores& stores, const engine::Clock& clock,
                          const std::string& job_id, std::int64_t new_deadline = 0);

// CA rollover for an enrollment group: a new intermediate (its key made in the token, issued by
// the old one's issuer) goes into the group's free slot, so the broker trusts both; every device
// of the group is rolled onto a certificate under it (a job of kind "ca-rollover"); when the job
// finishes (all devices confirmed, or at its deadline, with a report), the new intermediate
// becomes the group's primary and the old one leaves its slot. An aborted or canceled job leaves
// both in place for the operator to decide.
struct CaRolloverRequest {
  std::string group;
  std::string new_name;  // empty: "{old}-r{YYYYMMDD}"
  std::string subject;   // empty: the old CA's subject
  std::optional<int> days;
  policy::KeyAlgorithm key = policy::KeyAlgorithm::kEcP256;
  RolloverParams params;  // rate, waves, abort, timeouts (selection and ca are set here)
};
struct CaRolloverStart {
  std::string job_id, old_ca, new_ca, new_slot;
  bool ca_created = false;  // false: an earlier, interrupted run of the same request made it
  RolloverPlan plan;
};
// Idempotent: the same request again (after a crash) reuses the CA and the slot it set.
// Errors: kNotFound (group), kInvalidArgument (the group's CA is a root or external, the free
// slot holds another CA, the broker would refuse the new CA's devices because neither it nor a
// CA above it is verified, or jobs that have not settled them hold some of the group's devices;
// nothing is made then), and those of CaService::create_intermediate.
CaRolloverStart start_ca_rollover(engine::Stores& stores, engine::CaService& cas,
                                  const policy::Policy& policy, const engine::Clock& clock,
                                  const CaRolloverRequest& request);
// The last step (run_job calls it when a ca-rollover job finishes): new CA primary, old out.
void finish_ca_rollover(engine::Stores& stores, const policy::Policy& policy,
                        const engine::Clock& clock, const std::string& job_id);

// Breach roll of one certificate: it is revoked ("keyCompromise") and leaves its slot at once,
// with no overlap (the broker drops a session using it within a second); then a job of kind
// "breach-roll" takes the device through the rotation protocol as soon as it is reachable again
// on another valid certificate. A device whose only certificate was the compromised one cannot
// come back by itself: the job reports it offline with that reason (re-provision it).
struct BreachRollStart {
  std::string job_id, serial, slot;
  bool other_certificate = false;  // the device still holds a valid certificate in its other slot
  bool continued = false;          // the device's open breach roll, not a new job
  std::string also_revoked;        // continued: another certificate named, revoked as well
  // Another open job held the device: the certificate is revoked all the same, and this job's
  // task is a `conflict` (that job rotates the device; a second rotation would race it).
  std::string held_by, held_by_state;
};
// `serial` empty: the certificate the broker saw the device connect with, else its only one.
// A breach roll of the device that has not settled it continues: its certificate revoked if it
// was not yet, another `serial` of the device revoked as well, and no second job.
// kNotFound (device, serial not in one of its slots), kInvalidArgument (several candidates).
BreachRollStart start_breach_roll(engine::Stores& stores, const engine::Clock& clock,
                                  const std::string& device_id, const std::string& serial,
                                  RolloverParams params);

bool is_final_task_state(std::string_view state) noexcept;
// Device → the open job that has not settled it yet (running or paused, or aborted or canceled
// but not ended; a task not final, or offline with a retry to come).
std::unordered_map<std::string, std::string> held_devices(engine::Stores& stores);
// Revokes a breach roll's certificate ("keyCompromise", its key blocked) if it is not revoked
// yet; one revoked before for another reason gets its key blocked. True when it revoked it here.
bool revoke_breached(engine::Stores& stores, const std::string& serial, std::int64_t at);
bool is_failed_task_state(
    std::string_view state) noexcept;  // refused, timed-out, offline, conflict

}  // namespace fleetsign::jobs
