// The batch pipeline signing through a token that fails on purpose: the home's PKCS#11 module is
// fleetsign-fault-pkcs11 in front of SoftHSM2 (`init --module … --init-token`), driven by a
// schedule file the test rewrites between runs. After every fault the batch crash tests' checker
// (check_batch, with signature verification) must pass: no serial twice, no device twice, every
// written certificate recorded, every recorded one verifying under the CA.
#include <gtest/gtest.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <set>

#include "batch_support.hpp"
#include "fault_env.hpp"

namespace fleetsign::faulttest {
namespace {

using batchtest::Expected;
using batchtest::Fleet;
using batchtest::IssueArgs;
using batchtest::Outcome;

// A home whose token is reached through the fault module, with root "root" and intermediate
// "int" (ec-p256), made while the module is healthy.
void make_fault_hierarchy(Fleet& fleet) {
  fleet.ok({"init", "--module", kFaultModule, "--token-label", "faulty", "--init-token"});
  fleet.ok({"ca", "create-root", "--name", "root", "--subject", "/CN=Fault Test Root/O=fleetsign"});
  fleet.ok({"ca", "create-intermediate", "--name", "int", "--issuer", "root", "--days", "3000",
            "--subject", "/CN=Fault Test Intermediate/O=fleetsign"});
}

IssueArgs generate(Fleet& fleet, const std::string& batch_id, std::int64_t n) {
  IssueArgs a;
  a.batch_id = batch_id;
  a.out = fleet.path("out-" + batch_id);
  a.generate = n;
  a.id_pattern = "dev-{05}";
  a.bundle = true;
  return a;
}

Expected expected_for(const IssueArgs& a) {
  Expected e;
  e.batch_id = a.batch_id;
  e.out = a.out;
  e.inputs = batchtest::generated_inputs(a);
  e.bundle = a.bundle;
  e.generated_keys = true;
  e.verify_signatures = true;
  return e;
}

// What a stopped batch left: a running batch whose recorded certificates all verify, and no
// output for a certificate that is not recorded (the bundle holds only recorded serials).
void expect_stopped_cleanly(Fleet& fleet, const IssueArgs& a) {
  auto registry = fleet.registry();
  const auto batch = registry->find_batch(a.batch_id);
  ASSERT_TRUE(batch.has_value());
  EXPECT_EQ(batch->state, "running") << "a stopped batch is left to resume";
  EXPECT_TRUE(batchtest::unverified_certs(*registry, a.batch_id).empty());
  std::set<std::string> recorded;
  for (const auto& r : registry->batch_issued_after(a.batch_id, -1)) {
    recorded.insert(batchtest::normalize_serial(r.serial));
  }
  const std::string bundle = testing::read_file(a.out / "bundle.pem");
  for (const auto& der : batchtest::pem_blocks(bundle, "CERTIFICATE")) {
    const std::string serial = batchtest::der_serial(der);
    if (!serial.empty() && recorded.count(serial) == 0) {
      // Chain certificates are the CAs'; a device certificate must be recorded.
      const auto cert = batchtest::parse_cert_der(der);
      ASSERT_TRUE(cert);
      if (X509_check_ca(cert.get()) == 0) ADD_FAILURE() << "written, not recorded: " << serial;
    }
  }
}

class TransientSignError : public ::testing::TestWithParam<std::string> {};

// Every 37th C_Sign fails with a session-level error: each failure is retried on a fresh
// session, and the batch completes in one run.
TEST_P(TransientSignError, IsRetriedOnAFreshSessionAndTheBatchCompletes) {
  FaultEnv env;
  Fleet fleet;
  make_fault_hierarchy(fleet);
  env.clear_log();
  env.schedule("sign:error=" + GetParam() + ":every=37");
  const IssueArgs a = generate(fleet, "transient", 700);
  const Outcome run = fleet.run(a.args());
  ASSERT_EQ(run.exit_code(), 0) << run.describe();
  EXPECT_GE(env.injected_count("CKR_" + GetParam()), 700u / 37) << "the faults were injected";
  const auto f = batchtest::check_batch(fleet, expected_for(a));
  EXPECT_EQ(f.issued, 700);
  EXPECT_EQ(f.abandoned, 0) << "a retried signature needs no new serial";
}

INSTANTIATE_TEST_SUITE_P(Fault, TransientSignError,
                         ::testing::Values("SESSION_HANDLE_INVALID", "GENERAL_ERROR",
                                           "DEVICE_MEMORY"));

// Random session errors (seeded: the same calls fail in every run), 2% of C_Sign calls.
TEST(FaultBatch, RandomSessionErrorsAreRetriedAndTheBatchCompletes) {
  FaultEnv env;
  Fleet fleet;
  make_fault_hierarchy(fleet);
  env.clear_log();
  env.schedule("sign:error=SESSION_HANDLE_INVALID:rate=0.02:seed=11");
  const IssueArgs a = generate(fleet, "random", 700);
  const Outcome run = fleet.run(a.args());
  ASSERT_EQ(run.exit_code(), 0) << run.describe();
  EXPECT_GE(env.injected().size(), 3u);
  EXPECT_EQ(batchtest::check_batch(fleet, expected_for(a)).issued, 700);
}

// The token goes away mid-batch: every C_Sign from the 300th on says CKR_DEVICE_REMOVED. The
// batch stops with a message naming the cause and the resume command; nothing is lost or signed
// twice, and `issue --resume` completes it once the token is back.
TEST(FaultBatch, DeviceRemovedStopsTheBatchAndResumeCompletesIt) {
  FaultEnv env;
  Fleet fleet;
  make_fault_hierarchy(fleet);
  env.clear_log();
  env.schedule("sign:error=DEVICE_REMOVED:from=300");
  const IssueArgs a = generate(fleet, "removed", 1500);
  const Outcome stopped = fleet.run(a.args());
  EXPECT_NE(stopped.exit_code(), 0) << stopped.describe();
  EXPECT_NE(stopped.err.find("CKR_DEVICE_REMOVED"), std::string::npos) << stopped.describe();
  EXPECT_NE(stopped.err.find("fleetsign issue --resume removed"), std::string::npos)
      << stopped.describe();
  EXPECT_GE(env.injected_count("CKR_DEVICE_REMOVED"), 1u);
  // Not retried: a removed device is not a session error (1 call per signer thread at most).
  EXPECT_LE(env.injected_count("CKR_DEVICE_REMOVED"), 64u);
  expect_stopped_cleanly(fleet, a);
  std::int64_t issued_before = 0;
  {
    auto registry = fleet.registry();
    issued_before = registry->count_certs(a.batch_id, engine::CertState::kIssued);
  }
  EXPECT_LT(issued_before, 1500);

  // Still removed: the resume stops the same way and changes nothing it should not.
  const Outcome again = fleet.run({"issue", "--resume", a.batch_id});
  EXPECT_NE(again.exit_code(), 0) << again.describe();
  expect_stopped_cleanly(fleet, a);

  env.schedule("");  // the token is back
  env.clear_log();
  const Outcome resumed = fleet.run({"issue", "--resume", a.batch_id, "--json"});
  ASSERT_EQ(resumed.exit_code(), 0) << resumed.describe();
  EXPECT_TRUE(env.injected().empty());
  const auto f = batchtest::check_batch(fleet, expected_for(a));
  EXPECT_EQ(f.issued, 1500);
  EXPECT_EQ(f.rejected, 0);
}

// The token returns a signature with its first byte flipped: the verify step refuses it before
// anything is recorded or written, the batch stops, and the resume completes it.
TEST(FaultBatch, WrongSignatureIsNeverRecordedOrWritten) {
  FaultEnv env;
  Fleet fleet;
  make_fault_hierarchy(fleet);
  env.clear_log();
  env.schedule("sign:corrupt:at=400");
  const IssueArgs a = generate(fleet, "corrupt", 1000);
  const Outcome stopped = fleet.run(a.args());
  EXPECT_NE(stopped.exit_code(), 0) << stopped.describe();
  EXPECT_NE(stopped.err.find("does not verify"), std::string::npos) << stopped.describe();
  EXPECT_EQ(env.injected_count("corrupt"), 1u);
  expect_stopped_cleanly(fleet, a);

  env.schedule("");
  const Outcome resumed = fleet.run({"issue", "--resume", a.batch_id});
  ASSERT_EQ(resumed.exit_code(), 0) << resumed.describe();
  EXPECT_EQ(batchtest::check_batch(fleet, expected_for(a)).issued, 1000);
}

// A token that takes 5-50 ms per signature still gives a complete, correct batch.
TEST(FaultBatch, SlowTokenGivesCorrectResults) {
  FaultEnv env;
  Fleet fleet;
  make_fault_hierarchy(fleet);
  env.schedule("sign:latency=5-50");
  const IssueArgs a = generate(fleet, "slow", 150);
  const auto t0 = std::chrono::steady_clock::now();
  const Outcome run = fleet.run(a.args());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(run.exit_code(), 0) << run.describe();
  // 150 signatures of 5..50 ms (27.5 ms on average): more than 4 s of token time in all, which
  // no 2-core machine signs in under 1 s unless the latency was skipped.
  EXPECT_GT(seconds, 1.0);
  EXPECT_EQ(batchtest::check_batch(fleet, expected_for(a)).issued, 150);
}

// C_Login fails: the batch is refused before anything is recorded, with the module's reason.
TEST(FaultBatch, LoginFailureRecordsNothing) {
  FaultEnv env;
  Fleet fleet;
  make_fault_hierarchy(fleet);
  env.clear_log();
  IssueArgs a = generate(fleet, "login", 10);
  for (const auto& [error, words] :
       {std::pair<std::string, std::string>{"PIN_INCORRECT", "wrong user PIN"},
        {"GENERAL_ERROR", "login failed: CKR_GENERAL_ERROR"}}) {
    env.schedule("login:error=" + error);
    const Outcome refused = fleet.run(a.args());
    EXPECT_NE(refused.exit_code(), 0) << refused.describe();
    EXPECT_NE(refused.err.find(words), std::string::npos) << refused.describe();
    auto registry = fleet.registry();
    EXPECT_FALSE(registry->find_batch(a.batch_id).has_value()) << error;
    EXPECT_EQ(registry->count_certs("", engine::CertState::kIntent), 0) << error;
  }
  EXPECT_EQ(env.injected_count("login"), 2u);
  env.schedule("");
  ASSERT_EQ(fleet.run(a.args()).exit_code(), 0);
  EXPECT_EQ(batchtest::check_batch(fleet, expected_for(a)).issued, 10);
}

}  // namespace
}  // namespace fleetsign::faulttest
