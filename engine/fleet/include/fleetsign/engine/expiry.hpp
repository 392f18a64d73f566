// The expiry report: device and CA certificates due within a window, bucketed by the policy's
// alert thresholds (alert_days, default 30/14/7; a group's GroupSettings.alert_days override the
// default for that group's devices), grouped by enrollment group and lot, with the CA findings a
// monitoring system should alert on (a CA that expires before leaves it issued, or before a CA
// below it).
//
// Buckets: a certificate goes in the smallest threshold it falls under (not_after - now <= N days
// → "Nd"); "expired" when not_after <= now; "later" when it is inside the window but beyond every
// threshold (only with --within larger than the largest threshold).
//
// Alert level, which `expiry report` turns into its exit status:
//   0  nothing due within the first (largest) threshold
//   1  something due within the first threshold
//   2  something within the last (smallest) threshold, or expired, or a CA finding
//
// Scale: the registry counts the certificates due per CA, lot and days left (GROUP BY over the
// expiry index), and returns only the first `limit` as rows: 10^7 devices cost one index scan in
// the registry and a few thousand count rows here, never one object per device. Not thread-safe
// (uses the Registry).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {

inline constexpr const char* kNoGroup = "(no group)";

struct ExpiryOptions {
  std::optional<int> within_days;  // default: the largest threshold in force (policy or groups)
  std::string group;               // only this group (kNotFound when unknown)
  std::size_t limit = 1000;        // due certificates listed (counts always cover all)
};

enum class AlertLevel { kNone = 0, kFirst = 1, kLast = 2 };

// Bucket keys sort in report order: expired, then thresholds ascending, then later.
using BucketKey = int;
inline constexpr BucketKey kExpiredBucket = 0;
inline constexpr BucketKey kLaterBucket = 1 << 30;
std::string bucket_label(BucketKey key);                               // "expired", "7d", "later"
using BucketCounts = std::vector<std::pair<BucketKey, std::int64_t>>;  // sorted by key

struct LotExpiry {
  std::string lot;  // "" = no lot
  BucketCounts buckets;
  std::int64_t total = 0;
};

struct GroupExpiry {
  std::string group;            // kNoGroup for devices under no group
  std::vector<int> thresholds;  // in force for this group, largest first
  BucketCounts buckets;
  std::vector<LotExpiry> lots;  // by lot name
  std::int64_t total = 0;
  AlertLevel level = AlertLevel::kNone;
};

struct DueCert {
  ExpiringCert cert;
  std::string group;
  BucketKey bucket = kLaterBucket;
};

struct CaExpiry {
  std::string name;
  std::int64_t not_after = 0;
  BucketKey bucket = kLaterBucket;
  AlertLevel level = AlertLevel::kNone;
};

struct CaFinding {
  std::string kind;  // "ca_before_leaf" | "ca_before_child_ca"
  std::string ca;
  std::int64_t ca_not_after = 0;
  std::int64_t latest = 0;  // the latest leaf (or child CA) expiry
  std::int64_t count = 0;   // leaves (or child CAs) that outlive the CA
  std::string message;      // "CA X expires … before 12 leaves it issued (latest …)"
};

struct ExpiryReport {
  std::int64_t now = 0, until = 0;
  int within_days = 0;
  std::vector<int> thresholds;  // the policy's default, largest first
  BucketCounts buckets;         // all device certificates due
  std::vector<GroupExpiry> groups;
  std::vector<CaExpiry> cas;  // CA certificates due within the window
  std::vector<CaFinding> findings;
  std::vector<DueCert> due;  // the first `limit`, soonest first
  std::int64_t total_due = 0;
  AlertLevel level = AlertLevel::kNone;
  int exit_status() const noexcept { return static_cast<int>(level); }
};

// Everything the report is computed from, as values (the registry reads them; tests may build
// them by hand).
struct ExpiryInputs {
  std::vector<ExpiringCert> due;  // sorted by not_after; the rows listed (the first `limit`)
  // The counts every figure is summed from, as the registry aggregates them (expiry_counts);
  // without them, `due` is counted (and must then hold every certificate due).
  std::optional<std::vector<ExpiryCount>> counts;
  std::vector<CaRecord> cas;
  std::vector<EnrollmentGroup> groups;
  std::vector<std::pair<std::string, std::int64_t>> latest_leaf_by_ca;
};

// The largest threshold in force anywhere (or for `group` when given): the default window.
int default_window_days(const policy::Policy& policy, const std::string& group);

// Pure: buckets, groups, CA findings, as of `now`. The leaf count of a ca_before_leaf finding is 1
// here (the inputs hold only the latest leaf); expiry_report counts them in the registry.
ExpiryReport build_expiry_report(const ExpiryInputs& inputs, const policy::Policy& policy,
                                 std::int64_t now, const ExpiryOptions& options);

// Reads the registry (one indexed scan of the devices due) and builds the report.
ExpiryReport expiry_report(Stores& registry, const policy::Policy& policy, const Clock& clock,
                           const ExpiryOptions& options);

}  // namespace fleetsign::engine
