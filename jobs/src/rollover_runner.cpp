// The rollover runner: one thread drives every device of a job through the rotation protocol
// (rollover.hpp) as a set of small state machines. Method calls go out through the Trigger and
// come back through a CompletionQueue; CSRs that arrive together are signed together
// (JobIssuer, oneTBB); the broker's session records confirm reconnections; task rows and slot
// changes are written in one transaction per flush (every ~100 ms).
//
// Durability rules (what makes kill -9 safe):
//   - the device's steps are idempotent, so a step whose row was not flushed is repeated;
//   - a certificate is recorded before it leaves (JobIssuer), and a resumed runner installs the
//     certificate the job already issued for a device instead of signing another;
//   - an individual enrollment's new slot is committed before the device is told to reprovision;
//   - the old certificate leaves its slot in the transaction that marks the device done.
#include "rollover_runner.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <memory>
#include <unordered_map>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/job_issue.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/hsm/token.hpp"

namespace fleetsign::jobs::runner_detail {

// "host:pid" of a lease holder on this host (the same host part as `self`) whose process is gone.
bool holder_is_dead(const std::string& holder, const std::string& self) {
  const auto colon = holder.rfind(':');
  const auto self_colon = self.rfind(':');
  if (holder.empty() || colon == std::string::npos || self_colon == std::string::npos ||
      holder.compare(0, colon, self, 0, self_colon) != 0) {
    return false;
  }
  long pid = 0;
  try {
    pid = std::stol(holder.substr(colon + 1));
  } catch (const std::exception&) {
    return false;
  }
  return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

std::string message_of(const std::string& payload) {
  try {
    Poco::JSON::Parser parser;
    auto o = parser.parse(payload).extract<Poco::JSON::Object::Ptr>();
    if (o && o->has("message")) return o->getValue<std::string>("message");
  } catch (const Poco::Exception&) {
  }
  return payload.size() > 200 ? payload.substr(0, 200) + "…" : payload;
}

Poco::JSON::Object::Ptr answer_object(const std::string& payload) {
  try {
    Poco::JSON::Parser parser;
    return parser.parse(payload).extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception&) {
    return nullptr;
  }
}

std::string payload_text(const Poco::JSON::Object& o) {
  std::ostringstream s;
  o.stringify(s);
  return s.str();
}

void Runner::load() {
  auto job = m_stores.find_job(m_job_id);
  if (!job) throw Error(ErrorCode::kNotFound, "no job '" + m_job_id + "'");
  m_job = std::move(*job);
  m_params = parse_params(m_job.params_json, "job " + m_job_id + " parameters");
  m_state = m_job.state;
  // What the job issued is read per device as tasks are claimed (make_live); the open intents
  // of a task are abandoned when it is claimed.
}

std::int64_t Runner::stale_before() { return m_stores.registry_time() - kLeaseStale; }

Live Runner::make_live(JobTask row) {
  Live t;
  t.row = std::move(row);
  if (is_final_task_state(t.row.state) && !(t.row.state == "offline" && t.row.next_at != 0)) {
    return t;
  }
  if (auto d = m_stores.find_device(t.row.device_id)) {
    const auto mapped = m_params.ca_map.find(d->ca_name);
    t.ca_name = mapped != m_params.ca_map.end() ? mapped->second
                : m_params.ca.empty()           ? d->ca_name
                                                : m_params.ca;
    t.lot = d->lot;
    if (const auto* g = m_index->group_of_ca(d->ca_name)) t.group = g->name;
    // A CA that left every slot (an incident's): the group of the CA that signs now.
    if (const auto* g = m_index->group_of_ca(t.ca_name); t.group.empty() && g != nullptr) {
      t.group = g->name;
    }
  }
  if (auto ie = m_stores.find_individual_slots(t.row.device_id)) {
    t.enrollment = ie->registration_id;
    if (auto old = m_stores.find_cert(t.row.old_serial)) {
      if (ie->primary_sha256 == old->sha256) {
        t.enrollment_old_slot = engine::Slot::kPrimary;
        t.enrollment_old_known = true;
      } else if (ie->secondary_sha256 == old->sha256) {
        t.enrollment_old_slot = engine::Slot::kSecondary;
        t.enrollment_old_known = true;
      }
    }
    if (!t.enrollment_old_known) {
      t.enrollment_old_slot =
          ie->primary_sha256.empty() ? engine::Slot::kSecondary : engine::Slot::kPrimary;
    }
  }
  // What the job issued for the device as it is now (another runner, killed or taken over, may
  // have signed it after this one started, before its task row said so): that certificate is
  // installed, never a second one signed. Read at each claim, never from an older copy.
  m_recovered.erase(t.row.device_id);
  for (auto& cert : m_stores.certs_of_device(t.row.device_id)) {
    if (cert.batch_id != m_job_id || cert.state != engine::CertState::kIssued) continue;
    auto [it, fresh] = m_recovered.try_emplace(cert.device_id, cert);
    if (!fresh && cert.created_at >= it->second.created_at) it->second = std::move(cert);
  }
  return t;
}

// Tasks claimed are this runner's until it releases them or its heartbeat goes stale. Their
// pending ones join m_pending in seq order.
std::size_t Runner::claim(std::int64_t limit) {
  std::int64_t below = std::numeric_limits<std::int64_t>::max();
  if (m_params.wave > 0 && m_state == "running" && m_share.first_open_seq >= 0) {
    // The waves open for everyone: the lowest wave with a pending or active task.
    below = (m_share.first_open_seq / m_params.wave + 1) * m_params.wave;
  }
  auto rows = m_stores.claim_job_tasks(m_job_id, m_options.runner, stale_before(), below, limit);
  m_claimed_none = rows.empty();
  for (auto& row : rows) {
    const std::string device = row.device_id;
    std::size_t i = m_tasks.size();
    if (const auto it = m_by_device.find(device); it != m_by_device.end()) {
      // Ours before, settled, and opened again (retry-failed): a fresh start. One still moving
      // here keeps its state.
      if (m_tasks[it->second].phase != Phase::kSettled) continue;
      i = it->second;
      m_tasks[i] = make_live(std::move(row));
    } else {
      m_tasks.push_back(make_live(std::move(row)));
      m_by_device.emplace(device, i);
    }
    const auto& r = m_tasks[i].row;
    if (r.state == "pending" || r.state == "active" || (r.state == "offline" && r.next_at != 0)) {
      const auto at = std::upper_bound(
          m_pending.begin(), m_pending.end(), r.seq,
          [&](std::int64_t seq, std::size_t k) { return seq < m_tasks[k].row.seq; });
      m_pending.insert(at, i);
    }
  }
  return rows.size();
}

// This runner's share of the job's rate: the job's, divided among its live runners.
double Runner::current_rate() const {
  const Rollout& r = m_params.rollout;
  double rate = r.per_minute;
  if (r.base_per_minute > 0 && r.every > 0) {
    const double steps = std::floor(static_cast<double>(done_count()) / r.every);
    rate = r.base_per_minute * std::pow(std::max(1.0, r.factor), steps);
    if (r.per_minute > 0) rate = std::min<double>(rate, r.per_minute);
  }
  return rate / static_cast<double>(std::max<std::int64_t>(1, m_share.runners));
}

std::int64_t Runner::claim_size() const {
  double n = m_params.in_flight;
  if (const double rate = current_rate(); rate > 0) n = std::min(n, rate / 60.0 * kClaimAhead);
  return std::max(kClaimAtLeast, static_cast<std::int64_t>(std::ceil(n)));
}

bool Runner::wave_open(std::size_t i) const {
  if (m_params.wave <= 0) return true;
  return static_cast<std::size_t>(m_tasks[i].row.seq / m_params.wave) <= m_wave;
}

void Runner::admit(Steady::time_point now) {
  // Retries that are due go first. Also once the job stops: what waits then is a device finishing
  // its switch (stop_all settled the others), and it would otherwise wait for ever.
  for (auto it = m_waiting.begin(); it != m_waiting.end();) {
    if (m_active >= static_cast<std::size_t>(m_params.in_flight)) break;
    if (m_tasks[*it].due <= now) {
      const std::size_t i = *it;
      it = m_waiting.erase(it);
      start(i);
    } else {
      ++it;
    }
  }
  if (!m_admitting) return;
  // Waves: the next opens when every task of this one is settled (or waiting offline).
  if (m_params.wave > 0) {
    while (true) {
      bool open_tasks = false;
      for (std::size_t i = 0; i < m_tasks.size() && !open_tasks; ++i) {
        const auto& t = m_tasks[i];
        if (static_cast<std::size_t>(t.row.seq / m_params.wave) != m_wave) continue;
        open_tasks =
            t.phase != Phase::kSettled && !(t.phase == Phase::kIdle && t.row.state == "offline");
      }
      const bool more =
          !m_pending.empty() &&
          static_cast<std::size_t>(m_tasks[m_pending.front()].row.seq / m_params.wave) > m_wave;
      if (open_tasks || !more) break;
      ++m_wave;
    }
  }
  const double rate = current_rate();
  if (rate > 0) {
    const double dt = std::chrono::duration<double>(now - m_last_tokens).count();
    m_tokens = std::min(std::max(1.0, rate / 60.0), m_tokens + dt * rate / 60.0);
  }
  m_last_tokens = now;
  while (!m_pending.empty() && m_active < static_cast<std::size_t>(m_params.in_flight)) {
    const std::size_t i = m_pending.front();
    if (!wave_open(i)) break;
    if (rate > 0) {
      if (m_tokens < 1) break;
      m_tokens -= 1;
    }
    m_pending.pop_front();
    start(i);
  }
}

void Runner::start(std::size_t i) {
  Live& t = m_tasks[i];
  ++m_active;
  if (t.began == Steady::time_point{}) t.began = Steady::now();
  t.row.state = "active";
  if (t.row.started_at == 0) t.row.started_at = m_clock.now();
  t.row.next_at = 0;
  touch(t);
  if (auto it = m_recovered.find(t.row.device_id); it != m_recovered.end()) {
    // Signed by an earlier run of this job: install that one, never sign another.
    t.row.new_serial = it->second.serial;
    t.row.new_sha256 = it->second.sha256;
    t.cert_der = it->second.der;
    t.ca_name = it->second.ca_name;
    if (t.row.step == "" || t.row.step == "csr") t.row.step = "sign";
  }
  if (m_job.kind == "breach-roll" && !connected_without(t.row.device_id, t.row.old_serial)) {
    // Never over a session that presented the compromised certificate (the broker drops it
    // within a second): only once the device is back on another valid certificate. One that
    // holds none (the compromised one was its only certificate) cannot come back: reported now,
    // not at the deadline.
    const auto d = m_stores.find_device(t.row.device_id);
    const std::int64_t now = m_clock.now();
    const bool other =
        d && ((!d->primary_serial.empty() && d->primary_serial != t.row.old_serial &&
               d->primary_not_after > now) ||
              (!d->secondary_serial.empty() && d->secondary_serial != t.row.old_serial &&
               d->secondary_not_after > now));
    if (!other) {
      t.row.last_status = kStatusDeviceOffline;
      --m_active;  // started, but no step in flight: settle() counts only a task in a step
      settle(i, "offline", "the device holds no other valid certificate");
      return;
    }
    t.row.attempts = 0;
    wait_retry(i, "offline", kStatusDeviceOffline,
               "not connected with a valid certificate (its compromised one was revoked)",
               std::chrono::seconds(m_params.offline_retry_s));
    return;
  }
  if (t.cert_der.empty()) {
    t.row.step = "";
    Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
    body.set("jobId", m_job_id);
    body.set("keyType", m_params.key_type);
    call(i, Phase::kCsr, "createCsr", body);
  } else if (t.row.step == "sign") {
    install(i);
  } else if (t.row.step == "install") {
    t.enrollment.empty() ? reprovision(i) : install(i);  // the enrollment's slot is re-committed
  } else {
    // reprovision or confirm reached: tell it again (the device answers at once, without a
    // reconnection, when it already runs the new certificate), then wait for it.
    reprovision(i);
  }
}

// The device is connected, and not with `serial` (as the broker recorded its session).
bool Runner::connected_without(const std::string& device, const std::string& serial) {
  const auto sessions = m_stores.connected_sessions_of(std::span<const std::string>(&device, 1));
  return !sessions.empty() && sessions.front().cert_serial != serial;
}

void Runner::call(std::size_t i, Phase phase, const std::string& method,
                  const Poco::JSON::Object& body) {
  Live& t = m_tasks[i];
  t.phase = phase;
  auto device = engine::DeviceId::check(m_policy, t.row.device_id);
  if (!device) {
    settle(i, "conflict", "not a valid device ID: " + device.error().message);
    return;
  }
  MethodRequest request{std::move(device.value()), method, payload_text(body),
                        m_params.step_timeout_s, std::min(5, m_params.step_timeout_s)};
  // A completion may run inside invoke (a refused request): the call is registered first.
  // The answer is queued and handled on this thread, after the call is registered below.
  const CallId id = m_trigger.invoke(std::move(request), m_queue.sink());
  m_calls.emplace(id, std::make_pair(i, phase));
}

void Runner::on_completion(CallId id, MethodOutcome outcome) {
  const auto it = m_calls.find(id);
  if (it == m_calls.end()) return;
  const auto [i, phase] = it->second;
  m_calls.erase(it);
  if (!outcome) {
    failed_call(i, phase, 0, outcome.error().message, true);
    return;
  }
  const MethodResult& r = outcome.value();
  if (r.status >= 200 && r.status < 300) {
    on_answer(i, phase, r);
  } else if (r.status == kStatusDeviceOffline) {
    failed_call(i, phase, r.status, "the device was not connected", false);
  } else if (r.status == kStatusTimeout) {
    failed_call(i, phase, r.status,
                "no answer within " + std::to_string(m_params.step_timeout_s) + " s", false);
  } else {
    failed_call(i, phase, r.status, message_of(r.payload), false);
  }
}

void Runner::failed_call(std::size_t i, Phase phase, int status, const std::string& why,
                         bool transient) {
  Live& t = m_tasks[i];
  static const char* names[] = {"", "createCsr",   "", "installCertificate",
                                "", "reprovision", "", ""};
  const std::string step = names[static_cast<int>(phase)];
  if (t.stopping && t.row.step != "install" && t.row.step != "reprovision") {
    if (status == kStatusDeviceOffline) {
      t.row.last_status = status;
      settle(i, "offline",
             step + ": " + why + " (until the job stopped: " + t.row.last_error + ")");
    } else {
      settle(i, m_stop_state, t.row.last_error);
    }
    return;
  }
  if (phase == Phase::kProbe) {
    // Only "the device is offline" says it is gone; a timeout or a transport error says nothing.
    if (status == kStatusDeviceOffline) look(t, "", 0);
    t.phase = Phase::kConfirm;  // offline while it reconnects, or slow: the deadline decides
    m_confirming.push_back(i);
    return;
  }
  if (transient) {
    wait_retry(i, "active", 0, step + ": " + why, kTransientRetry);
  } else if (status == kStatusDeviceOffline) {
    wait_retry(i, "offline", status, step + ": " + why,
               std::chrono::seconds(m_params.offline_retry_s));
  } else {
    ++t.row.attempts;
    const std::string state = status == kStatusTimeout ? "timed-out" : "refused";
    const std::string text = step + " answered " + std::to_string(status) + ": " + why;
    if (t.row.attempts > m_params.retries) {
      t.row.last_status = status;
      settle(i, state, text);
    } else {
      wait_retry(i, "active", status, text, kRetryBackoff);
    }
  }
}

void Runner::wait_retry(std::size_t i, const std::string& state, int status, const std::string& why,
                        Steady::duration delay) {
  Live& t = m_tasks[i];
  t.phase = Phase::kIdle;
  t.row.state = state;
  t.row.last_status = status;
  t.row.last_error = why;
  t.row.error_code.clear();
  t.due = Steady::now() + delay;
  t.row.next_at = m_clock.now() + std::chrono::duration_cast<std::chrono::seconds>(delay).count();
  touch(t);
  --m_active;
  m_waiting.push_back(i);
}

void Runner::on_answer(std::size_t i, Phase phase, const MethodResult& r) {
  Live& t = m_tasks[i];
  if (t.stopping && (phase == Phase::kCsr)) {
    settle(i, m_stop_state, t.row.last_error);
    return;
  }
  auto answer = answer_object(r.payload);
  switch (phase) {
    case Phase::kCsr: {
      std::string pem =
          answer && answer->has("csr") ? answer->optValue<std::string>("csr", "") : "";
      auto blobs = engine::parse_csr_text(pem);
      if (blobs.size() != 1 || !blobs[0].problem.empty()) {
        ++t.row.attempts;
        settle(i, "refused", "createCsr answered without one PEM CSR in \"csr\"");
        return;
      }
      t.csr = std::move(blobs[0].der);
      t.row.step = "csr";
      t.phase = Phase::kSign;
      touch(t);
      m_to_sign.push_back(i);
      return;
    }
    case Phase::kInstall:
      t.row.step = "install";
      touch(t);
      if (!t.enrollment.empty()) {
        // The enrollment trusts the new certificate before the device is told to use it.
        SlotChange c;
        c.kind = SlotChange::Kind::kIndividualSlot;
        c.device_id = t.enrollment;
        c.slot = t.enrollment_old_slot == engine::Slot::kPrimary ? engine::Slot::kSecondary
                                                                 : engine::Slot::kPrimary;
        c.cert_der = t.cert_der;
        m_changes.push_back(std::move(c));
        t.phase = Phase::kEnroll;
        m_after_flush.push_back(i);
      } else {
        reprovision(i);
      }
      return;
    case Phase::kProbe: {
      // IoT Hub's backend: the device's own report of the certificate it is connected with.
      const std::string sha = answer ? answer->optValue<std::string>("sha256", "") : "";
      // The device's own word, kept only as the thumbprint it claims (is_back_on_old compares
      // it with the old certificate's): at worst a device gets its own new certificate revoked.
      look(t, sha, 0);
      if (sha == t.row.new_sha256) {
        confirmed(i);
      } else {
        t.phase = Phase::kConfirm;  // not yet: ask again at the next poll
        m_confirming.push_back(i);
      }
      return;
    }
    case Phase::kReprovision:
      t.seen_sha256.clear();  // the looks start again
      t.first_sha256.clear();
      t.first_since = 0;
      t.changed = false;
      t.row.step = "reprovision";
      touch(t);
      t.phase = Phase::kConfirm;
      t.due = Steady::now() + std::chrono::seconds(m_params.step_timeout_s);
      m_confirming.push_back(i);
      return;
    default:
      return;
  }
}

}  // namespace fleetsign::jobs::runner_detail

namespace fleetsign::jobs {

// Devices only move once the job-level steps are done: an incident's cut-off and replacement
// (its phase "rotating").
bool can_share_job(const engine::JobRecord& job) {
  if (job.state != "running") return false;
  if (job.kind == "device-rollover" || job.kind == "ca-rollover") return true;
  if (job.kind != "incident") return false;
  const auto report = runner_detail::answer_object(job.report_json);
  return report && report->optValue<std::string>("phase", "") == "rotating";
}

bool wants_helper(const engine::JobRecord& job, const engine::JobShare& share) {
  if (!can_share_job(job) || share.first_unclaimed_seq < 0) return false;
  std::int64_t wave = 0;
  try {
    wave = parse_params(job.params_json, "job " + job.id + " parameters").wave;
  } catch (const Error&) {
    return false;  // its runner reports the parameters' problem
  }
  return wave <= 0 || share.first_open_seq < 0 ||
         share.first_unclaimed_seq < (share.first_open_seq / wave + 1) * wave;
}

}  // namespace fleetsign::jobs
