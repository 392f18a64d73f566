// `fleetsign broker init | start | stop | status | reload` with the real binary, a real SoftHSM2
// token and registry, and Debian's mosquitto on a free port: the certificates init makes (checked
// with openssl), the refusals of bad input, and the supervision (pid file, log, exit codes).
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <regex>

#include "enrollment_support.hpp"
#include "fleet_support.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::quoted;

using testing::free_port;
using testing::json;

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  ::stat(p.c_str(), &st);
  return st.st_mode & 0777;
}

class BrokerCli : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";
  fs::path bdir = home / "broker";
  testing::Binary bin{home};
  int port = free_port();

  void SetUp() override { bin.ok("init"); }
  void TearDown() override { bin.run("broker stop"); }

  std::string path(const std::string& name) const { return (dir.path() / name).string(); }
  std::string openssl(const std::string& args) {
    std::string out;
    const int status = testing::run("openssl " + args + " 2>&1", &out);
    return std::to_string(status) + ":" + out;
  }
  std::string init_args(const std::string& plugin) {
    return "broker init --port " + std::to_string(port) + " --plugin " + quoted(plugin);
  }
  // Any regular file passes init's check; mosquitto decides whether it is a plugin at start.
  std::string not_a_plugin() {
    testing::write_file(path("not-a-plugin.so"), "not an ELF file\n");
    return path("not-a-plugin.so");
  }
};

TEST_F(BrokerCli, InitIssuesAServerAndAServiceCertificateFromATokenCaThatOpensslAccepts) {
  bin.ok(init_args(not_a_plugin()) +
         " --host localhost --host broker.example.net --host 127.0.0.1");
  for (const char* f : {"broker.json", "mosquitto.conf", "ca.pem", "server.crt", "server.key",
                        "clients-ca.pem", "service.crt", "service.key"}) {
    EXPECT_TRUE(fs::is_regular_file(bdir / f)) << f;
  }
  EXPECT_EQ(mode_of(bdir / "server.key"), 0600u);
  EXPECT_EQ(mode_of(bdir / "service.key"), 0600u);
  const std::string ca = quoted((bdir / "ca.pem").string());
  EXPECT_EQ(openssl("verify -purpose sslserver -CAfile " + ca + " " +
                    quoted((bdir / "server.crt").string())),
            "0:" + (bdir / "server.crt").string() + ": OK\n");
  EXPECT_EQ(openssl("verify -purpose sslclient -CAfile " + ca + " " +
                    quoted((bdir / "service.crt").string())),
            "0:" + (bdir / "service.crt").string() + ": OK\n");
  // A service certificate is no server certificate.
  EXPECT_NE(openssl("verify -purpose sslserver -CAfile " + ca + " " +
                    quoted((bdir / "service.crt").string()))
                .rfind("0:", 0),
            0u);
  const std::string san =
      openssl("x509 -noout -ext subjectAltName -in " + quoted((bdir / "server.crt").string()));
  EXPECT_NE(san.find("DNS:localhost, DNS:broker.example.net, IP Address:127.0.0.1"),
            std::string::npos)
      << san;
  EXPECT_EQ(openssl("pkey -check -noout -in " + quoted((bdir / "server.key").string())),
            "0:Key is valid\n");
  // The key in server.key is the certificate's.
  EXPECT_EQ(openssl("x509 -noout -pubkey -in " + quoted((bdir / "server.crt").string())),
            openssl("pkey -pubout -in " + quoted((bdir / "server.key").string())));

  const auto st = bin.run("broker status --json");
  EXPECT_EQ(st.status, 3) << st.out << st.err;
  const auto o = json(st.out);
  EXPECT_FALSE(o->getValue<bool>("running"));
  EXPECT_TRUE(std::regex_match(o->getValue<std::string>("id_scope"), std::regex("0ne[0-9A-F]{8}")));
  EXPECT_EQ(o->getObject("endpoints")->getValue<std::string>("hub"),
            "localhost:" + std::to_string(port));
  const std::string conf = testing::read_file(bdir / "mosquitto.conf");
  EXPECT_NE(conf.find("require_certificate true"), std::string::npos);
  EXPECT_NE(conf.find("use_identity_as_username false"), std::string::npos);
  EXPECT_NE(conf.find("persistent_client_expiration 7d"), std::string::npos);
  // Every certificate was recorded in the registry's audit trail.
  const auto audit = bin.ok("audit --json --limit 20");
  EXPECT_NE(audit.out.find("ca.tls-server-cert"), std::string::npos) << audit.out;
  EXPECT_NE(audit.out.find("ca.tls-client-cert"), std::string::npos) << audit.out;
}

TEST_F(BrokerCli, InitAgainKeepsTheIdScopeAndReissuesForNewHosts) {
  bin.ok(init_args(not_a_plugin()));
  const std::string scope =
      json(bin.run("broker status --json").out)->getValue<std::string>("id_scope");
  bin.ok(init_args(not_a_plugin()) + " --host gw.example.org");
  const auto o = json(bin.run("broker status --json").out);
  EXPECT_EQ(o->getValue<std::string>("id_scope"), scope);
  EXPECT_EQ(o->getObject("endpoints")->getValue<std::string>("hub"),
            "gw.example.org:" + std::to_string(port));
}

TEST_F(BrokerCli, BadHostsPortsAndDurationsAreRefusedNamingThemBeforeAnythingIsWritten) {
  for (const std::string bad :
       {"'two words'", "'../etc'", "'evil\nlistener 1'", "-dash.example", "'x;y'"}) {
    const auto o = bin.run(init_args(not_a_plugin()) + " --host " + bad);
    EXPECT_EQ(o.status, 2) << bad << o.err;
    EXPECT_NE(o.err.find("host"), std::string::npos) << o.err;
  }
  EXPECT_EQ(bin.run(init_args(not_a_plugin()) + " --port 70000").status, 2);
  EXPECT_EQ(bin.run(init_args(not_a_plugin()) + " --session-expiry 7x").status, 2);
  EXPECT_EQ(bin.run(init_args(not_a_plugin()) + " --bind not-an-ip").status, 2);
  const auto missing =
      bin.run("broker init --port " + std::to_string(port) + " --plugin /nonexistent/plugin.so");
  EXPECT_EQ(missing.status, 2) << missing.err;
  EXPECT_NE(missing.err.find("/nonexistent/plugin.so"), std::string::npos) << missing.err;
  EXPECT_FALSE(fs::exists(bdir / "broker.json"));
}

TEST_F(BrokerCli, CommandsBeforeInitSayToRunInit) {
  for (const char* cmd : {"broker start", "broker status", "broker stop", "broker reload"}) {
    const auto o = bin.run(cmd);
    EXPECT_EQ(o.status, 2) << cmd;
    EXPECT_NE(o.err.find("broker init"), std::string::npos) << cmd << o.err;
  }
}

TEST_F(BrokerCli, AStartThatMosquittoRefusesFailsWithTheEndOfItsLog) {
  bin.ok(init_args(not_a_plugin()));
  const auto o = bin.run("broker start");
  EXPECT_EQ(o.status, 12) << o.out << o.err;
  EXPECT_NE(o.err.find("broker_failed"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("not-a-plugin.so"), std::string::npos) << o.err;
  EXPECT_EQ(bin.run("broker status").status, 3);
}

TEST_F(BrokerCli, TwinDesiredPropertiesAreVersionedMergePatchesAndBadInputIsRefusedNamingIt) {
  bin.ok("twin set-desired dev-1 --patch " + quoted(R"({"interval":30,"mode":"eco"})"));
  const auto second = bin.ok("twin set-desired dev-1 --json --patch " + quoted(R"({"mode":null})"));
  EXPECT_EQ(json(second.out)->getValue<int>("desired_version"), 3);
  const auto shown = json(bin.ok("twin show dev-1 --json").out);
  const auto desired = shown->getObject("properties")->getObject("desired");
  EXPECT_EQ(desired->getValue<int>("interval"), 30);
  EXPECT_FALSE(desired->has("mode"));
  EXPECT_EQ(desired->getValue<int>("$version"), 3);
  EXPECT_FALSE(shown->getValue<bool>("connected"));
  const auto bad_id = bin.run("twin show ../etc --json");
  EXPECT_EQ(bad_id.status, 7) << bad_id.out;
  EXPECT_NE(bad_id.out.find("device_id_invalid"), std::string::npos) << bad_id.out;
  for (const std::string patch : {"'[1,2]'", "'not json'", "'{\"$version\":9}'"}) {
    const auto o = bin.run("twin set-desired dev-1 --patch " + patch);
    EXPECT_EQ(o.status, 2) << patch << o.err;
  }
  testing::write_file(path("big.json"), "{\"k\":\"" + std::string(40000, 'x') + "\"}");
  const auto big = bin.run("twin set-desired dev-1 --patch-file " + quoted(path("big.json")));
  EXPECT_EQ(big.status, 2) << big.err;
  EXPECT_NE(big.err.find("limit"), std::string::npos) << big.err;
  // Nothing of the refused patches reached the twin.
  EXPECT_EQ(json(bin.ok("twin show dev-1 --json").out)
                ->getObject("properties")
                ->getObject("desired")
                ->getValue<int>("$version"),
            3);
  const auto audit = bin.ok("audit --json --limit 5");
  EXPECT_NE(audit.out.find("twin.set-desired"), std::string::npos);
}

#ifdef FLEETSIGN_PLUGIN_PATH
// An independent MQTT client (Debian's mosquitto_sub) as the device: it connects with its
// certificate the way the Azure SDK does, appears in `device list --connected` with the
// certificate it presented, and receives the desired-property patch `twin set-desired` makes.
TEST_F(BrokerCli, AConnectedDeviceIsListedWithItsCertificateAndGetsDesiredPatches) {
  bin.ok("ca create-root --name root --subject /CN=Fleet-Root");
  bin.ok("ca verification-cert --ca root --code POP --out " + quoted(path("pop.pem")));
  bin.ok("ca verify root --code POP --cert " + quoted(path("pop.pem")));
  bin.ok("enrollment group create fleet --ca root");
  bin.ok("issue --ca root --generate 1 --id-pattern 'sub-{02}' --out " + quoted(path("out")));
  bin.ok(init_args(FLEETSIGN_PLUGIN_PATH) + " --host localhost");
  bin.ok("broker start");
  const std::string out = path("sub.out");
  const std::string sub =
      "timeout 20 mosquitto_sub -h localhost -p " + std::to_string(port) + " --cafile " +
      quoted((bdir / "ca.pem").string()) + " --cert " + quoted(path("out/sub-01_cert.pem")) +
      " --key " + quoted(path("out/sub-01_key.pem")) +
      " -i sub-01 -u 'localhost/sub-01/?api-version=2021-04-12' -V mqttv311 -c -q 0 -v -C 1"
      " -t '$iothub/twin/PATCH/properties/desired/#' > " +
      quoted(out) + " 2>&1 &";
  ASSERT_EQ(testing::run(sub), 0);
  Object::Ptr listed;
  for (int i = 0; i < 100; ++i) {
    listed = json(bin.ok("device list --connected --json").out);
    if (listed->getValue<int>("count") == 1) break;
    ::usleep(100000);
  }
  ASSERT_EQ(listed->getValue<int>("count"), 1) << testing::read_file(out);
  const auto session = listed->getArray("connected")->getObject(0);
  EXPECT_EQ(session->getValue<std::string>("device_id"), "sub-01");
  std::string sha;
  testing::run("openssl x509 -noout -fingerprint -sha256 -in " +
                   quoted(path("out/sub-01_cert.pem")) + " | cut -d= -f2 | tr -d ':\n'",
               &sha);
  EXPECT_EQ(session->getValue<std::string>("cert_sha256"), sha);
  bin.ok("twin set-desired sub-01 --patch " + quoted(R"({"interval":5})"));
  std::string got;
  for (int i = 0; i < 50 && got.find("interval") == std::string::npos; ++i) {
    ::usleep(100000);
    got = testing::read_file(out);
  }
  EXPECT_NE(got.find("$iothub/twin/PATCH/properties/desired/?$version=2"), std::string::npos)
      << got;
  EXPECT_NE(got.find("\"interval\":5"), std::string::npos) << got;
}

// A device's answer is untrusted bytes: one that is not UTF-8 reaches the caller as a string with
// U+FFFD for the bad bytes, so `method invoke --json` still prints valid JSON. The device is
// Debian's mosquitto_sub (receives the call) and mosquitto_pub (answers it with raw bytes).
TEST_F(BrokerCli, AnAnswerThatIsNotUtf8IsPrintedAsValidJson) {
  bin.ok("ca create-root --name root --subject /CN=Fleet-Root");
  bin.ok("ca verification-cert --ca root --code POP --out " + quoted(path("pop.pem")));
  bin.ok("ca verify root --code POP --cert " + quoted(path("pop.pem")));
  bin.ok("enrollment group create fleet --ca root");
  bin.ok("issue --ca root --generate 1 --id-pattern 'raw-{02}' --out " + quoted(path("out")));
  bin.ok(init_args(FLEETSIGN_PLUGIN_PATH) + " --host localhost");
  bin.ok("broker start");
  const std::string tls = " -h localhost -p " + std::to_string(port) + " --cafile " +
                          quoted((bdir / "ca.pem").string()) + " --cert " +
                          quoted(path("out/raw-01_cert.pem")) + " --key " +
                          quoted(path("out/raw-01_key.pem")) +
                          " -i raw-01 -u 'localhost/raw-01/?api-version=2021-04-12' -V mqttv311";
  // The device: receive one call, answer it with two bytes that are not UTF-8 and "ok".
  testing::write_file(
      path("device.sh"),
      "rid=$(timeout 20 mosquitto_sub" + tls +
          R"( -c -C 1 -v -t '$iothub/methods/POST/#' | sed -n 's/.*[$]rid=\([0-9a-f]*\).*/\1/p')
printf '\377\376ok' | timeout 10 mosquitto_pub)" +
          tls + R"( -t "\$iothub/methods/res/200/?\$rid=$rid" -s
)");
  ASSERT_EQ(testing::run("bash " + quoted(path("device.sh")) + " > " + quoted(path("dev.out")) +
                         " 2>&1 &"),
            0);
  for (int i = 0; i < 100; ++i) {
    if (json(bin.ok("device list --connected --json").out)->getValue<int>("count") == 1) break;
    ::usleep(100000);
  }
  const auto o = bin.run("method invoke raw-01 anything --timeout 15 --json");
  ASSERT_EQ(o.status, 0) << o.out << o.err << testing::read_file(path("dev.out"));
  const auto answer = json(o.out);  // parses: valid JSON
  EXPECT_EQ(answer->getValue<int>("status"), 200);
  EXPECT_EQ(answer->getValue<std::string>("payload"), "\xEF\xBF\xBD\xEF\xBF\xBDok");
}

TEST_F(BrokerCli, StartStatusReloadStopSuperviseOneMosquittoWithTls) {
  bin.ok(init_args(FLEETSIGN_PLUGIN_PATH));
  const auto started = bin.ok("broker start --json");
  const auto o = json(started.out);
  EXPECT_TRUE(o->getValue<bool>("running"));
  EXPECT_TRUE(o->getValue<bool>("accepting"));
  const int pid = o->getValue<int>("pid");
  EXPECT_EQ(::kill(pid, 0), 0);
  // A second start is refused; status says running.
  EXPECT_EQ(bin.run("broker start").status, 2);
  EXPECT_EQ(bin.run("broker status").status, 0);
  // TLS: the server certificate verifies for "localhost" against ca.pem; a client without a
  // certificate is refused by the handshake.
  const std::string base = "s_client -connect 127.0.0.1:" + std::to_string(port) +
                           " -verify_return_error -verify_hostname localhost -CAfile " +
                           quoted((bdir / "ca.pem").string()) + " </dev/null";
  const std::string with_cert = openssl(base + " -cert " + quoted((bdir / "service.crt").string()) +
                                        " -key " + quoted((bdir / "service.key").string()));
  EXPECT_NE(with_cert.find("Verify return code: 0 (ok)"), std::string::npos) << with_cert;
  bin.ok("broker reload");
  EXPECT_EQ(::kill(pid, 0), 0) << "reload must not restart the broker";
  const auto stopped = bin.ok("broker stop --json");
  EXPECT_TRUE(json(stopped.out)->getValue<bool>("stopped"));
  for (int i = 0; i < 100 && ::kill(pid, 0) == 0; ++i) ::usleep(20000);
  EXPECT_NE(::kill(pid, 0), 0);
  EXPECT_FALSE(json(bin.ok("broker stop --json").out)->getValue<bool>("stopped"));
  EXPECT_EQ(bin.run("broker reload").status, 12);
  // A restart on the same port works (persistence and pid file in the home).
  bin.ok("broker start");
  EXPECT_EQ(bin.run("broker status").status, 0);
  const int before = json(bin.ok("broker status --json").out)->getValue<int>("pid");
  const auto restarted = json(bin.ok("broker restart --json").out);
  EXPECT_TRUE(restarted->getValue<bool>("accepting"));
  EXPECT_NE(restarted->getValue<int>("pid"), before);
  for (int i = 0; i < 100 && ::kill(before, 0) == 0; ++i) ::usleep(20000);
  EXPECT_NE(::kill(before, 0), 0) << "the old mosquitto is gone";
}
#endif

}  // namespace
}  // namespace fleetsign
