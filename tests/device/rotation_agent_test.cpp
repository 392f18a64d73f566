// A rotation of a real fleetsign-device process (one device of a CLI-issued batch, with --state)
// against a real mosquitto with TLS client authentication: the test plays the engine (method
// calls on $iothub/methods/POST/..., CSRs signed by the real `fleetsign issue --csr`) and, with
// --dps, the provisioning service. Power loss is SIGKILL of the agent.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <sstream>
#include <thread>

#include "device_fixture.hpp"

namespace fleetsign::testing {
namespace {

using namespace std::chrono_literals;

Poco::JSON::Object::Ptr parse(const std::string& text) {
  Poco::JSON::Parser parser;
  return parser.parse(text).extract<Poco::JSON::Object::Ptr>();
}

std::string json(std::initializer_list<std::pair<std::string, std::string>> fields) {
  Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  for (const auto& [k, v] : fields) o.set(k, v);
  std::ostringstream out;
  o.stringify(out);
  return out.str();
}

struct Answer {
  int status = 0;
  Poco::JSON::Object::Ptr body;
};

class RotationAgent : public ::testing::Test {
 protected:
  const DevicePki& pki = DevicePki::get();
  TempDir dir;
  Broker broker{pki, dir.path() / "broker"};
  fs::path state = dir.path() / "state";
  fs::path flash = state / "dev-01";
  std::unique_ptr<MqttClient> svc;
  int rid = 0;

  void SetUp() override {
    broker.start();
    svc = std::make_unique<MqttClient>(broker, pki, "caller-01");
    svc->subscribe("$iothub/methods/res/#");
  }
  std::unique_ptr<Agent> agent(const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> a{"--broker", "localhost:" + std::to_string(broker.port()),
                               "--trust",  pki.server_ca.string(),
                               "--dir",    pki.batch.string(),
                               "--count",  "1",
                               "--state",  state.string()};
    a.insert(a.end(), extra.begin(), extra.end());
    return std::make_unique<Agent>(dir.path() / name, a);
  }
  // One method call to the agent's one device, and its answer.
  Answer call(const Agent& a, const std::string& method, const std::string& payload) {
    const std::string suffix = "/?$rid=r" + std::to_string(++rid);
    svc->publish("$iothub/methods/POST/" + method + suffix, payload);
    const auto m = svc->wait_for(
        [&](const Message& m) {
          return m.topic.size() > suffix.size() &&
                 m.topic.compare(m.topic.size() - suffix.size(), suffix.size(), suffix) == 0;
        },
        10s);
    if (!m) {
      ADD_FAILURE() << method << " got no answer: " << a.log();
      return {};
    }
    const std::string prefix = "$iothub/methods/res/";
    return Answer{std::stoi(m->topic.substr(prefix.size(), 3)), parse(m->payload)};
  }
  // createCsr, then the CLI signs the CSR: the device's new chain.
  std::string new_chain(const Agent& a, const std::string& job) {
    const auto r =
        call(a, "createCsr", json({{"jobId", job}, {"slot", "secondary"}, {"keyType", "ec-p256"}}));
    EXPECT_EQ(r.status, 200);
    if (r.status != 200) return "";
    EXPECT_EQ(r.body->getValue<std::string>("slot"), "secondary");
    const fs::path csr = dir.path() / (job + ".csr");
    const fs::path out = dir.path() / (job + "-signed");
    write_file(csr, r.body->getValue<std::string>("csr"));
    std::string log;
    EXPECT_EQ(fleetsign_cli(pki.home,
                            "issue --ca int --reissue --csr '" + csr.string() + "' --out '" +
                                out.string() + "'",
                            &log),
              0)
        << log;
    return read_file(out / "dev-01_fullchain.pem");
  }
  std::string install(const Agent& a, const std::string& job, const std::string& chain) {
    const auto r = call(a, "installCertificate",
                        json({{"jobId", job}, {"slot", "secondary"}, {"chain", chain}}));
    EXPECT_EQ(r.status, 200);
    return r.status == 200 ? r.body->getValue<std::string>("sha256") : "";
  }
  Answer reprovision(const Agent& a, const std::string& job, const std::string& sha) {
    return call(a, "reprovision", json({{"jobId", job}, {"slot", "secondary"}, {"sha256", sha}}));
  }
  std::string active_slot() const {
    return parse(read_file(flash / "slot.json"))->getValue<std::string>("active");
  }
};

TEST_F(RotationAgent, RotatesReconnectsWithTheNewCertificateAndReportsItInTheTwin) {
  MqttClient spy(broker, pki, "caller-02");
  spy.subscribe("$iothub/twin/PATCH/properties/reported/#");
  auto a = agent("agent");
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
  const std::string old_sha = call(*a, "getCertificate", "").body->getValue<std::string>("sha256");
  const std::string chain = new_chain(*a, "job-1");
  const std::string sha = install(*a, "job-1", chain);
  ASSERT_FALSE(sha.empty());
  const auto again = call(*a, "installCertificate",
                          json({{"jobId", "job-1"}, {"slot", "secondary"}, {"chain", chain}}));
  EXPECT_EQ(again.status, 200);
  EXPECT_TRUE(again.body->getValue<bool>("already"));
  EXPECT_EQ(active_slot(), "primary");

  const auto r = reprovision(*a, "job-1", sha);
  ASSERT_EQ(r.status, 200);
  EXPECT_TRUE(r.body->getValue<bool>("reconnecting"));
  ASSERT_TRUE(a->wait_log("dev-01 reprovisioning with its secondary slot", 5s)) << a->log();
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s, 2)) << a->log();
  EXPECT_EQ(active_slot(), "secondary");
  const auto cert = call(*a, "getCertificate", "");
  EXPECT_EQ(cert.body->getValue<std::string>("slot"), "secondary");
  EXPECT_EQ(cert.body->getValue<std::string>("sha256"), sha);
  EXPECT_NE(sha, old_sha);
  // The twin's reported certificate is the new one (the engine's confirmation signal).
  const auto report =
      spy.wait_for([&](const Message& m) { return m.payload.find(sha) != std::string::npos; }, 5s);
  ASSERT_TRUE(report) << a->log();
  EXPECT_EQ(parse(report->payload)
                ->getObject("fleetsign")
                ->getObject("certificate")
                ->getValue<std::string>("slot"),
            "secondary");

  // Repeated reprovision: it runs that certificate already; no second reconnect.
  const auto r2 = reprovision(*a, "job-1", sha);
  ASSERT_EQ(r2.status, 200);
  EXPECT_FALSE(r2.body->getValue<bool>("reconnecting"));
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(count_of(a->log(), "dev-01 connected to "), 2u) << a->log();
  EXPECT_EQ(count_of(a->log(), "reprovisioning"), 1u);
}

// A chain the broker does not trust (its own CA, not the fleet's) passes the device's checks
// (CN, key, links) and is installed; after the switch the broker refuses it. The slot is on trial
// until it connects, so after three refusals the device goes back to its old slot, durably, and
// is reachable again: the engine can retry.
TEST_F(RotationAgent, ACertificateTheBrokerRefusesSendsTheDeviceBackToItsOldSlot) {
  auto a = agent("agent");
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
  const std::string old_sha = call(*a, "getCertificate", "").body->getValue<std::string>("sha256");
  const auto csr = call(*a, "createCsr", json({{"jobId", "job-r"}, {"slot", "secondary"}}));
  ASSERT_EQ(csr.status, 200);
  write_file(dir.path() / "r.csr", csr.body->getValue<std::string>("csr"));
  const std::string d = "'" + dir.path().string() + "/";
  std::string log;
  ASSERT_EQ(run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 "
                "-subj /CN=Rogue-CA -keyout " +
                    d + "rogue.key' -out " + d +
                    "rogue.pem' && "
                    "openssl x509 -req -in " +
                    d + "r.csr' -CA " + d + "rogue.pem' -CAkey " + d +
                    "rogue.key' -CAcreateserial -days 20 -out " + d + "r.pem' 2>&1",
                &log),
            0)
      << log;
  const std::string sha =
      install(*a, "job-r", read_file(dir.path() / "r.pem") + read_file(dir.path() / "rogue.pem"));
  ASSERT_FALSE(sha.empty());
  ASSERT_EQ(reprovision(*a, "job-r", sha).status, 200);
  ASSERT_TRUE(a->wait_log("dev-01 reprovisioning with its secondary slot", 5s)) << a->log();
  EXPECT_EQ(active_slot(), "secondary");
  EXPECT_TRUE(parse(read_file(flash / "slot.json"))->getValue<bool>("trial"));
  ASSERT_TRUE(a->wait_log("back on its primary slot", 20s)) << a->log();
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s, 2)) << a->log();
  EXPECT_EQ(active_slot(), "primary");
  EXPECT_FALSE(parse(read_file(flash / "slot.json"))->has("trial"));
  EXPECT_EQ(call(*a, "getCertificate", "").body->getValue<std::string>("sha256"), old_sha);
  // A good certificate next: it connects, and its trial ends on the flash.
  const std::string good = install(*a, "job-g", new_chain(*a, "job-g"));
  ASSERT_EQ(reprovision(*a, "job-g", good).status, 200);
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s, 3)) << a->log();
  EXPECT_EQ(call(*a, "getCertificate", "").body->getValue<std::string>("sha256"), good);
  EXPECT_EQ(active_slot(), "secondary");
  EXPECT_FALSE(parse(read_file(flash / "slot.json"))->has("trial"));
}

TEST_F(RotationAgent, PowerLossBetweenInstallAndReprovisionRestartsOnTheOldSlotThenCompletes) {
  std::string sha, old_sha;
  {
    auto a = agent("before");
    ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
    old_sha = call(*a, "getCertificate", "").body->getValue<std::string>("sha256");
    sha = install(*a, "job-p", new_chain(*a, "job-p"));
    ASSERT_FALSE(sha.empty());
    a->stop(SIGKILL);
  }
  auto a = agent("after");
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
  EXPECT_NE(a->log().find("(primary slot"), std::string::npos) << a->log();
  EXPECT_EQ(call(*a, "getCertificate", "").body->getValue<std::string>("sha256"), old_sha);
  // The engine's retry: install again (already there), then reprovision completes.
  EXPECT_EQ(call(*a, "installCertificate",
                 json({{"jobId", "job-p"},
                       {"slot", "secondary"},
                       {"chain", read_file(flash / "secondary.chain.pem")}}))
                .status,
            200);
  const auto r = reprovision(*a, "job-p", sha);
  ASSERT_EQ(r.status, 200);
  EXPECT_TRUE(r.body->getValue<bool>("reconnecting"));
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s, 2)) << a->log();
  EXPECT_EQ(call(*a, "getCertificate", "").body->getValue<std::string>("sha256"), sha);
}

TEST_F(RotationAgent, PowerLossRightAfterReprovisionRestartsOnTheNewSlot) {
  std::string sha;
  {
    auto a = agent("before");
    ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
    sha = install(*a, "job-k", new_chain(*a, "job-k"));
    ASSERT_EQ(reprovision(*a, "job-k", sha).status, 200);
    a->stop(SIGKILL);  // possibly before it reconnected: the flash says secondary already
  }
  EXPECT_EQ(active_slot(), "secondary");
  auto a = agent("after");
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
  EXPECT_NE(a->log().find("dev-01 runs its secondary slot from the state directory"),
            std::string::npos)
      << a->log();
  EXPECT_EQ(call(*a, "getCertificate", "").body->getValue<std::string>("sha256"), sha);
  const auto r = reprovision(*a, "job-k", sha);  // the engine's retry
  ASSERT_EQ(r.status, 200);
  EXPECT_FALSE(r.body->getValue<bool>("reconnecting"));
}

// A test's DPS: answers registration requests on the broker, as the fleet's DPS service does.
class ManualDps {
 public:
  ManualDps(const Broker& broker, const DevicePki& pki)
      : m_client(broker, pki, "caller-03"), m_hub("localhost:" + std::to_string(broker.port())) {
    m_client.subscribe("$dps/registrations/PUT/#");
  }
  const std::string& hub() const { return m_hub; }
  std::size_t requests() { return m_client.received().size(); }
  // Answers the n-th registration request: assigned to the test's broker, or `status` (401) with
  // an error body. False when it did not come within 10 s.
  bool answer(std::size_t n, int status = 200) {
    std::optional<Message> reg;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!reg && std::chrono::steady_clock::now() < deadline) {
      const auto all = m_client.received();
      if (all.size() >= n) reg = all[n - 1];
      std::this_thread::sleep_for(20ms);
    }
    if (!reg) return false;
    const std::string rid = reg->topic.substr(reg->topic.find("?$rid=") + 6);
    const std::string body =
        status == 200 ? R"({"operationId":"op","status":"assigned","registrationState":{)"
                        R"("registrationId":"dev-01","assignedHub":")" +
                            m_hub + R"(","deviceId":"dev-01","status":"assigned"}})"
                      : R"({"errorCode":401002,"message":"certificate refused"})";
    m_client.publish("$dps/registrations/res/" + std::to_string(status) + "/?$rid=" + rid, body);
    return true;
  }

 private:
  MqttClient m_client;
  std::string m_hub;
};

TEST_F(RotationAgent, WithDpsReprovisionRegistersAgainThenReachesTheHubWithTheNewCertificate) {
  ManualDps dps(broker, pki);
  const std::string hub = dps.hub();
  auto a = agent("agent", {"--dps", "0ne00FLEET", "--json"});
  ASSERT_TRUE(dps.answer(1)) << a->log();
  ASSERT_TRUE(a->wait_log("dev-01 connected to " + hub, 10s)) << a->log();
  const std::string sha = install(*a, "job-d", new_chain(*a, "job-d"));
  ASSERT_FALSE(sha.empty());
  ASSERT_TRUE(reprovision(*a, "job-d", sha).body->getValue<bool>("reconnecting"));
  // DPS's CONNACK (before the registration request) is no admission: DPS lets a refused
  // certificate connect to hear its 401. The slot stays on trial until the hub admits it.
  const auto asked = std::chrono::steady_clock::now() + 10s;
  while (dps.requests() < 2 && std::chrono::steady_clock::now() < asked) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(dps.requests(), 2u) << a->log();
  EXPECT_EQ(active_slot(), "secondary");
  EXPECT_TRUE(parse(read_file(flash / "slot.json"))->getValue<bool>("trial"));
  ASSERT_TRUE(dps.answer(2)) << a->log();  // it registered again, with the new certificate
  ASSERT_TRUE(a->wait_log("dev-01 connected to " + hub, 10s, 2)) << a->log();
  EXPECT_EQ(count_of(a->log(), "dev-01 registered through DPS"), 2u) << a->log();
  EXPECT_EQ(call(*a, "getCertificate", "").body->getValue<std::string>("sha256"), sha);
  EXPECT_FALSE(parse(read_file(flash / "slot.json"))->has("trial"));
  // Two DPS sessions (clean) and two hub sessions (clean session false) at the broker.
  const std::string log = broker.log();
  EXPECT_EQ(count_of(log, "as dev-01 (p2, c1, k180"), 2u) << log;
  EXPECT_EQ(count_of(log, "as dev-01 (p2, c0, k180"), 2u) << log;
  EXPECT_EQ(a->stop(SIGTERM), 0);
  EXPECT_EQ(parse(a->out())->getValue<int>("registrations"), 2);
}

// DPS refusing the new certificate (401 on its registration, after a CONNACK 0) counts toward the
// trial: after three, the device goes back to its old slot and registers with it. Before, the
// trial ended at DPS's CONNACK, and the device asked DPS for ever with a refused certificate.
TEST_F(RotationAgent, WithDpsANewCertificateDpsRefusesSendsTheDeviceBackToItsOldSlot) {
  ManualDps dps(broker, pki);
  auto a = agent("agent", {"--dps", "0ne00FLEET"});
  ASSERT_TRUE(dps.answer(1)) << a->log();
  ASSERT_TRUE(a->wait_log("dev-01 connected to " + dps.hub(), 10s)) << a->log();
  const std::string old_sha = call(*a, "getCertificate", "").body->getValue<std::string>("sha256");
  const std::string sha = install(*a, "job-x", new_chain(*a, "job-x"));
  ASSERT_TRUE(reprovision(*a, "job-x", sha).body->getValue<bool>("reconnecting"));
  for (std::size_t n = 2; n <= 4; ++n) ASSERT_TRUE(dps.answer(n, 401)) << n << a->log();
  ASSERT_TRUE(a->wait_log("back on its primary slot", 20s)) << a->log();
  EXPECT_EQ(active_slot(), "primary");
  EXPECT_FALSE(parse(read_file(flash / "slot.json"))->has("trial"));
  ASSERT_TRUE(dps.answer(5)) << a->log();  // the old certificate registers again
  ASSERT_TRUE(a->wait_log("dev-01 connected to " + dps.hub(), 10s, 2)) << a->log();
  EXPECT_EQ(call(*a, "getCertificate", "").body->getValue<std::string>("sha256"), old_sha);
}

TEST_F(RotationAgent, AFailingDeviceAnswers500AndWritesNothing) {
  auto a = agent("agent", {"--fail-fraction", "1", "--sync", "never"});
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
  const auto r =
      call(*a, "createCsr", json({{"jobId", "j"}, {"slot", "secondary"}, {"keyType", "ec-p256"}}));
  EXPECT_EQ(r.status, 500);
  EXPECT_FALSE(fs::exists(flash / "secondary.pending.json"));
}

TEST_F(RotationAgent, SyncOptionIsCheckedAndTheRotationWorksWithSyncNever) {
  std::string out;
  EXPECT_EQ(
      run_device("--broker localhost:1 --trust x --dir " + pki.batch.string() + " --sync sometimes",
                 &out),
      2);
  EXPECT_NE(out.find("--sync 'sometimes': expected always or never"), std::string::npos) << out;
  auto a = agent("agent", {"--sync", "never"});
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s)) << a->log();
  const std::string sha = install(*a, "job-n", new_chain(*a, "job-n"));
  ASSERT_TRUE(reprovision(*a, "job-n", sha).body->getValue<bool>("reconnecting"));
  ASSERT_TRUE(a->wait_log("dev-01 connected to ", 10s, 2)) << a->log();
  EXPECT_EQ(active_slot(), "secondary");
}

}  // namespace
}  // namespace fleetsign::testing
