#include "fleetsign/engine/home_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

std::string holder_pid(int fd) {
  char buf[32] = {0};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string pid(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) {
    pid.pop_back();
  }
  return pid.empty() ? "unknown" : pid;
}

void record_pid(int fd) {
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) == 0) {
    (void)!::pwrite(fd, pid.data(), pid.size(), 0);
  }
}

}  // namespace

HomeLock HomeLock::acquire(const std::filesystem::path& home_dir, bool wait) {
  const std::filesystem::path file = home_dir / ".lock";
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw Error(ErrorCode::kIo, file.string() + ": cannot be opened: " + std::strerror(errno));
  }
  int rc = 0;
  do {
    rc = ::flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    const std::string pid = err == EWOULDBLOCK ? holder_pid(fd) : "";
    ::close(fd);
    if (err == EWOULDBLOCK) {
      throw Error(ErrorCode::kHomeBusy, "home " + home_dir.string() + " is busy (pid " + pid + ")");
    }
    throw Error(ErrorCode::kIo, file.string() + ": cannot be locked: " + std::strerror(err));
  }
  record_pid(fd);
  return HomeLock(fd);
}

HomeLock::HomeLock(HomeLock&& other) noexcept : m_fd(other.m_fd) { other.m_fd = -1; }

HomeLock::~HomeLock() {
  if (m_fd >= 0) {
    ::close(m_fd);  // releases the flock
  }
}

}  // namespace fleetsign::engine
