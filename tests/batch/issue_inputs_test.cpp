// Inputs and outputs of `fleetsign issue` that must be refused before anything is recorded, and
// output failures that must leave a state the next run completes (issue 7, holes 1, 2, 5, 7, 10,
// 13, 16): generated IDs pass the device-ID check, a foreign --out is refused, a .pfx password is
// never empty or cut short, a resume needs only the batch ID and the secrets, and re-running a
// finished batch answers as the run that completed it did.
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <gtest/gtest.h>

#include "batch_support.hpp"
#include "registry_backend.hpp"

namespace fleetsign::batchtest {
namespace {

class IssueInputs : public ::testing::Test {
 protected:
  void SetUp() override { fleet.make_hierarchy(); }

  // Nothing recorded: no certificate in any state, no batch.
  void expect_nothing_recorded(const std::string& why) {
    auto registry = fleet.registry();
    for (const auto state :
         {engine::CertState::kIntent, engine::CertState::kIssued, engine::CertState::kAbandoned}) {
      EXPECT_EQ(registry->count_certs("", state), 0)
          << why << ": " << engine::cert_state_name(state);
    }
    EXPECT_TRUE(registry->list_batches({}).empty()) << why << ": a batch was recorded";
  }

  static void expect_code(const Outcome& o, int status, const std::string& code) {
    EXPECT_EQ(o.exit_code(), status) << o.describe();
    EXPECT_NE(o.err.find(code), std::string::npos) << "names " << code << ": " << o.describe();
  }

  Fleet fleet;
};

// Hole 1: every generated ID passes the device-ID check, and the pattern is checked up front.
TEST_F(IssueInputs, IdPatternsThatMakePathsBracesOrOverlongIdsAreRefusedBeforeAnythingIsRecorded) {
  const std::string outside = fleet.path("v").string();
  const std::vector<std::pair<std::string, std::string>> kCases{
      {outside + "/v-{01}", "device_id_invalid"},
      {"../x-{03}", "device_id_invalid"},
      {"w-{200}", "invalid_argument"},
      {"{06}{06}", "invalid_argument"},
      {std::string(62, 'a') + "{03}", "device_id_invalid"},  // 65 characters: over RFC 5280's 64
  };
  for (const auto& [pattern, code] : kCases) {
    SCOPED_TRACE(pattern);
    const fs::path out = fleet.path("out");
    const Outcome o = fleet.run({"issue", "--ca", "int", "--generate", "3", "--id-pattern", pattern,
                                 "--out", out.string()});
    EXPECT_NE(o.exit_code(), 0) << o.describe();
    EXPECT_NE(o.err.find(code), std::string::npos) << o.describe();
    EXPECT_NE(o.err.find("--id-pattern"), std::string::npos) << o.describe();
    expect_nothing_recorded(pattern);
    EXPECT_FALSE(fs::exists(out)) << "nothing written";
    EXPECT_FALSE(fs::exists(outside)) << "nothing written outside --out";
    EXPECT_FALSE(fs::exists(fleet.path("x-001_key.pem"))) << "nothing written beside --out";
  }
}

// Hole 2, batch: an output that cannot be written after the certificates were recorded leaves
// the batch resumable; `batch show` counts what is recorded; the resume delivers each device
// exactly once under the serial recorded first.
TEST_F(IssueInputs, AnOutputFailureAfterRecordingIsCompletedByResumeWithoutSigningAgain) {
  IssueArgs a;
  a.batch_id = "outfail";
  a.generate = 3;
  a.id_pattern = "d-{03}";
  a.out = fleet.path("out");
  // The batch's own directory, where a directory stands in the way of d-002's certificate.
  fs::create_directories(a.out / "d-002_cert.pem");
  testing::write_file(a.out / ".fleetsign-batch", "outfail\n");
  const Outcome failed = fleet.run(a.args());
  expect_code(failed, 8, "io");
  std::map<std::string, std::string> first_serials;
  {
    auto registry = fleet.registry();
    for (const auto& r : registry->batch_issued_after("outfail", -1))
      first_serials[r.device_id] = r.serial;
  }
  ASSERT_EQ(first_serials.size(), 3u) << "the certificates were recorded before the outputs";
  const auto shown = fleet.batch_show("outfail");
  EXPECT_EQ(shown->getValue<std::int64_t>("issued"), 3) << "batch show counts what is recorded";
  EXPECT_EQ(shown->getValue<std::int64_t>("outputs_pending"), 3);

  fs::remove(a.out / "d-002_cert.pem");
  const Outcome resumed = fleet.run({"issue", "--resume", "outfail", "--json"});
  ASSERT_EQ(resumed.exit_code(), 0) << resumed.describe();
  const auto j = parse_json(resumed.out);
  EXPECT_EQ(j->getValue<std::int64_t>("issued"), 0) << "nothing signed again";
  EXPECT_EQ(j->getValue<std::int64_t>("reemitted"), 3);
  Expected e;
  e.batch_id = "outfail";
  e.out = a.out;
  e.inputs = generated_inputs(a);
  e.generated_keys = true;
  const BatchFacts f = check_batch(fleet, e);
  for (const auto& [device, serial] : first_serials) {
    auto it = f.issued_by_device.find(device);
    ASSERT_NE(it, f.issued_by_device.end()) << device;
    EXPECT_EQ(it->second.serial, serial) << device << " keeps its first serial";
  }
  EXPECT_EQ(f.abandoned, 0);
}

// Hole 2, single issue: the same command again completes an issue whose output failed, with the
// recorded certificate (no second serial, no --reissue needed).
TEST_F(IssueInputs, ASingleIssueWhoseOutputFailedIsCompletedByTheSameCommandWithItsSerial) {
  const fs::path csr = fleet.path("one.csr");
  testing::write_file(csr, make_csr_pem("single-dev"));
  const fs::path out = fleet.path("out");
  fs::create_directories(out / "single-dev_cert.pem");
  const std::vector<std::string> args{"issue",      "--ca",  "int",        "--csr",
                                      csr.string(), "--out", out.string(), "--json"};
  expect_code(fleet.run(args), 8, "io");
  std::string serial;
  {
    auto registry = fleet.registry();
    const auto certs = registry->certs_of_device("single-dev");
    ASSERT_EQ(certs.size(), 1u);
    serial = certs[0].serial;
  }
  fs::remove(out / "single-dev_cert.pem");
  const Outcome again = fleet.run(args);
  ASSERT_EQ(again.exit_code(), 0) << again.describe();
  const auto j = parse_json(again.out);
  EXPECT_EQ(j->getValue<std::string>("serial"), serial);
  EXPECT_TRUE(j->getValue<bool>("reemitted"));
  auto registry = fleet.registry();
  EXPECT_EQ(registry->certs_of_device("single-dev").size(), 1u) << "no second certificate";
  EXPECT_EQ(registry->count_certs("", engine::CertState::kIntent), 0);
  EXPECT_EQ(registry->count_certs("", engine::CertState::kAbandoned), 0);
  const auto pems = pem_blocks(testing::read_file(out / "single-dev_cert.pem"), "CERTIFICATE");
  ASSERT_EQ(pems.size(), 1u);
  EXPECT_EQ(der_serial(pems[0]), normalize_serial(serial));
  EXPECT_TRUE(fs::exists(out / "single-dev_fullchain.pem"));
}

// Killed after the files were written and the watermark moved, before the batch finished: the
// same command again answers with the recorded certificate (it once said "internal").
TEST_F(IssueInputs, ASingleIssueKilledAfterItsOutputsButBeforeFinishingAnswersTheSameCommand) {
  const fs::path csr = fleet.path("late.csr");
  testing::write_file(csr, make_csr_pem("late-dev"));
  const fs::path out = fleet.path("late-out");
  const std::vector<std::string> args{"issue",      "--ca",  "int",        "--csr",
                                      csr.string(), "--out", out.string(), "--json"};
  const Outcome first = fleet.run(args);
  ASSERT_EQ(first.exit_code(), 0) << first.describe();
  const std::string serial = parse_json(first.out)->getValue<std::string>("serial");
  {
    // The state such a kill leaves: outputs written, watermark past them, batch still running.
    test::raw_query(
        fleet.registry_location(),
        "UPDATE batches SET state = 'running', finished_at = 0 WHERE id LIKE 'single-%'");
  }
  const Outcome again = fleet.run(args);
  ASSERT_EQ(again.exit_code(), 0) << again.describe();
  const auto j = parse_json(again.out);
  EXPECT_EQ(j->getValue<std::string>("serial"), serial);
  EXPECT_TRUE(j->getValue<bool>("reemitted"));
  EXPECT_EQ(fleet.registry()->certs_of_device("late-dev").size(), 1u) << "no second certificate";
}

TEST_F(IssueInputs, ASingleIssueIntoDevFullIsRefusedBeforeAnythingIsRecorded) {
  const fs::path csr = fleet.path("one.csr");
  testing::write_file(csr, make_csr_pem("full-dev"));
  expect_code(fleet.run({"issue", "--ca", "int", "--csr", csr.string(), "--out", "/dev/full"}), 8,
              "io");
  auto registry = fleet.registry();
  EXPECT_EQ(registry->count_certs("", engine::CertState::kIssued), 0);
  EXPECT_EQ(registry->count_certs("", engine::CertState::kIntent), 0);
}

// Hole 10: a batch never writes into a non-empty directory that is not its own.
TEST_F(IssueInputs, OutIntoAForeignNonEmptyDirectoryIsRefusedAndItsFilesAreUntouched) {
  const fs::path out = fleet.path("someone-elses");
  fs::create_directories(out);
  testing::write_file(out / "dev-001_cert.pem", "precious\n");
  const std::string before = snapshot_dir(out);
  IssueArgs a;
  a.generate = 2;
  a.id_pattern = "dev-{03}";
  a.out = out;
  expect_code(fleet.run(a.args()), 2, "output_dir_in_use");
  EXPECT_EQ(snapshot_dir(out), before);
  expect_nothing_recorded("foreign --out");
}

// And never into another batch's own directory (its marker names it), nor a single issue's
// files: the second batch would overwrite the first's manifests.
TEST_F(IssueInputs, OutIntoAnotherBatchsDirectoryIsRefusedAndItsOutputsAreUntouched) {
  IssueArgs a;
  a.generate = 3;
  a.id_pattern = "a-{02}";
  a.out = fleet.path("first");
  ASSERT_EQ(fleet.run(a.args()).exit_code(), 0);
  const std::string before = snapshot_dir(a.out);
  a.id_pattern = "b-{02}";
  expect_code(fleet.run(a.args()), 2, "output_dir_in_use");
  const fs::path csr = fleet.path("one.csr");
  testing::write_file(csr, make_csr_pem("single-1"));
  const Outcome single =
      fleet.run({"issue", "--ca", "int", "--csr", csr.string(), "--out", a.out.string()});
  EXPECT_NE(single.exit_code(), 0) << single.describe();
  EXPECT_NE(single.err.find("holds the outputs of batch"), std::string::npos) << single.describe();
  EXPECT_EQ(snapshot_dir(a.out), before);
  // A marker above --out that is no plain file (a link to /dev/zero anyone could plant) is no
  // batch's: it neither blocks the batch nor is read.
  fs::create_directories(fleet.path("planted"));
  fs::create_symlink("/dev/zero", fleet.path("planted") / ".fleetsign-batch");
  a.id_pattern = "c-{02}";
  a.out = fleet.path("planted") / "mine";
  const Outcome under = fleet.run(a.args());
  EXPECT_EQ(under.exit_code(), 0) << under.describe();
}

// Hole 5: an empty password would leave the keys unprotected, a NUL byte would cut it short.
TEST_F(IssueInputs, PfxPasswordThatIsEmptyOrHoldsANulIsRefusedBeforeAnythingIsRecorded) {
  const fs::path empty = fleet.path("empty.pw"), nul = fleet.path("nul.pw");
  testing::write_file(empty, "");
  testing::write_file(nul, std::string("abc\0def\n", 8));
  for (const auto& [file, word] : {std::pair{empty, "empty"}, std::pair{nul, "NUL"}}) {
    SCOPED_TRACE(file.string());
    IssueArgs a;
    a.generate = 2;
    a.id_pattern = "p-{03}";
    a.out = fleet.path("out");
    a.pfx = true;
    a.pfx_password_file = file;
    const Outcome o = fleet.run(a.args());
    expect_code(o, 2, word);
    expect_nothing_recorded(file.string());
  }
  const Outcome env = fleet.run({"issue", "--ca", "int", "--generate", "2", "--id-pattern",
                                 "p-{03}", "--out", fleet.path("out").string(), "--pfx"},
                                {"FLEETSIGN_PFX_PASSWORD="});
  expect_code(env, 2, "empty");
  expect_nothing_recorded("empty FLEETSIGN_PFX_PASSWORD");
}

// Hole 13: a --pfx batch resumes with only its ID and the password; issued and re-emitted apart.
TEST_F(IssueInputs, APfxBatchResumesWithOnlyItsIdAndThePasswordReportingReemittedApart) {
  const fs::path pw = fleet.path("pw");
  testing::write_file(pw, "s3cret\n");
  IssueArgs a;
  a.batch_id = "pfx-resume";
  a.generate = 300;
  a.id_pattern = "x-{04}";
  a.out = fleet.path("out");
  a.pfx = true;
  a.pfx_password_file = pw;
  const Outcome killed = fleet.run(a.args(), {"FLEETSIGN_FAULT=after_commit:1"});
  ASSERT_TRUE(killed.killed_by(SIGKILL)) << killed.describe();
  const Outcome resumed =
      fleet.run({"issue", "--resume", "pfx-resume", "--json"}, {"FLEETSIGN_PFX_PASSWORD=s3cret"});
  ASSERT_EQ(resumed.exit_code(), 0) << resumed.describe();
  const auto j = parse_json(resumed.out);
  EXPECT_EQ(j->getValue<std::int64_t>("reemitted"), kChunk) << "chunk 1 was recorded, not output";
  EXPECT_EQ(j->getValue<std::int64_t>("issued"), 300 - kChunk);
  EXPECT_EQ(j->getValue<std::int64_t>("total_issued"), 300);
  Expected e;
  e.batch_id = a.batch_id;
  e.out = a.out;
  e.inputs = generated_inputs(a);
  e.generated_keys = true;
  e.pfx = true;
  check_batch(fleet, e);
  EXPECT_TRUE(fs::exists(a.out / "x-0001.pfx"));
}

// Hole 13: the same command on a finished batch with rejects exits 3, as the completing run did.
TEST_F(IssueInputs, RerunningAFinishedBatchWithRejectsExitsThreeLikeTheRunThatCompletedIt) {
  const fs::path csrs = fleet.path("csrs");
  fs::create_directories(csrs);
  testing::write_file(csrs / "a.csr", make_csr_pem("r-1"));
  testing::write_file(csrs / "b.csr",
                      "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n"
                      "-----END CERTIFICATE REQUEST-----\n");
  IssueArgs a;
  a.batch_id = "with-rejects";
  a.csr_dir = csrs;
  a.out = fleet.path("out");
  EXPECT_EQ(fleet.run(a.args()).exit_code(), 3);
  EXPECT_EQ(fleet.run(a.args()).exit_code(), 3);
  EXPECT_EQ(fleet.run({"issue", "--resume", "with-rejects"}).exit_code(), 3);
}

// Hole 16: a negative thread count and empty inputs are refused, nothing recorded.
TEST_F(IssueInputs, NegativeThreadsAndEmptyInputsAreRefusedBeforeAnythingIsRecorded) {
  const Outcome threads =
      fleet.run({"issue", "--ca", "int", "--generate", "2", "--id-pattern", "t-{03}", "--out",
                 fleet.path("out-t").string(), "--threads", "-4"});
  expect_code(threads, 2, "--threads");
  const fs::path empty_file = fleet.path("empty.pem"), empty_dir = fleet.path("empty-dir");
  testing::write_file(empty_file, "");
  fs::create_directories(empty_dir);
  expect_code(fleet.run({"issue", "--ca", "int", "--csr-file", empty_file.string(), "--out",
                         fleet.path("out-f").string()}),
              2, "no CSR");
  expect_code(fleet.run({"issue", "--ca", "int", "--csr-dir", empty_dir.string(), "--out",
                         fleet.path("out-d").string()}),
              2, "no CSR");
  expect_nothing_recorded("refused inputs");
}

// Hole 7: CSR inputs are read with a bound; /dev/zero is refused, not read forever.
TEST_F(IssueInputs, CsrInputsAreBoundedAndDevZeroIsRefusedAsTooLarge) {
  expect_code(fleet.run({"issue", "--ca", "int", "--csr", "/dev/zero", "--out",
                         fleet.path("out-1").string()}),
              2, "input_too_large");
  expect_code(fleet.run({"issue", "--ca", "int", "--csr-file", "/dev/zero", "--out",
                         fleet.path("out-2").string()}),
              2, "input_too_large");
  expect_nothing_recorded("/dev/zero");
  // One oversized file in a directory is that input's reject; the rest are issued.
  const fs::path csrs = fleet.path("csrs");
  fs::create_directories(csrs);
  testing::write_file(csrs / "a.csr", make_csr_pem("b-1"));
  testing::write_file(csrs / "huge.csr", std::string(100 * 1024, 'A'));
  IssueArgs a;
  a.batch_id = "bounded";
  a.csr_dir = csrs;
  a.out = fleet.path("out-3");
  EXPECT_EQ(fleet.run(a.args()).exit_code(), 3);
  const auto rejects = lines_of(testing::read_file(a.out / "rejects.csv"));
  ASSERT_EQ(rejects.size(), 2u);
  EXPECT_EQ(csv_fields(rejects[1]).at(2), "input_too_large") << rejects[1];
}

// Hole 16: a reject in a bundle names the file's line, not the block's.
TEST_F(IssueInputs, ABundleRejectNamesTheLineOfTheFileWhereItsBlockStarts) {
  const std::string good = make_csr_pem("l-1");
  const std::size_t good_lines = lines_of(good).size();
  const fs::path bundle = fleet.path("bundle.pem");
  testing::write_file(bundle, good +
                                  "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n"
                                  "-----END CERTIFICATE REQUEST-----\n");
  IssueArgs a;
  a.batch_id = "lines";
  a.csr_file = bundle;
  a.out = fleet.path("out");
  EXPECT_EQ(fleet.run(a.args()).exit_code(), 3);
  const auto rejects = lines_of(testing::read_file(a.out / "rejects.csv"));
  ASSERT_EQ(rejects.size(), 2u);
  const auto v = csv_fields(rejects[1]);
  const std::string line = std::to_string(good_lines + 1);
  EXPECT_EQ(v.at(0), bundle.string() + ":" + line);
  EXPECT_NE(v.at(3).find("line " + line), std::string::npos) << rejects[1];
}

// Hole 16: chunks in flight when the pipeline is cancelled (here: an output failure in chunk 1,
// with chunks 2.. prepared, holding generated private keys) are freed, and so wiped. valgrind
// (a tool we did not write) reports any chunk lost.
TEST_F(IssueInputs, ChunksInFlightAreFreedWhenThePipelineIsCancelled) {
#ifdef FLEETSIGN_SANITIZED
  GTEST_SKIP() << "valgrind cannot run a sanitized binary; LeakSanitizer checks this build";
#endif
  if (testing::run("command -v valgrind >/dev/null") != 0) GTEST_SKIP() << "no valgrind";
  const fs::path out = fleet.path("out");
  fs::create_directories(out / "k-0001_cert.pem");  // chunk 1's outputs fail
  testing::write_file(out / ".fleetsign-batch", "leak\n");
  std::string report;
  const int status = testing::run(
      "FLEETSIGN_PIN=" + std::string(testing::kUserPin) +
          " valgrind --leak-check=full --show-leak-kinds=definite --num-callers=40 " +
          testing::fleetsign_bin() + " --home " + fleet.home().string() +
          " issue --ca int --batch leak --generate 1024 --id-pattern k-{04} --chunk 64 "
          "--threads 2 --out " +
          out.string() + " 2>&1",
      &report);
  EXPECT_NE(status, 0) << "the output failure must fail the run";
  EXPECT_NE(report.find("k-0001_cert.pem"), std::string::npos) << report;
  // Each loss record is a paragraph; none may hold a pipeline chunk.
  std::size_t at = 0;
  while ((at = report.find("definitely lost in loss record", at)) != std::string::npos) {
    const auto end = report.find("\n==", report.find("\n", at));
    const std::string record = report.substr(at, report.find("== \n", at) - at);
    EXPECT_EQ(record.find("read_chunk"), std::string::npos) << record;
    at = end == std::string::npos ? report.size() : end;
  }
}

}  // namespace
}  // namespace fleetsign::batchtest
