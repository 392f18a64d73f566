// Log lines from the plugin's background threads, handed to the main thread (mosquitto's logging
// is the main thread's). Thread-safe; bounded so a failing disk cannot grow it without limit.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "transport.hpp"

namespace fleetsign::broker {

class LogQueue {
 public:
  void push(LogLevel level, std::string message) {
    const std::lock_guard lock(m_mutex);
    if (m_lines.size() < kMaxLines) {
      m_lines.emplace_back(level, std::move(message));
    } else {
      ++m_dropped;
    }
  }
  void drain_to(Transport& transport) {
    std::vector<std::pair<LogLevel, std::string>> lines;
    std::size_t dropped = 0;
    {
      const std::lock_guard lock(m_mutex);
      lines.swap(m_lines);
      std::swap(dropped, m_dropped);
    }
    for (auto& [level, message] : lines) {
      transport.log(level, message);
    }
    if (dropped != 0) {
      transport.log(LogLevel::kWarning, std::to_string(dropped) + " log lines dropped");
    }
  }

 private:
  static constexpr std::size_t kMaxLines = 1000;
  std::mutex m_mutex;
  std::vector<std::pair<LogLevel, std::string>> m_lines;
  std::size_t m_dropped = 0;
};

}  // namespace fleetsign::broker
