// The registry writer: see writer.hpp.
#include "writer.hpp"

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "watcher.hpp"

namespace fleetsign::broker {

RegistryWriter::RegistryWriter(const std::filesystem::path& registry, LogQueue& log)
    : m_path(registry), m_log(log) {
  // Opened here so that a registry that cannot be opened stops the broker at start-up; only the
  // thread uses it from then on.
  m_registry = open_broker_registry(m_path);
  m_thread = std::thread([this] { run(); });
}

RegistryWriter::~RegistryWriter() {
  {
    const std::lock_guard lock(m_mutex);
    m_stop = true;
  }
  m_wake.notify_all();
  m_thread.join();
}

std::uint64_t RegistryWriter::enqueue(engine::DeviceSession session) {
  return push(std::move(session));
}
std::uint64_t RegistryWriter::enqueue(engine::ReportedTwin twin) { return push(std::move(twin)); }

std::uint64_t RegistryWriter::push(Item item) {
  std::uint64_t seq = 0;
  bool wake = false;
  {
    const std::lock_guard lock(m_mutex);
    m_queue.push_back(std::move(item));
    seq = ++m_queued;
    // An idle writer waits for a first item; a gathering one for a full batch (or its interval
    // to pass). Waking it for anything else would cost a context switch per item.
    wake = m_queue.size() == 1 || m_queue.size() == kBatch;
  }
  if (wake) {
    m_wake.notify_one();
  }
  return seq;
}

bool RegistryWriter::flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(m_mutex);
  const std::uint64_t target = m_queued;
  m_wake.notify_one();
  return m_done.wait_for(lock, timeout, [&] { return committed() >= target; });
}

void RegistryWriter::run() {
  std::unique_lock lock(m_mutex);
  for (;;) {
    m_wake.wait(lock, [&] { return m_stop || !m_queue.empty(); });
    if (m_queue.empty() && m_stop) {
      return;
    }
    // Let a batch gather: a burst of connects becomes one transaction.
    m_wake.wait_for(lock, kFlushInterval, [&] { return m_stop || m_queue.size() >= kBatch; });
    std::deque<Item> batch;
    while (!m_queue.empty() && batch.size() < kBatch) {
      batch.push_back(std::move(m_queue.front()));
      m_queue.pop_front();
    }
    const bool stopping = m_stop;
    lock.unlock();
    const bool ok = commit(batch);
    lock.lock();
    if (ok) {
      m_committed.fetch_add(batch.size(), std::memory_order_release);
      m_done.notify_all();
      continue;
    }
    if (stopping) {
      m_log.push(LogLevel::kError, "fleetsign: " + std::to_string(batch.size() + m_queue.size()) +
                                       " registry writes lost at shutdown");
      return;
    }
    // Back in front, in order; try again after a pause (a locked database clears up).
    for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
      m_queue.push_front(std::move(*it));
    }
    m_wake.wait_for(lock, std::chrono::seconds(1), [&] { return m_stop; });
  }
}

bool RegistryWriter::commit(std::deque<Item>& batch) {
  std::vector<engine::DeviceSession> sessions;
  std::vector<engine::ReportedTwin> twins;
  for (const auto& item : batch) {
    if (const auto* s = std::get_if<engine::DeviceSession>(&item)) {
      sessions.push_back(*s);
    } else {
      twins.push_back(std::get<engine::ReportedTwin>(item));
    }
  }
  try {
    m_registry->record_sessions(sessions);
    m_registry->store_reported(twins);
    return true;
  } catch (const Error& e) {
    m_log.push(LogLevel::kWarning, std::string("fleetsign: registry writer: ") + e.what());
    return false;
  }
}

}  // namespace fleetsign::broker
