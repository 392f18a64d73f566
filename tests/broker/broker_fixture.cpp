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

bool port_open(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

void sh(const std::string& command) {
  std::string out;
  ASSERT_EQ(run(command, &out), 0) << command << "\n" << out;
}

std::string user_name() {
  const passwd* pw = getpwuid(getuid());
  return pw != nullptr ? pw->pw_name : "root";
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
  write_broker_files();
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

// The broker's TLS identity (a CA of the test's own, made with openssl), the service client's
// certificate, broker.json and mosquitto.conf: what `fleetsign broker init` writes.
void BrokerHome::write_broker_files() {
  fs::create_directories(broker_dir);
  const std::string b = broker_dir.string();
  const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes ";
  sh("cd " + b + " && openssl req -x509" + ec +
     "-keyout server-ca.key -out ca.pem -days 30 -subj '/CN=Broker Test Server CA' "
     "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign");
  sh("cd " + b + " && openssl req -new" + ec + "-keyout server.key -out server.csr " +
     "-subj /CN=localhost && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n"
     "extendedKeyUsage=serverAuth\\n' > server.ext && openssl x509 -req -in server.csr -CA ca.pem "
     "-CAkey server-ca.key -CAcreateserial -days 30 -extfile server.ext -out server.crt");
  sh("cd " + b + " && openssl req -x509" + ec +
     "-keyout service.key -out service.crt -days 30 -subj /CN=fleetsign-service");
  m_trusted.push_back(broker_dir / "service.crt");
  const auto service = engine::read_certificates(broker_dir / "service.crt");
  write_file(broker_dir / "broker.json",
             "{\"port\":" + std::to_string(port) + ",\"hosts\":[\"localhost\"],\"id_scope\":\"" +
                 id_scope + "\",\"ca\":\"broker-ca\",\"service_sha256\":[\"" +
                 engine::thumbprint_sha256(service.front()) + "\"]}\n");
  write_file(broker_dir / "mosquitto.conf",
             "user " + user_name() +
                 "\nper_listener_settings false\nallow_anonymous false\npersistence true\n"
                 "persistence_location " +
                 b +
                 "/data/\npersistent_client_expiration 7d\n"
                 "log_dest file " +
                 b +
                 "/mosquitto.log\nlog_type all\n"
                 "connection_messages true\nlistener " +
                 std::to_string(port) + " 127.0.0.1\ncafile " + b + "/clients-ca.pem\ncertfile " +
                 b + "/server.crt\nkeyfile " + b +
                 "/server.key\nrequire_certificate true\nuse_identity_as_username false\n"
                 "plugin " FLEETSIGN_PLUGIN_PATH "\nplugin_opt_home " +
                 home.string() + "\n");
  fs::create_directories(broker_dir / "data");
  write_clients_ca();
}

void BrokerHome::trust(const fs::path& pem) {
  m_trusted.push_back(pem);
  write_clients_ca();
}

void BrokerHome::write_clients_ca() {
  std::string all;
  // Every registry CA, exported by the CLI (outputs go outside the home, then are gathered).
  Poco::JSON::Parser parser;
  const auto cas = parser.parse(cli({"ca", "list", "--json"}).output)
                       .extract<Poco::JSON::Object::Ptr>()
                       ->getArray("cas");
  for (std::size_t i = 0; cas && i < cas->size(); ++i) {
    const std::string name =
        cas->getObject(static_cast<unsigned>(i))->getValue<std::string>("name");
    const fs::path out = work / ("ca-" + name + ".pem");
    fs::remove(out);
    cli_ok({"ca", "export", name, "--out", out.string()});
    all += read_file(out);
  }
  for (const auto& p : m_trusted) all += read_file(p);
  write_file(broker_dir / "clients-ca.pem", all);
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
  DeviceFiles d{id, out / (id + "_cert.pem"), out / (id + "_key.pem")};
  trust(d.cert);
  return d;
}

void BrokerHome::start_broker() {
  ASSERT_LT(m_pid, 0) << "broker already running";
  const std::string conf = (broker_dir / "mosquitto.conf").string();
  std::vector<std::string> argv_s = {"/usr/sbin/mosquitto", "-c", conf};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  const int rc = posix_spawn(&m_pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ASSERT_EQ(rc, 0) << "spawning mosquitto";
  for (int i = 0; i < 100; ++i) {
    int status = 0;
    if (waitpid(m_pid, &status, WNOHANG) == m_pid) {
      m_pid = -1;
      FAIL() << "mosquitto exited at start:\n" << broker_log();
    }
    if (port_open(port)) return;
    std::this_thread::sleep_for(50ms);
  }
  FAIL() << "mosquitto did not listen on port " << port << ":\n" << broker_log();
}

void BrokerHome::stop_broker() {
  if (m_pid <= 0) return;
  kill(m_pid, SIGTERM);
  int status = 0;
  for (int i = 0; i < 200 && waitpid(m_pid, &status, WNOHANG) == 0; ++i) {
    std::this_thread::sleep_for(25ms);
  }
  if (waitpid(m_pid, &status, WNOHANG) == 0) {
    kill(m_pid, SIGKILL);
    waitpid(m_pid, &status, 0);
  }
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
