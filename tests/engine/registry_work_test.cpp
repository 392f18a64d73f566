// The work store (stores.hpp: WorkStore, schema v14) on a real registry: SQLite, and PostgreSQL
// in the pg.* run. Shares are claimed once, leases end and are taken over, only the holder
// finishes a share, the last share finishes the batch with the shares' totals; named leases
// elect one holder and fail over when it stops renewing or is known dead, and the fences that
// keep a holder that lost its lease from writing. Jobs' runners: registry_job_share_test.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <memory>
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

CertIntent intent_for(const std::string& batch, const std::string& device, int serial) {
  char hex[32];
  std::snprintf(hex, sizeof hex, "7E%014X", serial);
  CertIntent i;
  i.serial = hex;
  i.device_id = device;
  i.ca_name = "int";
  i.batch_id = batch;
  i.seq = serial;
  i.subject = "CN=" + device;
  i.not_before = kNow;
  i.not_after = kNow + 365 * 86400;
  i.tbs_der = {0x30, 0x01, static_cast<std::uint8_t>(serial)};
  return i;
}

std::vector<CertIntent> intents_for(const std::string& batch, int first_device, int count,
                                    int first_serial) {
  std::vector<CertIntent> out;
  for (int i = 0; i < count; ++i) {
    out.push_back(intent_for(batch, "dev-" + std::to_string(first_device + i), first_serial + i));
  }
  return out;
}

// Workers with homes of their own share only the registry: the device check and the intents are
// one write transaction, so a device another batch is issuing, or that holds a valid
// certificate, is refused and not recorded.
TEST(WorkStore, ADeviceAnotherBatchIsIssuingOrThatHoldsACertificateIsRefused) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  EXPECT_TRUE(reg->record_new_device_intents(intents_for("A", 0, 10, 0), kNow).empty());
  const auto refused = reg->record_new_device_intents(intents_for("B", 5, 10, 100), kNow);
  ASSERT_EQ(refused.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(refused[i].device_id, "dev-" + std::to_string(5 + i));
    EXPECT_EQ(refused[i].open_batch, "A");
    EXPECT_FALSE(reg->find_cert(intent_for("B", "", 100 + i).serial)) << "recorded anyway";
  }
  EXPECT_TRUE(reg->find_cert(intent_for("B", "", 105).serial));  // dev-10: new, recorded
  // A's own resume may record again for its devices (its earlier intents are its own).
  EXPECT_TRUE(reg->record_new_device_intents(intents_for("A", 3, 1, 200), kNow).empty());
  // Issued: a valid certificate refuses the device (and only while it is valid).
  const std::vector<IssuedCert> done{
      {intent_for("A", "", 0).serial, {0x30, 0x82, 0x01, 0xFF}, "AA", "BB"}};
  reg->record_issued(done);
  const auto held = reg->record_new_device_intents(intents_for("C", 0, 1, 300), kNow);
  ASSERT_EQ(held.size(), 1u);
  EXPECT_EQ(held[0].device_id, "dev-0");
  EXPECT_EQ(held[0].open_batch, "");
  EXPECT_TRUE(
      reg->record_new_device_intents(intents_for("D", 0, 1, 400), kNow + 366 * 86400).empty());
}

// The review's race: two workers' batches over the same 400 devices at once, on two
// connections. Each device ends with exactly one intent.
TEST(WorkStore, TwoWorkersIssuingTheSameDevicesAtOnceRecordEachDeviceOnce) {
  TempDir dir;
  Registry::open(dir.db());  // created (and migrated) before the racers connect
  std::size_t refused[2] = {0, 0};
  std::vector<std::thread> racers;
  for (int w = 0; w < 2; ++w) {
    racers.emplace_back([&, w] {
      auto reg = Registry::open(dir.db());
      for (int chunk = 0; chunk < 8; ++chunk) {
        refused[w] +=
            reg->record_new_device_intents(
                   intents_for("W" + std::to_string(w), chunk * 50, 50, w * 10000 + chunk * 50),
                   kNow)
                .size();
      }
    });
  }
  for (auto& t : racers) t.join();
  EXPECT_EQ(refused[0] + refused[1], 400u);
  auto reg = Registry::open(dir.db());
  for (int d = 0; d < 400; ++d) {
    const bool first = reg->find_cert(intent_for("", "", d).serial).has_value();
    const bool second = reg->find_cert(intent_for("", "", 10000 + d).serial).has_value();
    EXPECT_NE(first, second) << "dev-" << d;
  }
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

// The fencing token: a worker frozen past its lease wakes up with writes in flight. Once another
// worker has claimed its share, every write of its connection is refused with nothing written,
// before its lease keeper can notice; the new holder writes as usual.
TEST(WorkStore, AWorkerWhoseShareWasTakenOverWritesNothingMore) {
  TempDir dir;
  auto frozen = Registry::open(dir.db());
  auto other = Registry::open(dir.db());
  frozen->create_shared_batch(parent("f1"), shares_of("f1", 1, 100));
  const auto mine = frozen->claim_batch_share("host:1", kNow, 30);
  ASSERT_TRUE(mine);
  frozen->fence_writes(ShareFence{"f1", mine->share, "host:1"});
  // While it holds the share (even past its lease, before anyone claims it) it writes.
  frozen->record_intents(intents_for("f1.s0000", 0, 2, 0));
  ASSERT_TRUE(other->claim_batch_share("host:2", kNow + 31, 30));
  const auto refused = [&](const std::function<void()>& write, const char* what) {
    try {
      write();
      ADD_FAILURE() << what << " was written after the share was taken over";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kHomeBusy) << what << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find("held by 'host:2'"), std::string::npos) << e.what();
    }
  };
  refused([&] { frozen->record_intents(intents_for("f1.s0000", 2, 2, 2)); }, "intents");
  refused([&] { frozen->record_new_device_intents(intents_for("f1.s0000", 4, 1, 4), kNow); },
          "device intents");
  const std::vector<IssuedCert> done{
      {intent_for("", "", 0).serial, {0x30, 0x82, 0x01, 0xFF}, "AA", "BB"}};
  refused([&] { frozen->record_issued(done); }, "issued certificates");
  refused([&] { frozen->abandon_intents("f1.s0000"); }, "abandoned intents");
  EXPECT_FALSE(frozen->find_cert(intent_for("", "", 2).serial)) << "recorded anyway";
  EXPECT_FALSE(frozen->find_cert(intent_for("", "", 4).serial)) << "recorded anyway";
  EXPECT_EQ(other->find_cert(intent_for("", "", 0).serial)->state, CertState::kIntent);
  // The new holder's writes go through; lifted, the old connection writes again.
  other->fence_writes(ShareFence{"f1", mine->share, "host:2"});
  other->record_issued(done);
  EXPECT_EQ(other->find_cert(intent_for("", "", 0).serial)->state, CertState::kIssued);
  frozen->fence_writes(std::nullopt);
  frozen->record_intents(intents_for("x", 10, 1, 10));
  EXPECT_TRUE(frozen->find_cert(intent_for("", "", 10).serial));
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

// A lease holder's writes are fenced: once another holder has the lease, the old one's writes
// are refused and nothing is recorded (a scheduler frozen mid-tick creates no job when it wakes).
TEST(WorkStore, ALeaseHoldersWritesAreRefusedOnceAnotherHoldsTheLease) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  ASSERT_TRUE(reg->take_lease("scheduler", "w:1", kNow, 15, "", nullptr));
  reg->fence_lease_writes(LeaseFence{"scheduler", "w:1"});
  reg->audit("job.scheduled", "j1", "{}");
  ASSERT_TRUE(reg->take_lease("scheduler", "w:2", kNow + 16, 15, "", nullptr));
  try {
    reg->audit("job.scheduled", "j2", "{}");
    ADD_FAILURE() << "written after the lease was taken over";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kHomeBusy) << e.what();
    EXPECT_NE(std::string(e.what()).find("held by 'w:2'"), std::string::npos) << e.what();
  }
  reg->fence_lease_writes(std::nullopt);
  std::set<std::string> subjects;
  for (const auto& entry : reg->audit_log(10)) subjects.insert(entry.subject);
  EXPECT_EQ(subjects.count("j1"), 1u);
  EXPECT_EQ(subjects.count("j2"), 0u) << "recorded anyway";
}

// On PostgreSQL a lease is also an advisory lock of its holder's connection, and the lock
// decides: another connection cannot take the lease, even long past its expiry, while the
// holder's connection lives (a slow tick keeps it); it takes it the moment that connection ends
// (the process died, or the server cut it), without waiting for the expiry.
TEST(WorkStore, OnPostgresqlALeaseLivesAndEndsWithItsHoldersConnection) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "an advisory lock of PostgreSQL";
  TempDir dir;
  auto first = Registry::open(dir.db());
  auto second = Registry::open(dir.db());
  std::string current;
  ASSERT_TRUE(first->take_lease("scheduler", "w:1", kNow, 15, "", &current));
  EXPECT_FALSE(second->take_lease("scheduler", "w:2", kNow + 1000, 15, "", &current));
  EXPECT_EQ(current, "w:1");
  EXPECT_FALSE(second->take_lease("scheduler", "w:2", kNow + 1000, 15, "w:1", &current))
      << "named dead while its connection lives";
  // Another name is another lock.
  EXPECT_TRUE(second->take_lease("other", "w:2", kNow, 15, "", nullptr));

  // w:1's process ends: w:2 takes the lease at once, long before its expiry.
  first.reset();
  const auto taken_within = [&](Registry& reg, const std::string& holder, std::int64_t now) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      try {
        if (reg.take_lease("scheduler", holder, now, 15, "", &current)) return true;
      } catch (const Error&) {
        // a connection the server cut: the next call reconnects
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  };
  ASSERT_TRUE(taken_within(*second, "w:2", kNow + 1)) << "still " << current << "'s";
  second->fence_lease_writes(LeaseFence{"scheduler", "w:2"});
  second->audit("job.scheduled", "before-cut", "{}");

  // The server ends w:2's connection (as it does when a frozen holder sits idle past the limit).
  auto third = Registry::open(dir.db());
  EXPECT_FALSE(third->take_lease("scheduler", "w:3", kNow + 2, 15, "", &current));
  const auto cut = test::raw_query(
      dir.db(),
      "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND "
      "objsubid = 2 AND classid = 6714220");
  ASSERT_EQ(cut.size(), 2u) << "the locks of 'scheduler' and 'other' (both w:2's connection)";
  ASSERT_TRUE(taken_within(*third, "w:3", kNow + 2)) << "still " << current << "'s";
  // Woken, w:2 writes nothing more under the lease: on its new connection the lock is not its.
  int refused = 0;
  for (int attempt = 0; attempt < 2 && refused == 0; ++attempt) {
    try {
      second->audit("job.scheduled", "after-cut", "{}");
      ADD_FAILURE() << "written after the lease was lost";
      break;
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kHomeBusy) ++refused;  // else: the cut connection, first
    }
  }
  EXPECT_EQ(refused, 1);
  EXPECT_FALSE(second->take_lease("scheduler", "w:2", kNow + 3, 15, "", &current));
  EXPECT_EQ(current, "w:3");
  // Released, it is free at once.
  third->release_lease("scheduler", "w:3");
  second->fence_lease_writes(std::nullopt);
  EXPECT_TRUE(second->take_lease("scheduler", "w:2", kNow + 3, 15, "", &current));
  std::set<std::string> subjects;
  for (const auto& entry : third->audit_log(10)) subjects.insert(entry.subject);
  EXPECT_EQ(subjects.count("before-cut"), 1u);
  EXPECT_EQ(subjects.count("after-cut"), 0u) << "recorded anyway";
}

// Leases are stamped with the registry's clock (the server's on PostgreSQL): every connection
// reads the same time, and here, with the server on this machine, it is the system's.
TEST(WorkStore, TheRegistrysClockIsOneForAllConnections) {
  TempDir dir;
  auto reg = Registry::open(dir.db());
  auto other = Registry::open(dir.db());
  const std::int64_t before = std::time(nullptr);
  const std::int64_t a = reg->registry_time();
  const std::int64_t b = other->registry_time();
  const std::int64_t after = std::time(nullptr);
  EXPECT_LE(before, a);
  EXPECT_LE(a, b);
  EXPECT_LE(b, after);
  // A claim stamped with it holds for its lease on every connection.
  reg->create_shared_batch(parent("b1"), shares_of("b1", 1, 10));
  ASSERT_TRUE(reg->claim_batch_share("w:1", reg->registry_time(), 60));
  EXPECT_FALSE(other->claim_batch_share("w:2", other->registry_time(), 60));
  EXPECT_EQ(other->claimable_batch_shares(other->registry_time() + 61), 1);
}

}  // namespace
}  // namespace fleetsign::engine
