// Holes an outside review found after the first round of issue 7's fixes, each through the real
// binary: a batch ID used as a path, outputs written into the home itself, validity beyond what
// X.509 time can say, output on a full stdout reported as success, control characters in printed
// fields.
#include <gtest/gtest.h>

#include <fstream>

#include "enrollment_support.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using testing::quoted;

class ReviewEdges : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";
  testing::Binary bin{home};

  void SetUp() override {
    bin.ok("init");
    bin.ok("ca create-root --name root --subject " + quoted("/CN=Review Root"));
    bin.ok("ca create-intermediate --name int --issuer root --days 3000 --subject " +
           quoted("/CN=Review Int"));
  }
};

TEST_F(ReviewEdges, ABatchIdThatIsAPathOrHoldsANewlineIsRefusedAndNothingOutsideOutIsTouched) {
  const fs::path victim = dir.path() / "victim";
  fs::create_directories(victim / "x" / "y");
  { std::ofstream(victim / "important.txt") << "keep me\n"; }
  for (const std::string& id :
       std::vector<std::string>{"../../../..", "/tmp/x", "a\nb", std::string(65, 'b')}) {
    const auto o = bin.run("issue --ca int --generate 1 --id-pattern 'bf-{03}' --batch " +
                           quoted(id) + " --out " + quoted((victim / "x" / "y" / "o").string()));
    EXPECT_EQ(o.status, 2) << id << "\n" << o.err;
    EXPECT_NE(o.err.find("batch ID"), std::string::npos) << o.err;
  }
  EXPECT_TRUE(fs::exists(victim / "important.txt"));
  EXPECT_EQ(bin.ok("batch list --json").out.find("bf-"), std::string::npos);
}

TEST_F(ReviewEdges, NoOutputGoesIntoTheHomeItself) {
  const auto registry_size = fs::file_size(home / "registry.db");
  for (const std::string cmd : {"ca export root --out " + quoted((home / "registry.db").string()),
                                "export dps --out " + quoted((home / "sub" / "dps.json").string()),
                                "issue --ca int --generate 1 --id-pattern 'h-{02}' --out " +
                                    quoted((home / "lot").string())}) {
    const auto o = bin.run(cmd);
    EXPECT_EQ(o.status, 2) << cmd << "\n" << o.err;
    EXPECT_NE(o.err.find("inside the fleetsign home"), std::string::npos) << o.err;
  }
  EXPECT_EQ(fs::file_size(home / "registry.db"), registry_size);
  EXPECT_FALSE(fs::exists(home / "lot"));
  bin.ok("ca list");
}

TEST_F(ReviewEdges, ValidityBeyondAHundredYearsIsRefusedForCasAndSelfSignedDevices) {
  auto o = bin.run("ca create-root --name r3 --subject /CN=R3 --days 999999999");
  EXPECT_EQ(o.status, 2) << o.err;
  EXPECT_NE(o.err.find("36500"), std::string::npos) << o.err;
  o = bin.run("issue --self-signed --id dev-ss --days 2932896 --out " +
              quoted((dir.path() / "ss").string()));
  EXPECT_EQ(o.status, 2) << o.err;
  EXPECT_EQ(bin.ok("ca list --json").out.find("r3"), std::string::npos);
}

TEST_F(ReviewEdges, AFullStandardOutputIsAnIoErrorNotSuccess) {
  const auto o = bin.run("ca list > /dev/full");
  EXPECT_EQ(o.status, 8) << o.err;
  EXPECT_NE(o.err.find("standard output"), std::string::npos) << o.err;
}

TEST_F(ReviewEdges, ControlCharactersInSubjectsAndLineageAreRefused) {
  auto o = bin.run("ca create-root --name r4 --subject " + quoted("/CN=x\n   999 forged"));
  EXPECT_EQ(o.status, 2) << o.err;
  o = bin.run("issue --ca int --generate 1 --id-pattern 'l-{02}' --lot " + quoted("L\n1") +
              " --out " + quoted((dir.path() / "l").string()));
  EXPECT_EQ(o.status, 2) << o.err;
  EXPECT_FALSE(fs::exists(dir.path() / "l" / "l-01_cert.pem"));
}

TEST_F(ReviewEdges, ASymlinkWhereADevicesFileGoesIsRefusedNotFollowed) {
  const fs::path csr = dir.path() / "sym.csr";
  ASSERT_EQ(testing::run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                         "-subj /CN=dev-sym -keyout " +
                         quoted((dir.path() / "sym.key").string()) + " -out " +
                         quoted(csr.string()) + " 2>/dev/null"),
            0);
  const fs::path out = dir.path() / "sl";
  fs::create_directories(out);
  const fs::path victim = dir.path() / "victim.txt";
  { std::ofstream(victim) << "precious\n"; }
  fs::create_symlink(victim, out / "dev-sym_cert.pem");
  const auto o =
      bin.run("issue --ca int --csr " + quoted(csr.string()) + " --out " + quoted(out.string()));
  EXPECT_EQ(o.status, 8) << o.err;
  EXPECT_EQ(testing::read_file(victim), "precious\n");
}

TEST_F(ReviewEdges, AMovedHomeUsesItsOwnTokenAndKeepsSigning) {
  const fs::path moved = dir.path() / "moved";
  fs::rename(home, moved);
  testing::Binary other{moved};
  other.ok("ca create-intermediate --name int2 --issuer root --days 30 --subject /CN=Int2");
  EXPECT_NE(testing::read_file(moved / "softhsm2.conf").find((moved / "tokens").string()),
            std::string::npos);
}

TEST_F(ReviewEdges, AnInitKilledBeforeItFinishedCanRunAgainButATokenWithKeysIsNeverCleared) {
  // Interrupted: everything but fleetsign.json, and a token without keys.
  const fs::path fresh = dir.path() / "fresh";
  testing::Binary b{fresh};
  b.ok("init");
  fs::remove(fresh / "fleetsign.json");
  b.ok("init");
  b.ok("ca create-root --name r --subject /CN=R");
  // The same without fleetsign.json but with CA keys in the token: refused, nothing removed.
  fs::remove(home / "fleetsign.json");
  const auto o = bin.run("init");
  EXPECT_EQ(o.status, 2) << o.err;
  EXPECT_NE(o.err.find("holds a token with objects"), std::string::npos) << o.err;
  EXPECT_TRUE(fs::exists(home / "registry.db"));
}

}  // namespace
}  // namespace fleetsign
