#include "device_fixture.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace fleetsign::testing {

namespace {

std::string quoted(const std::string& s) { return "'" + s + "'"; }

void must(int status, const std::string& what, const std::string& output) {
  if (status != 0)
    throw std::runtime_error(what + " failed (" + std::to_string(status) + "): " + output);
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool port_open(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

pid_t spawn(const std::vector<std::string>& argv, const fs::path& out, const fs::path& err) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int in = ::open("/dev/null", O_RDONLY);
    ::dup2(in, 0);
    ::dup2(o, 1);
    ::dup2(e, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

int exit_status(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

}  // namespace

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = 0; (at = text.find(what, at)) != std::string::npos; at += what.size()) ++n;
  return n;
}

int fleetsign_cli(const fs::path& home, const std::string& args, std::string* out) {
  return run("env FLEETSIGN_PIN=" + quoted(kUserPin) + " FLEETSIGN_SO_PIN=" + quoted(kSoPin) + " " +
                 quoted(fleetsign_bin()) + " --home " + quoted(home.string()) + " " + args +
                 " </dev/null",
             out);
}

std::string device_bin() {
  const char* bin = std::getenv("FLEETSIGN_DEVICE_BIN");
  return bin != nullptr ? bin : FLEETSIGN_DEVICE_BIN_PATH;
}

int run_device(const std::string& args, std::string* output) {
  return run(quoted(device_bin()) + " " + args + " </dev/null", output);
}

// --- PKI ---------------------------------------------------------------------------------------

const DevicePki& DevicePki::get() {
  static const DevicePki pki;
  return pki;
}

DevicePki::DevicePki() {
  const fs::path d = dir.path();
  home = d / "home";
  batch = d / "batch";
  bundle = d / "bundle";
  callers = d / "callers";
  clients_ca = d / "clients-ca.pem";
  server_ca = d / "server-ca.pem";
  server_cert = d / "server.pem";
  server_key = d / "server.key";
  std::string out;
  const auto cli = [&](const std::string& args) {
    must(fleetsign_cli(home, args, &out), "fleetsign " + args, out);
  };
  cli("init");
  cli("ca create-root --name root --subject '/CN=Device Test Root'");
  cli("ca create-intermediate --name int --issuer root --days 3000 --subject '/CN=Device Test "
      "Int'");
  cli("issue --ca int --generate 3 --id-pattern dev-{02} --out " + quoted(batch.string()));
  cli("issue --ca int --generate 2 --id-pattern bun-{02} --bundle --out " +
      quoted(bundle.string()));
  cli("issue --ca int --generate 3 --id-pattern caller-{02} --out " + quoted(callers.string()));
  cli("ca export int --chain --out " + quoted(clients_ca.string()));
  // The broker's own server certificate, from a CA the devices are told to trust (--trust).
  const std::string s = quoted(d.string());
  must(run("( cd " + s +
               " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
               "-keyout server-ca.key -out server-ca.pem -subj /CN=Test-Broker-CA -days 30 "
               "&& openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "
               "server.key -out server.csr -subj /CN=localhost "
               "&& printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext "
               "&& openssl x509 -req -in server.csr -CA server-ca.pem -CAkey server-ca.key "
               "-CAcreateserial -out server.pem -days 30 -extfile server.ext )",
           &out),
       "openssl (server certificate)", out);
}

std::string DevicePki::cert(const std::string& id) const {
  const fs::path dir_of = id.rfind("caller-", 0) == 0 ? callers : batch;
  return (dir_of / (id + "_fullchain.pem")).string();
}

std::string DevicePki::key(const std::string& id) const {
  const fs::path dir_of = id.rfind("caller-", 0) == 0 ? callers : batch;
  return (dir_of / (id + "_key.pem")).string();
}

// --- Broker ------------------------------------------------------------------------------------

Broker::Broker(const DevicePki& pki, fs::path dir)
    : m_pki(pki), m_dir(std::move(dir)), m_port(free_port()) {
  fs::create_directories(m_dir);
  const passwd* pw = ::getpwuid(::geteuid());
  std::ofstream conf(m_dir / "mosquitto.conf");
  conf << "listener " << m_port << " 127.0.0.1\n"
       << "cafile " << m_pki.clients_ca.string() << "\n"
       << "certfile " << m_pki.server_cert.string() << "\n"
       << "keyfile " << m_pki.server_key.string() << "\n"
       << "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
       << "persistence false\n"
       << "log_dest file " << (m_dir / "mosquitto.log").string()
       << "\nlog_type all\n"
       // As root, mosquitto drops to user "mosquitto", which cannot read the test's files.
       << "user " << (pw != nullptr ? pw->pw_name : "root") << "\n";
}

Broker::~Broker() { stop(); }

void Broker::start() {
  if (m_pid > 0) return;
  m_pid = spawn({mosquitto_bin(), "-c", (m_dir / "mosquitto.conf").string()},
                m_dir / "mosquitto.out", m_dir / "mosquitto.err");
  for (int i = 0; i < 100; ++i) {
    if (port_open(m_port)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("mosquitto did not open port " + std::to_string(m_port) + ": " +
                           read_file(m_dir / "mosquitto.err") + log());
}

void Broker::stop() {
  if (m_pid <= 0) return;
  ::kill(m_pid, SIGTERM);
  int status = 0;
  ::waitpid(m_pid, &status, 0);
  m_pid = -1;
}

std::string Broker::log() const { return read_file(m_dir / "mosquitto.log"); }

// --- MqttClient --------------------------------------------------------------------------------

MqttClient::MqttClient(const Broker& broker, const DevicePki& pki, const std::string& id) {
  mosquitto_lib_init();
  m_mosq = mosquitto_new(id.c_str(), true, this);
  mosquitto_int_option(m_mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_tls_set(m_mosq, pki.server_ca.c_str(), nullptr, pki.cert(id).c_str(),
                    pki.key(id).c_str(), nullptr);
  mosquitto_message_callback_set(m_mosq, &MqttClient::on_message);
  mosquitto_subscribe_callback_set(m_mosq, &MqttClient::on_subscribe);
  const int rc = mosquitto_connect(m_mosq, "localhost", broker.port(), 60);
  if (rc != MOSQ_ERR_SUCCESS) {
    throw std::runtime_error("test client " + id + " cannot connect: " + mosquitto_strerror(rc));
  }
  mosquitto_loop_start(m_mosq);
}

MqttClient::~MqttClient() {
  mosquitto_disconnect(m_mosq);
  mosquitto_loop_stop(m_mosq, false);
  mosquitto_destroy(m_mosq);
}

void MqttClient::on_message(mosquitto*, void* self, const struct mosquitto_message* m) {
  auto* c = static_cast<MqttClient*>(self);
  std::lock_guard lock(c->m_mutex);
  c->m_messages.push_back(Message{m->topic, std::string(static_cast<const char*>(m->payload),
                                                        static_cast<std::size_t>(m->payloadlen))});
  c->m_cv.notify_all();
}

void MqttClient::on_subscribe(mosquitto*, void* self, int, int, const int*) {
  auto* c = static_cast<MqttClient*>(self);
  std::lock_guard lock(c->m_mutex);
  ++c->m_subscribed;
  c->m_cv.notify_all();
}

void MqttClient::subscribe(const std::string& topic) {
  std::unique_lock lock(m_mutex);
  const int before = m_subscribed;
  lock.unlock();
  mosquitto_subscribe(m_mosq, nullptr, topic.c_str(), 0);
  lock.lock();
  if (!m_cv.wait_for(lock, std::chrono::seconds(5), [&] { return m_subscribed > before; })) {
    throw std::runtime_error("subscription to " + topic + " not acknowledged");
  }
}

void MqttClient::publish(const std::string& topic, const std::string& payload) {
  mosquitto_publish(m_mosq, nullptr, topic.c_str(), static_cast<int>(payload.size()),
                    payload.data(), 0, false);
}

std::optional<Message> MqttClient::wait_for(const std::function<bool(const Message&)>& match,
                                            std::chrono::milliseconds timeout) {
  std::unique_lock lock(m_mutex);
  std::optional<Message> found;
  m_cv.wait_for(lock, timeout, [&] {
    for (const auto& m : m_messages) {
      if (match(m)) {
        found = m;
        return true;
      }
    }
    return false;
  });
  return found;
}

std::optional<Message> MqttClient::wait_topic(const std::string& topic,
                                              std::chrono::milliseconds timeout) {
  return wait_for([&](const Message& m) { return m.topic == topic; }, timeout);
}

bool MqttClient::wait_count(std::size_t n, std::chrono::milliseconds timeout) {
  std::unique_lock lock(m_mutex);
  return m_cv.wait_for(lock, timeout, [&] { return m_messages.size() >= n; });
}

std::vector<Message> MqttClient::received() const {
  std::lock_guard lock(m_mutex);
  return m_messages;
}

// --- Agent -------------------------------------------------------------------------------------

Agent::Agent(const fs::path& dir, const std::vector<std::string>& args) : m_dir(dir) {
  fs::create_directories(m_dir);
  std::vector<std::string> argv{device_bin()};
  argv.insert(argv.end(), args.begin(), args.end());
  m_pid = spawn(argv, m_dir / "agent.out", m_dir / "agent.err");
}

Agent::~Agent() {
  if (m_pid > 0) stop(SIGKILL);
}

bool Agent::wait_log(const std::string& needle, std::chrono::milliseconds timeout,
                     int times) const {
  const auto end = std::chrono::steady_clock::now() + timeout;
  do {
    if (count_of(log(), needle) >= static_cast<std::size_t>(times)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (std::chrono::steady_clock::now() < end);
  return false;
}

std::string Agent::log() const { return read_file(m_dir / "agent.err"); }
std::string Agent::out() const { return read_file(m_dir / "agent.out"); }

int Agent::stop(int signal) {
  if (m_pid <= 0) return m_status;
  ::kill(m_pid, signal);
  int status = 0;
  ::waitpid(m_pid, &status, 0);
  m_pid = -1;
  m_status = exit_status(status);
  return m_status;
}

int Agent::wait(std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (m_pid > 0) {
    int status = 0;
    if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
      m_pid = -1;
      m_status = exit_status(status);
      break;
    }
    if (std::chrono::steady_clock::now() >= end) return -2;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return m_status;
}

}  // namespace fleetsign::testing
