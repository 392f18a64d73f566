// The fleet at a glance (overview.hpp): the registry's aggregates folded into groups.
#include "fleetsign/engine/overview.hpp"

#include <algorithm>
#include <map>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/expiry.hpp"

namespace fleetsign::engine {

namespace {

// Tasks in these states settled without their device coming back on the new certificate.
constexpr const char* kLeftBehind[] = {"offline", "timed-out", "refused", "conflict"};

bool is_rollover(const std::string& kind) { return kind != "revocation"; }

constexpr std::int64_t kMaxListedPerState = 10000;

}  // namespace

FleetOverview fleet_overview(Stores& registry, std::int64_t now, int weeks,
                             std::size_t not_back_limit, std::int64_t jobs) {
  FleetOverview out;
  out.now = now;
  out.weeks = std::clamp(weeks, 1, 520);
  const GroupIndex index = GroupIndex::load(registry);

  // Groups by name, then the devices under no group.
  std::map<std::string, GroupOverview> groups;
  for (const auto& g : index.groups()) {
    GroupOverview& o = groups[g.name];
    o.group = g.name;
    o.enabled = g.enabled;
    o.primary_ca = g.primary_ca;
    o.secondary_ca = g.secondary_ca;
    o.weeks.assign(static_cast<std::size_t>(out.weeks), 0);
  }
  auto group_for = [&](const std::string& ca) -> GroupOverview& {
    const EnrollmentGroup* g = index.group_of_ca(ca);
    GroupOverview& o = groups[g != nullptr ? g->name : kNoGroup];
    if (o.group.empty()) {
      o.group = kNoGroup;
      o.weeks.assign(static_cast<std::size_t>(out.weeks), 0);
    }
    return o;
  };

  std::map<std::string, std::int64_t> devices_of_ca;
  for (const auto& c : registry.device_counts_by_ca()) {
    GroupOverview& o = group_for(c.ca_name);
    o.devices += c.devices;
    o.connected += c.connected;
    o.primary_certs += c.primary;
    o.secondary_certs += c.secondary;
    devices_of_ca[c.ca_name] += c.devices;
    out.devices += c.devices;
    out.connected += c.connected;
  }
  constexpr std::int64_t kWeek = 7 * 86400;
  for (const auto& w : registry.expiry_histogram(now, kWeek, out.weeks)) {
    GroupOverview& o = group_for(w.ca_name);
    if (w.bucket < 0) {
      o.expired += w.count;
    } else if (w.bucket < out.weeks) {
      o.weeks[static_cast<std::size_t>(w.bucket)] += w.count;
    }
  }
  for (auto& [name, o] : groups) {
    if (name != kNoGroup) out.groups.push_back(std::move(o));
  }
  if (auto it = groups.find(kNoGroup); it != groups.end())
    out.groups.push_back(std::move(it->second));

  // The CA tree, with the slot each CA holds and its CRL.
  for (const auto& ca : index.cas()) {
    CaOverview o;
    o.ca = ca;
    o.ca.cert_der.clear();
    for (const auto& g : index.groups()) {
      if (g.primary_ca == ca.name || g.secondary_ca == ca.name) {
        o.group = g.name;
        o.slot = g.primary_ca == ca.name ? "primary" : "secondary";
        break;
      }
    }
    if (const auto* g = index.group_of_ca(ca.name); g != nullptr && o.group.empty()) {
      o.group = g->name;
    }
    if (auto it = devices_of_ca.find(ca.name); it != devices_of_ca.end()) o.devices = it->second;
    if (const auto crl = registry.latest_crl(ca.name)) {
      o.crl_number = crl->number;
      o.crl_this_update = crl->this_update;
      o.crl_next_update = crl->next_update;
    }
    out.cas.push_back(std::move(o));
  }

  // Devices the newest rollover jobs left behind.
  for (const auto& job : registry.list_jobs({.limit = jobs})) {
    if (!is_rollover(job.kind)) continue;
    for (const auto& [state, n] : registry.count_job_tasks(job.id)) {
      if (std::find(std::begin(kLeftBehind), std::end(kLeftBehind), state) ==
          std::end(kLeftBehind)) {
        continue;
      }
      out.not_back_total += n;
      // Listed from jobs whose count is small enough to read whole (the store reads a state's
      // tasks at once); a larger one is in the total, and `job show` lists it.
      if (out.not_back.size() >= not_back_limit || n > kMaxListedPerState) continue;
      for (auto& t : registry.job_tasks(job.id, state)) {
        if (out.not_back.size() >= not_back_limit) break;
        out.not_back.push_back(NotBack{job.id, job.kind, std::move(t.device_id), state, t.step});
      }
    }
  }
  return out;
}

}  // namespace fleetsign::engine
