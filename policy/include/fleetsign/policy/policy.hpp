// fleetsign::policy — declarative issuance rules read from a JSON file in the home directory.
// Pure values and checks: no I/O except `load_policy_file`, no dependency on the rest of fleetsign
// beyond the header-only error vocabulary. Every value here is immutable after loading and safe
// to share read-only across threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/policy/rollover_schedule.hpp"

namespace fleetsign::policy {

// Key algorithms fleetsign knows, by their CLI/JSON names.
enum class KeyAlgorithm { kEcP256, kEcP384, kRsa2048, kRsa3072, kRsa4096 };

// "ec-p256" | "ec-p384" | "rsa-2048" | "rsa-3072" | "rsa-4096"; nullopt for anything else.
std::optional<KeyAlgorithm> parse_key_algorithm(std::string_view name) noexcept;
std::string_view key_algorithm_name(KeyAlgorithm alg) noexcept;

// A public key as seen in a CSR or certificate, described without OpenSSL types.
struct KeyDescription {
  enum class Kind { kEc, kRsa, kOther };
  Kind kind = Kind::kOther;
  int bits = 0;       // RSA modulus bits, or EC field bits
  std::string curve;  // EC: "P-256", "P-384", "P-521", or the curve's OID/short name if other
};

struct Validity {
  int root_days = 7300;          // 20 years
  int intermediate_days = 3650;  // 10 years
  int device_days = 365;
  int verification_days = 2;  // proof-of-possession certificates are short-lived
};

// Device IDs (= certificate CN = registration ID). Default from the Azure docs: ASCII letters,
// digits and '-', 1..128 characters. `extra_chars` widens the alphabet (e.g. "._:" as DPS allows).
struct DeviceIdRule {
  std::string extra_chars;
  int max_length = 128;
};

struct DeviceSubject {
  std::string organization;         // optional O= appended after CN
  std::string organizational_unit;  // optional OU=
};

// Where relying parties fetch what the service publishes (`fleetsign serve --http`): when set,
// every device certificate carries a CRL Distribution Point BASE/crl/{ca}.crl and an Authority
// Information Access caIssuers BASE/ca/{ca}.crt (RFC 5280 4.2.1.13, 4.2.2.1). "http://" or
// "https://", at most 200 characters, no query or fragment; a trailing '/' is dropped.
struct Publish {
  std::string base_url;  // empty: the certificates carry neither extension
};

// Per-group settings (used by enrollments and rollover jobs; optional in the file).
struct GroupSettings {
  std::string intermediate;        // CA name that issues this group's devices
  std::optional<int> device_days;  // overrides validity.device_days
  std::vector<int> alert_days;     // overrides alerts.days when non-empty
  int overlap_days = 14;           // old and new slot both valid
  int wave_size = 1000;            // devices triggered at once in a rollover
  RolloverOverrides rollover;      // "rollover": overrides the top level's schedule
};

// Certificate revocation lists (policy "crl"): a CA's CRL is valid `validity_hours` from its
// thisUpdate; `fleetsign serve` re-signs it when less than `resign_hours` remain, and it is
// reported as near its nextUpdate when less than `warn_hours` remain. warn < resign < validity.
struct CrlSchedule {
  int validity_hours = 168;  // 7 days
  int resign_hours = 72;     // 3 days
  int warn_hours = 24;       // 1 day
};

struct Policy {
  std::vector<KeyAlgorithm> ca_keys{KeyAlgorithm::kEcP256, KeyAlgorithm::kEcP384,
                                    KeyAlgorithm::kRsa2048, KeyAlgorithm::kRsa3072,
                                    KeyAlgorithm::kRsa4096};
  std::vector<KeyAlgorithm> device_keys{KeyAlgorithm::kEcP256, KeyAlgorithm::kEcP384,
                                        KeyAlgorithm::kRsa2048, KeyAlgorithm::kRsa3072,
                                        KeyAlgorithm::kRsa4096};
  Validity validity;
  DeviceIdRule device_id;
  DeviceSubject device_subject;
  std::vector<int> alert_days{30, 14, 7};  // strictly decreasing, all > 0
  RolloverSchedule rollover;               // scheduled rollovers (`fleetsign serve`)
  CrlSchedule crl;                         // CRL validity and re-signing (`fleetsign serve`)
  Publish publish;                         // CRL and CA URLs in device certificates
  std::map<std::string, GroupSettings> groups;
};

// Throws fleetsign::Error(kPolicyInvalid) naming the file and the JSON field, e.g.
//   "policy.json: validity.device_days: must be an integer in 1..36500, got -3".
// Unknown top-level or nested fields are an error too (a typo must not silently do nothing).
// The file is read through fleetsign::read_bounded: Error(kInputTooLarge) over kPolicyFileLimit
// bytes (1 MiB), Error(kIo) when it cannot be read or is a directory.
Policy load_policy_file(const std::filesystem::path& path);
// Same, from text; `origin` names the source in messages.
Policy parse_policy(std::string_view json_text, std::string_view origin);
// The defaults, as a commented-free JSON document `init` writes to the home.
std::string default_policy_json();

// --- Rules: each returns nullopt when satisfied, or the reason it is not (a sentence naming the
// offending value). Pure, thread-safe.
std::optional<std::string> check_device_id(const DeviceIdRule& rule, std::string_view id);
std::optional<std::string> check_device_key(const Policy& policy, const KeyDescription& key);
std::optional<std::string> check_ca_key(const Policy& policy, KeyAlgorithm alg);
// Device validity days for a group (group override, else the default).
int device_days_for(const Policy& policy, std::string_view group);
// The rollover schedule of a group: the top level's, with the group's overrides.
RolloverSchedule rollover_for(const Policy& policy, std::string_view group);
// The alert thresholds of a group (its alert_days when given, else the top level's).
const std::vector<int>& alert_days_for(const Policy& policy, std::string_view group);

}  // namespace fleetsign::policy
