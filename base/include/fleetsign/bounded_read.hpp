// Bounded reads of untrusted files: every input from outside (PIN and password files, CSRs,
// chains, policy files) is read through here with a limit, so `/dev/zero` or a huge file is
// refused with a message that names the input and the limit instead of growing without bound.
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

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "fleetsign/error.hpp"

namespace fleetsign {

// Limits used across the tool; each names the kind of input in the error message.
inline constexpr std::size_t kSecretFileLimit = 4096;         // PIN and password files
inline constexpr std::size_t kCsrFileLimit = 64 * 1024;       // one CSR file
inline constexpr std::size_t kChainFileLimit = 1024 * 1024;   // a certificate chain
inline constexpr std::size_t kPolicyFileLimit = 1024 * 1024;  // policy.json
inline constexpr std::size_t kCertFileLimit = 1024 * 1024;    // a certificate file
inline constexpr std::size_t kConfigFileLimit = 256 * 1024;   // fleetsign.json, other config
inline constexpr int kSlowInputSeconds = 30;

// Reads `path` straight into `dest` (for a secret: the caller's wiping storage, so no intermediate
// buffer keeps a copy). Returns the number of bytes read; kInputTooLarge when the input holds more
// than dest.size() bytes (one byte past a full `dest` tells "at the limit" from "over it"). On a
// throw, `dest` may hold a prefix of the input: the caller wipes it.
inline std::size_t read_bounded_into(const std::string& path, std::span<char> dest,
                                     std::string_view what) {
  const std::string name = std::string(what) + " '" + path + "'";
  struct Fd {
    int fd;
    ~Fd() {
      if (fd >= 0) {
        ::close(fd);
      }
    }
  } file{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)};
  if (file.fd < 0) {
    throw Error(ErrorCode::kIo, name + ": cannot be opened: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(file.fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    throw Error(ErrorCode::kIo, name + ": is a directory, not a file");
  }
  std::size_t used = 0;
  for (;;) {
    char probe = 0;
    const bool full = used == dest.size();
    const ssize_t n =
        full ? ::read(file.fd, &probe, 1) : ::read(file.fd, dest.data() + used, dest.size() - used);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno == EAGAIN) {  // a pipe, FIFO or terminal with nothing yet
        pollfd p{file.fd, POLLIN, 0};
        const int ready = ::poll(&p, 1, kSlowInputSeconds * 1000);
        if (ready == 0) {
          throw Error(ErrorCode::kIo,
                      name + ": no data arrived for " + std::to_string(kSlowInputSeconds) + " s");
        }
        continue;
      }
      throw Error(ErrorCode::kIo, name + ": cannot be read: " + std::strerror(errno));
    }
    if (n == 0) {
      return used;
    }
    if (full) {
      throw Error(ErrorCode::kInputTooLarge,
                  name + ": larger than the limit of " + std::to_string(dest.size()) + " bytes");
    }
    used += static_cast<std::size_t>(n);
  }
}

// Reads at most `limit` bytes of `path`. `what` names the input in messages ("PIN file").
inline std::string read_bounded(const std::string& path, std::size_t limit, std::string_view what) {
  std::string out(limit, '\0');
  out.resize(read_bounded_into(path, std::span<char>(out.data(), out.size()), what));
  return out;
}

}  // namespace fleetsign
