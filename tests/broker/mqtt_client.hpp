// A test MQTT client on libmosquitto (MQTT 3.1.1, TLS with a client certificate): connect and
// learn the broker's answer, subscribe and learn what was granted, publish, and wait for messages.
// Its network loop runs on libmosquitto's thread; every method here is safe from the test thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

struct mosquitto;
struct mosquitto_message;

namespace fleetsign::testing {

struct Message {
  std::string topic, payload;
};

struct ClientOptions {
  std::string client_id;
  std::string username;  // empty: none sent
  std::filesystem::path cert, key;
  bool clean_session = true;
};

class MqttClient {
 public:
  using Ms = std::chrono::milliseconds;
  MqttClient(int port, const std::filesystem::path& ca, ClientOptions options);
  ~MqttClient();
  MqttClient(const MqttClient&) = delete;  // owns a libmosquitto handle and its thread
  MqttClient& operator=(const MqttClient&) = delete;

  // The CONNACK code (0 accepted, 5 not authorised), or -1 when the connection closed (e.g. the
  // TLS layer refused the certificate) or nothing came within `timeout`.
  int connect(Ms timeout = Ms(5000));
  // Waits for the SUBACK; true when the broker granted the filter (not 0x80).
  bool subscribe(const std::string& filter, int qos = 0, Ms timeout = Ms(5000));
  void publish(const std::string& topic, const std::string& payload, int qos = 0);
  // The first message (received before or during the wait) that `match` accepts; it is taken out
  // of the list. nullopt after `timeout`.
  std::optional<Message> wait_for(const std::function<bool(const Message&)>& match,
                                  Ms timeout = Ms(5000));
  std::optional<Message> wait_topic_prefix(const std::string& prefix, Ms timeout = Ms(5000));
  std::vector<Message> received();  // everything not yet taken
  // From now on every method call this client receives is answered at once with `status` and
  // `payload` (from libmosquitto's thread) instead of being kept: a device that always answers.
  void answer_methods(int status, const std::string& payload);
  std::size_t answered();  // calls answered so far
  bool connected();
  // True once the broker closed the connection (or it was never open).
  bool wait_disconnected(Ms timeout);
  void disconnect();

 private:
  static void on_connect(mosquitto*, void* self, int rc);
  static void on_disconnect(mosquitto*, void* self, int rc);
  static void on_message(mosquitto*, void* self, const ::mosquitto_message* m);
  static void on_subscribe(mosquitto*, void* self, int mid, int count, const int* granted);

  int m_port;
  ClientOptions m_options;
  mosquitto* m_mosq = nullptr;
  std::mutex m_mutex;
  std::condition_variable m_cv;
  std::optional<int> m_connack;
  bool m_connected = false, m_closed = false;
  std::vector<Message> m_messages;
  std::vector<std::pair<int, int>> m_subacks;  // mid, first granted qos
  std::optional<std::pair<int, std::string>> m_auto_answer;
  std::size_t m_answered = 0;
};

// The rid of a topic ("…?$rid=abc&…" → "abc").
std::string rid_of(const std::string& topic);

}  // namespace fleetsign::testing
