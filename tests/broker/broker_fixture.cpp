// Test support for the broker: see broker_fixture.hpp.
#include "broker_fixture.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <thread>

#include "fleetsign/engine/x509.hpp"

namespace fleetsign::testing {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    throw std::runtime_error("no free port");
  }
  close(fd);
  return ntohs(a.sin_port);
}

void sh(const std::string& command) {
  std::string out;
  ASSERT_EQ(run(command, &out), 0) << command << "\n" << out;
}

}  // namespace

std::string new_rid() {
  static std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 32; ++i) out.push_back(kHex[rng() & 15]);
  return out;
}

std::string call_topic(const std::string& device, const std::string& method, const std::string& rid,
                       int ct, int rt) {
  return "$fleetsign/methods/POST/" + device + "/" + method + "/?$rid=" + rid +
         "&$ct=" + std::to_string(ct) + "&$rt=" + std::to_string(rt);
}

int status_of(const std::string& topic) {
  const auto res = topic.find("/res/");
  return res == std::string::npos ? -1 : std::atoi(topic.c_str() + res + 5);
}

BrokerHome::BrokerHome() {
  home = dir.path() / "home";
  work = dir.path() / "work";
  broker_dir = home / "broker";
  fs::create_directories(work);
  cli_ok({"init"});
  cli_ok({"ca", "create-root", "--name", "root", "--subject", "/CN=Broker Test Root"});
  cli_ok({"ca", "verification-cert", "--ca", "root", "--code", "POP-ROOT", "--out",
          (work / "pop.pem").string()});
  cli_ok({"ca", "verify", "root", "--code", "POP-ROOT", "--cert", (work / "pop.pem").string()});
  cli_ok({"ca", "create-intermediate", "--name", "int", "--issuer", "root", "--subject",
          "/CN=Broker Test Int"});
  cli_ok({"enrollment", "group", "create", "g1", "--ca", "int"});
  port = free_port();
  cli_ok({"broker", "init", "--port", std::to_string(port), "--host", "localhost", "--plugin",
          FLEETSIGN_PLUGIN_PATH});
  Poco::JSON::Parser parser;
  id_scope = parser.parse(read_file(broker_dir / "broker.json"))
                 .extract<Poco::JSON::Object::Ptr>()
                 ->getValue<std::string>("id_scope");
}

BrokerHome::~BrokerHome() { stop_broker(); }

CliResult BrokerHome::cli(const std::vector<std::string>& args) { return run_cli(home, args); }

std::string BrokerHome::cli_ok(const std::vector<std::string>& args) {
  const CliResult r = cli(args);
  std::string joined;
  for (const auto& a : args) joined += " " + a;
  EXPECT_EQ(r.status, 0) << "fleetsign" << joined << "\n" << r.output;
  return r.output;
}

DeviceFiles BrokerHome::issue(const std::string& id, const std::string& ca) {
  // The device makes its key and CSR (openssl), fleetsign certifies it (`issue --csr`).
  const fs::path out = work / ("issued-" + id);
  fs::create_directories(out);
  const fs::path key = out / (id + "_key.pem"), csr = out / (id + ".csr");
  sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " +
     shell_quoted(key.string()) + " -subj /CN=" + id + " -out " + shell_quoted(csr.string()));
  cli_ok({"issue", "--ca", ca, "--csr", csr.string(), "--reissue", "--out", out.string()});
  return DeviceFiles{id, out / (id + "_cert.pem"), key};
}

DeviceFiles BrokerHome::self_signed(const std::string& id) {
  const fs::path out = work / ("self-" + id);
  cli_ok({"issue", "--self-signed", "--id", id, "--out", out.string(), "--days", "30"});
  return DeviceFiles{id, out / (id + "_cert.pem"), out / (id + "_key.pem")};
}

void BrokerHome::start_broker() {
  cli_ok({"broker", "start"});
  m_pid = std::stoi(read_file(broker_dir / "mosquitto.pid"));
}

void BrokerHome::stop_broker() {
  if (m_pid <= 0) return;
  cli_ok({"broker", "stop"});
  m_pid = -1;
}

std::string BrokerHome::broker_log() const {
  std::error_code ec;
  return fs::exists(broker_dir / "mosquitto.log", ec) ? read_file(broker_dir / "mosquitto.log")
                                                      : std::string("(no log)");
}

std::unique_ptr<MqttClient> BrokerHome::device(const DeviceFiles& d, const std::string& client_id,
                                               bool clean_session) {
  const std::string id = client_id.empty() ? d.id : client_id;
  return std::make_unique<MqttClient>(
      port, broker_dir / "ca.pem",
      ClientOptions{id,
                    "localhost:" + std::to_string(port) + "/" + d.id +
                        "/?api-version=2021-04-12&DeviceClientType=fleetsign-tests",
                    d.cert, d.key, clean_session});
}

std::unique_ptr<MqttClient> BrokerHome::dps_device(const DeviceFiles& d) {
  return std::make_unique<MqttClient>(
      port, broker_dir / "ca.pem",
      ClientOptions{d.id, id_scope + "/registrations/" + d.id + "/api-version=2019-03-31", d.cert,
                    d.key, true});
}

std::unique_ptr<MqttClient> BrokerHome::service(const std::string& client_id) {
  return std::make_unique<MqttClient>(
      port, broker_dir / "ca.pem",
      ClientOptions{client_id, "", broker_dir / "service.crt", broker_dir / "service.key", true});
}

std::unique_ptr<MqttClient> BrokerHome::online_device(const DeviceFiles& d) {
  auto c = device(d);
  EXPECT_EQ(c->connect(), 0) << d.id << "\n" << broker_log();
  EXPECT_TRUE(c->subscribe("$iothub/methods/POST/#"));
  EXPECT_TRUE(c->subscribe("$iothub/twin/res/#"));
  EXPECT_TRUE(c->subscribe("$iothub/twin/PATCH/properties/desired/#"));
  return c;
}

std::unique_ptr<MqttClient> BrokerHome::online_service(const std::string& client_id) {
  auto c = service(client_id);
  EXPECT_EQ(c->connect(), 0) << broker_log();
  EXPECT_TRUE(c->subscribe("$fleetsign/methods/res/#"));
  return c;
}

}  // namespace fleetsign::testing
