// A real `kill -9` from outside, at a random moment of a 20,000-device batch (5,000 in a sanitizer
// build; not at a fault point: anywhere, mid-write of a file, mid-transaction, between two
// stages), then a resume: the batch ends with the same invariants as an uninterrupted one. Three
// kills per test, with delays drawn from a seeded generator; the seed is printed, and
// FLEETSIGN_TEST_SEED=N replays a run.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <random>
#include <thread>

#include "batch_support.hpp"

namespace fleetsign::batchtest {
namespace {

// A sanitizer build signs about 3× slower: 5,000 devices keep its kills (300–1,500 ms) mid-batch
// and the suite within CI's time.
#if defined(FLEETSIGN_SANITIZED)
constexpr std::int64_t kDevices = 5'000;
#else
constexpr std::int64_t kDevices = 20'000;
#endif

std::uint64_t test_seed() {
  if (const char* s = std::getenv("FLEETSIGN_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

// Starts the batch, kills it with SIGKILL after `delay`, resumes it, and checks the invariants.
// Returns whether the kill landed before the batch ended.
bool kill_at_random_then_resume(Fleet& fleet, const IssueArgs& a, std::chrono::milliseconds delay) {
  SCOPED_TRACE("batch " + a.batch_id + " killed after " + std::to_string(delay.count()) + " ms");
  auto child = fleet.start(a.args());
  std::this_thread::sleep_for(delay);
  child->kill(SIGKILL);
  const Outcome killed = child->wait();
  bool recorded = false;
  {
    auto registry = fleet.registry();
    const auto batch = registry->find_batch(a.batch_id);
    recorded = batch.has_value();
    std::cout << "[ kill -9  ] " << a.batch_id << " after " << delay.count()
              << " ms: " << (killed.killed_by(SIGKILL) ? "killed" : "had already ended") << ", "
              << (batch ? std::to_string(
                              registry->count_certs(a.batch_id, engine::CertState::kIssued)) +
                              " issued, " +
                              std::to_string(
                                  registry->count_certs(a.batch_id, engine::CertState::kIntent)) +
                              " open intents, watermark " + std::to_string(batch->watermark)
                        : std::string("batch not yet recorded"))
              << std::endl;
  }
  if (!killed.killed_by(SIGKILL)) {
    // The batch beat the kill (a fast machine): it must then have finished cleanly.
    EXPECT_EQ(killed.exit_code(), 0) << killed.describe();
  }
  // Killed before the batch row was written: starting it again under the same ID is the resume.
  const Outcome resumed =
      recorded ? fleet.run({"issue", "--resume", a.batch_id}) : fleet.run(a.args());
  EXPECT_EQ(resumed.exit_code(), 0) << resumed.describe();
  Expected e;
  e.batch_id = a.batch_id;
  e.out = a.out;
  e.inputs = generated_inputs(a);
  e.bundle = a.bundle;
  e.generated_keys = true;
  const BatchFacts f = check_batch(fleet, e);
  EXPECT_EQ(f.issued, kDevices);
  return killed.killed_by(SIGKILL);
}

void three_random_kills(bool bundle) {
  const std::uint64_t seed = test_seed();
  std::cout << "[ seed     ] FLEETSIGN_TEST_SEED=" << seed << std::endl;
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  SCOPED_TRACE("FLEETSIGN_TEST_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> delay_ms(300, 1500);
  Fleet fleet;
  fleet.make_hierarchy();
  int killed = 0;
  for (int round = 1; round <= 3; ++round) {
    IssueArgs a;
    a.batch_id = "kill9-" + std::to_string(round);
    a.generate = kDevices;
    a.id_pattern = "k" + std::to_string(round) + "-{06}";  // new devices each round
    a.out = fleet.path("out-" + std::to_string(round));
    a.bundle = bundle;
    killed +=
        kill_at_random_then_resume(fleet, a, std::chrono::milliseconds(delay_ms(rng))) ? 1 : 0;
    if (::testing::Test::HasFailure()) return;
  }
  // Not every kill need land mid-batch (a fast machine), but one that never does checks nothing.
  EXPECT_GE(killed, 1) << "every batch ended before its kill";
}

TEST(BatchKill, KillNineAtRandomMomentsThenResumeKeepsInvariantsWithBundle) {
  three_random_kills(true);
}

TEST(BatchKill, KillNineAtRandomMomentsThenResumeKeepsInvariantsWithDeviceFiles) {
  three_random_kills(false);
}

}  // namespace
}  // namespace fleetsign::batchtest
