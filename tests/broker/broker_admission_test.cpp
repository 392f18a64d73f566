// Identity and admission at a real mosquitto with fleetsign's plugin: who may connect, as whom.
// Each refusal is paired with the same client admitted once the one thing it lacks is fixed, so a
// broker that refused everything would fail these tests.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdio>

#include "broker_fixture.hpp"

namespace fleetsign {
namespace {

using namespace std::chrono_literals;
using testing::BrokerHome;
using testing::DeviceFiles;

constexpr int kNotAuthorised = 5;  // MQTT 3.1.1 CONNACK "not authorised"

// A self-signed P-256 certificate valid from `from` to `to` (seconds relative to now), made with
// OpenSSL directly: fleetsign cannot make an expired certificate.
DeviceFiles expired_self_signed(const std::filesystem::path& dir, const std::string& id) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 4242);
  X509_gmtime_adj(X509_getm_notBefore(cert), -10 * 86400);
  X509_gmtime_adj(X509_getm_notAfter(cert), -86400);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(id.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509_set_pubkey(cert, key);
  X509_sign(cert, key, EVP_sha256());
  DeviceFiles d{id, dir / (id + "_cert.pem"), dir / (id + "_key.pem")};
  std::FILE* f = std::fopen(d.cert.c_str(), "w");
  PEM_write_X509(f, cert);
  std::fclose(f);
  f = std::fopen(d.key.c_str(), "w");
  PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  X509_free(cert);
  EVP_PKEY_free(key);
  return d;
}

class BrokerAdmission : public ::testing::Test {
 protected:
  BrokerHome h;
  int connect(const DeviceFiles& d, const std::string& client_id = "") {
    auto c = h.device(d, client_id);
    return c->connect();
  }
  bool log_says(const std::string& text) { return h.broker_log().find(text) != std::string::npos; }
};

TEST_F(BrokerAdmission, ADeviceOfAnEnabledGroupConnects) {
  const auto d = h.issue("dev-ok");
  h.start_broker();
  EXPECT_EQ(connect(d), 0) << h.broker_log();
  EXPECT_TRUE(log_says("admitted hub client 'dev-ok' (enrollment-group"));
}

TEST_F(BrokerAdmission, RefusesADeviceWithNoEnrollment) {
  h.cli_ok({"ca", "create-intermediate", "--name", "int2", "--issuer", "root", "--subject",
            "/CN=No Group Int"});
  const auto d = h.issue("dev-orphan", "int2");
  h.start_broker();  // int2 is a registry CA: the TLS layer lets its devices through
  EXPECT_EQ(connect(d), kNotAuthorised);
  EXPECT_TRUE(log_says("refused hub client 'dev-orphan': no-enrollment")) << h.broker_log();
  h.stop_broker();
  h.cli_ok({"enrollment", "group", "create", "g2", "--ca", "int2"});
  h.start_broker();
  EXPECT_EQ(connect(d), 0) << "enrolled now";
}

TEST_F(BrokerAdmission, RefusesADeviceWhoseIndividualEnrollmentIsDisabled) {
  const auto d = h.issue("dev-ind");
  h.cli_ok({"enrollment", "individual", "create", "dev-ind", "--cert", d.cert.string()});
  h.cli_ok({"enrollment", "individual", "disable", "dev-ind"});
  h.start_broker();
  EXPECT_EQ(connect(d), kNotAuthorised) << "disabled individual wins over the enabled group";
  EXPECT_TRUE(log_says("refused hub client 'dev-ind': individual-disabled")) << h.broker_log();
  h.cli_ok({"enrollment", "individual", "enable", "dev-ind"});
  EXPECT_EQ(connect(d), 0) << "a new connection is decided on the registry as it is now";
}

TEST_F(BrokerAdmission, RefusesTheDevicesOfADisabledGroup) {
  const auto d = h.issue("dev-grp");
  h.cli_ok({"enrollment", "group", "disable", "g1"});
  h.start_broker();
  EXPECT_EQ(connect(d), kNotAuthorised);
  EXPECT_TRUE(log_says("refused hub client 'dev-grp': group-disabled")) << h.broker_log();
  h.cli_ok({"enrollment", "group", "enable", "g1"});
  EXPECT_EQ(connect(d), 0);
}

TEST_F(BrokerAdmission, RefusesAnExpiredCertificate) {
  const auto d = expired_self_signed(h.work, "dev-old");
  h.cli_ok({"enrollment", "individual", "create", "dev-old", "--thumbprint",
            engine::thumbprint_sha256(engine::read_certificates(d.cert).front())});
  const auto fresh = h.self_signed("dev-new");
  h.cli_ok({"enrollment", "individual", "create", "dev-new", "--cert", fresh.cert.string()});
  h.start_broker();
  // The TLS layer refuses it before the plugin sees it (no CONNACK at all); either way: refused.
  EXPECT_NE(connect(d), 0);
  EXPECT_FALSE(log_says("admitted hub client 'dev-old'"));
  EXPECT_EQ(connect(fresh), 0) << "the same kind of enrollment with a valid certificate";
}

TEST_F(BrokerAdmission, RefusesACertificateFromAnUnverifiedCa) {
  h.cli_ok({"ca", "create-root", "--name", "root2", "--subject", "/CN=Unverified Root"});
  h.cli_ok({"enrollment", "group", "create", "g-unverified", "--ca", "root2"});
  const auto d = h.issue("dev-unv", "root2");
  h.start_broker();
  EXPECT_EQ(connect(d), kNotAuthorised);
  EXPECT_TRUE(log_says("refused hub client 'dev-unv': ca-not-verified")) << h.broker_log();
  h.cli_ok({"ca", "verification-cert", "--ca", "root2", "--code", "POP2", "--out",
            (h.work / "pop2.pem").string()});
  h.cli_ok({"ca", "verify", "root2", "--code", "POP2", "--cert", (h.work / "pop2.pem").string()});
  EXPECT_EQ(connect(d), 0) << "verified now";
}

TEST_F(BrokerAdmission, RefusesASelfSignedCertificateThatNoIndividualEnrollmentNames) {
  const auto stranger = h.self_signed("ss-stranger");
  const auto d = h.self_signed("ss-dev");
  const auto other = h.self_signed("ss-dev-2");
  h.cli_ok({"enrollment", "individual", "create", "ss-dev", "--cert", d.cert.string()});
  h.start_broker();  // clients-ca.pem now holds ss-dev's certificate, not ss-stranger's
  EXPECT_NE(connect(stranger), 0) << "never enrolled: the TLS layer does not even know it";
  EXPECT_EQ(connect(d), 0) << h.broker_log();
  // The enrollment moves to another certificate: the one the TLS layer still trusts (until the
  // next reload) matches no enrollment now, and the plugin's decision refuses it.
  h.cli_ok({"enrollment", "individual", "set-slot", "ss-dev", "primary", "--thumbprint",
            engine::thumbprint_sha256(engine::read_certificates(other.cert).front())});
  EXPECT_EQ(connect(d), kNotAuthorised);
  EXPECT_TRUE(log_says("refused hub client 'ss-dev': individual-mismatch")) << h.broker_log();
}

TEST_F(BrokerAdmission, TheClientIdAndUsernameMustNameTheCertificatesDevice) {
  const auto a = h.issue("dev-a");
  h.issue("dev-b");
  h.start_broker();
  EXPECT_EQ(connect(a, "dev-b"), kNotAuthorised);
  EXPECT_TRUE(log_says("client-id-mismatch")) << h.broker_log();
  auto c = std::make_unique<testing::MqttClient>(
      h.port, h.broker_dir / "ca.pem",
      testing::ClientOptions{"dev-a", "localhost/dev-b/?api-version=2021-04-12", a.cert, a.key});
  EXPECT_EQ(c->connect(), kNotAuthorised);
  EXPECT_TRUE(log_says("registration-id-mismatch")) << h.broker_log();
  c = std::make_unique<testing::MqttClient>(h.port, h.broker_dir / "ca.pem",
                                            testing::ClientOptions{"dev-a", "", a.cert, a.key});
  // Refused either way: CONNACK "not authorised", or (mosquitto's own check for a missing
  // username, depending on timing) the connection closed without one.
  EXPECT_NE(c->connect(), 0) << "no username";
  EXPECT_EQ(connect(a), 0);
}

TEST_F(BrokerAdmission, ADeviceCannotTakeOverAnotherDevicesSession) {
  const auto a = h.issue("dev-a");
  const auto b = h.issue("dev-b");
  h.start_broker();
  auto victim = h.online_device(a);
  auto service = h.online_service();
  // dev-b's certificate with dev-a's client id (and either username): refused, dev-a stays.
  EXPECT_EQ(connect(b, "dev-a"), kNotAuthorised);
  auto c = std::make_unique<testing::MqttClient>(
      h.port, h.broker_dir / "ca.pem",
      testing::ClientOptions{"dev-a", "localhost/dev-a/?api-version=2021-04-12", b.cert, b.key});
  EXPECT_EQ(c->connect(), kNotAuthorised);
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(victim->connected());
  const std::string rid = testing::new_rid();
  service->publish(testing::call_topic("dev-a", "ping", rid), "{}");
  const auto call = victim->wait_topic_prefix("$iothub/methods/POST/ping/");
  ASSERT_TRUE(call) << "dev-a still receives its calls\n" << h.broker_log();
  // A service certificate is not a device's either, and a device's is not a service's.
  auto fake_service = h.device(a, "fleetsign-service-x");
  EXPECT_EQ(fake_service->connect(), kNotAuthorised);
}

// The review's takeover: a certificate from a CA that no enrollment trusts (imported, unverified,
// in no group; the TLS layer knows it because clients-ca.pem holds every registry CA) with a live
// device's CN, connecting in DPS mode. The decision refuses it, so it may not displace the live
// session; with nobody connected it may connect only to hear DPS's 401.
TEST_F(BrokerAdmission, ADpsConnectionTheDecisionRefusesNeverReplacesALiveSession) {
  h.cli_ok({"ca", "create-root", "--name", "stranger", "--subject", "/CN=Stranger Root"});
  // Same CN from a CA in no group, never verified; moved aside before the real one is issued.
  const auto issued = h.issue("dev-a", "stranger");
  const std::filesystem::path dir = h.work / "forged";
  std::filesystem::create_directories(dir);
  const DeviceFiles forged{"dev-a", dir / "cert.pem", dir / "key.pem"};
  std::filesystem::rename(issued.cert, forged.cert);
  std::filesystem::rename(issued.key, forged.key);
  const auto a = h.issue("dev-a");
  h.start_broker();
  auto victim = h.online_device(a);
  auto attacker = h.dps_device(forged);
  EXPECT_EQ(attacker->connect(), kNotAuthorised) << h.broker_log();
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(victim->connected()) << h.broker_log();
  auto service = h.online_service();
  const std::string rid = testing::new_rid();
  service->publish(testing::call_topic("dev-a", "ping", rid), "{}");
  ASSERT_TRUE(victim->wait_topic_prefix("$iothub/methods/POST/ping/")) << h.broker_log();
  // The real device in DPS mode is allowed (and replaces its own hub session, as DPS re-registers).
  auto real_dps = h.dps_device(a);
  EXPECT_EQ(real_dps->connect(), 0) << h.broker_log();
}

// A DPS device the decision refuses connects only to hear DPS's 401: it is no session of the
// device. Before, the broker recorded it as connected with the refused certificate, and a
// rollover waiting for that certificate took it as the device being back.
TEST_F(BrokerAdmission, ARefusedDpsConnectionIsNotRecordedAsTheDevicesSession) {
  h.cli_ok({"ca", "create-root", "--name", "stranger", "--subject", "/CN=Stranger Root"});
  const auto refused = h.issue("dev-r", "stranger");
  const auto good = h.issue("dev-g");
  h.start_broker();
  auto hears = h.dps_device(refused);
  ASSERT_EQ(hears->connect(), 0) << h.broker_log();
  auto real = h.dps_device(good);
  ASSERT_EQ(real->connect(), 0) << h.broker_log();
  // Sessions are written in order: once dev-g's is there, dev-r's would be too.
  std::string listed;
  for (int i = 0; i < 50 && listed.find("dev-g") == std::string::npos; ++i) {
    std::this_thread::sleep_for(100ms);
    listed = h.cli_ok({"device", "list", "--connected", "--json"});
  }
  EXPECT_NE(listed.find("\"dev-g\""), std::string::npos) << listed;
  EXPECT_EQ(listed.find("dev-r"), std::string::npos) << listed;
  EXPECT_NE(h.broker_log().find("dps-connect-refused"), std::string::npos) << h.broker_log();
}

// What mosquitto loads: only the three entry points are exported (the engine inside stays
// private), and nothing of the token (libp11, SoftHSM) is linked. Checked with binutils.
TEST(BrokerPlugin, ExportsOnlyThePluginEntryPointsAndNeverLinksTheToken) {
  std::string out;
  ASSERT_EQ(testing::run("nm -D --defined-only " FLEETSIGN_PLUGIN_PATH " | awk '{print $3}' | sort",
                         &out),
            0);
  EXPECT_EQ(out, "mosquitto_plugin_cleanup\nmosquitto_plugin_init\nmosquitto_plugin_version\n");
  ASSERT_EQ(testing::run("readelf -d " FLEETSIGN_PLUGIN_PATH, &out), 0);
  EXPECT_NE(out.find("libcrypto"), std::string::npos) << out;
  EXPECT_EQ(out.find("libp11"), std::string::npos) << out;
  EXPECT_EQ(out.find("softhsm"), std::string::npos) << out;
  EXPECT_EQ(out.find("libtbb"), std::string::npos) << out;
}

}  // namespace
}  // namespace fleetsign
