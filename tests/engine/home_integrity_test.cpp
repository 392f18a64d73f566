// Issue 7, holes 6, 12 and 14: a lost registry is refused (never silently re-created), one
// process per home, and a CA creation killed at any moment leaves no orphan key behind.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <random>
#include <thread>

#include "cli_process.hpp"
#include "fleetsign/engine/ca_recovery.hpp"
#include "fleetsign/engine/home_lock.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using testing::CliProcess;
using testing::run_cli;

// A home made by the real CLI, with a root CA.
class CliHome : public ::testing::Test {
 protected:
  void SetUp() override {
    home = dir.path() / "home";
    ASSERT_EQ(run_cli(home, {"init"}).status, 0);
    ASSERT_EQ(
        run_cli(home, {"ca", "create-root", "--name", "root", "--subject", "/CN=Root"}).status, 0);
  }
  testing::CliResult create_intermediate(const std::string& name) {
    return run_cli(home, {"ca", "create-intermediate", "--name", name, "--issuer", "root",
                          "--subject", "/CN=" + name, "--days", "3000"});
  }
  // Private key labels in the token, with how many keys carry each.
  std::map<std::string, int> token_labels() {
    const auto h = engine::Home::open(home);
    auto token = h.open_token(hsm::Pin(testing::kUserPin));
    std::map<std::string, int> out;
    for (const auto& k : token->list_private_keys()) ++out[k.label];
    return out;
  }
  testing::TempDir dir;
  fs::path home;
};

// --- hole 6

TEST_F(CliHome, RefusesAZeroLengthRegistryAndDoesNotRecreateIt) {
  fs::resize_file(home / "registry.db", 0);
  fs::remove(home / "registry.db-wal");
  const auto r = run_cli(home, {"ca", "list"});
  EXPECT_EQ(r.status, exit_status_for(ErrorCode::kRegistryMissing)) << r.output;
  EXPECT_NE(r.output.find("[registry_missing]"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("is empty"), std::string::npos) << r.output;
  EXPECT_EQ(fs::file_size(home / "registry.db"), 0u);  // nothing was written in its place
  const auto create = run_cli(home, {"ca", "create-root", "--name", "root", "--subject", "/CN=R"});
  EXPECT_EQ(create.status, exit_status_for(ErrorCode::kRegistryMissing)) << create.output;
  EXPECT_EQ(token_labels(), (std::map<std::string, int>{{"root", 1}}));
}

TEST_F(CliHome, RefusesAMissingRegistry) {
  fs::remove(home / "registry.db");
  const auto h = engine::Home::open(home);
  const Error e = testing::error_from([&] { h.open_registry(); });
  EXPECT_EQ(e.code(), ErrorCode::kRegistryMissing);
  EXPECT_NE(std::string(e.what()).find("is missing"), std::string::npos) << e.what();
  EXPECT_FALSE(fs::exists(home / "registry.db"));
}

TEST_F(CliHome, RefusesANewRegistryBesideATokenThatHoldsKeysAndNeverMakesASecondRoot) {
  fs::remove(home / "registry.db");
  fs::remove(home / "registry.db-wal");
  fs::remove(home / "registry.db-shm");
  engine::Registry::open(home / "registry.db");  // a fresh, empty registry replaces the old one
  const auto r = run_cli(home, {"ca", "create-root", "--name", "root", "--subject", "/CN=R"});
  EXPECT_EQ(r.status, exit_status_for(ErrorCode::kRegistryMissing)) << r.output;
  EXPECT_NE(r.output.find("records no CA"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ca orphans"), std::string::npos) << r.output;
  EXPECT_EQ(token_labels(), (std::map<std::string, int>{{"root", 1}}));
}

TEST_F(CliHome, OrphansListsTokenKeysWithoutRowsAndRowsWithoutKeys) {
  ASSERT_EQ(create_intermediate("int1").status, 0);
  const auto clean = run_cli(home, {"ca", "orphans"});
  EXPECT_EQ(clean.status, 0) << clean.output;
  // A key with no row (made behind fleetsign's back), and a row whose key is gone.
  {
    const auto h = engine::Home::open(home);
    auto token = h.open_token(hsm::Pin(testing::kUserPin));
    token->generate_key(hsm::KeyType::kEcP256, "stray");
    auto reg = h.open_registry();
    token->destroy_key(hsm::KeyRef::parse_uri(reg->find_ca("int1")->key_uri));
  }
  const auto r = run_cli(home, {"ca", "orphans", "--json"});
  EXPECT_EQ(r.status, 1) << r.output;
  Poco::JSON::Parser parser;
  const auto obj =
      parser.parse(r.output.substr(r.output.find('{'))).extract<Poco::JSON::Object::Ptr>();
  const auto keys = obj->getArray("token_keys_without_ca");
  const auto cas = obj->getArray("cas_without_token_key");
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ(keys->getObject(0)->getValue<std::string>("label"), "stray");
  ASSERT_EQ(cas->size(), 1u);
  EXPECT_EQ(cas->getObject(0)->getValue<std::string>("name"), "int1");
}

// --- hole 12

TEST_F(CliHome, ASecondSigningProcessGetsHomeBusyWithThePidAndReadersPass) {
  const auto lock = engine::HomeLock::acquire(home, false);  // this process holds the home
  const auto r = create_intermediate("int1");
  EXPECT_EQ(r.status, exit_status_for(ErrorCode::kHomeBusy)) << r.output;
  EXPECT_NE(r.output.find("is busy (pid " + std::to_string(getpid()) + ")"), std::string::npos)
      << r.output;
  EXPECT_EQ(run_cli(home, {"ca", "list"}).status, 0);  // read-only: no lock needed
  const auto h = engine::Home::open(home);
  EXPECT_FALSE(h.open_registry()->find_ca("int1"));
}

TEST_F(CliHome, TwoRealCliProcessesNeverHoldTheHomeTogether) {
  CliProcess first(home, {"issue", "--ca", "root", "--generate", "300", "--id-pattern", "a-{04}",
                          "--out", (dir.path() / "out-a").string()});
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  const auto second = run_cli(home, {"issue", "--ca", "root", "--generate", "1", "--id-pattern",
                                     "b-{04}", "--out", (dir.path() / "out-b").string()});
  const bool first_still_running = first.running();
  if (first_still_running) {
    EXPECT_EQ(second.status, exit_status_for(ErrorCode::kHomeBusy)) << second.output;
    EXPECT_NE(second.output.find("(pid " + std::to_string(first.pid()) + ")"), std::string::npos)
        << second.output;
  }
  EXPECT_EQ(first.wait(), 0);
}

TEST_F(CliHome, WaitFlagWaitsForTheHolderInsteadOfFailing) {
  std::optional<engine::HomeLock> lock(engine::HomeLock::acquire(home, false));
  CliProcess waiter(home, {"ca", "create-intermediate", "--wait", "--name", "int1", "--issuer",
                           "root", "--subject", "/CN=int1", "--days", "3000"});
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_TRUE(waiter.running());
  lock.reset();
  EXPECT_EQ(waiter.wait(), 0);
  EXPECT_TRUE(engine::Home::open(home).open_registry()->find_ca("int1"));
}

// --- hole 14

TEST_F(CliHome, APendingCaWhoseKeyWasMadeIsCleanedUpAtTheNextStartAndTheNameWorksAgain) {
  // The state a kill right after C_GenerateKeyPair leaves: a pending row and its key, no CA.
  {
    const auto h = engine::Home::open(home);
    auto reg = h.open_registry();
    auto token = h.open_token(hsm::Pin(testing::kUserPin));
    hsm::KeyRef ref{token->label(), std::vector<std::uint8_t>(16, 0x5A), "int1"};
    reg->add_pending_ca({"int1", ref.uri(), 0});
    token->generate_key(hsm::KeyType::kEcP256, ref);
  }
  const auto r = create_intermediate("int1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("interrupted creation of CA 'int1' was cleaned up: destroyed"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(token_labels(), (std::map<std::string, int>{{"root", 1}, {"int1", 1}}));
  EXPECT_TRUE(engine::Home::open(home).open_registry()->list_pending_cas().empty());
}

TEST_F(CliHome, ATokenKeyWithTheSameLabelAndNoRowIsNeverJoinedByASecond) {
  {
    const auto h = engine::Home::open(home);
    h.open_token(hsm::Pin(testing::kUserPin))->generate_key(hsm::KeyType::kEcP256, "int1");
  }
  const auto r = create_intermediate("int1");
  EXPECT_EQ(r.status, exit_status_for(ErrorCode::kAlreadyExists)) << r.output;
  EXPECT_NE(r.output.find("already holds a key labelled 'int1'"), std::string::npos) << r.output;
  EXPECT_EQ(token_labels(), (std::map<std::string, int>{{"root", 1}, {"int1", 1}}));
}

TEST_F(CliHome, KillsDuringCreateIntermediateLeaveNoOrphanKeysAndNoDuplicateLabels) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> delay_ms(5, 120);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  int i = 0;
  for (; i < 40 && std::chrono::steady_clock::now() < deadline; ++i) {
    const std::string name = "ica" + std::to_string(i % 4);  // retries of the same names
    CliProcess victim(home, {"ca", "create-intermediate", "--name", name, "--issuer", "root",
                             "--subject", "/CN=" + name, "--days", "3000"});
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    victim.kill_now();
  }
  // The next command that opens the token finishes or cleans up whatever a kill interrupted.
  const auto orphans = run_cli(home, {"ca", "orphans"});
  EXPECT_EQ(orphans.status, 0) << orphans.output;
  for (const auto& [label, count] : token_labels()) {
    EXPECT_EQ(count, 1) << "label " << label;
  }
  const auto h = engine::Home::open(home);
  auto reg = h.open_registry();
  EXPECT_TRUE(reg->list_pending_cas().empty());
  for (int n = 0; n < 4; ++n) {
    const std::string name = "ica" + std::to_string(n);
    if (!reg->find_ca(name)) {
      EXPECT_EQ(create_intermediate(name).status, 0) << name;
    }
  }
  EXPECT_EQ(run_cli(home, {"ca", "orphans"}).status, 0);
  std::printf("%d kills\n", i);
}

// --- CA and verification certificates get intents

TEST_F(CliHome, CaAndVerificationCertificatesAreRecordedWithTheirSerials) {
  ASSERT_EQ(create_intermediate("int1").status, 0);
  const fs::path pem = dir.path() / "v.pem";
  ASSERT_EQ(run_cli(home, {"ca", "verification-cert", "--ca", "int1", "--code", "CODE42", "--out",
                           pem.string()})
                .status,
            0);
  const auto h = engine::Home::open(home);
  auto reg = h.open_registry();
  const auto ca = reg->find_ca("int1");
  ASSERT_TRUE(ca);
  const auto recorded = reg->ca_certs_of("int1");
  ASSERT_EQ(recorded.size(), 1u);
  EXPECT_EQ(recorded[0].kind, "ca");
  EXPECT_EQ(recorded[0].state, "issued");
  EXPECT_EQ(recorded[0].issuer_ca, "root");
  EXPECT_EQ(recorded[0].der, ca->cert_der);
  const auto verification = reg->ca_certs_of("CODE42");
  ASSERT_EQ(verification.size(), 1u);
  EXPECT_EQ(verification[0].kind, "verification");
  EXPECT_EQ(verification[0].state, "issued");
  EXPECT_EQ(verification[0].issuer_ca, "int1");
  // A recorded serial is never accepted again, in either table.
  engine::CaCertIntent again;
  again.serial = recorded[0].serial;
  again.kind = "verification";
  again.subject_name = "x";
  again.issuer_ca = "int1";
  EXPECT_EQ(testing::error_from([&] { reg->record_ca_cert_intent(again); }).code(),
            ErrorCode::kAlreadyExists);
}

}  // namespace
}  // namespace fleetsign
