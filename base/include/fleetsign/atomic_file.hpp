// One way to replace a file so that it is always either the old or the new content, never a mix,
// even across a kill or a power loss: a temporary file beside it (never following a link), every
// write checked, fsync, rename over the target, fsync of the directory. Error(kIo) names the file
// and the cause; on failure the temporary is removed and the target is untouched.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include "fleetsign/error.hpp"

namespace fleetsign {

inline void write_all_fd(int fd, std::string_view bytes, const std::filesystem::path& path) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      throw Error(ErrorCode::kIo,
                  path.string() + ": cannot be written: " + std::strerror(n < 0 ? errno : ENOSPC));
    }
    done += static_cast<std::size_t>(n);
  }
}

inline void fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// `mode`: the new file's permissions (e.g. 0600 for keys, 0644 for certificates).
inline void write_file_atomic(const std::filesystem::path& path, std::string_view bytes,
                              mode_t mode = 0600) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  ::unlink(tmp.c_str());  // a leftover of a killed writer
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    throw Error(ErrorCode::kIo, tmp.string() + ": cannot be created: " + std::strerror(errno));
  }
  try {
    write_all_fd(fd, bytes, tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  const bool synced = ::fsync(fd) == 0;
  const bool closed = ::close(fd) == 0;
  if (!synced || !closed || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw Error(ErrorCode::kIo, path.string() + ": cannot be written: " + std::strerror(err));
  }
  fsync_directory(path.parent_path());
}

}  // namespace fleetsign
