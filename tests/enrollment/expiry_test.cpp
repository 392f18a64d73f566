// The expiry report: buckets by the smallest threshold, group overrides, grouping by group and lot,
// CA findings, exit statuses; first on values built by hand at a fixed time, then on a real
// registry with certificates issued through the token.
#include "fleetsign/engine/expiry.hpp"

#include <gtest/gtest.h>

#include <limits>

#include "enrollment_support.hpp"
#include "fleetsign/engine/enrollment.hpp"

namespace fleetsign {
namespace {

using engine::AlertLevel;
using engine::BucketCounts;
using engine::ExpiryInputs;

constexpr std::int64_t kNow = 1'800'000'000;  // 2027-01-15
constexpr std::int64_t kDay = 86400;

engine::CaRecord ca(const std::string& name, const std::string& parent, std::int64_t not_after) {
  engine::CaRecord c;
  c.name = name;
  c.parent = parent;
  c.not_after = not_after;
  return c;
}

engine::ExpiringCert due(const std::string& id, const std::string& ca_name, std::int64_t not_after,
                         const std::string& lot = "") {
  return engine::ExpiringCert{id, "S" + id, ca_name, lot, engine::Slot::kPrimary, not_after};
}

// root → int1 (group g1), root → int2 (no group), all far from expiry.
ExpiryInputs hierarchy() {
  ExpiryInputs in;
  in.cas = {ca("root", "", kNow + 3000 * kDay), ca("int1", "root", kNow + 2000 * kDay),
            ca("int2", "root", kNow + 2000 * kDay)};
  engine::EnrollmentGroup g;
  g.name = "g1";
  g.primary_ca = "int1";
  in.groups = {g};
  return in;
}

std::int64_t count(const BucketCounts& b, const std::string& label) {
  for (const auto& [k, n] : b) {
    if (engine::bucket_label(k) == label) return n;
  }
  return 0;
}

engine::ExpiryReport build(const ExpiryInputs& in, const policy::Policy& p,
                           std::optional<int> within = std::nullopt, std::size_t limit = 1000) {
  engine::ExpiryOptions o;
  o.within_days = within;
  o.limit = limit;
  return engine::build_expiry_report(in, p, kNow, o);
}

TEST(ExpiryBuckets, EachCertificateGoesInTheSmallestThresholdItFallsUnder) {
  ExpiryInputs in = hierarchy();
  in.due = {due("expired", "int1", kNow - kDay), due("at-now", "int1", kNow),
            due("3d", "int1", kNow + 3 * kDay),  due("7d", "int1", kNow + 7 * kDay),
            due("8d", "int1", kNow + 8 * kDay),  due("20d", "int1", kNow + 20 * kDay),
            due("45d", "int1", kNow + 45 * kDay)};
  const auto r = build(in, policy::Policy{}, 60);
  EXPECT_EQ(count(r.buckets, "expired"), 2);
  EXPECT_EQ(count(r.buckets, "7d"), 2);
  EXPECT_EQ(count(r.buckets, "14d"), 1);
  EXPECT_EQ(count(r.buckets, "30d"), 1);
  EXPECT_EQ(count(r.buckets, "later"), 1);
  EXPECT_EQ(r.total_due, 7);
  EXPECT_EQ(r.exit_status(), 2);
  // Report order: expired, thresholds ascending, later.
  std::vector<std::string> labels;
  for (const auto& [k, n] : r.buckets) labels.push_back(engine::bucket_label(k));
  EXPECT_EQ(labels, (std::vector<std::string>{"expired", "7d", "14d", "30d", "later"}));
}

TEST(ExpiryStatus, ZeroOneTwoByTheFirstAndLastThreshold) {
  struct Case {
    std::int64_t not_after;
    int status;
  };
  for (const auto& c : {Case{kNow + 45 * kDay, 0}, Case{kNow + 30 * kDay, 1},
                        Case{kNow + 8 * kDay, 1}, Case{kNow + 7 * kDay, 2}, Case{kNow - 1, 2}}) {
    ExpiryInputs in = hierarchy();
    in.due = {due("d", "int1", c.not_after)};
    EXPECT_EQ(build(in, policy::Policy{}, 60).exit_status(), c.status)
        << (c.not_after - kNow) / kDay << " days";
  }
  EXPECT_EQ(build(hierarchy(), policy::Policy{}).exit_status(), 0);  // nothing due at all
}

TEST(ExpiryGroups, GroupThresholdsOverrideThePolicyForItsDevicesOnly) {
  policy::Policy p;
  p.groups["g1"].alert_days = {60, 3};
  ExpiryInputs in = hierarchy();
  in.due = {due("grouped", "int1", kNow + 10 * kDay, "L1"),
            due("ungrouped", "int2", kNow + 10 * kDay, "L2"),
            due("grouped-soon", "int1", kNow + 2 * kDay, "L1")};
  EXPECT_EQ(engine::default_window_days(p, ""), 60);  // the widest threshold in force anywhere
  const auto r = build(in, p);
  ASSERT_EQ(r.groups.size(), 2u);
  EXPECT_EQ(r.groups[0].group, "(no group)");
  EXPECT_EQ(count(r.groups[0].buckets, "14d"), 1);
  EXPECT_EQ(r.groups[0].thresholds, (std::vector<int>{30, 14, 7}));
  EXPECT_EQ(r.groups[1].group, "g1");
  EXPECT_EQ(r.groups[1].thresholds, (std::vector<int>{60, 3}));
  EXPECT_EQ(count(r.groups[1].buckets, "60d"), 1);
  EXPECT_EQ(count(r.groups[1].buckets, "3d"), 1);
  EXPECT_EQ(r.groups[1].level, AlertLevel::kLast);
  EXPECT_EQ(r.groups[0].level, AlertLevel::kFirst);
  ASSERT_EQ(r.groups[1].lots.size(), 1u);
  EXPECT_EQ(r.groups[1].lots[0].lot, "L1");
  EXPECT_EQ(r.groups[1].lots[0].total, 2);
}

TEST(ExpiryGroups, GroupFilterKeepsOnlyDevicesWhoseChainLeadsToTheGroup) {
  ExpiryInputs in = hierarchy();
  in.cas[0].not_after = kNow + 5 * kDay;  // root: above the group's slot CA, so in its report
  in.cas[2].not_after = kNow + 5 * kDay;  // int2: another branch, not in it
  in.due = {due("a", "int1", kNow + kDay), due("b", "int2", kNow + kDay)};
  engine::ExpiryOptions o;
  o.group = "g1";
  const auto r = engine::build_expiry_report(in, policy::Policy{}, kNow, o);
  EXPECT_EQ(r.total_due, 1);
  ASSERT_EQ(r.due.size(), 1u);
  EXPECT_EQ(r.due[0].cert.registration_id, "a");
  ASSERT_EQ(r.cas.size(), 1u);
  EXPECT_EQ(r.cas[0].name, "root");
  o.group = "nope";
  EXPECT_EQ(testing::error_from([&] {
              engine::build_expiry_report(in, policy::Policy{}, kNow, o);
            }).code(),
            ErrorCode::kNotFound);
}

TEST(ExpiryCas, CaDueAndCaBeforeLeafAndBeforeChildAreFlagged) {
  ExpiryInputs in = hierarchy();
  in.cas[1].not_after = kNow + 10 * kDay;                       // int1 due in 10 days
  in.cas.push_back(ca("ext-int", "int2", kNow + 2500 * kDay));  // outlives its issuer int2
  in.latest_leaf_by_ca = {{"int1", kNow + 365 * kDay}, {"int2", kNow + 100 * kDay}};
  const auto r = build(in, policy::Policy{});
  ASSERT_EQ(r.cas.size(), 1u);
  EXPECT_EQ(r.cas[0].name, "int1");
  EXPECT_EQ(engine::bucket_label(r.cas[0].bucket), "14d");
  ASSERT_EQ(r.findings.size(), 2u);
  EXPECT_EQ(r.findings[0].kind, "ca_before_leaf");
  EXPECT_EQ(r.findings[0].ca, "int1");
  EXPECT_EQ(r.findings[0].message,
            "CA int1 expires 2027-01-25 before 1 leaf it issued (latest 2028-01-15)");
  EXPECT_EQ(r.findings[1].kind, "ca_before_child_ca");
  EXPECT_EQ(r.findings[1].ca, "int2");
  EXPECT_EQ(r.exit_status(), 2);
}

TEST(ExpiryScale, AggregatesAMillionDueCertificatesWithoutAPerDeviceRow) {
  ExpiryInputs in = hierarchy();
  in.due.reserve(1'000'000);
  for (int i = 0; i < 1'000'000; ++i) {
    in.due.push_back(due("dev-" + std::to_string(i), i % 3 ? "int1" : "int2",
                         kNow + (i % 30) * kDay, "L" + std::to_string(i % 40)));
  }
  // The time this takes is a figure of fleetsign-bench (expiry_aggregate_1m_s), not asserted here.
  const auto r = build(in, policy::Policy{}, std::nullopt, 1000);
  EXPECT_EQ(r.total_due, 1'000'000);
  EXPECT_EQ(r.due.size(), 1000u);
  std::int64_t in_groups = 0;
  for (const auto& g : r.groups) in_groups += g.total;
  EXPECT_EQ(in_groups, 1'000'000);
}

// --- against a real registry --------------------------------------------------------------------

class ExpiryRegistry : public ::testing::Test {
 protected:
  testing::TestHome th;
  void SetUp() override { th.make_hierarchy(); }
  engine::ExpiryReport report(std::int64_t at, const std::string& group = "") {
    engine::FixedClock clock(at);
    engine::ExpiryOptions o;
    o.group = group;
    return engine::expiry_report(*th.registry, th.policy, clock, o);
  }
};

TEST_F(ExpiryRegistry, ShortValidityMovesThroughTheBucketsAsTimePasses) {
  th.policy.validity.device_days = 10;
  testing::issue_device(th, "int1", "dev-1", "L1");
  testing::issue_device(th, "int1", "dev-2", "L2");
  const std::int64_t now = th.clock.now();
  auto r = report(now);
  EXPECT_EQ(count(r.buckets, "14d"), 2);
  EXPECT_EQ(r.exit_status(), 1);
  ASSERT_EQ(r.groups.size(), 1u);
  EXPECT_EQ(r.groups[0].group, "(no group)");
  EXPECT_EQ(r.groups[0].lots.size(), 2u);
  r = report(now + 5 * kDay);
  EXPECT_EQ(count(r.buckets, "7d"), 2);
  EXPECT_EQ(r.exit_status(), 2);
  r = report(now + 11 * kDay);
  EXPECT_EQ(count(r.buckets, "expired"), 2);
  // Once in a group, they are reported under it.
  engine::EnrollmentService(*th.registry, th.policy, th.clock).create_group("g", "root", "");
  r = report(now, "g");
  ASSERT_EQ(r.groups.size(), 1u);
  EXPECT_EQ(r.groups[0].group, "g");
  EXPECT_EQ(r.total_due, 2);
  EXPECT_EQ(report(now + 400 * kDay).exit_status(), 2);
}

TEST_F(ExpiryRegistry, LongValidityIsNothingDue) {
  testing::issue_device(th, "int1", "dev-1");
  const auto r = report(th.clock.now());
  EXPECT_EQ(r.total_due, 0);
  EXPECT_TRUE(r.findings.empty());
  EXPECT_EQ(r.exit_status(), 0);
}

// Issuance clamps a device to its CA's expiry, so no issued leaf can outlive its CA: the negative
// case is real issuance; the positive case needs the registry edited behind fleetsign's back.
TEST_F(ExpiryRegistry, ClampingPreventsLeavesOutlivingTheirCa) {
  engine::CaSpec spec;
  spec.name = "short";
  spec.issuer = "root";
  spec.subject = "/CN=Short Intermediate";
  spec.days = 20;
  th.cas->create_intermediate(spec);
  th.policy.validity.device_days = 365;
  testing::issue_device(th, "short", "dev-1");
  const auto r = report(th.clock.now());
  EXPECT_TRUE(r.findings.empty());
  ASSERT_EQ(r.cas.size(), 1u);
  EXPECT_EQ(r.cas[0].name, "short");
  EXPECT_EQ(engine::bucket_label(r.cas[0].bucket), "30d");
  EXPECT_EQ(count(r.buckets, "30d"), 1);  // the clamped device is due with its CA
  EXPECT_EQ(r.exit_status(), 1);
}

TEST_F(ExpiryRegistry, CaExpiringBeforeLeavesItIssuedIsFlaggedWithTheirCount) {
  testing::issue_device(th, "int1", "dev-1");
  testing::issue_device(th, "int1", "dev-2");
  testing::issue_device(th, "int1", "dev-3");
  testing::tamper(th.home->registry_path(),
                  "UPDATE devices SET primary_not_after = (SELECT not_after FROM cas WHERE name = "
                  "'int1') + 86400 "
                  "WHERE registration_id IN ('dev-1', 'dev-2')");
  const auto r = report(th.clock.now());
  ASSERT_EQ(r.findings.size(), 1u);
  EXPECT_EQ(r.findings[0].ca, "int1");
  EXPECT_EQ(r.findings[0].count, 2);
  EXPECT_NE(r.findings[0].message.find("before 2 leaves it issued"), std::string::npos);
  EXPECT_EQ(r.exit_status(), 2);
}

// The registry counts per CA, lot and days left (expiry_counts) and lists only the first `limit`:
// the report must equal the one counted row by row, at the day boundaries, in both slots.
TEST_F(ExpiryRegistry, RegistryCountsEqualTheRowsCountedOneByOne) {
  engine::CaSpec int2;
  int2.name = "int2";
  int2.issuer = "root";
  int2.subject = "/CN=Second Intermediate";
  th.cas->create_intermediate(int2);
  engine::EnrollmentService(*th.registry, th.policy, th.clock).create_group("g", "root", "");
  const std::vector<std::pair<std::string, const char*>> devices = {
      {"d-expired", "int1"}, {"d-now", "int1"}, {"d-1s", "int1"},    {"d-7d", "int2"},
      {"d-7d1s", "int2"},    {"d-14d", "int1"}, {"d-30d1s", "int2"}, {"d-200d", "int1"},
      {"d-sec", "int1"},     {"d-out", "int1"}};
  for (const auto& [id, ca_name] : devices) {
    testing::issue_device(th, ca_name, id, id.size() % 2 ? "L1" : "L2");
  }
  const std::int64_t now = th.clock.now();
  const std::vector<std::pair<std::string, std::int64_t>> expiry = {
      {"d-expired", now - 3 * kDay},
      {"d-now", now},
      {"d-1s", now + 1},
      {"d-7d", now + 7 * kDay},
      {"d-7d1s", now + 7 * kDay + 1},
      {"d-14d", now + 14 * kDay},
      {"d-30d1s", now + 30 * kDay + 1},
      {"d-200d", now + 200 * kDay},
      {"d-sec", now + 2 * kDay},
      {"d-out", now + 401 * kDay}};
  for (const auto& [id, at] : expiry) {
    testing::tamper(th.home->registry_path(),
                    "UPDATE devices SET primary_not_after = " + std::to_string(at) +
                        " WHERE registration_id = '" + id + "'");
  }
  // d-sec also holds a secondary certificate: two certificates due for one device.
  testing::tamper(th.home->registry_path(),
                  "UPDATE devices SET secondary_serial = 'AB01', secondary_not_after = " +
                      std::to_string(now + 13 * kDay) + " WHERE registration_id = 'd-sec'");

  // Last: a group whose own thresholds (20, 3) differ from the default (30, 14, 7), so that the
  // registry's day marks must serve both.
  for (const std::string group : {"", "g", "g-override"}) {
    const bool override_g = group == "g-override";
    if (override_g) th.policy.groups["g"].alert_days = {20, 3};
    engine::FixedClock clock(now);
    engine::ExpiryOptions o;
    o.group = override_g ? "" : group;
    o.within_days = 400;
    o.limit = 3;
    const auto counted = engine::expiry_report(*th.registry, th.policy, clock, o);
    // The same report from every row, counted here.
    ExpiryInputs in;
    in.cas = th.registry->list_cas();
    in.groups = th.registry->list_groups();
    in.latest_leaf_by_ca = th.registry->latest_leaf_expiry_by_ca();
    engine::DeviceFilter filter;
    if (group == "g") filter.ca_names = {"int1", "int2"};
    in.due = th.registry->expiring_device_certs(now + 400 * kDay, filter,
                                                std::numeric_limits<std::size_t>::max());
    ASSERT_EQ(in.due.size(), 10u) << group;  // d-out is beyond the window; d-sec counts twice
    const auto by_row = engine::build_expiry_report(in, th.policy, now, o);
    EXPECT_EQ(counted.total_due, 10) << group;
    EXPECT_EQ(counted.total_due, by_row.total_due) << group;
    EXPECT_EQ(counted.buckets, by_row.buckets) << group;
    if (override_g) {
      // Under g's thresholds: d-1s, d-sec's primary (3d); d-7d, d-7d1s, d-14d, d-sec's secondary
      // (20d); d-30d1s, d-200d later.
      EXPECT_EQ(count(counted.buckets, "3d"), 2);
      EXPECT_EQ(count(counted.buckets, "20d"), 4);
      EXPECT_EQ(count(counted.buckets, "later"), 2);
      EXPECT_EQ(count(counted.buckets, "7d"), 0);
    } else {
      EXPECT_EQ(count(counted.buckets, "expired"), 2) << group;  // d-expired, d-now
      EXPECT_EQ(count(counted.buckets, "7d"), 3) << group;       // d-1s, d-7d, d-sec's primary
      EXPECT_EQ(count(counted.buckets, "14d"), 3) << group;      // d-7d1s, d-14d, d-sec's secondary
      EXPECT_EQ(count(counted.buckets, "later"), 2) << group;    // d-30d1s, d-200d
    }
    ASSERT_EQ(counted.groups.size(), by_row.groups.size()) << group;
    for (std::size_t i = 0; i < counted.groups.size(); ++i) {
      EXPECT_EQ(counted.groups[i].group, by_row.groups[i].group);
      EXPECT_EQ(counted.groups[i].buckets, by_row.groups[i].buckets);
      EXPECT_EQ(counted.groups[i].total, by_row.groups[i].total);
      ASSERT_EQ(counted.groups[i].lots.size(), by_row.groups[i].lots.size());
      for (std::size_t j = 0; j < counted.groups[i].lots.size(); ++j) {
        EXPECT_EQ(counted.groups[i].lots[j].lot, by_row.groups[i].lots[j].lot);
        EXPECT_EQ(counted.groups[i].lots[j].buckets, by_row.groups[i].lots[j].buckets);
      }
    }
    EXPECT_EQ(counted.level, by_row.level);
    // Only the first three rows come back from the registry, soonest first.
    ASSERT_EQ(counted.due.size(), 3u) << group;
    EXPECT_EQ(counted.due[0].cert.registration_id, "d-expired");
    EXPECT_EQ(counted.due[1].cert.registration_id, "d-now");
    EXPECT_EQ(counted.due[2].cert.registration_id, "d-1s");
    EXPECT_EQ(engine::bucket_label(counted.due[2].bucket), override_g ? "3d" : "7d");
  }
}

}  // namespace
}  // namespace fleetsign
