// FleetBroker: see fleet_broker.hpp.
#include "fleet_broker.hpp"

#include "fleetsign/error.hpp"

namespace fleetsign::broker {

namespace {

constexpr std::int64_t kEvictEveryMs = 5000;
constexpr std::int64_t kRefreshEveryMs = 100;

bool is_device(ClientKind k) { return k != ClientKind::kService; }

}  // namespace

FleetBroker::FleetBroker(BrokerConfig config, Transport& transport)
    : m_config(std::move(config)),
      m_transport(transport),
      m_reads(open_broker_registry(m_config.registry_path())),
      m_writer(m_config.registry_path(), m_log),
      m_twins(*m_reads, m_writer, m_transport) {
  // Nobody is connected to a broker that is starting: rows left "connected" by a crash go.
  const std::int64_t reset = m_reads->mark_all_disconnected(m_clock.now());
  m_mark = m_reads->change_mark();
  m_auth = std::make_unique<engine::Authenticator>(*m_reads);
  m_watcher =
      std::make_unique<RegistryWatcher>(m_config.registry_path(), m_live, m_inbox, m_log, m_mark);
  m_transport.log(LogLevel::kNotice,
                  "fleetsign: broker plugin ready (home " + m_config.home.string() + ", " +
                      std::to_string(reset) + " stale sessions closed, " +
                      std::to_string(m_config.service_sha256.size()) + " service certificates)");
}

FleetBroker::~FleetBroker() {
  m_watcher.reset();
  m_writer.flush(std::chrono::seconds(5));
  try {
    m_reads->mark_all_disconnected(m_clock.now());
  } catch (const Error& e) {
    m_transport.log(LogLevel::kWarning, std::string("fleetsign: at shutdown: ") + e.what());
  }
  m_log.drain_to(m_transport);
}

std::int64_t FleetBroker::now_ms() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool FleetBroker::on_connect(const void* connection, const ConnectRequest& request,
                             bool clean_session) {
  // A change committed a moment ago counts for this connection already.
  refresh();
  const std::string id(request.client_id);
  // mosquitto re-authenticates every live client on SIGHUP (`broker reload`): the same
  // connection again keeps what it had.
  const Session* again = m_sessions.live(connection, id);
  const bool was_ready = again != nullptr && again->methods_ready;
  if (m_reloading && again == nullptr && request.leaf == nullptr) {
    // After a reload mosquitto 2.0 re-authenticates every client it knows, including the stored
    // session of a persistent client that is not connected (no TLS, so no certificate). Refusing
    // it makes mosquitto disconnect that session a second time, which puts it twice on its
    // session-expiry list and later reads it after it was freed (a crash). It is not connected,
    // so nothing is admitted: its next connection is checked like any other. A real connection
    // always has a certificate (require_certificate true) and is never handled here.
    return true;
  }
  ConnectRequest checked = request;
  const Session* holder = m_sessions.find(id);
  checked.id_in_use = holder != nullptr && holder->connection != connection;
  const Admission a = admit(m_config, *m_auth, checked);
  if (!a.allowed) {
    m_transport.log(LogLevel::kNotice, "fleetsign: refused " +
                                           std::string(client_kind_name(a.kind)) + " client '" +
                                           id.substr(0, 128) + "': " + a.rule + ": " + a.reason);
    return false;
  }
  Session s;
  s.connection = connection;
  s.kind = a.kind;
  s.client_id = id;
  s.leaf = std::make_shared<const engine::Der>(*request.leaf);
  s.sha256 = a.sha256;
  s.serial = a.serial;
  s.decision_mark = m_mark;
  s.connected_at = request.now;
  s.rotation_only = a.rotation_only;
  s.recorded = is_device(a.kind) && !a.hears_refusal;
  if (a.kind == ClientKind::kHubDevice) {
    if (was_ready) {
      s.methods_ready = true;
    } else if (clean_session) {
      m_method_subscribers.erase(id);
    } else if (m_method_subscribers.count(id) != 0) {
      s.methods_ready = true;  // its persistent session keeps the subscription
      m_ready.push_back(id);
    }
  }
  const Session& stored = m_sessions.add(std::move(s));
  if (stored.recorded) {
    m_writer.enqueue(engine::DeviceSession{id, true, std::string(client_kind_name(a.kind)),
                                           stored.sha256, stored.serial, request.now, 0});
  }
  m_transport.log(LogLevel::kInfo, "fleetsign: admitted " + std::string(client_kind_name(a.kind)) +
                                       " client '" + id + "' (" + a.rule + ", certificate " +
                                       a.sha256.substr(0, 16) + "…)");
  return true;
}

Verdict FleetBroker::on_publish(const void* connection, const std::string& client_id,
                                std::string_view topic, std::string_view payload) {
  Session* s = m_sessions.live(connection, client_id);
  if (s == nullptr) {
    return Verdict::kDeny;  // a will at disconnect, or a replaced connection: never routed
  }
  const Request req = parse_request(topic);
  if (req.kind == Request::Kind::kNone) {
    return Verdict::kDeny;
  }
  if (s->kind == ClientKind::kService) {
    serve_service(*s, req, payload);
  } else {
    serve_device(*s, req, payload);
  }
  return Verdict::kConsume;
}

void FleetBroker::serve_service(const Session& s, const Request& req, std::string_view payload) {
  if (req.kind == Request::Kind::kMalformed) {
    if (!req.rid.empty()) {
      m_methods.refuse(s.client_id, req.rid, req.problem);
    }
    return;
  }
  if (req.kind != Request::Kind::kMethodCall) {
    return;
  }
  const std::string device(req.device_id);
  if (const auto bad = policy::check_device_id(m_config.policy.device_id, device)) {
    m_methods.refuse(s.client_id, req.rid, "device ID: " + *bad);
    return;
  }
  const Session* target = m_sessions.find(device);
  if (target != nullptr && target->rotation_only && !rotation_method(req.method)) {
    m_methods.refuse(s.client_id, req.rid, rotation_only_refusal(device, req.method));
    return;
  }
  const bool ready =
      target != nullptr && target->kind == ClientKind::kHubDevice && target->methods_ready;
  m_methods.call(s.client_id, req, payload, ready, now_ms());
}

void FleetBroker::serve_device(Session& s, const Request& req, std::string_view payload) {
  using K = Request::Kind;
  const bool hub = s.kind == ClientKind::kHubDevice;
  if (s.rotation_only && req.kind != K::kMethodResponse) {
    return;  // pinned by an incident: no twin, no telemetry, no DPS; consumed, never answered
  }
  switch (req.kind) {
    case K::kMethodResponse:
      if (hub && !m_methods.answer(s.client_id, req, payload)) {
        m_transport.log(LogLevel::kDebug, "fleetsign: answer from " + s.client_id +
                                              " for an unknown or foreign rid: dropped");
      }
      return;
    case K::kTwinGet:
      if (hub) m_twins.get(s.client_id, req.rid);
      return;
    case K::kTwinReported:
      if (hub) m_twins.patch_reported(s.client_id, req.rid, payload);
      return;
    case K::kDpsRegister:
      if (!hub) {
        m_dps.register_device(s, req.rid, payload, *m_auth, m_clock.now());
      }
      return;
    case K::kDpsStatus:
      if (!hub) m_dps.operation_status(s, req.rid, req.operation_id);
      return;
    default:
      return;  // malformed, or a service topic: consumed, nothing to answer
  }
}

Verdict FleetBroker::on_subscribe(const void* connection, const std::string& client_id,
                                  std::string_view filter) {
  Session* s = m_sessions.live(connection, client_id);
  if (s == nullptr) {
    return Verdict::kDeny;
  }
  if (s->kind == ClientKind::kService) {
    return service_may_subscribe(filter) ? Verdict::kAllow : Verdict::kDeny;
  }
  const bool dps = s->kind == ClientKind::kDpsDevice;
  if (s->rotation_only ? filter != "$iothub/methods/POST/#" : !device_may_subscribe(filter, dps)) {
    return Verdict::kDeny;
  }
  if (!dps && filter == "$iothub/methods/POST/#" && !s->methods_ready) {
    s->methods_ready = true;
    m_method_subscribers.insert(client_id);
    // Queued now, delivered by mosquitto after it has answered the SUBSCRIBE.
    m_methods.device_ready(client_id, now_ms(), s->rotation_only);
  }
  return Verdict::kAllow;
}

Verdict FleetBroker::on_read(const void* connection, const std::string& client_id,
                             std::string_view topic) {
  // The plugin sends every message to one client id, and no client publish is ever routed, so a
  // client reads only the answer topics of its own kind (requeued messages on a reconnect).
  const Session* s = m_sessions.find(client_id);
  if (s == nullptr) {
    return Verdict::kDeny;
  }
  const bool ok = s->kind == ClientKind::kService ? service_may_read(topic)
                  : s->rotation_only              ? topic.substr(0, 21) == "$iothub/methods/POST/"
                                     : device_may_read(topic, s->kind == ClientKind::kDpsDevice);
  return ok ? Verdict::kAllow : Verdict::kDeny;
}

void FleetBroker::on_disconnect(const void* connection, const std::string& client_id) {
  const auto s = m_sessions.remove(connection, client_id);
  if (!s) {
    return;  // refused, or replaced by a newer connection of the same client id
  }
  if (s->kind == ClientKind::kService) {
    m_methods.service_gone(client_id);
    return;
  }
  if (s->recorded) {
    m_writer.enqueue(engine::DeviceSession{client_id, false, std::string(client_kind_name(s->kind)),
                                           s->sha256, s->serial, s->connected_at, m_clock.now()});
  }
  m_twins.device_left(client_id);
  m_dps.device_left(client_id);
}

void FleetBroker::refresh() {
  RegistryChanges changes;
  try {
    changes = read_changes(*m_reads, &m_mark);
    if (changes.admission) {
      m_auth = std::make_unique<engine::Authenticator>(*m_reads);
    }
  } catch (const Error& e) {
    // The decision stays as it was; the next connect or tick tries again.
    m_transport.log(LogLevel::kWarning,
                    std::string("fleetsign: reading registry changes: ") + e.what());
    return;
  }
  for (const auto& c : changes.desired) {
    const Session* s = m_sessions.find(c.device_id);
    // A pinned session (an incident's, rotation only) gets no twin: no push either.
    m_twins.desired_changed(c.device_id, c.version, c.patch,
                            s != nullptr && s->kind == ClientKind::kHubDevice && !s->rotation_only);
  }
}

void FleetBroker::KickLog::add(const std::string& device_id, const std::string& rule,
                               const std::string& reason) {
  for (auto& g : m_groups) {
    if (g.rule == rule) {
      ++g.count;
      return;
    }
  }
  m_groups.push_back(Group{rule, device_id, reason, 1});
}

void FleetBroker::KickLog::write(Transport& transport) const {
  for (const auto& g : m_groups) {
    transport.log(
        LogLevel::kNotice,
        g.count == 1
            ? "fleetsign: disconnected " + g.first_device + ": " + g.rule + ": " + g.first_reason
            : "fleetsign: disconnected " + std::to_string(g.count) + " sessions: " + g.rule +
                  " (the first, " + g.first_device + ": " + g.first_reason + ")");
  }
}

void FleetBroker::kick(const std::string& device_id, const std::string& rule,
                       const std::string& reason, KickLog& log) {
  log.add(device_id, rule, reason);
  m_transport.kick(device_id);  // fires on_disconnect for it
}

void FleetBroker::apply_recheck(const Recheck& r) {
  // One log line per rule, not per session: a revocation can cut off thousands in one tick, and
  // mosquitto logs each disconnection by name anyway.
  KickLog log;
  for (const auto& refusal : r.refused) {
    const Session* s = m_sessions.find(refusal.device_id);
    if (s != nullptr && s->seq == refusal.seq) {
      kick(refusal.device_id, refusal.rule, refusal.reason, log);
    }
  }
  log.write(m_transport);
  // Admitted after the watcher's snapshot by a decision older than the one it re-checked with:
  // check them here, with the main thread's decision (as new as the watcher's, or newer).
  refresh();
  std::vector<std::pair<std::string, engine::AuthDecision>> late;
  const std::int64_t now = m_clock.now();
  m_sessions.for_each([&](Session& s) {
    if (is_device(s.kind) && s.seq > r.snapshot_seq && s.decision_mark < r.mark) {
      auto d = m_auth->check(std::span<const engine::Der>(s.leaf.get(), 1), now, s.client_id);
      if (!d.allowed || d.rotation_only != s.rotation_only) {
        if (d.allowed) d.reason = "admission mode changed: " + d.reason;
        late.emplace_back(s.client_id, std::move(d));
      }
    }
  });
  KickLog late_log;
  for (const auto& [id, d] : late) {
    kick(id, d.rule, d.reason, late_log);
  }
  late_log.write(m_transport);
}

void FleetBroker::on_tick() {
  m_reloading = false;  // mosquitto re-authenticates between the reload event and this tick
  m_log.drain_to(m_transport);
  for (const auto& r : m_inbox.take_rechecks()) {
    try {
      apply_recheck(r);
    } catch (const Error& e) {
      m_transport.log(LogLevel::kWarning, std::string("fleetsign: re-check: ") + e.what());
    }
  }
  const std::int64_t now = now_ms();
  for (const auto& id : std::exchange(m_ready, {})) {
    // Gone again since it connected: its calls stay held until it is back.
    if (const Session* s = m_sessions.find(id)) m_methods.device_ready(id, now, s->rotation_only);
  }
  m_methods.expire(now);
  if (now - m_last_refresh_ms >= kRefreshEveryMs) {
    refresh();  // desired changes go out without waiting for a connect
    m_last_refresh_ms = now;
  }
  if (now - m_last_evict_ms >= kEvictEveryMs) {
    m_twins.evict();
    m_last_evict_ms = now;
  }
}

void FleetBroker::on_reload() {
  m_reloading = true;
  try {
    BrokerConfig fresh = load_broker_config(m_config.home);
    m_config = std::move(fresh);
    m_transport.log(LogLevel::kNotice, "fleetsign: configuration reloaded (" +
                                           std::to_string(m_config.service_sha256.size()) +
                                           " service certificates)");
  } catch (const std::exception& e) {
    m_transport.log(LogLevel::kError,
                    std::string("fleetsign: reload failed, configuration unchanged: ") + e.what());
  }
  refresh();
}

}  // namespace fleetsign::broker
