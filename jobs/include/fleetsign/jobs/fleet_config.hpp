// Which backend reaches the fleet: HOME/fleet.json.
//
//   {"backend":"broker"}                                   (the default, also when the file is
//   absent)
//   {"backend":"iothub","connection_string_file":PATH,"ca_file":PATH}   (both PATHs optional)
//
// For IoT Hub the connection string comes from connection_string_file, else from the front end
// (the CLI reads FLEETSIGN_IOTHUB_CONNECTION_STRING); the file holds a secret and is never copied.
// Pure parsing and formatting here; open_trigger connects.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "fleetsign/jobs/trigger.hpp"

namespace fleetsign::jobs {

enum class Backend { kBroker, kIotHub };

struct FleetConfig {
  Backend backend = Backend::kBroker;
  std::optional<std::filesystem::path> connection_string_file;  // iothub: the secret's file
  std::optional<std::filesystem::path> ca_file;                 // iothub: extra trust
};

inline std::filesystem::path fleet_config_path(const std::filesystem::path& home) {
  return home / "fleet.json";
}

// Error(kInvalidArgument) naming `origin` and the field; unknown fields are errors too.
FleetConfig parse_fleet_config(std::string_view json_text, std::string_view origin);
// HOME/fleet.json, or the default when it does not exist (bounded read: kInputTooLarge, kIo).
FleetConfig load_fleet_config(const std::filesystem::path& home);
// The file's text (pretty, ending in a newline).
std::string fleet_config_json(const FleetConfig& config);
// Replaces HOME/fleet.json atomically (a temporary file, fsync, rename; mode 0644): Error(kIo)
// naming the file and the step that failed; an existing file is untouched on failure.
void save_fleet_config(const std::filesystem::path& home, const FleetConfig& config);

// The trigger for `config`: a BrokerTrigger for the home's broker, or an IotHubTrigger with the
// given connection string text (required for kIotHub: the caller resolves file or environment).
// Errors: those of broker_options_for_home, the constructors, and ServiceConnectionString::parse.
std::unique_ptr<Trigger> open_trigger(const FleetConfig& config, const std::filesystem::path& home,
                                      const std::optional<std::string>& connection_string);

}  // namespace fleetsign::jobs
