// The plugin's one seam to mosquitto: what the core asks the broker to do. plugin.cpp implements it
// on mosquitto's plugin functions; tests can implement it in memory. Called on the broker's main
// thread only (mosquitto's functions are not thread-safe); background threads hand their work to
// the main thread instead (fleet_broker.hpp).
#pragma once

#include <string>
#include <string_view>

namespace fleetsign::broker {

enum class LogLevel { kInfo, kNotice, kWarning, kError, kDebug };

class Transport {
 public:
  virtual ~Transport() = default;
  // Delivers one message to the client with this id only (dropped when it is not connected).
  virtual void publish(const std::string& client_id, const std::string& topic,
                       std::string_view payload) = 0;
  // Disconnects the client with this id (no will).
  virtual void kick(const std::string& client_id) = 0;
  virtual void log(LogLevel level, const std::string& message) = 0;
};

}  // namespace fleetsign::broker
