// PIN files the real `fleetsign` binary refuses before it logs in: a refused PIN file must cost
// no login attempt at the token. SoftHSM2 sets CKF_USER_PIN_COUNT_LOW ("user PIN count low" in
// pkcs11-tool's listing, a tool we did not write) after a failed login and clears it after a good
// one, so the flag tells whether an attempt was spent.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <string>

#include "test_home.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSoftHsmModule = "/usr/lib/softhsm/libsofthsm2.so";

std::string quoted(const std::string& s) { return "'" + s + "'"; }

class PinFileCli : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";

  void SetUp() override {
    testing::write_file(dir.path() / "pin", std::string(testing::kUserPin) + "\n");
    testing::write_file(dir.path() / "so-pin", std::string(testing::kSoPin) + "\n");
    ASSERT_EQ(fleetsign("init --so-pin-file " + path("so-pin") + " --pin-file " + path("pin")), 0);
  }

  std::string path(const std::string& name) const { return (dir.path() / name).string(); }

  // Runs `fleetsign --home HOME ARGS` with no PIN in the environment; a runaway read is cut off.
  int fleetsign(const std::string& args, std::string* out = nullptr) const {
    return testing::run("env -u FLEETSIGN_PIN -u FLEETSIGN_SO_PIN timeout 60 " +
                            quoted(testing::fleetsign_bin()) + " --home " + quoted(home.string()) +
                            " " + args + " </dev/null",
                        out);
  }

  std::string token_flags() const {
    std::string out;
    testing::run("SOFTHSM2_CONF=" + quoted((home / "softhsm2.conf").string()) +
                     " pkcs11-tool --module " + kSoftHsmModule + " --list-token-slots",
                 &out);
    return out;
  }

  bool login_attempt_spent() const {
    return token_flags().find("user PIN count low") != std::string::npos;
  }
};

std::string error_code_of(const std::string& out) {
  const auto brace = out.find('{');
  if (brace == std::string::npos) {
    return "(no JSON in: " + out + ")";
  }
  const auto end = out.find('\n', brace);  // stderr follows stdout's one JSON line
  Poco::JSON::Parser parser;
  auto obj = parser.parse(out.substr(brace, end - brace)).extract<Poco::JSON::Object::Ptr>();
  return obj->getObject("error")->getValue<std::string>("code");
}

TEST_F(PinFileCli, TheFlagThisTestReadsIsSetByAWrongPin) {
  // Self-test of the checker: a wrong PIN does spend an attempt, and the flag shows it.
  testing::write_file(path("wrong"), "wrong-pin-9876\n");
  std::string out;
  EXPECT_EQ(
      fleetsign("ca create-root --name r --subject /CN=R --json --pin-file " + path("wrong"), &out),
      4);
  EXPECT_TRUE(login_attempt_spent()) << token_flags();
}

TEST_F(PinFileCli, DirectoryDevNullEmptyAndDevZeroAreRefusedWithoutALoginAttempt) {
  fs::create_directory(dir.path() / "pin-dir");
  testing::write_file(path("empty"), "");
  testing::write_file(path("newline-first"), "\n" + std::string(testing::kUserPin) + "\n");
  struct Case {
    std::string file;
    int status;
    std::string code;
  };
  const Case cases[] = {
      {path("pin-dir"), 8, "io"},          {"/dev/null", 4, "pin_missing"},
      {path("empty"), 4, "pin_missing"},   {path("newline-first"), 4, "pin_missing"},
      {"/dev/zero", 2, "input_too_large"},
  };
  // More rounds than any token's retry limit: none of them may count.
  for (int round = 0; round < 4; ++round) {
    for (const Case& c : cases) {
      SCOPED_TRACE(c.file);
      std::string out;
      EXPECT_EQ(
          fleetsign("ca create-root --name r --subject /CN=R --json --pin-file " + c.file, &out),
          c.status)
          << out;
      EXPECT_EQ(error_code_of(out), c.code) << out;
      ASSERT_FALSE(login_attempt_spent()) << "a login attempt was spent\n" << token_flags();
    }
  }
  EXPECT_EQ(fleetsign("ca create-root --name r --subject /CN=R --pin-file " + path("pin")), 0)
      << "the right PIN no longer works";
}

}  // namespace
}  // namespace fleetsign
