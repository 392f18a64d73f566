// The device side of the protocol rules, without a network: topics are parsed strictly (they are
// hostile input), and the method registry answers as the reference agent must.
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include "fleetsign/device/methods.hpp"
#include "topics.hpp"

namespace fleetsign::device {
namespace {

using namespace topics;

TEST(Topics, MethodCallGivesNameAndRid) {
  const auto call = parse_method_call("$iothub/methods/POST/getCertificate/?$rid=0af3");
  ASSERT_TRUE(call);
  EXPECT_EQ(call->name, "getCertificate");
  EXPECT_EQ(call->rid, "0af3");
}

TEST(Topics, MethodCallWithoutAValidRidIsDropped) {
  EXPECT_FALSE(parse_method_call("$iothub/methods/POST/ping/"));
  EXPECT_FALSE(parse_method_call("$iothub/methods/POST/ping/?$rid="));
  EXPECT_FALSE(parse_method_call("$iothub/methods/POST/ping/?$rid=a/b"));
  EXPECT_FALSE(parse_method_call("$iothub/methods/POST/ping/?$rid=" + std::string(129, 'a')));
  EXPECT_FALSE(parse_method_call("$iothub/methods/res/200/?$rid=1"));
}

TEST(Topics, MethodCallWithABadNameKeepsItsRidSoItCanBeAnswered400) {
  const auto call = parse_method_call("$iothub/methods/POST/a b/?$rid=7");
  ASSERT_TRUE(call);
  EXPECT_EQ(call->name, "");
  EXPECT_EQ(call->rid, "7");
  EXPECT_EQ(parse_method_call("$iothub/methods/POST/" + std::string(129, 'm') + "/?$rid=7")->name,
            "");
  EXPECT_EQ(parse_method_call("$iothub/methods/POST/x/y/?$rid=7")->name, "");
}

TEST(Topics, TwinAndDpsResponses) {
  const auto twin = parse_twin_response("$iothub/twin/res/204/?$rid=5&$version=12");
  ASSERT_TRUE(twin);
  EXPECT_EQ(twin->status, 204);
  EXPECT_EQ(twin->rid, "5");
  EXPECT_EQ(twin->version, 12);
  const auto dps = parse_dps_response("$dps/registrations/res/202/?$rid=9&retry-after=3");
  ASSERT_TRUE(dps);
  EXPECT_EQ(dps->status, 202);
  EXPECT_EQ(dps->retry_after, 3);
  EXPECT_FALSE(parse_dps_response("$dps/registrations/res/abc/?$rid=9"));
  EXPECT_FALSE(parse_twin_response("$iothub/twin/res/200/?rid=9"));
  EXPECT_EQ(parse_desired_patch("$iothub/twin/PATCH/properties/desired/?$version=4"), 4);
  EXPECT_FALSE(parse_desired_patch("$iothub/twin/PATCH/properties/desired/?$version=-4"));
}

TEST(Topics, OutgoingTopicsAndUsernamesAreTheAzureSdks) {
  EXPECT_EQ(method_response(501, "ab"), "$iothub/methods/res/501/?$rid=ab");
  EXPECT_EQ(twin_get("1"), "$iothub/twin/GET/?$rid=1");
  EXPECT_EQ(twin_report("2"), "$iothub/twin/PATCH/properties/reported/?$rid=2");
  EXPECT_EQ(dps_register("3"), "$dps/registrations/PUT/iotdps-register/?$rid=3");
  EXPECT_EQ(dps_status("4", "op-1"),
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=4&operationId=op-1");
  EXPECT_EQ(hub_username("hub.local", "dev-1"),
            "hub.local/dev-1/?api-version=2021-04-12&DeviceClientType=fleetsign-device");
  EXPECT_EQ(dps_username("0ne0001", "dev-1"), "0ne0001/registrations/dev-1/api-version=2019-03-31");
}

TEST(Topics, AssignedHubIsCheckedBeforeItIsDialled) {
  EXPECT_EQ(parse_host_port("hub.example.net", 8883)->port, 8883);
  const auto hp = parse_host_port("localhost:18883", 8883);
  ASSERT_TRUE(hp);
  EXPECT_EQ(hp->host, "localhost");
  EXPECT_EQ(hp->port, 18883);
  EXPECT_FALSE(parse_host_port("", 8883));
  EXPECT_FALSE(parse_host_port("evil host", 8883));
  EXPECT_FALSE(parse_host_port("h:0", 8883));
  EXPECT_FALSE(parse_host_port("h:70000", 8883));
  EXPECT_FALSE(parse_host_port("h/../x:1", 8883));
}

// --- methods ---------------------------------------------------------------------------------

class FakeDevice final : public MethodContext {
 public:
  FakeDevice() : m_id(DeviceId::check({}, "dev-1").value()) {
    m_cert.sha256 = "AB";
    m_cert.serial = "01";
    m_cert.not_after = 1'800'000'000;
  }
  const DeviceId& device_id() const override { return m_id; }
  const CertInfo& certificate() const override { return m_cert; }
  Slot slot() const override { return Slot::kSecondary; }
  SlotStore* store() override { return nullptr; }
  void reconnect_after_answer(bool reprovision) override { reconnects += reprovision ? 10 : 1; }
  int reconnects = 0;

 private:
  DeviceId m_id;
  CertInfo m_cert;
};

class Methods : public ::testing::Test {
 protected:
  MethodRegistry registry;
  FakeDevice device;
  void SetUp() override { add_builtin_methods(registry); }
  Poco::JSON::Object::Ptr body(const MethodResponse& r) {
    Poco::JSON::Parser parser;
    return parser.parse(r.payload).extract<Poco::JSON::Object::Ptr>();
  }
};

TEST_F(Methods, PingEchoesAnyJsonValue) {
  for (const std::string payload : {"{\"a\":[1,2]}", "42", "\"text\"", "null", "[]", "true"}) {
    const auto r = registry.dispatch(device, "ping", payload);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.payload, payload);
  }
  EXPECT_EQ(registry.dispatch(device, "ping", "").payload, "null");
}

TEST_F(Methods, NonJsonIs400AndUnknownNameIs501) {
  for (const std::string bad : {"{", "1,2", "1] [2", "nul", "{\"a\":1} x"}) {
    const auto r = registry.dispatch(device, "ping", bad);
    EXPECT_EQ(r.status, 400) << bad;
    EXPECT_NE(body(r)->getValue<std::string>("message").find("not JSON"), std::string::npos);
  }
  const auto r = registry.dispatch(device, "reboot", "{}");
  EXPECT_EQ(r.status, 501);
  EXPECT_EQ(body(r)->getValue<std::string>("message"),
            "method 'reboot' is not implemented by dev-1");
}

// Found by fuzz_method_payload: the parser's message quoted the byte it refused, and Poco writes
// strings byte for byte, so the 400 answer itself was not JSON (not UTF-8).
TEST_F(Methods, AnAnswerToAPayloadThatIsNotUtf8IsStillJson) {
  const auto r = registry.dispatch(device, "ping", "{\"a\":[\xCF\xD3{\"b\":null}]}");
  EXPECT_EQ(r.status, 400);
  const std::string message = body(r)->getValue<std::string>("message");
  EXPECT_NE(message.find("not JSON"), std::string::npos) << message;
  EXPECT_NE(message.find("\xEF\xBF\xBD"), std::string::npos) << message;
}

TEST_F(Methods, GetCertificateDescribesTheCertificateInUse) {
  const auto b = body(registry.dispatch(device, "getCertificate", "null"));
  EXPECT_EQ(b->getValue<std::string>("sha256"), "AB");
  EXPECT_EQ(b->getValue<std::string>("serial"), "01");
  EXPECT_EQ(b->getValue<std::string>("notAfter"), "2027-01-15T08:00:00Z");
  EXPECT_EQ(b->getValue<std::string>("slot"), "secondary");
}

TEST_F(Methods, AThrowingHandlerAnswers500AndAddedHandlersAreCalled) {
  registry.add("explode", [](MethodContext&, const Poco::Dynamic::Var&) -> MethodResponse {
    throw std::runtime_error("boom");
  });
  registry.add("rotate", [](MethodContext& d, const Poco::Dynamic::Var& p) {
    d.reconnect_after_answer(p.extract<Poco::JSON::Object::Ptr>()->getValue<bool>("dps"));
    return MethodResponse{202, "{}"};
  });
  const auto r = registry.dispatch(device, "explode", "{}");
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(body(r)->getValue<std::string>("message").find("boom"), std::string::npos);
  EXPECT_EQ(registry.dispatch(device, "rotate", R"({"dps":true})").status, 202);
  EXPECT_EQ(device.reconnects, 10);
}

}  // namespace
}  // namespace fleetsign::device
