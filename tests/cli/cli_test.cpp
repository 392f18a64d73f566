// The real `fleetsign` binary, run as a user would: --home in a temporary directory (with its own
// SoftHSM2 token), PINs from the environment or a file, never argv. Output is checked with
// openssl and Poco's JSON parser; the registry is read back through a separate connection.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "fleetsign/engine/registry.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using testing::kSoPin;
using testing::kUserPin;

using testing::make_csrs;

struct Outcome {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string quoted(const std::string& s) { return "'" + s + "'"; }

std::string env_pins(const std::string& user_pin = kUserPin) {
  return "FLEETSIGN_PIN=" + quoted(user_pin) + " FLEETSIGN_SO_PIN=" + quoted(kSoPin);
}

Poco::JSON::Object::Ptr parse_json(const std::string& text) {
  Poco::JSON::Parser parser;
  return parser.parse(text).extract<Poco::JSON::Object::Ptr>();
}

bool is_upper_hex(const std::string& s, std::size_t length) {
  return s.size() == length && std::all_of(s.begin(), s.end(), [](char c) {
           return std::isdigit(static_cast<unsigned char>(c)) || (c >= 'A' && c <= 'F');
         });
}

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = 0; (at = text.find(what, at)) != std::string::npos; at += what.size()) {
    ++n;
  }
  return n;
}

class Cli : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";

  // Runs `fleetsign --home HOME ARGS` with only the PIN variables in `env` (stdin: /dev/null).
  Outcome fleetsign(const std::string& args, const std::string& env = env_pins()) const {
    const fs::path err = dir.path() / "stderr.txt";
    Outcome o;
    o.status =
        testing::run("( env -u FLEETSIGN_PIN -u FLEETSIGN_SO_PIN -u FLEETSIGN_HOME " + env + " " +
                         quoted(testing::fleetsign_bin()) + " --home " + quoted(home.string()) +
                         " " + args + " 2>" + quoted(err.string()) + " </dev/null )",
                     &o.out);
    o.err = testing::read_file(err);
    return o;
  }

  // Runs a command that must succeed.
  Outcome ok(const std::string& args) const {
    Outcome o = fleetsign(args);
    EXPECT_EQ(o.status, 0) << "fleetsign " << args << "\nstdout: " << o.out
                           << "\nstderr: " << o.err;
    return o;
  }

  std::string path(const std::string& name) const { return (dir.path() / name).string(); }

  void make_hierarchy() {
    ok("init");
    ok("ca create-root --name root --subject " + quoted("/CN=CLI Root/O=fleetsign tests"));
    ok("ca create-intermediate --name int --issuer root --days 3000 --subject " +
       quoted("/CN=CLI Intermediate/O=fleetsign tests"));
  }

  std::string csr(const std::string& name) const {
    const fs::path dir_csrs = dir.path() / "csrs";
    if (!fs::exists(dir_csrs / name)) {
      EXPECT_TRUE(make_csrs(dir_csrs));
    }
    return (dir_csrs / name).string();
  }

  // What is on disk, through a connection of our own.
  std::pair<std::size_t, std::size_t> ca_and_audit_rows() const {
    auto registry = engine::Registry::open(home / "registry.db");
    return {registry->list_cas().size(), registry->audit_log(1'000'000).size()};
  }
};

// --- usage ---------------------------------------------------------------------------------------

TEST_F(Cli, EveryCommandHelpExitsZeroAndPrintsUsage) {
  const Outcome overview = ok("--help");
  // The command list comes from the overview, so a new command is checked without editing this.
  std::set<std::string> commands;
  std::istringstream lines(overview.out.substr(overview.out.find("commands:\n") + 10));
  for (std::string line; std::getline(lines, line) && line.rfind("  ", 0) == 0;) {
    // Words end at the column's padding, or once they fill it (a long name overflows the
    // 28-character column and is followed by a single space).
    std::string words;
    for (std::size_t pos = 2; words.size() < 28;) {
      const std::size_t end = std::min(line.find(' ', pos), line.size());
      words += (words.empty() ? "" : " ") + line.substr(pos, end - pos);
      if (end + 1 >= line.size() || line[end + 1] == ' ') {
        break;
      }
      pos = end + 1;
    }
    commands.insert(words);
  }
  for (const char* expected :
       {"init", "ca create-root", "ca create-intermediate", "ca list", "ca show", "ca export",
        "ca verification-cert", "ca verify", "issue", "audit"}) {
    EXPECT_EQ(commands.count(expected), 1u) << "overview does not list " << expected;
  }
  // A group's word: `fleetsign crl --help` lists its commands (0); `fleetsign crl` alone and
  // `fleetsign crl bogus` are usage errors that list them too.
  std::map<std::string, std::string> groups;  // every proper prefix of a command → one command
  for (const auto& words : commands) {
    for (auto space = words.find(' '); space != std::string::npos;
         space = words.find(' ', space + 1)) {
      groups.emplace(words.substr(0, space), words);
    }
  }
  for (const auto& [group, words] : groups) {
    SCOPED_TRACE(group);
    const Outcome help = fleetsign(group + " --help");
    EXPECT_EQ(help.status, 0) << help.err;
    EXPECT_NE(help.out.find("  " + words + " "), std::string::npos) << help.out;
    const Outcome bare = fleetsign(group);
    EXPECT_EQ(bare.status, 2);
    EXPECT_NE(bare.err.find("needs one of its commands"), std::string::npos) << bare.err;
    const Outcome bogus = fleetsign(group + " bogus");
    EXPECT_EQ(bogus.status, 2);
    EXPECT_NE(bogus.err.find("unknown command '" + group + " bogus'"), std::string::npos)
        << bogus.err;
  }
  for (const auto& words : commands) {
    SCOPED_TRACE(words);
    const Outcome help = fleetsign(words + " --help");
    EXPECT_EQ(help.status, 0) << help.err;
    EXPECT_NE(help.out.find("usage: fleetsign " + words), std::string::npos) << help.out;
    EXPECT_NE(help.out.find("--help"), std::string::npos) << help.out;
  }
}

// serve's status channel (FLEETSIGN_STATUS_FD=3) is written only when descriptor 3 is a pipe: a
// variable set by hand, with 3 a file, or naming another descriptor, writes nothing anywhere.
TEST_F(Cli, AStatusChannelThatIsNotServesPipeIsNeverWritten) {
  const fs::path three = dir.path() / "three.txt";
  testing::write_file(three, "");
  for (const char* value : {"3", "4", "-1", "3x", ""}) {
    const Outcome o = fleetsign("ca show no-such-ca 3>" + quoted(three.string()),
                                env_pins() + " FLEETSIGN_STATUS_FD='" + value + "'");
    EXPECT_NE(o.status, 0) << value;
    EXPECT_EQ(testing::read_file(three), "") << value;
  }
}

TEST_F(Cli, UnknownCommandExitsTwoAndNamesIt) {
  const Outcome o = fleetsign("frobnicate --now");
  EXPECT_EQ(o.status, 2);
  EXPECT_NE(o.err.find("unknown command 'frobnicate'"), std::string::npos) << o.err;
  EXPECT_EQ(fleetsign("").status, 2) << "no command is a usage error too";
}

TEST_F(Cli, SecondInitFailsAsAlreadyAHomeAndLeavesTheFirstIntact) {
  ok("init");
  const auto before = ca_and_audit_rows();
  const Outcome again = fleetsign("init", "FLEETSIGN_PIN=other-user FLEETSIGN_SO_PIN=other-so");
  EXPECT_NE(again.status, 0);
  EXPECT_NE(again.err.find("already a fleetsign home"), std::string::npos) << again.err;
  EXPECT_EQ(ca_and_audit_rows(), before);
  // The token still answers to the first PIN.
  ok("ca create-root --name root --subject /CN=Root");
}

// --- the whole flow -----------------------------------------------------------------------------

TEST_F(Cli, InitRootIntermediateIssueWritesCertAndFullchainThatOpensslVerifies) {
  make_hierarchy();
  const std::string out_dir = path("out");
  ok("issue --ca int --csr " + csr("good_p256.csr") + " --out " + out_dir);
  const fs::path cert = fs::path(out_dir) / "good-p256_cert.pem";
  const fs::path fullchain = fs::path(out_dir) / "good-p256_fullchain.pem";
  ASSERT_TRUE(fs::exists(cert));
  ASSERT_TRUE(fs::exists(fullchain));
  const std::string chain_text = testing::read_file(fullchain);
  EXPECT_EQ(count_of(chain_text, "-----BEGIN CERTIFICATE-----"), 3u)
      << "device, intermediate, root";
  EXPECT_EQ(chain_text.rfind(testing::read_file(cert), 0), 0u)
      << "fullchain starts with the device";
  ok("ca export root --out " + path("root.pem"));
  std::string verify;
  EXPECT_EQ(
      testing::run("openssl verify -x509_strict -purpose sslclient -CAfile " + path("root.pem") +
                       " -untrusted " + fullchain.string() + " " + cert.string(),
                   &verify),
      0)
      << verify;
  EXPECT_NE(verify.find(": OK"), std::string::npos) << verify;
}

TEST_F(Cli, CaShowJsonParsesWithUpperCaseHexThumbprintsThatOpensslAgreesWith) {
  make_hierarchy();
  const Outcome show = ok("ca show int --json");
  const auto obj = parse_json(show.out);
  EXPECT_EQ(obj->getValue<std::string>("name"), "int");
  EXPECT_EQ(obj->getValue<std::string>("parent"), "root");
  const auto sha1 = obj->getValue<std::string>("sha1");
  const auto sha256 = obj->getValue<std::string>("sha256");
  EXPECT_TRUE(is_upper_hex(sha1, 40)) << sha1;
  EXPECT_TRUE(is_upper_hex(sha256, 64)) << sha256;
  ok("ca export int --out " + path("int.pem"));
  for (const auto& [digest, expected] : {std::pair{"sha1", sha1}, std::pair{"sha256", sha256}}) {
    std::string fp;
    ASSERT_EQ(testing::run(
                  "openssl x509 -in " + path("int.pem") + " -noout -fingerprint -" + digest, &fp),
              0);
    fp = fp.substr(fp.find('=') + 1);
    std::erase(fp, ':');
    std::erase(fp, '\n');
    EXPECT_EQ(fp, expected) << digest;
  }
}

// --- PINs ----------------------------------------------------------------------------------------

TEST_F(Cli, WrongPinExitsFourNamesPinIncorrectAndRecordsNothing) {
  ok("init");
  const auto before = ca_and_audit_rows();
  const std::string wrong = "wrong-pin-9876";
  const Outcome o =
      fleetsign("ca create-root --name root --subject /CN=Root --json", env_pins(wrong));
  EXPECT_EQ(o.status, 4);
  EXPECT_NE(o.err.find("pin_incorrect"), std::string::npos) << o.err;
  EXPECT_EQ(parse_json(o.out)->getObject("error")->getValue<std::string>("code"), "pin_incorrect");
  EXPECT_EQ(o.err.find(wrong), std::string::npos) << "the PIN was printed";
  EXPECT_EQ(o.out.find(wrong), std::string::npos) << "the PIN was printed";
  EXPECT_EQ(ca_and_audit_rows(), before) << "CA rows / audit rows changed";
}

TEST_F(Cli, NoPinSourceAndNoTerminalIsAnErrorNamingFleetsignPin) {
  ok("init");
  const Outcome o = fleetsign("ca create-root --name root --subject /CN=Root", "");
  EXPECT_EQ(o.status, 4) << o.err;
  EXPECT_NE(o.err.find("pin_missing"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("FLEETSIGN_PIN"), std::string::npos) << o.err;
  EXPECT_EQ(ca_and_audit_rows().first, 0u);
}

TEST_F(Cli, PinFileIsUsedAndTakesPrecedenceOverTheEnvironment) {
  ok("init");
  testing::write_file(path("pin"), std::string(kUserPin) + "\n");
  testing::write_file(path("wrong-pin"), "wrong-pin-9876\n");
  const Outcome good =
      fleetsign("ca create-root --name a --subject /CN=A --pin-file " + path("pin"),
                env_pins("wrong-pin-9876"));
  EXPECT_EQ(good.status, 0) << good.err;
  const Outcome bad =
      fleetsign("ca create-root --name b --subject /CN=B --pin-file " + path("wrong-pin"));
  EXPECT_EQ(bad.status, 4) << bad.err;
  EXPECT_EQ(ca_and_audit_rows().first, 1u);
}

// --- proof of possession and repeated issuance ------------------------------------------------

TEST_F(Cli, VerificationCertThenVerifyMarksTheCaVerifiedOnlyWithTheRightCode) {
  make_hierarchy();
  const std::string code = "0A1B2C3D4E5F60718293";
  ok("ca verification-cert --ca int --code " + code + " --out " + path("vc.pem"));
  std::string subject;
  ASSERT_EQ(testing::run("openssl x509 -in " + path("vc.pem") + " -noout -subject -nameopt RFC2253",
                         &subject),
            0);
  EXPECT_NE(subject.find("subject=CN=" + code), std::string::npos) << subject;

  const Outcome wrong = fleetsign("ca verify int --code WRONGCODE --cert " + path("vc.pem"));
  EXPECT_EQ(wrong.status, 7);
  EXPECT_NE(wrong.err.find("verification_code_mismatch"), std::string::npos) << wrong.err;
  EXPECT_FALSE(parse_json(ok("ca show int --json").out)->getValue<bool>("verified"));

  const Outcome other = fleetsign("ca verify root --code " + code + " --cert " + path("vc.pem"));
  EXPECT_EQ(other.status, 7);
  EXPECT_NE(other.err.find("verification_signature_invalid"), std::string::npos) << other.err;

  ok("ca verify int --code " + code + " --cert " + path("vc.pem"));
  EXPECT_TRUE(parse_json(ok("ca show int --json").out)->getValue<bool>("verified"));
  EXPECT_FALSE(parse_json(ok("ca show root --json").out)->getValue<bool>("verified"));
}

TEST_F(Cli, IssuingTheSameDeviceTwiceWithoutReissueExitsSevenAlreadyIssued) {
  make_hierarchy();
  const std::string args = "issue --ca int --csr " + csr("good_p384.csr") + " --out " + path("out");
  const auto first = parse_json(ok(args + " --json").out);
  const Outcome again = fleetsign(args);
  EXPECT_EQ(again.status, 7);
  EXPECT_NE(again.err.find("already_issued"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("good-p384"), std::string::npos) << "names the device: " << again.err;
  EXPECT_EQ(
      engine::Registry::open(home / "registry.db")->count_certs("", engine::CertState::kIntent), 0)
      << "a refusal must spend no serial";
  const auto reissued = parse_json(ok(args + " --reissue --json").out);
  EXPECT_NE(reissued->getValue<std::string>("serial"), first->getValue<std::string>("serial"));
}

TEST_F(Cli, GroupOptionIssuesFromThePolicyGroupsIntermediateWithItsValidity) {
  make_hierarchy();
  // A policy group names the intermediate and a 30-day device validity.
  const fs::path policy = home / "policy.json";
  auto doc = parse_json(testing::read_file(policy));
  Poco::JSON::Object::Ptr line_a = new Poco::JSON::Object;
  line_a->set("intermediate", "int");
  line_a->set("device_days", 30);
  Poco::JSON::Object::Ptr groups = new Poco::JSON::Object;
  groups->set("line-a", line_a);
  doc->set("groups", groups);
  std::ostringstream text;
  doc->stringify(text, 2);
  testing::write_file(policy, text.str());
  const auto single = parse_json(ok("issue --group line-a --csr " + csr("good_p256.csr") +
                                    " --out " + path("single") + " --json")
                                     .out);
  const auto days = [&](const Poco::JSON::Object::Ptr& j) {
    std::tm nb{}, na{};
    strptime(j->getValue<std::string>("not_before").c_str(), "%Y-%m-%dT%H:%M:%SZ", &nb);
    strptime(j->getValue<std::string>("not_after").c_str(), "%Y-%m-%dT%H:%M:%SZ", &na);
    return (timegm(&na) - timegm(&nb)) / 86400;
  };
  EXPECT_EQ(days(single), 30);
  const Outcome batch = ok("issue --group line-a --generate 3 --id-pattern g-{02} --out " +
                           path("batch") + " --json");
  const auto rec = engine::Registry::open(home / "registry.db")->certs_of_device("g-01");
  ASSERT_EQ(rec.size(), 1u) << batch.out;
  EXPECT_EQ(rec[0].ca_name, "int");
  EXPECT_EQ((rec[0].not_after - rec[0].not_before) / 86400, 30);
  const Outcome unknown =
      fleetsign("issue --group nope --generate 1 --id-pattern x-{02} --out " + path("x"));
  EXPECT_EQ(unknown.status, 2);
  EXPECT_NE(unknown.err.find("'nope'"), std::string::npos) << unknown.err;
}

}  // namespace
}  // namespace fleetsign
