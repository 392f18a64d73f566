// Reading a fuzz input as fields, for the targets of tests/fuzz. Inputs are small binary records
// whose layout each target documents at its top; a field past the end reads as empty or zero, so
// every byte string is a valid input (libFuzzer's mutations never "fail to parse").
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fleetsign::fuzz {

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : m_rest(data, size) {}

  std::uint8_t byte() {
    if (m_rest.empty()) return 0;
    const std::uint8_t b = m_rest[0];
    m_rest = m_rest.subspan(1);
    return b;
  }
  // Up to `n` bytes.
  std::span<const std::uint8_t> bytes(std::size_t n) {
    n = std::min(n, m_rest.size());
    const auto out = m_rest.first(n);
    m_rest = m_rest.subspan(n);
    return out;
  }
  // A field of at most 255 bytes, preceded by its length byte.
  std::span<const std::uint8_t> short_field() { return bytes(byte()); }
  // A field of at most 65535 bytes, preceded by its big-endian 2-byte length.
  std::span<const std::uint8_t> field() {
    const std::size_t n = static_cast<std::size_t>(byte()) << 8;
    return bytes(n | byte());
  }
  // Up to the next NUL (consumed, not returned), or to the end.
  std::string_view text_until_nul() {
    const auto nul = std::find(m_rest.begin(), m_rest.end(), std::uint8_t{0});
    const std::size_t n = static_cast<std::size_t>(nul - m_rest.begin());
    const std::string_view out(reinterpret_cast<const char*>(m_rest.data()), n);
    m_rest = m_rest.subspan(std::min(n + 1, m_rest.size()));
    return out;
  }
  std::span<const std::uint8_t> rest() {
    const auto out = m_rest;
    m_rest = {};
    return out;
  }
  std::string_view rest_text() {
    const auto r = rest();
    return {reinterpret_cast<const char*>(r.data()), r.size()};
  }
  bool empty() const { return m_rest.empty(); }

 private:
  std::span<const std::uint8_t> m_rest;
};

inline std::string_view as_text(std::span<const std::uint8_t> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// An invariant of the code under test does not hold: report it and abort, which libFuzzer
// records as a crash with its reproducer.
[[noreturn]] inline void violated(std::string_view what) {
  std::fprintf(stderr, "fuzz invariant violated: %.*s\n", static_cast<int>(what.size()),
               what.data());
  std::abort();
}

// Seeds a target makes itself (inputs that need a key's signature): written into the directory
// named by FLEETSIGN_FUZZ_SEEDS_OUT when it is set (tests/fuzz/make_corpus.sh), else nothing.
inline const char* seeds_out() { return std::getenv("FLEETSIGN_FUZZ_SEEDS_OUT"); }
inline void write_seed(const std::string& name, std::span<const std::uint8_t> bytes) {
  const char* dir = seeds_out();
  if (dir == nullptr) return;
  std::ofstream out(std::string(dir) + "/" + name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) violated("cannot write a seed into FLEETSIGN_FUZZ_SEEDS_OUT");
}

}  // namespace fleetsign::fuzz
