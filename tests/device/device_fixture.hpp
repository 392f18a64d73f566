// Test support for the device agent: real parts only. A PKI made with the real `fleetsign` CLI
// (home with its own SoftHSM2 token, root + intermediate CA, batches of generated devices), a
// real mosquitto started on a free port with TLS client authentication, a test-side MQTT client
// (libmosquitto, its own thread) that plays the service or a spy, and the real fleetsign-device
// program run as a child process.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "test_home.hpp"

struct mosquitto;
struct mosquitto_message;

namespace fleetsign::testing {

namespace fs = std::filesystem;

// Made once per test program (first use), removed at exit.
struct DevicePki {
  TempDir dir;
  fs::path home, batch, bundle, callers, clients_ca, server_ca, server_cert, server_key;
  // batch: dev-01..dev-03 (per-device files); bundle: bun-01, bun-02 (bundle.pem);
  // callers: caller-01..caller-03 (the test's own MQTT clients).
  static const DevicePki& get();
  std::string cert(const std::string& id) const;  // {id}_fullchain.pem in batch or callers
  std::string key(const std::string& id) const;

 private:
  DevicePki();
};

// Runs `fleetsign --home HOME ARGS` with the test PINs; returns its status, output in `out`.
int fleetsign_cli(const fs::path& home, const std::string& args, std::string* out = nullptr);

// mosquitto with `require_certificate true` and `use_identity_as_username true` on 127.0.0.1.
class Broker {
 public:
  Broker(const DevicePki& pki, fs::path dir);
  ~Broker();
  Broker(const Broker&) = delete;
  void start();  // on the same port every time; waits until it accepts connections
  void stop();   // SIGTERM, waits for the exit
  int port() const { return m_port; }
  std::string log() const;

 private:
  const DevicePki& m_pki;
  fs::path m_dir;
  int m_port;
  pid_t m_pid = -1;
};

struct Message {
  std::string topic, payload;
};

// A test-side MQTT client with its own network thread.
class MqttClient {
 public:
  MqttClient(const Broker& broker, const DevicePki& pki, const std::string& id);
  ~MqttClient();
  MqttClient(const MqttClient&) = delete;
  void subscribe(const std::string& topic);  // returns once the broker acknowledged it
  void publish(const std::string& topic, const std::string& payload);
  // The first message received (since construction) that matches, or nullopt after `timeout`.
  std::optional<Message> wait_for(const std::function<bool(const Message&)>& match,
                                  std::chrono::milliseconds timeout);
  std::optional<Message> wait_topic(const std::string& topic, std::chrono::milliseconds timeout);
  // Waits until `n` messages arrived (false after `timeout`). Predicates of wait_for must not call
  // back into this client (they run under its lock).
  bool wait_count(std::size_t n, std::chrono::milliseconds timeout);
  std::vector<Message> received() const;

 private:
  static void on_message(mosquitto*, void*, const mosquitto_message*);
  static void on_subscribe(mosquitto*, void*, int, int, const int*);
  mosquitto* m_mosq = nullptr;
  mutable std::mutex m_mutex;
  std::condition_variable m_cv;
  std::vector<Message> m_messages;
  int m_subscribed = 0;
};

// The fleetsign-device program as a child; stdout and stderr go to files in `dir`.
class Agent {
 public:
  Agent(const fs::path& dir, const std::vector<std::string>& args);
  ~Agent();  // SIGKILL if still running
  Agent(const Agent&) = delete;
  // Waits until the log (stderr) holds `needle` `times` times; false after `timeout`.
  bool wait_log(const std::string& needle, std::chrono::milliseconds timeout, int times = 1) const;
  std::string log() const;
  std::string out() const;
  int stop(int signal = SIGTERM);  // sends `signal`, returns the exit status (-1: killed)
  int wait(std::chrono::milliseconds timeout);  // exit status, or -2 still running
  bool running() const { return m_pid > 0; }

 private:
  fs::path m_dir;
  pid_t m_pid = -1;
  int m_status = -1;
};

std::string device_bin();
// Runs fleetsign-device to the end (it must exit by itself: --duration or bad input).
int run_device(const std::string& args, std::string* output);
std::size_t count_of(const std::string& text, const std::string& what);

}  // namespace fleetsign::testing
