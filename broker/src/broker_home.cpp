#include "fleetsign/broker/broker_home.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <sstream>

#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::broker {

namespace fs = std::filesystem;

namespace {

Error bad_setting(const fs::path& file, const std::string& field, const std::string& why) {
  return Error(ErrorCode::kInvalidArgument, file.string() + ": \"" + field + "\" " + why);
}

std::vector<std::string> string_array(const Poco::JSON::Object::Ptr& obj, const std::string& key,
                                      const fs::path& file) {
  std::vector<std::string> out;
  if (!obj->has(key)) {
    return out;
  }
  const auto array = obj->getArray(key);
  if (!array) {
    throw bad_setting(file, key, "must be an array of strings");
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    const Poco::Dynamic::Var v = array->get(static_cast<unsigned>(i));
    if (!v.isString()) {
      throw bad_setting(file, key, "must be an array of strings");
    }
    out.push_back(v.extract<std::string>());
  }
  return out;
}

std::string string_field(const Poco::JSON::Object::Ptr& obj, const std::string& key,
                         const fs::path& file) {
  if (!obj->has(key)) {
    return {};
  }
  const Poco::Dynamic::Var v = obj->get(key);
  if (!v.isString()) {
    throw bad_setting(file, key, "must be a string");
  }
  return v.extract<std::string>();
}

// A mosquitto.conf value is one line: refuse anything that could add a line or an option.
std::string conf_value(const std::string& value, const char* what) {
  if (value.empty() || std::any_of(value.begin(), value.end(), [](char c) {
        return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
      })) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string(what) + " '" + value + "' cannot go into mosquitto.conf");
  }
  return value;
}

std::string to_pem(const engine::Der& der) { return engine::pem(der, "CERTIFICATE"); }

}  // namespace

std::string BrokerSettings::endpoint() const {
  const std::string host = hosts.empty() ? std::string("localhost") : hosts.front();
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

BrokerHome::BrokerHome(fs::path home_dir)
    : m_dir(fs::absolute(home_dir).lexically_normal() / "broker") {}

bool BrokerHome::initialised() const {
  // Whatever is there counts: a device or a FIFO in place of broker.json is refused by load(),
  // naming it, rather than taken for "no broker".
  std::error_code ec;
  return fs::exists(settings_path(), ec);
}

bool BrokerHome::hosts_broker() const {
  std::error_code ec;
  return initialised() && fs::exists(server_key_path(), ec);
}

BrokerSettings BrokerHome::load() const {
  if (!initialised()) {
    throw Error(ErrorCode::kNotFound,
                settings_path().string() + " does not exist: run `fleetsign broker init` first");
  }
  const std::string text =
      read_bounded(settings_path().string(), kBrokerSettingsLimit, "broker settings");
  Poco::JSON::Object::Ptr obj;
  try {
    obj = Poco::JSON::Parser().parse(text).extract<Poco::JSON::Object::Ptr>();
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kInvalidArgument,
                settings_path().string() + ": not a JSON object: " + e.what());
  }
  BrokerSettings s;
  const fs::path& file = settings_path();
  if (obj->has("port")) {
    const Poco::Dynamic::Var v = obj->get("port");
    if (!v.isInteger() || v.convert<int>() < 1 || v.convert<int>() > 65535) {
      throw bad_setting(file, "port", "must be an integer 1..65535");
    }
    s.port = v.convert<int>();
  }
  s.hosts = string_array(obj, "hosts", file);
  for (const auto& h : s.hosts) {
    check_host(h);
  }
  s.bind = string_field(obj, "bind", file);
  s.id_scope = string_field(obj, "id_scope", file);
  s.ca = string_field(obj, "ca", file);
  s.service_sha256 = string_array(obj, "service_sha256", file);
  s.persistent_client_expiration = string_field(obj, "persistent_client_expiration", file);
  if (s.persistent_client_expiration.empty()) {
    s.persistent_client_expiration = "7d";
  }
  s.plugin = string_field(obj, "plugin", file);
  return s;
}

void BrokerHome::save(const BrokerSettings& s) const {
  std::error_code ec;
  fs::create_directories(m_dir, ec);
  if (ec) {
    throw Error(ErrorCode::kIo, m_dir.string() + ": cannot be created: " + ec.message());
  }
  fs::permissions(m_dir, fs::perms::owner_all, ec);
  Poco::JSON::Object obj(Poco::JSON_PRESERVE_KEY_ORDER);
  obj.set("port", s.port);
  Poco::JSON::Array hosts;
  for (const auto& h : s.hosts) {
    hosts.add(h);
  }
  obj.set("hosts", hosts);
  obj.set("bind", s.bind);
  obj.set("id_scope", s.id_scope);
  obj.set("ca", s.ca);
  Poco::JSON::Array service;
  for (const auto& t : s.service_sha256) {
    service.add(t);
  }
  obj.set("service_sha256", service);
  obj.set("persistent_client_expiration", s.persistent_client_expiration);
  obj.set("plugin", s.plugin);
  std::ostringstream out;
  obj.stringify(out, 2);
  out << '\n';
  write_file_atomic(settings_path(), out.str(), 0600);
}

void BrokerHome::write_config(const BrokerSettings& s) const {
  const auto line = [](std::ostringstream& out, const char* key, const std::string& value) {
    out << key << ' ' << conf_value(value, key) << '\n';
  };
  std::error_code ec;
  fs::create_directories(data_dir(), ec);
  if (ec) {
    throw Error(ErrorCode::kIo, data_dir().string() + ": cannot be created: " + ec.message());
  }
  std::ostringstream out;
  out << "# Generated by `fleetsign broker init` / `broker start`; edits are overwritten.\n";
  // mosquitto drops root privileges to the user named here: keep the home's owner.
  out << "user " << (::geteuid() == 0 ? "root" : "mosquitto") << '\n';
  line(out, "pid_file", pid_path().string());
  line(out, "log_dest", "file " + log_path().string());
  out << "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n";
  out << "log_timestamp_format %Y-%m-%dT%H:%M:%S\n";
  out << "connection_messages true\n";
  out << "persistence true\n";
  line(out, "persistence_location", data_dir().string() + "/");
  line(out, "persistent_client_expiration", s.persistent_client_expiration);
  out << "per_listener_settings false\nallow_anonymous false\n";
  // IoT Hub's limits: a method payload is at most 128 KiB, a twin document 32 KiB.
  out << "max_packet_size 262144\nmax_queued_messages 1000\n";
  line(out, "plugin", s.plugin);
  line(out, "plugin_opt_home", home_dir().string());
  out << "listener " << s.port;
  if (!s.bind.empty()) {
    out << ' ' << conf_value(s.bind, "bind");
  }
  out << '\n';
  line(out, "cafile", clients_ca_path().string());
  line(out, "certfile", server_cert_path().string());
  line(out, "keyfile", server_key_path().string());
  if (fs::is_regular_file(crl_path(), ec)) {
    line(out, "crlfile", crl_path().string());
  }
  out << "require_certificate true\nuse_identity_as_username false\ntls_version tlsv1.2\n";
  write_file_atomic(config_path(), out.str(), 0600);
  // mosquitto 2.0 has no option for it: OpenSSL's own configuration turns the session tickets
  // off. A TLS 1.3 server sends two after every handshake, and making each decodes the client's
  // certificate again (OpenSSL 3.0: ~0.3 ms, 12% of the broker's time during a rotation); the
  // devices never resume a session (a rotation always brings a new certificate).
  write_file_atomic(openssl_config_path(),
                    "# Generated by `fleetsign broker init` / `broker start`; edits are "
                    "overwritten.\n"
                    "# Used by this broker's mosquitto only (OPENSSL_CONF), unless the environment "
                    "names its own.\n"
                    "openssl_conf = fleetsign_broker\n\n"
                    "[fleetsign_broker]\nssl_conf = fleetsign_ssl\n\n"
                    "[fleetsign_ssl]\nsystem_default = fleetsign_tls\n\n"
                    "[fleetsign_tls]\n"
                    "CipherString = DEFAULT:@SECLEVEL=2\n"
                    "MinProtocol = TLSv1.2\n"
                    "NumTickets = 0\n",
                    0644);
}

std::size_t BrokerHome::write_clients_ca(engine::Stores& stores) const {
  std::string pem;
  std::size_t count = 0;
  for (const engine::CaRecord& ca : stores.list_cas()) {
    pem += to_pem(ca.cert_der);
    ++count;
  }
  for (const engine::IndividualEnrollment& ie : stores.list_individuals()) {
    for (const auto* cert : {&ie.primary_cert, &ie.secondary_cert}) {
      if (!cert->empty()) {
        pem += to_pem(*cert);
        ++count;
      }
    }
  }
  if (count == 0) {
    throw Error(
        ErrorCode::kNotFound,
        "the registry has no CA: create one (`fleetsign ca create-root`) before the broker");
  }
  write_file_atomic(clients_ca_path(), pem, 0644);
  return count;
}

bool is_ip_address(const std::string& host) {
  std::array<unsigned char, 16> buf{};
  return ::inet_pton(AF_INET, host.c_str(), buf.data()) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), buf.data()) == 1;
}

void check_host(const std::string& host) {
  if (is_ip_address(host)) {
    return;
  }
  const bool ok = !host.empty() && host.size() <= 253 && host.front() != '.' &&
                  host.front() != '-' && host.back() != '.' &&
                  std::all_of(host.begin(), host.end(), [](char c) {
                    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-';
                  });
  if (!ok) {
    throw Error(
        ErrorCode::kInvalidArgument,
        "host '" + host + "' is neither a DNS name (letters, digits, '.', '-') nor an IP address");
  }
}

std::string make_id_scope(engine::RandomSource& random) {
  std::array<std::uint8_t, 4> bytes{};
  random.fill(bytes);
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string scope = "0ne";
  for (std::uint8_t b : bytes) {
    scope += kHex[b >> 4];
    scope += kHex[b & 15];
  }
  return scope;
}

fs::path find_plugin(const std::optional<fs::path>& explicit_path) {
  static constexpr const char* kName = "fleetsign-broker-plugin.so";
  std::vector<fs::path> tried;
  if (explicit_path) {
    tried.push_back(*explicit_path);
  } else {
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      tried.push_back(self.parent_path() / kName);
      tried.push_back(self.parent_path().parent_path() / "lib" / "fleetsign" / kName);
    }
#ifdef FLEETSIGN_BROKER_PLUGIN_PATH
    tried.emplace_back(FLEETSIGN_BROKER_PLUGIN_PATH);
#endif
  }
  std::string list;
  for (const fs::path& p : tried) {
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) {
      return fs::absolute(p, ec);
    }
    list += (list.empty() ? "" : ", ") + p.string();
  }
  throw Error(ErrorCode::kNotFound, "the broker plugin " + std::string(kName) +
                                        " was not found (tried " + list + "); give --plugin PATH");
}

}  // namespace fleetsign::broker
