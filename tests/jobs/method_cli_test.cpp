// `fleetsign method invoke` and `fleetsign fleet backend`, run as the real binary against a real
// home, a real mosquitto (with the responder standing in for plugin and devices) and the local
// IoT Hub contract server. Every invoke runs with no PIN in its environment while this test holds
// the home lock: a method call must neither lock the home nor open the token.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include "cli_process.hpp"
#include "fake_iothub.hpp"
#include "fleetsign/engine/home_lock.hpp"
#include "jobs_support.hpp"
#include "test_home.hpp"

namespace fleetsign::testing {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int status = -1;
  std::string out, err;
};

// fleetsign --home HOME ARGS…, without FLEETSIGN_PIN, stdin closed; `env` is prepended.
CliRun fleetsign(const fs::path& home, const std::vector<std::string>& args,
                 const std::string& env = "") {
  static int n = 0;
  const fs::path err = fs::temp_directory_path() /
                       ("method-cli-err-" + std::to_string(getpid()) + "-" + std::to_string(++n));
  std::string cmd = "( env -u FLEETSIGN_PIN -u FLEETSIGN_IOTHUB_CONNECTION_STRING " + env + " " +
                    shell_quoted(fleetsign_bin()) + " --home " + shell_quoted(home.string());
  for (const auto& a : args) cmd += " " + shell_quoted(a);
  cmd += " </dev/null 2>" + shell_quoted(err.string()) + " )";  // run() adds its own 2>&1
  CliRun r;
  r.status = run(cmd, &r.out);
  r.err = read_file(err);
  fs::remove(err);
  return r;
}

Poco::JSON::Object::Ptr object(const std::string& text) {
  return Poco::JSON::Parser().parse(text).extract<Poco::JSON::Object::Ptr>();
}

class MethodCliTest : public ::testing::Test {
 protected:
  TempDir dir;
  fs::path home = dir.path() / "home";
  TestPki pki = make_pki(dir.path() / "pki");

  void SetUp() override {
    const auto init = run_cli(home, {"init"});
    ASSERT_EQ(init.status, 0) << init.output;
  }
};

TEST_F(MethodCliTest, BrokerBackendMapsAnswersToOutputAndExitStatuses) {
  Mosquitto broker(pki, dir.path() / "broker");
  Responder responder(pki, broker.port());
  fs::create_directories(home / "broker");
  for (const char* f : {"ca.pem", "service.crt", "service.key"}) {
    fs::copy_file(pki.file(f), home / "broker" / f);
  }
  write_file(home / "broker" / "broker.json",
             R"({"port":)" + std::to_string(broker.port()) + R"(,"hosts":["localhost"]})");
  const auto lock = engine::HomeLock::acquire(home, false);

  const CliRun ok = fleetsign(home, {"method", "invoke", "ok-1", "reboot", "--payload",
                                     R"({"a":1})", "--timeout", "9", "--json"});
  ASSERT_EQ(ok.status, 0) << ok.out << ok.err;
  const auto answer = object(ok.out);
  EXPECT_EQ(answer->getValue<int>("status"), 200);
  EXPECT_EQ(answer->getObject("payload")->getValue<std::string>("device"), "ok-1");
  EXPECT_EQ(answer->getObject("payload")->getValue<int>("rt"), 9);
  EXPECT_EQ(answer->getObject("payload")->getObject("payload")->getValue<int>("a"), 1);

  const CliRun text = fleetsign(home, {"method", "invoke", "ok-2", "ping"});
  EXPECT_EQ(text.status, 0);
  EXPECT_EQ(text.out.rfind("status 200\n{", 0), 0u) << text.out;

  const CliRun offline = fleetsign(home, {"method", "invoke", "offline-1", "ping"});
  EXPECT_EQ(offline.status, 9) << offline.err;
  EXPECT_EQ(offline.out.rfind("status 404\n", 0), 0u) << offline.out;
  const CliRun silent = fleetsign(home, {"method", "invoke", "silent-1", "ping", "--timeout", "1"});
  EXPECT_EQ(silent.status, 10) << silent.err;
  const CliRun not_implemented =
      fleetsign(home, {"method", "invoke", "nomethod-1", "ping", "--json"});
  EXPECT_EQ(not_implemented.status, 11);
  EXPECT_EQ(object(not_implemented.out)->getValue<int>("status"), 501);

  const std::size_t before = responder.requests().size();
  const CliRun bad_payload =
      fleetsign(home, {"method", "invoke", "ok-1", "ping", "--payload", "{a"});
  EXPECT_EQ(bad_payload.status, 2);
  EXPECT_NE(bad_payload.err.find("--payload is not JSON"), std::string::npos) << bad_payload.err;
  const CliRun bad_device = fleetsign(home, {"method", "invoke", "a/b", "ping"});
  EXPECT_EQ(bad_device.status, 2);
  EXPECT_NE(bad_device.err.find("DEVICE"), std::string::npos) << bad_device.err;
  const CliRun bad_method = fleetsign(home, {"method", "invoke", "ok-1", "a+b"});
  EXPECT_EQ(bad_method.status, 2);
  const CliRun bad_timeout = fleetsign(home, {"method", "invoke", "ok-1", "m", "--timeout", "0"});
  EXPECT_EQ(bad_timeout.status, 2);
  EXPECT_EQ(responder.requests().size(), before);  // none of those was sent

  broker.stop();
  const CliRun gone = fleetsign(home, {"method", "invoke", "ok-1", "ping", "--json"});
  EXPECT_EQ(gone.status, 12) << gone.err;
  EXPECT_EQ(object(gone.out)->getObject("error")->getValue<std::string>("code"),
            "service_unavailable");
}

TEST_F(MethodCliTest, WithoutABrokerSetUpTheCommandSaysWhatToRun) {
  const CliRun r = fleetsign(home, {"method", "invoke", "ok-1", "ping"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("fleetsign broker init"), std::string::npos) << r.err;
}

TEST_F(MethodCliTest, IotHubBackendFromAFileOrTheEnvironment) {
  FakeIotHub hub(pki, "service", "cli-test-key");
  const fs::path secret = dir.path() / "hub.conn";
  write_file(secret, hub.connection_string() + "\n");
  fs::permissions(secret, fs::perms::owner_read | fs::perms::owner_write);
  const auto lock = engine::HomeLock::acquire(home, false);

  const CliRun set = fleetsign(home, {"fleet", "backend", "iothub", "--connection-string-file",
                                      secret.string(), "--ca-file", pki.file("ca.pem").string()});
  ASSERT_EQ(set.status, 0) << set.err;
  const auto config = object(read_file(home / "fleet.json"));
  EXPECT_EQ(config->getValue<std::string>("backend"), "iothub");
  EXPECT_EQ(config->getValue<std::string>("connection_string_file"), secret.string());
  EXPECT_EQ(read_file(home / "fleet.json").find("SharedAccessKey"), std::string::npos);

  const CliRun ok =
      fleetsign(home, {"method", "invoke", "ok-1", "ping", "--payload", "[1,2]", "--json"});
  ASSERT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(object(ok.out)->getObject("payload")->getValue<std::string>("device"), "ok-1");
  const CliRun offline = fleetsign(home, {"method", "invoke", "offline-1", "ping"});
  EXPECT_EQ(offline.status, 9);
  const CliRun silent = fleetsign(home, {"method", "invoke", "silent-1", "ping"});
  EXPECT_EQ(silent.status, 10);

  // From the environment when fleet.json names no file.
  ASSERT_EQ(
      fleetsign(home, {"fleet", "backend", "iothub", "--ca-file", pki.file("ca.pem").string()})
          .status,
      0);
  const CliRun missing = fleetsign(home, {"method", "invoke", "ok-1", "ping"});
  EXPECT_EQ(missing.status, 2);
  EXPECT_NE(missing.err.find("FLEETSIGN_IOTHUB_CONNECTION_STRING"), std::string::npos);
  const CliRun env =
      fleetsign(home, {"method", "invoke", "ok-1", "ping"},
                "FLEETSIGN_IOTHUB_CONNECTION_STRING=" + shell_quoted(hub.connection_string()));
  EXPECT_EQ(env.status, 0) << env.err;
  EXPECT_EQ(hub.requests_for("ok-1"), 2);

  ASSERT_EQ(fleetsign(home, {"fleet", "backend", "broker"}).status, 0);
  EXPECT_EQ(object(read_file(home / "fleet.json"))->getValue<std::string>("backend"), "broker");
}

TEST_F(MethodCliTest, ABadConnectionStringFileIsRefusedWithoutShowingTheKey) {
  const fs::path secret = dir.path() / "bad.conn";
  write_file(secret, "HostName=h.example;SharedAccessKeyName=s;SharedAccessKey=c2VjcmV0LXZhbHVl!");
  const CliRun r =
      fleetsign(home, {"fleet", "backend", "iothub", "--connection-string-file", secret.string()});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("SharedAccessKey is not base64"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(secret.string()), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("c2VjcmV0"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(home / "fleet.json"));
}

}  // namespace
}  // namespace fleetsign::testing
