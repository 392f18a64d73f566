// `fleetsign method invoke` (one direct method on one device, through the home's backend) and
// `fleetsign fleet backend` (choose that backend). Neither takes the home lock nor opens the
// token: a method call runs beside a batch or a broker that holds the home.
#include <Poco/Exception.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <openssl/crypto.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "cli.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/fleet_config.hpp"
#include "fleetsign/jobs/iothub_trigger.hpp"
#include "fleetsign/jobs/json_value.hpp"
#include "fleetsign/jobs/trigger.hpp"

namespace fleetsign::cli {

namespace {

namespace fs = std::filesystem;

constexpr const char* kConnectionStringEnv = "FLEETSIGN_IOTHUB_CONNECTION_STRING";

int seconds_option(const Args& a, const std::string& name, int fallback, int min) {
  const int v = a.get_int(name).value_or(fallback);
  if (v < min || v > jobs::kMaxTimeoutSeconds) {
    throw Error(ErrorCode::kUsage, "--" + name + " must be " + std::to_string(min) + ".." +
                                       std::to_string(jobs::kMaxTimeoutSeconds) + " seconds, got " +
                                       std::to_string(v));
  }
  return v;
}

// The payload is refused here, before anything is sent, naming the flag.
std::string payload_option(const Args& a) {
  const std::string payload = a.get("payload").value_or("null");
  if (payload.size() > jobs::kMaxMethodPayload) {
    throw Error(ErrorCode::kInputTooLarge, "--payload is " + std::to_string(payload.size()) +
                                               " bytes; the limit is " +
                                               std::to_string(jobs::kMaxMethodPayload));
  }
  try {
    jobs::parse_json_value(payload);
  } catch (const Error& e) {
    throw Error(ErrorCode::kUsage, std::string("--payload is ") + e.what());
  }
  return payload;
}

std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.pop_back();
  }
  return text;
}

// The IoT Hub connection string: the file fleet.json names, else the environment.
std::string connection_string(const jobs::FleetConfig& config, const fs::path& home) {
  if (config.connection_string_file) {
    const fs::path file = config.connection_string_file->is_absolute()
                              ? *config.connection_string_file
                              : home / *config.connection_string_file;
    return trimmed(read_bounded(file.string(), kSecretFileLimit, "connection string file"));
  }
  if (const char* env = std::getenv(kConnectionStringEnv); env != nullptr && *env != '\0') {
    return trimmed(env);
  }
  throw Error(ErrorCode::kUsage,
              std::string("the iothub backend needs a service connection string: set ") +
                  kConnectionStringEnv +
                  " or run `fleetsign fleet backend iothub --connection-string-file FILE`");
}

void wipe(std::string& secret) {
  if (!secret.empty()) {
    OPENSSL_cleanse(secret.data(), secret.size());
  }
}

}  // namespace

std::unique_ptr<jobs::Trigger> open_fleet_backend(const std::filesystem::path& home) {
  const jobs::FleetConfig config = jobs::load_fleet_config(home);
  std::optional<std::string> secret;
  if (config.backend == jobs::Backend::kIotHub) {
    secret = connection_string(config, home);
  }
  try {
    auto trigger = jobs::open_trigger(config, home, secret);
    if (secret) wipe(*secret);
    return trigger;
  } catch (const Error& e) {
    if (secret) wipe(*secret);
    if (e.code() == ErrorCode::kNotFound) {
      throw Error(e.code(), std::string(e.what()) +
                                "; run `fleetsign broker init`, or choose IoT Hub with "
                                "`fleetsign fleet backend iothub`");
    }
    throw;
  }
}

namespace {

// `text` with every byte that is not part of a well-formed UTF-8 sequence (RFC 3629: no
// overlongs, no surrogates, nothing past U+10FFFF) replaced by U+FFFD, so what we print is
// always valid UTF-8 (and, with --json, valid JSON).
std::string well_formed_utf8(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      len = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      lo = c == 0xE0 ? 0xA0 : 0x80;
      hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      lo = c == 0xF0 ? 0x90 : 0x80;
      hi = c == 0xF4 ? 0x8F : 0xBF;
    }
    bool ok = len != 0 && i + len <= n;
    for (std::size_t k = 1; ok && k < len; ++k) {
      const unsigned char b = p[i + k];
      ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    }
    if (ok) {
      out.append(text, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

// Untrusted text from a device: printed as JSON (escaped by Poco), or as a JSON string when it
// is not JSON, so no control character reaches the terminal; never anything but UTF-8.
Poco::Dynamic::Var payload_value(const std::string& raw) {
  const std::string text = well_formed_utf8(raw);
  if (text != raw) {
    return Poco::Dynamic::Var(text);  // not UTF-8, so not JSON: shown as a string
  }
  try {
    return jobs::parse_json_value(text);
  } catch (const Error&) {
    return Poco::Dynamic::Var(text);
  }
}

int exit_status_for_method(int status) {
  if (status >= 200 && status < 300) return 0;
  if (status == jobs::kStatusDeviceOffline) return exit_status_for(ErrorCode::kDeviceOffline);
  if (status == jobs::kStatusTimeout) return exit_status_for(ErrorCode::kDeviceTimeout);
  return exit_status_for(ErrorCode::kMethodFailed);
}

int run_method_invoke(Context& ctx) {
  const Args& a = ctx.args();
  const std::string device = a.positional_at(0, "DEVICE");
  const std::string method = a.positional_at(1, "METHOD");
  if (a.positional.size() > 2) {
    throw Error(ErrorCode::kUsage, "unexpected argument '" + a.positional[2] + "' (see --help)");
  }
  // 1. Everything the user typed is checked before a connection is opened.
  const std::string payload = payload_option(a);
  const int timeout = seconds_option(a, "timeout", 30, 1);
  const int connect_timeout = seconds_option(a, "connect-timeout", 0, 0);
  auto id = engine::DeviceId::check(ctx.policy(), device);  // policy.json: no lock, no token
  if (!id) {
    throw Error(ErrorCode::kInvalidArgument, "DEVICE: " + id.error().message);
  }
  jobs::MethodRequest request{*id, method, payload, timeout, connect_timeout};
  if (auto refused = jobs::check_request(request)) {
    throw Error(ErrorCode::kUsage, "METHOD: " + refused->message);
  }
  // 2. The call.
  const auto trigger = open_fleet_backend(ctx.home_dir());
  const jobs::MethodOutcome outcome = jobs::invoke_and_wait(*trigger, std::move(request));
  if (!outcome) {
    throw Error(outcome.error().code, outcome.error().message);
  }
  // 3. The answer.
  const jobs::MethodResult& r = outcome.value();
  std::ostringstream text;
  Poco::JSON::Stringifier::condense(payload_value(r.payload), text);
  if (ctx.json()) {
    Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("status", r.status);
    o.set("payload", payload_value(r.payload));
    ctx.print_json(o);
  } else {
    std::printf("status %d\n%s\n", r.status, text.str().c_str());
    if (r.status == jobs::kStatusDeviceOffline) {
      std::fprintf(stderr, "fleetsign: device %s was not online within %d s (404)\n",
                   device.c_str(), connect_timeout);
    } else if (r.status == jobs::kStatusTimeout) {
      std::fprintf(stderr, "fleetsign: device %s did not answer within %d s (504)\n",
                   device.c_str(), timeout);
    }
  }
  return exit_status_for_method(r.status);
}

void print_config(Context& ctx, const jobs::FleetConfig& c) {
  if (ctx.json()) {
    Poco::JSON::Parser parser;
    ctx.print_json(*parser.parse(jobs::fleet_config_json(c)).extract<Poco::JSON::Object::Ptr>());
  } else {
    std::printf("%s", jobs::fleet_config_json(c).c_str());
  }
}

int run_fleet_backend(Context& ctx) {
  const Args& a = ctx.args();
  const fs::path home = ctx.home_dir();
  ctx.policy();  // the home must exist (kNotFound otherwise); nothing else is opened
  if (a.positional.empty()) {
    print_config(ctx, jobs::load_fleet_config(home));
    return 0;
  }
  const std::string backend = a.positional[0];
  if (a.positional.size() > 1) {
    throw Error(ErrorCode::kUsage, "unexpected argument '" + a.positional[1] + "' (see --help)");
  }
  jobs::FleetConfig config;
  if (backend == "broker") {
    if (a.has("connection-string-file") || a.has("ca-file")) {
      throw Error(ErrorCode::kUsage,
                  "--connection-string-file and --ca-file belong to the iothub backend");
    }
  } else if (backend == "iothub") {
    config.backend = jobs::Backend::kIotHub;
    if (auto file = path_option(a, "connection-string-file")) {
      // Checked now, so a typo shows here rather than at the first call; the key is not printed.
      std::string secret =
          trimmed(read_bounded(file->string(), kSecretFileLimit, "connection string file"));
      try {
        jobs::ServiceConnectionString::parse(secret);
      } catch (const Error& e) {
        wipe(secret);
        throw e.with_context(file->string());
      }
      wipe(secret);
      struct stat st {};
      if (::stat(file->c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
        std::fprintf(stderr, "fleetsign: warning: %s holds a secret and is readable by others\n",
                     file->c_str());
      }
      config.connection_string_file = fs::absolute(*file);
    }
    if (auto ca = path_option(a, "ca-file")) {
      // Read now (bounded, certificates only), so a wrong file shows here, not at the first call.
      engine::read_certificates(*ca, "IoT Hub CA file", kChainFileLimit);
      config.ca_file = fs::absolute(*ca);
    }
  } else {
    throw Error(ErrorCode::kUsage, "backend must be broker or iothub, got '" + backend + "'");
  }
  jobs::save_fleet_config(home, config);
  print_config(ctx, config);
  return 0;
}

}  // namespace

void add_method_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"method", "invoke"},
      "DEVICE METHOD [--payload JSON] [--timeout S] [--connect-timeout S] [--json]",
      "invoke a direct method on one device through the fleet's backend (exit 0 = 2xx answer, "
      "9 = offline (404), 10 = no answer (504), 11 = another status, 12 = backend unavailable)",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "payload", "JSON", "the method's payload (default null)");
        add_option(s, "timeout", "S",
                   "seconds to wait for the device's answer (1..300, default 30)");
        add_option(s, "connect-timeout", "S",
                   "seconds to wait for an offline device to connect (0..300, default 0)");
        add_flag(s, "json", "print {\"status\":…,\"payload\":…}");
      },
      run_method_invoke});
  commands.push_back(Command{
      {"fleet", "backend"},
      "[broker|iothub [--connection-string-file FILE] [--ca-file FILE]] [--json]",
      "show or choose how the fleet is reached: fleetsign's broker (default) or Azure IoT Hub "
      "(connection string from FILE, else $" +
          std::string(kConnectionStringEnv) + ")",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "connection-string-file", "FILE",
                   "iothub: a file holding the service connection string (HostName=…;"
                   "SharedAccessKeyName=…;SharedAccessKey=…)");
        add_option(s, "ca-file", "FILE", "iothub: trust this CA besides the system store");
        add_flag(s, "json", "print the configuration as JSON");
      },
      run_fleet_backend});
}

}  // namespace fleetsign::cli
