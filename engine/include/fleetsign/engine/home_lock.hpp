// One process per home: an exclusive lock on DIR/.lock (flock), taken by every command that
// signs or changes the token, held until the HomeLock dies (or the process does: the kernel
// drops a flock with its holder, so a killed process never leaves the home locked). The file
// holds the holder's pid, for the message the next process gets. Read-only commands take none.
//
// Why: two processes on one SoftHSM2 token occasionally fail with CKR_GENERAL_ERROR at
// start-up, and two resumes of one batch would issue its remaining items twice over.
#pragma once

#include <filesystem>

namespace fleetsign::engine {

class HomeLock final {
 public:
  // Takes the lock. `wait` false: Error(kHomeBusy) "home DIR is busy (pid N)" when another
  // process holds it; true: blocks until it is free. kIo when DIR/.lock cannot be opened.
  static HomeLock acquire(const std::filesystem::path& home_dir, bool wait);

  HomeLock(HomeLock&& other) noexcept;
  HomeLock& operator=(HomeLock&&) = delete;
  HomeLock(const HomeLock&) = delete;  // owns the locked descriptor
  ~HomeLock();

 private:
  explicit HomeLock(int fd) : m_fd(fd) {}
  int m_fd;
};

}  // namespace fleetsign::engine
