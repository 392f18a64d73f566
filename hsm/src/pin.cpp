#include "fleetsign/hsm/pin.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::hsm {

namespace {

// Longest PIN a terminal prompt accepts (PKCS#11 tokens allow far less).
constexpr std::size_t kPromptLimit = 256;

// OPENSSL_cleanse cannot be optimised away, unlike a plain memset before free. It wipes the whole
// capacity: a moved-from short string keeps its old bytes in its inline buffer.
void cleanse(std::string& s) noexcept {
  OPENSSL_cleanse(s.data(), s.capacity());
  s.clear();
}

// Cuts `secret` to its first line (without "\n" or "\r\n") in place; no reallocation, so no copy.
void keep_first_line(std::string& secret, std::size_t used) {
  std::size_t end = 0;
  while (end < used && secret[end] != '\n') {
    ++end;
  }
  if (end > 0 && secret[end - 1] == '\r') {
    --end;
  }
  OPENSSL_cleanse(secret.data() + end, secret.size() - end);
  secret.resize(end);
}

void check_usable(const std::string& secret, const std::string& source) {
  if (secret.empty()) {
    throw Error(ErrorCode::kPinMissing,
                source + " gives an empty PIN (the PIN is the first line of a PIN file)");
  }
  if (secret.find('\0') != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument,
                source + " holds a NUL byte: the PIN would be cut short; refusing it");
  }
}

}  // namespace

Pin::Pin(Pin&& other) noexcept : m_secret(std::move(other.m_secret)) { other.wipe(); }

Pin& Pin::operator=(Pin&& other) noexcept {
  if (this != &other) {
    wipe();
    m_secret = std::move(other.m_secret);
    other.wipe();
  }
  return *this;
}

Pin::~Pin() { wipe(); }

void Pin::wipe() noexcept { cleanse(m_secret); }

Pin Pin::from_file(const std::filesystem::path& file) {
  Pin pin{std::string(kSecretFileLimit, '\0')};
  const std::size_t used =
      read_bounded_into(file.string(), {pin.m_secret.data(), pin.m_secret.size()}, "PIN file");
  keep_first_line(pin.m_secret, used);
  check_usable(pin.m_secret, "PIN file '" + file.string() + "'");
  return pin;
}

namespace {

// Reads a PIN from the terminal with echo off, through OpenSSL's UI (it restores the terminal
// on a signal and wipes its own buffers). nullopt when stdin is not a terminal.
std::optional<Pin> prompt_on_terminal(std::string_view prompt) {
  if (!isatty(STDIN_FILENO)) {
    return std::nullopt;
  }
  const std::string text(prompt);
  // Longer than the inline buffer of a short string, so the move into Pin hands the heap buffer
  // over instead of copying the bytes.
  std::string typed(kPromptLimit, '\0');
  if (EVP_read_pw_string_min(typed.data(), 0, static_cast<int>(typed.size()), text.c_str(), 0) !=
      0) {
    cleanse(typed);
    throw Error(ErrorCode::kPinMissing,
                "reading the PIN from the terminal failed or was cancelled");
  }
  typed.resize(std::strlen(typed.c_str()));
  return Pin(std::move(typed));
}

}  // namespace

Pin Pin::from_sources(const std::optional<std::filesystem::path>& file, const char* env,
                      std::string_view prompt) {
  if (file) {
    return from_file(*file);
  }
  if (const char* value = std::getenv(env); value != nullptr && *value != '\0') {
    return Pin(value);
  }
  if (auto typed = prompt_on_terminal(prompt)) {
    if (typed->empty()) {
      throw Error(ErrorCode::kPinMissing, "an empty PIN was typed");
    }
    return std::move(*typed);
  }
  throw Error(ErrorCode::kPinMissing, std::string("no PIN: set ") + env +
                                          ", pass a --*pin-file, or run on a terminal to be "
                                          "prompted (PINs are never taken from the command line)");
}

}  // namespace fleetsign::hsm
