// DPS registration (PROTOCOL.md, "DPS registration"): a device connected in DPS mode asks to
// register; the decision is the engine's Authenticator, as the hub connection's is; an allowed
// registration becomes an operation the device polls, assigned to this broker.
// Main thread only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "config.hpp"
#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/clock.hpp"
#include "sessions.hpp"
#include "transport.hpp"

namespace fleetsign::broker {

inline constexpr std::size_t kDpsPayloadLimit = 16 * 1024;

class DpsService {
 public:
  DpsService(const BrokerConfig& config, Transport& transport, engine::RandomSource& random)
      : m_config(config), m_transport(transport), m_random(random) {}

  // `session`: a DPS-mode device. `now`: unix seconds.
  void register_device(const Session& session, std::string_view rid, std::string_view payload,
                       engine::Authenticator& auth, std::int64_t now);
  void operation_status(const Session& session, std::string_view rid,
                        std::string_view operation_id);
  void device_left(const std::string& device_id) { m_operations.erase(device_id); }

 private:
  struct Operation {
    std::string id, etag;
    std::int64_t created = 0;
  };
  std::string random_hex(std::size_t bytes);
  void refuse(const Session& session, std::string_view rid, int status, std::int64_t code,
              const std::string& message, std::int64_t now);

  const BrokerConfig& m_config;
  Transport& m_transport;
  engine::RandomSource& m_random;
  std::unordered_map<std::string, Operation> m_operations;  // by device: its latest registration
};

}  // namespace fleetsign::broker
