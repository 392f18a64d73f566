#include "client.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <mosquitto.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "fleetsign/error.hpp"

namespace fleetsign::device {

namespace {

constexpr std::size_t kMaxMethodPayload = 128 * 1024;  // PROTOCOL.md
constexpr std::size_t kMaxTwinPayload = 64 * 1024;
constexpr std::size_t kMaxLogText = 300;

std::string json_text(const Poco::JSON::Object& object) {
  std::ostringstream out;
  object.stringify(out);
  return out.str();
}

// The message's payload as a JSON object, or null (not JSON, not an object, too large).
Poco::JSON::Object::Ptr parse_object(std::string_view payload, std::size_t limit) {
  if (payload.empty() || payload.size() > limit) return nullptr;
  try {
    Poco::JSON::Parser parser;
    return parser.parse(std::string(payload)).extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception&) {
    return nullptr;
  }
}

}  // namespace

void FleetShared::log(const DeviceId& id, const std::string& message) const {
  if (options.log) options.log(id.str() + " " + message);
}

DeviceClient::DeviceClient(const FleetShared& shared, Credential credential, Slot slot,
                           std::optional<SlotStore> store, bool failing)
    : m_shared(shared),
      m_id(credential.id()),
      m_cert(credential.cert()),
      m_slot(slot),
      m_identity(std::make_unique<TlsIdentity>(credential)),
      m_store(std::move(store)),
      m_failing(failing) {
  if (m_store) m_trial = m_store->active_state().trial;
}

DeviceClient::~DeviceClient() { close(); }

int DeviceClient::socket() const { return m_mosq == nullptr ? -1 : mosquitto_socket(m_mosq); }

bool DeviceClient::open() {
  m_failure.clear();
  m_last_log.clear();
  m_refused = false;
  return start(m_shared.options.dps_id_scope.has_value() && !m_hub);
}

bool DeviceClient::start(bool dps) {
  const FleetOptions& o = m_shared.options;
  const std::string host = dps || !m_hub ? o.broker_host : m_hub->host;
  const int port = dps || !m_hub ? o.broker_port : m_hub->port;
  m_target = host + ":" + std::to_string(port);
  close();
  // DPS sessions are not kept; the hub session is (clean session false, as the Azure SDK does).
  m_mosq = new_mosquitto_client(m_id.str().c_str(), dps, this);
  if (m_mosq == nullptr) {
    m_failure = "cannot make an MQTT client: out of memory";
    return false;
  }
  mosquitto_int_option(m_mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_int_option(m_mosq, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_int_option(m_mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
  mosquitto_void_option(m_mosq, MOSQ_OPT_SSL_CTX, m_shared.tls.for_host(host));
  const std::string user = dps ? topics::dps_username(*o.dps_id_scope, m_id.str())
                               : topics::hub_username(host, m_id.str());
  mosquitto_username_pw_set(m_mosq, user.c_str(), nullptr);
  mosquitto_connect_callback_set(m_mosq, &DeviceClient::on_connect);
  mosquitto_disconnect_callback_set(m_mosq, &DeviceClient::on_disconnect);
  mosquitto_message_callback_set(m_mosq, &DeviceClient::on_message);
  mosquitto_log_callback_set(m_mosq, &DeviceClient::on_log);
  m_phase = dps ? Phase::kDpsConnecting : Phase::kHubConnecting;
  m_tcp_pending = true;
  m_shared.tls.set_active(m_identity.get());
  errno = 0;
  const int rc = mosquitto_connect_async(m_mosq, host.c_str(), port, o.keepalive_s);
  if (rc != MOSQ_ERR_SUCCESS) {
    m_failure = std::string("cannot connect to ") + m_target + ": " +
                (rc == MOSQ_ERR_ERRNO ? std::strerror(errno) : mosquitto_strerror(rc));
    close();
    return false;
  }
  return true;
}

void DeviceClient::close() {
  if (m_mosq != nullptr) {
    mosquitto_destroy(m_mosq);
    m_mosq = nullptr;
  }
  m_phase = Phase::kIdle;
}

void DeviceClient::disconnect() {
  if (m_mosq != nullptr && m_phase == Phase::kConnected) {
    m_phase = Phase::kIdle;  // a deliberate close: on_disconnect reports nothing
    m_shared.tls.set_active(m_identity.get());
    mosquitto_disconnect(m_mosq);  // queued and written now when the socket takes it
  }
  close();
}

void DeviceClient::fail(std::string reason) {
  m_failure = std::move(reason);
  m_outcome |= m_phase == Phase::kConnected ? kLost : kFailed;
}

std::uint32_t DeviceClient::wanted_events() const {
  if (socket() < 0) return 0;
  auto* ssl = static_cast<SSL*>(mosquitto_ssl_get(m_mosq));
  if (ssl == nullptr || !SSL_is_init_finished(ssl)) {
    // The handshake advances on reads; it needs EPOLLOUT only to finish the TCP connect or when
    // OpenSSL could not write. (libmosquitto's own want_write flag can be stale here.)
    const bool out = m_tcp_pending || (ssl != nullptr && SSL_want_write(ssl));
    return EPOLLIN | (out ? std::uint32_t{EPOLLOUT} : 0u);
  }
  return EPOLLIN | (mosquitto_want_write(m_mosq) ? std::uint32_t{EPOLLOUT} : 0u);
}

void DeviceClient::on_io(std::uint32_t events) {
  if (m_mosq == nullptr) return;
  m_shared.tls.set_active(m_identity.get());
  auto* ssl = static_cast<SSL*>(mosquitto_ssl_get(m_mosq));
  const bool handshaking = ssl == nullptr || !SSL_is_init_finished(ssl);
  m_tcp_pending = false;
  if (handshaking && (events & (EPOLLERR | EPOLLHUP)) != 0) {
    // libmosquitto would keep retrying a socket whose connect failed (SSL_ERROR_SYSCALL).
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(socket(), SOL_SOCKET, SO_ERROR, &err, &len);
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    const bool tcp_up = ::getpeername(socket(), reinterpret_cast<sockaddr*>(&peer), &peer_len) == 0;
    m_refused = err == 0 && tcp_up && awaiting_connack();
    fail("cannot connect to " + m_target + ": " +
         (err != 0 ? std::strerror(err)
          : tcp_up ? "the broker closed the connection during the TLS handshake"
                   : "connection refused or unreachable"));
    return;
  }
  int rc = MOSQ_ERR_SUCCESS;
  if (handshaking || (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) {
    rc = mosquitto_loop_read(m_mosq, 1);  // during the handshake: drives SSL_connect
  }
  if (rc == MOSQ_ERR_SUCCESS && socket() >= 0 && ssl != nullptr && SSL_is_init_finished(ssl) &&
      mosquitto_want_write(m_mosq)) {
    rc = mosquitto_loop_write(m_mosq, 1);
  }
  check(rc);
}

void DeviceClient::on_misc() {
  if (m_mosq == nullptr) return;
  m_shared.tls.set_active(m_identity.get());
  const int rc = mosquitto_loop_misc(m_mosq);
  if (rc == MOSQ_ERR_SUCCESS && socket() >= 0 && mosquitto_want_write(m_mosq) &&
      m_phase == Phase::kConnected) {
    check(mosquitto_loop_write(m_mosq, 1));
  } else if (rc != MOSQ_ERR_NO_CONN) {
    check(rc);
  }
}

void DeviceClient::check(int rc) {
  const bool closed = m_mosq != nullptr && socket() < 0 && m_phase != Phase::kIdle;
  if ((rc == MOSQ_ERR_SUCCESS && !closed) || (m_outcome & (kFailed | kLost)) != 0) return;
  std::string why = rc == MOSQ_ERR_SUCCESS ? "connection closed" : mosquitto_strerror(rc);
  if (rc == MOSQ_ERR_ERRNO && errno != 0) why = std::strerror(errno);
  if (!m_last_log.empty()) why += " (" + m_last_log + ")";
  // Closed by the peer while connecting, after the TCP connection was up (a TLS alert, or a close
  // right after the handshake, as TLS 1.3 reports a refused client certificate): a refusal. A
  // host that cannot be reached is not one.
  const bool unreachable = rc == MOSQ_ERR_ERRNO && (errno == ECONNREFUSED || errno == ENETUNREACH ||
                                                    errno == EHOSTUNREACH || errno == ETIMEDOUT);
  if (awaiting_connack() && !m_tcp_pending && !unreachable) m_refused = true;
  fail(m_phase == Phase::kConnected ? why : "connecting to " + m_target + ": " + why);
}

// --- callbacks (inside libmosquitto calls) -------------------------------------------------------

void DeviceClient::on_log(mosquitto*, void* self, int level, const char* text) {
  if ((level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) == 0 || text == nullptr) return;
  auto* c = static_cast<DeviceClient*>(self);
  c->m_last_log.assign(text, strnlen(text, kMaxLogText));
}

// The callbacks run inside libmosquitto's C code: nothing may propagate out of them.
template <typename Fn>
void DeviceClient::guarded(void* self, Fn&& fn) noexcept {
  auto* c = static_cast<DeviceClient*>(self);
  try {
    fn(c);
  } catch (const std::exception& e) {
    try {
      c->fail(std::string("internal error: ") + e.what());
    } catch (...) {
      c->m_outcome |= c->m_phase == Phase::kConnected ? kLost : kFailed;
    }
  }
}

void DeviceClient::on_connect(mosquitto*, void* self, int rc) {
  guarded(self, [rc](DeviceClient* c) { c->connect_done(rc); });
}

void DeviceClient::connect_done(int rc) {
  auto* c = this;
  if (rc != 0) {
    c->m_failure = "refused by " + c->m_target + ": " + mosquitto_connack_string(rc);
    // Refused credentials (4) or not authorised (5); not "server unavailable" (3) and the like.
    c->m_refused = rc == 4 || rc == 5;
    c->m_outcome |= kFailed;  // libmosquitto closes the socket next
    return;
  }
  if (c->m_phase == Phase::kDpsConnecting) {
    // DPS's CONNACK 0 is no admission: a refused certificate may connect to hear DPS's 401.
    c->connected_to_dps();
  } else {
    c->end_trial();
    c->connected_to_hub();
  }
}

void DeviceClient::on_disconnect(mosquitto*, void* self, int rc) {
  guarded(self, [rc](DeviceClient* c) { c->disconnect_done(rc); });
}

void DeviceClient::disconnect_done(int rc) {
  auto* c = this;
  if (c->m_phase == Phase::kIdle || (c->m_outcome & (kFailed | kLost)) != 0) return;
  std::string why = rc == MOSQ_ERR_KEEPALIVE ? "keepalive timeout" : mosquitto_strerror(rc);
  if (!c->m_last_log.empty()) why += " (" + c->m_last_log + ")";
  // Closed by the peer before its CONNACK (TLS 1.3 reports a refused client certificate so).
  if (c->awaiting_connack() && !c->m_tcp_pending) c->m_refused = true;
  c->fail(c->m_phase == Phase::kConnected ? "disconnected from " + c->m_target + ": " + why
                                          : "connecting to " + c->m_target + ": " + why);
}

void DeviceClient::on_message(mosquitto*, void* self, const mosquitto_message* m) {
  guarded(self, [m](DeviceClient* c) { c->message(m); });
}

void DeviceClient::message(const mosquitto_message* m) {
  auto* c = this;
  if (m->topic == nullptr || m->payloadlen < 0) return;
  const std::string topic(m->topic);
  const std::string_view payload(static_cast<const char*>(m->payload),
                                 static_cast<std::size_t>(m->payloadlen));
  if (c->m_phase == Phase::kDpsRegistering) {
    try {
      c->handle_dps(topic, payload);
    } catch (const Poco::Exception& e) {
      c->fail("DPS answer on " + topic.substr(0, 100) + " is malformed: " + e.displayText());
    }
  } else if (c->m_phase != Phase::kConnected) {
    return;
  } else if (topic.rfind("$iothub/methods/POST/", 0) == 0) {
    c->handle_method(topic, payload);
  } else {
    c->handle_twin(topic, payload);
  }
}

void DeviceClient::publish(const std::string& topic, const std::string& payload, int qos) {
  const int rc = mosquitto_publish(m_mosq, nullptr, topic.c_str(), static_cast<int>(payload.size()),
                                   payload.data(), qos, false);
  if (rc != MOSQ_ERR_SUCCESS) log("cannot publish to " + topic + ": " + mosquitto_strerror(rc));
}

// --- hub
// ------------------------------------------------------------------------------------------

void DeviceClient::end_trial() {
  if (!m_trial || !m_store) return;
  // Admitted by the hub, whose session with the new certificate is the engine's confirmation:
  // the certificate is the device's own now, and the engine may retire the old one.
  m_trial = false;
  m_trial_refusals = 0;
  try {
    m_store->set_active(m_slot, false);
  } catch (const Error& e) {
    log(std::string("cannot record that its new certificate works: ") + e.what());
  }
}

void DeviceClient::connected_to_hub() {
  m_phase = Phase::kConnected;
  m_outcome |= kConnected;
  const std::string subs[] = {std::string(topics::kMethodsSubscription),
                              std::string(topics::kTwinResponses),
                              std::string(topics::kDesiredPatches)};
  char* list[] = {const_cast<char*>(subs[0].c_str()), const_cast<char*>(subs[1].c_str()),
                  const_cast<char*>(subs[2].c_str())};
  mosquitto_subscribe_multiple(m_mosq, nullptr, 3, list, 0, 0, nullptr);
  publish(topics::twin_get(next_rid()), "");
  // reported.fleetsign.certificate: which certificate this device runs (PROTOCOL.md).
  Poco::JSON::Object::Ptr cert = new Poco::JSON::Object(Poco::JSON_PRESERVE_KEY_ORDER);
  cert->set("sha256", m_cert.sha256);
  cert->set("serial", m_cert.serial);
  cert->set("slot", std::string(slot_name(m_slot)));
  Poco::JSON::Object::Ptr fleetsign = new Poco::JSON::Object;
  fleetsign->set("certificate", cert);
  Poco::JSON::Object reported;
  reported.set("fleetsign", fleetsign);
  publish(topics::twin_report(next_rid()), json_text(reported));
}

void DeviceClient::handle_method(const std::string& topic, std::string_view payload) {
  const auto call = topics::parse_method_call(topic);
  if (!call) {
    log("ignored a method call without a valid $rid: " + topic.substr(0, 200));
    return;
  }
  MethodResponse answer;
  if (m_failing) {
    answer = MethodResponse::error(
        500, "fault injected: " + m_id.str() + " answers every method with 500");
  } else if (call->name.empty()) {
    answer = MethodResponse::error(400, "method name is not [A-Za-z0-9_.-]{1,128}");
  } else if (payload.size() > kMaxMethodPayload) {
    answer = MethodResponse::error(400, "payload is larger than 128 KiB");
  } else {
    answer = m_shared.methods.dispatch(*this, call->name, payload);
  }
  publish(topics::method_response(answer.status, call->rid), answer.payload);
  m_shared.counters.methods_answered.fetch_add(1, std::memory_order_relaxed);
  if (m_shared.options.log) {  // the hot path of a benchmark: no string work without a log
    log("method " + (call->name.empty() ? std::string("(invalid)") : call->name) + " rid " +
        call->rid + ": " + std::to_string(answer.status));
  }
  if (m_reconnect) m_outcome |= kReconnect;
}

void DeviceClient::handle_twin(const std::string& topic, std::string_view payload) {
  if (const auto r = topics::parse_twin_response(topic)) {
    m_shared.counters.twin_responses.fetch_add(1, std::memory_order_relaxed);
    if (r->status >= 300) log("twin request " + r->rid + " answered " + std::to_string(r->status));
    return;
  }
  if (const auto version = topics::parse_desired_patch(topic)) {
    m_shared.counters.desired_patches.fetch_add(1, std::memory_order_relaxed);
    const bool object = parse_object(payload, kMaxTwinPayload) != nullptr;
    log("desired properties version " + std::to_string(*version) +
        (object ? "" : " (payload is not a JSON object: ignored)"));
  }
}

void DeviceClient::reconnect_after_answer(bool reprovision) {
  m_reconnect = true;
  m_reprovision = reprovision;
}

bool DeviceClient::reload_credential() {
  m_reconnect = false;
  if (m_reprovision) m_hub.reset();
  m_reprovision = false;
  if (!m_store) return true;
  try {
    const auto [slot, trial] = m_store->active_state();
    Credential credential = m_store->read(slot);
    m_identity = std::make_unique<TlsIdentity>(credential);
    m_cert = credential.cert();
    m_slot = slot;
    m_trial = trial;
    m_trial_refusals = 0;
    return true;
  } catch (const Error& e) {
    m_failure = std::string("cannot reload its credential: ") + e.what();
    return false;
  }
}

std::string DeviceClient::after_failed_attempt() {
  if (!m_refused) m_trial_refusals = 0;  // three refusals in a row, nothing in between
  if (!m_trial || !m_refused || !m_store) return "";
  if (++m_trial_refusals < kTrialRefusals) return "";
  const Slot from = m_slot, back = other_slot(m_slot);
  const std::string refused_serial = m_cert.serial;
  try {
    m_store->read(back);  // the old credential, checked, before the switch back
    m_store->set_active(back, false);
  } catch (const Error& e) {
    m_trial_refusals = 0;
    return "its new certificate was refused " + std::to_string(kTrialRefusals) +
           " times, and its " + std::string(slot_name(back)) + " slot cannot be used: " + e.what();
  }
  m_hub.reset();  // register again (with DPS) on the old certificate
  if (!reload_credential()) return "cannot go back to its old slot: " + m_failure;
  return "its new certificate (" + std::string(slot_name(from)) + " slot, " + refused_serial +
         ") was refused " + std::to_string(kTrialRefusals) + " times (" + m_failure.substr(0, 200) +
         "): back on its " + std::string(slot_name(back)) + " slot, certificate " + m_cert.serial;
}

// --- DPS --------------------------------------------------------------------------------------

void DeviceClient::connected_to_dps() {
  m_phase = Phase::kDpsRegistering;
  m_outcome |= kDpsConnected;
  mosquitto_subscribe(m_mosq, nullptr, std::string(topics::kDpsResponses).c_str(), 1);
  Poco::JSON::Object body;
  body.set("registrationId", m_id.str());
  m_dps_rid = next_rid();
  publish(topics::dps_register(m_dps_rid), json_text(body), 1);
}

void DeviceClient::poll_dps() {
  if (m_phase != Phase::kDpsRegistering || m_operation_id.empty()) return;
  m_shared.tls.set_active(m_identity.get());
  m_dps_rid = next_rid();
  publish(topics::dps_status(m_dps_rid, m_operation_id), "", 1);
  check(MOSQ_ERR_SUCCESS);
}

void DeviceClient::handle_dps(const std::string& topic, std::string_view payload) {
  const auto r = topics::parse_dps_response(topic);
  if (!r || r->rid != m_dps_rid) return;  // not an answer to this device's request
  const auto body = parse_object(payload, kMaxTwinPayload);
  const std::string status = body ? body->optValue<std::string>("status", "") : "";
  if (r->status == 202 || (r->status == 200 && status == "assigning")) {
    const std::string op = body ? body->optValue<std::string>("operationId", "") : "";
    if (!topics::is_request_id(op)) {
      fail("DPS answered " + std::to_string(r->status) + " without a valid operationId");
      return;
    }
    m_operation_id = op;
    m_poll_after =
        std::chrono::seconds(std::clamp<std::int64_t>(r->retry_after.value_or(2), 1, 60));
    m_outcome |= kPollLater;
    return;
  }
  if (r->status == 200 && status == "assigned") {
    const auto state = body->getObject("registrationState");
    const std::string hub = state ? state->optValue<std::string>("assignedHub", "") : "";
    const std::string device = state ? state->optValue<std::string>("deviceId", "") : "";
    const auto where = topics::parse_host_port(hub, 8883);
    if (!where || device != m_id.str()) {
      fail("DPS assignment is not usable (assignedHub '" + hub.substr(0, 100) + "', deviceId '" +
           device.substr(0, 100) + "')");
      return;
    }
    m_hub = where;
    m_shared.counters.registrations.fetch_add(1, std::memory_order_relaxed);
    log("registered through DPS: assigned to " + where->host + ":" + std::to_string(where->port));
    m_outcome |= kAssigned;
    return;
  }
  // DPS refusing the certificate (401, 403) counts toward the trial's refusals; a throttle or a
  // server error does not.
  m_refused = r->status == 401 || r->status == 403;
  std::string message = body ? body->optValue<std::string>("message", "") : "";
  if (message.empty() && body) message = body->optValue<std::string>("errorMessage", "");
  fail("DPS refused the registration: " + std::to_string(r->status) +
       (status.empty() ? "" : " " + status) +
       (message.empty() ? "" : ": " + message.substr(0, 300)));
}

}  // namespace fleetsign::device
