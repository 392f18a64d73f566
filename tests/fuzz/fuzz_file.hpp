// An in-memory file with a path, for fuzzing readers that take a path (read_certificates, through
// read_bounded): a memfd, reached as /proc/self/fd/N, rewritten for every input.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <span>
#include <string>

#include "fuzz_input.hpp"

namespace fleetsign::fuzz {

class MemFile {
 public:
  MemFile() : m_fd(::memfd_create("fleetsign-fuzz", MFD_CLOEXEC)) {
    if (m_fd < 0) violated("memfd_create failed");
    m_path = "/proc/self/fd/" + std::to_string(m_fd);
  }
  ~MemFile() { ::close(m_fd); }
  MemFile(const MemFile&) = delete;  // owns the descriptor
  MemFile& operator=(const MemFile&) = delete;

  // Replaces the content; returns the path that reads it.
  const std::string& write(std::span<const std::uint8_t> bytes) {
    if (::ftruncate(m_fd, 0) != 0 ||
        ::pwrite(m_fd, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) {
      violated("cannot write the memfd");
    }
    return m_path;
  }

 private:
  int m_fd;
  std::string m_path;
};

}  // namespace fleetsign::fuzz
