// fuzz_policy: the policy file parser (parse_policy: Poco's JSON parser, then the strict reader of
// every section, the rollover schedule's windows included) and what the engine asks of a policy
// it accepted (a group's validity, rollover schedule and alert days; the maintenance windows).
//
// parse_policy's contract: a policy, or fleetsign::Error(kPolicyInvalid). Any other exception out
// of it is a bug (libFuzzer reports it as a crash). A policy it accepts keeps its own rules:
// alert days strictly decreasing and positive, CRL warn < resign < validity, windows whose end
// differs from their start, device-ID lengths within 1..128, at least one key algorithm.
#include <cstdint>
#include <string_view>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/policy/policy.hpp"
#include "fuzz_input.hpp"

namespace {

using namespace fleetsign;

void check_alert_days(const std::vector<int>& days) {
  for (std::size_t i = 0; i < days.size(); ++i) {
    if (days[i] < 1 || (i > 0 && days[i] >= days[i - 1])) {
      fuzz::violated("an accepted policy has alert days that do not strictly decrease");
    }
  }
}

void check_schedule(const policy::RolloverSchedule& s) {
  for (const auto& w : s.windows) {
    if (w.start_minute < 0 || w.start_minute > 1439 || w.end_minute < 0 || w.end_minute > 1440 ||
        w.start_minute == w.end_minute || (w.days & 0x80) != 0 || w.days == 0) {
      fuzz::violated("an accepted policy has a malformed maintenance window");
    }
    (void)policy::window_text(w);
  }
  // A week of hours, from the epoch: the windows' arithmetic on every weekday.
  for (std::int64_t t = 0; t < 7 * 86400; t += 3 * 3600 + 17) {
    const auto open = policy::open_window(s.windows, t);
    if (open && (open->start > t || open->end <= t)) {
      fuzz::violated("open_window returned a window that does not contain the time");
    }
  }
}

void check_accepted(const policy::Policy& p) {
  if (p.device_keys.empty() || p.ca_keys.empty()) fuzz::violated("no key algorithms");
  if (p.device_id.max_length < 1 || p.device_id.max_length > 128) {
    fuzz::violated("an accepted policy has a device-ID length outside 1..128");
  }
  if (!(p.crl.warn_hours < p.crl.resign_hours && p.crl.resign_hours < p.crl.validity_hours)) {
    fuzz::violated("an accepted policy has CRL hours out of order");
  }
  check_alert_days(p.alert_days);
  check_schedule(p.rollover);
  for (const auto& [name, group] : p.groups) {
    const int days = policy::device_days_for(p, name);
    if (days < 1 || days > 36500) fuzz::violated("a group's device days are out of range");
    check_alert_days(policy::alert_days_for(p, name));
    check_schedule(policy::rollover_for(p, name));
  }
  (void)policy::check_device_id(p.device_id, "sensor-000001");
  (void)policy::check_device_id(p.device_id, "a.b_c:d");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > kPolicyFileLimit) return 0;  // load_policy_file refuses larger files unread
  try {
    check_accepted(policy::parse_policy(fuzz::as_text({data, size}), "fuzz/policy.json"));
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kPolicyInvalid) fuzz::violated("parse_policy threw another code");
  }
  return 0;
}
