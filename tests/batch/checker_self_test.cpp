// The invariant checker must not pass vacuously: a finished batch passes it, and each way an
// output can go wrong after a crash (a duplicate line left past the watermark, a key that is not
// the certificate's, a lost manifest line, a file for a device never issued, ...) makes it fail
// with the invariant's name. Each damage is undone before the next.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <functional>

#include "batch_support.hpp"

namespace fleetsign::batchtest {
namespace {

// Runs check_batch with its failures captured; returns their messages joined.
std::string failures_of(Fleet& fleet, const Expected& e) {
  ::testing::TestPartResultArray results;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &results);
    check_batch(fleet, e);
  }
  std::string all;
  for (int i = 0; i < results.size(); ++i)
    all += std::string(results.GetTestPartResult(i).message()) + "\n";
  return all;
}

struct Damage {
  const char* name;
  std::function<void(const fs::path& out)> apply;
  const char* expected;  // a substring of the checker's failure
};

// Applies each damage to a copy-restored output directory and expects the checker to name it.
void expect_each_damage_caught(Fleet& fleet, const Expected& e,
                               const std::vector<Damage>& damages) {
  ASSERT_EQ(failures_of(fleet, e), "") << "the undamaged batch must pass";
  const fs::path pristine = fleet.path("pristine");
  fs::copy(e.out, pristine, fs::copy_options::recursive);
  for (const auto& d : damages) {
    SCOPED_TRACE(d.name);
    d.apply(e.out);
    const std::string failures = failures_of(fleet, e);
    EXPECT_NE(failures.find(d.expected), std::string::npos)
        << "expected \"" << d.expected << "\", got:\n"
        << failures;
    fs::remove_all(e.out);
    fs::copy(pristine, e.out, fs::copy_options::recursive);
  }
}

void append(const fs::path& file, const std::string& text) {
  testing::write_file(file, testing::read_file(file) + text);
}

std::string first_line_after_header(const fs::path& file, bool header) {
  return lines_of(testing::read_file(file)).at(header ? 1 : 0) + "\n";
}

class CheckerSelfTest : public ::testing::Test {
 protected:
  Expected issue(bool bundle) {
    fleet.make_hierarchy();
    IssueArgs a;
    a.batch_id = "checked";
    a.generate = 300;
    a.id_pattern = "c-{03}";
    a.out = fleet.path("out");
    a.bundle = bundle;
    fleet.ok(a.args());
    Expected e;
    e.batch_id = a.batch_id;
    e.out = a.out;
    e.inputs = generated_inputs(a);
    e.bundle = bundle;
    e.generated_keys = true;
    return e;
  }
  Fleet fleet;
};

TEST_F(CheckerSelfTest, CatchesEachKindOfDamageToDeviceFiles) {
  const Expected e = issue(false);
  expect_each_damage_caught(
      fleet, e,
      {{"manifest line twice",
        [](const fs::path& o) {
          append(o / "manifest.csv", first_line_after_header(o / "manifest.csv", true));
        },
        "(d) device twice in manifest.csv"},
       {"iothub line twice",
        [](const fs::path& o) {
          append(o / "iothub-import.jsonl",
                 first_line_after_header(o / "iothub-import.jsonl", false));
        },
        "(d) iothub-import.jsonl line duplicate"},
       {"certificate of another device",
        [](const fs::path& o) {
          fs::copy_file(o / "c-002_cert.pem", o / "c-001_cert.pem",
                        fs::copy_options::overwrite_existing);
        },
        "(b) serial twice in the outputs"},
       {"key of another device",
        [](const fs::path& o) {
          fs::copy_file(o / "c-002_key.pem", o / "c-001_key.pem",
                        fs::copy_options::overwrite_existing);
        },
        "(e) private key does not match the certificate"},
       {"key readable by others",
        [](const fs::path& o) {
          fs::permissions(o / "c-003_key.pem", fs::perms::others_read, fs::perm_options::add);
        },
        "(e) {id}_key.pem missing or not mode 0600"},
       {"files for a device never issued",
        [](const fs::path& o) { fs::copy_file(o / "c-001_cert.pem", o / "ghost_cert.pem"); },
        "(d) output file for a device that is not issued"},
       {"a device's outputs lost", [](const fs::path& o) { fs::remove(o / "c-300_cert.pem"); },
        "(d) issued device without exactly one certificate"},
       {"a reject for an issued device",
        [](const fs::path& o) { append(o / "rejects.csv", "c-004,c-004,csr_malformed,x\n"); },
        "(a) issued + rejected != inputs"}});
}

TEST_F(CheckerSelfTest, CatchesEachKindOfDamageToABundle) {
  const Expected e = issue(true);
  expect_each_damage_caught(
      fleet, e,
      {{"bundle.jsonl line twice (no truncation at the watermark)",
        [](const fs::path& o) {
          append(o / "bundle.jsonl", first_line_after_header(o / "bundle.jsonl", false));
        },
        "(d) device twice in bundle.jsonl"},
       {"bundle.pem certificate twice",
        [](const fs::path& o) {
          const std::string pem = testing::read_file(o / "bundle.pem");
          append(o / "bundle.pem", pem.substr(0, pem.find("-----END CERTIFICATE-----") + 26));
        },
        "(d) bundle.pem certificates != registry"},
       {"bundle.jsonl line lost",
        [](const fs::path& o) {
          const std::string text = testing::read_file(o / "bundle.jsonl");
          testing::write_file(o / "bundle.jsonl", text.substr(text.find('\n') + 1));
        },
        "(d) bundle.jsonl lines != issued devices"},
       {"manifest.jsonl line lost",
        [](const fs::path& o) {
          const std::string text = testing::read_file(o / "manifest.jsonl");
          testing::write_file(o / "manifest.jsonl", text.substr(text.find('\n') + 1));
        },
        "(d) manifest.jsonl lines != issued devices"}});
}

}  // namespace
}  // namespace fleetsign::batchtest
