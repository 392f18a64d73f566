// Test support for the broker: a fleetsign home made with the real CLI (token, verified root,
// intermediate "int", enrollment group "g1" on it, `broker init` on a free port with the plugin
// this build made), and Debian's mosquitto with fleetsign's plugin, started and stopped with
// `fleetsign broker start | stop`.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli_process.hpp"
#include "mqtt_client.hpp"
#include "test_home.hpp"

namespace fleetsign::testing {

struct DeviceFiles {
  std::string id;
  std::filesystem::path cert, key;
};

class BrokerHome {
 public:
  BrokerHome();
  ~BrokerHome();  // stops the broker
  BrokerHome(const BrokerHome&) = delete;
  BrokerHome& operator=(const BrokerHome&) = delete;

  // `fleetsign --home HOME ARGS…`; fails the test unless it exits 0 (cli_ok) — returns output.
  std::string cli_ok(const std::vector<std::string>& args);
  CliResult cli(const std::vector<std::string>& args);

  // A device certificate and key from `ca` (through `issue --generate`).
  DeviceFiles issue(const std::string& id, const std::string& ca = "int");
  // A self-signed device certificate (`issue --self-signed`), not enrolled. The TLS layer trusts
  // it once an individual enrollment holds it and the broker (re)starts (clients-ca.pem).
  DeviceFiles self_signed(const std::string& id);

  // `broker start` (which rewrites clients-ca.pem from the registry) and `broker stop`.
  void start_broker();
  void stop_broker();
  pid_t broker_pid() const { return m_pid; }
  std::string broker_log() const;

  // Clients: a hub-mode device, a DPS-mode device, a service client.
  std::unique_ptr<MqttClient> device(const DeviceFiles& d, const std::string& client_id = "",
                                     bool clean_session = true);
  std::unique_ptr<MqttClient> dps_device(const DeviceFiles& d);
  std::unique_ptr<MqttClient> service(const std::string& client_id = "fleetsign-service-test");
  // A hub device connected and subscribed to its methods and twin answers (test fails if not).
  std::unique_ptr<MqttClient> online_device(const DeviceFiles& d);
  // A connected service client subscribed to its answers.
  std::unique_ptr<MqttClient> online_service(
      const std::string& client_id = "fleetsign-service-test");

  TempDir dir;
  std::filesystem::path home, broker_dir, work;
  int port = 0;
  std::string id_scope;  // what `broker init` chose

 private:
  pid_t m_pid = -1;
};

// A fresh 128-bit call rid (32 lower-case hex).
std::string new_rid();
// "$fleetsign/methods/POST/{device}/{method}/?$rid=…&$ct=…&$rt=…"
std::string call_topic(const std::string& device, const std::string& method, const std::string& rid,
                       int ct = 0, int rt = 30);
int status_of(const std::string& answer_topic);  // "$…/res/{status}/?…" → status

}  // namespace fleetsign::testing
