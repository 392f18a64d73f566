// The default run at scale: 20,000 generated devices in one batch, checked with tools we did not
// write (openssl verify -x509_strict -purpose sslclient over a spread sample, openssl pkcs12 for
// .pfx files) and with the batch invariants over every certificate and key.
//
// --pfx runs on 2,000 devices, not 20,000: PKCS#12 with PBKDF2 costs ~3 ms of CPU per device, about
// 65 s for 20,000 on a 2-core runner, so the 20,000 batch runs without --pfx.
#include <gtest/gtest.h>

#include <set>

#include "batch_support.hpp"

namespace fleetsign::batchtest {
namespace {

// Writes the root and intermediate certificates of the fleet to root.pem and int.pem.
void export_cas(Fleet& fleet) {
  auto registry = fleet.registry();
  for (const char* name : {"root", "int"}) {
    const auto ca = registry->find_ca(name);
    ASSERT_TRUE(ca.has_value()) << name;
    testing::write_file(fleet.path(std::string(name) + ".pem"),
                        der_to_pem(ca->cert_der, "CERTIFICATE"));
  }
}

std::string shell_quote(const std::string& s) { return "'" + s + "'"; }

TEST(BatchScale, TwentyThousandGeneratedDevicesVerifyStrictlyWithPrivateKeys) {
  constexpr std::int64_t kDevices = 20'000;
  Fleet fleet;
  fleet.make_hierarchy();
  IssueArgs a;
  a.batch_id = "scale";
  a.generate = kDevices;
  a.id_pattern = "sensor-{06}";
  a.out = fleet.path("out");
  fleet.ok(a.args());

  // The manifest: a header and one line per device.
  EXPECT_EQ(lines_of(testing::read_file(a.out / "manifest.csv")).size(),
            static_cast<std::size_t>(kDevices) + 1);

  // openssl verify on the first and last device and a spread sample between (every 397th: the
  // step is prime to the chunk size, so the sample lands at every position within chunks).
  export_cas(fleet);
  std::set<std::int64_t> sample{1, kDevices};
  for (std::int64_t n = 1; n <= kDevices; n += 397) sample.insert(n);
  std::string command = "openssl verify -x509_strict -purpose sslclient -CAfile " +
                        shell_quote(fleet.path("root.pem").string()) + " -untrusted " +
                        shell_quote(fleet.path("int.pem").string());
  std::vector<std::string> files;
  for (const auto n : sample) {
    char id[32];
    std::snprintf(id, sizeof id, "sensor-%06lld", static_cast<long long>(n));
    files.push_back((a.out / (std::string(id) + "_cert.pem")).string());
    command += " " + shell_quote(files.back());
  }
  std::string output;
  EXPECT_EQ(testing::run(command, &output), 0) << output;
  for (const auto& f : files) {
    EXPECT_NE(output.find(f + ": OK"), std::string::npos) << f << "\n" << output.substr(0, 2000);
  }
  EXPECT_GE(files.size(), 50u);

  // openssl's view of a key/certificate pair at both ends: the same SubjectPublicKeyInfo.
  for (const char* id : {"sensor-000001", "sensor-020000"}) {
    const std::string base = (a.out / id).string();
    std::string from_key, from_cert;
    ASSERT_EQ(testing::run("openssl pkey -pubout -in " + shell_quote(base + "_key.pem"), &from_key),
              0);
    ASSERT_EQ(testing::run("openssl x509 -pubkey -noout -in " + shell_quote(base + "_cert.pem"),
                           &from_cert),
              0);
    EXPECT_EQ(from_key, from_cert) << id;
  }

  // Every certificate and every key (mode 0600, matching its certificate): the invariants.
  Expected e;
  e.batch_id = a.batch_id;
  e.out = a.out;
  e.inputs = generated_inputs(a);
  e.generated_keys = true;
  EXPECT_EQ(check_batch(fleet, e).issued, kDevices);
}

TEST(BatchScale, PfxFilesOpenWithTheirPasswordAndNotWithAnother) {
  constexpr std::int64_t kDevices = 2'000;
  Fleet fleet;
  fleet.make_hierarchy();
  testing::write_file(fleet.path("pfx-password"), "correct horse battery staple\n");
  testing::write_file(fleet.path("wrong-password"), "Tr0ub4dor&3\n");
  IssueArgs a;
  a.batch_id = "pfx";
  a.generate = kDevices;
  a.id_pattern = "meter-{04}";
  a.out = fleet.path("out");
  a.pfx = true;
  a.pfx_password_file = fleet.path("pfx-password");
  fleet.ok(a.args());

  Expected e;
  e.batch_id = a.batch_id;
  e.out = a.out;
  e.inputs = generated_inputs(a);
  e.generated_keys = true;
  e.pfx = true;  // every issued device has {id}.pfx, mode 0600
  const BatchFacts f = check_batch(fleet, e);
  EXPECT_EQ(f.issued, kDevices);

  for (const char* id : {"meter-0001", "meter-0257", "meter-0999", "meter-1500", "meter-2000"}) {
    SCOPED_TRACE(id);
    const std::string pfx = shell_quote((a.out / (std::string(id) + ".pfx")).string());
    std::string output;
    EXPECT_EQ(testing::run("openssl pkcs12 -in " + pfx + " -noout -passin file:" +
                               shell_quote(fleet.path("pfx-password").string()),
                           &output),
              0)
        << output;
    EXPECT_NE(testing::run("openssl pkcs12 -in " + pfx + " -noout -passin file:" +
                               shell_quote(fleet.path("wrong-password").string()),
                           &output),
              0)
        << "opened with a wrong password";
    // The certificate inside is the one the registry recorded for the device.
    ASSERT_EQ(testing::run("openssl pkcs12 -in " + pfx + " -nokeys -clcerts -passin file:" +
                               shell_quote(fleet.path("pfx-password").string()) +
                               " 2>/dev/null | openssl x509 -noout -serial",
                           &output),
              0)
        << output;
    auto it = f.issued_by_device.find(id);
    ASSERT_NE(it, f.issued_by_device.end());
    ASSERT_EQ(output.rfind("serial=", 0), 0u) << output;
    EXPECT_EQ(normalize_serial(output.substr(7, output.find_last_not_of("\n") - 6)),
              normalize_serial(it->second.serial));
  }
}

}  // namespace
}  // namespace fleetsign::batchtest
