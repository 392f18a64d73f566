// The batch pipeline's writer (engine/issuance/src/batch_writer.hpp): jobs run on its own thread,
// in order, their exceptions come back to the stage, and a stage waiting for its job does not hold
// its worker thread: with ONE worker, another chunk's parallel stage still runs meanwhile.
#include "batch_writer.hpp"

#include <gtest/gtest.h>
#include <tbb/parallel_pipeline.h>
#include <tbb/task_arena.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

namespace fleetsign::engine::batch {
namespace {

bool wait_for(const std::atomic<bool>& flag, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!flag.load()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// A pipeline of `items` on `threads` workers: serial input → parallel `middle` → serial `last`.
// The tsan_* edges tell ThreadSanitizer the order oneTBB keeps (batch_writer.hpp).
template <typename Middle, typename Last>
void pipeline(int threads, int items, Middle middle, Last last) {
  tbb::task_arena arena(threads);
  int next = 0, last_order = 0, join = 0;
  arena.execute([&] {
    tbb::parallel_pipeline(
        4,
        tbb::make_filter<void, int>(tbb::filter_mode::serial_in_order, [&](tbb::flow_control& fc) {
          tsan_acquire(&next);
          if (next == items) fc.stop();
          const int i = next++;
          tsan_release(&next);
          tsan_release(&join);
          return i;
        }) & tbb::make_filter<int, int>(tbb::filter_mode::parallel, [&](int i) {
          middle(i);
          tsan_release(&join);
          return i;
        }) & tbb::make_filter<int, void>(tbb::filter_mode::serial_in_order, [&](int i) {
          tsan_acquire(&last_order);
          last(i);
          tsan_release(&last_order);
          tsan_release(&join);
        }));
  });
  tsan_acquire(&join);
}

TEST(BatchWriter, RunsJobsInOrderOnItsOwnThread) {
  Writer writer;
  std::vector<int> order;
  std::vector<std::thread::id> job_threads;
  std::thread::id stage_thread;
  pipeline(
      2, 50, [](int) {},
      [&](int i) {
        stage_thread = std::this_thread::get_id();
        writer.run([&] {
          order.push_back(i);
          job_threads.push_back(std::this_thread::get_id());
        });
      });
  ASSERT_EQ(order.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
  for (const auto& id : job_threads) {
    EXPECT_EQ(id, job_threads.front()) << "one writer thread";
    EXPECT_NE(id, stage_thread) << "not a pipeline thread";
  }
}

TEST(BatchWriter, RethrowsTheJobsExceptionInTheStage) {
  Writer writer;
  EXPECT_THROW(pipeline(
                   1, 3, [](int) {},
                   [&](int i) {
                     writer.run([&] {
                       if (i == 1) throw std::runtime_error("disk full");
                     });
                   }),
               std::runtime_error);
  // The writer still serves jobs after a failed one.
  int ran = 0;
  pipeline(
      1, 2, [](int) {}, [&](int) { writer.run([&] { ++ran; }); });
  EXPECT_EQ(ran, 2);
}

// Item 0's job waits until item 1's parallel stage has run. With one worker that blocked in the
// job, item 1 could never run (the job would time out); suspended, the worker runs it.
TEST(BatchWriter, AStageWaitingForItsJobLeavesItsWorkerFree) {
#if defined(__SANITIZE_THREAD__) || defined(FLEETSIGN_SANITIZED)
  GTEST_SKIP() << "a sanitizer build blocks the worker instead (batch_writer.cpp)";
#endif
  Writer writer;
  std::atomic<bool> second_ran{false};
  bool seen = false;
  pipeline(
      1, 2,
      [&](int i) {
        if (i == 1) second_ran = true;
      },
      [&](int i) {
        if (i == 0) writer.run([&] { seen = wait_for(second_ran, std::chrono::seconds(10)); });
      });
  EXPECT_TRUE(seen);
}

}  // namespace
}  // namespace fleetsign::engine::batch
