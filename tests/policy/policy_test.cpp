#include "fleetsign/policy/policy.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fleetsign/error.hpp"

namespace fleetsign::policy {
namespace {

// gtest alone (no gmock): a predicate that prints both strings when it fails.
::testing::AssertionResult has_substr(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "\n  text: " << text << "\n  lacks: " << part;
}

// Runs parse_policy and returns the thrown error; fails the test if nothing was thrown.
Error parse_error(const std::string& json) {
  try {
    parse_policy(json, "policy.json");
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error for: " << json;
  return Error(ErrorCode::kOk, "");
}

void expect_default_values(const Policy& policy) {
  const Policy defaults;
  EXPECT_EQ(policy.ca_keys, defaults.ca_keys);
  EXPECT_EQ(policy.device_keys, defaults.device_keys);
  EXPECT_EQ(policy.validity.root_days, 7300);
  EXPECT_EQ(policy.validity.intermediate_days, 3650);
  EXPECT_EQ(policy.validity.device_days, 365);
  EXPECT_EQ(policy.validity.verification_days, 2);
  EXPECT_EQ(policy.device_id.extra_chars, "");
  EXPECT_EQ(policy.device_id.max_length, 128);
  EXPECT_EQ(policy.device_subject.organization, "");
  EXPECT_EQ(policy.device_subject.organizational_unit, "");
  EXPECT_EQ(policy.alert_days, (std::vector<int>{30, 14, 7}));
  EXPECT_TRUE(policy.groups.empty());
}

// --- Key algorithm names

TEST(KeyAlgorithmName, RoundTripsEveryAlgorithm) {
  for (const auto alg : {KeyAlgorithm::kEcP256, KeyAlgorithm::kEcP384, KeyAlgorithm::kRsa2048,
                         KeyAlgorithm::kRsa3072, KeyAlgorithm::kRsa4096}) {
    EXPECT_EQ(parse_key_algorithm(key_algorithm_name(alg)), alg);
  }
  EXPECT_EQ(key_algorithm_name(KeyAlgorithm::kRsa3072), "rsa-3072");
}

TEST(KeyAlgorithmName, RejectsUnknownAndWrongCaseNames) {
  EXPECT_EQ(parse_key_algorithm("ec-p521"), std::nullopt);
  EXPECT_EQ(parse_key_algorithm("EC-P256"), std::nullopt);
  EXPECT_EQ(parse_key_algorithm(""), std::nullopt);
}

// --- Reading the file

TEST(PolicyFile, DefaultJsonParsesBackToDefaults) {
  expect_default_values(parse_policy(default_policy_json(), "default"));
}

TEST(PolicyFile, DefaultJsonIsPrettyPrintedWithEverySection) {
  const std::string json = default_policy_json();
  for (const char* key :
       {"\n  \"ca_keys\"", "\n  \"device_keys\"", "\n  \"validity\"",
        "\n    \"verification_days\": 2", "\n  \"device_id\"", "\n  \"device_subject\"",
        "\n  \"alert_days\": [\n    30,\n    14,\n    7\n  ]", "\n  \"groups\""}) {
    EXPECT_TRUE(has_substr(json, key));
  }
}

TEST(PolicyFile, EmptyObjectGivesDefaults) { expect_default_values(parse_policy("{}", "x")); }

TEST(PolicyFile, ReadsEveryField) {
  const Policy policy = parse_policy(R"({
    "ca_keys": ["ec-p384"],
    "device_keys": ["ec-p256", "rsa-3072"],
    "validity": {"root_days": 9000, "intermediate_days": 4000, "device_days": 90,
                 "verification_days": 1},
    "device_id": {"extra_chars": "._:", "max_length": 64},
    "device_subject": {"organization": "Acme", "organizational_unit": "Sensors"},
    "alert_days": [60, 1],
    "groups": {"line-a": {"intermediate": "plant-1", "device_days": 30, "alert_days": [10, 5],
                          "overlap_days": 0, "wave_size": 50},
               "line-b": {}}
  })",
                                     "policy.json");
  EXPECT_EQ(policy.ca_keys, std::vector<KeyAlgorithm>{KeyAlgorithm::kEcP384});
  EXPECT_EQ(policy.device_keys,
            (std::vector<KeyAlgorithm>{KeyAlgorithm::kEcP256, KeyAlgorithm::kRsa3072}));
  EXPECT_EQ(policy.validity.root_days, 9000);
  EXPECT_EQ(policy.validity.intermediate_days, 4000);
  EXPECT_EQ(policy.validity.device_days, 90);
  EXPECT_EQ(policy.validity.verification_days, 1);
  EXPECT_EQ(policy.device_id.extra_chars, "._:");
  EXPECT_EQ(policy.device_id.max_length, 64);
  EXPECT_EQ(policy.device_subject.organization, "Acme");
  EXPECT_EQ(policy.device_subject.organizational_unit, "Sensors");
  EXPECT_EQ(policy.alert_days, (std::vector<int>{60, 1}));
  ASSERT_EQ(policy.groups.size(), 2u);
  const GroupSettings& a = policy.groups.at("line-a");
  EXPECT_EQ(a.intermediate, "plant-1");
  EXPECT_EQ(a.device_days, 30);
  EXPECT_EQ(a.alert_days, (std::vector<int>{10, 5}));
  EXPECT_EQ(a.overlap_days, 0);
  EXPECT_EQ(a.wave_size, 50);
  const GroupSettings& b = policy.groups.at("line-b");
  EXPECT_EQ(b.intermediate, "");
  EXPECT_EQ(b.device_days, std::nullopt);
  EXPECT_TRUE(b.alert_days.empty());
  EXPECT_EQ(b.overlap_days, 14);
  EXPECT_EQ(b.wave_size, 1000);
}

TEST(PolicyFile, MissingFieldsKeepTheirDefaults) {
  const Policy policy = parse_policy(R"({"validity": {"device_days": 30}})", "x");
  EXPECT_EQ(policy.validity.device_days, 30);
  EXPECT_EQ(policy.validity.root_days, 7300);
  EXPECT_EQ(policy.alert_days, (std::vector<int>{30, 14, 7}));
}

TEST(PolicyFile, AcceptsBoundaryValues) {
  const Policy low = parse_policy(R"({
    "validity": {"root_days": 1, "device_days": 1, "verification_days": 1},
    "device_id": {"max_length": 1, "extra_chars": "-._:"},
    "alert_days": [1],
    "groups": {"g": {"overlap_days": 0, "wave_size": 1, "device_days": 1}}})",
                                  "x");
  EXPECT_EQ(low.device_id.max_length, 1);
  EXPECT_EQ(low.groups.at("g").wave_size, 1);
  const Policy high = parse_policy(R"({
    "validity": {"root_days": 36500, "device_days": 36500, "verification_days": 3650},
    "device_id": {"max_length": 128},
    "alert_days": [36500, 1],
    "groups": {"g": {"overlap_days": 3650, "wave_size": 1000000, "device_days": 36500}}})",
                                   "x");
  EXPECT_EQ(high.validity.verification_days, 3650);
  EXPECT_EQ(high.groups.at("g").wave_size, 1000000);
}

TEST(PolicyFile, RejectsUnknownFieldNamingIt) {
  const Error e = parse_error(R"({"validity": {"device_dayz": 30}})");
  EXPECT_EQ(e.code(), ErrorCode::kPolicyInvalid);
  EXPECT_TRUE(has_substr(e.what(), "policy.json: validity.device_dayz: unknown field"));
}

TEST(PolicyFile, CrlScheduleHasSaneDefaultsAndOrderedMargins) {
  const Policy defaults = parse_policy("{}", "x");
  EXPECT_EQ(defaults.crl.validity_hours, 168);
  EXPECT_EQ(defaults.crl.resign_hours, 72);
  EXPECT_EQ(defaults.crl.warn_hours, 24);
  const Policy p =
      parse_policy(R"({"crl": {"validity_hours": 48, "resign_hours": 12, "warn_hours": 2}})", "x");
  EXPECT_EQ(p.crl.validity_hours, 48);
  EXPECT_EQ(p.crl.resign_hours, 12);
  EXPECT_EQ(p.crl.warn_hours, 2);
  Error e = parse_error(R"({"crl": {"validity_hours": 48, "resign_hours": 48}})");
  EXPECT_EQ(e.code(), ErrorCode::kPolicyInvalid);
  EXPECT_TRUE(has_substr(e.what(), "policy.json: crl.resign_hours: must be less than")) << e.what();
  e = parse_error(R"({"crl": {"resign_hours": 10, "warn_hours": 10}})");
  EXPECT_TRUE(has_substr(e.what(), "crl.warn_hours: must be less than")) << e.what();
  e = parse_error(R"({"crl": {"validity_hourz": 10}})");
  EXPECT_TRUE(has_substr(e.what(), "crl.validity_hourz: unknown field")) << e.what();
}

TEST(PolicyFile, RejectsUnknownTopLevelField) {
  const Error e = parse_error(R"({"alert_dayz": [30]})");
  EXPECT_EQ(e.code(), ErrorCode::kPolicyInvalid);
  EXPECT_TRUE(has_substr(e.what(), "policy.json: alert_dayz: unknown field"));
}

TEST(PolicyFile, RejectsUnknownFieldInsideAGroup) {
  const Error e = parse_error(R"({"groups": {"line-a": {"wavesize": 10}}})");
  EXPECT_EQ(e.code(), ErrorCode::kPolicyInvalid);
  EXPECT_TRUE(has_substr(e.what(), "policy.json: groups.line-a.wavesize: unknown field"));
}

TEST(PolicyFile, RejectsMalformedJsonWithParserText) {
  const Error e = parse_error(R"({"validity": {"device_days": 30,}})");
  EXPECT_EQ(e.code(), ErrorCode::kPolicyInvalid);
  EXPECT_TRUE(has_substr(e.what(), "policy.json: invalid JSON: "));
  EXPECT_TRUE(has_substr(e.what(), "unexpected"));
}

TEST(PolicyFile, RejectsEmptyText) { EXPECT_EQ(parse_error("").code(), ErrorCode::kPolicyInvalid); }

TEST(PolicyFile, RejectsDocumentThatIsNotAnObject) {
  const Error e = parse_error("[1, 2]");
  EXPECT_EQ(e.code(), ErrorCode::kPolicyInvalid);
  EXPECT_TRUE(has_substr(e.what(), "policy.json: must be an object, got array"));
}

// Each bad value must be refused with kPolicyInvalid, naming the dotted field path and the cause.
struct InvalidCase {
  const char* name;
  const char* json;
  const char* expected;  // substring: the path and the problem
};

class PolicyFileInvalid : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(PolicyFileInvalid, RejectsValueNamingFieldAndCause) {
  const Error e = parse_error(GetParam().json);
  EXPECT_EQ(e.code(), ErrorCode::kPolicyInvalid);
  EXPECT_TRUE(has_substr(e.what(), std::string("policy.json: ") + GetParam().expected));
}

const InvalidCase kInvalidCases[] = {
    {"NegativeDeviceDays", R"({"validity": {"device_days": -3}})",
     "validity.device_days: must be an integer in 1..36500, got -3"},
    {"ZeroRootDays", R"({"validity": {"root_days": 0}})", "validity.root_days: must be an integer"},
    {"TooManyIntermediateDays", R"({"validity": {"intermediate_days": 36501}})",
     "validity.intermediate_days: must be an integer in 1..36500, got 36501"},
    {"DaysAsString", R"({"validity": {"device_days": "365"}})",
     "validity.device_days: must be an integer, got string"},
    {"DaysAsFraction", R"({"validity": {"device_days": 1.5}})",
     "validity.device_days: must be an integer, got 1.5"},
    {"DaysAsBoolean", R"({"validity": {"device_days": true}})",
     "validity.device_days: must be an integer, got boolean"},
    {"DaysAsNull", R"({"validity": {"device_days": null}})",
     "validity.device_days: must be an integer, got null"},
    {"DaysBeyondInt64", R"({"validity": {"device_days": 18446744073709551615}})",
     "validity.device_days: must be an integer in 1..36500, got 18446744073709551615"},
    {"VerificationDaysTooLong", R"({"validity": {"verification_days": 3651}})",
     "validity.verification_days: must be an integer in 1..3650, got 3651"},
    {"ValidityNotObject", R"({"validity": 5})", "validity: must be an object, got number"},
    {"MaxLengthZero", R"({"device_id": {"max_length": 0}})",
     "device_id.max_length: must be an integer in 1..128, got 0"},
    {"MaxLengthAboveAzureCap", R"({"device_id": {"max_length": 129}})",
     "device_id.max_length: must be an integer in 1..128, got 129"},
    {"ExtraCharSlash", R"({"device_id": {"extra_chars": "./"}})",
     "device_id.extra_chars: may only contain '.', '_', ':' or '-', got '/'"},
    {"ExtraCharSpace", R"({"device_id": {"extra_chars": " "}})",
     "device_id.extra_chars: may only contain '.', '_', ':' or '-', got ' '"},
    {"ExtraCharHash", R"({"device_id": {"extra_chars": "#"}})",
     "device_id.extra_chars: may only contain '.', '_', ':' or '-', got '#'"},
    {"ExtraCharControl", R"({"device_id": {"extra_chars": "\u0001"}})",
     "device_id.extra_chars: may only contain '.', '_', ':' or '-', got '\\x01'"},
    {"ExtraCharsNotString", R"({"device_id": {"extra_chars": 5}})",
     "device_id.extra_chars: must be a string, got number"},
    {"OrganizationNotString", R"({"device_subject": {"organization": ["Acme"]}})",
     "device_subject.organization: must be a string, got array"},
    {"OrganizationalUnitTooLong",
     R"({"device_subject": {"organizational_unit": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}})",
     "device_subject.organizational_unit: must be at most 64 characters, got 65"},
    {"AlertDaysEmpty", R"({"alert_days": []})", "alert_days: must list at least one day count"},
    {"AlertDaysIncreasing", R"({"alert_days": [7, 14]})",
     "alert_days[1]: must be strictly decreasing (previous entry is 7), got 14"},
    {"AlertDaysRepeated", R"({"alert_days": [30, 30]})",
     "alert_days[1]: must be strictly decreasing"},
    {"AlertDaysZero", R"({"alert_days": [30, 0]})",
     "alert_days[1]: must be an integer in 1..36500, got 0"},
    {"AlertDaysNegative", R"({"alert_days": [-1]})",
     "alert_days[0]: must be an integer in 1..36500, got -1"},
    {"AlertDaysNotArray", R"({"alert_days": 30})", "alert_days: must be an array, got number"},
    {"AlertDayAsString", R"({"alert_days": [30, "7"]})",
     "alert_days[1]: must be an integer, got string"},
    {"CaKeysEmpty", R"({"ca_keys": []})", "ca_keys: must list at least one key algorithm"},
    {"CaKeyUnknown", R"({"ca_keys": ["ec-p256", "ec-p521"]})",
     "ca_keys[1]: unknown key algorithm; known: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096, "
     "got 'ec-p521'"},
    {"CaKeyNotString", R"({"ca_keys": [256]})", "ca_keys[0]: must be a string, got number"},
    {"CaKeysNotArray", R"({"ca_keys": "ec-p256"})", "ca_keys: must be an array, got string"},
    {"DeviceKeysEmpty", R"({"device_keys": []})",
     "device_keys: must list at least one key algorithm"},
    {"DeviceKeyUnknown", R"({"device_keys": ["rsa-1024"]})",
     "device_keys[0]: unknown key algorithm"},
    {"GroupsNotObject", R"({"groups": []})", "groups: must be an object, got array"},
    {"GroupNotObject", R"({"groups": {"g": 5}})", "groups.g: must be an object, got number"},
    {"GroupWaveSizeZero", R"({"groups": {"g": {"wave_size": 0}}})",
     "groups.g.wave_size: must be an integer in 1..1000000, got 0"},
    {"GroupWaveSizeTooLarge", R"({"groups": {"g": {"wave_size": 1000001}}})",
     "groups.g.wave_size: must be an integer in 1..1000000, got 1000001"},
    {"GroupOverlapNegative", R"({"groups": {"g": {"overlap_days": -1}}})",
     "groups.g.overlap_days: must be an integer in 0..3650, got -1"},
    {"GroupOverlapTooLong", R"({"groups": {"g": {"overlap_days": 3651}}})",
     "groups.g.overlap_days: must be an integer in 0..3650, got 3651"},
    {"GroupIntermediateEmpty", R"({"groups": {"g": {"intermediate": ""}}})",
     "groups.g.intermediate: must name a CA"},
    {"GroupIntermediateNotString", R"({"groups": {"g": {"intermediate": 1}}})",
     "groups.g.intermediate: must be a string, got number"},
    {"GroupDeviceDaysZero", R"({"groups": {"g": {"device_days": 0}}})",
     "groups.g.device_days: must be an integer in 1..36500, got 0"},
    {"GroupAlertDaysIncreasing", R"({"groups": {"g": {"alert_days": [7, 30]}}})",
     "groups.g.alert_days[1]: must be strictly decreasing"},
    {"GroupNameEmpty", R"({"groups": {"": {}}})", "groups: group names must not be empty"},
};

INSTANTIATE_TEST_SUITE_P(Table, PolicyFileInvalid, ::testing::ValuesIn(kInvalidCases),
                         [](const auto& info) { return std::string(info.param.name); });

// --- load_policy_file

class PolicyFileOnDisk : public ::testing::Test {
 protected:
  void SetUp() override {
    m_dir = std::filesystem::temp_directory_path() /
            ("fleetsign-policy-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(m_dir);
  }
  void TearDown() override { std::filesystem::remove_all(m_dir); }
  std::filesystem::path write(const std::string& name, const std::string& text) {
    const auto path = m_dir / name;
    std::ofstream(path) << text;
    return path;
  }
  std::filesystem::path m_dir;
};

TEST_F(PolicyFileOnDisk, LoadsTheDefaultDocument) {
  expect_default_values(load_policy_file(write("policy.json", default_policy_json())));
}

TEST_F(PolicyFileOnDisk, NamesTheFileInValidationErrors) {
  const auto path = write("policy.json", R"({"validity": {"device_days": -3}})");
  try {
    load_policy_file(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kPolicyInvalid);
    EXPECT_TRUE(has_substr(e.what(), "policy.json: validity.device_days:"));
  }
}

TEST_F(PolicyFileOnDisk, MissingFileIsAnIoErrorNamingThePath) {
  const auto path = m_dir / "absent.json";
  try {
    load_policy_file(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_TRUE(has_substr(e.what(), path.string()));
  }
}

TEST_F(PolicyFileOnDisk, DirectoryIsAnIoErrorNamingThePath) {
  try {
    load_policy_file(m_dir);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_TRUE(has_substr(e.what(), m_dir.string()));
  }
}

// --- check_device_id

TEST(DeviceIdRule, AcceptsLettersDigitsAndHyphen) {
  EXPECT_EQ(check_device_id({}, "Sensor-0042-abc"), std::nullopt);
  EXPECT_EQ(check_device_id({}, "a"), std::nullopt);
}

TEST(DeviceIdRule, RejectsEmptyId) { EXPECT_EQ(check_device_id({}, ""), "device ID is empty"); }

TEST(DeviceIdRule, Accepts128CharactersAndRejects129) {
  EXPECT_EQ(check_device_id({}, std::string(128, 'a')), std::nullopt);
  EXPECT_EQ(check_device_id({}, std::string(129, 'a')),
            "device ID is 129 characters; the maximum is 128");
}

TEST(DeviceIdRule, HonoursASmallerMaximum) {
  const DeviceIdRule rule{"", 8};
  EXPECT_EQ(check_device_id(rule, "abcdefgh"), std::nullopt);
  EXPECT_EQ(check_device_id(rule, "abcdefghi"), "device ID is 9 characters; the maximum is 8");
}

TEST(DeviceIdRule, RejectsSpaceNamingItsPosition) {
  EXPECT_EQ(check_device_id({}, "ab c"),
            "device ID 'ab c' contains ' ' at position 2; allowed: letters, digits, '-'");
}

TEST(DeviceIdRule, RejectsDotUnlessExtraCharsAllowIt) {
  EXPECT_NE(check_device_id({}, "plant.1"), std::nullopt);
  const DeviceIdRule wide{"._:", 128};
  EXPECT_EQ(check_device_id(wide, "plant.1_line:2"), std::nullopt);
}

TEST(DeviceIdRule, ListsExtraCharsInTheReason) {
  const DeviceIdRule wide{"._:", 128};
  EXPECT_EQ(check_device_id(wide, "a/b"),
            "device ID 'a/b' contains '/' at position 1; allowed: letters, digits, '-', '.', '_', "
            "':'");
}

TEST(DeviceIdRule, EscapesNonPrintableBytesInTheReason) {
  const auto reason = check_device_id({}, std::string("a\x01\x1b[2Jb", 7));
  ASSERT_TRUE(reason.has_value());
  EXPECT_TRUE(has_substr(*reason, "'a\\x01\\x1b[2Jb'"));
  EXPECT_TRUE(has_substr(*reason, "contains '\\x01' at position 1"));
  EXPECT_EQ(reason->find('\x1b'), std::string::npos);
}

TEST(DeviceIdRule, RejectsNonAsciiBytes) {
  const auto reason = check_device_id({}, "caf\xc3\xa9");
  ASSERT_TRUE(reason.has_value());
  EXPECT_TRUE(has_substr(*reason, "contains '\\xc3' at position 3"));
}

TEST(DeviceIdRule, EscapesQuotesInTheReason) {
  const auto reason = check_device_id({}, "a'b");
  ASSERT_TRUE(reason.has_value());
  EXPECT_TRUE(has_substr(*reason, "device ID 'a\\'b' contains '\\''"));
}

// --- check_device_key

KeyDescription ec(const char* curve, int bits) { return {KeyDescription::Kind::kEc, bits, curve}; }
KeyDescription rsa(int bits) { return {KeyDescription::Kind::kRsa, bits, ""}; }

TEST(DeviceKeyRule, AcceptsP256AndP384ByDefault) {
  const Policy policy;
  EXPECT_EQ(check_device_key(policy, ec("P-256", 256)), std::nullopt);
  EXPECT_EQ(check_device_key(policy, ec("P-384", 384)), std::nullopt);
}

TEST(DeviceKeyRule, RefusesP521ListingAllowedCurves) {
  EXPECT_EQ(check_device_key(Policy{}, ec("P-521", 521)),
            "EC curve P-521 is not allowed; allowed: ec-p256, ec-p384");
}

TEST(DeviceKeyRule, RefusesCurveMissingFromDeviceKeys) {
  Policy policy;
  policy.device_keys = {KeyAlgorithm::kEcP384, KeyAlgorithm::kRsa2048};
  EXPECT_EQ(check_device_key(policy, ec("P-256", 256)),
            "EC curve P-256 is not allowed; allowed: ec-p384");
}

TEST(DeviceKeyRule, RefusesEcWhenOnlyRsaIsAllowedListingRsa) {
  Policy policy;
  policy.device_keys = {KeyAlgorithm::kRsa2048};
  EXPECT_EQ(check_device_key(policy, ec("P-256", 256)),
            "EC curve P-256 is not allowed; allowed: rsa-2048");
}

TEST(DeviceKeyRule, RefusesRsaBelow2048Bits) {
  EXPECT_EQ(check_device_key(Policy{}, rsa(2047)), "RSA-2047 is below the minimum of 2048 bits");
  EXPECT_EQ(check_device_key(Policy{}, rsa(1024)), "RSA-1024 is below the minimum of 2048 bits");
}

TEST(DeviceKeyRule, AcceptsListedRsaSizes) {
  const Policy policy;
  EXPECT_EQ(check_device_key(policy, rsa(2048)), std::nullopt);
  EXPECT_EQ(check_device_key(policy, rsa(3072)), std::nullopt);
  EXPECT_EQ(check_device_key(policy, rsa(4096)), std::nullopt);
}

TEST(DeviceKeyRule, RefusesRsaSizesNotListed) {
  EXPECT_EQ(check_device_key(Policy{}, rsa(8192)),
            "RSA-8192 is not allowed; allowed: rsa-2048, rsa-3072, rsa-4096");
  Policy policy;
  policy.device_keys = {KeyAlgorithm::kEcP256, KeyAlgorithm::kRsa3072};
  EXPECT_EQ(check_device_key(policy, rsa(2048)), "RSA-2048 is not allowed; allowed: rsa-3072");
}

TEST(DeviceKeyRule, RefusesOtherKeyTypes) {
  const auto reason = check_device_key(Policy{}, KeyDescription{});
  ASSERT_TRUE(reason.has_value());
  EXPECT_TRUE(has_substr(*reason, "neither EC nor RSA"));
}

// --- check_ca_key

TEST(CaKeyRule, AllowsListedAlgorithms) {
  EXPECT_EQ(check_ca_key(Policy{}, KeyAlgorithm::kRsa4096), std::nullopt);
}

TEST(CaKeyRule, RefusesUnlistedAlgorithmNamingIt) {
  Policy policy;
  policy.ca_keys = {KeyAlgorithm::kEcP256, KeyAlgorithm::kEcP384};
  EXPECT_EQ(check_ca_key(policy, KeyAlgorithm::kRsa2048),
            "CA key algorithm rsa-2048 is not allowed; allowed: ec-p256, ec-p384");
}

// --- device_days_for

TEST(DeviceDays, UsesTheGroupOverride) {
  Policy policy;
  policy.groups["short"].device_days = 30;
  EXPECT_EQ(device_days_for(policy, "short"), 30);
}

TEST(DeviceDays, FallsBackWhenTheGroupHasNoOverride) {
  Policy policy;
  policy.validity.device_days = 200;
  policy.groups["plain"] = GroupSettings{};
  EXPECT_EQ(device_days_for(policy, "plain"), 200);
}

TEST(DeviceDays, FallsBackForAnUnknownGroup) {
  EXPECT_EQ(device_days_for(Policy{}, "nobody"), 365);
  EXPECT_EQ(device_days_for(Policy{}, ""), 365);
}

}  // namespace
}  // namespace fleetsign::policy
