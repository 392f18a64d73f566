// Bounded reads of untrusted files: every input from outside (PIN and password files, CSRs,
// chains, policy files) is read through here with a limit, so `/dev/zero` or a huge file is
// refused with a message that names the input and the limit instead of growing without bound.
//
// The limit is enforced while reading: never more than limit + 1 bytes are read, a regular file
// whose size is already over the limit is refused before any byte is read (a 1 GB sparse file
// costs nothing), and the buffer grows with what arrives (a 4 KiB file under a 256 MiB limit
// takes a few KiB, not the limit).
//
// Errors (thrown fleetsign::Error): kInputTooLarge when the input holds more than `limit` bytes,
// kIo when it cannot be opened or read (a directory is refused as kIo, never read). A FIFO or a
// pipe (`--csr <(…)`) is read as it arrives, but never waited on without end: opening does not
// block on a FIFO that has no writer (it reads as empty), and a read that sees no data for
// kSlowInputSeconds is kIo naming the input.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "fleetsign/error.hpp"

namespace fleetsign {

// Limits used across the tool; each names the kind of input in the error message.
inline constexpr std::size_t kSecretFileLimit = 4096;           // PIN and password files
inline constexpr std::size_t kCsrFileLimit = 64 * 1024;         // one CSR file
inline constexpr std::size_t kChainFileLimit = 1024 * 1024;     // a certificate chain
inline constexpr std::size_t kPolicyFileLimit = 1024 * 1024;    // policy.json
inline constexpr std::size_t kCertFileLimit = 1024 * 1024;      // a certificate file
inline constexpr std::size_t kConfigFileLimit = 256 * 1024;     // fleetsign.json, other config
inline constexpr std::size_t kBrokerSettingsLimit = 64 * 1024;  // HOME/broker/broker.json
inline constexpr int kSlowInputSeconds = 30;

namespace detail {

// An input opened for a bounded read: non-blocking (a FIFO without a writer reads as empty), not
// a directory, and a regular file already over `limit` refused before anything is read.
class BoundedInput {
 public:
  BoundedInput(const std::string& path, std::size_t limit, std::string_view what)
      : m_name(std::string(what) + " '" + path + "'"),
        m_fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) {
    if (m_fd < 0) {
      throw Error(ErrorCode::kIo, m_name + ": cannot be opened: " + std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(m_fd, &st) == 0) {
      if (S_ISDIR(st.st_mode)) {
        throw Error(ErrorCode::kIo, m_name + ": is a directory, not a file");
      }
      if (S_ISREG(st.st_mode)) {
        m_size_hint = static_cast<std::size_t>(st.st_size);
        if (m_size_hint > limit) {
          throw too_large(limit);
        }
      }
    }
  }
  BoundedInput(const BoundedInput&) = delete;  // owns the descriptor
  BoundedInput& operator=(const BoundedInput&) = delete;
  ~BoundedInput() { ::close(m_fd); }

  // Bytes of a regular file as fstat saw them (0 for anything else): a hint, never trusted.
  std::size_t size_hint() const { return m_size_hint; }

  // One read(2) of at most dest.size() bytes (waiting up to kSlowInputSeconds for a pipe);
  // 0 at the end of the input.
  std::size_t read_some(std::span<char> dest) {
    for (;;) {
      const ssize_t n = ::read(m_fd, dest.data(), dest.size());
      if (n >= 0) {
        return static_cast<std::size_t>(n);
      }
      if (errno == EINTR) {
        continue;
      }
      if (errno != EAGAIN) {
        throw Error(ErrorCode::kIo, m_name + ": cannot be read: " + std::strerror(errno));
      }
      pollfd p{m_fd, POLLIN, 0};  // a pipe, FIFO or terminal with nothing yet
      if (::poll(&p, 1, kSlowInputSeconds * 1000) == 0) {
        throw Error(ErrorCode::kIo,
                    m_name + ": no data arrived for " + std::to_string(kSlowInputSeconds) + " s");
      }
    }
  }

  Error too_large(std::size_t limit) const {
    return Error(ErrorCode::kInputTooLarge,
                 m_name + ": larger than the limit of " + std::to_string(limit) + " bytes");
  }

 private:
  std::string m_name;
  int m_fd;
  std::size_t m_size_hint = 0;
};

}  // namespace detail

// Reads `path` straight into `dest` (for a secret: the caller's wiping storage, so no intermediate
// buffer keeps a copy). Returns the number of bytes read; kInputTooLarge when the input holds more
// than dest.size() bytes (one byte past a full `dest` tells "at the limit" from "over it"). On a
// throw, `dest` may hold a prefix of the input: the caller wipes it.
inline std::size_t read_bounded_into(const std::string& path, std::span<char> dest,
                                     std::string_view what) {
  detail::BoundedInput in(path, dest.size(), what);
  std::size_t used = 0;
  for (;;) {
    char probe = 0;
    const bool full = used == dest.size();
    const std::size_t n = full ? in.read_some({&probe, 1}) : in.read_some(dest.subspan(used));
    if (n == 0) {
      return used;
    }
    if (full) {
      throw in.too_large(dest.size());
    }
    used += n;
  }
}

// Reads at most `limit` bytes of `path`. `what` names the input in messages ("PIN file"). The
// buffer starts at the file's size (or 64 KiB) and doubles as data arrives, up to limit + 1.
inline std::string read_bounded(const std::string& path, std::size_t limit, std::string_view what) {
  detail::BoundedInput in(path, limit, what);
  constexpr std::size_t kFirstChunk = 64 * 1024;
  std::string out(std::min(limit, std::max(in.size_hint(), kFirstChunk)) + 1, '\0');
  std::size_t used = 0;
  for (;;) {
    if (used == out.size()) {  // full, and out.size() <= limit: room for more
      out.resize(std::min(limit + 1, out.size() * 2));
    }
    const std::size_t n = in.read_some(std::span<char>(out).subspan(used));
    if (n == 0) {
      out.resize(used);
      return out;
    }
    used += n;
    if (used > limit) {
      throw in.too_large(limit);
    }
  }
}

}  // namespace fleetsign
