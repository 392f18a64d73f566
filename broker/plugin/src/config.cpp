// Broker configuration: see config.hpp.
#include "config.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <cctype>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::broker {

namespace {

using Poco::JSON::Object;

Error invalid(const std::filesystem::path& file, const std::string& field, const std::string& why) {
  return Error(ErrorCode::kPolicyInvalid, file.string() + ": " + field + ": " + why);
}

Object::Ptr parse(const std::filesystem::path& file) {
  const std::string text = read_bounded(file.string(), kBrokerSettingsLimit, "broker settings");
  try {
    Poco::JSON::Parser parser;
    const Poco::Dynamic::Var v = parser.parse(text);
    if (v.type() != typeid(Object::Ptr)) {
      throw invalid(file, "(top level)", "not a JSON object");
    }
    return v.extract<Object::Ptr>();
  } catch (const Poco::Exception& e) {
    throw invalid(file, "(top level)", "not valid JSON: " + e.displayText());
  }
}

std::vector<std::string> strings(const std::filesystem::path& file, const Object& o,
                                 const std::string& field) {
  std::vector<std::string> out;
  if (!o.has(field)) {
    return out;
  }
  const auto array = o.getArray(field);
  if (!array) {
    throw invalid(file, field, "must be an array of strings");
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    const auto v = array->get(static_cast<unsigned>(i));
    if (!v.isString() || v.extract<std::string>().empty()) {
      throw invalid(file, field + "[" + std::to_string(i) + "]", "must be a non-empty string");
    }
    out.push_back(v.extract<std::string>());
  }
  return out;
}

}  // namespace

std::string BrokerConfig::assigned_hub() const {
  return (hosts.empty() ? std::string("localhost") : hosts.front()) + ":" + std::to_string(port);
}

std::string normalize_thumbprint(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == ':') {
      continue;
    }
    if (std::isxdigit(static_cast<unsigned char>(c)) == 0) {
      return {};
    }
    out.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  return out.size() == 64 ? out : std::string();
}

BrokerConfig load_broker_config(const std::filesystem::path& home) {
  const std::filesystem::path file = home / "broker" / "broker.json";
  const Object::Ptr o = parse(file);
  BrokerConfig c;
  c.home = home;
  if (o->has("port")) {
    const auto v = o->get("port");
    if (!v.isInteger() || v.convert<int>() < 1 || v.convert<int>() > 65535) {
      throw invalid(file, "port", "must be an integer in 1..65535");
    }
    c.port = v.convert<int>();
  }
  c.hosts = strings(file, *o, "hosts");
  if (o->has("id_scope")) {
    const auto v = o->get("id_scope");
    if (!v.isString() || v.extract<std::string>().empty()) {
      throw invalid(file, "id_scope", "must be a non-empty string");
    }
    c.id_scope = v.extract<std::string>();
  }
  for (const auto& t : strings(file, *o, "service_sha256")) {
    const std::string hex = normalize_thumbprint(t);
    if (hex.empty()) {
      throw invalid(file, "service_sha256", "'" + t + "' is not a SHA-256 thumbprint (64 hex)");
    }
    c.service_sha256.insert(hex);
  }
  c.policy = policy::load_policy_file(home / "policy.json");
  // The home's registry: a PostgreSQL URL in fleetsign.json (init --registry, registry migrate),
  // else the SQLite file.
  const std::filesystem::path home_file = home / "fleetsign.json";
  std::error_code ec;
  const Object::Ptr h =
      std::filesystem::exists(home_file, ec) ? parse(home_file) : Object::Ptr(new Object);
  if (h->has("registry") && !h->isNull("registry")) {
    const auto v = h->get("registry");
    if (!v.isString() || !engine::is_postgres_url(v.extract<std::string>())) {
      throw invalid(home_file, "registry", "must be a postgresql:// URL");
    }
    c.registry_url = v.extract<std::string>();
  }
  return c;
}

}  // namespace fleetsign::broker
