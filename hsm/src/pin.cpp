#include "fleetsign/hsm/pin.hpp"

#include <openssl/crypto.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "fleetsign/error.hpp"

namespace fleetsign::hsm {

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

void Pin::wipe() noexcept {
  // OPENSSL_cleanse cannot be optimised away, unlike a plain memset before free.
  if (!m_secret.empty()) {
    OPENSSL_cleanse(m_secret.data(), m_secret.size());
  }
  m_secret.clear();
}

namespace {

std::string read_first_line(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) {
    throw Error(ErrorCode::kIo, "PIN file " + file.string() + ": cannot be read");
  }
  std::string line;
  std::getline(in, line);
  if (!line.empty() && line.back() == '\r') {
    line.pop_back();
  }
  return line;
}

// Reads a line from the controlling terminal with echo off.
std::optional<std::string> prompt_on_terminal(std::string_view prompt) {
  if (!isatty(STDIN_FILENO)) {
    return std::nullopt;
  }
  std::fprintf(stderr, "%.*s", static_cast<int>(prompt.size()), prompt.data());
  termios old_mode{};
  tcgetattr(STDIN_FILENO, &old_mode);
  termios quiet = old_mode;
  quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
  tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  std::string line;
  int c = 0;
  while ((c = std::fgetc(stdin)) != EOF && c != '\n') {
    line.push_back(static_cast<char>(c));
  }
  tcsetattr(STDIN_FILENO, TCSANOW, &old_mode);
  std::fprintf(stderr, "\n");
  return line;
}

}  // namespace

Pin Pin::from_sources(const std::optional<std::filesystem::path>& file, const char* env,
                      std::string_view prompt) {
  if (file) {
    return Pin(read_first_line(*file));
  }
  if (const char* value = std::getenv(env); value != nullptr && *value != '\0') {
    return Pin(value);
  }
  if (auto typed = prompt_on_terminal(prompt)) {
    return Pin(std::move(*typed));
  }
  throw Error(ErrorCode::kPinMissing, std::string("no PIN: set ") + env +
                                          ", pass a --*pin-file, or run on a terminal to be "
                                          "prompted (PINs are never taken from the command line)");
}

}  // namespace fleetsign::hsm
