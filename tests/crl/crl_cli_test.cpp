// `fleetsign crl show | export | sign` and `serve` as the real binary, with a real token and
// SQLite file: show and export print the latest CRL, sign --due signs what is missing, behind a
// revocation or near nextUpdate, a CRL number reserved before a kill -9 is never reused, serve
// re-signs when its injected clock nears nextUpdate, and a real mosquitto refuses a revoked device
// through the CRL file fleetsign installs — and every device of a CA whose CRL is missing from it.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ctime>

#include "enrollment_support.hpp"
#include "fleetsign/engine/home_lock.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::quoted;

Object::Ptr json(const std::string& text) {
  return Poco::JSON::Parser().parse(text).extract<Object::Ptr>();
}

// A loopback port nobody listens on right now.
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

constexpr std::int64_t kT = 1'900'000'000;  // the injected clock (2030-03-17)

class CrlCli : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";
  testing::Binary bin{home};

  void SetUp() override {
    bin.ok("init");
    bin.ok("ca create-root --name root --subject /CN=Fleet-Root");
    bin.ok("ca create-intermediate --name factory-1 --issuer root --subject /CN=Factory-1");
    bin.ok("issue --ca factory-1 --generate 3 --id-pattern 'dev-{02}' --out " + path("out"));
  }
  std::string path(const std::string& name) const { return quoted((dir.path() / name).string()); }
  std::string serial_of(const std::string& device) {
    const auto der = engine::read_certificates(dir.path() / "out" / (device + "_cert.pem"));
    return engine::summarize_certificate(der.front()).serial;
  }
  // Revokes through the registry, as `revoke` and the breach roll do.
  void revoke(const std::string& device, const std::string& reason) {
    auto reg = engine::Registry::open(home / "registry.db");
    reg->revoke_certs(std::vector<std::string>{serial_of(device)}, reason, kT - 60);
  }
  Object::Ptr show(const std::string& ca, std::int64_t now = kT) {
    return json(bin.ok("crl show " + ca + " --json --now " + std::to_string(now)).out);
  }
};

TEST_F(CrlCli, ShowAndExportPrintTheLatestCrlThatSignMade) {
  // `ca create-*` signed each CA's first CRL.
  EXPECT_EQ(json(bin.ok("crl show factory-1 --json").out)->getValue<int>("number"), 1);
  EXPECT_EQ(json(bin.ok("crl show root --json").out)->getValue<std::string>("state"), "fresh");
  EXPECT_EQ(bin.run("crl show nope").status, 2);
  const auto signed_all = json(bin.ok("crl sign --all --json --now " + std::to_string(kT)).out);
  EXPECT_EQ(signed_all->getArray("signed")->size(), 2u);
  auto s = show("factory-1");
  EXPECT_EQ(s->getValue<int>("number"), 2);
  EXPECT_EQ(s->getValue<int>("entries"), 0);
  EXPECT_EQ(s->getValue<std::string>("issuer"), "/CN=Factory-1");
  EXPECT_EQ(s->getValue<std::string>("this_update"), engine::iso8601(kT));
  EXPECT_EQ(s->getValue<std::string>("state"), "fresh");
  EXPECT_TRUE(s->getValue<bool>("fresh"));
  EXPECT_EQ(show("factory-1", kT + 8 * 86400)->getValue<std::string>("state"), "stale");

  const auto pem = bin.ok("crl export factory-1");
  EXPECT_EQ(pem.out.rfind("-----BEGIN X509 CRL-----", 0), 0u) << pem.out;
  bin.ok("crl export factory-1 --der --out " + path("f1.der"));
  std::string out;
  EXPECT_EQ(testing::run("openssl crl -inform DER -noout -crlnumber -in " + path("f1.der"), &out),
            0)
      << out;
  EXPECT_NE(out.find("crlNumber=0x02"), std::string::npos) << out;
  EXPECT_EQ(bin.run("crl export factory-1 --der --pem").status, 2);
  for (const char* cmd : {"crl show --help", "crl export --help", "crl sign --help"}) {
    const auto help = bin.run(cmd);
    EXPECT_EQ(help.status, 0) << cmd;
    EXPECT_NE((help.out + help.err).find("crl"), std::string::npos) << cmd;
  }
}

// Reading a CRL needs neither the token nor the home: while a job (or serve) holds the home, a
// relying party still gets it; an unknown CA is still not_found.
TEST_F(CrlCli, ShowAndExportWorkWhileAnotherProcessHoldsTheHome) {
  const auto held = engine::HomeLock::acquire(home, false);
  EXPECT_EQ(show("factory-1")->getValue<std::string>("ca"), "factory-1");
  EXPECT_NE(bin.ok("crl export root").out.find("-----BEGIN X509 CRL-----"), std::string::npos);
  const auto r = bin.run("crl export nosuch");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("not_found"), std::string::npos) << r.err;
}

TEST_F(CrlCli, SignDueSignsWhatIsMissingBehindARevocationOrNearNextUpdate) {
  const auto due = [&](std::int64_t now) {
    const auto o = json(bin.ok("crl sign --due --json --now " + std::to_string(now)).out);
    std::vector<std::string> cas;
    for (const auto& v : *o->getArray("signed")) {
      cas.push_back(v.extract<Object::Ptr>()->getValue<std::string>("ca"));
    }
    return cas;
  };
  EXPECT_EQ(due(kT), (std::vector<std::string>{"root", "factory-1"}))
      << "the CRLs made with the CAs are stale by then";
  EXPECT_TRUE(due(kT + 3600).empty()) << "fresh, nothing revoked";
  revoke("dev-01", "keyCompromise");
  EXPECT_EQ(due(kT + 3600), (std::vector<std::string>{"factory-1"})) << "behind a revocation";
  EXPECT_EQ(show("factory-1")->getValue<int>("entries"), 1);
  EXPECT_EQ(show("factory-1")->getValue<int>("number"), 3);
  // validity 168 h, re-signed when less than 72 h remain.
  EXPECT_EQ(due(kT + 3600 + 97 * 3600), (std::vector<std::string>{"root", "factory-1"}));
}

// `revoke` killed after its commit and before its CRLs: `crl show` says the CRL is behind, and the
// same revoke run again (which revokes nothing new) signs and installs it.
TEST_F(CrlCli, ARevokeRunAgainAfterAKillFinishesItsCrl) {
  const std::string serial = serial_of("dev-02");
  engine::Registry::open(home / "registry.db")
      ->revoke_certs(std::vector<std::string>{serial}, "superseded", std::time(nullptr) - 5);
  const auto behind = json(bin.ok("crl show factory-1 --json").out);
  EXPECT_TRUE(behind->getValue<bool>("behind"));
  EXPECT_FALSE(behind->getValue<bool>("fresh"));
  EXPECT_EQ(behind->getValue<int>("entries"), 0);
  EXPECT_NE(bin.ok("crl show factory-1").out.find("behind"), std::string::npos);
  const auto again = bin.ok("revoke --serial " + serial + " --reason superseded --json");
  EXPECT_EQ(json(again.out)->getObject("outcome")->getValue<int>("certificates_revoked"), 0);
  const auto now = json(bin.ok("crl show factory-1 --json").out);
  EXPECT_EQ(now->getValue<int>("entries"), 1);
  EXPECT_EQ(now->getValue<int>("number"), 2);
  EXPECT_FALSE(now->getValue<bool>("behind"));
  EXPECT_TRUE(now->getValue<bool>("fresh"));
}

TEST_F(CrlCli, ABreachRollPutsTheCertificateIntoItsCasCrlAtOnce) {
  bin.ok("crl sign --all");
  // A serial that is not hex is refused naming the option, before anything is revoked.
  const auto bad = bin.run("rollover breach --device dev-02 --no-run --serial 'zz;drop'");
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.err.find("--serial"), std::string::npos) << bad.err;
  const auto breach = bin.ok("rollover breach --device dev-02 --no-run");
  EXPECT_NE(breach.err.find("CRL number 3 of CA factory-1 signed (1 entries)"), std::string::npos)
      << breach.err;
  const auto s = json(bin.ok("crl show factory-1 --json").out);
  EXPECT_EQ(s->getValue<int>("number"), 3);
  EXPECT_EQ(s->getValue<int>("entries"), 1);
}

#ifdef FLEETSIGN_FAULTY_BIN
TEST_F(CrlCli, ANumberReservedBeforeAKillIsNeverReused) {
  std::string out;
  const int status = testing::run(
      "FLEETSIGN_PIN=" + quoted(testing::kUserPin) + " FLEETSIGN_FAULT=crl_reserved:1 " +
          quoted(FLEETSIGN_FAULTY_BIN) + " --home " + quoted(home.string()) + " crl sign factory-1",
      &out);
  EXPECT_NE(status, 0) << "killed between reserving the number and storing the CRL: " << out;
  EXPECT_EQ(show("factory-1")->getValue<int>("number"), 1) << "nothing was stored";
  bin.ok("crl sign factory-1");
  EXPECT_EQ(show("factory-1")->getValue<int>("number"), 3) << "2 was reserved: never reused";
  bin.ok("crl sign factory-1");
  EXPECT_EQ(show("factory-1")->getValue<int>("number"), 4);
}
#endif

// serve's CRL duty runs on the system clock, whatever its test clock says: a CRL signed at an
// injected future time would be "not valid yet" for the broker and every relying party.
TEST_F(CrlCli, ServeReSignsWhenTheRealClockNearsNextUpdateAndWarns) {
  const std::int64_t real = std::time(nullptr);
  // Signed 150 h ago (validity 168 h): 18 h left now, within the 72 h margin.
  bin.ok("crl sign --all --now " + std::to_string(real - 150 * 3600));
  EXPECT_EQ(show("factory-1", real)->getValue<std::string>("state"), "near");
  // The scheduler's clock is far in the future: the CRL duty does not follow it.
  const auto tick = bin.ok("serve --once --json --now " + std::to_string(kT));
  EXPECT_NE(tick.err.find("warning: the CRL of CA factory-1 is near"), std::string::npos)
      << tick.err;
  const auto s = show("factory-1", real);
  EXPECT_EQ(s->getValue<int>("number"), 3) << tick.err;
  const auto this_update = s->getValue<std::string>("this_update");  // ISO 8601 sorts as time
  EXPECT_GE(this_update, engine::iso8601(real - 5));
  EXPECT_LE(this_update, engine::iso8601(std::time(nullptr) + 5))
      << "signed at the real time, not at --now";
  EXPECT_EQ(s->getValue<std::string>("state"), "fresh");
  // Fresh now: the next tick (its test clock later still) signs nothing.
  bin.ok("serve --once --json --now " + std::to_string(kT + 150 * 3600));
  EXPECT_EQ(show("factory-1", real)->getValue<int>("number"), 3);
}

#ifdef FLEETSIGN_PLUGIN_PATH
// mosquitto itself, without fleetsign's plugin (whose admission decision refuses revoked
// certificates on its own): only the crlfile decides here.
class CrlBroker : public CrlCli {
 protected:
  int port = 0;
  pid_t mosquitto = -1;
  fs::path bdir = home / "broker";

  void SetUp() override {
    CrlCli::SetUp();
    port = free_port();
    bin.ok("broker init --port " + std::to_string(free_port()) + " --plugin " +
           quoted(FLEETSIGN_PLUGIN_PATH) + " --host localhost");
    const std::string conf =
        (::geteuid() == 0 ? "user root\n" : std::string()) + "listener " + std::to_string(port) +
        " 127.0.0.1\n" + "cafile " + (bdir / "clients-ca.pem").string() + "\ncertfile " +
        (bdir / "server.crt").string() + "\nkeyfile " + (bdir / "server.key").string() +
        "\ncrlfile " + (bdir / "crl.pem").string() +
        "\nrequire_certificate true\nuse_identity_as_username true\n"
        "allow_anonymous true\ntls_version tlsv1.2\n";
    testing::write_file(dir.path() / "plain.conf", conf);
  }
  void TearDown() override {
    if (mosquitto > 0) {
      ::kill(mosquitto, SIGTERM);
      ::usleep(200000);
    }
  }
  void start() {
    testing::run("mosquitto -c " + path("plain.conf") + " > " + path("mosq.log") +
                 " 2>&1 & echo $! > " + path("mosq.pid"));
    mosquitto = std::stoi(testing::read_file(dir.path() / "mosq.pid"));
    ::usleep(700000);
  }
  int publish(const std::string& device) {
    const fs::path out = dir.path() / "out";
    return testing::run("timeout 10 mosquitto_pub -h localhost -p " + std::to_string(port) +
                        " --cafile " + quoted((bdir / "ca.pem").string()) + " --cert " +
                        quoted((out / (device + "_cert.pem")).string()) + " --key " +
                        quoted((out / (device + "_key.pem")).string()) + " -i " + device +
                        " -t t -m x -q 1 > /dev/null 2>&1");
  }
};

TEST_F(CrlBroker, MosquittoRefusesARevokedDeviceThroughTheInstalledCrl) {
  revoke("dev-01", "keyCompromise");
  const auto signed_all = json(bin.ok("crl sign --all --json").out);
  ASSERT_EQ(signed_all->getArray("signed")->size(), 3u) << "root, factory-1, broker-ca";
  ASSERT_TRUE(fs::exists(bdir / "crl.pem")) << signed_all->getValue<std::string>("broker");
  EXPECT_NE(testing::read_file(bdir / "mosquitto.conf").find("crlfile"), std::string::npos);
  start();
  EXPECT_EQ(publish("dev-02"), 0) << testing::read_file(dir.path() / "mosq.log");
  EXPECT_NE(publish("dev-01"), 0) << "revoked: refused in the TLS handshake";
}

// The home's own broker (fleetsign's plugin, the generated config): with every CA's CRL signed,
// `broker start` runs mosquitto with the crlfile, a good device gets in, a revoked one does not.
TEST_F(CrlBroker, TheHomesBrokerRunsWithTheCrlFileAndAdmitsAGoodDevice) {
  bin.ok("ca verification-cert --ca root --code POP --out " + path("pop.pem"));
  bin.ok("ca verify root --code POP --cert " + path("pop.pem"));
  bin.ok("enrollment group create fleet --ca root");
  revoke("dev-01", "keyCompromise");
  bin.ok("crl sign --all");
  ASSERT_NE(testing::read_file(bdir / "mosquitto.conf").find("crlfile"), std::string::npos);
  bin.ok("broker start");
  const int home_port = json(testing::read_file(bdir / "broker.json"))->getValue<int>("port");
  const auto pub = [&](const std::string& device) {
    const fs::path out = dir.path() / "out";
    return testing::run("timeout 10 mosquitto_pub -h localhost -p " + std::to_string(home_port) +
                        " --cafile " + quoted((bdir / "ca.pem").string()) + " --cert " +
                        quoted((out / (device + "_cert.pem")).string()) + " --key " +
                        quoted((out / (device + "_key.pem")).string()) + " -i " + device +
                        " -u 'localhost/" + device +
                        "/?api-version=2021-04-12' -V mqttv311 -t 'devices/" + device +
                        "/messages/events/' -m x -q 1 > /dev/null 2>&1");
  };
  EXPECT_EQ(pub("dev-02"), 0) << testing::read_file(bdir / "mosquitto.log");
  EXPECT_NE(pub("dev-01"), 0);
  // A new CRL is installed into the running broker (SIGHUP): dev-02 is refused (by the plugin's
  // decision too), and the reloaded broker still admits a good device through its new CRL file.
  revoke("dev-02", "superseded");
  const auto signed_one = bin.ok("crl sign factory-1");
  EXPECT_NE(signed_one.out.find("mosquitto reloaded"), std::string::npos) << signed_one.out;
  ::usleep(500000);
  EXPECT_NE(pub("dev-02"), 0) << testing::read_file(bdir / "mosquitto.log");
  EXPECT_EQ(pub("dev-03"), 0) << testing::read_file(bdir / "mosquitto.log");
  bin.run("broker stop");
}

// A run killed after installing the CRL file and before telling mosquitto (SIGHUP) left a file
// the broker never read: the next install reloads it although the file is the same. Otherwise
// the devices of a CA whose first CRL is only in the file are refused at TLS for good (what an
// incident run killed at that moment did).
TEST_F(CrlBroker, AFileInstalledButNeverReadIsReadByTheNextInstall) {
  bin.ok("ca verification-cert --ca root --code POP --out " + path("pop.pem"));
  bin.ok("ca verify root --code POP --cert " + path("pop.pem"));
  bin.ok("enrollment group create fleet --ca root");
  bin.ok("crl sign --all");
  bin.ok("broker start");
  const int home_port = json(testing::read_file(bdir / "broker.json"))->getValue<int>("port");
  // The kill: the broker looks stopped (its pid file aside) while a new CA's first CRL is
  // installed, so nobody reloads it.
  const fs::path pid = bdir / "mosquitto.pid", aside = dir.path() / "pid.aside";
  fs::rename(pid, aside);
  bin.ok("ca create-intermediate --name late --issuer root --days 100 --subject /CN=Late");
  fs::rename(aside, pid);
  bin.ok("issue --ca late --generate 1 --id-pattern 'late-{01}' --out " + path("late"));
  const auto pub = [&] {
    return testing::run("timeout 10 mosquitto_pub -h localhost -p " + std::to_string(home_port) +
                        " --cafile " + quoted((bdir / "ca.pem").string()) + " --cert " +
                        quoted(path("late/late-1_fullchain.pem")) + " --key " +
                        quoted(path("late/late-1_key.pem")) +
                        " -i late-1 -u 'localhost/late-1/?api-version=2021-04-12' -V mqttv311 "
                        "-t 'devices/late-1/messages/events/' -m x -q 1 > /dev/null 2>&1");
  };
  EXPECT_NE(pub(), 0) << "mosquitto has not read late's CRL yet";
  const auto again = bin.ok("crl sign --due");
  EXPECT_NE(again.out.find("mosquitto reloaded"), std::string::npos) << again.out;
  ::usleep(500000);
  EXPECT_EQ(pub(), 0) << testing::read_file(bdir / "mosquitto.log");
  const auto quiet = bin.ok("crl sign --due");
  EXPECT_EQ(quiet.out.find("mosquitto reloaded"), std::string::npos)
      << "a file mosquitto has read is not reloaded again: " << quiet.out;
  bin.run("broker stop");
}

// A mosquitto started with no crlfile in its config (a home whose broker ran before its CRLs
// existed) reads none on a reload: the install says to restart it, and never records the file as
// read, until a restart has mosquitto read it.
TEST_F(CrlBroker, ABrokerStartedWithoutACrlFileIsToldToRestartNotReloaded) {
  bin.ok("crl sign --all");
  // A self-signed device certificate: no CRL can cover it, so the broker starts with no crlfile.
  ASSERT_EQ(testing::run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                         "-keyout " +
                         path("solo1.key") + " -out " + path("solo1.pem") +
                         " -subj /CN=solo1 -days 30 -addext basicConstraints=critical,CA:FALSE "
                         "-addext keyUsage=digitalSignature 2>/dev/null"),
            0);
  bin.ok("enrollment individual create solo1 --cert " + path("solo1.pem"));
  bin.ok("broker start");
  EXPECT_FALSE(fs::exists(bdir / "crl.pem"));
  EXPECT_EQ(testing::read_file(bdir / "crl.pem.loaded"), "no-crlfile");
  // The device moves onto a certificate of the house: every certificate is covered again.
  bin.ok("issue --ca factory-1 --generate 1 --id-pattern 'solo{01}' --out " + path("solo"));
  bin.ok("enrollment individual set-slot solo1 secondary --cert " + path("solo/solo1_cert.pem"));
  bin.ok("enrollment individual clear-slot solo1 primary");
  const auto first = bin.ok("crl sign factory-1");
  EXPECT_NE(first.out.find("reads a new crlfile only at start"), std::string::npos) << first.out;
  const auto second = bin.ok("crl sign factory-1");
  EXPECT_EQ(second.out.find("mosquitto reloaded"), std::string::npos) << second.out;
  EXPECT_NE(second.out.find("`fleetsign broker restart`"), std::string::npos) << second.out;
  EXPECT_EQ(testing::read_file(bdir / "crl.pem.loaded"), "no-crlfile");
  bin.ok("broker restart");
  EXPECT_EQ(testing::read_file(bdir / "crl.pem.loaded").size(), 64u) << "the file's SHA-256";
  const auto third = bin.ok("crl sign factory-1");
  EXPECT_NE(third.out.find("mosquitto reloaded"), std::string::npos) << third.out;
  bin.run("broker stop");
}

TEST_F(CrlBroker, ACaWhoseCrlIsMissingFromTheFileHasEveryDeviceRefused) {
  bin.ok("crl sign --all");
  // A file without factory-1's CRL: what fleetsign's installer never writes.
  testing::write_file(bdir / "crl.pem", bin.ok("crl export root").out);
  start();
  EXPECT_NE(publish("dev-02"), 0) << "no CRL of its issuer: mosquitto refuses the device";
  // The installer puts the whole bundle back; mosquitto re-reads it on SIGHUP.
  bin.ok("crl sign --all");
  ASSERT_EQ(::kill(mosquitto, SIGHUP), 0);
  ::usleep(500000);
  EXPECT_EQ(publish("dev-02"), 0) << testing::read_file(dir.path() / "mosq.log");
}
#endif

}  // namespace
}  // namespace fleetsign
