#include "fleetsign/policy/policy.hpp"

#include <Poco/Dynamic/Var.h>
#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <sstream>
#include <string_view>
#include <utility>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"
#include "json_read.hpp"

namespace fleetsign::policy {
namespace {

using Poco::Dynamic::Var;
using Poco::JSON::Array;
using Poco::JSON::Object;
using namespace detail;  // NOLINT: the reading helpers shared with rollover_policy.cpp

constexpr std::pair<KeyAlgorithm, std::string_view> kAlgorithmNames[] = {
    {KeyAlgorithm::kEcP256, "ec-p256"},   {KeyAlgorithm::kEcP384, "ec-p384"},
    {KeyAlgorithm::kRsa2048, "rsa-2048"}, {KeyAlgorithm::kRsa3072, "rsa-3072"},
    {KeyAlgorithm::kRsa4096, "rsa-4096"},
};

constexpr int kMaxDays = 36500;
constexpr int kMaxVerificationDays = 3650;
// Azure IoT Hub and DPS cap registration and device IDs at 128 characters.
constexpr int kMaxDeviceIdLength = 128;
// X.520 upper bound for O and OU (RFC 5280 ub-organization-name, ub-organizational-unit-name).
constexpr int kMaxSubjectLength = 64;
// '-' is in the base alphabet; these are the further characters DPS registration IDs accept.
constexpr std::string_view kExtraIdChars = "._:-";
constexpr int kMinRsaBits = 2048;
constexpr int kMaxOverlapDays = 3650;
constexpr int kMaxWaveSize = 1000000;

std::string names_of(const std::vector<KeyAlgorithm>& algorithms) {
  return join(algorithms, key_algorithm_name);
}

std::vector<KeyAlgorithm> read_algorithms(const Var& value, const Where& where) {
  const auto array = as_array(value, where);
  if (array->size() == 0) {
    where.fail("must list at least one key algorithm, got []");
  }
  std::vector<KeyAlgorithm> algorithms;
  for (std::size_t i = 0; i < array->size(); ++i) {
    const std::string name = as_string(array->get(i), where.item(i));
    const auto algorithm = parse_key_algorithm(name);
    if (!algorithm) {
      where.item(i).fail("unknown key algorithm; known: " +
                         join(kAlgorithmNames, [](const auto& entry) { return entry.second; }) +
                         ", got " + quote(name));
    }
    algorithms.push_back(*algorithm);
  }
  return algorithms;
}

// Alerts fire at each threshold in turn, so a repeated or rising value would be dead or reorder.
std::vector<int> read_alert_days(const Var& value, const Where& where) {
  const auto array = as_array(value, where);
  if (array->size() == 0) {
    where.fail("must list at least one day count, got []");
  }
  std::vector<int> days;
  for (std::size_t i = 0; i < array->size(); ++i) {
    const int day = as_int_in(array->get(i), where.item(i), 1, kMaxDays);
    if (!days.empty() && day >= days.back()) {
      where.item(i).fail("must be strictly decreasing (previous entry is " +
                         std::to_string(days.back()) + "), got " + std::to_string(day));
    }
    days.push_back(day);
  }
  return days;
}

std::string read_extra_chars(const Var& value, const Where& where) {
  std::string chars = as_string(value, where);
  for (const char c : chars) {
    if (kExtraIdChars.find(c) == std::string_view::npos) {
      where.fail("may only contain '.', '_', ':' or '-', got " + quote(std::string(1, c)) + " in " +
                 quote(chars));
    }
  }
  return chars;
}

std::string read_subject_part(const Var& value, const Where& where) {
  std::string text = as_string(value, where);
  // Count code points, not bytes: the bound is in characters and names may be non-ASCII.
  const auto length = std::count_if(text.begin(), text.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  });
  if (length > kMaxSubjectLength) {
    where.fail("must be at most " + std::to_string(kMaxSubjectLength) + " characters, got " +
               std::to_string(length));
  }
  return text;
}

std::string read_ca_name(const Var& value, const Where& where) {
  std::string name = as_string(value, where);
  if (name.empty()) {
    where.fail("must name a CA, got ''");
  }
  return name;
}

Validity read_validity(const Var& value, const Where& where) {
  const Section section(value, where,
                        {"root_days", "intermediate_days", "device_days", "verification_days"});
  Validity validity;
  section.read_int("root_days", validity.root_days, 1, kMaxDays);
  section.read_int("intermediate_days", validity.intermediate_days, 1, kMaxDays);
  section.read_int("device_days", validity.device_days, 1, kMaxDays);
  section.read_int("verification_days", validity.verification_days, 1, kMaxVerificationDays);
  return validity;
}

// A CRL lives at most a year: relying parties fetch it far more often than that.
constexpr int kMaxCrlHours = 366 * 24;

CrlSchedule read_crl(const Var& value, const Where& where) {
  const Section section(value, where, {"validity_hours", "resign_hours", "warn_hours"});
  CrlSchedule crl;
  section.read_int("validity_hours", crl.validity_hours, 2, kMaxCrlHours);
  section.read_int("resign_hours", crl.resign_hours, 1, kMaxCrlHours);
  section.read_int("warn_hours", crl.warn_hours, 0, kMaxCrlHours);
  if (crl.resign_hours >= crl.validity_hours) {
    where.field("resign_hours")
        .fail("must be less than validity_hours (" + std::to_string(crl.validity_hours) +
              "), got " + std::to_string(crl.resign_hours));
  }
  if (crl.warn_hours >= crl.resign_hours) {
    where.field("warn_hours")
        .fail("must be less than resign_hours (" + std::to_string(crl.resign_hours) + "), got " +
              std::to_string(crl.warn_hours));
  }
  return crl;
}

DeviceIdRule read_device_id(const Var& value, const Where& where) {
  const Section section(value, where, {"extra_chars", "max_length"});
  DeviceIdRule rule;
  section.read("extra_chars", rule.extra_chars, read_extra_chars);
  section.read_int("max_length", rule.max_length, 1, kMaxDeviceIdLength);
  return rule;
}

DeviceSubject read_device_subject(const Var& value, const Where& where) {
  const Section section(value, where, {"organization", "organizational_unit"});
  DeviceSubject subject;
  section.read("organization", subject.organization, read_subject_part);
  section.read("organizational_unit", subject.organizational_unit, read_subject_part);
  return subject;
}

// A base URL for the certificates' CRL and CA URLs: http or https, a host, an optional port and
// path, of characters that need no escaping in a URI and no quoting anywhere they are written
// (letters, digits, - . _ ~ / : and %).
std::string read_base_url(const Var& value, const Where& where) {
  std::string url = as_string(value, where);
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.empty()) return url;
  constexpr std::size_t kMaxUrl = 200;
  const std::size_t scheme = url.rfind("https://", 0) == 0  ? 8
                             : url.rfind("http://", 0) == 0 ? 7
                                                            : 0;
  const auto allowed = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("-._~/:%").find(c) != std::string_view::npos;
  };
  const std::string host = scheme == 0 ? "" : url.substr(scheme, url.find('/', scheme) - scheme);
  if (scheme == 0 || url.size() > kMaxUrl || !std::all_of(url.begin(), url.end(), allowed) ||
      host.empty() || host.front() == ':' || url.find("//", scheme) != std::string::npos) {
    where.fail("must be an http:// or https:// URL with a host, at most " +
               std::to_string(kMaxUrl) + " characters of letters, digits and - . _ ~ / : %, got '" +
               url + "'");
  }
  return url;
}

Publish read_publish(const Var& value, const Where& where) {
  const Section section(value, where, {"base_url"});
  Publish publish;
  section.read("base_url", publish.base_url, read_base_url);
  return publish;
}

GroupSettings read_group(const Var& value, const Where& where) {
  const Section section(
      value, where,
      {"intermediate", "device_days", "alert_days", "overlap_days", "wave_size", "rollover"});
  GroupSettings group;
  section.read("intermediate", group.intermediate, read_ca_name);
  section.read_int("device_days", group.device_days, 1, kMaxDays);
  section.read("alert_days", group.alert_days, read_alert_days);
  section.read_int("overlap_days", group.overlap_days, 0, kMaxOverlapDays);
  section.read_int("wave_size", group.wave_size, 1, kMaxWaveSize);
  section.read("rollover", group.rollover, read_rollover_overrides);
  return group;
}

std::map<std::string, GroupSettings> read_groups(const Var& value, const Where& where) {
  const auto object = as_object(value, where);
  std::map<std::string, GroupSettings> groups;
  for (const auto& name : object->getNames()) {
    if (name.empty()) {
      where.fail("group names must not be empty");
    }
    groups.emplace(name, read_group(object->get(name), where.field(name)));
  }
  return groups;
}

Policy read_policy(const Var& document, const Where& where) {
  const Section section(document, where,
                        {"ca_keys", "device_keys", "validity", "device_id", "device_subject",
                         "alert_days", "rollover", "crl", "publish", "groups"});
  Policy policy;
  section.read("ca_keys", policy.ca_keys, read_algorithms);
  section.read("device_keys", policy.device_keys, read_algorithms);
  section.read("validity", policy.validity, read_validity);
  section.read("device_id", policy.device_id, read_device_id);
  section.read("device_subject", policy.device_subject, read_device_subject);
  section.read("alert_days", policy.alert_days, read_alert_days);
  section.read("rollover", policy.rollover, read_rollover);
  section.read("crl", policy.crl, read_crl);
  section.read("publish", policy.publish, read_publish);
  section.read("groups", policy.groups, read_groups);
  return policy;
}

// --- Writing JSON.

Poco::JSON::Object::Ptr ordered_object() {
  return new Poco::JSON::Object(Poco::JSON_PRESERVE_KEY_ORDER);
}

Poco::JSON::Array::Ptr algorithms_json(const std::vector<KeyAlgorithm>& algorithms) {
  Poco::JSON::Array::Ptr out = new Poco::JSON::Array;
  for (const KeyAlgorithm alg : algorithms) out->add(std::string(key_algorithm_name(alg)));
  return out;
}

Poco::JSON::Array::Ptr days_json(const std::vector<int>& days) {
  Poco::JSON::Array::Ptr out = new Poco::JSON::Array;
  for (const int day : days) out->add(day);
  return out;
}

// --- Rule helpers.

// The allowed list in a refusal names what the device could use instead, preferring the same
// key type so the advice is actionable ("use P-384", not "use RSA").
std::string allowed_names(const std::vector<KeyAlgorithm>& allowed, bool want_ec) {
  std::vector<KeyAlgorithm> same_kind;
  std::copy_if(allowed.begin(), allowed.end(), std::back_inserter(same_kind), [&](auto alg) {
    return (alg == KeyAlgorithm::kEcP256 || alg == KeyAlgorithm::kEcP384) == want_ec;
  });
  return names_of(same_kind.empty() ? allowed : same_kind);
}

bool contains(const std::vector<KeyAlgorithm>& list, KeyAlgorithm algorithm) {
  return std::find(list.begin(), list.end(), algorithm) != list.end();
}

std::optional<KeyAlgorithm> ec_algorithm(std::string_view curve) {
  if (curve == "P-256" || curve == "prime256v1" || curve == "secp256r1") {
    return KeyAlgorithm::kEcP256;
  }
  if (curve == "P-384" || curve == "secp384r1") {
    return KeyAlgorithm::kEcP384;
  }
  return std::nullopt;
}

bool is_base_id_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

std::string allowed_id_chars(const DeviceIdRule& rule) {
  std::string out = "letters, digits, '-'";
  std::string listed;
  for (const char c : rule.extra_chars) {
    if (!is_base_id_char(c) && listed.find(c) == std::string::npos) {
      listed += c;
      out += ", " + quote(std::string(1, c));
    }
  }
  return out;
}

}  // namespace

std::optional<KeyAlgorithm> parse_key_algorithm(std::string_view name) noexcept {
  for (const auto& [algorithm, known] : kAlgorithmNames) {
    if (known == name) {
      return algorithm;
    }
  }
  return std::nullopt;
}

std::string_view key_algorithm_name(KeyAlgorithm alg) noexcept {
  for (const auto& [algorithm, name] : kAlgorithmNames) {
    if (algorithm == alg) {
      return name;
    }
  }
  return "unknown";
}

Policy load_policy_file(const std::filesystem::path& path) {
  return parse_policy(read_bounded(path.string(), kPolicyFileLimit, "policy file"), path.string());
}

Policy parse_policy(std::string_view json_text, std::string_view origin) {
  const Where where{origin, ""};
  Var document;
  try {
    Poco::JSON::Parser parser;
    document = parser.parse(std::string(json_text));
  } catch (const Poco::Exception& e) {
    where.fail("invalid JSON: " + e.message());
  }
  return read_policy(document, where);
}

std::string default_policy_json() {
  const Policy defaults;
  const Validity& v = defaults.validity;
  auto validity = ordered_object();
  validity->set("root_days", v.root_days);
  validity->set("intermediate_days", v.intermediate_days);
  validity->set("device_days", v.device_days);
  validity->set("verification_days", v.verification_days);
  auto device_id = ordered_object();
  device_id->set("extra_chars", defaults.device_id.extra_chars);
  device_id->set("max_length", defaults.device_id.max_length);
  auto device_subject = ordered_object();
  device_subject->set("organization", defaults.device_subject.organization);
  device_subject->set("organizational_unit", defaults.device_subject.organizational_unit);
  auto doc = ordered_object();
  doc->set("ca_keys", algorithms_json(defaults.ca_keys));
  doc->set("device_keys", algorithms_json(defaults.device_keys));
  doc->set("validity", validity);
  doc->set("device_id", device_id);
  doc->set("device_subject", device_subject);
  doc->set("alert_days", days_json(defaults.alert_days));
  doc->set("rollover", rollover_json(defaults.rollover));
  auto crl = ordered_object();
  crl->set("validity_hours", defaults.crl.validity_hours);
  crl->set("resign_hours", defaults.crl.resign_hours);
  crl->set("warn_hours", defaults.crl.warn_hours);
  doc->set("crl", crl);
  auto publish = ordered_object();
  publish->set("base_url", defaults.publish.base_url);
  doc->set("publish", publish);
  doc->set("groups", ordered_object());
  std::ostringstream out;
  doc->stringify(out, 2);
  out << '\n';
  return out.str();
}

std::optional<std::string> check_device_id(const DeviceIdRule& rule, std::string_view id) {
  if (id.empty()) {
    return "device ID is empty";
  }
  for (std::size_t i = 0; i < id.size(); ++i) {
    const char c = id[i];
    if (!is_base_id_char(c) && rule.extra_chars.find(c) == std::string::npos) {
      return "device ID " + quote(id) + " contains " + quote(std::string_view(&c, 1)) +
             " at position " + std::to_string(i) + "; allowed: " + allowed_id_chars(rule);
    }
  }
  // Checked after the alphabet, so the ID is ASCII and bytes are characters.
  if (id.size() > static_cast<std::size_t>(rule.max_length)) {
    return "device ID is " + std::to_string(id.size()) + " characters; the maximum is " +
           std::to_string(rule.max_length);
  }
  return std::nullopt;
}

std::optional<std::string> check_device_key(const Policy& policy, const KeyDescription& key) {
  switch (key.kind) {
    case KeyDescription::Kind::kEc: {
      const auto algorithm = ec_algorithm(key.curve);
      if (algorithm && contains(policy.device_keys, *algorithm)) {
        return std::nullopt;
      }
      const std::string curve = key.curve.empty() ? "(unnamed)" : escape(key.curve);
      return "EC curve " + curve +
             " is not allowed; allowed: " + allowed_names(policy.device_keys, true);
    }
    case KeyDescription::Kind::kRsa: {
      const std::string name = "RSA-" + std::to_string(key.bits);
      // Below 2048 bits is refused regardless of the file: no policy may weaken this floor.
      if (key.bits < kMinRsaBits) {
        return name + " is below the minimum of " + std::to_string(kMinRsaBits) + " bits";
      }
      const auto algorithm = parse_key_algorithm("rsa-" + std::to_string(key.bits));
      if (algorithm && contains(policy.device_keys, *algorithm)) {
        return std::nullopt;
      }
      return name + " is not allowed; allowed: " + allowed_names(policy.device_keys, false);
    }
    case KeyDescription::Kind::kOther:
      break;
  }
  return "key type is neither EC nor RSA; allowed: " + names_of(policy.device_keys);
}

std::optional<std::string> check_ca_key(const Policy& policy, KeyAlgorithm alg) {
  if (contains(policy.ca_keys, alg)) {
    return std::nullopt;
  }
  return "CA key algorithm " + std::string(key_algorithm_name(alg)) +
         " is not allowed; allowed: " + names_of(policy.ca_keys);
}

int device_days_for(const Policy& policy, std::string_view group) {
  const auto found = policy.groups.find(std::string(group));
  if (found != policy.groups.end() && found->second.device_days) {
    return *found->second.device_days;
  }
  return policy.validity.device_days;
}

}  // namespace fleetsign::policy
