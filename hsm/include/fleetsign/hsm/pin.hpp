// Pin: a secret that wipes its memory when destroyed. PINs come from a file, an environment
// variable, or a prompt on a terminal — never from argv. A Pin is never logged or printed.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace fleetsign::hsm {

class Pin final {
 public:
  explicit Pin(std::string secret) : m_secret(std::move(secret)) {}
  Pin(Pin&& other) noexcept;
  Pin& operator=(Pin&& other) noexcept;
  Pin(const Pin&) = delete;  // copies would leave unwiped secrets behind
  Pin& operator=(const Pin&) = delete;
  ~Pin();

  const char* c_str() const noexcept { return m_secret.c_str(); }
  std::size_t size() const noexcept { return m_secret.size(); }

  // First of: `file` (first line, trailing newline stripped), the environment variable `env`,
  // a prompt on the controlling terminal (when stdin is a terminal). Throws Error(kPinMissing)
  // naming all three sources when none gives a PIN, Error(kIo) when the file cannot be read.
  static Pin from_sources(const std::optional<std::filesystem::path>& file, const char* env,
                          std::string_view prompt);

 private:
  void wipe() noexcept;
  std::string m_secret;
};

}  // namespace fleetsign::hsm
