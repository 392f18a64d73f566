// The fleet at a glance, as the dashboard and `fleetsign fleet overview` show it: device
// certificates expiring per week for the next weeks, stacked by enrollment group, with the CA and
// CRL dates to mark on that horizon; per group, its devices, live sessions and certificates per
// slot; the CA tree; and the devices that rollover jobs left behind (not seen on their new
// certificate).
//
// Scale: counts come from the registry's aggregates (Stores::expiry_histogram and
// device_counts_by_ca): no row per device is read into memory. Not thread-safe (uses the
// Registry).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fleetsign/engine/stores.hpp"

namespace fleetsign::engine {

struct GroupOverview {
  std::string group;  // kNoGroup: devices whose CA is in no group's chain
  bool enabled = true;
  std::string primary_ca, secondary_ca;
  std::int64_t devices = 0, connected = 0, primary_certs = 0, secondary_certs = 0;
  std::int64_t expired = 0;         // device certificates past not_after
  std::vector<std::int64_t> weeks;  // certificates expiring in week i from now
};

struct CaOverview {
  CaRecord ca;               // cert_der left empty
  std::string group, slot;   // the group whose slot holds it ("" when none), "primary"|"secondary"
  std::int64_t devices = 0;  // devices it issued the newest certificate of
  std::int64_t crl_number = 0, crl_this_update = 0, crl_next_update = 0;  // 0: no CRL yet
};

struct NotBack {
  std::string job, kind, device, state, step;  // a task that settled in a failure state
};

struct FleetOverview {
  std::int64_t now = 0;
  int weeks = 0;
  std::vector<GroupOverview> groups;  // by name, kNoGroup last
  std::vector<CaOverview> cas;        // registry order (parents before children)
  // The first `not_back_limit`, newest job first, from jobs with at most 10,000 tasks in that
  // state (a larger job counts in the total only: `job show` lists it).
  std::vector<NotBack> not_back;
  std::int64_t not_back_total = 0;
  std::int64_t devices = 0, connected = 0;
};

// Reads the registry as of `now`. `jobs`: how many of the newest rollover jobs are searched for
// devices left behind.
FleetOverview fleet_overview(Stores& registry, std::int64_t now, int weeks,
                             std::size_t not_back_limit = 100, std::int64_t jobs = 20);

}  // namespace fleetsign::engine
