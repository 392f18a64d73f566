// Shared batches and workers (issue 13) through the real binary: `issue --share`, `batch work`,
// `worker clone`, `serve --worker`. The drill kills one of two workers mid-share and checks the
// batch's exactly-once rules across them. Workers need the PostgreSQL registry (the pg.* run);
// the SQLite run checks what a single home does with a shared batch, and the refusals.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "batch_support.hpp"
#include "fleetsign/engine/stores.hpp"
#include "registry_backend.hpp"

namespace fleetsign::batchtest {
namespace {

using namespace std::chrono_literals;

std::int64_t query_int(const std::string& location, const std::string& sql) {
  return std::stoll(test::raw_query(location, sql).at(0).at(0));
}

class Workers : public ::testing::Test {
 protected:
  void SetUp() override { fleet.make_hierarchy(); }

  // `fleetsign --home DIR ARGS…`, started.
  std::unique_ptr<Child> start_in(const fs::path& home, std::vector<std::string> args) {
    std::vector<std::string> argv{testing::fleetsign_bin(), "--home", home.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    const std::string stem = "w-" + std::to_string(++m_runs);
    return std::make_unique<Child>(argv, Env{}, fleet.path(stem + ".out"),
                                   fleet.path(stem + ".err"));
  }
  // Worker homes w1 and w2 (`worker clone`) on the fleet's registry.
  bool clone_workers() {
    for (const char* w : {"w1", "w2"}) {
      const Outcome o = fleet.run({"worker", "clone", fleet.path(w).string()});
      EXPECT_EQ(o.exit_code(), 0) << o.describe();
      if (o.exit_code() != 0) return false;
    }
    return true;
  }
  Outcome run_in(const fs::path& home, std::vector<std::string> args) {
    return start_in(home, std::move(args))->wait();
  }
  std::string share_batch(std::int64_t devices, std::int64_t share, const std::string& pattern,
                          const std::string& out) {
    const Outcome o = fleet.run({"issue", "--ca", "int", "--generate", std::to_string(devices),
                                 "--id-pattern", pattern, "--out", fleet.path(out).string(),
                                 "--share", std::to_string(share), "--json"});
    EXPECT_EQ(o.exit_code(), 0) << o.describe();
    return parse_json(o.out)->getValue<std::string>("batch");
  }
  // Every device of the pattern's prefix has exactly one issued certificate, and every share's
  // directory holds its devices' files and manifest lines.
  void expect_exactly_once(const std::string& prefix, std::int64_t devices, const std::string& out,
                           int shares) {
    const std::string where = " FROM certificates WHERE device_id LIKE '" + prefix + "%'";
    EXPECT_EQ(
        query_int(fleet.registry_location(), "SELECT COUNT(*)" + where + " AND state = 'issued'"),
        devices);
    EXPECT_EQ(query_int(fleet.registry_location(),
                        "SELECT COUNT(DISTINCT device_id)" + where + " AND state = 'issued'"),
              devices);
    EXPECT_EQ(query_int(fleet.registry_location(), "SELECT COUNT(*)" + where +
                                                       " AND state NOT IN ('issued', "
                                                       "'abandoned')"),
              0);
    std::int64_t files = 0, lines = 0;
    for (int s = 0; s < shares; ++s) {
      char name[16];
      std::snprintf(name, sizeof name, "s%04d", s);
      const fs::path dir = fleet.path(out) / name;
      for (const auto& e : fs::directory_iterator(dir)) {
        files += e.path().filename().string().ends_with("_cert.pem") ? 1 : 0;
      }
      const std::string manifest = testing::read_file(dir / "manifest.jsonl");
      lines += std::count(manifest.begin(), manifest.end(), '\n');
    }
    EXPECT_EQ(files, devices);
    EXPECT_EQ(lines, devices);
  }

  Fleet fleet;
  int m_runs = 0;
};

TEST_F(Workers, ASharedBatchIsSignedByBatchWorkShareByShareAndShownWhole) {
  const std::string id = share_batch(900, 250, "sh-{04}", "out");
  auto show = fleet.batch_show(id);
  EXPECT_EQ(show->getValue<std::string>("state"), "running");
  EXPECT_EQ(show->getArray("shares")->size(), 4u);
  EXPECT_EQ(show->getValue<std::int64_t>("issued"), 0) << "nothing is signed by --share";
  // The parent is the workers': it is not resumed as one batch.
  const Outcome resume = fleet.run({"issue", "--resume", id});
  EXPECT_NE(resume.exit_code(), 0);
  EXPECT_NE(resume.err.find("shared by workers"), std::string::npos) << resume.describe();

  // No other batch can take a share's directory before a worker reaches it (the share would fail
  // for ever), nor any other place inside the shared batch's directory.
  // A ".." after a missing directory is refused: the kernel would walk it through a symlink into
  // the shared batch's directory (found by review: nx/../L/../s0002, L -> out/s0000).
  fs::create_directories(fleet.path("out") / "s0000");
  fs::create_directory_symlink(fleet.path("out") / "s0000", fleet.path("L"));
  const Outcome dotdot =
      fleet.run({"issue", "--ca", "int", "--generate", "2", "--id-pattern", "in-{02}", "--out",
                 (fleet.path("nx") / ".." / "L" / ".." / "s0002").string()});
  EXPECT_EQ(dotdot.exit_code(), 2) << dotdot.describe();
  EXPECT_NE(dotdot.err.find("'..' after a directory that does not exist"), std::string::npos)
      << dotdot.describe();
  EXPECT_FALSE(fs::exists(fleet.path("out") / "s0002"));
  fs::remove(fleet.path("L"));
  fs::remove(fleet.path("out") / "s0000");
  // A marker that names no recorded batch is not obeyed (anyone could drop one above).
  testing::write_file(fleet.path("") / ".fleetsign-batch", "nobody\n");
  for (const char* inside : {"out/s0003", "out/mine", "out/s0001/deeper", "out"}) {
    const Outcome o = fleet.run({"issue", "--ca", "int", "--generate", "2", "--id-pattern",
                                 "in-{02}", "--out", fleet.path(inside).string()});
    EXPECT_NE(o.exit_code(), 0) << o.describe();
    EXPECT_NE(o.err.find(" of batch '" + id + "'"), std::string::npos) << o.describe();
  }
  EXPECT_EQ(query_int(fleet.registry_location(),
                      "SELECT COUNT(*) FROM certificates WHERE device_id LIKE 'in-%'"),
            0);
  // A signer whose serve is gone (the PID serve passes is not its parent's) claims nothing: the
  // run below still finds all four shares.
  const Outcome orphan = fleet.run({"batch", "work"}, {"FLEETSIGN_SERVE_PID=1"});
  EXPECT_EQ(orphan.exit_code(), 2) << orphan.describe();
  EXPECT_NE(orphan.err.find("the serve that started this worker has exited"), std::string::npos)
      << orphan.describe();

  const Outcome work = fleet.run({"batch", "work", "--json"});
  fs::remove(fleet.path("") / ".fleetsign-batch");
  ASSERT_EQ(work.exit_code(), 0) << work.describe();
  const auto done = parse_json(work.out)->getArray("shares");
  ASSERT_EQ(done->size(), 4u);
  EXPECT_TRUE(done->getObject(3)->getValue<bool>("batch_finished"));
  show = fleet.batch_show(id);
  EXPECT_EQ(show->getValue<std::string>("state"), "finished");
  EXPECT_EQ(show->getValue<std::int64_t>("issued"), 900);
  EXPECT_EQ(show->getValue<std::int64_t>("shares_done"), 4);
  EXPECT_EQ(show->getArray("shares")->getObject(3)->getValue<std::int64_t>("count"), 150);
  expect_exactly_once("sh-", 900, "out", 4);
  // The IDs of each share are its window of the pattern: share 1 starts at device 251.
  EXPECT_TRUE(fs::exists(fleet.path("out") / "s0001" / "sh-0251_cert.pem"));
  EXPECT_FALSE(fs::exists(fleet.path("out") / "s0001" / "sh-0250_cert.pem"));
  // Nothing left: a second worker run finds no share.
  const Outcome again = fleet.run({"batch", "work", "--json"});
  EXPECT_EQ(again.exit_code(), 0) << again.describe();
  EXPECT_EQ(parse_json(again.out)->getArray("shares")->size(), 0u);
}

// A shared CSR directory: the shares read the file list made when the batch was shared, so files
// added, removed or renamed afterwards move no file into another share's window; a device named
// by files in two shares is issued once (the registry refuses the second share's intent).
TEST_F(Workers, ASharedCsrDirectoryIsReadFromItsFileListAndEachDeviceIsIssuedOnce) {
  const fs::path in = fleet.path("csrs");
  fs::create_directories(in);
  for (int i = 1; i <= 30; ++i) {
    char id[16];
    std::snprintf(id, sizeof id, "c-%03d", i);
    testing::write_file(in / (std::string(id) + ".csr"), make_csr_pem(id));
  }
  testing::write_file(in / "m-bad.csr", "not a CSR");
  testing::write_file(in / "z-again.csr", make_csr_pem("c-005"));  // the last share; c-005: share 0
  testing::write_file(in / "new\nline.csr", make_csr_pem("c-nl"));  // a name with a newline
  const Outcome shared = fleet.run({"issue", "--ca", "int", "--csr-dir", in.string(), "--out",
                                    fleet.path("out").string(), "--share", "8", "--json"});
  ASSERT_EQ(shared.exit_code(), 0) << shared.describe();
  const std::string id = parse_json(shared.out)->getValue<std::string>("batch");
  EXPECT_EQ(fleet.batch_show(id)->getArray("shares")->size(), 5u);  // 33 files
  // After the share: a file that sorts first (it would shift every window of a listing), one
  // removed, and one rewritten for another device.
  testing::write_file(in / "a-late.csr", make_csr_pem("a-late"));
  fs::remove(in / "c-010.csr");
  testing::write_file(in / "c-011.csr", make_csr_pem("c-011b"));

  // A worker that cannot see the directory (a mount missing) fails the share as a whole, which
  // stays to be run: it does not reject every file and finish the batch.
  fs::rename(in, fleet.path("csrs.away"));
  const Outcome blind = fleet.run({"batch", "work", "--json"});
  EXPECT_EQ(blind.exit_code(), 2) << blind.describe();
  EXPECT_NE(blind.err.find("not a directory here"), std::string::npos) << blind.describe();
  // Nor when the directory is there but holds none of the share's files (an empty mount point).
  fs::create_directories(in);
  const Outcome empty = fleet.run({"batch", "work", "--json"});
  EXPECT_EQ(empty.exit_code(), 8) << empty.describe();
  EXPECT_NE(empty.err.find("none of this share's 8 files is there"), std::string::npos)
      << empty.describe();
  EXPECT_EQ(fleet.batch_show(id)->getValue<std::int64_t>("shares_done"), 0);
  EXPECT_EQ(fleet.batch_show(id)->getValue<std::int64_t>("rejected"), 0);
  fs::remove(in);
  fs::rename(fleet.path("csrs.away"), in);

  // --drain waits out the failed share's back-off (10 s) and runs it too.
  const Outcome work = fleet.run({"batch", "work", "--drain", "--json"});
  ASSERT_EQ(work.exit_code(), 0) << work.describe();
  EXPECT_EQ(parse_json(work.out)->getArray("shares")->size(), 5u);
  const auto show = fleet.batch_show(id);
  EXPECT_EQ(show->getValue<std::string>("state"), "finished");
  EXPECT_EQ(show->getValue<std::int64_t>("issued"), 30);  // 28 c-NNN, c-011b, c-nl
  EXPECT_EQ(show->getValue<std::int64_t>("rejected"), 3);
  const auto count = [&](const std::string& where) {
    return query_int(fleet.registry_location(),
                     "SELECT COUNT(*) FROM certificates WHERE state = 'issued' AND " + where);
  };
  EXPECT_EQ(count("device_id LIKE 'c-%'"), 30);
  EXPECT_EQ(count("device_id = 'c-005'"), 1) << "named by files in shares 0 and 3";
  EXPECT_EQ(count("device_id = 'c-010'"), 0);
  EXPECT_EQ(count("device_id = 'a-late'"), 0) << "not in the list made when it was shared";
  // Each rejected file is named with its reason, in its share's rejects.
  std::string rejects;
  for (int s = 0; s < 5; ++s) {
    char name[16];
    std::snprintf(name, sizeof name, "s%04d", s);
    const fs::path r = fleet.path("out") / name / "rejects.csv";
    if (fs::exists(r)) rejects += testing::read_file(r);
  }
  EXPECT_NE(rejects.find("c-010.csr"), std::string::npos) << rejects;
  EXPECT_NE(rejects.find("m-bad.csr"), std::string::npos) << rejects;
  // Whichever of c-005's two files a share reached second is the one rejected (share 0 ran last
  // here, after its back-off).
  EXPECT_NE(rejects.find("z-again.csr,c-005,already_issued") == std::string::npos,
            rejects.find("c-005.csr,c-005,already_issued") == std::string::npos)
      << rejects;

  // A list changed under the workers stops the shares that read it, naming it.
  const Outcome again = fleet.run({"issue", "--ca", "int", "--csr-dir", in.string(), "--out",
                                   fleet.path("out2").string(), "--share", "100", "--json"});
  ASSERT_EQ(again.exit_code(), 0) << again.describe();
  const fs::path list = fleet.path("out2") / ".fleetsign-csr-files";
  std::string text = testing::read_file(list);
  text.replace(text.find("a-late.csr"), 10, "../../x.cs");
  testing::write_file(list, text);
  const Outcome refused = fleet.run({"batch", "work", "--json"});
  EXPECT_EQ(refused.exit_code(), 8) << refused.describe();
  EXPECT_NE(refused.err.find("changed since the batch was shared"), std::string::npos)
      << refused.describe();
  // A list replaced by a link to /dev/zero is refused at once, not read.
  ASSERT_EQ(fleet
                .run({"issue", "--ca", "int", "--csr-dir", in.string(), "--out",
                      fleet.path("out3").string(), "--share", "100"})
                .exit_code(),
            0);
  fs::remove(fleet.path("out3") / ".fleetsign-csr-files");
  fs::create_symlink("/dev/zero", fleet.path("out3") / ".fleetsign-csr-files");
  const Outcome zero = fleet.run({"batch", "work", "--json"});
  EXPECT_EQ(zero.exit_code(), 8) << zero.describe();
  EXPECT_NE(zero.err.find("cannot be opened"), std::string::npos) << zero.describe();
}

TEST_F(Workers, WhatCannotBeSharedIsRefusedBeforeAnythingIsRecorded) {
  const auto refused = [&](std::vector<std::string> extra, const std::string& why) {
    std::vector<std::string> args{"issue", "--ca", "int", "--out", fleet.path("r").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    const Outcome o = fleet.run(args, {"FLEETSIGN_PFX_PASSWORD=a-password"});
    EXPECT_EQ(o.exit_code(), 2) << o.describe();
    EXPECT_NE(o.err.find(why), std::string::npos) << o.describe();
  };
  refused({"--generate", "10", "--id-pattern", "r-{02}", "--share", "0"}, "share size");
  refused({"--generate", "10", "--id-pattern", "r-{02}", "--share", "5", "--pfx"}, "--pfx");
  fs::create_directories(fleet.path("in"));
  testing::write_file(fleet.path("in") / "b.pem", "");
  refused({"--csr-file", (fleet.path("in") / "b.pem").string(), "--share", "5"},
          "a CSR bundle is not shared");
  refused({"--csr-dir", fleet.path("in").string(), "--share", "5", "--reissue"},
          "does not go with --reissue");
  testing::write_file(fleet.path("one.csr"), make_csr_pem("one"));
  refused({"--csr", fleet.path("one.csr").string(), "--share", "5"},
          "--share does not go with --csr");
  refused({"--resume", "some-batch", "--share", "5"}, "--share does not go with --resume");
  fs::remove(fleet.path("in") / "b.pem");
  EXPECT_EQ(fleet
                .run({"issue", "--ca", "int", "--out", fleet.path("r").string(), "--csr-dir",
                      fleet.path("in").string(), "--share", "5"})
                .exit_code(),
            2)
      << "an empty directory is refused like any empty input";
  // Share IDs are reserved: no batch of an operator's can stand in for a share.
  refused({"--generate", "10", "--id-pattern", "r-{02}", "--batch", "mine.s0001"},
          "is a share of a shared batch");
  refused({"--generate", "10", "--id-pattern", "r-{02}", "--share", "5", "--batch",
           std::string(62, 'b')},
          "share batch ID");
  EXPECT_EQ(query_int(fleet.registry_location(), "SELECT COUNT(*) FROM batches"), 0);
}

TEST_F(Workers, AWorkerHomeNeedsAPostgresRegistry) {
  FLEETSIGN_SQLITE_ONLY();
  const Outcome o = fleet.run({"worker", "clone", fleet.path("w1").string()});
  EXPECT_NE(o.exit_code(), 0);
  EXPECT_NE(o.err.find("PostgreSQL registry"), std::string::npos) << o.describe();
  EXPECT_FALSE(fs::exists(fleet.path("w1") / "fleetsign.json"));
}

// The drill: two workers, each with a clone of the token, share a batch; one is killed with
// SIGKILL while it holds a share; the other takes the share over when its lease ends and
// finishes it. Every device ends with exactly one certificate, every share's outputs are whole.
TEST_F(Workers, AWorkerKilledMidShareLosesItAndTheOtherFinishesItExactlyOnce) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  for (const char* w : {"w1", "w2"}) {
    const Outcome c = fleet.run({"worker", "clone", fleet.path(w).string(), "--json"});
    ASSERT_EQ(c.exit_code(), 0) << c.describe();
  }
  // A second clone into the same directory is refused, and so is one inside the home (its token
  // store would copy itself for ever) or around it.
  EXPECT_NE(fleet.run({"worker", "clone", fleet.path("w1").string()}).exit_code(), 0);
  for (const fs::path& bad : {fleet.home() / "tokens" / "w", fleet.home(), fleet.path("")}) {
    const Outcome o = fleet.run({"worker", "clone", bad.string()});
    EXPECT_EQ(o.exit_code(), 2) << bad << o.describe();
    EXPECT_NE(o.err.find("beside the home"), std::string::npos) << o.describe();
  }
  EXPECT_FALSE(fs::exists(fleet.home() / "tokens" / "w"));
  // A clone that fails halfway (a FIFO in the token backup cannot be copied, and the backup is
  // copied after the token store) leaves the empty directory it was given empty: no copy of the
  // keys stays behind, and the clone can be retried there.
  fs::create_directories(fleet.path("w3"));
  const fs::path fifo = fleet.home() / "token-backup" / "zz-fifo";
  ASSERT_TRUE(fs::is_directory(fifo.parent_path()));
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const Outcome half = fleet.run({"worker", "clone", fleet.path("w3").string()});
  fs::remove(fifo);
  EXPECT_NE(half.exit_code(), 0) << half.describe();
  EXPECT_TRUE(fs::is_empty(fleet.path("w3"))) << half.describe();
  EXPECT_EQ(fleet.run({"worker", "clone", fleet.path("w3").string()}).exit_code(), 0);
  EXPECT_FALSE(fs::exists(fleet.path("w3") / ".fleetsign-partial-clone"));
  // What a clone killed with kill -9 halfway leaves (its marker, part of the token, no
  // fleetsign.json) is replaced by the next clone there; the same names beside a home's
  // fleetsign.json, or without the marker, are never taken for it.
  fs::create_directories(fleet.path("w4") / "tokens" / "half");
  testing::write_file(fleet.path("w4") / ".fleetsign-partial-clone", "");
  testing::write_file(fleet.path("w4") / "tokens" / "half" / "token.object", "half a copy");
  const Outcome again = fleet.run({"worker", "clone", fleet.path("w4").string()});
  EXPECT_EQ(again.exit_code(), 0) << again.describe();
  EXPECT_FALSE(fs::exists(fleet.path("w4") / "tokens" / "half"));
  EXPECT_FALSE(fs::exists(fleet.path("w4") / ".fleetsign-partial-clone"));
  EXPECT_EQ(run_in(fleet.path("w4"), {"ca", "list"}).exit_code(), 0);
  testing::write_file(fleet.path("w1") / ".fleetsign-partial-clone", "");
  EXPECT_NE(fleet.run({"worker", "clone", fleet.path("w1").string()}).exit_code(), 0);
  EXPECT_TRUE(fs::exists(fleet.path("w1") / "fleetsign.json"));
  // `X/new/..` is X to the kernel, not a new directory: refused, and X's files stay (found by
  // review: the clone wrote into X, and a failed one then emptied it).
  fs::create_directories(fleet.path("victim"));
  testing::write_file(fleet.path("victim") / "precious.txt", "precious\n");
  const Outcome up = fleet.run({"worker", "clone", (fleet.path("victim") / "new" / "..").string()});
  EXPECT_EQ(up.exit_code(), 2) << up.describe();
  EXPECT_NE(up.err.find("'..' after a directory that does not exist"), std::string::npos)
      << up.describe();
  EXPECT_EQ(testing::read_file(fleet.path("victim") / "precious.txt"), "precious\n");
  EXPECT_FALSE(fs::exists(fleet.path("victim") / "tokens"));
  const std::string id = share_batch(6000, 750, "dr-{05}", "drill");
  auto w1 = start_in(fleet.path("w1"),
                     {"batch", "work", "--lease", "10", "--threads", "1", "--drain", "--json"});
  auto w2 = start_in(fleet.path("w2"),
                     {"batch", "work", "--lease", "10", "--threads", "1", "--drain", "--json"});
  // Kill w1 once it has recorded certificates of a share it holds.
  const std::string held_by_w1 =
      "SELECT COUNT(*) FROM batch_shares s JOIN certificates c ON c.batch_id = s.batch_id || "
      "'.s' || lpad(s.share::text, 4, '0') WHERE s.state = 'pending' AND s.holder LIKE '%:" +
      std::to_string(w1->pid()) + "'";
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (query_int(fleet.registry_location(), held_by_w1) == 0) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "w1 never held a share";
    std::this_thread::sleep_for(20ms);
  }
  w1->kill(SIGKILL);
  EXPECT_TRUE(w1->wait().killed_by(SIGKILL));
  // Usually w1 dies holding the share (it may have finished it between the poll and the kill).
  const std::int64_t orphaned =
      query_int(fleet.registry_location(),
                "SELECT COUNT(*) FROM batch_shares WHERE state = 'pending' AND holder LIKE '%:" +
                    std::to_string(w1->pid()) + "'");
  const Outcome survivor = w2->wait();
  ASSERT_EQ(survivor.exit_code(), 0) << survivor.describe();
  if (orphaned > 0) {
    // The survivor ran the orphaned share again (attempt 2), from what w1 had recorded.
    EXPECT_EQ(query_int(fleet.registry_location(),
                        "SELECT COUNT(*) FROM batch_shares WHERE attempts = 2 AND holder LIKE "
                        "'%:" +
                            std::to_string(w2->pid()) + "'"),
              orphaned)
        << survivor.out;
  }
  const auto show = fleet.batch_show(id);
  EXPECT_EQ(show->getValue<std::string>("state"), "finished");
  EXPECT_EQ(show->getValue<std::int64_t>("issued"), 6000);
  EXPECT_EQ(show->getValue<std::int64_t>("open_intents"), 0);
  std::int64_t attempts = 0;
  const auto shares = show->getArray("shares");
  for (std::size_t i = 0; i < shares->size(); ++i) {
    attempts += shares->getObject(static_cast<unsigned>(i))->getValue<std::int64_t>("attempts");
  }
  EXPECT_EQ(attempts, 8 + orphaned) << "8 shares, the orphaned one twice";
  expect_exactly_once("dr-", 6000, "drill", 8);
}

// A worker frozen (SIGSTOP) while it holds a share, past its lease: the other worker takes the
// share over and finishes the batch; the frozen one, woken, writes nothing more (the fencing
// token, or its lease keeper, whichever comes first) and stops. Exactly once holds.
TEST_F(Workers, AWorkerFrozenPastItsLeaseWritesNothingWhenItWakes) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  ASSERT_TRUE(clone_workers());
  const std::string id = share_batch(3000, 750, "fz-{05}", "frozen");
  auto w1 = start_in(fleet.path("w1"), {"batch", "work", "--lease", "5", "--threads", "1"});
  const std::string held_by_w1 =
      "SELECT COUNT(*) FROM batch_shares s JOIN certificates c ON c.batch_id = s.batch_id || "
      "'.s' || lpad(s.share::text, 4, '0') WHERE s.state = 'pending' AND s.holder LIKE '%:" +
      std::to_string(w1->pid()) + "'";
  // Frozen outside a transaction (the next test freezes one inside).
  const std::string in_txn =
      "SELECT COUNT(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'";
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "w1 never held a share";
    if (query_int(fleet.registry_location(), held_by_w1) > 0) {
      w1->kill(SIGSTOP);
      std::this_thread::sleep_for(50ms);
      if (query_int(fleet.registry_location(), in_txn) == 0) break;
      w1->kill(SIGCONT);
    }
    std::this_thread::sleep_for(20ms);
  }
  const std::int64_t recorded_by_w1 = query_int(
      fleet.registry_location(), "SELECT COUNT(*) FROM certificates WHERE device_id LIKE 'fz-%'");
  const Outcome w2 = run_in(
      fleet.path("w2"), {"batch", "work", "--lease", "5", "--threads", "1", "--drain", "--json"});
  ASSERT_EQ(w2.exit_code(), 0) << w2.describe();
  EXPECT_EQ(fleet.batch_show(id)->getValue<std::string>("state"), "finished");
  const std::int64_t certificates = query_int(
      fleet.registry_location(), "SELECT COUNT(*) FROM certificates WHERE device_id LIKE 'fz-%'");
  w1->kill(SIGCONT);
  const Outcome woken = w1->wait();
  EXPECT_NE(woken.exit_code(), 0) << woken.describe();
  EXPECT_TRUE(woken.err.find("another worker") != std::string::npos ||
              woken.err.find("stopping at once") != std::string::npos)
      << woken.describe();
  EXPECT_EQ(query_int(fleet.registry_location(),
                      "SELECT COUNT(*) FROM certificates WHERE device_id LIKE 'fz-%'"),
            certificates)
      << "the woken worker recorded after the share was taken over";
  EXPECT_GT(certificates, recorded_by_w1);
  expect_exactly_once("fz-", 3000, "frozen", 4);
}

// A worker frozen inside a write transaction holds the registry's write lock: the server ends
// its session after the write transactions' idle limit (20 s), and the other worker, whose writes
// wait for the lock longer than that, finishes the batch while it is still frozen (before, every
// other writer timed out busy until it woke, then after 10 s each until the server ended it).
TEST_F(Workers, AWorkerFrozenInsideAWriteTransactionLosesTheLockAndTheOtherFinishes) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  ASSERT_TRUE(clone_workers());
  const std::string id = share_batch(3000, 750, "ft-{05}", "frozen-txn");
  auto w1 = start_in(fleet.path("w1"), {"batch", "work", "--lease", "5", "--threads", "1"});
  const std::string lock_held =
      "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE "
      "l.locktype = 'advisory' AND l.granted AND a.state LIKE 'idle in transaction%'";
  auto deadline = std::chrono::steady_clock::now() + 90s;
  for (;;) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "w1 was never frozen in a write";
    w1->kill(SIGSTOP);
    std::this_thread::sleep_for(50ms);
    if (query_int(fleet.registry_location(), lock_held) > 0) break;
    w1->kill(SIGCONT);
    std::this_thread::sleep_for(5ms);
  }
  const auto frozen_at = std::chrono::steady_clock::now();
  // w2's writes wait for the lock (30 s) until the server ends w1's session (20 s idle): one run
  // finishes the batch, w1's share included, with no busy failure (its own lease, 30 s, outlasts
  // the wait).
  const Outcome w2 = run_in(
      fleet.path("w2"), {"batch", "work", "--lease", "30", "--threads", "1", "--drain", "--json"});
  EXPECT_EQ(w2.exit_code(), 0) << w2.describe();
  EXPECT_GE(std::chrono::steady_clock::now() - frozen_at, 15s) << "the lock was not held";
  EXPECT_EQ(fleet.batch_show(id)->getValue<std::string>("state"), "finished");
  expect_exactly_once("ft-", 3000, "frozen-txn", 4);
  w1->kill(SIGCONT);
  const Outcome woken = w1->wait();
  EXPECT_NE(woken.exit_code(), 0) << woken.describe();
  // Its connection is gone ("lost inside a transaction" when that is known before the next
  // statement is sent, else libpq's "server closed the connection"), or its lease keeper, waking
  // first, stops it.
  EXPECT_TRUE(woken.err.find("connection") != std::string::npos ||
              woken.err.find("stopping at once") != std::string::npos)
      << woken.describe();
  expect_exactly_once("ft-", 3000, "frozen-txn", 4);
}

// The registry's connections are cut again and again (as a PostgreSQL restart does) while a
// worker's serve runs a shared batch: the serve logs and goes on, its signer never aborts (found
// by review: reading the registry's clock let the connection error escape, which ended the serve
// and aborted the signer's lease thread), and the batch ends exactly once.
TEST_F(Workers, AServeAndItsSignerOutliveTheirRegistryConnectionsBeingCut) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  ASSERT_TRUE(clone_workers());
  const std::string id = share_batch(3000, 750, "cut-{05}", "cut");
  auto w1 = start_in(fleet.path("w1"), {"serve", "--worker", "--tick", "1"});
  const std::string cut =
      "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
      "current_database() AND pid <> pg_backend_pid()";
  for (int i = 0; i < 15; ++i) {
    std::this_thread::sleep_for(200ms);
    test::raw_query(fleet.registry_location(), cut);
  }
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (fleet.batch_show(id)->getValue<std::string>("state") != "finished") {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the batch never finished";
    std::this_thread::sleep_for(250ms);
  }
  w1->kill(SIGTERM);
  const Outcome served = w1->wait();
  EXPECT_EQ(served.exit_code(), 0) << "the serve did not outlive the cuts: " << served.describe();
  const std::string said = served.out + served.err;  // the children's stderr is in its stdout
  EXPECT_EQ(said.find("terminate called"), std::string::npos) << served.describe();
  EXPECT_EQ(said.find("died by signal"), std::string::npos) << served.describe();
  expect_exactly_once("cut-", 3000, "cut", 4);
}

// One serve of the registry schedules at a time (the scheduler's lease, an advisory lock of its
// connection): a frozen one loses it once the server ends its idle connection, and does not
// take it back when it wakes; a killed one loses it at once.
TEST_F(Workers, OneServeSchedulesAtATimeAndAnotherTakesOverWhenItFreezesOrDies) {
  if (!test::test_registry_is_postgres()) GTEST_SKIP() << "workers share a PostgreSQL registry";
  ASSERT_TRUE(clone_workers());
  const std::string holder = "SELECT holder FROM leases WHERE name = 'scheduler'";
  const auto holder_now = [&] {
    const auto rows = test::raw_query(fleet.registry_location(), holder);
    return rows.empty() ? std::string() : rows.at(0).at(0);
  };
  const auto wait_for_holder = [&](const Child& w, std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!holder_now().ends_with(":" + std::to_string(w.pid()))) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(100ms);
    }
    return true;
  };
  auto w1 = start_in(fleet.path("w1"), {"serve", "--worker", "--tick", "1"});
  ASSERT_TRUE(wait_for_holder(*w1, 30s)) << "w1 never scheduled";
  auto w2 = start_in(fleet.path("w2"), {"serve", "--worker", "--tick", "1"});
  std::this_thread::sleep_for(3s);
  EXPECT_TRUE(holder_now().ends_with(":" + std::to_string(w1->pid()))) << "w2 took a held lease";

  // Frozen (SIGSTOP, a paused VM): the server ends its connection after kLeaseIdleLimit.
  w1->kill(SIGSTOP);
  ASSERT_TRUE(wait_for_holder(*w2, std::chrono::seconds(engine::kLeaseIdleLimit + 30)))
      << "w2 never took the lease of a frozen serve";
  w1->kill(SIGCONT);
  std::this_thread::sleep_for(7s);  // w1 renews (every 5 s) on a new connection: refused
  EXPECT_TRUE(holder_now().ends_with(":" + std::to_string(w2->pid())))
      << "the woken serve took the lease back";

  // Killed: its connection ends with it, and w1 takes the lease at once.
  w2->kill(SIGKILL);
  w2->wait();
  ASSERT_TRUE(wait_for_holder(*w1, 15s)) << "w1 never took the lease over";
  // A serve that stops releases the lease.
  w1->kill(SIGTERM);
  const Outcome stopped = w1->wait();
  EXPECT_EQ(stopped.exit_code(), 0) << stopped.describe();
  EXPECT_EQ(holder_now(), "");
  EXPECT_NE(stopped.err.find("server closed the connection"), std::string::npos)
      << "w1 never learned that its connection was ended: " << stopped.describe();
}

}  // namespace
}  // namespace fleetsign::batchtest
