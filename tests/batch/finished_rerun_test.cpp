// Running a finished batch again — the same command with the same --batch ID, or
// `issue --resume ID` — issues nothing: the registry and the output directory are left exactly as
// they were (no certificate, no serial, no byte of output), and the command says so.
#include <gtest/gtest.h>

#include <algorithm>

#include "batch_support.hpp"

namespace fleetsign::batchtest {
namespace {

// Everything a second run could change in the registry.
struct RegistryCounts {
  std::int64_t intent = 0, issued = 0, abandoned = 0, revoked = 0;
  std::size_t batches = 0;
  engine::BatchRecord batch;

  bool operator==(const RegistryCounts& o) const {
    return intent == o.intent && issued == o.issued && abandoned == o.abandoned &&
           revoked == o.revoked && batches == o.batches && batch.state == o.batch.state &&
           batch.issued == o.batch.issued && batch.rejected == o.batch.rejected &&
           batch.watermark == o.batch.watermark && batch.finished_at == o.batch.finished_at &&
           batch.offsets_json == o.batch.offsets_json;
  }
};

RegistryCounts counts(Fleet& fleet, const std::string& batch_id) {
  auto registry = fleet.registry();
  RegistryCounts c;
  c.intent = registry->count_certs("", engine::CertState::kIntent);
  c.issued = registry->count_certs("", engine::CertState::kIssued);
  c.abandoned = registry->count_certs("", engine::CertState::kAbandoned);
  c.revoked = registry->count_certs("", engine::CertState::kRevoked);
  c.batches = registry->list_batches({}).size();
  c.batch = registry->find_batch(batch_id).value_or(engine::BatchRecord{});
  return c;
}

void rerun_finished_batch_changes_nothing(bool bundle) {
  Fleet fleet;
  fleet.make_hierarchy();
  IssueArgs a;
  a.batch_id = bundle ? "rerun-bundle" : "rerun-files";
  a.generate = 600;
  a.id_pattern = "re-{04}";
  a.out = fleet.path("out");
  a.bundle = bundle;
  fleet.ok(a.args());
  const RegistryCounts before = counts(fleet, a.batch_id);
  ASSERT_EQ(before.batch.state, "finished");
  const std::string listing = snapshot_dir(a.out);
  const std::string manifest = sha256_hex(testing::read_file(a.out / "manifest.csv"));

  IssueArgs as_json = a;
  as_json.json = true;
  const std::vector<std::vector<std::string>> again{a.args(),
                                                    {"issue", "--resume", a.batch_id},
                                                    as_json.args(),
                                                    {"issue", "--resume", a.batch_id, "--json"}};
  for (const auto& args : again) {
    std::string line;
    for (const auto& w : args) line += w + " ";
    SCOPED_TRACE(line);
    const Outcome o = fleet.run(args);
    ASSERT_EQ(o.exit_code(), 0) << o.describe();
    if (std::find(args.begin(), args.end(), "--json") != args.end()) {
      const auto j = parse_json(o.out);
      EXPECT_TRUE(j->getValue<bool>("already_finished"));
      EXPECT_EQ(j->getValue<std::string>("batch"), a.batch_id);
      EXPECT_EQ(j->getValue<std::int64_t>("issued"), 0);
      EXPECT_EQ(j->getValue<std::int64_t>("total_issued"), 600);
    } else {
      EXPECT_NE(o.out.find("batch " + a.batch_id +
                           " had already finished (600 issued); nothing new issued"),
                std::string::npos)
          << o.out;
    }
    EXPECT_TRUE(counts(fleet, a.batch_id) == before) << "the registry changed";
    EXPECT_EQ(snapshot_dir(a.out), listing) << "the output directory changed";
    EXPECT_EQ(sha256_hex(testing::read_file(a.out / "manifest.csv")), manifest);
  }
  Expected e;
  e.batch_id = a.batch_id;
  e.out = a.out;
  e.inputs = generated_inputs(a);
  e.bundle = bundle;
  e.generated_keys = true;
  EXPECT_EQ(check_batch(fleet, e).issued, 600);
}

TEST(BatchRerun, FinishedBatchRunAgainOrResumedIssuesNothingWithDeviceFiles) {
  rerun_finished_batch_changes_nothing(false);
}

TEST(BatchRerun, FinishedBatchRunAgainOrResumedIssuesNothingWithBundle) {
  rerun_finished_batch_changes_nothing(true);
}

}  // namespace
}  // namespace fleetsign::batchtest
