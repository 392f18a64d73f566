// The rollover scheduler over a real registry and token (TestHome): devices issued through the
// engine's single-issue path, a FixedClock moved by each test to the weeks before those devices'
// certificates expire, and job outcomes recorded through the JobStore as a runner would.
#include "fleetsign/jobs/scheduler.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "enrollment_support.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {
namespace {

constexpr std::int64_t kDay = 86400;
constexpr std::int64_t kHour = 3600;

// Midnight UTC of the Monday on or before `t`.
std::int64_t monday_before(std::int64_t t) {
  const std::int64_t day = t / kDay;
  const std::int64_t weekday = (day + 3) % 7;  // 1970-01-01 was a Thursday
  return (day - weekday) * kDay;
}

class SchedulerTest : public ::testing::Test {
 protected:
  testing::TestHome th;
  engine::FixedClock clock{0};
  std::int64_t expiry = 0;  // when the first devices' certificates end

  void SetUp() override {
    th.make_hierarchy();
    engine::EnrollmentService(*th.registry, th.policy, th.clock).create_group("fleet", "int1", "");
  }

  void issue(const std::vector<std::string>& ids, int days = 365) {
    th.policy.validity.device_days = days;
    for (const auto& id : ids) testing::issue_device(th, "int1", id);
    const auto device = th.registry->find_device(ids.front());
    ASSERT_TRUE(device);
    if (expiry == 0) expiry = device->primary_not_after;
  }

  policy::Policy policy(const std::string& rollover_json, const std::string& groups = "{}") {
    return policy::parse_policy(
        R"({"rollover": )" + rollover_json + R"(, "groups": )" + groups + "}", "test-policy");
  }

  std::set<std::string> devices_of(const std::string& job_id) {
    std::set<std::string> out;
    for (const auto& t : th.registry->job_tasks(job_id, "")) out.insert(t.device_id);
    return out;
  }

  // Records each device's task as settled in `state` at `at`, and the job finished.
  void settle(const std::string& job_id, const std::map<std::string, std::string>& states,
              std::int64_t at) {
    std::vector<engine::JobTask> tasks;
    for (auto t : th.registry->job_tasks(job_id, "")) {
      t.state = states.at(t.device_id);
      t.finished_at = t.updated_at = at;
      tasks.push_back(t);
    }
    th.registry->save_job_tasks(tasks, {});
    th.registry->set_job_state(job_id, "finished", at);
  }

  std::vector<engine::AuditEntry> audit(const std::string& action) {
    std::vector<engine::AuditEntry> out;
    for (const auto& e : th.registry->audit_after(0, 100000)) {
      if (e.action == action) out.push_back(e);
    }
    return out;
  }
};

TEST_F(SchedulerTest, CreatesAJobInsideTheGroupsWindowAndNotOutsideIt) {
  issue({"dev-1", "dev-2", "dev-3"});
  const auto p = policy(R"({"enabled": true, "before_expiry_days": 30, "rate_per_minute": 120,
      "wave_size": 2, "abort_percent": 20, "min_executed": 3, "step_timeout_s": 45, "retries": 2,
      "windows": [{"days": "mon-fri", "start": "02:00", "end": "05:00"}]})");
  Scheduler scheduler(*th.registry, p, clock);
  const std::int64_t monday = monday_before(expiry - 24 * kDay);

  for (const std::int64_t outside :
       {monday + 1 * kHour, monday + 5 * kHour, monday + 5 * kDay + 3 * kHour,
        monday + 6 * kDay + 3 * kHour}) {
    clock.set(outside);
    EXPECT_TRUE(scheduler.tick().jobs_created.empty()) << engine::iso8601(outside);
  }
  EXPECT_TRUE(th.registry->list_jobs({.limit = 0}).empty());

  clock.set(monday + 2 * kHour + 30 * 60);
  const auto tick = scheduler.tick();
  ASSERT_EQ(tick.jobs_created.size(), 1u);
  const std::string id = tick.jobs_created[0];
  EXPECT_EQ(devices_of(id), (std::set<std::string>{"dev-1", "dev-2", "dev-3"}));
  const auto job = th.registry->find_job(id);
  ASSERT_TRUE(job);
  EXPECT_EQ(job->state, "running");
  const RolloverParams params = parse_params(job->params_json, "job");
  EXPECT_EQ(params.deadline, monday + 5 * kHour);  // the window's end
  EXPECT_EQ(params.rollout.per_minute, 120);
  EXPECT_EQ(params.wave, 2);
  EXPECT_EQ(params.abort_percent, 20);
  EXPECT_EQ(params.min_executed, 3);
  EXPECT_EQ(params.step_timeout_s, 45);
  EXPECT_EQ(params.retries, 2);
  EXPECT_EQ(params.selection.group, "fleet");

  const auto scheduled = audit("job.scheduled");
  ASSERT_EQ(scheduled.size(), 1u);
  EXPECT_EQ(scheduled[0].subject, id);
  const auto detail =
      Poco::JSON::Parser().parse(scheduled[0].detail).extract<Poco::JSON::Object::Ptr>();
  EXPECT_EQ(detail->getValue<std::string>("group"), "fleet");
  EXPECT_EQ(detail->getValue<int>("devices"), 3);
  EXPECT_EQ(detail->getArray("device_ids")->size(), 3u);
  EXPECT_EQ(detail->getValue<std::string>("window"), "mon,tue,wed,thu,fri 02:00-05:00");

  // Not twice within one window, nor while the job runs, nor the next day.
  for (const std::int64_t later :
       {monday + 3 * kHour, monday + 4 * kHour + 59 * 60, monday + kDay + 2 * kHour}) {
    clock.set(later);
    EXPECT_TRUE(scheduler.tick().jobs_created.empty());
  }
  EXPECT_EQ(th.registry->list_jobs({.limit = 0}).size(), 1u);
}

// A scheduler whose lease went to another process mid-tick (its writes fenced) creates no job
// and ends the tick with the refusal (its serve steps back), rather than listing it as a problem
// of each group and going on.
TEST_F(SchedulerTest, ATickWhoseLeaseWasLostCreatesNothingAndEndsWithTheRefusal) {
  issue({"dev-1", "dev-2"});
  // No alert is due (its write would be refused too): the job's creation is what is refused.
  const auto p = policy::parse_policy(
      R"({"rollover": {"enabled": true, "before_expiry_days": 30}, "alert_days": [1]})", "test");
  Scheduler scheduler(*th.registry, p, clock);
  clock.set(expiry - 10 * kDay);
  ASSERT_TRUE(th.registry->take_lease("scheduler", "w:1", 100, 15, "", nullptr));
  th.registry->fence_lease_writes(engine::LeaseFence{"scheduler", "w:1"});
  ASSERT_TRUE(th.registry->take_lease("scheduler", "w:2", 200, 15, "", nullptr));
  try {
    const auto tick = scheduler.tick();
    ADD_FAILURE() << "the tick went on: " << tick.jobs_created.size() << " job(s), "
                  << tick.problems.size() << " problem(s)";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kHomeBusy) << e.what();
  }
  th.registry->fence_lease_writes(std::nullopt);
  EXPECT_TRUE(th.registry->list_jobs({.limit = 0}).empty());
  EXPECT_TRUE(audit("job.scheduled").empty());
  // The holder's tick schedules.
  EXPECT_EQ(scheduler.tick().jobs_created.size(), 1u);
}

TEST_F(SchedulerTest, AWindowCrossingMidnightOpensOnItsDayOnly) {
  issue({"dev-1"});
  const auto p = policy(R"({"enabled": true,
      "windows": [{"days": "sat", "start": "22:00", "end": "02:00"}]})");
  Scheduler scheduler(*th.registry, p, clock);
  const std::int64_t monday = monday_before(expiry - 24 * kDay);
  const std::int64_t saturday = monday + 5 * kDay;
  for (const std::int64_t outside :
       {saturday + 21 * kHour, saturday - kDay + 23 * kHour /* friday */,
        saturday + kDay + 23 * kHour /* sunday night */, saturday + 1 * kHour /* sat early */}) {
    clock.set(outside);
    EXPECT_TRUE(scheduler.tick().jobs_created.empty()) << engine::iso8601(outside);
  }
  clock.set(saturday + kDay + 1 * kHour);  // Sunday 01:00: Saturday's window
  const auto tick = scheduler.tick();
  ASSERT_EQ(tick.jobs_created.size(), 1u);
  const auto job = th.registry->find_job(tick.jobs_created[0]);
  EXPECT_EQ(parse_params(job->params_json, "job").deadline, saturday + kDay + 2 * kHour);
}

TEST_F(SchedulerTest, DevicesFarFromExpiryAreLeftAlone) {
  issue({"dev-1"});
  const auto p = policy(R"({"enabled": true, "before_expiry_days": 30})");
  Scheduler scheduler(*th.registry, p, clock);
  clock.set(expiry - 31 * kDay);
  EXPECT_TRUE(scheduler.tick().jobs_created.empty());
  clock.set(expiry - 29 * kDay);
  EXPECT_EQ(scheduler.tick().jobs_created.size(), 1u);
}

TEST_F(SchedulerTest, AFailedDeviceIsRerunOnlyAfterRetryFailedAfterHours) {
  issue({"dev-1", "dev-2"});
  const auto p = policy(R"({"enabled": true, "retry_failed_after_hours": 24})");
  Scheduler scheduler(*th.registry, p, clock);
  const std::int64_t t = expiry - 20 * kDay;
  clock.set(t);
  const auto first = scheduler.tick().jobs_created;
  ASSERT_EQ(first.size(), 1u);
  // dev-1 went offline at t + 10 min, dev-2 refused at t + 3 h.
  settle(first[0], {{"dev-1", "offline"}, {"dev-2", "refused"}}, t + 600);
  auto tasks = th.registry->job_tasks(first[0], "");
  for (auto& task : tasks) {
    if (task.device_id == "dev-2") task.finished_at = task.updated_at = t + 3 * kHour;
  }
  th.registry->save_job_tasks(tasks, {});

  clock.set(t + 600 + 24 * kHour - 1);
  EXPECT_TRUE(scheduler.tick().jobs_created.empty());
  clock.set(t + 600 + 24 * kHour);
  const auto second = scheduler.tick().jobs_created;
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(devices_of(second[0]), (std::set<std::string>{"dev-1"}));

  // dev-2's turn comes 24 h after its own failure, while dev-1's job still runs (another job
  // of the group running holds the group back).
  clock.set(t + 3 * kHour + 24 * kHour);
  EXPECT_TRUE(scheduler.tick().jobs_created.empty());
  settle(second[0], {{"dev-1", "done"}}, t + 600 + 24 * kHour + 60);
  const auto third = scheduler.tick().jobs_created;
  ASSERT_EQ(third.size(), 1u);
  EXPECT_EQ(devices_of(third[0]), (std::set<std::string>{"dev-2"}));
}

TEST_F(SchedulerTest, DisabledPolicyOrGroupOverrideStartsNothing) {
  issue({"dev-1"});
  clock.set(expiry - 10 * kDay);
  const auto off = policy(R"({"enabled": false})");
  EXPECT_TRUE(Scheduler(*th.registry, off, clock).tick().jobs_created.empty());
  const auto group_off =
      policy(R"({"enabled": true})", R"({"fleet": {"rollover": {"enabled": false}}})");
  EXPECT_TRUE(Scheduler(*th.registry, group_off, clock).tick().jobs_created.empty());
  const auto group_on =
      policy(R"({"enabled": false})", R"({"fleet": {"rollover": {"enabled": true}}})");
  EXPECT_EQ(Scheduler(*th.registry, group_on, clock).tick().jobs_created.size(), 1u);
}

// A per-group override for a group the registry does not have (a typo) applies to nothing: the
// scheduler says so once, and again only after the group has existed in between.
TEST_F(SchedulerTest, AnOverrideForAGroupNotInTheRegistryIsReportedOnce) {
  const auto p = policy(
      R"({"enabled": true})",
      R"({"flet": {"rollover": {"windows": [{"days": "sat", "start": "02:00", "end": "04:00"}]}}, "fleet": {}, "line-2": {"device_days": 90}})");
  Scheduler s(*th.registry, p, clock);
  const auto first = s.tick();
  ASSERT_EQ(first.problems.size(), 1u) << "line-2 is for issuance alone: no problem";
  EXPECT_NE(first.problems[0].find("groups.flet names no enrollment group"), std::string::npos)
      << first.problems[0];
  EXPECT_TRUE(s.tick().problems.empty()) << "once per process";
  engine::EnrollmentService(*th.registry, th.policy, th.clock).create_group("flet", "int1", "");
  EXPECT_TRUE(s.tick().problems.empty());
}

// A device counts by the later certificate in its slots (a rolled device by its new one), never
// by having been rolled once: when that certificate nears its end it is due again.
TEST_F(SchedulerTest, AlertsAt30_14_7RaisedOncePerDayAndAgainTheNextDay) {
  issue({"late-1", "late-2"}, 365);
  issue({"soon-1"}, 358);  // expires 7 days before the others

  const auto p = policy(R"({"enabled": false})");  // alerts need no rollover
  // The first minute of a UTC day, so that "later the same day" is the same day whatever the
  // hour the suite runs at: late-*: 20 to 21 days left; soon-1: 13 to 14.
  const std::int64_t day = (expiry - 20 * kDay) / kDay * kDay + 60;
  clock.set(day);
  const auto first = Scheduler(*th.registry, p, clock).tick().alerts;
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].group, "fleet");
  EXPECT_EQ(first[0].days, 30);
  EXPECT_EQ(first[0].count, 3);
  EXPECT_EQ(first[0].devices.front(), "soon-1");  // soonest first
  EXPECT_EQ(first[1].days, 14);
  EXPECT_EQ(first[1].count, 1);
  EXPECT_EQ(first[1].devices, (std::vector<std::string>{"soon-1"}));
  EXPECT_EQ(alert_text(first[1]),
            "group fleet: 1 device expires within 14 days and is not rotated: soon-1");

  // Later the same UTC day, and after a restart: nothing again.
  Scheduler restarted(*th.registry, p, clock);
  clock.set(day + 2 * kHour);
  EXPECT_TRUE(restarted.tick().alerts.empty());
  EXPECT_EQ(audit("alert.expiry").size(), 2u);

  // The next UTC day: raised again.
  clock.set(day + kDay + 2 * kHour);
  EXPECT_EQ(restarted.tick().alerts.size(), 2u);
  // A week on, soon-1 is within 7 days.
  clock.set(expiry - 13 * kDay);
  const auto week = restarted.tick().alerts;
  ASSERT_EQ(week.size(), 3u);
  EXPECT_EQ(week[1].count, 3);  // 14 days: late-1, late-2, soon-1
  EXPECT_EQ(week[2].days, 7);
  EXPECT_EQ(week[2].devices, (std::vector<std::string>{"soon-1"}));
}

}  // namespace
}  // namespace fleetsign::jobs
