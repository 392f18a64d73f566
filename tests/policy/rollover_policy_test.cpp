// The policy's "rollover" section: strict reading with messages that name the field, group
// overrides, the defaults `init` writes, and the maintenance windows' arithmetic (weekdays,
// windows crossing midnight).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "fleetsign/error.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::policy {
namespace {

constexpr std::int64_t kDay = 86400;
// Monday 2030-01-07 00:00:00 UTC.
constexpr std::int64_t kMonday = 1893974400;

std::int64_t at(int day_offset, int hour, int minute = 0) {
  return kMonday + day_offset * kDay + hour * 3600 + minute * 60;
}

std::string error_of(const std::string& json) {
  try {
    parse_policy(json, "policy.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kPolicyInvalid);
    return e.what();
  }
  ADD_FAILURE() << "no error for: " << json;
  return "";
}

std::vector<Window> windows_of(const std::string& rollover_json) {
  return parse_policy(R"({"rollover": )" + rollover_json + "}", "p").rollover.windows;
}

TEST(RolloverPolicy, DefaultsAreOptInWithNoWindows) {
  const Policy p = parse_policy(default_policy_json(), "default");
  EXPECT_FALSE(p.rollover.enabled);
  EXPECT_EQ(p.rollover.before_expiry_days, 30);
  EXPECT_TRUE(p.rollover.windows.empty());
  EXPECT_EQ(p.rollover.retry_failed_after_hours, 24);
  EXPECT_NE(default_policy_json().find("\n  \"rollover\": {\n    \"enabled\": false"),
            std::string::npos);
}

TEST(RolloverPolicy, ReadsEveryFieldAndGroupOverridesOnlyWhatTheyName) {
  const Policy p = parse_policy(R"({
    "rollover": {"enabled": true, "before_expiry_days": 45,
                 "windows": [{"days": "mon-fri", "start": "02:00", "end": "05:00"}],
                 "rate_per_minute": 600, "wave_size": 100, "abort_percent": 10,
                 "min_executed": 20, "step_timeout_s": 40, "retries": 2,
                 "retry_failed_after_hours": 12},
    "groups": {"night": {"rollover": {"windows": [{"days": "sat,sun", "start": "22:00",
                                                   "end": "04:00"}], "rate_per_minute": 60}},
               "off": {"rollover": {"enabled": false}}, "plain": {}}})",
                                "p");
  const RolloverSchedule top = rollover_for(p, "unknown-group");
  EXPECT_TRUE(top.enabled);
  EXPECT_EQ(top.before_expiry_days, 45);
  ASSERT_EQ(top.windows.size(), 1u);
  EXPECT_EQ(window_text(top.windows[0]), "mon,tue,wed,thu,fri 02:00-05:00");
  EXPECT_EQ(top.rate_per_minute, 600);
  EXPECT_EQ(top.wave_size, 100);
  EXPECT_EQ(top.abort_percent, 10);
  EXPECT_EQ(top.min_executed, 20);
  EXPECT_EQ(top.step_timeout_s, 40);
  EXPECT_EQ(top.retries, 2);
  EXPECT_EQ(top.retry_failed_after_hours, 12);

  const RolloverSchedule night = rollover_for(p, "night");
  EXPECT_TRUE(night.enabled);
  EXPECT_EQ(night.rate_per_minute, 60);
  EXPECT_EQ(night.wave_size, 100);  // not overridden
  ASSERT_EQ(night.windows.size(), 1u);
  EXPECT_EQ(window_text(night.windows[0]), "sat,sun 22:00-04:00");
  EXPECT_FALSE(rollover_for(p, "off").enabled);
  EXPECT_EQ(rollover_for(p, "plain").rate_per_minute, 600);
}

TEST(RolloverPolicy, RefusesBadValuesNamingFileFieldAndCause) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"rollover": {"enabeld": true}})", "policy.json: rollover.enabeld: unknown field"},
      {R"({"rollover": {"enabled": 1}})",
       "policy.json: rollover.enabled: must be true or false, got number"},
      {R"({"rollover": {"before_expiry_days": 0}})",
       "rollover.before_expiry_days: must be an integer in 1..36500, got 0"},
      {R"({"rollover": {"abort_percent": 101}})",
       "rollover.abort_percent: must be an integer in 0..100, got 101"},
      {R"({"rollover": {"step_timeout_s": 0}})",
       "rollover.step_timeout_s: must be an integer in 1..3600, got 0"},
      {R"({"rollover": {"rate_per_minute": -1}})",
       "rollover.rate_per_minute: must be an integer in 0..1000000, got -1"},
      {R"({"rollover": {"retry_failed_after_hours": 8761}})",
       "rollover.retry_failed_after_hours: must be an integer in 0..8760"},
      {R"({"rollover": {"windows": {}}})", "rollover.windows: must be an array, got object"},
      {R"({"rollover": {"windows": [{"days": "mon-fry", "start": "02:00", "end": "03:00"}]}})",
       "rollover.windows[0].days: use daily"},
      {R"({"rollover": {"windows": [{"days": "", "start": "02:00", "end": "03:00"}]}})",
       "rollover.windows[0].days: use daily"},
      {R"({"rollover": {"windows": [{"start": "2:00", "end": "03:00"}]}})",
       "rollover.windows[0].start: must be a UTC time HH:MM"},
      {R"({"rollover": {"windows": [{"start": "24:00", "end": "03:00"}]}})",
       "rollover.windows[0].start: must be a UTC time HH:MM"},
      {R"({"rollover": {"windows": [{"start": "02:60", "end": "03:00"}]}})",
       "rollover.windows[0].start: must be a UTC time HH:MM"},
      {R"({"rollover": {"windows": [{"start": "02:00"}]}})",
       "rollover.windows[0].end: is required"},
      {R"({"rollover": {"windows": [{"start": "02:00", "end": "02:00"}]}})",
       "rollover.windows[0].end: must differ from start"},
      {R"({"rollover": {"windows": [{"start": "00:00", "end": "24:00", "hours": 1}]}})",
       "rollover.windows[0].hours: unknown field"},
      {R"({"groups": {"g": {"rollover": {"wave_size": -1}}}})",
       "policy.json: groups.g.rollover.wave_size: must be an integer in 0..1000000, got -1"},
  };
  for (const auto& [json, expected] : cases) {
    const std::string message = error_of(json);
    EXPECT_NE(message.find(expected), std::string::npos) << json << "\n  got: " << message;
  }
  std::string many = R"({"rollover": {"windows": [)";
  for (int i = 0; i < 33; ++i)
    many += std::string(i ? "," : "") + R"({"start":"01:00","end":"02:00"})";
  EXPECT_NE(error_of(many + "]}}").find("rollover.windows: at most 32 windows, got 33"),
            std::string::npos);
}

TEST(MaintenanceWindow, OpenOnlyInsideItsHoursOnItsDays) {
  const auto w =
      windows_of(R"({"windows": [{"days": "mon-fri", "start": "02:00", "end": "05:00"}]})");
  EXPECT_FALSE(open_window(w, at(0, 1, 59)));
  const auto open = open_window(w, at(0, 2));
  ASSERT_TRUE(open);
  EXPECT_EQ(open->start, at(0, 2));
  EXPECT_EQ(open->end, at(0, 5));
  EXPECT_TRUE(open_window(w, at(4, 4, 59)));  // Friday
  EXPECT_FALSE(open_window(w, at(0, 5)));     // the end is not inside
  EXPECT_FALSE(open_window(w, at(5, 3)));     // Saturday
  EXPECT_FALSE(open_window(w, at(6, 3)));     // Sunday
}

TEST(MaintenanceWindow, CrossingMidnightBelongsToTheDayItStarts) {
  const auto w = windows_of(R"({"windows": [{"days": "fri", "start": "22:00", "end": "02:00"}]})");
  EXPECT_FALSE(open_window(w, at(4, 21, 59)));
  const auto late = open_window(w, at(4, 23));
  ASSERT_TRUE(late);
  EXPECT_EQ(late->start, at(4, 22));
  EXPECT_EQ(late->end, at(5, 2));
  const auto after_midnight = open_window(w, at(5, 1, 30));  // Saturday, from Friday's window
  ASSERT_TRUE(after_midnight);
  EXPECT_EQ(after_midnight->start, at(4, 22));
  EXPECT_FALSE(open_window(w, at(5, 2)));
  EXPECT_FALSE(open_window(w, at(5, 23)));     // Saturday night is not Friday
  EXPECT_FALSE(open_window(w, at(4, 1, 30)));  // Friday early: Thursday has no window
}

TEST(MaintenanceWindow, ListsRangesThatWrapAndDailyAndTheLatestEndingOccurrence) {
  const auto listed =
      windows_of(R"({"windows": [{"days": "mon,wed,sat", "start": "00:00", "end": "24:00"}]})");
  EXPECT_TRUE(open_window(listed, at(2, 12)));
  EXPECT_FALSE(open_window(listed, at(1, 12)));
  EXPECT_TRUE(open_window(listed, at(5, 23, 59)));
  const auto wrap =
      windows_of(R"({"windows": [{"days": "fri-mon", "start": "10:00", "end": "11:00"}]})");
  for (int d : {4, 5, 6, 7}) EXPECT_TRUE(open_window(wrap, at(d, 10, 30))) << d;
  for (int d : {1, 2, 3}) EXPECT_FALSE(open_window(wrap, at(d, 10, 30))) << d;
  const auto two = windows_of(R"({"windows": [{"days": "daily", "start": "01:00", "end": "03:00"},
                                              {"start": "02:00", "end": "06:00"}]})");
  const auto open = open_window(two, at(3, 2, 30));
  ASSERT_TRUE(open);
  EXPECT_EQ(open->end, at(3, 6));
  EXPECT_FALSE(open_window({}, at(0, 0)));
}

}  // namespace
}  // namespace fleetsign::policy
