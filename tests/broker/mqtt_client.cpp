// The test MQTT client: see mqtt_client.hpp.
#include "mqtt_client.hpp"

#include <mosquitto.h>

#include <stdexcept>

namespace fleetsign::testing {

namespace {

struct LibInit {
  LibInit() { mosquitto_lib_init(); }
};

}  // namespace

MqttClient::MqttClient(int port, const std::filesystem::path& ca, ClientOptions options)
    : m_port(port), m_options(std::move(options)) {
  static LibInit init;
  m_mosq = mosquitto_new(m_options.client_id.c_str(), m_options.clean_session, this);
  if (m_mosq == nullptr) {
    throw std::runtime_error("mosquitto_new failed");
  }
  if (mosquitto_tls_set(m_mosq, ca.c_str(), nullptr, m_options.cert.c_str(), m_options.key.c_str(),
                        nullptr) != MOSQ_ERR_SUCCESS) {
    throw std::runtime_error("mosquitto_tls_set failed for " + m_options.cert.string());
  }
  if (!m_options.username.empty()) {
    mosquitto_username_pw_set(m_mosq, m_options.username.c_str(), nullptr);
  }
  mosquitto_connect_callback_set(m_mosq, on_connect);
  mosquitto_disconnect_callback_set(m_mosq, on_disconnect);
  mosquitto_message_callback_set(m_mosq, on_message);
  mosquitto_subscribe_callback_set(m_mosq, on_subscribe);
  // A refused connection must stay refused: no automatic retries inside a test.
  mosquitto_reconnect_delay_set(m_mosq, 3600, 3600, false);
}

MqttClient::~MqttClient() {
  mosquitto_disconnect(m_mosq);
  mosquitto_loop_stop(m_mosq, true);
  mosquitto_destroy(m_mosq);
}

void MqttClient::on_connect(mosquitto*, void* self, int rc) {
  auto* c = static_cast<MqttClient*>(self);
  const std::lock_guard lock(c->m_mutex);
  c->m_connack = rc;
  c->m_connected = rc == 0;
  c->m_cv.notify_all();
}

void MqttClient::on_disconnect(mosquitto*, void* self, int) {
  auto* c = static_cast<MqttClient*>(self);
  const std::lock_guard lock(c->m_mutex);
  c->m_connected = false;
  c->m_closed = true;
  c->m_cv.notify_all();
}

void MqttClient::on_message(mosquitto* mosq, void* self, const mosquitto_message* m) {
  auto* c = static_cast<MqttClient*>(self);
  const std::lock_guard lock(c->m_mutex);
  if (c->m_auto_answer && std::string_view(m->topic).rfind("$iothub/methods/POST/", 0) == 0) {
    const std::string topic = "$iothub/methods/res/" + std::to_string(c->m_auto_answer->first) +
                              "/?$rid=" + rid_of(m->topic);
    const std::string& body = c->m_auto_answer->second;
    mosquitto_publish(mosq, nullptr, topic.c_str(), static_cast<int>(body.size()), body.data(), 0,
                      false);
    ++c->m_answered;
    return;
  }
  c->m_messages.push_back(
      Message{m->topic, std::string(static_cast<const char*>(m->payload), m->payloadlen)});
  c->m_cv.notify_all();
}

void MqttClient::on_subscribe(mosquitto*, void* self, int mid, int count, const int* granted) {
  auto* c = static_cast<MqttClient*>(self);
  const std::lock_guard lock(c->m_mutex);
  c->m_subacks.emplace_back(mid, count > 0 ? granted[0] : 0x80);
  c->m_cv.notify_all();
}

int MqttClient::connect(Ms timeout) {
  if (mosquitto_connect_async(m_mosq, "localhost", m_port, 60) != MOSQ_ERR_SUCCESS) {
    return -1;
  }
  mosquitto_loop_start(m_mosq);
  std::unique_lock lock(m_mutex);
  m_cv.wait_for(lock, timeout, [&] { return m_connack.has_value() || m_closed; });
  return m_connack.value_or(-1);
}

bool MqttClient::subscribe(const std::string& filter, int qos, Ms timeout) {
  int mid = 0;
  if (mosquitto_subscribe(m_mosq, &mid, filter.c_str(), qos) != MOSQ_ERR_SUCCESS) {
    return false;
  }
  std::unique_lock lock(m_mutex);
  int granted = 0x80;
  m_cv.wait_for(lock, timeout, [&] {
    for (const auto& [m, g] : m_subacks) {
      if (m == mid) {
        granted = g;
        return true;
      }
    }
    return false;
  });
  return granted != 0x80;
}

void MqttClient::publish(const std::string& topic, const std::string& payload, int qos) {
  mosquitto_publish(m_mosq, nullptr, topic.c_str(), static_cast<int>(payload.size()),
                    payload.data(), qos, false);
}

std::optional<Message> MqttClient::wait_for(const std::function<bool(const Message&)>& match,
                                            Ms timeout) {
  std::unique_lock lock(m_mutex);
  std::optional<Message> found;
  m_cv.wait_for(lock, timeout, [&] {
    for (auto it = m_messages.begin(); it != m_messages.end(); ++it) {
      if (match(*it)) {
        found = std::move(*it);
        m_messages.erase(it);
        return true;
      }
    }
    return false;
  });
  return found;
}

std::optional<Message> MqttClient::wait_topic_prefix(const std::string& prefix, Ms timeout) {
  return wait_for([&](const Message& m) { return m.topic.rfind(prefix, 0) == 0; }, timeout);
}

std::vector<Message> MqttClient::received() {
  const std::lock_guard lock(m_mutex);
  return m_messages;
}

void MqttClient::answer_methods(int status, const std::string& payload) {
  const std::lock_guard lock(m_mutex);
  m_auto_answer = std::make_pair(status, payload);
}

std::size_t MqttClient::answered() {
  const std::lock_guard lock(m_mutex);
  return m_answered;
}

bool MqttClient::connected() {
  const std::lock_guard lock(m_mutex);
  return m_connected;
}

bool MqttClient::wait_disconnected(Ms timeout) {
  std::unique_lock lock(m_mutex);
  return m_cv.wait_for(lock, timeout, [&] { return !m_connected; });
}

void MqttClient::disconnect() {
  mosquitto_disconnect(m_mosq);
  wait_disconnected(Ms(2000));
}

std::string rid_of(const std::string& topic) {
  const auto at = topic.find("$rid=");
  if (at == std::string::npos) {
    return {};
  }
  const auto end = topic.find('&', at);
  return topic.substr(at + 5, end == std::string::npos ? std::string::npos : end - at - 5);
}

}  // namespace fleetsign::testing
