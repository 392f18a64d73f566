#include "fleetsign/jobs/fleet_config.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/broker_trigger.hpp"
#include "fleetsign/jobs/iothub_trigger.hpp"

namespace fleetsign::jobs {

namespace fs = std::filesystem;

namespace {

Error bad(std::string_view origin, const std::string& why) {
  return Error(ErrorCode::kInvalidArgument, std::string(origin) + ": " + why);
}

Poco::JSON::Object::Ptr parse_object(std::string_view text, std::string_view origin) {
  try {
    Poco::JSON::Parser parser;
    const auto value = parser.parse(std::string(text));
    if (value.type() != typeid(Poco::JSON::Object::Ptr)) {
      throw bad(origin, "must be a JSON object");
    }
    return value.extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception& e) {
    throw bad(origin, "not JSON: " + e.message());
  }
}

std::string string_field(const Poco::JSON::Object& obj, const std::string& name,
                         std::string_view origin) {
  const auto value = obj.get(name);
  if (!value.isString() || value.extract<std::string>().empty()) {
    throw bad(origin, name + ": must be a non-empty string");
  }
  return value.extract<std::string>();
}

// A relative path in fleet.json is relative to the home.
fs::path in_home(const fs::path& home, const fs::path& p) { return p.is_absolute() ? p : home / p; }

}  // namespace

FleetConfig parse_fleet_config(std::string_view json_text, std::string_view origin) {
  const auto obj = parse_object(json_text, origin);
  FleetConfig config;
  for (const auto& name : obj->getNames()) {
    if (name != "backend" && name != "connection_string_file" && name != "ca_file") {
      throw bad(origin,
                "unknown field '" + name + "' (expected backend, connection_string_file, ca_file)");
    }
  }
  if (obj->has("backend")) {
    const std::string backend = string_field(*obj, "backend", origin);
    if (backend == "broker") {
      config.backend = Backend::kBroker;
    } else if (backend == "iothub") {
      config.backend = Backend::kIotHub;
    } else {
      throw bad(origin, "backend: must be \"broker\" or \"iothub\", got \"" + backend + "\"");
    }
  }
  if (obj->has("connection_string_file")) {
    config.connection_string_file = string_field(*obj, "connection_string_file", origin);
  }
  if (obj->has("ca_file")) {
    config.ca_file = string_field(*obj, "ca_file", origin);
  }
  if (config.backend == Backend::kBroker && (config.connection_string_file || config.ca_file)) {
    throw bad(origin, "connection_string_file and ca_file belong to the iothub backend");
  }
  return config;
}

FleetConfig load_fleet_config(const fs::path& home) {
  const fs::path file = fleet_config_path(home);
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    return FleetConfig{};
  }
  return parse_fleet_config(read_bounded(file.string(), kConfigFileLimit, "fleet config"),
                            file.string());
}

std::string fleet_config_json(const FleetConfig& config) {
  Poco::JSON::Object obj(Poco::JSON_PRESERVE_KEY_ORDER);
  obj.set("backend", config.backend == Backend::kIotHub ? "iothub" : "broker");
  if (config.connection_string_file) {
    obj.set("connection_string_file", config.connection_string_file->string());
  }
  if (config.ca_file) {
    obj.set("ca_file", config.ca_file->string());
  }
  std::ostringstream out;
  obj.stringify(out, 2);
  out << '\n';
  return out.str();
}

void save_fleet_config(const fs::path& home, const FleetConfig& config) {
  const fs::path file = fleet_config_path(home);
  const std::string text = fleet_config_json(config);
  std::string tmp = (home / ".fleet.json.tmp-XXXXXX").string();
  const auto failed = [&](const std::string& step, int err) {
    ::unlink(tmp.c_str());
    return Error(ErrorCode::kIo, file.string() + ": " + step + ": " + std::strerror(err));
  };
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    throw Error(ErrorCode::kIo,
                file.string() + ": creating a temporary file: " + std::strerror(errno));
  }
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      throw failed("write", err);
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fchmod(fd, 0644) != 0 || ::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    throw failed("fsync", err);
  }
  if (::close(fd) != 0) {
    throw failed("close", errno);
  }
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    throw failed("rename", errno);
  }
}

BrokerTriggerOptions broker_options_for_home(const fs::path& home) {
  const fs::path dir = home / "broker";
  const fs::path json = dir / "broker.json";
  BrokerTriggerOptions options;
  for (const fs::path& file : {json, dir / "ca.pem", dir / "service.crt", dir / "service.key"}) {
    std::error_code ec;
    if (!fs::exists(file, ec)) {
      throw Error(ErrorCode::kNotFound,
                  file.string() + ": no such file (the broker is not set up in this home)");
    }
  }
  const std::string origin = json.string();
  const auto obj =
      parse_object(read_bounded(origin, kBrokerSettingsLimit, "broker settings"), origin);
  if (obj->has("port")) {
    const auto port = obj->get("port");
    if (!port.isInteger() || port.convert<int>() < 1 || port.convert<int>() > 65535) {
      throw bad(origin, "port: must be an integer in 1..65535");
    }
    options.port = port.convert<int>();
  }
  if (obj->has("hosts")) {
    const auto hosts = obj->getArray("hosts");
    if (hosts.isNull() || hosts->size() == 0 || !hosts->get(0).isString()) {
      throw bad(origin, "hosts: must be a non-empty array of host names");
    }
    options.host = hosts->getElement<std::string>(0);
  }
  options.ca_file = dir / "ca.pem";
  options.cert_file = dir / "service.crt";
  options.key_file = dir / "service.key";
  return options;
}

std::unique_ptr<Trigger> open_trigger(const FleetConfig& config, const fs::path& home,
                                      const std::optional<std::string>& connection_string) {
  if (config.backend == Backend::kBroker) {
    return std::make_unique<BrokerTrigger>(broker_options_for_home(home));
  }
  if (!connection_string) {
    throw Error(ErrorCode::kUsage, "the iothub backend needs a service connection string");
  }
  IotHubTriggerOptions options(ServiceConnectionString::parse(*connection_string));
  if (config.ca_file) {
    options.ca_file = in_home(home, *config.ca_file);
  }
  return std::make_unique<IotHubTrigger>(std::move(options));
}

}  // namespace fleetsign::jobs
