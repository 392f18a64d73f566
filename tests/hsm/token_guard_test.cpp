// Issue 7, hole 0: SoftHSM2 rewrites token.object in place on every login, so a kill in that
// window used to leave a 0-byte file and lose every CA key. These tests damage the file (and
// kill the real CLI during login) and require the next command to log in and sign.
#include "fleetsign/engine/token_guard.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include "cli_process.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using testing::CliProcess;
using testing::run_cli;

class TokenGuard : public ::testing::Test {
 protected:
  void SetUp() override {
    home = dir.path() / "home";
    ASSERT_EQ(run_cli(home, {"init"}).status, 0);
    ASSERT_EQ(
        run_cli(home, {"ca", "create-root", "--name", "root", "--subject", "/CN=Root"}).status, 0);
    ASSERT_EQ(run_cli(home, {"ca", "create-intermediate", "--name", "int1", "--issuer", "root",
                             "--subject", "/CN=Int", "--days", "3000"})
                  .status,
              0);
  }

  fs::path token_object() const {
    for (const auto& e : fs::directory_iterator(home / "tokens")) {
      if (e.is_directory()) return e.path() / "token.object";
    }
    return {};
  }

  // One device issued by the intermediate: the token logged in and its CA key signed.
  testing::CliResult issue_one(const std::string& tag) {
    return run_cli(home, {"issue", "--ca", "int1", "--generate", "1", "--id-pattern", tag + "-{03}",
                          "--out", (dir.path() / ("out-" + tag)).string()});
  }

  testing::TempDir dir;
  fs::path home;
};

TEST_F(TokenGuard, RestoresAZeroByteTokenObjectAndSaysSo) {
  fs::resize_file(token_object(), 0);
  const auto r = issue_one("a");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("restored token metadata from backup"), std::string::npos) << r.output;
  EXPECT_GT(fs::file_size(token_object()), 0u);
  // The restore is in the audit log, and the next command needs none.
  const auto again = issue_one("b");
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_EQ(again.output.find("restored"), std::string::npos) << again.output;
}

TEST_F(TokenGuard, RestoresATokenObjectCutInTheMiddle) {
  const std::string whole = testing::read_file(token_object());
  testing::write_file(token_object(), whole.substr(0, whole.size() / 2));
  const auto r = issue_one("a");
  EXPECT_EQ(r.status, 0) << r.output;
  // Whole again (the login that followed rewrote it with the next generation number).
  const std::string now = testing::read_file(token_object());
  EXPECT_EQ(now.size(), whole.size());
  EXPECT_TRUE(engine::is_complete_token_object(std::span<const unsigned char>(
      reinterpret_cast<const unsigned char*>(now.data()), now.size())));
}

TEST_F(TokenGuard, RefusesWithTokenCorruptNamingTheFileWhenNoCopyExists) {
  fs::resize_file(token_object(), 0);
  fs::remove_all(home / "token-backup");
  const auto r = issue_one("a");
  EXPECT_EQ(r.status, exit_status_for(ErrorCode::kTokenCorrupt)) << r.output;
  EXPECT_NE(r.output.find("[token_corrupt]"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(token_object().string()), std::string::npos) << r.output;
}

TEST_F(TokenGuard, NeverReplacesAGoodCopyWithADamagedFile) {
  const fs::path copy = *fs::directory_iterator(home / "token-backup");
  const std::string good = testing::read_file(copy);
  fs::resize_file(token_object(), 0);
  engine::TokenStoreGuard guard(home / "tokens", home / "token-backup");
  guard.refresh_copies();
  EXPECT_EQ(testing::read_file(copy), good);
}

TEST(TokenObjectFormat, AcceptsTheRealFileAndRejectsEveryTruncation) {
  testing::TempDir dir;
  const fs::path home = dir.path() / "home";
  ASSERT_EQ(run_cli(home, {"init"}).status, 0);
  fs::path file;
  for (const auto& e : fs::directory_iterator(home / "tokens")) file = e.path() / "token.object";
  const std::string whole = testing::read_file(file);
  auto bytes = [](const std::string& s) {
    return std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(s.data()),
                                          s.size());
  };
  EXPECT_TRUE(engine::is_complete_token_object(bytes(whole)));
  for (std::size_t n = 0; n < whole.size(); ++n) {
    EXPECT_FALSE(engine::is_complete_token_object(bytes(whole.substr(0, n)))) << "length " << n;
  }
}

// The reported failure: ~150 kills 5–80 ms after start destroyed the token 3 times. Every kill
// here is followed by a command that must log in and sign with the CA key.
TEST_F(TokenGuard, SurvivesSigkillAtRandomMomentsAfterStart) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> delay_ms(5, 80);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(150);
  int kills = 0, restores = 0, i = 0;
  for (; i < 150 && std::chrono::steady_clock::now() < deadline; ++i) {
    const std::string tag = "k" + std::to_string(i);
    {
      CliProcess victim(home, {"issue", "--ca", "int1", "--generate", "1", "--id-pattern",
                               tag + "-{03}", "--out", (dir.path() / ("out-" + tag)).string()});
      ASSERT_GT(victim.pid(), 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
      kills += victim.kill_now() ? 1 : 0;
    }
    const auto check = issue_one("c" + std::to_string(i));
    ASSERT_EQ(check.status, 0) << "after kill " << i << ": " << check.output;
    restores += check.output.find("restored token metadata") != std::string::npos ? 1 : 0;
  }
  std::printf("%d runs, %d killed mid-run, %d token.object restores\n", i, kills, restores);
  EXPECT_GE(i, 50);
  EXPECT_GT(kills, i / 2);
}

}  // namespace
}  // namespace fleetsign
