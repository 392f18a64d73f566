// Writer: see batch_writer.hpp.
#include "batch_writer.hpp"

#include <tbb/task.h>

namespace fleetsign::engine::batch {

struct Writer::Pending {
  const std::function<void()>* job;
  std::exception_ptr error;
  tbb::task::suspend_point resume_at;
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
    tbb::task::resume(next->resume_at);  // `next` belongs to the resumed task from here on
  }
}

}  // namespace fleetsign::engine::batch
