// The policy's "rollover" section (rollover_schedule.hpp): reading it strictly, writing its
// defaults, merging a group's overrides, and the maintenance windows' arithmetic.
#include <array>
#include <cstdio>
#include <string>
#include <string_view>

#include "fleetsign/policy/policy.hpp"
#include "json_read.hpp"

namespace fleetsign::policy {
namespace detail {
namespace {

constexpr std::array<std::string_view, 7> kDayNames = {"mon", "tue", "wed", "thu",
                                                       "fri", "sat", "sun"};
constexpr std::uint8_t kEveryDay = 0x7f;
constexpr std::size_t kMaxWindows = 32;
constexpr std::size_t kMaxDaysText = 64;
constexpr int kMaxDays = 36500;
constexpr int kMaxCount = 1000000;
constexpr int kMaxStepTimeout = 3600;
constexpr int kMaxRetries = 100;
constexpr int kMaxRetryHours = 8760;  // a year

constexpr std::string_view kDaysHelp =
    "use daily, a day (mon … sun), a range (mon-fri, fri-mon) or a list (mon,wed,sat)";

int day_index(std::string_view name) {
  for (std::size_t i = 0; i < kDayNames.size(); ++i) {
    if (kDayNames[i] == name) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

// "daily" | items separated by ',', each a day or a range "a-b" (which may wrap past Sunday).
std::uint8_t read_days(const Var& value, const Where& where) {
  const std::string text = as_string(value, where);
  if (text.size() > kMaxDaysText) {
    where.fail("must be at most " + std::to_string(kMaxDaysText) + " characters, got " +
               std::to_string(text.size()));
  }
  if (text == "daily") {
    return kEveryDay;
  }
  std::uint8_t days = 0;
  std::size_t begin = 0;
  while (begin <= text.size()) {
    const std::size_t comma = std::min(text.find(',', begin), text.size());
    const std::string_view item = std::string_view(text).substr(begin, comma - begin);
    const std::size_t dash = item.find('-');
    const int first = day_index(item.substr(0, dash));
    const int last = dash == std::string_view::npos ? first : day_index(item.substr(dash + 1));
    if (first < 0 || last < 0) {
      where.fail(kDaysHelp.data() + std::string(", got ") + quote(text));
    }
    for (int d = first;; d = (d + 1) % 7) {
      days = static_cast<std::uint8_t>(days | (1u << d));
      if (d == last) {
        break;
      }
    }
    begin = comma + 1;
  }
  return days;
}

// "HH:MM" → minutes after midnight; "24:00" only where `end` allows it.
int read_time(const Var& value, const Where& where, bool end) {
  const std::string text = as_string(value, where);
  const auto digit = [&](std::size_t i) { return text[i] >= '0' && text[i] <= '9'; };
  const bool shaped =
      text.size() == 5 && digit(0) && digit(1) && text[2] == ':' && digit(3) && digit(4);
  const int hours = shaped ? (text[0] - '0') * 10 + (text[1] - '0') : -1;
  const int minutes = shaped ? (text[3] - '0') * 10 + (text[4] - '0') : -1;
  const bool midnight_end = end && hours == 24 && minutes == 0;
  if (!shaped || minutes > 59 || (hours > 23 && !midnight_end)) {
    where.fail(std::string("must be a UTC time HH:MM (00:00 … 23:59") + (end ? ", or 24:00" : "") +
               "), got " + quote(text));
  }
  return hours * 60 + minutes;
}

Window read_window(const Var& value, const Where& where) {
  const Section section(value, where, {"days", "start", "end"});
  const auto object = as_object(value, where);
  for (const char* required : {"start", "end"}) {
    if (!object->has(required)) {
      where.field(required).fail("is required (HH:MM, UTC)");
    }
  }
  Window window;
  section.read("days", window.days, read_days);
  section.read("start", window.start_minute,
               [](const Var& v, const Where& w) { return read_time(v, w, false); });
  section.read("end", window.end_minute,
               [](const Var& v, const Where& w) { return read_time(v, w, true); });
  if (window.end_minute == window.start_minute) {
    where.field("end").fail("must differ from start (for any time of day, list no windows)");
  }
  return window;
}

std::vector<Window> read_windows(const Var& value, const Where& where) {
  const auto array = as_array(value, where);
  if (array->size() > kMaxWindows) {
    where.fail("at most " + std::to_string(kMaxWindows) + " windows, got " +
               std::to_string(array->size()));
  }
  std::vector<Window> windows;
  for (std::size_t i = 0; i < array->size(); ++i) {
    windows.push_back(read_window(array->get(i), where.item(i)));
  }
  return windows;
}

// Reads every field into `T`'s members (plain values or optionals alike).
template <typename T>
T read_fields(const Var& value, const Where& where) {
  const Section section(
      value, where,
      {"enabled", "before_expiry_days", "windows", "rate_per_minute", "wave_size", "abort_percent",
       "min_executed", "step_timeout_s", "retries", "retry_failed_after_hours"});
  T out;
  section.read("enabled", out.enabled, as_bool);
  section.read_int("before_expiry_days", out.before_expiry_days, 1, kMaxDays);
  section.read("windows", out.windows, read_windows);
  section.read_int("rate_per_minute", out.rate_per_minute, 0, kMaxCount);
  section.read_int("wave_size", out.wave_size, 0, kMaxCount);
  section.read_int("abort_percent", out.abort_percent, 0, 100);
  section.read_int("min_executed", out.min_executed, 0, kMaxCount);
  section.read_int("step_timeout_s", out.step_timeout_s, 1, kMaxStepTimeout);
  section.read_int("retries", out.retries, 0, kMaxRetries);
  section.read_int("retry_failed_after_hours", out.retry_failed_after_hours, 0, kMaxRetryHours);
  return out;
}

std::string two_digits(int n) {
  char text[8];
  std::snprintf(text, sizeof text, "%02d", n);
  return text;
}

std::string time_text(int minutes) {
  return two_digits(minutes / 60) + ":" + two_digits(minutes % 60);
}

std::string days_text(std::uint8_t days) {
  if (days == kEveryDay) {
    return "daily";
  }
  std::string out;
  for (std::size_t d = 0; d < kDayNames.size(); ++d) {
    if ((days & (1u << d)) != 0) {
      out += (out.empty() ? "" : ",") + std::string(kDayNames[d]);
    }
  }
  return out;
}

bool has_day(std::uint8_t days, std::int64_t day_index) {
  return (days & (1u << static_cast<unsigned>(day_index))) != 0;
}

}  // namespace

RolloverSchedule read_rollover(const Var& value, const Where& where) {
  return read_fields<RolloverSchedule>(value, where);
}

RolloverOverrides read_rollover_overrides(const Var& value, const Where& where) {
  return read_fields<RolloverOverrides>(value, where);
}

Object::Ptr rollover_json(const RolloverSchedule& s) {
  Object::Ptr out = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
  out->set("enabled", s.enabled);
  out->set("before_expiry_days", s.before_expiry_days);
  Array::Ptr windows = new Array;
  for (const Window& w : s.windows) {
    Object::Ptr item = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
    item->set("days", days_text(w.days));
    item->set("start", time_text(w.start_minute));
    item->set("end", time_text(w.end_minute));
    windows->add(item);
  }
  out->set("windows", windows);
  out->set("rate_per_minute", s.rate_per_minute);
  out->set("wave_size", s.wave_size);
  out->set("abort_percent", s.abort_percent);
  out->set("min_executed", s.min_executed);
  out->set("step_timeout_s", s.step_timeout_s);
  out->set("retries", s.retries);
  out->set("retry_failed_after_hours", s.retry_failed_after_hours);
  return out;
}

}  // namespace detail

std::optional<WindowSpan> open_window(const std::vector<Window>& windows, std::int64_t now) {
  constexpr std::int64_t kDay = 86400;
  const std::int64_t day = now >= 0 ? now / kDay : -((-now + kDay - 1) / kDay);
  const std::int64_t midnight = day * kDay;
  const std::int64_t second = now - midnight;
  const std::int64_t weekday = (day % 7 + 7 + 3) % 7;  // 1970-01-01 was a Thursday
  const std::int64_t yesterday = (weekday + 6) % 7;
  std::optional<WindowSpan> best;
  for (const Window& w : windows) {
    const std::int64_t start = std::int64_t{w.start_minute} * 60;
    const std::int64_t end = std::int64_t{w.end_minute} * 60;
    std::optional<WindowSpan> span;
    if (end > start) {
      if (detail::has_day(w.days, weekday) && second >= start && second < end) {
        span = WindowSpan{midnight + start, midnight + end};
      }
    } else if (detail::has_day(w.days, weekday) && second >= start) {
      span = WindowSpan{midnight + start, midnight + kDay + end};  // runs into tomorrow
    } else if (detail::has_day(w.days, yesterday) && second < end) {
      span = WindowSpan{midnight - kDay + start, midnight + end};  // began yesterday
    }
    if (span && (!best || span->end > best->end)) {
      best = span;
    }
  }
  return best;
}

std::string window_text(const Window& window) {
  return detail::days_text(window.days) + " " + detail::time_text(window.start_minute) + "-" +
         detail::time_text(window.end_minute);
}

RolloverSchedule merged(const RolloverSchedule& base, const RolloverOverrides& group) {
  RolloverSchedule out = base;
  out.enabled = group.enabled.value_or(out.enabled);
  out.before_expiry_days = group.before_expiry_days.value_or(out.before_expiry_days);
  out.windows = group.windows.value_or(out.windows);
  out.rate_per_minute = group.rate_per_minute.value_or(out.rate_per_minute);
  out.wave_size = group.wave_size.value_or(out.wave_size);
  out.abort_percent = group.abort_percent.value_or(out.abort_percent);
  out.min_executed = group.min_executed.value_or(out.min_executed);
  out.step_timeout_s = group.step_timeout_s.value_or(out.step_timeout_s);
  out.retries = group.retries.value_or(out.retries);
  out.retry_failed_after_hours =
      group.retry_failed_after_hours.value_or(out.retry_failed_after_hours);
  return out;
}

RolloverSchedule rollover_for(const Policy& policy, std::string_view group) {
  const auto found = policy.groups.find(std::string(group));
  return found == policy.groups.end() ? policy.rollover
                                      : merged(policy.rollover, found->second.rollover);
}

const std::vector<int>& alert_days_for(const Policy& policy, std::string_view group) {
  const auto found = policy.groups.find(std::string(group));
  if (found != policy.groups.end() && !found->second.alert_days.empty()) {
    return found->second.alert_days;
  }
  return policy.alert_days;
}

}  // namespace fleetsign::policy
