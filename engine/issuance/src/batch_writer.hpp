// The batch pipeline's writer: one thread that runs the serial stages' durable work (registry
// transactions, their fsyncs, output appends and syncfs) while the pipeline's worker threads go on
// checking and signing other chunks. Private to engine/.
//
// A serial stage calls run(job) from its TBB task. The task is suspended (tbb::task::suspend), so
// its worker thread is free for other tasks; the writer runs the job and resumes the task, which
// then continues (or rethrows the job's exception). The stage still returns only after its job is
// done, so the pipeline's order and the batch invariants are those of a stage that did the work
// itself: an intent is committed before its chunk is signed, a certificate before its outputs.
//
// Jobs run one at a time, in the order they were handed in. The registry is then used by one
// thread during the pipeline, as its contract requires.
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace fleetsign::engine::batch {

// Happens-before edges that oneTBB makes inside its uninstrumented library, told to
// ThreadSanitizer (no-ops in other builds): a serial stage's invocations follow each other, a
// chunk goes from one stage to the next, and the pipeline's stages all end before it returns.
inline void tsan_release(const void* at) {
#if defined(__SANITIZE_THREAD__)
  __tsan_release(const_cast<void*>(at));
#else
  (void)at;
#endif
}
inline void tsan_acquire(const void* at) {
#if defined(__SANITIZE_THREAD__)
  __tsan_acquire(const_cast<void*>(at));
#else
  (void)at;
#endif
}

class Writer final {
 public:
  Writer();
  ~Writer();                       // finishes the jobs already handed in, then joins the thread
  Writer(const Writer&) = delete;  // owns a thread
  Writer& operator=(const Writer&) = delete;

  // Runs `job` on the writer thread and returns when it is done, rethrowing what it threw. Called
  // from inside a oneTBB task (a pipeline stage), whose worker thread does other tasks meanwhile.
  void run(const std::function<void()>& job);

 private:
  struct Pending;
  void loop();

  std::mutex m_mutex;
  std::condition_variable m_wake;
  std::deque<Pending*> m_jobs;
  bool m_stop = false;
  std::thread m_thread;
};

}  // namespace fleetsign::engine::batch
