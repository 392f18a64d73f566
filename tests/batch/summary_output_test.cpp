// What a batch prints: the --json summary (one object with the batch, counts and rate), the text
// summary, and the carriage-return progress line, which belongs on a terminal only — piped
// output (a CI log, a file) must not fill up with '\r' lines.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>

#include "batch_support.hpp"

namespace fleetsign::batchtest {
namespace {

bool has_cr(const std::string& s) { return s.find('\r') != std::string::npos; }

class BatchOutput : public ::testing::Test {
 protected:
  void SetUp() override { fleet.make_hierarchy(); }

  IssueArgs generate(const std::string& batch_id, std::int64_t count) {
    IssueArgs a;
    a.batch_id = batch_id;
    a.generate = count;
    a.id_pattern = batch_id + "-{05}";
    a.out = fleet.path("out-" + batch_id);
    return a;
  }

  // Runs `fleetsign ARGS` on a pseudo-terminal (util-linux `script`); returns what it showed.
  bool on_terminal(const std::vector<std::string>& args, std::string* shown) {
    if (testing::run("command -v script") != 0) return false;
    // Paths here are temp dirs and the build tree: no quotes or spaces to escape.
    std::string inner = "env FLEETSIGN_PIN=" + std::string(testing::kUserPin) + " " +
                        testing::fleetsign_bin() + " --home " + fleet.home().string();
    for (const auto& a : args) inner += " " + a;
    EXPECT_EQ(testing::run("script -qec '" + inner + "' /dev/null </dev/null", shown), 0) << *shown;
    return true;
  }

  Fleet fleet;
};

TEST_F(BatchOutput, JsonSummaryParsesAndHasBatchCountsSecondsAndRate) {
  IssueArgs a = generate("json", 300);
  a.json = true;
  const Outcome o = fleet.run(a.args());
  ASSERT_EQ(o.exit_code(), 0) << o.describe();
  EXPECT_EQ(std::count(o.out.begin(), o.out.end(), '\n'), 1)
      << "one JSON object on one line: " << o.out;
  const auto j = parse_json(o.out);
  EXPECT_EQ(j->getValue<std::string>("batch"), "json");
  EXPECT_EQ(j->getValue<std::int64_t>("issued"), 300);
  EXPECT_EQ(j->getValue<std::int64_t>("rejected"), 0);
  const double seconds = j->getValue<double>("seconds");
  const double rate = j->getValue<double>("certs_per_s");
  EXPECT_GT(seconds, 0.0);
  EXPECT_GT(rate, 0.0);
  EXPECT_NEAR(rate * seconds, 300.0, 1.0) << "certs_per_s is issued / seconds";
  EXPECT_FALSE(has_cr(o.out) || has_cr(o.err)) << o.describe();
}

TEST_F(BatchOutput, JsonSummaryCountsRejectsAndExitsThree) {
  const fs::path csrs = fleet.path("csrs");
  fs::create_directories(csrs);
  for (const char* id : {"j-1", "j-2", "j-3"})
    testing::write_file(csrs / (std::string(id) + ".csr"), make_csr_pem(id));
  testing::write_file(
      csrs / "zz-broken.csr",
      "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n");
  IssueArgs a;
  a.batch_id = "json-rejects";
  a.csr_dir = csrs;
  a.out = fleet.path("out");
  a.json = true;
  const Outcome o = fleet.run(a.args());
  EXPECT_EQ(o.exit_code(), 3) << o.describe();
  const auto j = parse_json(o.out);
  EXPECT_EQ(j->getValue<std::string>("batch"), "json-rejects");
  EXPECT_EQ(j->getValue<std::int64_t>("issued"), 3);
  EXPECT_EQ(j->getValue<std::int64_t>("rejected"), 1);
  EXPECT_TRUE(j->has("seconds") && j->has("certs_per_s"));
}

TEST_F(BatchOutput, PipedOutputHasNoCarriageReturnProgressLines) {
  const IssueArgs a = generate("piped", 1500);
  const Outcome o = fleet.run(a.args());  // stdout and stderr are files: not a terminal
  ASSERT_EQ(o.exit_code(), 0) << o.describe();
  EXPECT_FALSE(has_cr(o.out)) << o.out;
  EXPECT_FALSE(has_cr(o.err)) << o.err;
  EXPECT_NE(o.out.find("batch piped: issued 1500, rejected 0 in "), std::string::npos) << o.out;
}

// The control for the test above: on a terminal the same batch does draw its progress line, so
// its absence when piped is the tty check at work, not a progress line that never exists.
TEST_F(BatchOutput, TerminalShowsProgressLineButNotWithJson) {
  std::string shown;
  if (!on_terminal(generate("tty", 1500).args(), &shown))
    GTEST_SKIP() << "no `script` to make a terminal";
  EXPECT_NE(shown.find("\r  1500 / 1500 (100.0%)"), std::string::npos) << shown;
  IssueArgs j = generate("tty-json", 1500);
  j.json = true;
  ASSERT_TRUE(on_terminal(j.args(), &shown));
  EXPECT_EQ(shown.find("\r  "), std::string::npos) << "--json draws no progress: " << shown;
  shown.erase(std::remove(shown.begin(), shown.end(), '\r'), shown.end());  // the tty's CR LF
  EXPECT_EQ(parse_json(shown)->getValue<std::int64_t>("issued"), 1500);
}

TEST_F(BatchOutput, BatchShowOfAnInterruptedBatchNamesTheResumeCommand) {
  const IssueArgs a = generate("cut", 600);
  const Outcome crashed = fleet.run(a.args(), {"FLEETSIGN_FAULT=after_intent:2"});
  ASSERT_TRUE(crashed.killed_by(SIGKILL)) << crashed.describe();
  const Outcome show = fleet.run({"batch", "show", "cut"});
  ASSERT_EQ(show.exit_code(), 0) << show.describe();
  EXPECT_NE(show.out.find("state       running"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("intents (interrupted: fleetsign issue --resume cut)"), std::string::npos)
      << show.out;
  const Outcome list = fleet.run({"batch", "list", "--json"});
  ASSERT_EQ(list.exit_code(), 0) << list.describe();
  const auto batches = parse_json(list.out)->getArray("batches");
  ASSERT_EQ(batches->size(), 1u);
  EXPECT_EQ(batches->getObject(0)->getValue<std::string>("state"), "running");
}

}  // namespace
}  // namespace fleetsign::batchtest
