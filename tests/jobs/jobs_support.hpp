// Test support for the trigger layer: certificates made with the openssl command line, a plain
// Debian mosquitto with TLS client authentication on a free port, and a responder — a libmosquitto
// client that stands in for fleetsign's broker plugin and its devices until the plugin lands
// (it subscribes `$fleetsign/methods/POST/#` and answers on `$fleetsign/methods/res/…`).
#pragma once

#include <mosquitto.h>
#include <sys/types.h>

#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::testing {

// In `dir`: ca.pem/ca.key (an EC P-256 CA), server.crt/.key (CN and SAN DNS:localhost, signed by
// the CA), service.crt/.key and responder.crt/.key (client certificates), other-ca.pem (a CA
// nobody uses). Throws std::runtime_error with openssl's output on failure.
struct TestPki {
  std::filesystem::path dir;
  std::filesystem::path file(const std::string& name) const { return dir / name; }
};
TestPki make_pki(const std::filesystem::path& dir);

// A TCP port nobody listens on right now.
int free_port();

// A checked device ID under the default policy.
engine::DeviceId device_id(const std::string& id);

// mosquitto -c DIR/mosquitto.conf: TLS on 127.0.0.1:port with the PKI's server certificate,
// client certificates required (CA: ca.pem). Waits until the port accepts connections.
class Mosquitto {
 public:
  Mosquitto(const TestPki& pki, const std::filesystem::path& dir, int port = 0);
  ~Mosquitto();
  Mosquitto(const Mosquitto&) = delete;
  Mosquitto& operator=(const Mosquitto&) = delete;
  int port() const { return m_port; }
  void stop();  // SIGTERM and reap (by pid)
  std::string log() const;

 private:
  std::filesystem::path m_dir;
  int m_port = 0;
  pid_t m_pid = -1;
};

// Answers requests by the device ID's prefix:
//   ok-…       200 {"device":…,"method":…,"payload":<the request's payload>,"ct":…,"rt":…}
//   nomethod-… 501 {"message":"not implemented"}
//   offline-…  404 {"errorCode":404103,…} (what the plugin sends when $ct passes)
//   silent-…   nothing
//   held-…     held until release_held(), then answered 200 like ok-, newest first
//   dup-…      200 twice
//   wrongrid-… first 200 under a fresh random rid, then 200 under the right one
//   big-…      200 with a payload of kMaxMethodPayload + 1 bytes
class Responder {
 public:
  struct Request {
    std::string topic, device, method, rid, payload;
    int ct = -1, rt = -1;
  };
  Responder(const TestPki& pki, int port);
  ~Responder();
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;

  std::vector<Request> requests() const;
  std::size_t held() const;
  std::size_t max_held() const;
  // Answers every held request (newest first); returns how many.
  std::size_t release_held();
  // Publishes on the answer topics directly (for hostile answers).
  void publish(const std::string& topic, const std::string& payload);
  // Waits until `n` requests have arrived (false after `ms`).
  bool wait_requests(std::size_t n, int ms) const;

 private:
  void on_message(const mosquitto_message& msg);
  void answer(const Request& r, int status, const std::string& payload);
  mosquitto* m_mosq = nullptr;
  mutable std::mutex m_mutex;
  mutable std::condition_variable m_cv;
  std::vector<Request> m_requests;
  std::vector<Request> m_held;
  std::size_t m_max_held = 0;
  bool m_subscribed = false;
};

}  // namespace fleetsign::testing
