// A job's runners and the tasks they claim (job_store.hpp, schema v15) on a real registry: SQLite,
// and PostgreSQL in the pg.* run. The job's lease has one holder; helpers join; each claim gives
// tasks no live runner holds, by seq and below the open wave; a runner whose heartbeat went
// stale loses its tasks (and its unfinished intents) to the next claim and writes nothing more.
#include <gtest/gtest.h>

#include <cstdio>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_backend.hpp"

namespace fleetsign::engine {
namespace {

constexpr std::int64_t kNow = 1'700'000'000;
constexpr std::int64_t kAll = std::numeric_limits<std::int64_t>::max();

class TempDir : public test::RegistryDir {
 public:
  TempDir() : RegistryDir("registry_job_share_test") {}
};

// Jobs' leases (JobStore::acquire_job) and the fence of a runner's writes: a job with tasks on
// a registry, and a second connection for the other runner (as another process has).
class Jobs : public ::testing::Test {
 protected:
  TempDir dir;
  std::unique_ptr<Registry> reg = open();

  std::unique_ptr<Registry> open() { return Registry::open(dir.db()); }

  static JobRecord job(const std::string& id) {
    JobRecord j;
    j.id = id;
    j.kind = "device-rollover";
    j.params_json = "{}";
    return j;
  }
  static JobTask task(const std::string& job_id, int n) {
    JobTask t;
    t.job_id = job_id;
    t.seq = n;
    t.device_id = "dev-" + std::to_string(n);
    t.target_slot = "primary";
    t.updated_at = kNow;
    return t;
  }
  static std::vector<JobTask> tasks(const std::string& job_id, int count) {
    std::vector<JobTask> out;
    for (int n = 0; n < count; ++n) out.push_back(task(job_id, n));
    return out;
  }
  template <typename F>
  static Error error_of(F&& f) {
    try {
      f();
    } catch (const Error& e) {
      return e;
    }
    return Error(ErrorCode::kOk, "no error");
  }
};

TEST_F(Jobs, LeaseHasOneHolderAndAStaleOneIsTakenOver) {
  reg->create_job(job("j1"), {});
  auto other = open();  // the second runner: its own connection, as another process has
  EXPECT_TRUE(reg->acquire_job("j1", "a:1", kNow, kNow - 60));
  EXPECT_TRUE(reg->acquire_job("j1", "a:1", kNow + 1, kNow - 59)) << "the holder again";
  EXPECT_FALSE(other->acquire_job("j1", "b:2", kNow + 2, kNow - 58)) << "heartbeat is fresh";
  reg->heartbeat_job("j1", "a:1", kNow + 30);
  EXPECT_EQ(reg->find_job("j1")->heartbeat_at, kNow + 30);
  EXPECT_FALSE(other->acquire_job("j1", "b:2", kNow + 60, kNow + 30)) << "not older than";
  EXPECT_TRUE(other->acquire_job("j1", "b:2", kNow + 100, kNow + 40)) << "stale: taken over";
  const auto lost = error_of([&] { reg->heartbeat_job("j1", "a:1", kNow + 101); });
  EXPECT_EQ(lost.code(), ErrorCode::kHomeBusy);
  EXPECT_NE(std::string(lost.what()).find("'j1'"), std::string::npos) << lost.what();
  EXPECT_NE(std::string(lost.what()).find("'b:2'"), std::string::npos) << lost.what();
  reg->release_job("j1", "a:1");  // not the holder: changes nothing
  EXPECT_EQ(reg->find_job("j1")->runner, "b:2");
  EXPECT_EQ(reg->find_job("j1")->heartbeat_at, kNow + 100);
  other->release_job("j1", "b:2");
  EXPECT_EQ(reg->find_job("j1")->runner, "");
  EXPECT_TRUE(reg->acquire_job("j1", "a:1", kNow + 102, 0)) << "a released lease is free";
  EXPECT_EQ(error_of([&] { reg->acquire_job("nope", "a:1", kNow, 0); }).code(),
            ErrorCode::kNotFound);
  EXPECT_EQ(error_of([&] { reg->heartbeat_job("nope", "a:1", kNow); }).code(),
            ErrorCode::kNotFound);
  EXPECT_EQ(reg->audit_log(0).size(), 1u) << "the lease is not audited";
}

// A runner's writes are fenced by its job's lease: once another runner took the job over (the
// first one's heartbeat went stale: frozen, a paused VM), the first records nothing more.
TEST_F(Jobs, ARunnerWhoseJobWasTakenOverRecordsNothingMore) {
  reg->create_job(job("j1"), tasks("j1", 3));
  auto other = open();
  ASSERT_TRUE(reg->acquire_job("j1", "a:1", kNow, kNow - 60));
  reg->fence_lease_writes(LeaseFence{"j1", "a:1", true});
  JobTask early = task("j1", 1);
  early.state = "active";
  early.step = "install";
  reg->save_job_tasks({&early, 1}, {});  // while it holds the job
  ASSERT_TRUE(other->acquire_job("j1", "b:2", kNow + 100, kNow + 40));
  JobTask late = task("j1", 2);
  late.state = "done";
  const Error refused = error_of([&] { reg->save_job_tasks({&late, 1}, {}); });
  EXPECT_EQ(refused.code(), ErrorCode::kHomeBusy) << refused.what();
  EXPECT_NE(std::string(refused.what()).find("held by 'b:2'"), std::string::npos) << refused.what();
  EXPECT_EQ(error_of([&] { reg->heartbeat_job("j1", "a:1", kNow + 101); }).code(),
            ErrorCode::kHomeBusy);
  EXPECT_EQ(error_of([&] { reg->set_job_state("j1", "finished", kNow + 101); }).code(),
            ErrorCode::kHomeBusy);
  const auto rows = other->job_tasks("j1", "");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[1].state, "active") << "written while it held the job";
  EXPECT_EQ(rows[2].state, task("j1", 2).state) << "recorded after the takeover";
  EXPECT_EQ(other->find_job("j1")->state, "running");
  // The new runner writes; lifted, the old connection writes again.
  other->fence_lease_writes(LeaseFence{"j1", "b:2", true});
  other->save_job_tasks({&late, 1}, {});
  reg->fence_lease_writes(std::nullopt);
  reg->set_job_report("j1", "{}");
}

std::vector<std::int64_t> seqs(const std::vector<JobTask>& rows) {
  std::vector<std::int64_t> out;
  for (const auto& t : rows) out.push_back(t.seq);
  return out;
}

// Two runners share a job: each claim gives tasks nobody holds, by seq, never the same task twice.
TEST_F(Jobs, RunnersClaimDifferentTasksInSeqOrder) {
  reg->create_job(job("j1"), tasks("j1", 10));
  auto other = open();
  ASSERT_TRUE(reg->acquire_job("j1", "a:1", kNow, kNow - 60));
  EXPECT_FALSE(other->acquire_job("j1", "b:2", kNow, kNow - 60)) << "the lease has one holder";
  EXPECT_EQ(error_of([&] { other->claim_job_tasks("j1", "b:2", kNow - 15, kAll, 4); }).code(),
            ErrorCode::kHomeBusy)
      << "only a runner of the job claims";
  other->join_job("j1", "b:2", kNow);
  const auto a = reg->claim_job_tasks("j1", "a:1", kNow - 15, kAll, 4);
  const auto b = other->claim_job_tasks("j1", "b:2", kNow - 15, kAll, 4);
  EXPECT_EQ(seqs(a), (std::vector<std::int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(seqs(b), (std::vector<std::int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(b.front().runner, "b:2");
  auto share = reg->job_share("j1", kNow - 15);
  EXPECT_EQ(share.open, 10);
  EXPECT_EQ(share.unclaimed, 2);
  EXPECT_EQ(share.runners, 2);
  EXPECT_EQ(share.first_open_seq, 0);
  EXPECT_EQ(share.first_unclaimed_seq, 8);
  // Below the open wave only (seq < 9), then the rest.
  EXPECT_EQ(seqs(reg->claim_job_tasks("j1", "a:1", kNow - 15, 9, 0)), std::vector<std::int64_t>{8});
  EXPECT_EQ(seqs(other->claim_job_tasks("j1", "b:2", kNow - 15, kAll, 0)),
            std::vector<std::int64_t>{9});
  EXPECT_TRUE(reg->claim_job_tasks("j1", "a:1", kNow - 15, kAll, 0).empty());
  // A runner's flush keeps its claim; a task that ended stays named by its runner.
  reg->fence_lease_writes(LeaseFence{"j1", "a:1", true});
  JobTask done = a[0];
  done.state = "done";
  reg->save_job_tasks({&done, 1}, {});
  reg->fence_lease_writes(std::nullopt);
  EXPECT_EQ(reg->job_tasks("j1", "done").at(0).runner, "a:1");
  share = reg->job_share("j1", kNow - 15);
  EXPECT_EQ(share.open, 9);
  EXPECT_EQ(share.first_open_seq, 1);
  EXPECT_EQ(share.unclaimed, 0);
  // Leaving gives the open tasks back, not the ended ones.
  other->release_job("j1", "b:2");
  share = reg->job_share("j1", kNow - 15);
  EXPECT_EQ(share.unclaimed, 5);
  EXPECT_EQ(share.first_unclaimed_seq, 4);
  EXPECT_EQ(share.runners, 1);
  EXPECT_EQ(seqs(reg->claim_job_tasks("j1", "a:1", kNow - 15, kAll, 0)),
            (std::vector<std::int64_t>{4, 5, 6, 7, 9}));
  EXPECT_EQ(reg->job_tasks("j1", "done").at(0).runner, "a:1");
}

// A helper whose heartbeat went stale (kill -9, SIGSTOP) loses its open tasks and their open
// intents to the next claim, and its writes are refused from then on; a task that retry-failed
// opens again is free for any runner.
TEST_F(Jobs, AStaleHelpersTasksAreClaimedByAnotherAndItWritesNothingMore) {
  reg->create_job(job("j1"), tasks("j1", 4));
  auto helper = open();
  ASSERT_TRUE(reg->acquire_job("j1", "a:1", kNow, kNow - 60));
  helper->join_job("j1", "b:2", kNow);
  helper->fence_lease_writes(LeaseFence{"j1", "b:2", true});
  const auto held = helper->claim_job_tasks("j1", "b:2", kNow - 15, kAll, 2);
  ASSERT_EQ(seqs(held), (std::vector<std::int64_t>{0, 1}));
  // The helper recorded an intent for device 0 (its serial reserved), then froze.
  CertIntent intent;
  intent.serial = "0A01";
  intent.device_id = held[0].device_id;
  intent.ca_name = "ca";
  intent.batch_id = "j1";
  intent.seq = 0;
  intent.subject = "CN=" + held[0].device_id;
  intent.tbs_der = {1, 2, 3};
  helper->record_intents({&intent, 1});
  reg->heartbeat_job("j1", "a:1", kNow + 20);
  // Not stale yet at kNow + 10: nothing of the helper's is free.
  EXPECT_EQ(seqs(reg->claim_job_tasks("j1", "a:1", kNow - 5, kAll, 0)),
            (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(reg->job_share("j1", kNow + 5).unclaimed, 2) << "stale at kNow + 5";
  const auto taken = reg->claim_job_tasks("j1", "a:1", kNow + 5, kAll, 0);
  EXPECT_EQ(seqs(taken), (std::vector<std::int64_t>{0, 1}));
  EXPECT_EQ(taken[0].runner, "a:1");
  EXPECT_EQ(reg->find_cert("0A01")->state, CertState::kAbandoned) << "its intent is abandoned";
  EXPECT_EQ(reg->job_share("j1", kNow + 5).runners, 1);
  JobTask late = held[1];
  late.state = "done";
  const Error refused = error_of([&] { helper->save_job_tasks({&late, 1}, {}); });
  EXPECT_EQ(refused.code(), ErrorCode::kHomeBusy) << refused.what();
  EXPECT_EQ(error_of([&] { helper->heartbeat_job("j1", "b:2", kNow + 21); }).code(),
            ErrorCode::kHomeBusy);
  EXPECT_EQ(reg->job_tasks("j1", "done").size(), 0u);
  // retry-failed (no runner's fence) opens a task again: it is free for the next claim.
  reg->fence_lease_writes(LeaseFence{"j1", "a:1", true});
  JobTask failed = taken[0];
  failed.state = "refused";
  reg->save_job_tasks({&failed, 1}, {});
  reg->fence_lease_writes(std::nullopt);
  failed.state = "pending";
  reg->save_job_tasks({&failed, 1}, {});
  EXPECT_EQ(reg->job_share("j1", kNow + 5).unclaimed, 1);
  helper->fence_lease_writes(std::nullopt);
  helper->join_job("j1", "b:2", kNow + 30);
  EXPECT_EQ(seqs(helper->claim_job_tasks("j1", "b:2", kNow + 5, kAll, 0)),
            std::vector<std::int64_t>{0});
}

// Taking a stale lease over drops the old holder's membership and frees its tasks at once.
TEST_F(Jobs, TakingAStaleLeaseFreesTheOldHoldersTasks) {
  reg->create_job(job("j1"), tasks("j1", 3));
  auto other = open();
  ASSERT_TRUE(reg->acquire_job("j1", "a:1", kNow, kNow - 60));
  ASSERT_EQ(reg->claim_job_tasks("j1", "a:1", kNow - 15, kAll, 0).size(), 3u);
  ASSERT_TRUE(other->acquire_job("j1", "b:2", kNow + 100, kNow + 40));
  EXPECT_EQ(other->job_share("j1", kNow).unclaimed, 3);
  EXPECT_EQ(other->claim_job_tasks("j1", "b:2", kNow, kAll, 0).size(), 3u);
  EXPECT_EQ(error_of([&] { reg->claim_job_tasks("j1", "a:1", kNow, kAll, 0); }).code(),
            ErrorCode::kHomeBusy);
}

// The rollover's confirmation poll reads the sessions of its waiting devices only
// (connected_sessions_of): just the named devices that are connected, each once, by device ID, in
// slices of bound IDs however many are named (here past one slice), and an ID is only ever a value.
TEST(Sessions, OnlyTheNamedDevicesThatAreConnectedAreRead) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  std::vector<DeviceSession> sessions;
  for (int i = 0; i < 1200; ++i) {
    char id[16];
    std::snprintf(id, sizeof id, "dev-%04d", i);
    sessions.push_back(
        {id, i % 3 != 0, "hub", "SHA" + std::to_string(i), std::to_string(i), 100, 0});
  }
  reg->record_sessions(sessions);

  std::vector<std::string> named;
  std::set<std::string> want;
  for (int i = 1198; i >= 0; i -= 2) {  // every even device, backwards
    named.push_back(sessions[static_cast<std::size_t>(i)].device_id);
    if (i % 3 != 0) want.insert(named.back());
  }
  named.insert(named.begin() + 7, "dev-0002");  // named twice
  named.push_back("no-such-device");
  named.push_back("dev-0001' OR '1'='1");
  const auto got = reg->connected_sessions_of(named);
  ASSERT_EQ(got.size(), want.size());
  std::size_t k = 0;
  for (const auto& id : want) {  // std::set: by device ID
    EXPECT_EQ(got[k].device_id, id);
    EXPECT_TRUE(got[k].connected);
    EXPECT_EQ(got[k].cert_sha256, "SHA" + std::to_string(std::stoi(id.substr(4))));
    ++k;
  }

  EXPECT_TRUE(reg->connected_sessions_of({}).empty());
  const std::vector<std::string> off{"dev-0000", "dev-0003"};  // both disconnected
  EXPECT_TRUE(reg->connected_sessions_of(off).empty());
  const std::vector<std::string> one{"dev-0004"};
  const auto four = reg->connected_sessions_of(one);
  ASSERT_EQ(four.size(), 1u);
  EXPECT_EQ(four[0].cert_serial, "4");
  // A device that disconnects is no longer read as connected.
  reg->record_sessions(
      std::vector<DeviceSession>{{"dev-0004", false, "hub", "SHA4", "4", 100, 101}});
  EXPECT_TRUE(reg->connected_sessions_of(one).empty());
}

}  // namespace
}  // namespace fleetsign::engine
