// `fleetsign init --module M --token-label L` with a token that already exists, as with a real
// HSM whose administrators set it up (issue 7, hole 15). SoftHSM2 with a token store of the
// test's own, made by softhsm2-util (not by fleetsign), plays the HSM: fleetsign must adopt the
// token with the user PIN alone and never re-initialise it; a new token is made only with
// --init-token and the SO PIN. pkcs11-tool, a tool we did not write, checks the token.
#include <gtest/gtest.h>

#include <string>

#include "test_home.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;

constexpr const char* kModule = "/usr/lib/softhsm/libsofthsm2.so";
constexpr const char* kHsmUserPin = "hsm-user-1";
constexpr const char* kHsmSoPin = "hsm-so-1";

std::string quoted(const std::string& s) { return "'" + s + "'"; }

class AdoptToken : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path conf = dir.path() / "softhsm2.conf";

  void SetUp() override {
    fs::create_directory(dir.path() / "hsm-tokens");
    testing::write_file(conf, "directories.tokendir = " + (dir.path() / "hsm-tokens").string() +
                                  "\nobjectstore.backend = file\nlog.level = ERROR\n");
    testing::write_file(dir.path() / "pin", std::string(kHsmUserPin) + "\n");
    testing::write_file(dir.path() / "so-pin", std::string(kHsmSoPin) + "\n");
    testing::write_file(dir.path() / "wrong-pin", "not-the-pin\n");
    // The administrators' token, with a key of theirs in it.
    ASSERT_EQ(shell("softhsm2-util --init-token --free --label hsm1 --so-pin " +
                    std::string(kHsmSoPin) + " --pin " + kHsmUserPin),
              0);
    ASSERT_EQ(pkcs11_tool("--login --pin " + std::string(kHsmUserPin) +
                          " --keypairgen --key-type EC:prime256v1 --label admins-key"),
              0);
  }

  int shell(const std::string& command, std::string* out = nullptr) const {
    return testing::run("SOFTHSM2_CONF=" + quoted(conf.string()) + " " + command, out);
  }
  int pkcs11_tool(const std::string& args, std::string* out = nullptr) const {
    return shell("pkcs11-tool --module " + std::string(kModule) + " " + args, out);
  }
  std::string token_listing() const {
    std::string out;
    pkcs11_tool("--token-label hsm1 --login --pin " + std::string(kHsmUserPin) + " --list-objects",
                &out);
    return out;
  }
  // `fleetsign --home HOME ARGS` with the HSM's SoftHSM2 config and no PIN variables.
  int fleetsign(const fs::path& home, const std::string& args, std::string* out = nullptr) const {
    return shell("env -u FLEETSIGN_PIN -u FLEETSIGN_SO_PIN " + quoted(testing::fleetsign_bin()) +
                     " --home " + quoted(home.string()) + " " + args + " </dev/null",
                 out);
  }
  std::string pin_file() const { return (dir.path() / "pin").string(); }
  std::string adopt_args(const std::string& label = "hsm1") const {
    return "init --module " + std::string(kModule) + " --token-label " + quoted(label);
  }
};

TEST_F(AdoptToken, InitWithModuleAdoptsTheExistingTokenWithTheUserPinAloneAndKeepsItsObjects) {
  const fs::path home = dir.path() / "home";
  std::string out;
  ASSERT_EQ(fleetsign(home, adopt_args() + " --json --pin-file " + pin_file(), &out), 0) << out;
  EXPECT_NE(out.find("\"adopted_token\":true"), std::string::npos) << out;
  EXPECT_NE(out.find("ec-p256"), std::string::npos)
      << "should say which CA keys it offers: " << out;
  EXPECT_NE(token_listing().find("admins-key"), std::string::npos)
      << "the token was re-initialised: its administrators' key is gone";
  // The adopted token signs: a root CA made in it, its key next to the administrators' one.
  ASSERT_EQ(
      fleetsign(home, "ca create-root --name root --subject /CN=HSM-Root --pin-file " + pin_file(),
                &out),
      0)
      << out;
  const std::string listing = token_listing();
  EXPECT_NE(listing.find("admins-key"), std::string::npos) << listing;
  EXPECT_NE(listing.find("label:      root"), std::string::npos) << listing;
  // A second home adopts the same token: it exists, so again nothing is initialised.
  ASSERT_EQ(fleetsign(dir.path() / "home2", adopt_args() + " --pin-file " + pin_file(), &out), 0)
      << out;
  EXPECT_NE(token_listing().find("label:      root"), std::string::npos);
}

TEST_F(AdoptToken, UnknownLabelIsTokenNotFoundListingTheLabelsAndMakesNoHome) {
  const fs::path home = dir.path() / "home";
  std::string out;
  EXPECT_EQ(fleetsign(home, adopt_args("no-such-token") + " --json --pin-file " + pin_file(), &out),
            4);
  EXPECT_NE(out.find("token_not_found"), std::string::npos) << out;
  EXPECT_NE(out.find("'hsm1'"), std::string::npos) << "should list the labels there: " << out;
  EXPECT_NE(out.find("--init-token"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(home / "fleetsign.json"));
}

TEST_F(AdoptToken, WrongUserPinIsPinIncorrectAndMakesNoHome) {
  const fs::path home = dir.path() / "home";
  std::string out;
  EXPECT_EQ(
      fleetsign(home, adopt_args() + " --json --pin-file " + (dir.path() / "wrong-pin").string(),
                &out),
      4);
  EXPECT_NE(out.find("pin_incorrect"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(home / "fleetsign.json"));
}

TEST_F(AdoptToken, AnSoPinForAnExistingTokenIsAUsageErrorNotAReinitialisation) {
  std::string out;
  EXPECT_EQ(fleetsign(dir.path() / "home",
                      adopt_args() + " --pin-file " + pin_file() + " --so-pin-file " +
                          (dir.path() / "so-pin").string(),
                      &out),
            2)
      << out;
  EXPECT_NE(token_listing().find("admins-key"), std::string::npos);
}

TEST_F(AdoptToken, InitTokenRefusesAnExistingLabelAndLeavesTheTokenAlone) {
  std::string out;
  EXPECT_EQ(fleetsign(dir.path() / "home",
                      adopt_args() + " --init-token --json --pin-file " + pin_file() +
                          " --so-pin-file " + (dir.path() / "so-pin").string(),
                      &out),
            2)
      << out;
  EXPECT_NE(out.find("already_exists"), std::string::npos) << out;
  EXPECT_NE(token_listing().find("admins-key"), std::string::npos);
}

TEST_F(AdoptToken, InitTokenMakesANewTokenInAFreeSlotWithTheSoPin) {
  const fs::path home = dir.path() / "home";
  std::string out;
  ASSERT_EQ(fleetsign(home,
                      adopt_args("fresh") + " --init-token --pin-file " + pin_file() +
                          " --so-pin-file " + (dir.path() / "so-pin").string(),
                      &out),
            0)
      << out;
  ASSERT_EQ(pkcs11_tool("--list-token-slots", &out), 0);
  EXPECT_NE(out.find("fresh"), std::string::npos) << out;
  EXPECT_NE(out.find("hsm1"), std::string::npos) << out;
  EXPECT_EQ(
      fleetsign(home, "ca create-root --name root --subject /CN=R --pin-file " + pin_file(), &out),
      0)
      << out;
}

}  // namespace
}  // namespace fleetsign
