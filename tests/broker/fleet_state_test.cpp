// The registry's fleet state (schema v4: device sessions and twins), twin documents (merge patch),
// and the plugin's topic grammar — without a broker.
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/twin_doc.hpp"
#include "fleetsign/error.hpp"
#include "test_home.hpp"
#include "topics.hpp"
#include "watcher.hpp"

namespace fleetsign {
namespace {

using engine::DeviceSession;
using engine::Registry;
using engine::ReportedTwin;
using testing::error_from;

class FleetState : public ::testing::Test {
 protected:
  testing::TempDir dir;
  std::unique_ptr<Registry> reg = Registry::open(dir.path() / "registry.db");
};

TEST_F(FleetState, TwinOfAnUnknownDeviceIsEmptyAtVersionOne) {
  const auto t = reg->twin("dev-1");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->desired, "{}");
  EXPECT_EQ(t->reported, "{}");
  EXPECT_EQ(t->desired_version, 1);
  EXPECT_EQ(t->reported_version, 1);
}

TEST_F(FleetState, SetDesiredMergesBumpsTheVersionAndAudits) {
  EXPECT_EQ(reg->set_desired("dev-1", R"({"fw":"1.0","cfg":{"a":1,"b":2}})"), 2);
  EXPECT_EQ(reg->set_desired("dev-1", R"({"cfg":{"a":null,"c":3},"fw":"1.1"})"), 3);
  const auto t = reg->twin("dev-1");
  EXPECT_EQ(t->desired, R"({"cfg":{"b":2,"c":3},"fw":"1.1"})");
  EXPECT_EQ(t->desired_version, 3);
  EXPECT_EQ(t->reported_version, 1);
  const auto log = reg->audit_after(0, 10);
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[1].action, "twin.set-desired");
  EXPECT_EQ(log[1].subject, "dev-1");
  EXPECT_EQ(log[1].detail, R"({"version":3,"patch":{"cfg":{"a":null,"c":3},"fw":"1.1"}})");
  EXPECT_EQ(reg->change_mark(), log[1].id);
  EXPECT_EQ(reg->audit_after(log[1].id, 10).size(), 0u);
}

TEST_F(FleetState, BadPatchesAreRefusedAndChangeNothing) {
  EXPECT_EQ(error_from([&] { reg->set_desired("dev-1", "[1,2]"); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_from([&] { reg->set_desired("dev-1", "{nope"); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_from([&] { reg->set_desired("dev-1", R"({"$version":4})"); }).code(),
            ErrorCode::kInvalidArgument);
  const std::string big = R"({"x":")" + std::string(engine::kTwinDocLimit, 'a') + R"("})";
  EXPECT_EQ(error_from([&] { reg->set_desired("dev-1", big); }).code(), ErrorCode::kInputTooLarge);
  EXPECT_EQ(reg->twin("dev-1")->desired_version, 1);
  EXPECT_EQ(reg->change_mark(), 0);
}

TEST_F(FleetState, ReportedIsStoredAtItsVersionAndNeverGoesBack) {
  EXPECT_EQ(reg->apply_reported("dev-1", R"({"a":1})"), 2);
  const std::vector<ReportedTwin> batch{
      {"dev-1", R"({"a":2})", 4}, {"dev-2", R"({"b":1})", 2}, {"dev-1", R"({"a":3})", 3}};
  reg->store_reported(batch);
  EXPECT_EQ(reg->twin("dev-1")->reported, R"({"a":2})");
  EXPECT_EQ(reg->twin("dev-1")->reported_version, 4);
  EXPECT_EQ(reg->twin("dev-2")->reported_version, 2);
  reg->set_desired("dev-2", R"({"d":1})");
  reg->store_reported(std::vector<ReportedTwin>{{"dev-2", R"({"b":2})", 3}});
  EXPECT_EQ(reg->twin("dev-2")->desired, R"({"d":1})") << "a reported write keeps desired";
  EXPECT_EQ(reg->change_mark(), 1) << "reported writes are not audited";
}

TEST_F(FleetState, SessionsRecordTheCertificateAndResetAtStart) {
  const std::vector<DeviceSession> s{{"dev-2", true, "hub", "AA", "01", 100, 0},
                                     {"dev-1", true, "dps", "BB", "02", 100, 0},
                                     {"dev-1", false, "dps", "BB", "02", 100, 105},
                                     {"dev-1", true, "hub", "CC", "03", 106, 0}};
  reg->record_sessions(s);
  auto live = reg->connected_devices();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[0].device_id, "dev-1");
  EXPECT_EQ(live[0].mode, "hub");
  EXPECT_EQ(live[0].cert_sha256, "CC");
  EXPECT_EQ(live[1].cert_serial, "01");
  EXPECT_EQ(reg->mark_all_disconnected(200), 2);
  EXPECT_TRUE(reg->connected_devices().empty());
  EXPECT_EQ(reg->mark_all_disconnected(201), 0);
}

// The watcher's reading of the audit log: a job's own rows (job.create, job.<state>) change no
// admission, so they never make the broker re-check its live sessions; an enrollment row does.
TEST_F(FleetState, JobRowsAreNotAdmissionChanges) {
  std::int64_t mark = reg->change_mark();
  engine::JobRecord job;
  job.id = "j1";
  job.kind = "device-rollover";
  reg->create_job(job, {});
  reg->set_job_state("j1", "paused", 0);
  reg->set_desired("dev-1", R"({"a":1})");
  auto changes = broker::read_changes(*reg, &mark);
  EXPECT_FALSE(changes.admission);
  ASSERT_EQ(changes.desired.size(), 1u);
  EXPECT_EQ(changes.desired[0].device_id, "dev-1");
  EXPECT_EQ(mark, reg->change_mark());
  reg->set_job_state("j1", "canceled", 5);
  reg->audit("enrollment.individual.set-slot", "dev-1", "{}");
  changes = broker::read_changes(*reg, &mark);
  EXPECT_TRUE(changes.admission);
  EXPECT_EQ(mark, reg->change_mark());
}

TEST(TwinDoc, MergePatchFollowsRfc7386) {
  EXPECT_EQ(engine::merge_patch(R"({"a":"b"})", R"({"a":"c"})", "t"), R"({"a":"c"})");
  EXPECT_EQ(engine::merge_patch(R"({"a":"b"})", R"({"b":"c"})", "t"), R"({"a":"b","b":"c"})");
  EXPECT_EQ(engine::merge_patch(R"({"a":"b","b":"c"})", R"({"a":null})", "t"), R"({"b":"c"})");
  EXPECT_EQ(engine::merge_patch(R"({"a":["b"]})", R"({"a":"c"})", "t"), R"({"a":"c"})");
  EXPECT_EQ(engine::merge_patch(R"({"a":"foo"})", R"({"a":{"b":"c","d":null}})", "t"),
            R"({"a":{"b":"c"}})");
  EXPECT_EQ(engine::merge_patch("{}", R"({"a":{"bb":{"ccc":null}}})", "t"), R"({"a":{"bb":{}}})");
  EXPECT_EQ(error_from([] { engine::merge_patch("{}", R"({"a":{"$b":1}})", "dev"); }).code(),
            ErrorCode::kInvalidArgument);
  // Objects inside arrays too (the review's {"a":[{"$x":1}]}), at any depth.
  EXPECT_EQ(error_from([] { engine::merge_patch("{}", R"({"a":[{"$x":1}]})", "dev"); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(
      error_from([] { engine::merge_patch("{}", R"({"a":[1,[{"b":{"$x":1}}]]})", "dev"); }).code(),
      ErrorCode::kInvalidArgument);
  EXPECT_EQ(engine::merge_patch("{}", R"({"a":[{"x":"$y"}]})", "t"), R"({"a":[{"x":"$y"}]})");
}

// Found by fuzz_twin_payload: the broker answers a refused PATCH with {"message": what()}, and
// what() quoted the byte the parser refused, so the answer was not JSON (not UTF-8).
TEST(TwinDoc, APatchThatIsNotUtf8IsRefusedWithAMessageThatMakesJson) {
  const Error e = error_from([] { engine::merge_patch("{}", "{\"a\":\xCF}", "dev-1"); });
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  const std::string answer = engine::json_object({{"message", std::string(e.what())}});
  Poco::JSON::Parser parser;
  EXPECT_NO_THROW(parser.parse(answer)) << answer;
  EXPECT_NE(answer.find("\xEF\xBF\xBD"), std::string::npos) << answer;
}

TEST(Topics, ServiceCallsAreParsedAndBoundsChecked) {
  using K = broker::Request::Kind;
  const std::string rid = "0123456789abcdef0123456789abcdef";
  // A Request's fields are views into the topic (topics.hpp): the topic outlives them.
  std::string topic = "$fleetsign/methods/POST/dev-1/reboot/?$rid=" + rid + "&$ct=10&$rt=20";
  auto r = broker::parse_request(topic);
  EXPECT_EQ(r.kind, K::kMethodCall);
  EXPECT_EQ(r.device_id, "dev-1");
  EXPECT_EQ(r.method, "reboot");
  EXPECT_EQ(r.connect_timeout_s, 10);
  EXPECT_EQ(r.response_timeout_s, 20);
  topic = "$fleetsign/methods/POST/dev-1/reboot/?$rid=" + rid + "&$rt=0";
  r = broker::parse_request(topic);
  EXPECT_EQ(r.kind, K::kMalformed);
  EXPECT_EQ(r.rid, rid) << "a malformed call with a good rid can be answered 400";
  topic = "$fleetsign/methods/POST/dev-1/re/boot/?$rid=" + rid;
  r = broker::parse_request(topic);
  EXPECT_EQ(r.kind, K::kMalformed);
  topic = "$fleetsign/methods/POST/dev-1/reboot/?$rid=ABC";
  r = broker::parse_request(topic);
  EXPECT_EQ(r.kind, K::kMalformed);
  EXPECT_TRUE(r.rid.empty());
  topic = "$fleetsign/methods/POST/dev-1/reboot/?$rid=" + rid + "&$rid=" + rid;
  r = broker::parse_request(topic);
  EXPECT_EQ(r.kind, K::kMalformed) << "a repeated key";
}

TEST(Topics, DeviceTopicsAreParsedAndHostileRidsRefused) {
  using K = broker::Request::Kind;
  EXPECT_EQ(broker::parse_request("$iothub/twin/GET/?$rid=7").kind, K::kTwinGet);
  EXPECT_EQ(broker::parse_request("$iothub/twin/PATCH/properties/reported/?$rid=a-1").kind,
            K::kTwinReported);
  EXPECT_EQ(broker::parse_request("$iothub/twin/GET/?$rid=a/b").kind, K::kMalformed);
  EXPECT_EQ(broker::parse_request("$iothub/twin/GET/?$rid=" + std::string(65, 'a')).kind,
            K::kMalformed);
  const auto r =
      broker::parse_request("$iothub/methods/res/501/?$rid=0123456789abcdef0123456789abcdef");
  EXPECT_EQ(r.kind, K::kMethodResponse);
  EXPECT_EQ(r.status, 501);
  EXPECT_EQ(broker::parse_request("$iothub/methods/res/20x/?$rid=1").kind, K::kMalformed);
  EXPECT_EQ(broker::parse_request("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&"
                                  "operationId=4.abc")
                .operation_id,
            "4.abc");
  EXPECT_EQ(broker::parse_request("devices/x/messages/events/").kind, K::kNone);
  EXPECT_EQ(broker::parse_request("$iothub/anything").kind, K::kMalformed);
  EXPECT_FALSE(broker::device_may_subscribe("#", false));
  EXPECT_FALSE(broker::device_may_subscribe("$iothub/#", false));
  EXPECT_TRUE(broker::device_may_subscribe("$iothub/methods/POST/#", false));
  EXPECT_FALSE(broker::device_may_subscribe("$iothub/methods/POST/#", true));
}

}  // namespace
}  // namespace fleetsign
