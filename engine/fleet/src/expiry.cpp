#include "fleetsign/engine/expiry.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

constexpr std::int64_t kDay = 86400;

std::vector<int> largest_first(std::vector<int> days) {
  std::sort(days.begin(), days.end(), std::greater<>());
  days.erase(std::unique(days.begin(), days.end()), days.end());
  return days;
}

std::vector<int> thresholds_for(const policy::Policy& policy, const std::string& group) {
  auto it = policy.groups.find(group);
  if (it != policy.groups.end() && !it->second.alert_days.empty()) {
    return largest_first(it->second.alert_days);
  }
  return largest_first(policy.alert_days);
}

struct Classified {
  BucketKey bucket;
  AlertLevel level;
};

// Whole days left, as the registry counts them (ExpiryCount): 0 when expired, else rounded up, so
// that "not_after - now <= N days" is "days <= N".
std::int64_t days_left(std::int64_t not_after, std::int64_t now) {
  return not_after <= now ? 0 : (not_after - now + kDay - 1) / kDay;
}

// `thresholds` largest first, never empty (the policy requires at least one).
Classified classify_days(std::int64_t days, const std::vector<int>& thresholds) {
  if (days <= 0) {
    return {kExpiredBucket, AlertLevel::kLast};
  }
  BucketKey bucket = kLaterBucket;
  for (auto it = thresholds.rbegin(); it != thresholds.rend(); ++it) {
    if (days <= *it) {
      bucket = *it;
      break;
    }
  }
  AlertLevel level = AlertLevel::kNone;
  if (!thresholds.empty() && days <= thresholds.back()) {
    level = AlertLevel::kLast;
  } else if (!thresholds.empty() && days <= thresholds.front()) {
    level = AlertLevel::kFirst;
  }
  return {bucket, level};
}

Classified classify(std::int64_t not_after, std::int64_t now, const std::vector<int>& thresholds) {
  return classify_days(days_left(not_after, now), thresholds);
}

// The counts of rows given by hand (tests, the engine bench): what expiry_counts returns.
std::vector<ExpiryCount> count_rows(const std::vector<ExpiringCert>& due, std::int64_t now,
                                    std::int64_t until) {
  std::map<std::tuple<std::string_view, std::string_view, std::int64_t>, std::int64_t> counts;
  for (const auto& c : due) {
    if (c.not_after < until) ++counts[{c.ca_name, c.lot, days_left(c.not_after, now)}];
  }
  std::vector<ExpiryCount> out;
  out.reserve(counts.size());
  for (const auto& [key, n] : counts) {
    out.push_back(ExpiryCount{std::string(std::get<0>(key)), std::string(std::get<1>(key)),
                              std::get<2>(key), n});
  }
  return out;
}

BucketCounts to_counts(const std::map<BucketKey, std::int64_t>& m) {
  return BucketCounts(m.begin(), m.end());
}

struct LotAgg {
  std::map<BucketKey, std::int64_t> buckets;
  std::int64_t total = 0;
};

struct GroupAgg {
  std::string name;
  std::vector<int> thresholds;
  std::map<BucketKey, std::int64_t> buckets;
  std::unordered_map<std::string, LotAgg> lots;
  std::int64_t total = 0;
  AlertLevel level = AlertLevel::kNone;
};

std::string day(std::int64_t t) { return iso8601(t).substr(0, 10); }

void describe_leaf_finding(CaFinding& f) {
  f.message = "CA " + f.ca + " expires " + day(f.ca_not_after) + " before " +
              std::to_string(f.count) + (f.count == 1 ? " leaf" : " leaves") +
              " it issued (latest " + day(f.latest) + ")";
}

void find_ca_problems(const ExpiryInputs& in, const std::unordered_set<std::string>* scope,
                      ExpiryReport& out) {
  std::unordered_map<std::string, const CaRecord*> by_name;
  for (const auto& ca : in.cas) by_name.emplace(ca.name, &ca);
  auto in_scope = [&](const std::string& name) {
    return scope == nullptr || scope->count(name) != 0;
  };
  for (const auto& [ca_name, latest] : in.latest_leaf_by_ca) {
    auto it = by_name.find(ca_name);
    if (it == by_name.end() || !in_scope(ca_name) || latest <= it->second->not_after) continue;
    out.findings.push_back(
        CaFinding{"ca_before_leaf", ca_name, it->second->not_after, latest, 1, {}});
    describe_leaf_finding(out.findings.back());
  }
  for (const auto& ca : in.cas) {
    auto parent = by_name.find(ca.parent);
    if (ca.parent.empty() || parent == by_name.end() || !in_scope(ca.name)) continue;
    if (ca.not_after > parent->second->not_after) {
      out.findings.push_back(
          CaFinding{"ca_before_child_ca", ca.parent, parent->second->not_after, ca.not_after, 1,
                    "CA " + ca.parent + " expires " + day(parent->second->not_after) +
                        " before CA " + ca.name + " it issued (" + day(ca.not_after) + ")"});
    }
  }
}

// The CAs a group's report covers: those below its slot CAs (its devices' issuers) and those
// above them up to the root (a root expiring takes the group down with it).
std::unordered_set<std::string> group_scope(const GroupIndex& index, const std::string& group) {
  const auto below = index.cas_of_group(group);
  std::unordered_set<std::string> scope(below.begin(), below.end());
  for (const auto& g : index.groups()) {
    if (g.name != group) continue;
    for (const auto* slot : {&g.primary_ca, &g.secondary_ca}) {
      const CaRecord* at = index.find_ca(*slot);
      for (int depth = 0; at != nullptr && depth < 16; ++depth, at = index.find_ca(at->parent)) {
        scope.insert(at->name);
      }
    }
  }
  return scope;
}

}  // namespace

std::string bucket_label(BucketKey key) {
  if (key == kExpiredBucket) return "expired";
  if (key == kLaterBucket) return "later";
  return std::to_string(key) + "d";
}

int default_window_days(const policy::Policy& policy, const std::string& group) {
  if (!group.empty()) {
    const auto t = thresholds_for(policy, group);
    return t.empty() ? 0 : t.front();
  }
  int widest = policy.alert_days.empty()
                   ? 0
                   : *std::max_element(policy.alert_days.begin(), policy.alert_days.end());
  for (const auto& [name, g] : policy.groups) {
    for (const int d : g.alert_days) widest = std::max(widest, d);
  }
  return widest;
}

ExpiryReport build_expiry_report(const ExpiryInputs& in, const policy::Policy& policy,
                                 std::int64_t now, const ExpiryOptions& options) {
  ExpiryReport out;
  out.now = now;
  out.within_days = options.within_days.value_or(default_window_days(policy, options.group));
  out.until = now + std::int64_t{out.within_days} * kDay;
  out.thresholds = largest_first(policy.alert_days);
  const GroupIndex index(in.cas, in.groups);
  std::optional<std::unordered_set<std::string>> scope;
  if (!options.group.empty()) scope = group_scope(index, options.group);

  // 1. Devices: the counts per CA, lot and days left, summed per group and lot; then the first
  //    `limit` certificates listed.
  std::vector<GroupAgg> groups;
  std::unordered_map<std::string, std::size_t> group_slot;
  std::unordered_map<std::string, std::optional<std::size_t>> group_of_ca;  // nullopt: not in scope
  std::map<BucketKey, std::int64_t> all;
  const auto group_of = [&](const std::string& ca_name) -> GroupAgg* {
    auto [at, added] = group_of_ca.try_emplace(ca_name);
    if (added && (!scope || scope->count(ca_name) != 0)) {
      const EnrollmentGroup* g = index.group_of_ca(ca_name);
      const std::string name = scope ? options.group : (g != nullptr ? g->name : kNoGroup);
      auto [it, fresh] = group_slot.emplace(name, groups.size());
      if (fresh) groups.push_back(GroupAgg{name, thresholds_for(policy, name), {}, {}, 0, {}});
      at->second = it->second;
    }
    return at->second ? &groups[*at->second] : nullptr;
  };
  const std::vector<ExpiryCount> counted =
      in.counts ? std::vector<ExpiryCount>{} : count_rows(in.due, now, out.until);
  for (const auto& c : in.counts ? *in.counts : counted) {
    GroupAgg* g = group_of(c.ca_name);
    if (g == nullptr || c.count <= 0) continue;
    const Classified k = classify_days(c.days, g->thresholds);
    g->buckets[k.bucket] += c.count;
    all[k.bucket] += c.count;
    LotAgg& lot = g->lots[c.lot];
    lot.buckets[k.bucket] += c.count;
    lot.total += c.count;
    g->total += c.count;
    g->level = std::max(g->level, k.level);
    out.level = std::max(out.level, k.level);
    out.total_due += c.count;
  }
  for (const auto& c : in.due) {
    if (out.due.size() >= options.limit) break;
    GroupAgg* g = group_of(c.ca_name);
    if (g == nullptr || c.not_after >= out.until) continue;
    out.due.push_back(DueCert{c, g->name, classify(c.not_after, now, g->thresholds).bucket});
  }
  out.buckets = to_counts(all);
  for (auto& g : groups) {
    if (g.total == 0) continue;
    GroupExpiry ge{g.name, g.thresholds, to_counts(g.buckets), {}, g.total, g.level};
    for (auto& [lot, agg] : g.lots)
      ge.lots.push_back(LotExpiry{lot, to_counts(agg.buckets), agg.total});
    std::sort(ge.lots.begin(), ge.lots.end(),
              [](const auto& a, const auto& b) { return a.lot < b.lot; });
    out.groups.push_back(std::move(ge));
  }
  std::sort(out.groups.begin(), out.groups.end(),
            [](const auto& a, const auto& b) { return a.group < b.group; });

  // 2. CA certificates due within the window, under the policy's default thresholds.
  for (const auto& ca : in.cas) {
    if (ca.not_after >= out.until || (scope && scope->count(ca.name) == 0)) continue;
    const Classified k = classify(ca.not_after, now, out.thresholds);
    out.cas.push_back(CaExpiry{ca.name, ca.not_after, k.bucket, k.level});
    out.level = std::max(out.level, k.level);
  }
  std::sort(out.cas.begin(), out.cas.end(),
            [](const auto& a, const auto& b) { return a.not_after < b.not_after; });

  // 3. CAs that expire before what they issued.
  find_ca_problems(in, scope ? &*scope : nullptr, out);
  if (!out.findings.empty()) out.level = AlertLevel::kLast;
  return out;
}

ExpiryReport expiry_report(Stores& registry, const policy::Policy& policy, const Clock& clock,
                           const ExpiryOptions& options) {
  ExpiryInputs in;
  in.cas = registry.list_cas();
  in.groups = registry.list_groups();
  in.latest_leaf_by_ca = registry.latest_leaf_expiry_by_ca();
  const std::int64_t now = clock.now();
  const int within = options.within_days.value_or(default_window_days(policy, options.group));
  if (within < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "the report window must be 0 or more days, got " + std::to_string(within));
  }
  DeviceFilter filter;
  if (!options.group.empty()) {
    filter.ca_names = GroupIndex(in.cas, in.groups).cas_of_group(options.group);
    if (filter.ca_names.empty()) {
      return build_expiry_report(in, policy, now, options);  // a group whose slots are all empty
    }
  }
  const std::int64_t until = now + std::int64_t{within} * kDay;
  in.due = registry.expiring_device_certs(until, filter, options.limit);
  // Every threshold in force anywhere: each count then falls in one bucket whichever group's
  // thresholds classify it.
  std::vector<int> marks = policy.alert_days;
  for (const auto& [name, g] : policy.groups) {
    marks.insert(marks.end(), g.alert_days.begin(), g.alert_days.end());
  }
  in.counts = registry.expiry_counts(now, until, marks, filter);
  ExpiryReport report = build_expiry_report(in, policy, now, options);
  // Leaves that outlive their CA: rare (issuance clamps to the CA), so counted only when found.
  for (auto& f : report.findings) {
    if (f.kind != "ca_before_leaf") continue;
    DeviceFilter by_ca;
    by_ca.ca_names = {f.ca};
    f.count = 0;
    for (const auto& d : registry.list_devices(by_ca)) {
      f.count += (!d.primary_serial.empty() && d.primary_not_after > f.ca_not_after) +
                 (!d.secondary_serial.empty() && d.secondary_not_after > f.ca_not_after);
    }
    describe_leaf_finding(f);
  }
  return report;
}

}  // namespace fleetsign::engine
