// The job store (schema v6) of the SQLite registry, against a real file in a fresh temporary
// directory per test: jobs and tasks round trip, creation is atomic, task flushes with
// their slot changes (all or nothing, audited only where admission changes), the v5 → v6 migration.
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "registry_backend.hpp"
#include "registry_test_support.hpp"

namespace fleetsign::engine {
namespace {

namespace fs = std::filesystem;
namespace kw = Poco::Data::Keywords;

constexpr std::int64_t kNow = 1'700'000'000;

// A temporary registry, and a second, independent connection (what is on disk, not what the
// Registry caches).
using regtest::raw_session;
using regtest::TempDir;

template <typename F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return Error(ErrorCode::kOk, "no error");
}

JobRecord job(const std::string& id, std::int64_t created_at = 0) {
  JobRecord j;
  j.id = id;
  j.kind = "device-rollover";
  j.params_json = R"({"ca":"issuing-2"})";
  j.created_at = created_at;
  return j;
}

JobTask task(const std::string& job_id, int n) {
  JobTask t;
  t.job_id = job_id;
  t.seq = n;
  t.device_id = "dev-" + std::to_string(n);
  t.target_slot = n % 2 == 0 ? "secondary" : "primary";
  t.old_serial = "0A" + std::to_string(n);
  t.updated_at = kNow;
  return t;
}

std::vector<JobTask> tasks(const std::string& job_id, int count) {
  std::vector<JobTask> out;
  for (int n = 0; n < count; ++n) out.push_back(task(job_id, n));
  return out;
}

SlotChange retire(const std::string& device_id, const std::string& keep) {
  SlotChange c;
  c.kind = SlotChange::Kind::kRetireDevice;
  c.device_id = device_id;
  c.serial = keep;
  return c;
}

SlotChange individual_slot(const std::string& id, Slot slot, std::vector<std::uint8_t> der) {
  SlotChange c;
  c.kind = SlotChange::Kind::kIndividualSlot;
  c.device_id = id;
  c.slot = slot;
  c.cert_der = std::move(der);
  return c;
}

class Jobs : public ::testing::Test {
 protected:
  TempDir dir;
  std::int64_t clock = kNow;
  std::unique_ptr<Registry> reg = open();

  std::unique_ptr<Registry> open() {
    RegistryOptions options;
    options.now = [this] { return clock; };
    options.actor = "tester";
    return Registry::open(dir.db(), options);
  }

  // A device registered with one certificate per serial given (primary first, then secondary).
  void device(const std::string& id, const std::vector<std::string>& serials) {
    for (const auto& serial : serials) {
      CertIntent i;
      i.serial = serial;
      i.device_id = id;
      i.ca_name = "issuing";
      i.not_after = kNow + 1000;
      i.tbs_der = {0x30};
      reg->record_intents(std::vector<CertIntent>{i});
      reg->record_issued(std::vector<IssuedCert>{{serial, {0x30, 0x01}, "S1", "S256"}});
    }
  }
};

void expect_same(const JobTask& a, const JobTask& b) {
  EXPECT_EQ(a.job_id, b.job_id);
  EXPECT_EQ(a.seq, b.seq);
  EXPECT_EQ(a.device_id, b.device_id);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.attempts, b.attempts);
  EXPECT_EQ(a.target_slot, b.target_slot);
  EXPECT_EQ(a.old_serial, b.old_serial);
  EXPECT_EQ(a.new_serial, b.new_serial);
  EXPECT_EQ(a.new_sha256, b.new_sha256);
  EXPECT_EQ(a.next_at, b.next_at);
  EXPECT_EQ(a.last_status, b.last_status);
  EXPECT_EQ(a.last_error, b.last_error);
  EXPECT_EQ(a.started_at, b.started_at);
  EXPECT_EQ(a.updated_at, b.updated_at);
  EXPECT_EQ(a.finished_at, b.finished_at);
}

TEST_F(Jobs, JobsAndTasksRoundTripEveryField) {
  EXPECT_EQ(reg->schema_version(), Registry::kSchemaVersion);
  EXPECT_EQ(reg->job_store_version(), 1);
  JobRecord j = job("j1", kNow - 50);
  j.state = "paused";
  j.report_json = R"({"phase":"overlap"})";
  j.runner = "host:12";
  j.heartbeat_at = kNow - 5;
  j.updated_at = kNow - 40;
  j.finished_at = 7;
  JobTask full = task("j1", 3);
  full.state = "timed-out";
  full.step = "install";
  full.attempts = 4;
  full.new_serial = "7F01";
  full.new_sha256 = "AB12";
  full.next_at = kNow + 30;
  full.last_status = 504;
  full.last_error = "the device did not answer in 30 s";
  full.started_at = kNow - 20;
  full.updated_at = kNow - 10;
  full.finished_at = kNow - 1;
  JobTask plain = task("", 1);  // the job's id is taken from the record
  plain.updated_at = 0;         // stamped with the registry's clock
  reg->create_job(j, std::vector<JobTask>{full, plain});

  const auto found = reg->find_job("j1");
  ASSERT_TRUE(found);
  EXPECT_EQ(found->kind, "device-rollover");
  EXPECT_EQ(found->state, "paused");
  EXPECT_EQ(found->params_json, R"({"ca":"issuing-2"})");
  EXPECT_EQ(found->report_json, R"({"phase":"overlap"})");
  EXPECT_EQ(found->runner, "host:12");
  EXPECT_EQ(found->heartbeat_at, kNow - 5);
  EXPECT_EQ(found->created_at, kNow - 50);
  EXPECT_EQ(found->updated_at, kNow - 40);
  EXPECT_EQ(found->finished_at, 7);

  const auto rows = reg->job_tasks("j1", "");
  ASSERT_EQ(rows.size(), 2u);
  plain.job_id = "j1";
  plain.updated_at = kNow;
  expect_same(rows[0], plain);  // by seq
  expect_same(rows[1], full);
  EXPECT_TRUE(reg->job_tasks("j1", "done").empty());
  ASSERT_EQ(reg->job_tasks("j1", "timed-out").size(), 1u);

  const auto log = reg->audit_log(0);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].action, "job.create");
  EXPECT_EQ(log[0].subject, "j1");
  EXPECT_EQ(log[0].actor, "tester");
  EXPECT_EQ(log[0].detail, R"({"kind":"device-rollover","tasks":2})");
}

TEST_F(Jobs, ListIsNewestFirstAndDefaultsAreStamped) {
  reg->create_job(job("old", kNow - 100), {});
  reg->create_job(job("new"), {});
  reg->create_job(job("mid", kNow - 50), {});
  const auto all = reg->list_jobs({.limit = 0});
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].id, "new");
  EXPECT_EQ(all[1].id, "mid");
  EXPECT_EQ(all[2].id, "old");
  EXPECT_EQ(all[0].state, "running");
  EXPECT_EQ(all[0].report_json, "{}");
  EXPECT_EQ(all[0].created_at, kNow);
  EXPECT_EQ(all[0].updated_at, kNow);
  EXPECT_EQ(reg->list_jobs({.limit = 2}).size(), 2u);
}

// Pages follow the list's order (newest first, the id breaking a tie of created_at): each job
// once, and a cursor naming no job is refused rather than read as the start.
TEST_F(Jobs, PagesAfterACursorTakeEachJobOnce) {
  for (const char* id : {"a", "c", "b", "e", "d"}) reg->create_job(job(id, kNow - 10), {});
  reg->create_job(job("newest"), {});
  std::vector<std::string> seen;
  ListPage page{2, ""};
  for (int i = 0; i < 10; ++i) {
    const auto rows = reg->list_jobs(page);
    for (const auto& r : rows) seen.push_back(r.id);
    if (rows.size() < 2) break;
    page.after = rows.back().id;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"newest", "e", "d", "c", "b", "a"}));
  EXPECT_TRUE(reg->list_jobs({0, "a"}).empty());
  EXPECT_EQ(reg->list_jobs({0, "c"}).size(), 2u);
  EXPECT_EQ(error_of([&] { reg->list_jobs({2, "ghost"}); }).code(), ErrorCode::kNotFound);
}

TEST_F(Jobs, CreateIsAtomic) {
  reg->create_job(job("j1"), tasks("j1", 3));
  // A taken id: neither the job nor any of its tasks, nor an audit row.
  const auto taken = error_of([&] { reg->create_job(job("j1"), tasks("j1", 5)); });
  EXPECT_EQ(taken.code(), ErrorCode::kAlreadyExists);
  EXPECT_NE(std::string(taken.what()).find("'j1'"), std::string::npos) << taken.what();
  EXPECT_EQ(reg->job_tasks("j1", "").size(), 3u);
  EXPECT_EQ(reg->audit_log(0).size(), 1u);
  // A device twice, late in the span.
  auto dup = tasks("j2", 50);
  dup[49].device_id = "dev-7";
  const auto twice = error_of([&] { reg->create_job(job("j2"), dup); });
  EXPECT_EQ(twice.code(), ErrorCode::kAlreadyExists);
  EXPECT_NE(std::string(twice.what()).find("dev-7"), std::string::npos) << twice.what();
  // A task state the schema does not know.
  auto bad = tasks("j3", 2);
  bad[1].state = "finished";
  const auto state = error_of([&] { reg->create_job(job("j3"), bad); });
  EXPECT_EQ(state.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(std::string(state.what()).find("'finished'"), std::string::npos) << state.what();
  EXPECT_FALSE(reg->find_job("j2"));
  EXPECT_FALSE(reg->find_job("j3"));
  EXPECT_TRUE(reg->job_tasks("j2", "").empty());
  EXPECT_EQ(reg->audit_log(0).size(), 1u);
}

TEST_F(Jobs, StateChangesAreAuditedAndReportsAreNot) {
  reg->create_job(job("j1", kNow - 100), {});
  clock = kNow + 10;
  reg->set_job_state("j1", "paused", 0);
  clock = kNow + 20;
  reg->set_job_report("j1", R"({"phase":"retire"})");
  clock = kNow + 30;
  reg->set_job_state("j1", "finished", kNow + 29);
  const auto j = reg->find_job("j1");
  EXPECT_EQ(j->state, "finished");
  EXPECT_EQ(j->finished_at, kNow + 29);
  EXPECT_EQ(j->updated_at, kNow + 30);
  EXPECT_EQ(j->report_json, R"({"phase":"retire"})");
  const auto log = reg->audit_log(0);
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[0].action, "job.finished");
  EXPECT_EQ(log[0].at, kNow + 30);
  EXPECT_EQ(log[0].detail,
            R"({"kind":"device-rollover","from":"paused","finished_at":1700000029})");
  EXPECT_EQ(log[1].action, "job.paused");
  EXPECT_EQ(error_of([&] { reg->set_job_state("nope", "paused", 0); }).code(),
            ErrorCode::kNotFound);
  EXPECT_EQ(error_of([&] { reg->set_job_state("j1", "done", 0); }).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_of([&] { reg->set_job_report("nope", "{}"); }).code(), ErrorCode::kNotFound);
  EXPECT_EQ(reg->audit_log(0).size(), 3u);
}

TEST_F(Jobs, SaveReplacesRowsAndCountsByState) {
  reg->create_job(job("j1"), tasks("j1", 10));
  clock = kNow + 5;
  std::vector<JobTask> flush;
  for (int n : {2, 5, 7}) {
    JobTask t = task("j1", n);
    t.state = n == 7 ? "offline" : "done";
    t.step = n == 7 ? "" : "confirm";
    t.attempts = 1;
    t.new_serial = "7F" + std::to_string(n);
    t.updated_at = 0;
    flush.push_back(t);
  }
  reg->save_job_tasks(flush, {});
  const auto done = reg->job_tasks("j1", "done");
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[0].device_id, "dev-2");
  EXPECT_EQ(done[1].device_id, "dev-5");
  EXPECT_EQ(done[1].step, "confirm");
  EXPECT_EQ(done[1].new_serial, "7F5");
  EXPECT_EQ(done[1].updated_at, kNow + 5);
  const auto counts = reg->count_job_tasks("j1");
  const std::vector<std::pair<std::string, std::int64_t>> want{
      {"done", 2}, {"offline", 1}, {"pending", 7}};
  EXPECT_EQ(counts, want);
  EXPECT_TRUE(reg->count_job_tasks("nope").empty());
}

TEST_F(Jobs, SaveIsAllOrNothing) {
  reg->create_job(job("j1"), tasks("j1", 3));
  device("dev-0", {"A0", "B0"});
  std::vector<JobTask> flush{task("j1", 0), task("j1", 1), task("j1", 9), task("j1", 2)};
  for (auto& t : flush) t.state = "done";
  const std::vector<SlotChange> changes{retire("dev-0", "B0")};
  const auto unknown = error_of([&] { reg->save_job_tasks(flush, changes); });
  EXPECT_EQ(unknown.code(), ErrorCode::kNotFound);
  EXPECT_NE(std::string(unknown.what()).find("dev-9"), std::string::npos) << unknown.what();
  for (const auto& t : reg->job_tasks("j1", "")) EXPECT_EQ(t.state, "pending") << t.device_id;
  EXPECT_EQ(reg->find_device("dev-0")->primary_serial, "A0") << "the slot change rolled back";
  // The same rows, but the slot change fails (last): no row is written either.
  flush.erase(flush.begin() + 2);
  const std::vector<SlotChange> neither{retire("dev-0", "C0")};
  EXPECT_EQ(error_of([&] { reg->save_job_tasks(flush, neither); }).code(),
            ErrorCode::kRegistryError);
  for (const auto& t : reg->job_tasks("j1", "")) EXPECT_EQ(t.state, "pending") << t.device_id;
  // A task of another job: not found in this one.
  auto other = tasks("j2", 1);
  other[0].device_id = "dev-7";  // dev-0 is j1's until j1 settles it
  reg->create_job(job("j2"), other);
  JobTask foreign = task("j2", 2);
  EXPECT_EQ(error_of([&] { reg->save_job_tasks(std::vector<JobTask>{foreign}, {}); }).code(),
            ErrorCode::kNotFound);
}

TEST_F(Jobs, RetireDeviceFreesTheSlotThatDoesNotHoldTheSerial) {
  reg->create_job(job("j1"), tasks("j1", 4));
  device("dev-0", {"A0", "B0"});
  device("dev-1", {"A1", "B1"});
  device("dev-2", {"A2"});
  const auto before = reg->find_device("dev-2");
  clock = kNow + 60;
  const auto change_mark = reg->change_mark();
  JobTask t0 = task("j1", 0);
  t0.state = "done";
  t0.step = "retire";
  const std::vector<SlotChange> changes{
      retire("dev-0", "B0"),  // keeps the secondary
      retire("dev-1", "A1"),  // keeps the primary
      retire("dev-2", "A2"),  // the other slot is free already
  };
  reg->save_job_tasks(std::vector<JobTask>{t0}, changes);
  const auto d0 = reg->find_device("dev-0");
  EXPECT_EQ(d0->primary_serial, "");
  EXPECT_EQ(d0->primary_not_after, 0);
  EXPECT_EQ(d0->secondary_serial, "B0");
  EXPECT_EQ(d0->updated_at, kNow + 60);
  const auto d1 = reg->find_device("dev-1");
  EXPECT_EQ(d1->primary_serial, "A1");
  EXPECT_EQ(d1->secondary_serial, "");
  EXPECT_EQ(d1->secondary_not_after, 0);
  const auto d2 = reg->find_device("dev-2");
  EXPECT_EQ(d2->primary_serial, "A2");
  EXPECT_EQ(d2->updated_at, before->updated_at) << "a no-op";
  EXPECT_EQ(reg->job_tasks("j1", "done").size(), 1u);
  EXPECT_EQ(reg->change_mark(), change_mark) << "no audit row for device slots";
  // In neither slot: kRegistryError naming the device and the serial; an unknown device.
  const auto neither =
      error_of([&] { reg->save_job_tasks({}, std::vector<SlotChange>{retire("dev-1", "B1")}); });
  EXPECT_EQ(neither.code(), ErrorCode::kRegistryError);
  EXPECT_NE(std::string(neither.what()).find("dev-1"), std::string::npos) << neither.what();
  EXPECT_NE(std::string(neither.what()).find("B1"), std::string::npos) << neither.what();
  EXPECT_EQ(error_of([&] {
              reg->save_job_tasks({}, std::vector<SlotChange>{retire("dev-9", "A9")});
            }).code(),
            ErrorCode::kNotFound);
}

// A job's certificate released (never switched to, or refused by the hub): revoked
// cessationOfOperation, out of its slot, with a cert.revoke audit row (the broker re-checks its
// sessions on it); released again, nothing more.
TEST_F(Jobs, ReleaseDeviceRevokesTheSerialWithAnAuditRowOnce) {
  device("dev-0", {"A0", "B0"});
  const auto mark = reg->change_mark();
  SlotChange release = retire("dev-0", "B0");
  release.kind = SlotChange::Kind::kReleaseDevice;
  reg->save_job_tasks({}, std::vector<SlotChange>{release});
  EXPECT_EQ(reg->find_device("dev-0")->primary_serial, "A0");
  EXPECT_EQ(reg->find_device("dev-0")->secondary_serial, "");
  EXPECT_EQ(reg->cert_state("B0"), engine::CertState::kRevoked);
  const auto rows = reg->audit_after(mark, 10);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].action, "cert.revoke");
  EXPECT_EQ(rows[0].subject, "B0");
  EXPECT_NE(rows[0].detail.find("cessationOfOperation"), std::string::npos) << rows[0].detail;
  reg->save_job_tasks({}, std::vector<SlotChange>{release});
  EXPECT_EQ(reg->audit_after(mark, 10).size(), 1u) << "released twice, revoked once";
}

TEST_F(Jobs, IndividualSlotIsSetAndFreedWithItsAuditRow) {
  IndividualEnrollment ie;
  ie.registration_id = "dev-0";
  ie.primary_cert = {0x30, 0x01, 0x01};
  ie.primary_sha256 = thumbprint_sha256(ie.primary_cert);
  reg->save_individual(ie, "enrollment.individual.create", true);
  reg->create_job(job("j1"), tasks("j1", 1));
  const std::vector<std::uint8_t> next{0x30, 0x02, 0x02, 0x02};
  const auto mark = reg->change_mark();
  JobTask t = task("j1", 0);
  t.step = "reprovision";
  t.state = "active";
  reg->save_job_tasks(std::vector<JobTask>{t},
                      std::vector<SlotChange>{individual_slot("dev-0", Slot::kSecondary, next)});
  auto found = reg->find_individual("dev-0");
  EXPECT_EQ(found->secondary_cert, next);
  EXPECT_EQ(found->secondary_sha256, thumbprint_sha256(next));
  EXPECT_EQ(found->primary_cert, ie.primary_cert);
  EXPECT_EQ(reg->find_individual_slots("dev-0")->secondary_sha256, thumbprint_sha256(next));
  auto rows = reg->audit_after(mark, 10);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].action, "enrollment.individual.set-slot");
  EXPECT_EQ(rows[0].subject, "dev-0");
  EXPECT_EQ(rows[0].detail, R"({"enabled":true,"primary_sha256":")" + ie.primary_sha256 +
                                R"(","secondary_sha256":")" + thumbprint_sha256(next) + R"("})");
  // An empty DER frees the slot.
  reg->save_job_tasks({}, std::vector<SlotChange>{individual_slot("dev-0", Slot::kPrimary, {})});
  found = reg->find_individual("dev-0");
  EXPECT_TRUE(found->primary_cert.empty());
  EXPECT_EQ(found->primary_sha256, "");
  EXPECT_EQ(found->secondary_sha256, thumbprint_sha256(next));
  rows = reg->audit_after(mark, 10);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1].detail, R"({"enabled":true,"primary_sha256":"","secondary_sha256":")" +
                                thumbprint_sha256(next) + R"("})");
  // No enrollment: kNotFound, and the task row of the same flush stays as it was.
  t.state = "done";
  EXPECT_EQ(error_of([&] {
              reg->save_job_tasks(std::vector<JobTask>{t}, std::vector<SlotChange>{individual_slot(
                                                               "dev-9", Slot::kPrimary, next)});
            }).code(),
            ErrorCode::kNotFound);
  EXPECT_EQ(reg->job_tasks("j1", "")[0].state, "active");
  EXPECT_EQ(reg->audit_after(mark, 10).size(), 2u);
}

TEST_F(Jobs, AddTasksAppendsAndRefusesADeviceAlreadyInTheJob) {
  reg->create_job(job("j1"), tasks("j1", 3));
  reg->add_job_tasks(std::vector<JobTask>{task("j1", 3), task("j1", 4)});
  EXPECT_EQ(reg->job_tasks("j1", "").size(), 5u);
  JobTask again = task("j1", 9);
  again.device_id = "dev-1";
  const auto dup = error_of([&] {
    reg->add_job_tasks(std::vector<JobTask>{task("j1", 5), again});
  });
  EXPECT_EQ(dup.code(), ErrorCode::kAlreadyExists);
  EXPECT_NE(std::string(dup.what()).find("'dev-1'"), std::string::npos) << dup.what();
  EXPECT_EQ(reg->job_tasks("j1", "").size(), 5u) << "dev-5 was not added either";
  EXPECT_EQ(error_of([&] { reg->add_job_tasks(std::vector<JobTask>{task("nope", 1)}); }).code(),
            ErrorCode::kNotFound);
}

// 10,000 devices: the job in one transaction, then a runner's flush of 1,000 rows (timed and
// printed, not asserted: the machine is shared).
TEST_F(Jobs, TenThousandTasksAreCreatedAndFlushedInBatches) {
  constexpr int kTasks = 10'000;
  auto all = tasks("big", kTasks);
  const auto t0 = std::chrono::steady_clock::now();
  reg->create_job(job("big"), all);
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<JobTask> flush(all.begin() + 4000, all.begin() + 5000);
  for (auto& t : flush) {
    t.state = "done";
    t.step = "confirm";
    t.attempts = 1;
    t.new_serial = "7F" + t.device_id;
  }
  const auto mark = reg->change_mark();
  const auto t2 = std::chrono::steady_clock::now();
  reg->save_job_tasks(flush, {});
  const auto t3 = std::chrono::steady_clock::now();
  const auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
  std::printf("[ timing ] create_job with %d tasks: %.1f ms; save_job_tasks of %zu rows: %.1f ms\n",
              kTasks, ms(t1 - t0), flush.size(), ms(t3 - t2));
  EXPECT_EQ(reg->change_mark(), mark) << "a task flush writes no audit row";
  const auto done = reg->job_tasks("big", "done");
  ASSERT_EQ(done.size(), 1000u);
  EXPECT_EQ(done.front().seq, 4000);
  EXPECT_EQ(done.back().seq, 4999);
  EXPECT_EQ(reg->job_tasks("big", "").size(), static_cast<std::size_t>(kTasks));
}

// A registry written by the previous fleetsign (v5, no job tables) migrates in place on open: its
// data stays, and the tables it gains are those a new registry is created with.
TEST(JobsMigration, AVersionFiveRegistryGainsTheJobStore) {
  FLEETSIGN_SQLITE_ONLY();  // SQLite's migrations; a PostgreSQL registry starts at version 13
  TempDir fresh, old;
  Registry::open(fresh.db());
  {
    auto reg = Registry::open(old.db());
    reg->set_desired("dev-1", R"({"a":1})");
  }
  const auto schema_of = [](const fs::path& db) {
    auto raw = raw_session(db);
    std::vector<std::string> sql;
    raw << "SELECT sql FROM sqlite_master WHERE name LIKE 'job%' AND sql IS NOT NULL ORDER BY name",
        kw::into(sql), kw::now;
    return sql;
  };
  {
    // Back to what v5 wrote: no job tables, no revocation columns (v7), no CRLs (v8), no
    // incidents (v9), version 5.
    auto raw = raw_session(old.db());
    raw << "DROP INDEX certificates_revoked", kw::now;
    raw << "DROP TABLE crls", kw::now;
    raw << "DROP TABLE crl_numbers", kw::now;
    raw << "ALTER TABLE cas DROP COLUMN revoked_at", kw::now;
    raw << "ALTER TABLE cas DROP COLUMN revocation_reason", kw::now;
    raw << "DROP TABLE job_runners", kw::now;  // v15 (job tasks shared by workers)
    raw << "DROP TABLE job_tasks", kw::now;
    raw << "DROP TABLE jobs", kw::now;
    raw << "ALTER TABLE certificates DROP COLUMN revoked_at", kw::now;
    raw << "ALTER TABLE certificates DROP COLUMN revocation_reason", kw::now;
    raw << "DROP TABLE incidents", kw::now;  // v9 (issue 10's incidents)
    // …and none of v10's (key hashes, the blocklist).
    raw << "ALTER TABLE certificates DROP COLUMN key_sha256", kw::now;
    raw << "DROP TABLE blocked_keys", kw::now;
    raw << "DROP TABLE operators", kw::now;     // v13 (issue 12's operators)
    raw << "DROP TABLE batch_shares", kw::now;  // v14 (issue 13's workers)
    raw << "DROP TABLE leases", kw::now;
    raw << "UPDATE schema_version SET version = 5", kw::now;
  }
  EXPECT_TRUE(schema_of(old.db()).empty());
  auto reg = Registry::open(old.db());
  EXPECT_EQ(reg->schema_version(), Registry::kSchemaVersion);
  EXPECT_EQ(reg->job_store_version(), 1);
  EXPECT_EQ(reg->twin("dev-1")->desired, R"({"a":1})");
  EXPECT_EQ(schema_of(old.db()), schema_of(fresh.db()));
  EXPECT_EQ(schema_of(old.db()).size(), 5u) << "3 tables, 2 indexes";
  reg->create_job(job("j1"), {});
  EXPECT_TRUE(reg->find_job("j1"));
}

}  // namespace
}  // namespace fleetsign::engine

namespace fleetsign::engine {
namespace {

// revoke_certs (schema v7): revoked with time and reason, out of the device's slot and of an
// individual enrollment's slot, one audit row for the broker; all-or-nothing; repeats skip.
TEST_F(Jobs, RevokeCertsFreesTheSlotsWritesOneAuditRowAndIsAllOrNothing) {
  device("dev-0", {"0A01", "0A02"});  // primary 0A01, secondary 0A02
  device("dev-1", {"0B01"});
  IndividualEnrollment ie;
  ie.registration_id = "dev-0";
  ie.primary_cert = {0x30, 0x01};
  ie.primary_sha256 = "S256";  // the thumbprint device() records for every certificate
  reg->save_individual(ie, "enrollment.individual.create", true);
  const auto mark = reg->change_mark();

  // An unknown serial in the span: nothing is written.
  const std::vector<std::string> bad{"0A01", "FFFF"};
  EXPECT_EQ(error_of([&] { reg->revoke_certs(bad, "keyCompromise", kNow); }).code(),
            ErrorCode::kNotFound);
  EXPECT_EQ(reg->cert_state("0A01"), CertState::kIssued);
  EXPECT_EQ(reg->change_mark(), mark);

  const std::vector<std::string> one{"0A01"};
  EXPECT_EQ(reg->revoke_certs(one, "keyCompromise", kNow + 5), 1);
  EXPECT_EQ(reg->cert_state("0A01"), CertState::kRevoked);
  const auto d = reg->find_device("dev-0");
  EXPECT_EQ(d->primary_serial, "");
  EXPECT_EQ(d->secondary_serial, "0A02");
  EXPECT_EQ(reg->find_individual_slots("dev-0")->primary_sha256, "");
  EXPECT_EQ(reg->find_device("dev-1")->primary_serial, "0B01");
  const auto rows = reg->audit_after(mark, 10);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].action, "cert.revoke");
  EXPECT_EQ(rows[0].detail, R"({"count":1,"reason":"keyCompromise","first":"0A01"})");
  // Again: already revoked, nothing to do, no audit row.
  EXPECT_EQ(reg->revoke_certs(one, "keyCompromise", kNow + 6), 0);
  EXPECT_EQ(reg->audit_after(mark, 10).size(), 1u);
  // The revocation's time and reason are kept.
  FLEETSIGN_SQLITE_ONLY();  // read through a second, raw SQLite connection
  auto raw = raw_session(dir.db());
  std::int64_t at = 0;
  std::string reason;
  raw << "SELECT revoked_at, revocation_reason FROM certificates WHERE serial = '0A01'",
      kw::into(at), kw::into(reason), kw::now;
  EXPECT_EQ(at, kNow + 5);
  EXPECT_EQ(reason, "keyCompromise");
}

}  // namespace
}  // namespace fleetsign::engine
