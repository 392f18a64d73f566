// The work store (stores.hpp: WorkStore, schema v14) on a real registry: SQLite, and PostgreSQL
// in the pg.* run. Shares are claimed once, leases end and are taken over, only the holder
// finishes a share, the last share finishes the batch with the shares' totals; named leases
// elect one holder and fail over when it stops renewing or is known dead.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_backend.hpp"

namespace fleetsign::engine {
namespace {

constexpr std::int64_t kNow = 1'700'000'000;

// A temporary registry: SQLite, or a fresh PostgreSQL database on the pg.* run.
class TempDir : public test::RegistryDir {
 public:
  TempDir() : RegistryDir("registry_work_test") {}
};

BatchRecord parent(const std::string& id) {
  BatchRecord b;
  b.id = id;
  b.ca_name = "int";
  b.params_json = "{}";
  b.created_at = kNow;
  return b;
}

std::vector<BatchShare> shares_of(const std::string& id, int n, std::int64_t size) {
  std::vector<BatchShare> out;
  for (int i = 0; i < n; ++i) {
    BatchShare s;
    s.batch_id = id;
    s.share = i;
    s.first = i * size;
    s.count = size;
    out.push_back(s);
  }
  return out;
}

TEST(WorkStore, EachShareIsClaimedOnceUntilItsLeaseEndsAndOnlyItsHolderFinishesIt) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  const auto shares = shares_of("b1", 3, 100);
  reg->create_shared_batch(parent("b1"), shares);
  EXPECT_EQ(reg->find_batch("b1")->state, "running");
  EXPECT_EQ(reg->claimable_batch_shares(kNow), 3);
  // A taken id is refused, and nothing of the second call is written.
  EXPECT_THROW(reg->create_shared_batch(parent("b1"), shares), Error);
  EXPECT_EQ(reg->batch_shares("b1").size(), 3u);

  const auto a = reg->claim_batch_share("host:1", kNow, 30);
  const auto b = reg->claim_batch_share("host:2", kNow, 30);
  const auto c = reg->claim_batch_share("host:1", kNow, 30);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(std::set<std::int64_t>({a->share, b->share, c->share}),
            std::set<std::int64_t>({0, 1, 2}));
  EXPECT_EQ(a->holder, "host:1");
  EXPECT_EQ(a->lease_until, kNow + 30);
  EXPECT_EQ(a->attempts, 1);
  EXPECT_FALSE(reg->claim_batch_share("host:3", kNow + 10, 30)) << "all three are held";
  EXPECT_EQ(reg->claimable_batch_shares(kNow + 10), 0);

  // host:2 goes silent: after its lease another worker takes its share over.
  EXPECT_TRUE(reg->renew_batch_share("b1", a->share, "host:1", kNow + 60));
  EXPECT_TRUE(reg->renew_batch_share("b1", c->share, "host:1", kNow + 60));
  EXPECT_EQ(reg->claimable_batch_shares(kNow + 31), 1);
  const auto taken = reg->claim_batch_share("host:3", kNow + 31, 30);
  ASSERT_TRUE(taken);
  EXPECT_EQ(taken->share, b->share);
  EXPECT_EQ(taken->attempts, 2);
  // The silent worker wakes up: it can neither renew nor finish what is no longer its.
  EXPECT_FALSE(reg->renew_batch_share("b1", b->share, "host:2", kNow + 90));
  BatchShare late = *b;
  late.issued = 100;
  const Error e = [&] {
    try {
      reg->finish_batch_share(late, "host:2", kNow + 32);
    } catch (const Error& err) {
      return err;
    }
    return Error(ErrorCode::kOk, "");
  }();
  EXPECT_EQ(e.code(), ErrorCode::kHomeBusy) << e.what();

  // Finishing: the last one finishes the batch with the shares' totals.
  BatchShare done_a = *a, done_c = *c, done_b = *taken;
  done_a.issued = 100;
  done_c.issued = 98;
  done_c.rejected = 2;
  done_b.issued = 100;
  EXPECT_FALSE(reg->finish_batch_share(done_a, "host:1", kNow + 40));
  EXPECT_FALSE(reg->finish_batch_share(done_c, "host:1", kNow + 41));
  EXPECT_EQ(reg->find_batch("b1")->state, "running");
  EXPECT_TRUE(reg->finish_batch_share(done_b, "host:3", kNow + 42));
  const auto b1 = reg->find_batch("b1");
  EXPECT_EQ(b1->state, "finished");
  EXPECT_EQ(b1->issued, 298);
  EXPECT_EQ(b1->rejected, 2);
  EXPECT_EQ(b1->finished_at, kNow + 42);
  // A done share is never claimed again, and cannot be finished twice.
  EXPECT_FALSE(reg->claim_batch_share("host:4", kNow + 1000, 30));
  EXPECT_THROW(reg->finish_batch_share(done_b, "host:3", kNow + 43), Error);
  for (const auto& s : reg->batch_shares("b1")) EXPECT_EQ(s.state, "done");
}

TEST(WorkStore, ClaimantsRacingOnTwoConnectionsNeverGetTheSameShare) {
  TempDir dir;
  {
    auto reg = Registry::open(dir.db());
    reg->create_shared_batch(parent("b2"), shares_of("b2", 40, 10));
  }
  std::vector<std::int64_t> got[2];
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      auto reg = Registry::open(dir.db());
      const std::string holder = "host:" + std::to_string(t);
      while (auto s = reg->claim_batch_share(holder, kNow, 30)) got[t].push_back(s->share);
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::int64_t> all(got[0].begin(), got[0].end());
  all.insert(got[1].begin(), got[1].end());
  EXPECT_EQ(all.size(), 40u);
  EXPECT_EQ(got[0].size() + got[1].size(), 40u) << "a share was claimed twice";
}

TEST(WorkStore, ANamedLeaseHasOneHolderAndFailsOverWhenItEndsOrItsHolderIsKnownDead) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  std::string current;
  EXPECT_TRUE(reg->take_lease("scheduler", "w:1", kNow, 15, "", &current));
  EXPECT_EQ(current, "w:1");
  EXPECT_FALSE(reg->take_lease("scheduler", "w:2", kNow + 5, 15, "", &current));
  EXPECT_EQ(current, "w:1");
  // Renewing is taking it again: w:1 keeps it past its first expiry.
  EXPECT_TRUE(reg->take_lease("scheduler", "w:1", kNow + 10, 15, "", nullptr));
  EXPECT_FALSE(reg->take_lease("scheduler", "w:2", kNow + 20, 15, "", &current));
  // w:1 stops renewing: w:2 gets it once the lease has ended.
  EXPECT_TRUE(reg->take_lease("scheduler", "w:2", kNow + 26, 15, "", &current));
  EXPECT_EQ(current, "w:2");
  // A holder the caller knows is dead is replaced at once; a wrong guess changes nothing.
  EXPECT_FALSE(reg->take_lease("scheduler", "w:3", kNow + 27, 15, "w:1", &current));
  EXPECT_EQ(current, "w:2");
  EXPECT_TRUE(reg->take_lease("scheduler", "w:3", kNow + 27, 15, "w:2", &current));
  // Only the holder releases it.
  reg->release_lease("scheduler", "w:2");
  EXPECT_FALSE(reg->take_lease("scheduler", "w:1", kNow + 28, 15, "", &current));
  reg->release_lease("scheduler", "w:3");
  EXPECT_TRUE(reg->take_lease("scheduler", "w:1", kNow + 28, 15, "", &current));
  // Leases are by name.
  EXPECT_TRUE(reg->take_lease("other", "w:2", kNow + 28, 15, "", nullptr));
  EXPECT_THROW(reg->take_lease("x", "", kNow, 15, "", nullptr), Error);
  EXPECT_THROW(reg->take_lease("x", "w:1", kNow, 0, "", nullptr), Error);
}

}  // namespace
}  // namespace fleetsign::engine
