#include "fleetsign/engine/token_guard.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>

#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace fs = std::filesystem;

namespace {

constexpr const char* kTokenObject = "token.object";
constexpr std::size_t kTokenObjectLimit = 64 * 1024;  // a few hundred bytes in practice

// SoftHSM2's ObjectFile encoding: big-endian 64-bit words; each attribute is its type, its
// kind (1 bool: one byte, 2 ulong: one word, 3 byte string: length word + bytes).
constexpr std::uint64_t kKindBool = 1, kKindUlong = 2, kKindBytes = 3;
constexpr std::uint64_t kAttrLabel = 0x80005349, kAttrSoPin = 0x8000534C, kAttrUserPin = 0x8000534D;

bool read_word(std::span<const unsigned char>& in, std::uint64_t& out) {
  if (in.size() < 8) {
    return false;
  }
  out = 0;
  for (int i = 0; i < 8; ++i) {
    out = (out << 8) | in[static_cast<std::size_t>(i)];
  }
  in = in.subspan(8);
  return true;
}

// Skips one attribute's value; false when the file ends inside it or the kind is unknown.
bool skip_value(std::span<const unsigned char>& in, std::uint64_t kind) {
  std::uint64_t len = 0;
  if (kind == kKindBool) {
    len = 1;
  } else if (kind == kKindUlong) {
    len = 8;
  } else if (kind != kKindBytes || !read_word(in, len)) {
    return false;
  }
  if (in.size() < len) {
    return false;
  }
  in = in.subspan(static_cast<std::size_t>(len));
  return true;
}

std::optional<std::string> read_if_present(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    return std::nullopt;
  }
  try {
    return read_bounded(file.string(), kTokenObjectLimit, "token object");
  } catch (const Error&) {
    return std::nullopt;  // unreadable or absurdly large: not a usable token.object
  }
}

bool complete(const std::optional<std::string>& text) {
  return text && is_complete_token_object(std::span<const unsigned char>(
                     reinterpret_cast<const unsigned char*>(text->data()), text->size()));
}

void write_atomically(const fs::path& path, const std::string& bytes) {
  write_file_atomic(path, bytes, 0600);
}

std::vector<fs::path> token_subdirs(const fs::path& token_dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(token_dir, ec)) {
    if (entry.is_directory(ec)) {
      out.push_back(entry.path());
    }
  }
  return out;
}

}  // namespace

bool is_complete_token_object(std::span<const unsigned char> in) {
  std::uint64_t word = 0;
  if (!read_word(in, word)) {  // the generation
    return false;
  }
  bool label = false, so_pin = false, user_pin = false;
  while (!in.empty()) {
    std::uint64_t type = 0, kind = 0;
    if (!read_word(in, type) || !read_word(in, kind) || !skip_value(in, kind)) {
      return false;
    }
    label = label || type == kAttrLabel;
    so_pin = so_pin || type == kAttrSoPin;
    user_pin = user_pin || type == kAttrUserPin;
  }
  return label && so_pin && user_pin;
}

TokenStoreGuard::TokenStoreGuard(fs::path token_dir, fs::path backup_dir)
    : m_token_dir(std::move(token_dir)), m_backup_dir(std::move(backup_dir)) {}

fs::path TokenStoreGuard::copy_of(const fs::path& token_subdir) const {
  return m_backup_dir / (token_subdir.filename().string() + "." + kTokenObject);
}

std::vector<std::string> TokenStoreGuard::restore_damaged() const {
  std::vector<std::string> notices;
  for (const fs::path& sub : token_subdirs(m_token_dir)) {
    const fs::path live = sub / kTokenObject;
    if (complete(read_if_present(live))) {
      continue;
    }
    const auto copy = read_if_present(copy_of(sub));
    if (!complete(copy)) {
      throw Error(ErrorCode::kTokenCorrupt,
                  live.string() +
                      " is truncated or unreadable (a process was killed while the token "
                      "rewrote it) and no complete copy exists in " +
                      m_backup_dir.string() + "; the token's keys cannot be reached");
    }
    write_atomically(live, *copy);
    notices.push_back("restored token metadata from backup: " + live.string());
  }
  return notices;
}

void TokenStoreGuard::refresh_copies() const {
  std::error_code ec;
  fs::create_directories(m_backup_dir, ec);
  fs::permissions(m_backup_dir, fs::perms::owner_all, ec);
  for (const fs::path& sub : token_subdirs(m_token_dir)) {
    const auto live = read_if_present(sub / kTokenObject);
    if (!complete(live)) {
      continue;  // never let a damaged file replace a good copy
    }
    const fs::path copy = copy_of(sub);
    if (read_if_present(copy) != live) {
      write_atomically(copy, *live);
    }
  }
}

}  // namespace fleetsign::engine
