// The registry writer: sessions and reported twins are queued by the main thread and committed by
// this thread in batches (one transaction per batch, every kFlushInterval or when kBatch items
// wait), so a registry write never stalls mosquitto's loop. Items are committed in the order
// queued. A failed commit is logged and retried with the same items (they stay queued, in order).
//
// Thread-safe: enqueue from the main thread; the thread owns its own Registry connection.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>
#include <variant>

#include "fleetsign/engine/stores.hpp"
#include "log_queue.hpp"

namespace fleetsign::broker {

class RegistryWriter {
 public:
  static constexpr std::size_t kBatch = 1024;
  static constexpr std::chrono::milliseconds kFlushInterval{50};

  // Opens its own connection to `registry` (throws Error when it cannot) and starts the thread.
  RegistryWriter(const std::filesystem::path& registry, LogQueue& log);
  ~RegistryWriter();  // commits what is queued (one last try), then joins
  RegistryWriter(const RegistryWriter&) = delete;  // owns a thread
  RegistryWriter& operator=(const RegistryWriter&) = delete;

  // Each returns the item's sequence number (1, 2, …).
  std::uint64_t enqueue(engine::DeviceSession session);
  std::uint64_t enqueue(engine::ReportedTwin twin);
  // Every item with a sequence number up to this one is committed.
  std::uint64_t committed() const { return m_committed.load(std::memory_order_acquire); }
  // Blocks until everything queued so far is committed, or `timeout` passes (tests, shutdown).
  bool flush(std::chrono::milliseconds timeout);

 private:
  using Item = std::variant<engine::DeviceSession, engine::ReportedTwin>;
  std::uint64_t push(Item item);
  void run();
  bool commit(std::deque<Item>& batch);

  std::filesystem::path m_path;
  LogQueue& m_log;
  std::unique_ptr<engine::Stores> m_registry;  // the thread's own connection
  std::mutex m_mutex;
  std::condition_variable m_wake, m_done;
  std::deque<Item> m_queue;
  std::uint64_t m_queued = 0;
  std::atomic<std::uint64_t> m_committed{0};
  bool m_stop = false;
  std::thread m_thread;
};

}  // namespace fleetsign::broker
