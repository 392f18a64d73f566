#include "jobs_support.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "fleetsign/jobs/json_value.hpp"
#include "fleetsign/jobs/trigger.hpp"
#include "test_home.hpp"

extern char** environ;

namespace fleetsign::testing {

namespace fs = std::filesystem;

namespace {

void openssl(const fs::path& dir, const std::string& args) {
  std::string output;
  const std::string cmd = "cd '" + dir.string() + "' && openssl " + args + " 2>&1";
  if (run(cmd, &output) != 0) {
    throw std::runtime_error("openssl " + args + ": " + output);
  }
}

void leaf(const fs::path& dir, const std::string& name, const std::string& cn,
          const std::string& ext) {
  write_file(dir / (name + ".ext"), ext + "\n");
  openssl(dir, "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + name +
                   ".key -out " + name + ".csr -subj '/CN=" + cn + "'");
  openssl(dir, "x509 -req -in " + name + ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -out " +
                   name + ".crt -days 2 -extfile " + name + ".ext");
}

bool port_accepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

std::string to_json(const Poco::JSON::Object& obj) {
  std::ostringstream out;
  obj.stringify(out);
  return out.str();
}

}  // namespace

TestPki make_pki(const fs::path& dir) {
  fs::create_directories(dir);
  const std::string ca_ext =
      "-addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign'";
  openssl(dir,
          "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out "
          "ca.pem -days 2 -subj '/CN=jobs test CA' " +
              ca_ext);
  openssl(dir,
          "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other-ca.key "
          "-out other-ca.pem -days 2 -subj '/CN=jobs test CA' " +
              ca_ext);
  leaf(dir, "server", "localhost", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth");
  leaf(dir, "service", "fleetsign-service", "extendedKeyUsage=clientAuth");
  leaf(dir, "responder", "responder", "extendedKeyUsage=clientAuth");
  return TestPki{dir};
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

engine::DeviceId device_id(const std::string& id) {
  static const policy::Policy policy;
  auto checked = engine::DeviceId::check(policy, id);
  if (!checked) {
    throw std::runtime_error("test device ID '" + id + "': " + checked.error().message);
  }
  return *checked;
}

Mosquitto::Mosquitto(const TestPki& pki, const fs::path& dir, int port)
    : m_dir(dir), m_port(port != 0 ? port : free_port()) {
  fs::create_directories(dir);
  std::ostringstream conf;
  conf << "per_listener_settings false\nallow_anonymous true\npersistence false\n"
       << "user root\n"  // as root, stay root so the test's key files stay readable
       << "log_dest file " << (dir / "mosquitto.log").string() << "\n"
       << "listener " << m_port << " 127.0.0.1\n"
       << "cafile " << pki.file("ca.pem").string() << "\n"
       << "certfile " << pki.file("server.crt").string() << "\n"
       << "keyfile " << pki.file("server.key").string() << "\n"
       << "require_certificate true\n";
  write_file(dir / "mosquitto.conf", conf.str());
  std::vector<std::string> args = {mosquitto_bin(), "-c", (dir / "mosquitto.conf").string()};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  const std::string out = (dir / "mosquitto.out").string();
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  const int rc = posix_spawn(&m_pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    throw std::runtime_error("cannot start mosquitto");
  }
  for (int i = 0; i < 100 && !port_accepts(m_port); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!port_accepts(m_port)) {
    stop();
    throw std::runtime_error("mosquitto did not listen on port " + std::to_string(m_port) + ": " +
                             log());
  }
}

Mosquitto::~Mosquitto() { stop(); }

void Mosquitto::stop() {
  if (m_pid > 0) {
    ::kill(m_pid, SIGTERM);
    int status = 0;
    ::waitpid(m_pid, &status, 0);
    m_pid = -1;
  }
}

std::string Mosquitto::log() const {
  std::error_code ec;
  std::string out;
  for (const char* name : {"mosquitto.out", "mosquitto.log"}) {
    if (fs::exists(m_dir / name, ec)) out += read_file(m_dir / name);
  }
  return out;
}

Responder::Responder(const TestPki& pki, int port) {
  mosquitto_lib_init();
  m_mosq = mosquitto_new("responder", true, this);
  mosquitto_tls_set(m_mosq, pki.file("ca.pem").c_str(), nullptr, pki.file("responder.crt").c_str(),
                    pki.file("responder.key").c_str(), nullptr);
  mosquitto_connect_callback_set(m_mosq, [](mosquitto* m, void*, int rc) {
    if (rc == 0) mosquitto_subscribe(m, nullptr, "$fleetsign/methods/POST/#", 0);
  });
  mosquitto_subscribe_callback_set(m_mosq, [](mosquitto*, void* self, int, int, const int*) {
    auto* r = static_cast<Responder*>(self);
    const std::lock_guard lock(r->m_mutex);
    r->m_subscribed = true;
    r->m_cv.notify_all();
  });
  mosquitto_message_callback_set(m_mosq, [](mosquitto*, void* self, const mosquitto_message* m) {
    static_cast<Responder*>(self)->on_message(*m);
  });
  if (mosquitto_connect(m_mosq, "localhost", port, 60) != MOSQ_ERR_SUCCESS ||
      mosquitto_loop_start(m_mosq) != MOSQ_ERR_SUCCESS) {
    throw std::runtime_error("responder: cannot connect to port " + std::to_string(port));
  }
  std::unique_lock lock(m_mutex);
  if (!m_cv.wait_for(lock, std::chrono::seconds(5), [this] { return m_subscribed; })) {
    throw std::runtime_error("responder: no SUBACK");
  }
}

Responder::~Responder() {
  mosquitto_disconnect(m_mosq);
  mosquitto_loop_stop(m_mosq, false);
  mosquitto_destroy(m_mosq);
}

void Responder::on_message(const mosquitto_message& msg) {
  // $fleetsign/methods/POST/{device}/{method}/?$rid=…&$ct=…&$rt=…
  Request r;
  r.topic = msg.topic;
  r.payload.assign(static_cast<const char*>(msg.payload), static_cast<std::size_t>(msg.payloadlen));
  const std::string rest = r.topic.substr(std::string("$fleetsign/methods/POST/").size());
  const auto slash1 = rest.find('/');
  const auto slash2 = rest.find('/', slash1 + 1);
  r.device = rest.substr(0, slash1);
  r.method = rest.substr(slash1 + 1, slash2 - slash1 - 1);
  std::istringstream query(rest.substr(slash2 + 2));
  for (std::string param; std::getline(query, param, '&');) {
    const auto eq = param.find('=');
    const std::string name = param.substr(0, eq), value = param.substr(eq + 1);
    if (name == "$rid") r.rid = value;
    if (name == "$ct") r.ct = std::stoi(value);
    if (name == "$rt") r.rt = std::stoi(value);
  }
  {
    const std::lock_guard lock(m_mutex);
    m_requests.push_back(r);
    if (r.device.rfind("held-", 0) == 0) {
      m_held.push_back(r);
      m_max_held = std::max(m_max_held, m_held.size());
    }
    m_cv.notify_all();
  }
  Poco::JSON::Object ok;
  ok.set("device", r.device);
  ok.set("method", r.method);
  try {
    ok.set("payload", jobs::parse_json_value(r.payload));
  } catch (const Error&) {
    ok.set("payload", "(not JSON)");  // never thrown into libmosquitto's thread
  }
  ok.set("ct", r.ct);
  ok.set("rt", r.rt);
  const std::string d = r.device;
  if (d.rfind("ok-", 0) == 0) {
    answer(r, 200, to_json(ok));
  } else if (d.rfind("nomethod-", 0) == 0) {
    answer(r, 501, R"({"message":"not implemented"})");
  } else if (d.rfind("offline-", 0) == 0) {
    answer(r, 404, R"({"errorCode":404103,"message":"device )" + d + R"( is not online"})");
  } else if (d.rfind("dup-", 0) == 0) {
    answer(r, 200, to_json(ok));
    answer(r, 200, R"({"second":true})");
  } else if (d.rfind("wrongrid-", 0) == 0) {
    Request other = r;
    other.rid = "0123456789abcdef0123456789abcdef";
    answer(other, 200, R"({"forged":true})");
    answer(r, 200, to_json(ok));
  } else if (d.rfind("big-", 0) == 0) {
    answer(r, 200, std::string(jobs::kMaxMethodPayload + 1, 'x'));
  }
}

void Responder::answer(const Request& r, int status, const std::string& payload) {
  publish("$fleetsign/methods/res/" + std::to_string(status) + "/?$rid=" + r.rid, payload);
}

void Responder::publish(const std::string& topic, const std::string& payload) {
  mosquitto_publish(m_mosq, nullptr, topic.c_str(), static_cast<int>(payload.size()),
                    payload.data(), 0, false);
}

std::vector<Responder::Request> Responder::requests() const {
  const std::lock_guard lock(m_mutex);
  return m_requests;
}

std::size_t Responder::held() const {
  const std::lock_guard lock(m_mutex);
  return m_held.size();
}

std::size_t Responder::max_held() const {
  const std::lock_guard lock(m_mutex);
  return m_max_held;
}

std::size_t Responder::release_held() {
  std::vector<Request> batch;
  {
    const std::lock_guard lock(m_mutex);
    batch.swap(m_held);
  }
  for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
    Poco::JSON::Object ok;
    ok.set("device", it->device);
    ok.set("method", it->method);
    answer(*it, 200, to_json(ok));
  }
  return batch.size();
}

bool Responder::wait_requests(std::size_t n, int ms) const {
  std::unique_lock lock(m_mutex);
  return m_cv.wait_for(lock, std::chrono::milliseconds(ms), [&] { return m_requests.size() >= n; });
}

}  // namespace fleetsign::testing
