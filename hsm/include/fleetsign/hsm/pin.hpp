// Pin: a secret that wipes its memory when destroyed or moved from. PINs come from a file, an
// environment variable, or a prompt on a terminal — never from argv. A Pin is never logged or
// printed.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace fleetsign::hsm {

class Pin final {
 public:
  explicit Pin(std::string secret) : m_secret(std::move(secret)) {}
  // Both leave `other` empty with every byte of its storage wiped (a short string lives inside
  // the object itself, and a plain move would leave the bytes there).
  Pin(Pin&& other) noexcept;
  Pin& operator=(Pin&& other) noexcept;
  Pin(const Pin&) = delete;  // copies would leave unwiped secrets behind
  Pin& operator=(const Pin&) = delete;
  ~Pin();

  const char* c_str() const noexcept { return m_secret.c_str(); }
  std::size_t size() const noexcept { return m_secret.size(); }
  bool empty() const noexcept { return m_secret.empty(); }

  // First of: `file` (first line, trailing newline stripped), the environment variable `env`,
  // a prompt on the controlling terminal (when stdin is a terminal). The file is read with a
  // bound (kSecretFileLimit) straight into the Pin's wiping storage. Throws, before anything
  // could spend a login attempt:
  //   kPinMissing      no source gives a PIN (names all three), or the file/prompt gives an empty
  //                    one (a PIN file that is /dev/null, or starts with a newline);
  //   kIo              the file cannot be opened or read, or is a directory;
  //   kInputTooLarge   the file is larger than kSecretFileLimit (e.g. /dev/zero);
  //   kInvalidArgument the PIN holds a NUL byte (it would be cut short at the token).
  static Pin from_sources(const std::optional<std::filesystem::path>& file, const char* env,
                          std::string_view prompt);

  // The first line of `file`, read as from_sources does (same errors).
  static Pin from_file(const std::filesystem::path& file);

 private:
  void wipe() noexcept;
  std::string m_secret;
};

}  // namespace fleetsign::hsm
