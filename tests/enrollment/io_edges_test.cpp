// The edges where the real binary meets files it did not make: bounded reads of chains,
// certificates, policy and config (a /dev/zero or an oversized file is refused quickly, naming the
// input and the limit), checked writes of every --out (a /dev/full is a failure with exit 8, a
// failed export leaves no temporary file and no half-written target), and the global and time
// options (--home=, --at).
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <set>

#include "enrollment_support.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::quoted;

Object::Ptr json(const std::string& text) {
  Poco::JSON::Parser parser;
  return parser.parse(text).extract<Object::Ptr>();
}

std::string error_code(const testing::Outcome& o) {
  return json(o.out)->getObject("error")->getValue<std::string>("code");
}

// Names of the entries of `dir`.
std::set<std::string> entries(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

bool is_char_device(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

ino_t inode_of(const fs::path& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

class IoEdges : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";
  testing::Binary bin{home};

  std::string path(const std::string& name) const { return (dir.path() / name).string(); }

  void SetUp() override {
    bin.ok("init");
    bin.ok("ca create-root --name root --subject " + quoted("/CN=Edges Root/O=fleetsign tests"));
    bin.ok("ca create-intermediate --name int --issuer root --days 3000 --subject " +
           quoted("/CN=Edges Int"));
  }

  // `fleetsign ARGS --json` must fail with `code` and `status`, within the test's time (a
  // runaway read of /dev/zero would not), naming `names` in its message.
  void expect_refused(const std::string& args, const std::string& code, int status,
                      const std::string& names) {
    const auto o = bin.run(args + " --json");
    EXPECT_EQ(o.status, status) << args << "\n" << o.out << o.err;
    EXPECT_EQ(error_code(o), code) << args << "\n" << o.out;
    EXPECT_NE(o.err.find(names), std::string::npos) << args << "\n" << o.err;
  }

  // A device certificate through `issue --csr`; returns its PEM file.
  std::string device(const std::string& id) {
    const std::string csr = path(id + ".csr");
    EXPECT_EQ(testing::run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                           "-keyout /dev/null -subj /CN=" +
                           id + " -out " + quoted(csr)),
              0);
    bin.ok("issue --ca int --csr " + quoted(csr) + " --out " + quoted(path("out")));
    return (fs::path(path("out")) / (id + "_cert.pem")).string();
  }

  void verified_group() {
    bin.ok("ca verification-cert --ca root --code POP-1 --out " + quoted(path("pop.pem")));
    bin.ok("ca verify root --code POP-1 --cert " + quoted(path("pop.pem")));
    bin.ok("enrollment group create fleet --ca root");
  }
};

// --- 7. bounded reads
// -----------------------------------------------------------------------------

TEST_F(IoEdges, AuthCheckRefusesAChainFromDevZeroAsTooLargeNamingTheLimit) {
  expect_refused("auth check --chain /dev/zero", "input_too_large", 2, "chain '/dev/zero'");
#ifdef FLEETSIGN_SANITIZED
  // AddressSanitizer reserves terabytes of address space for its shadow: no ulimit -v run.
  return;
#endif
  // In 256 MiB of address space: the read stops at the limit instead of growing.
  std::string out;
  const int status = testing::run(
      "bash -c " + quoted("ulimit -v 262144; exec " + quoted(testing::fleetsign_bin()) +
                          " --home " + quoted(home.string()) + " auth check --chain /dev/zero"),
      &out);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("larger than the limit of 1048576 bytes"), std::string::npos) << out;
}

// A FIFO nobody writes to used to hang the command in open(2) for ever; a pipe that is written
// to (process substitution) is still read.
TEST_F(IoEdges, AFifoWithNoWriterIsReadAsEmptyInsteadOfBlockingAndAPipeStillWorks) {
  const std::string fifo = path("chain.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const auto start = std::chrono::steady_clock::now();
  const auto o = bin.run("auth check --chain " + quoted(fifo) + " --json");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  EXPECT_NE(o.status, 0) << o.out << o.err;
  EXPECT_NE(o.err.find(fifo), std::string::npos) << o.err;
  const std::string cert = device("fifo-dev-1");
  std::string out;
  const int status =
      testing::run("bash -c " + quoted("exec " + quoted(testing::fleetsign_bin()) + " --home " +
                                       quoted(home.string()) + " auth check --json --chain <(cat " +
                                       quoted(cert) + ")"),
                   &out);
  EXPECT_NE(out.find("\"registration_id\":\"fifo-dev-1\""), std::string::npos) << status << out;
}

TEST_F(IoEdges, AuthCheckRefusesAChainFileOverOneMebibyte) {
  // Valid PEM blocks, repeated past the limit: the size alone refuses it.
  const std::string one = testing::read_file(device("dev-big"));
  std::string big;
  while (big.size() <= (1u << 20)) big += one;
  testing::write_file(path("big-chain.pem"), big);
  expect_refused("auth check --chain " + quoted(path("big-chain.pem")), "input_too_large", 2,
                 "chain '");
}

TEST_F(IoEdges, CertificateFilesForEnrollmentsAndVerificationAreBounded) {
  bin.ok("enrollment group create g1 --ca int");
  expect_refused("enrollment individual create dev-1 --cert /dev/zero", "input_too_large", 2,
                 "certificate file '/dev/zero'");
  expect_refused("enrollment group set-slot g1 secondary --cert /dev/zero", "input_too_large", 2,
                 "certificate file '/dev/zero'");
  expect_refused("ca verify root --code X --cert /dev/zero", "input_too_large", 2,
                 "certificate file '/dev/zero'");
  // Nothing was recorded.
  EXPECT_TRUE(json(bin.ok("enrollment group show g1 --json").out)->isNull("secondary"));
  EXPECT_EQ(json(bin.ok("enrollment individual list --json").out)->getValue<int>("count"), 0);
}

TEST_F(IoEdges, APolicyFileThatIsDevZeroOrOversizedIsRefusedNamingIt) {
  const fs::path policy = home / "policy.json";
  fs::remove(policy);
  fs::create_symlink("/dev/zero", policy);
  expect_refused("expiry report", "input_too_large", 2, "policy file '");
  fs::remove(policy);
  testing::write_file(policy, std::string((1u << 20) + 1, ' ') + "{}");
  expect_refused("expiry report", "input_too_large", 2, "policy file '");
}

TEST_F(IoEdges, AConfigFileThatIsDevZeroIsRefusedNamingIt) {
  const fs::path config = home / "fleetsign.json";
  fs::remove(config);
  fs::create_symlink("/dev/zero", config);
  expect_refused("ca list", "input_too_large", 2, "config file '");
}

// --- 8. checked writes
// ----------------------------------------------------------------------------

TEST_F(IoEdges, EveryOutToDevFullExitsEightNamingTheFileAndLeavesTheDeviceAlone) {
  bin.ok("enrollment group create g1 --ca int");
  device("dev-full");  // so that every export has something to write
  for (const std::string args : {"export dps --out /dev/full", "export iothub --out /dev/full",
                                 "ca export root --out "
                                 "/dev/full",
                                 "ca export int --chain --out /dev/full",
                                 "ca verification-cert --ca root --code C-1 --out /dev/full"}) {
    const auto o = bin.run(args);
    EXPECT_EQ(o.status, 8) << args << "\n" << o.out << o.err;
    EXPECT_NE(o.err.find("/dev/full"), std::string::npos) << args << "\n" << o.err;
    EXPECT_EQ(o.out.find("wrote"), std::string::npos) << args << "\n" << o.out;
    EXPECT_TRUE(is_char_device("/dev/full")) << "after " << args;
  }
}

TEST_F(IoEdges, OutToDevStdoutWritesInPlace) {
  const auto o = bin.ok("ca export root --out /dev/stdout");
  EXPECT_EQ(o.out.rfind("-----BEGIN CERTIFICATE-----", 0), 0u) << o.out;
  EXPECT_TRUE(fs::is_symlink("/dev/stdout"));
  // Redirected to a file, the certificate comes first and the status line after it.
  bin.ok("ca export root --out /dev/stdout > " + quoted(path("redirected.pem")));
  const std::string text = testing::read_file(path("redirected.pem"));
  EXPECT_EQ(text.rfind("-----BEGIN CERTIFICATE-----", 0), 0u) << text;
  EXPECT_NE(text.find("-----END CERTIFICATE-----\nwrote root to /dev/stdout"), std::string::npos)
      << text;
}

TEST_F(IoEdges, AnExportThatFailsLeavesNoTemporaryFileAndTheOldTargetUntouched) {
  const fs::path out = dir.path() / "exports";
  fs::create_directories(out);
  testing::write_file(out / "dps.json", "previous export\n");
  const auto o = bin.run("export dps --group no-such-group --out " + quoted((out / "dps.json")));
  EXPECT_EQ(o.status, 2) << o.err;
  EXPECT_EQ(entries(out), std::set<std::string>{"dps.json"});
  EXPECT_EQ(testing::read_file(out / "dps.json"), "previous export\n");
}

TEST_F(IoEdges, AnOutWhoseDirectoryCannotBeMadeExitsEightAndWritesNothing) {
  testing::write_file(path("a-file"), "x");
  const auto o = bin.run("ca export root --out " + quoted(path("a-file") + "/sub/root.pem"));
  EXPECT_EQ(o.status, 8) << o.err;
  EXPECT_NE(o.err.find("a-file/sub/root.pem"), std::string::npos) << o.err;
  EXPECT_EQ(testing::read_file(path("a-file")), "x");
}

TEST_F(IoEdges, ARegularOutIsReplacedWholeByARenameAndLeavesNoTemporaryFile) {
  const fs::path out = dir.path() / "exports";
  fs::create_directories(out);
  testing::write_file(out / "root.pem", "old\n");
  const ino_t before = inode_of(out / "root.pem");
  bin.ok("ca export root --out " + quoted((out / "root.pem")));
  bin.ok("export iothub --out " + quoted((out / "hub.jsonl")));
  EXPECT_EQ(entries(out), (std::set<std::string>{"hub.jsonl", "root.pem"}));
  EXPECT_NE(inode_of(out / "root.pem"), before);
  EXPECT_EQ(testing::read_file(out / "root.pem").rfind("-----BEGIN CERTIFICATE-----", 0), 0u);
  EXPECT_EQ(fs::status(out / "root.pem").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                fs::perms::others_read);
}

// --- 16. global and time options
// ------------------------------------------------------------------

TEST_F(IoEdges, AnEmptyHomeIsAUsageErrorNotAnInternalOne) {
  for (const std::string args : {"--home= ca list", "--home '' ca list", "--home"}) {
    std::string out;
    const int status = testing::run(
        "env -u FLEETSIGN_HOME " + quoted(testing::fleetsign_bin()) + " " + args + " </dev/null",
        &out);
    EXPECT_EQ(status, 2) << args << "\n" << out;
    EXPECT_NE(out.find("[usage]: --home needs a directory"), std::string::npos) << args << out;
    EXPECT_EQ(out.find("internal"), std::string::npos) << args << out;
  }
}

TEST_F(IoEdges, AuthCheckAtAnImpossibleDateIsAUsageErrorNamingTheValue) {
  const std::string cert = device("dev-date");
  for (const std::string at : {"2027-02-30", "2027-02-29", "2026-13-01", "2026-11-23T24:00:00Z",
                               "-5", "12abc", "2026-11-23T07:13:11"}) {
    const auto o = bin.run("auth check --chain " + quoted(cert) + " --at " + quoted(at));
    EXPECT_EQ(o.status, 2) << at << "\n" << o.out << o.err;
    EXPECT_NE(o.err.find("--at '" + at + "'"), std::string::npos) << o.err;
  }
  // Real dates still parse (2028 is a leap year).
  EXPECT_NE(bin.run("auth check --chain " + quoted(cert) + " --at 2028-02-29").status, 2);
}

TEST_F(IoEdges, AuthCheckAtTheEpochIsNotYetValidNotExpired) {
  verified_group();
  const std::string cert = device("dev-epoch");
  EXPECT_EQ(bin.run("auth check --chain " + quoted(cert)).status, 0);
  const auto o = bin.run("auth check --json --chain " + quoted(cert) + " --at 0");
  EXPECT_EQ(o.status, 7) << o.out << o.err;
  EXPECT_EQ(json(o.out)->getValue<std::string>("rule"), "not-yet-valid") << o.out;
}

}  // namespace
}  // namespace fleetsign
