// Cloud export: the output is parsed with Poco::JSON and every object's field names are compared
// with the exact set Azure's REST APIs define (DPS EnrollmentGroup, IndividualEnrollment,
// BulkEnrollmentOperation; IoT Hub ExportImportDevice).
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <sstream>

#include "enrollment_support.hpp"
#include "fleetsign/engine/cloud_export.hpp"
#include "fleetsign/engine/enrollment.hpp"

namespace fleetsign {
namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

std::set<std::string> keys(const Object::Ptr& o) {
  std::set<std::string> out;
  for (const auto& [k, v] : *o) out.insert(k);
  return out;
}

using Keys = std::set<std::string>;

Object::Ptr parse(const std::string& text) {
  Poco::JSON::Parser parser;
  return parser.parse(text).extract<Object::Ptr>();
}

class Export : public ::testing::Test {
 protected:
  testing::TestHome th;
  engine::EnrollmentService svc{*th.registry, th.policy, th.clock};
  void SetUp() override { th.make_hierarchy(); }

  Object::Ptr dps(const std::string& group, engine::ExportSummary* summary = nullptr) {
    std::ostringstream out;
    const auto s = engine::export_dps(*th.registry, group, out);
    if (summary != nullptr) *summary = s;
    return parse(out.str());
  }
  std::vector<Object::Ptr> iothub(const std::string& group,
                                  engine::ExportSummary* summary = nullptr) {
    std::ostringstream out;
    const auto s = engine::export_iothub(*th.registry, group, out);
    if (summary != nullptr) *summary = s;
    std::vector<Object::Ptr> lines;
    std::istringstream in(out.str());
    for (std::string line; std::getline(in, line);) lines.push_back(parse(line));
    return lines;
  }
};

TEST_F(Export, DpsDocumentUsesAzureFieldNamesForGroupsAndIndividualEnrollments) {
  svc.create_group("line-1", "int1", "root");
  const auto cert = testing::make_cert("dev-1", false, 30);
  svc.create_individual("dev-1", engine::credential_from_cert("dev-1", cert.der), std::nullopt);
  svc.set_individual_enabled("dev-1", false);
  engine::ExportSummary s;
  const auto doc = dps("", &s);
  EXPECT_EQ(keys(doc), (Keys{"enrollmentGroups", "individualEnrollments"}));
  const auto groups = doc->getArray("enrollmentGroups");
  ASSERT_EQ(groups->size(), 1u);
  const auto g = groups->getObject(0);
  EXPECT_EQ(keys(g),
            (Keys{"enrollmentGroupId", "attestation", "provisioningStatus", "reprovisionPolicy"}));
  EXPECT_EQ(g->getValue<std::string>("enrollmentGroupId"), "line-1");
  EXPECT_EQ(g->getValue<std::string>("provisioningStatus"), "enabled");
  EXPECT_EQ(keys(g->getObject("reprovisionPolicy")),
            (Keys{"updateHubAssignment", "migrateDeviceData"}));
  EXPECT_TRUE(g->getObject("reprovisionPolicy")->getValue<bool>("updateHubAssignment"));
  const auto att = g->getObject("attestation");
  EXPECT_EQ(keys(att), (Keys{"type", "x509"}));
  EXPECT_EQ(att->getValue<std::string>("type"), "x509");
  const auto signing = att->getObject("x509")->getObject("signingCertificates");
  ASSERT_TRUE(signing);
  EXPECT_EQ(keys(att->getObject("x509")), (Keys{"signingCertificates"}));
  EXPECT_EQ(keys(signing), (Keys{"primary", "secondary"}));
  EXPECT_EQ(keys(signing->getObject("primary")), (Keys{"certificate"}));
  const std::string pem = signing->getObject("primary")->getValue<std::string>("certificate");
  testing::TempDir dir;
  testing::write_file(dir.path() / "p.pem", pem);
  EXPECT_EQ(engine::read_certificates(dir.path() / "p.pem").front(), th.cas->get("int1").cert_der);

  const auto bulk = doc->getObject("individualEnrollments");
  EXPECT_EQ(keys(bulk), (Keys{"mode", "enrollments"}));
  EXPECT_EQ(bulk->getValue<std::string>("mode"), "create");
  ASSERT_EQ(bulk->getArray("enrollments")->size(), 1u);
  const auto ie = bulk->getArray("enrollments")->getObject(0);
  EXPECT_EQ(keys(ie), (Keys{"registrationId", "deviceId", "attestation", "provisioningStatus",
                            "reprovisionPolicy"}));
  EXPECT_EQ(ie->getValue<std::string>("registrationId"), "dev-1");
  EXPECT_EQ(ie->getValue<std::string>("deviceId"), "dev-1");
  EXPECT_EQ(ie->getValue<std::string>("provisioningStatus"), "disabled");
  const auto x509 = ie->getObject("attestation")->getObject("x509");
  EXPECT_EQ(keys(x509), (Keys{"clientCertificates"}));
  EXPECT_EQ(keys(x509->getObject("clientCertificates")), (Keys{"primary"}));
  testing::write_file(dir.path() / "c.pem", x509->getObject("clientCertificates")
                                                ->getObject("primary")
                                                ->getValue<std::string>("certificate"));
  EXPECT_EQ(engine::read_certificates(dir.path() / "c.pem").front(), cert.der);
  EXPECT_EQ(s.groups, 1);
  EXPECT_EQ(s.individuals, 1);
}

TEST_F(Export, DpsUsesCaReferencesForExternalCas) {
  const auto supplier = testing::make_cert("Supplier Root", true, 3650);
  engine::import_external_ca(*th.registry, th.clock, "supplier", supplier.der);
  svc.create_group("sup", "supplier", "int1");
  svc.set_group_enabled("sup", false);
  const auto g = dps("sup")->getArray("enrollmentGroups")->getObject(0);
  const auto x509 = g->getObject("attestation")->getObject("x509");
  EXPECT_EQ(keys(x509), (Keys{"caReferences"}));
  EXPECT_EQ(x509->getObject("caReferences")->getValue<std::string>("primary"), "supplier");
  EXPECT_EQ(x509->getObject("caReferences")->getValue<std::string>("secondary"), "int1");
  EXPECT_EQ(g->getValue<std::string>("provisioningStatus"), "disabled");
}

TEST_F(Export, DpsSkipsThumbprintOnlyEnrollmentsAndCountsThem) {
  svc.create_individual("dev-1", engine::credential_from_thumbprint(std::string(64, 'a')),
                        std::nullopt);
  const auto cert = testing::make_cert("dev-2", false, 30);
  svc.create_individual("dev-2", engine::credential_from_cert("dev-2", cert.der),
                        engine::credential_from_thumbprint(std::string(64, 'b')));
  svc.create_individual(
      "dev-3", engine::credential_from_cert("dev-3", testing::make_cert("dev-3", false, 30).der),
      std::nullopt);
  engine::ExportSummary s;
  const auto doc = dps("", &s);
  EXPECT_EQ(doc->getObject("individualEnrollments")->getArray("enrollments")->size(), 1u);
  EXPECT_EQ(s.skipped_thumbprint_only, 2);
  EXPECT_EQ(s.individuals, 1);
  ASSERT_EQ(s.warnings.size(), 2u);
  EXPECT_NE(s.warnings[0].find("dev-1"), std::string::npos);
}

TEST_F(Export, DpsGroupFilterExportsOneGroupAndNoIndividuals) {
  svc.create_group("a", "int1", "");
  svc.create_group("b", "root", "");
  svc.create_individual(
      "dev-3", engine::credential_from_cert("dev-3", testing::make_cert("dev-3", false, 30).der),
      std::nullopt);
  const auto doc = dps("b");
  ASSERT_EQ(doc->getArray("enrollmentGroups")->size(), 1u);
  EXPECT_EQ(
      doc->getArray("enrollmentGroups")->getObject(0)->getValue<std::string>("enrollmentGroupId"),
      "b");
  EXPECT_EQ(doc->getObject("individualEnrollments")->getArray("enrollments")->size(), 0u);
  EXPECT_EQ(testing::error_from([&] { dps("nope"); }).code(), ErrorCode::kNotFound);
}

TEST_F(Export, IotHubLinesAreExportImportDevicesWithTheRightAuthentication) {
  svc.create_group("g", "int1", "");
  testing::issue_device(th, "int1", "grouped-1");
  testing::issue_device(th, "int1", "both");  // under the group and individually enrolled
  testing::issue_device(th, "root", "no-group");
  const auto cert = testing::make_cert("both", false, 30);
  svc.create_individual("both", engine::credential_from_cert("both", cert.der),
                        engine::credential_from_thumbprint(std::string(64, 'e')));
  svc.create_individual("thumb-only", engine::credential_from_thumbprint(std::string(64, 'f')),
                        std::nullopt);
  svc.set_individual_enabled("thumb-only", false);
  engine::ExportSummary s;
  const auto lines = iothub("", &s);
  std::map<std::string, Object::Ptr> by_id;
  for (const auto& l : lines) {
    EXPECT_EQ(keys(l), (Keys{"id", "importMode", "status", "authentication"}));
    EXPECT_EQ(l->getValue<std::string>("importMode"), "create");
    by_id[l->getValue<std::string>("id")] = l;
  }
  ASSERT_EQ(by_id.size(), 3u);  // no-group is not exported
  EXPECT_EQ(lines.size(), 3u);  // "both" once: the individual enrollment wins
  const auto both = by_id["both"]->getObject("authentication");
  EXPECT_EQ(keys(both), (Keys{"type", "x509Thumbprint"}));
  EXPECT_EQ(both->getValue<std::string>("type"), "selfSigned");
  EXPECT_EQ(keys(both->getObject("x509Thumbprint")),
            (Keys{"primaryThumbprint", "secondaryThumbprint"}));
  EXPECT_EQ(both->getObject("x509Thumbprint")->getValue<std::string>("primaryThumbprint"),
            engine::thumbprint_sha256(cert.der));
  EXPECT_EQ(both->getObject("x509Thumbprint")->getValue<std::string>("secondaryThumbprint"),
            std::string(64, 'E'));
  EXPECT_EQ(by_id["thumb-only"]->getValue<std::string>("status"), "disabled");
  EXPECT_EQ(keys(by_id["thumb-only"]->getObject("authentication")->getObject("x509Thumbprint")),
            (Keys{"primaryThumbprint"}));
  const auto ca = by_id["grouped-1"]->getObject("authentication");
  EXPECT_EQ(keys(ca), (Keys{"type"}));
  EXPECT_EQ(ca->getValue<std::string>("type"), "certificateAuthority");
  EXPECT_EQ(s.devices, 1);
  EXPECT_EQ(s.individuals, 2);
  EXPECT_EQ(s.not_enrolled, 1);
}

TEST_F(Export, IotHubGroupFilterAndDisabledGroups) {
  svc.create_group("g", "int1", "");
  svc.create_group("r", "root", "");
  testing::issue_device(th, "int1", "dev-1");
  testing::issue_device(th, "root", "dev-2");
  svc.set_group_enabled("g", false);
  svc.create_individual("ind", engine::credential_from_thumbprint(std::string(64, 'a')),
                        std::nullopt);
  auto lines = iothub("g");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]->getValue<std::string>("id"), "dev-1");
  EXPECT_EQ(lines[0]->getValue<std::string>("status"), "disabled");
  lines = iothub("r");  // the chain of dev-1 leads to root too
  EXPECT_EQ(lines.size(), 2u);
  EXPECT_EQ(testing::error_from([&] { iothub("nope"); }).code(), ErrorCode::kNotFound);
}

}  // namespace
}  // namespace fleetsign
