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
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <deque>
#include <memory>
#include <unordered_map>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/job_issue.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/hsm/token.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {

namespace {

using engine::JobRecord;
using engine::JobTask;
using engine::SlotChange;
using Steady = std::chrono::steady_clock;

constexpr auto kControlEvery = std::chrono::milliseconds(500);
constexpr auto kTransientRetry = std::chrono::seconds(2);
constexpr auto kRetryBackoff = std::chrono::seconds(2);
constexpr auto kLeaseStale = 15;  // seconds without a heartbeat before another runner may take over

enum class Phase {
  kIdle,     // pending, or waiting for a retry
  kCsr,      // createCsr sent
  kSign,     // CSR queued for signing
  kInstall,  // installCertificate sent
  kEnroll,   // waiting for the enrollment's new slot to be committed
  kReprovision,
  kConfirm,  // waiting to see the device connected with the new certificate
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
};

// "host:pid" of a lease holder on this host (the same host as `self`) whose process is gone.
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
  void admit(Steady::time_point now);
  void start(std::size_t i);
  void call(std::size_t i, Phase phase, const std::string& method, const Poco::JSON::Object& body);
  void on_completion(CallId id, MethodOutcome outcome);
  void on_answer(std::size_t i, Phase phase, const MethodResult& result);
  void failed_call(std::size_t i, Phase phase, int status, const std::string& why, bool transient);
  void sign_queued();
  void install(std::size_t i);
  void reprovision(std::size_t i);
  void poll_confirmations(Steady::time_point now);
  void settle(std::size_t i, const std::string& state, const std::string& why);
  void wait_retry(std::size_t i, const std::string& state, int status, const std::string& why,
                  Steady::duration delay);
  void flush();
  bool control(Steady::time_point now);
  void stop_all(const std::string& state, const std::string& why);
  void check_abort();
  double current_rate() const;
  bool wave_open(std::size_t i) const;
  const engine::Issuer& issuer_for(const Live& t);
  const std::string& chain_pem(const std::string& ca_name);
  void touch(Live& t) {
    t.dirty = true;
    t.row.updated_at = m_clock.now();
  }

  engine::Stores& m_stores;
  engine::CaService& m_cas;
  const policy::Policy& m_policy;
  const engine::Clock& m_clock;
  Trigger& m_trigger;
  std::string m_job_id;
  const RunnerOptions& m_options;
  engine::JobIssuer m_issuer;
  engine::CsprngSource m_random;

  JobRecord m_job;
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
  double m_tokens = 1;
  Steady::time_point m_last_tokens = Steady::now();
  std::size_t m_wave = 0;
  bool m_admitting = true;
  Steady::time_point m_sign_since{};
  std::string m_stop_state = "aborted";  // what a device stopped half-way becomes
};

void Runner::load() {
  auto job = m_stores.find_job(m_job_id);
  if (!job) throw Error(ErrorCode::kNotFound, "no job '" + m_job_id + "'");
  m_job = std::move(*job);
  m_params = parse_params(m_job.params_json, "job " + m_job_id + " parameters");
  m_state = m_job.state;
  m_recovered = m_issuer.recover();

  const engine::GroupIndex index = engine::GroupIndex::load(m_stores);
  auto rows = m_stores.job_tasks(m_job_id, "");
  m_tasks.reserve(rows.size());
  for (auto& row : rows) {
    Live t;
    t.row = std::move(row);
    if (!is_final_task_state(t.row.state) || (t.row.state == "offline" && t.row.next_at != 0)) {
      if (auto d = m_stores.find_device(t.row.device_id)) {
        t.ca_name = m_params.ca.empty() ? d->ca_name : m_params.ca;
        t.lot = d->lot;
        if (const auto* g = index.group_of_ca(d->ca_name)) t.group = g->name;
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
    }
    m_tasks.push_back(std::move(t));
  }
  for (std::size_t i = 0; i < m_tasks.size(); ++i) {
    const auto& row = m_tasks[i].row;
    if (row.state == "pending" || row.state == "active" ||
        (row.state == "offline" && row.next_at != 0)) {
      m_pending.push_back(i);
    }
  }
}

double Runner::current_rate() const {
  const Rollout& r = m_params.rollout;
  if (r.base_per_minute > 0 && r.every > 0) {
    const double steps = std::floor(static_cast<double>(m_done) / r.every);
    const double rate = r.base_per_minute * std::pow(std::max(1.0, r.factor), steps);
    return r.per_minute > 0 ? std::min<double>(rate, r.per_minute) : rate;
  }
  return r.per_minute;
}

bool Runner::wave_open(std::size_t i) const {
  if (m_params.wave <= 0) return true;
  return static_cast<std::size_t>(m_tasks[i].row.seq / m_params.wave) <= m_wave;
}

void Runner::admit(Steady::time_point now) {
  // Retries that are due go first.
  for (auto it = m_waiting.begin(); it != m_waiting.end();) {
    if (m_active >= static_cast<std::size_t>(m_params.in_flight) || !m_admitting) break;
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
    // reprovision or confirm reached: wait for the device (a repeated reprovision is harmless).
    t.phase = Phase::kConfirm;
    t.due = Steady::now() + std::chrono::seconds(m_params.step_timeout_s);
    m_confirming.push_back(i);
  }
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
    case Phase::kReprovision:
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
  const hsm::SigningKey& signing_key = m_cas.load_key(ca);
  auto issuer = std::make_unique<engine::Issuer>(
      ca, signing_key, m_policy, policy::device_days_for(m_policy, t.group), m_clock, m_random);
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
      csrs.push_back(engine::JobCsr{t.row.device_id, t.row.seq, std::move(t.csr), t.lot});
      t.csr.clear();
    }
    auto results = m_issuer.issue(issuer_for(m_tasks[indices.front()]), csrs);
    for (std::size_t k = 0; k < indices.size(); ++k) {
      const std::size_t i = indices[k];
      Live& t = m_tasks[i];
      if (!results[k]) {
        settle(i, "refused", "its CSR was refused: " + results[k].error().message);
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

void Runner::poll_confirmations(Steady::time_point now) {
  if (m_confirming.empty()) return;
  std::unordered_map<std::string, std::string> seen;
  for (auto& s : m_stores.connected_devices()) seen.emplace(s.device_id, s.cert_sha256);
  std::vector<std::size_t> still;
  for (std::size_t i : m_confirming) {
    Live& t = m_tasks[i];
    if (t.phase != Phase::kConfirm) continue;
    const auto s = seen.find(t.row.device_id);
    if (s != seen.end() && s->second == t.row.new_sha256) {
      t.row.step = "retire";
      SlotChange retire;
      retire.kind = SlotChange::Kind::kRetireDevice;
      retire.device_id = t.row.device_id;
      retire.serial = t.row.new_serial;
      m_changes.push_back(std::move(retire));
      if (!t.enrollment.empty()) {
        SlotChange old;
        old.kind = SlotChange::Kind::kIndividualSlot;
        old.device_id = t.enrollment;
        old.slot = t.enrollment_old_slot;  // freed: the old certificate is no longer trusted
        m_changes.push_back(std::move(old));
      }
      settle(i, "done", "");
    } else if (now >= t.due) {
      ++t.row.attempts;
      if (t.row.attempts > m_params.retries) {
        settle(i, "timed-out",
               "not seen connected with the new certificate within " +
                   std::to_string(m_params.step_timeout_s) + " s of reprovision");
      } else {
        reprovision(i);
      }
    } else {
      still.push_back(i);
    }
  }
  m_confirming = std::move(still);
}

void Runner::settle(std::size_t i, const std::string& state, const std::string& why) {
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

void Runner::check_abort() {
  if (m_params.abort_percent <= 0 || m_state != "running") return;
  if (m_settled_exec < std::max(1, m_params.min_executed)) return;
  if (static_cast<double>(m_failed) * 100.0 <
      m_params.abort_percent * static_cast<double>(m_settled_exec)) {
    return;
  }
  m_state = "aborted";
  stop_all("aborted", "the job stopped: " + std::to_string(m_failed) + " of " +
                          std::to_string(m_settled_exec) + " devices failed (threshold " +
                          std::to_string(static_cast<int>(m_params.abort_percent)) + "%)");
}

// No new device starts; those not yet past installCertificate stop at their next answer; those
// installing or reprovisioning finish the switch (a device is never left half-way).
void Runner::stop_all(const std::string& state, const std::string& why) {
  m_admitting = false;
  m_stop_state = state;
  for (std::size_t i : m_pending) {
    if (m_tasks[i].phase == Phase::kIdle) settle(i, state, why);
  }
  m_pending.clear();
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
    m_stores.heartbeat_job(m_job_id, m_options.runner, m_clock.now());
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
  if (m_state == "running" && m_params.deadline != 0 && m_clock.now() >= m_params.deadline) {
    m_state = "deadline";
    stop_all("timed-out", "the job's deadline passed before this device was rolled");
  }
  return true;
}

JobRecord Runner::run() {
  load();
  const std::int64_t now = m_clock.now();
  // A runner of this host whose process is gone (kill -9) holds the lease no longer.
  const std::int64_t stale_before =
      holder_is_dead(m_job.runner, m_options.runner) ? now + 1 : now - kLeaseStale;
  if (!m_stores.acquire_job(m_job_id, m_options.runner, now, stale_before)) {
    auto job = m_stores.find_job(m_job_id);
    throw Error(ErrorCode::kHomeBusy, "job " + m_job_id + " is being run by " +
                                          (job ? job->runner : std::string("another process")) +
                                          " (its heartbeat is recent)");
  }
  if (m_state == "finished") {
    m_stores.release_job(m_job_id, m_options.runner);
    return m_job;
  }
  if (m_state == "aborted" || m_state == "canceled") {
    // Start nothing new; a device that was switching (its certificate installed) finishes.
    m_admitting = false;
    auto pending = std::move(m_pending);
    m_pending.clear();
    for (std::size_t i : pending) {
      const auto& step = m_tasks[i].row.step;
      if (m_tasks[i].row.state == "active" &&
          (step == "install" || step == "reprovision" || step == "confirm")) {
        start(i);
      } else {
        settle(i, m_tasks[i].row.state == "offline" ? "offline" : m_state,
               "the job was " + m_state + " before this device switched");
      }
    }
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
    if (idle && (m_pending.empty() || !m_admitting) && (m_waiting.empty() || !m_admitting)) {
      if (m_state != "running" || (m_pending.empty() && m_waiting.empty())) break;
    }
  }
  if (lost_lease) {
    m_trigger.wait_idle();
    return *m_stores.find_job(m_job_id);
  }
  flush();
  m_trigger.wait_idle();
  if (m_state == "running" || m_state == "deadline") {
    if (m_job.kind == "ca-rollover") finish_ca_rollover(m_stores, m_policy, m_clock, m_job_id);
    m_stores.set_job_state(m_job_id, "finished", m_clock.now());
  } else if (m_state == "aborted" || m_state == "canceled") {
    m_stores.set_job_state(m_job_id, m_state, m_clock.now());
  }
  m_stores.release_job(m_job_id, m_options.runner);
  return *m_stores.find_job(m_job_id);
}

}  // namespace

JobRecord run_job(engine::Stores& stores, engine::CaService& cas, const policy::Policy& policy,
                  const engine::Clock& clock, Trigger& trigger, const std::string& job_id,
                  const RunnerOptions& options) {
  Runner runner(stores, cas, policy, clock, trigger, job_id, options);
  return runner.run();
}

}  // namespace fleetsign::jobs
