// valid_utf8: messages that quote hostile bytes become well-formed UTF-8 before they go into JSON
// (found by fuzz_method_payload and fuzz_twin_payload: Poco writes strings byte for byte, so a
// parser's error naming the byte it refused made an answer that was not JSON).
#include "fleetsign/engine/json.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <string>

namespace fleetsign::engine {
namespace {

const std::string kReplacement = "\xEF\xBF\xBD";

TEST(ValidUtf8, KeepsWellFormedTextAsItIs) {
  for (const std::string text :
       {std::string(), std::string("plain ASCII\t\x01"), std::string("\xC3\xA9t\xC3\xA9"),
        std::string("\xE2\x82\xAC"), std::string("\xF0\x9F\x98\x80"),
        std::string("\xF4\x8F\xBF\xBF"), std::string("a\0b", 3)}) {
    EXPECT_EQ(valid_utf8(text), text);
  }
}

TEST(ValidUtf8, ReplacesEachByteThatIsNotPartOfAValidSequence) {
  EXPECT_EQ(valid_utf8("a\xCF'b"), "a" + kReplacement + "'b");     // truncated 2-byte sequence
  EXPECT_EQ(valid_utf8("\x80\xBF"), kReplacement + kReplacement);  // stray continuations
  EXPECT_EQ(valid_utf8("\xC0\xAF"), kReplacement + kReplacement);  // overlong '/'
  EXPECT_EQ(valid_utf8("\xE0\x80\xAF"), kReplacement + kReplacement + kReplacement);  // overlong
  EXPECT_EQ(valid_utf8("\xED\xA0\x80"), kReplacement + kReplacement + kReplacement);  // surrogate
  const std::string four = kReplacement + kReplacement + kReplacement + kReplacement;
  EXPECT_EQ(valid_utf8("\xF4\x90\x80\x80"), four);  // above U+10FFFF
  EXPECT_EQ(valid_utf8("\xF0\x9F\x98"), kReplacement + kReplacement + kReplacement);  // truncated
  EXPECT_EQ(valid_utf8("\xFF\xFE"), kReplacement + kReplacement);
}

TEST(ValidUtf8, WhatItReturnsAlwaysMakesJson) {
  std::string every_byte;
  for (int b = 0; b < 256; ++b) every_byte.push_back(static_cast<char>(b));
  const std::string json = json_object({{"message", valid_utf8(every_byte + "\xE2\x82")}});
  Poco::JSON::Parser parser;
  EXPECT_NO_THROW(parser.parse(json)) << json;
}

}  // namespace
}  // namespace fleetsign::engine
