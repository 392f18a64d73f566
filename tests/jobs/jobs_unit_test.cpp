// Pure parts of the trigger layer: the request checks, the protocol topics, IoT Hub's connection
// string and SAS token (the signature checked against the openssl command line), fleet.json.
#include <gtest/gtest.h>

#include "fleetsign/jobs/fleet_config.hpp"
#include "fleetsign/jobs/iothub_trigger.hpp"
#include "fleetsign/jobs/json_value.hpp"
#include "fleetsign/jobs/revocation.hpp"
#include "fleetsign/jobs/rollover.hpp"
#include "fleetsign/jobs/trigger.hpp"
#include "jobs_support.hpp"
#include "test_home.hpp"
#include "topics.hpp"

namespace fleetsign::testing {
namespace {

using jobs::MethodRequest;
using jobs::ServiceConnectionString;

// "key-for-tests-only" in base64.
constexpr const char* kKey = "a2V5LWZvci10ZXN0cy1vbmx5";
const std::string kGood =
    std::string("HostName=MyHub.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey=") +
    kKey;

// Times on the command line and in the API: RFC 3339 with any offset and a fraction (taken to the
// second below), a date, or unix seconds; anything else is refused naming the option.
TEST(ParseTime, Rfc3339DatesAndUnixSeconds) {
  const std::int64_t t = 1796740376;  // 2026-12-08T14:32:56Z
  for (const char* same :
       {"2026-12-08T14:32:56Z", "2026-12-08t14:32:56z", "2026-12-08T15:32:56+01:00",
        "2026-12-08T09:02:56-05:30", "2026-12-08T14:32:56.999Z", "1796740376"}) {
    EXPECT_EQ(jobs::parse_time(same, "--at"), t) << same;
  }
  EXPECT_EQ(jobs::parse_time("2026-12-08", "--at"), t - (14 * 3600 + 32 * 60 + 56));
  for (const char* bad : {"2026-12-08T14:32:56", "2026-12-08 14:32:56Z", "2026-12-08T24:00:00Z",
                          "2026-02-31", "2026-12-08T14:32:56.Z", "2026-12-08T14:32:56+1:00",
                          "2026-12-08T14:32:56+24:00", "2026-12-08T14:32:60Z", "1969-12-31",
                          "1970-01-01T00:30:00+01:00", "-5", "0x10", "", "2026-12-08T14:32Z"}) {
    try {
      jobs::parse_time(bad, "--issued-between T1");
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << bad;
      EXPECT_NE(std::string(e.what()).find("--issued-between T1"), std::string::npos) << e.what();
    }
  }
}

// A deadline is a duration with its unit or a time; a bare "7" (seconds? days?) is refused, as is
// a time that has passed.
TEST(ParseDeadline, ADurationWithItsUnitOrAFutureTime) {
  const std::int64_t now = 1796740376;  // 2026-12-08T14:32:56Z
  EXPECT_EQ(jobs::parse_deadline("90m", now, "--deadline"), now + 5400);
  EXPECT_EQ(jobs::parse_deadline("7d", now, "--deadline"), now + 7 * 86400);
  EXPECT_EQ(jobs::parse_deadline("2026-12-09T14:32:56Z", now, "--deadline"), now + 86400);
  EXPECT_EQ(jobs::parse_deadline("2026-12-09", now, "--deadline"), now + 34024);
  for (const char* bad : {"7", "0", "0s", "-1d", "2026-12-08T14:32:56Z", "2026-12-01", "7 d",
                          "7days", "", "2026-12-09T14:32:56"}) {
    try {
      jobs::parse_deadline(bad, now, "--deadline");
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--deadline"), std::string::npos) << e.what();
    }
  }
  try {
    jobs::parse_deadline("7", now, "--deadline");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUsage);
    EXPECT_NE(std::string(e.what()).find("7d, 7h, 7m or 7s"), std::string::npos) << e.what();
  }
}

// A worker starts a helper only for a shared job with a task no runner holds in an open wave.
TEST(WantsHelper, OnlyWhenATaskOfAnOpenWaveWaitsForARunner) {
  engine::JobRecord job;
  job.id = "j";
  job.kind = "device-rollover";
  job.state = "running";
  job.params_json = R"({"wave":10})";
  engine::JobShare share;
  share.first_open_seq = 3;
  share.first_unclaimed_seq = 9;
  EXPECT_TRUE(jobs::wants_helper(job, share));
  share.first_unclaimed_seq = 10;  // the next wave: opens when 0..9 have ended
  EXPECT_FALSE(jobs::wants_helper(job, share));
  share.first_open_seq = 12;
  EXPECT_TRUE(jobs::wants_helper(job, share));
  share.first_unclaimed_seq = -1;
  EXPECT_FALSE(jobs::wants_helper(job, share)) << "every open task has a runner";
  share.first_unclaimed_seq = 500;
  job.params_json = "{}";
  EXPECT_TRUE(jobs::wants_helper(job, share)) << "no waves";
  job.state = "paused";
  EXPECT_FALSE(jobs::wants_helper(job, share));
  job.state = "running";
  job.kind = "breach-roll";
  EXPECT_FALSE(jobs::wants_helper(job, share)) << "one certificate: nothing to share";
  job.kind = "incident";
  job.report_json = R"({"phase":"revoked"})";
  EXPECT_FALSE(jobs::wants_helper(job, share)) << "its devices do not move yet";
  job.report_json = R"({"phase":"rotating"})";
  EXPECT_TRUE(jobs::wants_helper(job, share));
}

TEST(CheckRequest, AcceptsIotHubsNamesPayloadsAndTimeouts) {
  EXPECT_EQ(jobs::check_request({device_id("d-1"), "reboot", "null", 30, 0}), std::nullopt);
  EXPECT_EQ(jobs::check_request({device_id("d-1"), "a.b_c-9", R"({"x":[1,2]})", 300, 300}),
            std::nullopt);
  EXPECT_EQ(jobs::check_request({device_id("d-1"), std::string(128, 'm'), "1", 1, 0}),
            std::nullopt);
}

TEST(CheckRequest, RefusesEachBadFieldByName) {
  const auto code = [](MethodRequest r) {
    const auto f = jobs::check_request(r);
    return f ? f->code : ErrorCode::kOk;
  };
  EXPECT_EQ(code({device_id("d"), "", "null", 30, 0}), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code({device_id("d"), std::string(129, 'm'), "null", 30, 0}),
            ErrorCode::kInvalidArgument);
  for (const char* name : {"a/b", "a+b", "a#", "a b", "é"}) {
    EXPECT_EQ(code({device_id("d"), name, "null", 30, 0}), ErrorCode::kInvalidArgument) << name;
  }
  EXPECT_EQ(code({device_id("d"), "m", "{", 30, 0}), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code({device_id("d"), "m", "null", 0, 0}), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code({device_id("d"), "m", "null", 301, 0}), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code({device_id("d"), "m", "null", 30, -1}), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code({device_id("d"), "m", std::string(jobs::kMaxMethodPayload + 1, '1'), 30, 0}),
            ErrorCode::kInputTooLarge);
  const auto f = jobs::check_request({device_id("d-7"), "m", "[1,", 30, 0});
  ASSERT_TRUE(f);
  EXPECT_NE(f->message.find("d-7"), std::string::npos);
}

TEST(JsonValue, AcceptsExactlyOneValueOfAnyKind) {
  for (const char* ok : {"null", "1", "-2.5e3", "\"x\"", "true", "[1]", "{}", " {\"a\":[]} "}) {
    EXPECT_NO_THROW(jobs::parse_json_value(ok)) << ok;
  }
  EXPECT_EQ(jobs::parse_json_value("\"x\"").toString(), "x");
  for (const char* bad : {"", " ", "1,2", "1],[2", "]", "{", "nul", "{\"a\":1} x", "'x'"}) {
    EXPECT_EQ(error_from([&] { jobs::parse_json_value(bad); }).code(), ErrorCode::kInvalidArgument)
        << bad;
  }
}

TEST(Topics, RequestTopicIsTheProtocols) {
  const MethodRequest r{device_id("sensor-0042"), "reboot", "null", 30, 5};
  EXPECT_EQ(jobs::request_topic(r, "00112233445566778899aabbccddeeff"),
            "$fleetsign/methods/POST/sensor-0042/reboot/"
            "?$rid=00112233445566778899aabbccddeeff&$ct=5&$rt=30");
}

TEST(Topics, AnswerTopicParsesOnlyWellFormedAnswers) {
  const std::string rid = "00112233445566778899aabbccddeeff";
  const auto ok = jobs::parse_answer_topic("$fleetsign/methods/res/501/?$rid=" + rid);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 501);
  EXPECT_EQ(ok->rid, rid);
  EXPECT_TRUE(jobs::parse_answer_topic("$fleetsign/methods/res/200/?x=1&$rid=" + rid + "&y=2"));
  // A device may answer any three-digit status; the broker forwards it and the caller sees it.
  const auto odd = jobs::parse_answer_topic("$fleetsign/methods/res/999/?$rid=" + rid);
  ASSERT_TRUE(odd);
  EXPECT_EQ(odd->status, 999);
  for (const std::string& bad : std::vector<std::string>{
           "$fleetsign/methods/res/200/?$rid=" + rid.substr(1),
           "$fleetsign/methods/res/200/?$rid=" + std::string(32, 'A'),
           "$fleetsign/methods/res/099/?$rid=" + rid, "$fleetsign/methods/res/1000/?$rid=" + rid,
           "$fleetsign/methods/res/20/?$rid=" + rid, "$fleetsign/methods/res/200?$rid=" + rid,
           "$fleetsign/methods/res/200/?rid=" + rid, "$iothub/methods/res/200/?$rid=" + rid,
           "$fleetsign/methods/res/200/?$rid=" + rid + "&$rid=" + rid,
           std::string("$fleetsign/methods/res/")}) {
    EXPECT_FALSE(jobs::parse_answer_topic(bad)) << bad;
  }
}

TEST(ServiceConnectionString, ParsesTheThreePartsInAnyOrder) {
  const auto c = ServiceConnectionString::parse(kGood);
  EXPECT_EQ(c.host(), "MyHub.azure-devices.net");
  EXPECT_EQ(c.key_name(), "service");
  EXPECT_EQ(std::string(c.key().begin(), c.key().end()), "key-for-tests-only");
  const auto reordered = ServiceConnectionString::parse(
      std::string("SharedAccessKey=") + kKey + ";HostName=localhost:8443;SharedAccessKeyName=s;");
  EXPECT_EQ(reordered.host(), "localhost:8443");
}

TEST(ServiceConnectionString, RefusesWithTheBadPartNamedAndTheKeyNeverShown) {
  const std::string k = std::string("SharedAccessKey=") + kKey;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "is empty"},
      {"HostName=h;SharedAccessKeyName=s", "missing SharedAccessKey"},
      {"HostName=h;" + k, "missing SharedAccessKeyName"},
      {"SharedAccessKeyName=s;" + k, "missing HostName"},
      {"HostName=h;HostName=g;SharedAccessKeyName=s;" + k, "HostName appears twice"},
      {"HostName=;SharedAccessKeyName=s;" + k, "HostName is empty"},
      {"HostName=https://h.net;SharedAccessKeyName=s;" + k, "not a URL"},
      {"HostName=h_x;SharedAccessKeyName=s;" + k, "HostName contains"},
      {"HostName=h:0;SharedAccessKeyName=s;" + k, "port"},
      {"HostName=h:99999;SharedAccessKeyName=s;" + k, "port"},
      {"HostName=h;SharedAccessKeyName=s p;" + k, "SharedAccessKeyName may hold"},
      {"HostName=h;SharedAccessKeyName=s;SharedAccessKey=abc", "SharedAccessKey is not base64"},
      {"HostName=h;SharedAccessKeyName=s;SharedAccessKey=a=bc", "SharedAccessKey is not base64"},
      {"HostName=h;DeviceId=d;" + k, "device connection string"},
      {"HostName=h;SharedAccessKeyName=s;" + k + ";Extra=1", "unknown part 'Extra'"},
      {"HostName=h;SharedAccessKeyName=s;" + k + ";" + kKey + "x=1", "unknown part part 4"},
      {"HostName=h;SharedAccessKeyName=s;" + std::string(kKey), "part 3 is not Name=Value"},
  };
  for (const auto& [text, expected] : cases) {
    const Error e = error_from([&] { ServiceConnectionString::parse(text); });
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << text;
    const std::string message = e.what();
    EXPECT_NE(message.find("service connection string: "), std::string::npos) << message;
    EXPECT_NE(message.find(expected), std::string::npos) << text << " → " << message;
    EXPECT_EQ(message.find(kKey), std::string::npos) << "the key leaked: " << message;
  }
}

TEST(SasToken, IsIotHubsFormatSignedOverTheEncodedHostAndExpiry) {
  const auto c = ServiceConnectionString::parse(
      std::string("HostName=MyHub.azure-devices.net:8443;SharedAccessKeyName=svc_1;"
                  "SharedAccessKey=") +
      kKey);
  EXPECT_EQ(jobs::url_encode("a-b_c.d~e/f:g+h=i j"), "a-b_c.d~e%2Ff%3Ag%2Bh%3Di%20j");
  const std::string token = jobs::sas_token(c, 1893456000);
  const std::string sr = "myhub.azure-devices.net%3A8443";  // lower-case resource, encoded
  const std::string prefix = "SharedAccessSignature sr=" + sr + "&sig=";
  ASSERT_EQ(token.rfind(prefix, 0), 0u) << token;
  const std::string suffix = "&se=1893456000&skn=svc_1";
  ASSERT_EQ(token.substr(token.size() - suffix.size()), suffix) << token;
  const std::string sig = token.substr(prefix.size(), token.size() - prefix.size() - suffix.size());
  // The signature, computed by a tool we did not write: HMAC-SHA256 keyed with the decoded key
  // over "{sr}\n{se}", base64, then url-encoded.
  std::string expected;
  ASSERT_EQ(run("printf '%s\\n%s' '" + sr +
                    "' 1893456000 | openssl dgst -sha256 -mac HMAC "
                    "-macopt key:key-for-tests-only -binary | openssl base64 -A",
                &expected),
            0);
  while (!expected.empty() && (expected.back() == '\n' || expected.back() == '\r')) {
    expected.pop_back();
  }
  EXPECT_EQ(sig, jobs::url_encode(expected));
  EXPECT_NE(sig.find('%'), std::string::npos) << "base64 '=' padding is encoded: " << sig;
}

TEST(FleetConfig, DefaultsToTheBrokerAndRoundTrips) {
  TempDir home;
  EXPECT_EQ(jobs::load_fleet_config(home.path()).backend, jobs::Backend::kBroker);
  jobs::FleetConfig c;
  c.backend = jobs::Backend::kIotHub;
  c.connection_string_file = "/etc/fleetsign/hub.conn";
  c.ca_file = "ca.pem";
  jobs::save_fleet_config(home.path(), c);
  const auto back = jobs::load_fleet_config(home.path());
  EXPECT_EQ(back.backend, jobs::Backend::kIotHub);
  EXPECT_EQ(back.connection_string_file, c.connection_string_file);
  EXPECT_EQ(back.ca_file, c.ca_file);
}

TEST(FleetConfig, RefusesUnknownFieldsAndBackends) {
  const auto code = [](const std::string& text) {
    return error_from([&] { jobs::parse_fleet_config(text, "fleet.json"); }).code();
  };
  EXPECT_EQ(code(R"({"backend":"mqtt"})"), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code(R"({"backend":"iothub","conection_string_file":"x"})"),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(code(R"({"backend":"broker","connection_string_file":"x"})"),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(code(R"([1])"), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code(R"({"backend":3})"), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code("{"), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace fleetsign::testing
