// Pin: wiping on move and destruction, and reading PIN files with a bound and without ever
// producing an empty or truncated PIN (which would spend a login attempt at the token).
#include "fleetsign/hsm/pin.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

using testing::error_from;

// True when none of the `n` bytes at `p` is left: all wiped to zero.
bool all_zero(const char* p, std::size_t n) {
  return std::all_of(p, p + n, [](char c) { return c == '\0'; });
}

TEST(Pin, MovedFromShortPinHoldsNoneOfItsBytes) {
  const std::string secret = "1234-user";  // short: lives inside the object, not on the heap
  hsm::Pin a{std::string(secret)};
  const char* old_bytes = a.c_str();
  const hsm::Pin b(std::move(a));
  EXPECT_EQ(std::string(b.c_str()), secret);
  EXPECT_EQ(a.size(), 0u);  // NOLINT(bugprone-use-after-move): the point of the test
  EXPECT_TRUE(all_zero(old_bytes, secret.size())) << "the moved-from Pin still holds PIN bytes";
}

TEST(Pin, MoveAssignedFromPinHoldsNoneOfItsBytesAndTheTargetsOldPinIsWiped) {
  const std::string secret = "5678-so";
  hsm::Pin source{std::string(secret)};
  hsm::Pin target{std::string("old-pin")};
  const char* source_bytes = source.c_str();
  const char* target_bytes = target.c_str();
  target = std::move(source);
  EXPECT_EQ(std::string(target.c_str()), secret);
  EXPECT_TRUE(all_zero(source_bytes, secret.size())) << "moved-from Pin holds PIN bytes";
  EXPECT_NE(std::string(target_bytes, 7), "old-pin");
}

TEST(Pin, FileGivesItsFirstLineWithoutTheLineEnd) {
  testing::TempDir dir;
  testing::write_file(dir.path() / "pin", "1234-user\r\nsecond line\n");
  EXPECT_EQ(std::string(hsm::Pin::from_file(dir.path() / "pin").c_str()), "1234-user");
  testing::write_file(dir.path() / "pin-no-newline", "abcd");
  EXPECT_EQ(std::string(hsm::Pin::from_file(dir.path() / "pin-no-newline").c_str()), "abcd");
}

TEST(Pin, FileAtTheLimitIsReadAndOneByteMoreIsInputTooLarge) {
  testing::TempDir dir;
  testing::write_file(dir.path() / "at", std::string(kSecretFileLimit - 1, 'p') + "\n");
  EXPECT_EQ(hsm::Pin::from_file(dir.path() / "at").size(), kSecretFileLimit - 1);
  testing::write_file(dir.path() / "over", std::string(kSecretFileLimit, 'p') + "\n");
  const Error e = error_from([&] { hsm::Pin::from_file(dir.path() / "over"); });
  EXPECT_EQ(e.code(), ErrorCode::kInputTooLarge) << e.what();
  EXPECT_NE(std::string(e.what()).find(std::to_string(kSecretFileLimit)), std::string::npos)
      << e.what();
}

TEST(Pin, DevZeroIsInputTooLargeNotAnEndlessRead) {
  const Error e = error_from([&] { hsm::Pin::from_file("/dev/zero"); });
  EXPECT_EQ(e.code(), ErrorCode::kInputTooLarge) << e.what();
}

TEST(Pin, DirectoryIsIoNamingIt) {
  testing::TempDir dir;
  const Error e = error_from([&] { hsm::Pin::from_file(dir.path()); });
  EXPECT_EQ(e.code(), ErrorCode::kIo) << e.what();
  EXPECT_NE(std::string(e.what()).find("directory"), std::string::npos) << e.what();
}

TEST(Pin, EmptyFileDevNullAndALeadingNewlineArePinMissing) {
  testing::TempDir dir;
  testing::write_file(dir.path() / "empty", "");
  testing::write_file(dir.path() / "newline", "\n1234-user\n");
  for (const std::string file : {(dir.path() / "empty").string(), std::string("/dev/null"),
                                 (dir.path() / "newline").string()}) {
    SCOPED_TRACE(file);
    const Error e = error_from([&] { hsm::Pin::from_file(file); });
    EXPECT_EQ(e.code(), ErrorCode::kPinMissing) << e.what();
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
  }
}

TEST(Pin, NulByteInThePinIsInvalidArgumentNotACutPin) {
  testing::TempDir dir;
  testing::write_file(dir.path() / "pin", std::string("12\0"
                                                      "34",
                                                      5) +
                                              "\n");
  const Error e = error_from([&] { hsm::Pin::from_file(dir.path() / "pin"); });
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
}

TEST(Pin, FromSourcesPrefersTheFileAndRefusesABadFileInsteadOfFallingBack) {
  testing::TempDir dir;
  setenv("FLEETSIGN_TEST_PIN_ENV", "from-env", 1);
  const Error e = error_from([&] {
    hsm::Pin::from_sources(std::filesystem::path("/dev/null"), "FLEETSIGN_TEST_PIN_ENV", "");
  });
  EXPECT_EQ(e.code(), ErrorCode::kPinMissing) << e.what();
  EXPECT_EQ(std::string(hsm::Pin::from_sources(std::nullopt, "FLEETSIGN_TEST_PIN_ENV", "").c_str()),
            "from-env");
}

}  // namespace
}  // namespace fleetsign
