// The rollover runner's insides (rollover.hpp has the contract): the Runner class, shared by
// rollover_runner.cpp (loading, admission, method calls and answers) and rollover_steps.cpp
// (signing, confirmation, settling, flushes, control and the main loop). Private to jobs/.
#pragma once

#include <Poco/JSON/Object.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/job_issue.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs::runner_detail {

using engine::JobRecord;
using engine::JobTask;
using engine::SlotChange;
using Steady = std::chrono::steady_clock;

constexpr auto kControlEvery = std::chrono::milliseconds(500);
constexpr auto kTransientRetry = std::chrono::seconds(2);
constexpr auto kRetryBackoff = std::chrono::seconds(2);
constexpr auto kLeaseStale = kJobHeartbeatStale;  // before another runner may take over
// A runner claims what it can start in kClaimAhead at its rate (its in-flight limit at most, and
// kClaimAtLeast at least), and claims again once fewer than half of those are left to start:
// the job's other runners find tasks to claim.
constexpr std::int64_t kClaimAtLeast = 8;
constexpr double kClaimAhead = 4.0;  // seconds

enum class Phase {
  kIdle,     // pending, or waiting for a retry
  kCsr,      // createCsr sent
  kSign,     // CSR queued for signing
  kInstall,  // installCertificate sent
  kEnroll,   // waiting for the enrollment's new slot to be committed
  kReprovision,
  kConfirm,  // waiting to see the device connected with the new certificate
  kProbe,    // getCertificate sent to confirm it (backends without session records: IoT Hub)
  kSettled,
};

struct Live {
  JobTask row;
  Phase phase = Phase::kIdle;
  bool dirty = false;
  bool stopping = false;       // abort/cancel/deadline: settle at the next safe point
  Steady::time_point due{};    // retry not before; confirm deadline
  Steady::time_point began{};  // first start in this run
  engine::Der csr, cert_der;
  std::string ca_name, group, lot, enrollment;
  engine::Slot enrollment_old_slot = engine::Slot::kPrimary;
  bool enrollment_old_known = false;
  // What the job saw of the device while it waits for the new certificate, since the latest
  // reprovision's answer: each look is the broker's session record at a poll (its certificate
  // and connected_at, by the broker's clock) or the answer to a getCertificate probe (IoT Hub).
  std::string seen_sha256;       // the latest look; empty: not connected (or unanswered)
  std::string first_sha256;      // the first look that saw it connected
  std::int64_t first_since = 0;  // that look's connected_at (0 for a probe)
  bool changed = false;          // a look since then saw it gone, or on another connection
};

class Runner {
 public:
  Runner(engine::Stores& stores, engine::CaService& cas, const policy::Policy& policy,
         const engine::Clock& clock, Trigger& trigger, std::string job_id,
         const RunnerOptions& options)
      : m_stores(stores),
        m_cas(cas),
        m_policy(policy),
        m_clock(clock),
        m_trigger(trigger),
        m_job_id(std::move(job_id)),
        m_options(options),
        m_issuer(stores, m_job_id) {}

  JobRecord run();

 private:
  void load();
  std::int64_t stale_before();
  Live make_live(JobTask row);
  std::size_t claim(std::int64_t limit);
  void drain();
  void stop_claimed();
  std::int64_t claim_size() const;
  void admit(Steady::time_point now);
  void start(std::size_t i);
  // A task an earlier runner left with a certificate of this job (signed, maybe installed and
  // switched to: its row says at most what was flushed before it died).
  bool has_job_certificate(std::size_t i) const;
  void call(std::size_t i, Phase phase, const std::string& method, const Poco::JSON::Object& body);
  void on_completion(CallId id, MethodOutcome outcome);
  void on_answer(std::size_t i, Phase phase, const MethodResult& result);
  void failed_call(std::size_t i, Phase phase, int status, const std::string& why, bool transient);
  void sign_queued();
  void install(std::size_t i);
  void reprovision(std::size_t i);
  void poll_confirmations(Steady::time_point now);
  bool connected_without(const std::string& device, const std::string& serial);
  void confirmed(std::size_t i);
  void look(Live& t, const std::string& sha, std::int64_t since);  // one look (see Live)
  bool is_back_on_old(const Live& t);  // the looks show it reconnected on its old one
  void went_back(std::size_t i);       // and so it ends
  void slot_changes(const Live& t, SlotChange::Kind kind, engine::Slot freed);
  void probe(std::size_t i);  // getCertificate: which certificate is the device connected with?
  void settle(std::size_t i, const std::string& state, const std::string& why,
              std::string_view code = {});
  void wait_retry(std::size_t i, const std::string& state, int status, const std::string& why,
                  Steady::duration delay);
  void flush();
  bool control(Steady::time_point now);
  void stop_all(const std::string& state, const std::string& why);
  void check_abort();
  bool take_stale_lease();  // a helper becomes the holder when the holder's heartbeat is stale
  void tally_job();         // m_job_done/m_job_failed from the registry
  std::int64_t done_count() const { return std::max(m_done, m_job_done); }
  double current_rate() const;
  bool wave_open(std::size_t i) const;
  const engine::Issuer& issuer_for(const Live& t);
  const std::string& chain_pem(const std::string& ca_name);
  void touch(Live& t) {
    t.dirty = true;
    t.row.updated_at = m_clock.now();
  }

  engine::Stores& m_stores;
  // The job's lease fences every write once run() has taken the lease; lifted with the runner.
  std::optional<engine::FenceScope> m_fence;
  engine::CaService& m_cas;
  const policy::Policy& m_policy;
  const engine::Clock& m_clock;
  Trigger& m_trigger;
  std::string m_job_id;
  const RunnerOptions& m_options;
  engine::JobIssuer m_issuer;
  engine::CsprngSource m_random;

  JobRecord m_job;
  bool m_lead = false;  // holds the job's lease (does the job-level steps); else a helper
  std::optional<engine::GroupIndex> m_index;
  engine::JobShare m_share;
  bool m_claimed_none = false;  // the last claim found no task
  std::unordered_map<std::string, std::size_t> m_by_device;
  RolloverParams m_params;
  std::string m_state;  // the job's state as this runner acts on it
  std::vector<Live> m_tasks;
  std::deque<std::size_t> m_pending;  // seq order
  std::vector<std::size_t> m_waiting, m_to_sign, m_confirming, m_after_flush;
  std::vector<SlotChange> m_changes;
  std::unordered_map<CallId, std::pair<std::size_t, Phase>> m_calls;
  std::unordered_map<std::string, engine::CertRecord> m_recovered;
  std::map<std::string, std::unique_ptr<engine::Issuer>> m_issuers;
  std::map<std::string, std::string> m_chains;
  CompletionQueue m_queue;
  std::size_t m_active = 0;
  std::int64_t m_done = 0, m_failed = 0, m_settled_exec = 0, m_flushes = 0;
  // The job's devices settled since this runner started, by every runner (read from the
  // registry while the job is shared): the abort threshold and the rate's ramp judge the job, not
  // one runner's part of it. m_base_*: the job's counts when this runner started.
  std::int64_t m_job_done = 0, m_job_failed = 0, m_base_done = 0, m_base_failed = 0;
  double m_tokens = 1;
  Steady::time_point m_last_tokens = Steady::now();
  std::size_t m_wave = 0;
  bool m_admitting = true;
  Steady::time_point m_sign_since{};
  std::string m_stop_state = "aborted";  // what a device stopped half-way becomes
};

// "host:pid" of a lease holder on this host (the same host as `self`) whose process is gone.
bool holder_is_dead(const std::string& holder, const std::string& self);
// The "message" of a device's error answer, else the answer itself (shortened).
std::string message_of(const std::string& payload);
Poco::JSON::Object::Ptr answer_object(const std::string& payload);
std::string payload_text(const Poco::JSON::Object& o);

}  // namespace fleetsign::jobs::runner_detail
