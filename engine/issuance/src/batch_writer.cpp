// Writer: see batch_writer.hpp.
#include "batch_writer.hpp"

#include <tbb/task.h>

// The sanitizers cannot follow a suspended task: oneTBB resumes it on another stack (swapcontext)
// through its own, uninstrumented, code. ThreadSanitizer then misses the synchronisation, and
// AddressSanitizer does not know the stack's bounds, so an exception thrown on it leaves stale
// poison behind and a later call reports a false error (GCC 12's runtime even fails its own CHECK
// in sigaltstack; seen once in five runs of a batch whose output fails). A sanitizer build
// (FLEETSIGN_SANITIZED, from CMake) hands the job over the same way but blocks the stage's worker
// on a condition variable instead of suspending its task, so everything else (the jobs, the
// stages, the registry and token work they do) is still checked. The suspension itself is tested
// by the plain suite only (`FLEETSIGN_PLAIN=1 bash ci/test.sh`; CI runs the sanitized one).
#if defined(__SANITIZE_THREAD__) || defined(FLEETSIGN_SANITIZED)
#define FLEETSIGN_WRITER_BLOCKS 1
#endif

namespace fleetsign::engine::batch {

struct Writer::Pending {
  const std::function<void()>* job;
  std::exception_ptr error;
#ifdef FLEETSIGN_WRITER_BLOCKS
  bool done = false;
  std::condition_variable finished;
#else
  tbb::task::suspend_point resume_at;
#endif
};

Writer::Writer() : m_thread([this] { loop(); }) {}

Writer::~Writer() {
  {
    std::lock_guard lock(m_mutex);
    m_stop = true;
  }
  m_wake.notify_one();
  m_thread.join();
}

void Writer::run(const std::function<void()>& job) {
#ifdef FLEETSIGN_WRITER_BLOCKS
  Pending pending{&job, nullptr};
  std::unique_lock lock(m_mutex);
  m_jobs.push_back(&pending);
  m_wake.notify_one();
  pending.finished.wait(lock, [&] { return pending.done; });
  lock.unlock();
#else
  Pending pending{&job, nullptr, {}};
  // The callback runs once the task is suspended: only then may the writer resume it.
  tbb::task::suspend([&](tbb::task::suspend_point tag) {
    pending.resume_at = tag;
    {
      std::lock_guard lock(m_mutex);
      m_jobs.push_back(&pending);
    }
    m_wake.notify_one();
  });
#endif
  if (pending.error) std::rethrow_exception(pending.error);
}

void Writer::loop() {
  for (;;) {
    Pending* next = nullptr;
    {
      std::unique_lock lock(m_mutex);
      m_wake.wait(lock, [&] { return m_stop || !m_jobs.empty(); });
      if (m_jobs.empty()) return;  // stopping, and nothing is left
      next = m_jobs.front();
      m_jobs.pop_front();
    }
    try {
      (*next->job)();
    } catch (...) {
      next->error = std::current_exception();
    }
#ifdef FLEETSIGN_WRITER_BLOCKS
    {
      std::lock_guard lock(m_mutex);
      next->done = true;
      next->finished.notify_one();  // under the lock: `next` dies once its stage wakes
    }
#else
    tbb::task::resume(next->resume_at);  // `next` belongs to the resumed task from here on
#endif
  }
}

}  // namespace fleetsign::engine::batch
