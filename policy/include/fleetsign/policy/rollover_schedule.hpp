// The policy's rollover schedule: when `fleetsign serve` starts device rollovers by itself (the
// "rollover" section of policy.json, at the top level and inside groups.NAME, where each key given
// overrides the top level's), and the UTC maintenance windows it may start them in.
// Pure values and time arithmetic: no I/O, no clock of its own. Thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fleetsign::policy {

// A maintenance window, repeated on some weekdays, in UTC: "days" ("daily", "mon-fri",
// "mon,wed,sat", "fri-mon", "mon-wed,sat"), "start" and "end" ("HH:MM"; "24:00" is allowed as an
// end). An end before the start crosses midnight: the window belongs to the day it starts on
// ("fri 22:00–02:00" runs from Friday 22:00 to Saturday 02:00).
struct Window {
  std::uint8_t days = 0x7f;  // bit 0 = Monday … bit 6 = Sunday
  int start_minute = 0;      // minutes after 00:00 UTC, 0..1439
  int end_minute = 1440;     // 0..1440 ("00:00" after a start: up to midnight); != start_minute
};

// One occurrence of a window: [start, end) in unix seconds.
struct WindowSpan {
  std::int64_t start = 0, end = 0;
};

// The occurrence of one of `windows` that contains `now`; when several do, the one ending last.
// nullopt when none does (an empty list is never open here: callers treat "no windows" as any
// time themselves).
std::optional<WindowSpan> open_window(const std::vector<Window>& windows, std::int64_t now);
// "mon-fri 02:00-05:00", for logs and audit rows.
std::string window_text(const Window& window);

struct RolloverSchedule {
  bool enabled = false;         // the scheduler starts rollovers (opt-in)
  int before_expiry_days = 30;  // roll devices whose certificate expires within this
  std::vector<Window> windows;  // empty = any time
  int rate_per_minute = 0;      // 0 = unlimited
  int wave_size = 0;            // 0 = one wave
  int abort_percent = 0;        // 0 = never abort
  int min_executed = 0;
  int step_timeout_s = 30;
  int retries = 1;
  int retry_failed_after_hours = 24;  // a device that failed is tried again after this
};

// A group's "rollover" section: only what it sets.
struct RolloverOverrides {
  std::optional<bool> enabled;
  std::optional<int> before_expiry_days;
  std::optional<std::vector<Window>> windows;
  std::optional<int> rate_per_minute, wave_size, abort_percent, min_executed, step_timeout_s,
      retries, retry_failed_after_hours;
};

// `base` with every field `group` sets replaced.
RolloverSchedule merged(const RolloverSchedule& base, const RolloverOverrides& group);

}  // namespace fleetsign::policy
