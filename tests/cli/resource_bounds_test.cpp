// Resource bounds (issue 11 §4): every input that fleetsign and fleetsign-device read from outside
// has a limit that is enforced while it is read. Each input of the table is fed twice to the real
// program — /dev/zero (endless) and a 1 GB sparse file (huge, costs no disk) — and must be refused
// with a non-zero status and a message naming it, within 1 s of wall time and 256 MiB of peak
// memory (ru_maxrss of exactly that child, from wait4). Files the home owns and rewrites (the
// broker's CRL file, SoftHSM2's configuration) are not refused but replaced, within the same
// bounds. A few inputs only a library function reaches without a broker are checked in-process.
#include <Poco/JSON/Object.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "batch_io.hpp"
#include "cli_process.hpp"
#include "fleetsign/device/state.hpp"
#include "fleetsign/engine/x509.hpp"
#include "test_home.hpp"

extern char** environ;

namespace fleetsign {
namespace {

namespace fs = std::filesystem;

#ifdef FLEETSIGN_SANITIZED
// AddressSanitizer builds: processes start and run slower and their RSS carries the shadow memory
// and the quarantine, so the bounds are 3 s and 512 MiB there (1 s and 256 MiB otherwise).
constexpr double kMaxSeconds = 3.0;
constexpr long kMaxRssKib = 512 * 1024;
#else
constexpr double kMaxSeconds = 1.0;
constexpr long kMaxRssKib = 256 * 1024;
#endif
constexpr off_t kSparseSize = off_t{1} << 30;
constexpr auto kKillAfter = std::chrono::seconds(20);  // a runaway read fails the test, not ctest

// ---------------------------------------------------------------------------------------------
// One child, spawned and reaped with wait4: its status, wall time, peak RSS and output.

struct Child {
  int status = -1;  // exit status; -1 when it died by a signal (or was killed after kKillAfter)
  double seconds = 0;
  long max_rss_kib = 0;
  std::string output;  // stdout and stderr
};

Child run_child(const std::vector<std::string>& argv_s, const fs::path& output_file) {
  std::vector<char*> argv;
  for (const auto& a : argv_s) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_s = testing::child_environment();
  std::vector<char*> env;
  for (auto& e : env_s) env.push_back(e.data());
  env.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, output_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  Child c;
  pid_t pid = -1;
  const auto start = std::chrono::steady_clock::now();
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    ADD_FAILURE() << "cannot start " << argv_s[0];
    return c;
  }
  int status = 0;
  rusage ru{};
  for (;;) {
    const pid_t r = ::wait4(pid, &status, WNOHANG, &ru);
    if (r == pid) break;
    if (std::chrono::steady_clock::now() - start > kKillAfter) {
      ::kill(pid, SIGKILL);
      ::wait4(pid, &status, 0, &ru);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  c.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // KiB on Linux. The kernel carries the high-water mark across exec, so this counts the test
  // process's own RSS at the spawn too (about 19 MiB): an upper bound on the child's.
  c.max_rss_kib = ru.ru_maxrss;
  c.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  c.output = testing::read_file(output_file);
  return c;
}

// ---------------------------------------------------------------------------------------------
// The table. In every string {home}, {tmp}, {batch}, {state}, {trust}, {variant} and {in} (the
// hostile input's path) are replaced.

enum class Program { kCli, kDevice };
enum class Outcome {
  kRefused,   // non-zero status (status_zero / status_sparse), the output names the input
  kReplaced,  // the home's own file: status 0, and afterwards a regular file under 1 MiB
};

struct Case {
  const char* name;
  Program program;
  std::string args;
  // Where the hostile input lives. Empty: {in} is /dev/zero itself, or a sparse file in {tmp}.
  // Else this path is made a symlink to /dev/zero, or a sparse file (what was there is restored).
  std::string place;
  std::string names;  // must appear in the output ({in} replaced)
  int status_zero = 2;
  int status_sparse = 2;
  Outcome outcome = Outcome::kRefused;
  std::string home = "{home}";
  std::map<std::string, std::string> prepare = {};  // files written first ({in} replaced)
  std::string names_in = {};                        // look for `names` in this file instead
};

// gtest prints a failing parameter with this (not as 240 bytes of hex).
void PrintTo(const Case& c, std::ostream* out) { *out << c.name; }

std::string fleet_json(const std::map<std::string, std::string>& fields) {
  Poco::JSON::Object o;
  for (const auto& [k, v] : fields) o.set(k, v);
  std::ostringstream out;
  o.stringify(out);
  return out.str();
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      // Files named on the command line.
      {"IssueCsr", Program::kCli, "issue --ca int --csr {in} --out {tmp}/out-csr-{variant}", "",
       "CSR file '{in}'"},
      {"IssueCsrBundle", Program::kCli,
       "issue --ca int --csr-file {in} --out {tmp}/out-bundle-{variant}", "", "CSR bundle {in}"},
      {"IssueCsrDirEntry",
       Program::kCli,
       "issue --ca int --csr-dir {tmp}/csrdir-{variant} --out {tmp}/out-dir-{variant}",
       "{tmp}/csrdir-{variant}/a.csr",
       "{in},input_too_large",
       3,
       3,
       Outcome::kRefused,
       "{home}",
       {},
       "{tmp}/out-dir-{variant}/rejects.csv"},
      {"IssuePfxPasswordFile", Program::kCli,
       "issue --ca int --generate 1 --id-pattern px-{02} --pfx --out {tmp}/out-pfx-{variant} "
       "--pfx-password-file {in}",
       "", "'{in}'"},
      {"IssueOutDirBatchMarker", Program::kCli,
       "issue --ca int --generate 1 --id-pattern mk-{02} --out {tmp}/out-mark-{variant}",
       "{tmp}/out-mark-{variant}/.fleetsign-batch", "batch marker file '{in}'"},
      {"PinFile", Program::kCli, "ca create-root --name r9 --subject /CN=R9 --pin-file {in}", "",
       "PIN file '{in}'"},
      {"InitSoPinFile", Program::kCli, "init --so-pin-file {in}", "", "PIN file '{in}'", 2, 2,
       Outcome::kRefused, "{tmp}/fresh-home-{variant}"},
      {"AuthCheckChain", Program::kCli, "auth check --chain {in}", "", "chain '{in}'"},
      {"IndividualCert", Program::kCli, "enrollment individual create dev-x --cert {in}", "",
       "certificate file '{in}'"},
      {"GroupSlotCert", Program::kCli, "enrollment group set-slot g1 secondary --cert {in}", "",
       "certificate file '{in}'"},
      {"CaVerifyCert", Program::kCli, "ca verify root --code X --cert {in}", "",
       "certificate file '{in}'"},
      {"CaImportCert", Program::kCli, "ca import ext1 --cert {in}", "", "certificate file '{in}'"},
      {"RolloverDevices", Program::kCli, "rollover start --devices {in}", "", "device list '{in}'"},
      {"BlocklistFromFile", Program::kCli, "blocklist add --from-file {in}", "",
       "--from-file '{in}'"},
      {"TwinPatchFile", Program::kCli, "twin set-desired dev-01 --patch-file {in}", "",
       "--patch-file '{in}'"},
      {"FleetBackendConnectionStringFile", Program::kCli,
       "fleet backend iothub --connection-string-file {in}", "", "connection string file '{in}'"},
      {"FleetBackendCaFile", Program::kCli, "fleet backend iothub --ca-file {in}", "",
       "IoT Hub CA file '{in}'"},
      // Files of the home.
      {"ConfigFile", Program::kCli, "ca list", "{home}/fleetsign.json", "config file '{in}'"},
      {"PolicyFile", Program::kCli, "expiry report", "{home}/policy.json", "policy file '{in}'"},
      {"FleetConfig", Program::kCli, "fleet backend", "{home}/fleet.json", "fleet config '{in}'"},
      {"FleetConnectionStringFile",
       Program::kCli,
       "method invoke dev-01 ping",
       "{tmp}/cs-{variant}",
       "connection string file '{in}'",
       2,
       2,
       Outcome::kRefused,
       "{home}",
       {{"{home}/fleet.json",
         fleet_json({{"backend", "iothub"}, {"connection_string_file", "{in}"}})}}},
      {"FleetIotHubCaFile",
       Program::kCli,
       "method invoke dev-01 ping",
       "{tmp}/hubca-{variant}",
       "IoT Hub CA file '{in}'",
       2,
       2,
       Outcome::kRefused,
       "{home}",
       {{"{tmp}/cs.txt",
         "HostName=127.0.0.1:1;SharedAccessKeyName=service;SharedAccessKey=c2VjcmV0\n"},
        {"{home}/fleet.json", fleet_json({{"backend", "iothub"},
                                          {"connection_string_file", "{tmp}/cs.txt"},
                                          {"ca_file", "{in}"}})}}},
      {"BrokerSettings", Program::kCli, "broker status", "{home}/broker/broker.json",
       "broker settings '{in}'"},
      {"BrokerSettingsForMethods", Program::kCli, "method invoke dev-01 ping",
       "{home}/broker/broker.json", "broker settings '{in}'"},
      // libmosquitto reads these itself: only a regular file within the limit is handed over.
      {"BrokerCaForMethods", Program::kCli, "method invoke dev-01 ping", "{home}/broker/ca.pem",
       "broker CA file '{in}'", 8, 2},
      {"ServiceKeyForMethods", Program::kCli, "method invoke dev-01 ping",
       "{home}/broker/service.key", "service key '{in}'", 8, 2},
      // The home's own files, rewritten rather than refused.
      {"BrokerCrlFile", Program::kCli, "crl sign --all", "{home}/broker/crl.pem", "", 0, 0,
       Outcome::kReplaced},
      {"SoftHsmConfiguration", Program::kCli, "ca list", "{home}/softhsm2.conf", "", 0, 0,
       Outcome::kReplaced},
      // SQLite reads the registry page by page: what is not a database is refused at open.
      {"RegistryDatabase", Program::kCli, "ca list", "{home}/registry.db", "registry {in}", 5, 5},
      // fleetsign-device: its options and its flash.
      {"DeviceTrust", Program::kDevice, "--trust {in} --dir {batch}", "", "trust file '{in}'"},
      {"DeviceBundle", Program::kDevice, "--trust {trust} --bundle {in}", "", "bundle {in}"},
      {"DeviceCertificate", Program::kDevice, "--trust {trust} --dir {batch}",
       "{batch}/dev-01_fullchain.pem", "device certificate '{in}'"},
      {"DeviceKey", Program::kDevice, "--trust {trust} --dir {batch}", "{batch}/dev-01_key.pem",
       "device key '{in}'"},
      {"DeviceSlotFile", Program::kDevice, "--trust {trust} --dir {batch} --state {state}",
       "{state}/dev-01/slot.json", "slot file '{in}'"},
      {"DeviceSlotChain", Program::kDevice, "--trust {trust} --dir {batch} --state {state}",
       "{state}/dev-01/primary.chain.pem", "slot chain '{in}'"},
      {"DeviceSlotKey", Program::kDevice, "--trust {trust} --dir {batch} --state {state}",
       "{state}/dev-01/primary.key.pem", "slot key '{in}'"},
  };
  return all;
}

std::string substitute(std::string s, const std::map<std::string, std::string>& vars) {
  for (const auto& [key, value] : vars) {
    for (std::size_t at = s.find(key); at != std::string::npos; at = s.find(key, at)) {
      s.replace(at, key.size(), value);
      at += value.size();
    }
  }
  return s;
}

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

void make_sparse(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0) << file;
  ASSERT_EQ(::ftruncate(fd, kSparseSize), 0) << file;
  ::close(fd);
}

// ---------------------------------------------------------------------------------------------

class ResourceBounds : public ::testing::TestWithParam<Case> {
 protected:
  // One home for the whole suite: a root and an intermediate, a group, two generated devices
  // (their batch directory feeds fleetsign-device), the broker's files (`broker init` with a
  // stand-in plugin path: mosquitto is never started) and the devices' flash.
  static void SetUpTestSuite() {
    s_dir = new testing::TempDir();
    const fs::path tmp = s_dir->path();
    s_vars = {{"{home}", (tmp / "home").string()},
              {"{tmp}", tmp.string()},
              {"{batch}", (tmp / "batch").string()},
              {"{state}", (tmp / "state").string()},
              {"{trust}", (tmp / "trust.pem").string()}};
    testing::write_file(tmp / "stand-in-plugin.so", "");
    for (const std::string args :
         {"init", "ca create-root --name root --subject /CN=Bounds-Root",
          "ca create-intermediate --name int --issuer root --subject /CN=Bounds-Int",
          "enrollment group create g1 --ca int",
          "issue --ca int --generate 2 --id-pattern dev-{02} --out {batch}",
          "ca export root --out {trust}",
          "broker init --ca int --plugin {tmp}/stand-in-plugin.so"}) {
      const Child c = run_cli("{home}", args, "setup");
      ASSERT_EQ(c.status, 0) << args << "\n" << c.output;
    }
    // The devices' flash, made by a first run (it fails to connect; the slots are written first).
    const Child c = run_device("--trust {trust} --dir {batch} --state {state}", "setup", "0.2");
    ASSERT_TRUE(fs::exists(substitute("{state}/dev-01/slot.json", s_vars))) << c.output;
  }
  static void TearDownTestSuite() {
    delete s_dir;
    s_dir = nullptr;
  }

  static Child run_cli(const std::string& home, const std::string& args, const std::string& tag) {
    std::vector<std::string> argv = {testing::fleetsign_bin(), "--home", substitute(home, s_vars)};
    for (auto& w : words(substitute(args, s_vars))) argv.push_back(w);
    return run_child(argv, s_dir->path() / ("output-" + tag));
  }
  // fleetsign-device against a port where nothing listens: every case fails before connecting
  // (one that did not would run for `duration` seconds and fail the time bound).
  static Child run_device(const std::string& args, const std::string& tag,
                          const std::string& duration = "5") {
    const char* bin = std::getenv("FLEETSIGN_DEVICE_BIN");  // like FLEETSIGN_BIN for fleetsign
    std::vector<std::string> argv = {bin != nullptr ? bin : FLEETSIGN_DEVICE_BIN_PATH, "--broker",
                                     "127.0.0.1:1", "--duration", duration};
    for (auto& w : words(substitute(args, s_vars))) argv.push_back(w);
    return run_child(argv, s_dir->path() / ("output-" + tag));
  }

  // Feeds one variant ("zero" or "sparse") of the case's input and checks the outcome.
  void feed(const Case& c, const std::string& variant) {
    SCOPED_TRACE(std::string(c.name) + " with " + variant);
    auto vars = s_vars;
    vars["{variant}"] = variant;
    const fs::path place = substitute(c.place, vars);
    std::string in = place.string();
    if (in.empty()) {
      in = variant == "zero" ? "/dev/zero" : (s_dir->path() / "sparse-input").string();
    }
    vars["{in}"] = in;
    // What the case writes first, and what was at the place, put back afterwards.
    std::vector<fs::path> written;
    for (const auto& [file, text] : c.prepare) {
      written.emplace_back(substitute(file, vars));
      testing::write_file(written.back(), substitute(text, vars));
    }
    const fs::path saved = in + ".saved";
    const bool had = !place.empty() && fs::exists(fs::symlink_status(place));
    if (had) fs::rename(place, saved);
    if (!place.empty()) fs::create_directories(place.parent_path());
    if (variant == "zero" && !place.empty()) {
      fs::create_symlink("/dev/zero", place);
    } else if (variant == "sparse") {
      make_sparse(in);
    }

    const std::string args = substitute(c.args, vars);
    const Child child = c.program == Program::kCli
                            ? run_cli(substitute(c.home, vars), args, variant)
                            : run_device(args, variant);
    std::printf("  %s/%s: status %d, %.3f s, peak RSS %ld KiB\n", c.name, variant.c_str(),
                child.status, child.seconds, child.max_rss_kib);
    const std::string context = args + "\n" + child.output;
    EXPECT_LT(child.seconds, kMaxSeconds) << context;
    EXPECT_LT(child.max_rss_kib, kMaxRssKib) << context;
    if (c.outcome == Outcome::kRefused) {
      EXPECT_EQ(child.status, variant == "zero" ? c.status_zero : c.status_sparse) << context;
      const std::string where =
          c.names_in.empty() ? child.output : testing::read_file(substitute(c.names_in, vars));
      for (const auto& name : words(substitute(c.names, vars))) {
        std::istringstream parts(name);
        for (std::string part; std::getline(parts, part, ',');) {
          EXPECT_NE(where.find(part), std::string::npos) << "'" << part << "' in\n" << where;
        }
      }
    } else {
      EXPECT_EQ(child.status, 0) << context;
      EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(place))) << place;
      std::error_code ec;
      EXPECT_LT(fs::file_size(place, ec), 1u << 20) << place;
    }

    std::error_code ec;
    if (!place.empty() || variant == "sparse") fs::remove(in, ec);
    if (had) fs::rename(saved, place);
    for (const auto& f : written) fs::remove(f, ec);
  }

  static testing::TempDir* s_dir;
  static std::map<std::string, std::string> s_vars;
};

testing::TempDir* ResourceBounds::s_dir = nullptr;
std::map<std::string, std::string> ResourceBounds::s_vars;

TEST_P(ResourceBounds, DevZeroAndAOneGigabyteSparseFileAreRefusedInASecondInBoundedMemory) {
  ASSERT_NE(s_dir, nullptr);
  feed(GetParam(), "zero");
  feed(GetParam(), "sparse");
}

INSTANTIATE_TEST_SUITE_P(Inputs, ResourceBounds, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.name);
                         });

// ---------------------------------------------------------------------------------------------
// Inputs reached without a broker only through the library.

class ResourceBoundsInProcess : public ::testing::Test {
 protected:
  testing::TempDir dir;
};

// engine::read_csrs read a whole file (an ifstream into a string): now bounded like `--csr`.
TEST_F(ResourceBoundsInProcess, ReadCsrsRefusesAFileOverTheCsrLimit) {
  const fs::path big = dir.path() / "big.csr";
  testing::write_file(big, std::string(kCsrFileLimit + 1, 'A'));
  for (const fs::path& file : {big, fs::path("/dev/zero")}) {
    const Error e = testing::error_from([&] { engine::read_csrs(file); });
    EXPECT_EQ(e.code(), ErrorCode::kInputTooLarge) << e.what();
    EXPECT_NE(std::string(e.what()).find("CSR file '" + file.string() + "'"), std::string::npos)
        << e.what();
  }
}

// The key spool of an interrupted batch (OUT/.spool/BATCH/*.keys) is read on --resume; a line is
// at most 16 KiB (it was one unbounded `>>` token).
TEST_F(ResourceBoundsInProcess, KeySpoolLinesAreBounded) {
  const fs::path spool = dir.path() / "spool";
  fs::create_directories(spool);
  testing::write_file(spool / "0.keys", "0 " + std::string(4u << 20, 'A') + "\n");
  Error e = testing::error_from([&] { engine::batch::load_spooled_keys(spool); });
  EXPECT_EQ(e.code(), ErrorCode::kInputTooLarge) << e.what();
  EXPECT_NE(std::string(e.what()).find("0.keys"), std::string::npos) << e.what();
  fs::remove(spool / "0.keys");
  // Only regular files are spool files: a link to /dev/zero and a FIFO (which blocked the resume
  // for ever) are not read, and clearing the spool removes them without following the link.
  fs::create_symlink("/dev/zero", spool / "1.keys");
  ASSERT_EQ(::mkfifo((spool / "2.keys").c_str(), 0600), 0);
  testing::write_file(spool / "3.A.keys", "3 AAAA\n");
  EXPECT_EQ(engine::batch::load_spooled_keys(spool).size(), 1u);
  engine::batch::clear_spool(spool);
  EXPECT_FALSE(fs::exists(fs::symlink_status(spool / "1.keys")));
  EXPECT_FALSE(fs::exists(spool / "3.A.keys"));
  // A link in the spool directory's own place is neither read nor followed when it is cleared:
  // the files it points at stay.
  const fs::path precious = dir.path() / "precious";
  fs::create_directories(precious);
  testing::write_file(precious / "3.A.keys", "3 AAAA\n");
  fs::create_directories(dir.path() / "out" / ".spool");
  fs::create_directory_symlink(precious, dir.path() / "out" / ".spool" / "B");
  EXPECT_TRUE(engine::batch::load_spooled_keys(dir.path() / "out" / ".spool" / "B").empty());
  engine::batch::clear_spool(dir.path() / "out" / ".spool" / "B");
  EXPECT_FALSE(fs::exists(fs::symlink_status(dir.path() / "out" / ".spool" / "B")));
  EXPECT_EQ(testing::read_file(precious / "3.A.keys"), "3 AAAA\n");
}

// The device's pending key file is read during a rotation (a broker's method call): the same
// bounded read as its slots.
TEST_F(ResourceBoundsInProcess, DevicePendingKeyFileIsBounded) {
  const policy::DeviceIdRule rule;
  const auto id = device::DeviceId::check(rule, "dev-01");
  ASSERT_TRUE(id);
  const device::SlotStore store(dir.path(), id.value(), rule);
  fs::create_directories(dir.path() / "dev-01");
  const fs::path pending = dir.path() / "dev-01" / "primary.pending.json";
  fs::create_symlink("/dev/zero", pending);
  const Error e = testing::error_from([&] { store.pending(device::Slot::kPrimary); });
  EXPECT_EQ(e.code(), ErrorCode::kInputTooLarge) << e.what();
  EXPECT_NE(std::string(e.what()).find("pending key file '" + pending.string() + "'"),
            std::string::npos)
      << e.what();
}

}  // namespace
}  // namespace fleetsign
