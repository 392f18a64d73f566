// The rollover runner, second half (see rollover_runner.hpp): signing, confirmation, settling,
// flushes, the other processes' requests, and the main loop.
#include <Poco/JSON/Object.h>

#include <algorithm>
#include <chrono>

#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/hsm/token.hpp"
#include "fleetsign/jobs/incident.hpp"
#include "rollover_runner.hpp"

namespace fleetsign::jobs {
namespace runner_detail {

const std::string& Runner::chain_pem(const std::string& ca_name) {
  auto it = m_chains.find(ca_name);
  if (it != m_chains.end()) return it->second;
  std::string pem;
  for (const auto& ca : m_cas.chain(ca_name)) {
    if (ca.parent.empty()) break;  // the root is the verifier's, not the device's to present
    engine::append_pem(pem, ca.cert_der, "CERTIFICATE");
  }
  return m_chains.emplace(ca_name, std::move(pem)).first->second;
}

const engine::Issuer& Runner::issuer_for(const Live& t) {
  const std::string key = t.ca_name + "\n" + t.group;
  auto it = m_issuers.find(key);
  if (it != m_issuers.end()) return *it->second;
  const engine::CaRecord ca = m_cas.get(t.ca_name);
  m_cas.require_can_sign(ca.name);
  const hsm::SigningKey& signing_key = m_cas.load_key(ca);
  // The compromised-key blocklist as it is when this runner first signs for the CA.
  auto issuer = std::make_unique<engine::Issuer>(
      ca, signing_key, m_policy, policy::device_days_for(m_policy, t.group), m_clock, m_random,
      engine::KeyBlocklist::load(m_stores));
  return *m_issuers.emplace(key, std::move(issuer)).first->second;
}

void Runner::sign_queued() {
  if (m_to_sign.empty()) return;
  // One chunk per issuing CA and group.
  std::map<std::string, std::vector<std::size_t>> by_issuer;
  for (std::size_t i : m_to_sign) {
    by_issuer[m_tasks[i].ca_name + "\n" + m_tasks[i].group].push_back(i);
  }
  m_to_sign.clear();
  for (auto& [key, indices] : by_issuer) {
    std::vector<engine::JobCsr> csrs;
    csrs.reserve(indices.size());
    for (std::size_t i : indices) {
      Live& t = m_tasks[i];
      engine::Der replaced;
      // The new certificate keeps the old one's lot, line and site: the device's lineage.
      engine::Lineage lineage{t.lot, "", "", ""};
      if (auto old = m_stores.find_cert(t.row.old_serial)) {
        replaced = std::move(old->der);
        lineage = std::move(old->lineage);
        if (lineage.lot.empty()) lineage.lot = t.lot;
      }
      csrs.push_back(engine::JobCsr{t.row.device_id, t.row.seq, std::move(t.csr),
                                    std::move(lineage), std::move(replaced)});
      t.csr.clear();
    }
    auto results = m_issuer.issue(issuer_for(m_tasks[indices.front()]), csrs);
    for (std::size_t k = 0; k < indices.size(); ++k) {
      const std::size_t i = indices[k];
      Live& t = m_tasks[i];
      if (!results[k]) {
        settle(i, "refused", "its CSR was refused: " + results[k].error().message,
               error_code_name(results[k].error().code));
        continue;
      }
      auto& cert = results[k].value();
      t.row.new_serial = cert.serial;
      t.row.new_sha256 = cert.sha256;
      t.row.step = "sign";
      t.cert_der = std::move(cert.der);
      touch(t);
      if (t.stopping) {
        settle(i, m_stop_state, t.row.last_error);
        continue;
      }
      install(i);
    }
  }
}

void Runner::install(std::size_t i) {
  Live& t = m_tasks[i];
  std::string chain;
  engine::append_pem(chain, t.cert_der, "CERTIFICATE");
  chain += chain_pem(t.ca_name);
  Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("jobId", m_job_id);
  body.set("chain", chain);
  call(i, Phase::kInstall, "installCertificate", body);
}

void Runner::reprovision(std::size_t i) {
  Live& t = m_tasks[i];
  Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("jobId", m_job_id);
  body.set("sha256", t.row.new_sha256);
  call(i, Phase::kReprovision, "reprovision", body);
}

// The device's registry slots about its new certificate (`kind`: kept, the other slot retired;
// or released), and its individual enrollment's `freed` slot emptied, in the next flush.
void Runner::slot_changes(const Live& t, SlotChange::Kind kind, engine::Slot freed) {
  SlotChange device;
  device.kind = kind;
  device.device_id = t.row.device_id;
  device.serial = t.row.new_serial;
  m_changes.push_back(std::move(device));
  if (t.enrollment.empty()) return;
  SlotChange enrollment;
  enrollment.kind = SlotChange::Kind::kIndividualSlot;
  enrollment.device_id = t.enrollment;
  enrollment.slot = freed;  // no certificate: the slot is empty
  m_changes.push_back(std::move(enrollment));
}

// Seen connected with the new certificate: the old one leaves its slots in the flush that
// records the device done.
void Runner::confirmed(std::size_t i) {
  Live& t = m_tasks[i];
  t.row.step = "retire";
  // The enrollment's old slot is freed: the old certificate is no longer trusted.
  slot_changes(t, SlotChange::Kind::kRetireDevice, t.enrollment_old_slot);
  settle(i, "done", "");
}

void Runner::probe(std::size_t i) {
  Poco::JSON::Object body;
  call(i, Phase::kProbe, "getCertificate", body);
}

// The broker records the certificate each device connects with (device_sessions): one read per
// poll, of the waiting devices' rows only, confirms them. Only a hub session counts: DPS admits a
// refused certificate to hear its 401, and the device agent keeps a new slot on trial until the
// hub admits it. A backend without those records (IoT Hub) asks the device itself
// (getCertificate, which reports the certificate it is connected with).
void Runner::poll_confirmations(Steady::time_point now) {
  if (m_confirming.empty()) return;
  const bool sessions = m_trigger.backend_name() == "broker" && !m_options.confirm_by_method &&
                        m_params.confirm != "method";
  std::unordered_map<std::string, engine::DeviceSession> seen;
  if (sessions) {
    std::vector<std::string> waiting;
    waiting.reserve(m_confirming.size());
    for (std::size_t i : m_confirming) {
      if (m_tasks[i].phase == Phase::kConfirm) waiting.push_back(m_tasks[i].row.device_id);
    }
    for (auto& s : m_stores.connected_sessions_of(waiting)) {
      if (s.mode == "hub") seen.emplace(s.device_id, std::move(s));
    }
  }
  std::vector<std::size_t> still;
  for (std::size_t i : m_confirming) {
    Live& t = m_tasks[i];
    if (t.phase != Phase::kConfirm) continue;
    const auto s = seen.find(t.row.device_id);
    if (sessions) {
      look(t, s == seen.end() ? std::string() : s->second.cert_sha256,
           s == seen.end() ? 0 : s->second.connected_at);
    }
    if (s != seen.end() && s->second.cert_sha256 == t.row.new_sha256) {
      confirmed(i);
    } else if (!sessions && now < t.due) {
      probe(i);
    } else if (now >= t.due) {
      ++t.row.attempts;
      if (t.row.attempts <= m_params.retries) {
        reprovision(i);
      } else if (is_back_on_old(t)) {
        went_back(i);
      } else {
        settle(i, "timed-out",
               "not seen connected with the new certificate within " +
                   std::to_string(m_params.step_timeout_s) + " s of reprovision");
      }
    } else {
      still.push_back(i);
    }
  }
  m_confirming = std::move(still);
}

void Runner::settle(std::size_t i, const std::string& state, const std::string& why,
                    std::string_view code) {
  Live& t = m_tasks[i];
  const bool was_active = t.phase != Phase::kIdle && t.phase != Phase::kSettled;
  if (t.phase == Phase::kSettled) return;
  // A certificate signed but never delivered leaves the registry's slot again.
  if (state != "done" && !t.row.new_serial.empty() && t.row.step == "sign") {
    SlotChange back;
    back.kind = SlotChange::Kind::kReleaseDevice;
    back.device_id = t.row.device_id;
    back.serial = t.row.new_serial;
    m_changes.push_back(std::move(back));
  }
  t.phase = Phase::kSettled;
  t.row.state = state;
  t.row.last_error = why;
  t.row.error_code = code;
  if (state == "offline" && m_job.kind == "breach-roll") {
    t.row.last_error +=
        "; its compromised certificate was revoked, so unless it holds another "
        "valid certificate it cannot connect: re-provision it (a new CSR from the "
        "device through `issue --csr`)";
  }
  t.row.finished_at = m_clock.now();
  t.row.next_at = 0;
  touch(t);
  if (was_active) --m_active;
  if (m_options.on_settled && t.began != Steady::time_point{}) {
    m_options.on_settled(
        t.row, std::chrono::duration_cast<std::chrono::microseconds>(Steady::now() - t.began));
  }
  if (state == "done") {
    ++m_done;
    ++m_settled_exec;
  } else if (state == "refused" || state == "timed-out") {
    ++m_failed;
    ++m_settled_exec;
  }
  check_abort();
}

namespace {
struct Tally {
  std::int64_t done = 0, failed = 0;
};
Tally count_settled(engine::Stores& stores, const std::string& job_id) {
  Tally t;
  for (const auto& [state, n] : stores.count_job_tasks(job_id)) {
    if (state == "done") t.done += n;
    if (state == "refused" || state == "timed-out") t.failed += n;
  }
  return t;
}
}  // namespace

void Runner::tally_job() {
  const Tally t = count_settled(m_stores, m_job_id);
  // A task retried since (retry-failed) leaves the counts: never below this runner's start.
  m_job_done = std::max<std::int64_t>(0, t.done - m_base_done);
  m_job_failed = std::max<std::int64_t>(0, t.failed - m_base_failed);
}

void Runner::check_abort() {
  if (m_params.abort_percent <= 0 || m_state != "running") return;
  // This runner's own devices (some not flushed yet), or the job's since it started when that
  // says more: a threshold is crossed by the devices of all the job's runners together.
  const std::int64_t failed = std::max(m_failed, m_job_failed);
  const std::int64_t executed = std::max(m_settled_exec, m_job_done + m_job_failed);
  if (executed < std::max(1, m_params.min_executed)) return;
  if (static_cast<double>(failed) * 100.0 <
      m_params.abort_percent * static_cast<double>(executed)) {
    return;
  }
  m_state = "aborted";
  stop_all("aborted", "the job stopped: " + std::to_string(failed) + " of " +
                          std::to_string(executed) + " devices failed (threshold " +
                          std::to_string(static_cast<int>(m_params.abort_percent)) + "%)");
  // Recorded at once (the job's end comes when every device has stopped): the job's other
  // runners stop at their next look, and a runner killed while its devices finish switching
  // leaves the job aborted, not running. A pause or cancel made since this runner's last look
  // stands.
  if (const auto job = m_stores.find_job(m_job_id); job && job->state == "running")
    m_stores.set_job_state(m_job_id, "aborted", 0);
}

// No new device starts; those not yet past installCertificate stop at their next answer; those
// installing or reprovisioning finish the switch (a device is never left half-way).
void Runner::stop_all(const std::string& state, const std::string& why) {
  m_admitting = false;
  m_stop_state = state;
  auto pending = std::move(m_pending);
  m_pending.clear();
  for (std::size_t i : pending) {
    if (m_tasks[i].phase != Phase::kIdle) continue;
    // Claimed from a runner that died with the device's certificate signed: the device may run it
    // already, so the switch is finished, never the certificate revoked under it.
    if (has_job_certificate(i)) {
      start(i);
    } else {
      settle(i, state, why);
    }
  }
  for (std::size_t i : m_waiting)
    settle(i, m_tasks[i].row.state == "offline" ? "offline" : state,
           m_tasks[i].row.state == "offline" ? m_tasks[i].row.last_error : why);
  m_waiting.clear();
  for (auto& t : m_tasks) {
    if (t.phase == Phase::kCsr || t.phase == Phase::kSign) {
      t.stopping = true;
      t.row.last_error = why;
    }
  }
}

void Runner::flush() {
  std::vector<JobTask> rows;
  for (auto& t : m_tasks) {
    if (t.dirty) {
      rows.push_back(t.row);
      t.dirty = false;
    }
  }
  if (rows.empty() && m_changes.empty()) return;
  m_stores.save_job_tasks(rows, m_changes);
  m_changes.clear();
  ++m_flushes;
  auto after = std::move(m_after_flush);
  m_after_flush.clear();
  for (std::size_t i : after) {
    if (m_tasks[i].phase == Phase::kEnroll) reprovision(i);
  }
  if (m_options.after_flush) m_options.after_flush(m_flushes);
}

// Heartbeat, and the requests of other processes (pause, cancel). False when this runner must
// stop at once (another runner holds the lease).
bool Runner::control(Steady::time_point) {
  try {
    // The registry's clock: serves on other machines judge the heartbeat's age by it.
    m_stores.heartbeat_job(m_job_id, m_options.runner, m_stores.registry_time());
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kHomeBusy) return false;
    throw;
  }
  auto job = m_stores.find_job(m_job_id);
  if (!job) return false;
  if (m_state == "running" && job->state == "paused") {
    m_state = "paused";
    m_admitting = false;
  } else if (m_state == "paused" && job->state == "running") {
    m_state = "running";
    m_admitting = true;
  } else if (m_state != "canceled" && job->state == "canceled") {
    m_state = "canceled";
    stop_all("canceled", "the job was canceled");
  }
  if (m_state == "running" && job->state == "aborted") {
    m_state = "aborted";
    stop_all("aborted",
             "another runner of the job stopped it: its failures crossed the abort "
             "threshold");
  }
  if (m_state == "running" && m_params.deadline != 0 && m_clock.now() >= m_params.deadline) {
    m_state = "deadline";
    stop_all("timed-out", "the job's deadline passed before this device was rolled");
  }
  // The job's other runners: the rate is shared among them, and tasks are claimed as this
  // runner's own run low (those of a runner whose heartbeat went stale with them).
  m_share = m_stores.job_share(m_job_id, stale_before());
  const bool judged = m_params.abort_percent > 0 || m_params.rollout.base_per_minute > 0;
  if (judged && m_state == "running" && (m_share.runners > 1 || !m_lead)) {
    tally_job();
    check_abort();
  }
  try {
    if (m_admitting && m_state == "running") {
      if (static_cast<std::int64_t>(m_pending.size()) < claim_size() / 2) claim(claim_size());
    } else if (m_state != "running" && m_state != "paused") {
      drain();
    }
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kHomeBusy) return false;  // taken over since the heartbeat
    throw;
  }
  return true;
}

// Stopping (aborted, canceled, deadline): every open task not held by a live runner is claimed
// and ends here; a device that was switching (its certificate installed) finishes the switch.
void Runner::drain() {
  if (claim(0) > 0) stop_claimed();
}

bool Runner::has_job_certificate(std::size_t i) const {
  const JobTask& row = m_tasks[i].row;
  if (row.state != "active") return false;
  // Signed (its certificate is recorded issued for this job, whatever the row's step says), or
  // past the install.
  return m_recovered.count(row.device_id) != 0 || row.step == "install" ||
         row.step == "reprovision" || row.step == "confirm";
}

void Runner::stop_claimed() {
  const bool deadline = m_state == "deadline";
  const std::string state = deadline ? "timed-out" : m_state;
  const std::string why = deadline ? "the job's deadline passed before this device was rolled"
                                   : "the job was " + m_state + " before this device switched";
  auto pending = std::move(m_pending);
  m_pending.clear();
  for (std::size_t i : pending) {
    if (has_job_certificate(i)) {
      start(i);  // the device may run its new certificate already: the switch is finished
    } else {
      settle(i, m_tasks[i].row.state == "offline" ? "offline" : state, why);
    }
  }
}

bool Runner::take_stale_lease() {
  const auto job = m_stores.find_job(m_job_id);
  if (!job) return false;
  const std::int64_t now = m_stores.registry_time();
  const bool dead = holder_is_dead(job->runner, m_options.runner);
  if (!dead && !job->runner.empty() && job->heartbeat_at >= now - kLeaseStale) return false;
  // This runner holds no open task here (it is idle with nothing pending): taking the lease
  // frees none of its own.
  m_lead =
      m_stores.acquire_job(m_job_id, m_options.runner, now, dead ? now + 1 : now - kLeaseStale);
  if (m_lead) m_share = m_stores.job_share(m_job_id, now - kLeaseStale);
  return m_lead;
}

JobRecord Runner::run() {
  load();
  const std::int64_t now = m_stores.registry_time();  // the lease's clock, as for the heartbeat
  // A runner of this host whose process is gone (kill -9) holds the lease no longer.
  const std::int64_t stale_before =
      holder_is_dead(m_job.runner, m_options.runner) ? now + 1 : now - kLeaseStale;
  m_lead = m_stores.acquire_job(m_job_id, m_options.runner, now, stale_before);
  if (!m_lead) {
    // Another runner holds the lease: this one helps it, taking tasks of its own.
    if (!can_share_job(m_job)) {
      auto job = m_stores.find_job(m_job_id);
      throw Error(ErrorCode::kHomeBusy, "job " + m_job_id + " is being run by " +
                                            (job ? job->runner : std::string("another process")) +
                                            " (its heartbeat is recent)");
    }
    m_stores.join_job(m_job_id, m_options.runner, now);
  }
  // From here every write is fenced by the runner's membership: a runner frozen past its
  // heartbeat (SIGSTOP, a paused VM) records nothing (no task state, no certificate) once another
  // runner took its tasks over.
  m_fence.emplace(m_stores, engine::LeaseFence{m_job_id, m_options.runner, true});
  if (m_state == "finished") {
    m_stores.release_job(m_job_id, m_options.runner);
    return m_job;
  }
  // An incident cuts its scope off and makes its replacement before any device moves; a
  // runner that resumes one killed half-way there finishes those steps first.
  if (m_lead && m_job.kind == "incident") {
    advance_incident(m_stores, m_cas, m_policy, m_clock, m_job_id);
    if (m_options.crls_changed) m_options.crls_changed();
  }
  // A breach roll recorded, then killed before its revocation: revoked now, dated at the job's
  // start, whatever its task's state (a `conflict` task, its device left to another job, is never
  // claimed), and its CRL signed. One revoked before for another reason gets its key blocked and
  // the reason keyCompromise.
  if (m_lead && m_job.kind == "breach-roll") {
    bool revoked = false;
    for (const auto& t : m_stores.job_tasks(m_job_id, "")) {
      revoked = revoke_breached(m_stores, t.old_serial, m_job.created_at) || revoked;
    }
    if (revoked && m_options.crls_behind) m_options.crls_behind();
  }
  m_index.emplace(engine::GroupIndex::load(m_stores));
  m_share = m_stores.job_share(m_job_id, now - kLeaseStale);
  if (m_params.abort_percent > 0 || m_params.rollout.base_per_minute > 0) {
    const Tally base = count_settled(m_stores, m_job_id);
    m_base_done = base.done;
    m_base_failed = base.failed;
  }
  if (m_state == "aborted" || m_state == "canceled") {
    // Start nothing new; a device that was switching (its certificate installed) finishes.
    m_admitting = false;
    claim(0);
    stop_claimed();
  } else {
    claim(claim_size());
  }
  if (m_state == "paused") m_admitting = false;

  auto last_flush = Steady::now();
  auto last_control = Steady::time_point{};
  auto last_confirm = Steady::now();
  auto last_progress = Steady::time_point{};
  bool lost_lease = false;
  while (true) {
    const auto t = Steady::now();
    if (t - last_control >= kControlEvery) {
      last_control = t;
      if (!control(t)) {
        lost_lease = true;
        break;
      }
    }
    admit(t);
    while (auto item = m_queue.pop(std::chrono::milliseconds(m_to_sign.empty() ? 10 : 1))) {
      on_completion(item->id, std::move(item->outcome));
      if (m_queue.size() == 0) break;
    }
    // CSRs that arrive together are signed together: wait a little for a fuller chunk.
    if (!m_to_sign.empty() && m_sign_since == Steady::time_point{}) m_sign_since = Steady::now();
    if (m_to_sign.size() >= 128 ||
        (!m_to_sign.empty() && Steady::now() - m_sign_since >= std::chrono::milliseconds(20))) {
      sign_queued();
      m_sign_since = {};
    }
    if (Steady::now() - last_confirm >= m_options.confirm_poll) {
      last_confirm = Steady::now();
      poll_confirmations(last_confirm);
    }
    if (Steady::now() - last_flush >= m_options.flush_every || !m_after_flush.empty()) {
      flush();
      last_flush = Steady::now();
    }
    if (m_options.progress && t - last_progress >= kControlEvery) {
      last_progress = t;
      m_options.progress(job_progress(m_stores, m_job_id, m_clock.now()));
    }
    const bool idle = m_active == 0 && m_calls.empty() && m_to_sign.empty();
    if (idle && (m_pending.empty() || !m_admitting) && (m_waiting.empty() || !m_admitting) &&
        (m_state != "running" || (m_pending.empty() && m_waiting.empty()))) {
      // Done here. A helper goes once nothing is left to claim; the lease's holder stays until
      // every task of the job has ended (the others' too), to do the job's last steps.
      if (m_state == "paused") break;
      // A helper with nothing left to claim leaves, unless the lease's holder is gone: then it
      // takes the lease and ends the job itself (no serve may be running to do it).
      if (!m_lead && m_claimed_none && !take_stale_lease()) break;
      if (m_lead && m_share.open == 0) break;  // read after its own tasks' last flush
    }
  }
  if (lost_lease) {
    m_trigger.wait_idle();
    return *m_stores.find_job(m_job_id);
  }
  flush();
  m_trigger.wait_idle();
  if (!m_lead) {
    // A helper leaves the job's end to the lease's holder.
  } else if (m_state == "running" || m_state == "deadline") {
    if (m_job.kind == "ca-rollover") finish_ca_rollover(m_stores, m_policy, m_clock, m_job_id);
    if (m_job.kind == "incident") {
      finish_incident(m_stores, m_cas, m_policy, m_clock, m_job_id);
      if (m_options.crls_changed) m_options.crls_changed();
    }
    m_stores.set_job_state(m_job_id, "finished", m_clock.now());
  } else if (m_state == "aborted" || m_state == "canceled") {
    m_stores.set_job_state(m_job_id, m_state, m_clock.now());
  }
  // The retirements (superseded) and the close's revocations go into their CRLs before the job
  // reports: a retired leaf must fail `openssl verify -crl_check` once the job says it is done.
  if (m_lead && m_options.crls_behind) m_options.crls_behind();
  m_stores.release_job(m_job_id, m_options.runner);
  return *m_stores.find_job(m_job_id);
}

}  // namespace runner_detail

engine::JobRecord run_job(engine::Stores& stores, engine::CaService& cas,
                          const policy::Policy& policy, const engine::Clock& clock,
                          Trigger& trigger, const std::string& job_id,
                          const RunnerOptions& options) {
  runner_detail::Runner runner(stores, cas, policy, clock, trigger, job_id, options);
  try {
    return runner.run();
  } catch (...) {
    // A failure that ends the run (the token, the registry): the method calls still in flight
    // complete into the runner's queue, so they must finish before the runner goes. What they
    // did is repeated by the resume (each step is idempotent towards the device).
    try {
      trigger.wait_idle();
    } catch (...) {  // the first failure is the one to report
    }
    throw;
  }
}

}  // namespace fleetsign::jobs
