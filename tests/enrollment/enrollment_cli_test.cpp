// The real binary: enrollment, device, ca import, issue --self-signed, expiry report and export
// commands, their --json output (parsed with Poco), exit statuses, and openssl's view of what we
// wrote.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <sstream>

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

class EnrollmentCli : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";
  testing::Binary bin{home};

  std::string path(const std::string& name) const { return (dir.path() / name).string(); }

  void SetUp() override {
    bin.ok("init");
    bin.ok("ca create-root --name root --subject " +
           quoted("/CN=Enrollment Root/O=fleetsign tests"));
    bin.ok("ca create-intermediate --name int --issuer root --days 3000 --subject " +
           quoted("/CN=Enrollment Int"));
  }

  // A device certificate from `ca` through `issue --csr`, the key made by openssl.
  void issue(const std::string& id, const std::string& lot = "L1", const std::string& ca = "int") {
    const std::string csr = path(id + ".csr");
    ASSERT_EQ(
        testing::run(
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null "
            "-subj /CN=" +
            id + " -out " + quoted(csr)),
        0);
    bin.ok("issue --ca " + ca + " --csr " + quoted(csr) + " --lot " + lot + " --reissue --out " +
           quoted(path("out")));
  }

  void set_policy(int device_days) {
    const fs::path file = home / "policy.json";
    auto p = json(testing::read_file(file));
    p->getObject("validity")->set("device_days", device_days);
    std::ostringstream s;
    p->stringify(s, 2);
    testing::write_file(file, s.str());
  }

  // openssl makes an external CA: a key we never see in the token.
  void external_ca(const std::string& name, const std::string& cn) {
    ASSERT_EQ(testing::run(
                  "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " +
                  quoted(path(name + ".key")) + " -subj " + quoted("/CN=" + cn) +
                  " -days 900 -addext basicConstraints=critical,CA:TRUE "
                  "-addext keyUsage=critical,keyCertSign,cRLSign -out " +
                  quoted(path(name + ".pem"))),
              0);
  }
};

TEST_F(EnrollmentCli, GroupCommandsPrintJsonAndRefuseBadInput) {
  auto g = json(bin.ok("enrollment group create g1 --ca int --json").out);
  EXPECT_EQ(g->getValue<std::string>("name"), "g1");
  EXPECT_EQ(g->getValue<std::string>("status"), "enabled");
  EXPECT_EQ(g->getObject("primary")->getValue<std::string>("ca"), "int");
  EXPECT_TRUE(g->isNull("secondary"));
  g = json(bin.ok("enrollment group set-slot g1 secondary --ca root --json").out);
  EXPECT_EQ(g->getObject("secondary")->getValue<std::string>("ca"), "root");
  g = json(bin.ok("enrollment group clear-slot g1 primary --json").out);
  EXPECT_TRUE(g->isNull("primary"));
  EXPECT_EQ(json(bin.ok("enrollment group disable g1 --json").out)->getValue<std::string>("status"),
            "disabled");
  bin.ok("enrollment group enable g1");
  const auto shown = bin.ok("enrollment group show g1");
  EXPECT_NE(shown.out.find("secondary  root"), std::string::npos) << shown.out;
  EXPECT_EQ(json(bin.ok("enrollment group list --json").out)->getArray("groups")->size(), 1u);

  auto o = bin.run("enrollment group create g2 --ca nope --json");
  EXPECT_EQ(o.status, 2);
  EXPECT_EQ(error_code(o), "not_found");
  EXPECT_NE(o.err.find("nope"), std::string::npos);
  o = bin.run("enrollment group create 'bad name' --ca int --json");
  EXPECT_EQ(error_code(o), "invalid_argument");
  EXPECT_EQ(bin.run("enrollment group set-slot g1 tertiary --ca int").status, 2);
  EXPECT_EQ(bin.run("enrollment group set-slot g1 primary --ca int --cert x.pem").status, 2);
  EXPECT_EQ(error_code(bin.run("enrollment group create g1 --ca int --json")), "already_exists");

  const auto audit = bin.ok("audit --json").out;
  for (const char* action :
       {"enrollment.group.create", "enrollment.group.set-slot", "enrollment.group.clear-slot",
        "enrollment.group.disable", "enrollment.group.enable"}) {
    EXPECT_NE(audit.find(action), std::string::npos) << action;
  }
}

TEST_F(EnrollmentCli, SelfSignedCertificateBacksAnIndividualEnrollment) {
  const auto made =
      json(bin.ok("issue --self-signed --id ss-1 --out " + quoted(path("ss")) + " --days 30 --json")
               .out);
  const std::string cert = made->getValue<std::string>("cert"),
                    key = made->getValue<std::string>("key");
  EXPECT_EQ(cert, path("ss") + "/ss-1_cert.pem");
  EXPECT_EQ(fs::status(key).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  std::string out;
  ASSERT_EQ(testing::run("openssl verify -x509_strict -CAfile " + quoted(cert) + " " + quoted(cert),
                         &out),
            0)
      << out;
  ASSERT_EQ(
      testing::run("openssl x509 -in " + quoted(cert) + " -noout -fingerprint -sha256 | tr -d ':'",
                   &out),
      0);
  EXPECT_NE(out.find(made->getValue<std::string>("sha256")), std::string::npos) << out;
  ASSERT_EQ(
      testing::run("openssl x509 -in " + quoted(cert) + " -noout -fingerprint -sha1 | tr -d ':'",
                   &out),
      0);
  EXPECT_NE(out.find(made->getValue<std::string>("sha1")), std::string::npos) << out;
  EXPECT_NE(bin.ok("audit").out.find("cert.self-signed"), std::string::npos);

  auto ie =
      json(bin.ok("enrollment individual create ss-1 --cert " + quoted(cert) + " --json").out);
  EXPECT_EQ(ie->getObject("primary")->getValue<std::string>("sha256"),
            made->getValue<std::string>("sha256"));
  EXPECT_TRUE(ie->getObject("primary")->getValue<bool>("certificate"));
  // CN ≠ registration ID: refused, naming the file.
  auto o = bin.run("enrollment individual create other --cert " + quoted(cert) + " --json");
  EXPECT_EQ(o.status, 2);
  EXPECT_EQ(error_code(o), "invalid_argument");
  EXPECT_NE(o.err.find(cert), std::string::npos);
  EXPECT_EQ(error_code(bin.run("enrollment individual create t-1 --thumbprint abc --json")),
            "invalid_argument");
  EXPECT_EQ(error_code(bin.run("enrollment individual create 'bad id' --thumbprint " +
                               std::string(64, 'a') + " --json")),
            "device_id_invalid");
  std::string colons;
  for (int i = 0; i < 32; ++i) colons += (i ? ":" : "") + std::string("ab");
  ie = json(
      bin.ok("enrollment individual set-slot ss-1 secondary --thumbprint " + colons + " --json")
          .out);
  EXPECT_FALSE(ie->getObject("secondary")->getValue<bool>("certificate"));
  bin.ok("enrollment individual disable ss-1");
  EXPECT_EQ(
      json(bin.ok("enrollment individual show ss-1 --json").out)->getValue<std::string>("status"),
      "disabled");
  EXPECT_NE(bin.ok("audit").out.find("enrollment.individual.disable"), std::string::npos);
  EXPECT_NE(bin.ok("enrollment individual list").out.find("(thumbprint)"), std::string::npos);
}

TEST_F(EnrollmentCli, ImportedCaIsVerifiableButNeverSigns) {
  external_ca("sup", "Supplier Root");
  auto ca = json(bin.ok("ca import sup --cert " + quoted(path("sup.pem")) + " --json").out);
  EXPECT_EQ(ca->getValue<std::string>("key_uri"), "");
  EXPECT_EQ(ca->getValue<std::string>("key_type"), "external-ec-p256");
  EXPECT_FALSE(ca->getValue<bool>("verified"));
  // Proof of possession made by openssl with the supplier's key.
  ASSERT_EQ(
      testing::run("openssl req -new -key " + quoted(path("sup.key")) + " -subj /CN=CODE123 -out " +
                   quoted(path("v.csr")) + " && openssl x509 -req -in " + quoted(path("v.csr")) +
                   " -CA " + quoted(path("sup.pem")) + " -CAkey " + quoted(path("sup.key")) +
                   " -days 1 -out " + quoted(path("v.pem"))),
      0);
  bin.ok("ca verify sup --code CODE123 --cert " + quoted(path("v.pem")));
  EXPECT_TRUE(json(bin.ok("ca show sup --json").out)->getValue<bool>("verified"));
  issue("dev-1");  // makes dev-1.csr
  auto o = bin.run("issue --ca sup --reissue --csr " + quoted(path("dev-1.csr")) + " --out " +
                   quoted(path("o")) + " --json");
  EXPECT_EQ(o.status, 4);
  EXPECT_EQ(error_code(o), "key_not_found");
  EXPECT_NE(o.err.find("CA sup is external: its key is not in this token"), std::string::npos);
  // A leaf is not a CA; the slot by --cert imports and references.
  bin.ok("issue --self-signed --id leaf-1 --out " + quoted(path("ss")));
  EXPECT_EQ(error_code(
                bin.run("ca import leaf --cert " + quoted(path("ss/leaf-1_cert.pem")) + " --json")),
            "invalid_argument");
  bin.ok("enrollment group create sup-g --ca int");
  external_ca("sup2", "Supplier Root 2");
  auto g = json(bin.ok("enrollment group set-slot sup-g secondary --cert " +
                       quoted(path("sup2.pem")) + " --json")
                    .out);
  EXPECT_TRUE(g->getObject("secondary")->getValue<bool>("external"));
}

TEST_F(EnrollmentCli, DeviceListFiltersByGroupLotAndLimit) {
  issue("dev-1", "L1");
  issue("dev-2", "L2");
  issue("dev-3", "L1", "root");
  bin.ok("enrollment group create g --ca int");
  auto list = json(bin.ok("device list --group g --json").out);
  EXPECT_EQ(list->getValue<int>("count"), 2);
  EXPECT_EQ(list->getArray("devices")->getObject(0)->getValue<std::string>("group"), "g");
  EXPECT_EQ(json(bin.ok("device list --lot L1 --json").out)->getValue<int>("count"), 2);
  EXPECT_EQ(json(bin.ok("device list --limit 1 --json").out)->getValue<int>("count"), 1);
  EXPECT_EQ(json(bin.ok("device list --json").out)->getValue<int>("count"), 3);
  EXPECT_EQ(error_code(bin.run("device list --group nope --json")), "not_found");
  const auto dev = json(bin.ok("device show dev-1 --json").out);
  EXPECT_EQ(dev->getObject("primary")->getValue<std::string>("state"), "issued");
  EXPECT_TRUE(dev->isNull("secondary"));
  EXPECT_EQ(dev->getValue<std::string>("lot"), "L1");
  EXPECT_NE(bin.ok("device list").out.find("REGISTRATION ID"), std::string::npos);
  EXPECT_EQ(error_code(bin.run("device show ghost --json")), "not_found");
}

// Every list pages the same way: --limit N, then --after the last page's next_after, until
// next_after is null; each item comes exactly once, in the list's order.
TEST_F(EnrollmentCli, ListsPageWithLimitAndAfterAndEachItemComesOnce) {
  for (const char* id : {"dev-3", "dev-1", "dev-5", "dev-2", "dev-4"}) issue(id);
  std::vector<std::string> seen;
  std::string after;
  int pages = 0;
  for (; pages < 10; ++pages) {
    const auto page = json(
        bin.ok("device list --limit 2 --json" + (after.empty() ? "" : " --after " + after)).out);
    const auto devices = page->getArray("devices");
    EXPECT_LE(devices->size(), 2u);
    for (std::size_t i = 0; i < devices->size(); ++i) {
      seen.push_back(
          devices->getObject(static_cast<unsigned>(i))->getValue<std::string>("registration_id"));
    }
    if (page->isNull("next_after")) break;
    after = page->getValue<std::string>("next_after");
    EXPECT_EQ(after, seen.back());
  }
  EXPECT_EQ(pages, 2);  // 2 + 2 + 1
  EXPECT_EQ(seen, (std::vector<std::string>{"dev-1", "dev-2", "dev-3", "dev-4", "dev-5"}));
  // A full last page says so: nothing follows dev-5.
  const auto last = json(bin.ok("device list --limit 2 --after dev-3 --json").out);
  EXPECT_EQ(last->getValue<int>("count"), 2);
  EXPECT_TRUE(last->isNull("next_after"));
  EXPECT_TRUE(json(bin.ok("device list --json").out)->isNull("next_after"));
  EXPECT_NE(bin.ok("device list --limit 1").out.find("more: --after dev-1"), std::string::npos);

  bin.ok("enrollment group create g-b --ca int");
  bin.ok("enrollment group create g-a --ca root");
  bin.ok("enrollment group create g-c --ca int");
  const auto groups = json(bin.ok("enrollment group list --limit 1 --after g-a --json").out);
  ASSERT_EQ(groups->getArray("groups")->size(), 1u);
  EXPECT_EQ(groups->getArray("groups")->getObject(0)->getValue<std::string>("name"), "g-b");
  EXPECT_EQ(groups->getValue<std::string>("next_after"), "g-b");
  // A cursor that names no item of a list keyed by name is refused, not read as "from the start".
  EXPECT_EQ(error_code(bin.run("enrollment group list --after g-zz --json")), "not_found");
  EXPECT_EQ(error_code(bin.run("ca list --after nope --json")), "not_found");
  const auto cas = json(bin.ok("ca list --limit 1 --json").out);
  EXPECT_EQ(cas->getArray("cas")->size(), 1u);
  EXPECT_FALSE(cas->isNull("next_after"));
  EXPECT_EQ(error_code(bin.run("device list --limit -1 --json")), "usage");
  EXPECT_EQ(error_code(bin.run("device list --after '' --json")), "usage");
}

TEST_F(EnrollmentCli, ExpiryReportExitStatusFollowsTheThresholds) {
  issue("far");  // 365 days: nothing due within 30
  auto o = bin.run("expiry report --json");
  EXPECT_EQ(o.status, 0) << o.err;
  EXPECT_EQ(json(o.out)->getValue<int>("status"), 0);
  set_policy(20);
  issue("soon");
  o = bin.run("expiry report --json");
  EXPECT_EQ(o.status, 1) << o.err;
  auto r = json(o.out);
  EXPECT_EQ(r->getObject("summary")->getObject("buckets")->getValue<int>("30d"), 1);
  EXPECT_EQ(r->getArray("due")->getObject(0)->getValue<std::string>("registration_id"), "soon");
  set_policy(5);
  issue("very-soon");
  o = bin.run("expiry report");
  EXPECT_EQ(o.status, 2);
  EXPECT_NE(o.out.find("very-soon"), std::string::npos);
  EXPECT_NE(o.out.find("status 2"), std::string::npos);
  r = json(bin.run("expiry report --within 400 --limit 1 --json").out);
  EXPECT_EQ(r->getObject("summary")->getValue<int>("total"), 3);
  EXPECT_EQ(r->getArray("due")->size(), 1u);
  EXPECT_EQ(r->getArray("groups")->getObject(0)->getValue<std::string>("group"), "(no group)");
  EXPECT_EQ(error_code(bin.run("expiry report --group nope --json")), "not_found");
}

TEST_F(EnrollmentCli, ExportsParseAndWarnAboutThumbprintOnlyEnrollments) {
  bin.ok("enrollment group create g --ca int");
  issue("dev-1");
  bin.ok("enrollment individual create thumb-1 --thumbprint " + std::string(64, 'c'));
  auto o = bin.ok("export dps --out " + quoted(path("dps.json")) + " --json");
  EXPECT_NE(o.err.find("thumb-1"), std::string::npos);
  EXPECT_EQ(json(o.out)->getValue<int>("skipped_thumbprint_only"), 1);
  const auto doc = json(testing::read_file(path("dps.json")));
  EXPECT_EQ(
      doc->getArray("enrollmentGroups")->getObject(0)->getValue<std::string>("enrollmentGroupId"),
      "g");
  EXPECT_FALSE(fs::exists(path("dps.json.tmp")));
  bin.ok("export iothub --out " + quoted(path("hub.jsonl")));
  std::istringstream lines(testing::read_file(path("hub.jsonl")));
  std::map<std::string, std::string> type;
  for (std::string line; std::getline(lines, line);) {
    const auto l = json(line);
    type[l->getValue<std::string>("id")] =
        l->getObject("authentication")->getValue<std::string>("type");
  }
  EXPECT_EQ(type, (std::map<std::string, std::string>{{"dev-1", "certificateAuthority"},
                                                      {"thumb-1", "selfSigned"}}));
  EXPECT_EQ(bin.run("export dps").status, 2);  // --out is required
}

}  // namespace
}  // namespace fleetsign

namespace fleetsign {
namespace {

// The cloud rule end to end: the root proves possession, its intermediate sits in the group's
// slot without a proof of its own, and the intermediate's devices are admitted.
TEST_F(EnrollmentCli, AnIntermediateUnderAVerifiedRootAdmitsItsDevicesWithoutANote) {
  bin.ok("ca verification-cert --ca root --code ROOT-POP --out " + quoted(path("pop.pem")));
  bin.ok("ca verify root --code ROOT-POP --cert " + quoted(path("pop.pem")));
  const auto created = bin.ok("enrollment group create fleet --ca int");
  EXPECT_EQ(created.err.find("not verified"), std::string::npos) << created.err;
  issue("dev-cloud");
  const std::string cert = quoted(path("out") + "/dev-cloud_cert.pem");
  for (const std::string flags : {"", " --openssl"}) {
    const auto o = bin.run("auth check --json --chain " + cert + flags);
    EXPECT_EQ(o.status, 0) << flags << o.out << o.err;
    EXPECT_EQ(json(o.out)->getValue<std::string>("rule"), "enrollment-group") << o.out;
    EXPECT_EQ(json(o.out)->getValue<std::string>("enrollment"), "fleet") << o.out;
  }
}

}  // namespace
}  // namespace fleetsign
