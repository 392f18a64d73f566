// One CSR-directory batch holding every defect the fixtures know (tests/data/make_csrs.sh), a
// duplicate device ID, and a device that already holds a valid certificate: each bad input gets
// exactly one rejects.csv line with the exact ErrorCode name, the good ones are issued, and the
// command exits 3 ("completed with rejects"). --reissue issues the already-certified device again.
#include <gtest/gtest.h>
#include <openssl/pem.h>

#include "batch_support.hpp"

namespace fleetsign::batchtest {
namespace {

// File in the CSR directory -> the code its reject line must carry.
const std::map<std::string, std::string> kBadInputs{
    {"bad_rsa1024.csr", "key_rejected"},
    {"bad_secp256k1.csr", "key_rejected"},
    {"bad_p521.csr", "key_rejected"},
    {"bad_rsa_e3.csr", "key_rejected"},    // RSA public exponent 3
    {"bad_ec_point.csr", "key_rejected"},  // a P-256 key that is not on the curve
    {"bad_id_space.csr", "device_id_invalid"},
    {"bad_no_cn.csr", "device_id_invalid"},
    {"bad_two_cn.csr", "device_id_invalid"},
    {"bad_signature.csr", "csr_signature_invalid"},
    {"bad_malformed_pem.csr", "csr_malformed"},
    {"bad_truncated.der", "csr_malformed"},
    // A copy of good_p256.csr, sorted after it: the second time the batch sees good-p256.
    {"good_p256_copy.csr", "duplicate_in_batch"},
    // A new key for a device that holds a valid certificate from an earlier batch.
    {"prior_device_new_key.csr", "already_issued"},
};

// File -> device ID (the CSR's CN) of the inputs that must be issued.
const std::map<std::string, std::string> kGoodInputs{
    {"good_p256.csr", "good-p256"},       {"good_p384.csr", "good-p384"},
    {"good_rsa2048.csr", "good-rsa2048"}, {"good_ca_true.csr", "good-ca-true"},
    {"good_san.csr", "good-san"},         {"good_with_o.csr", "good-with-o"},
};

// Device IDs of the inputs whose CSRs are valid but may be refused for what the registry knows.
const std::map<std::string, std::string> kValidCsrs{
    {"good_p256_copy.csr", "good-p256"},
    {"prior_device_new_key.csr", "prior-device"},
};

class BatchRejects : public ::testing::Test {
 protected:
  void SetUp() override {
    fleet.make_hierarchy();
    std::string output;
    ASSERT_TRUE(testing::make_csrs(csrs, &output)) << output;
    // The earlier batch that certifies "prior-device".
    fs::create_directories(fleet.path("prior"));
    testing::write_file(fleet.path("prior") / "prior.csr", make_csr_pem("prior-device"));
    IssueArgs prior;
    prior.batch_id = "prior";
    prior.csr_dir = fleet.path("prior");
    prior.out = fleet.path("out-prior");
    fleet.ok(prior.args());
    fs::copy_file(csrs / "good_p256.csr", csrs / "good_p256_copy.csr");
    testing::write_file(csrs / "prior_device_new_key.csr", make_csr_pem("prior-device"));
  }

  // Every file of the CSR directory as an input of the batch, with the device ID when it has one.
  std::vector<Input> inputs() const {
    std::vector<Input> in;
    for (const auto& entry : fs::directory_iterator(csrs)) {
      const std::string name = entry.path().filename().string();
      auto good = kGoodInputs.find(name);
      auto valid = kValidCsrs.find(name);
      const std::string device = good != kGoodInputs.end()   ? good->second
                                 : valid != kValidCsrs.end() ? valid->second
                                                             : "";
      in.push_back(Input{device, entry.path().string()});
    }
    return in;
  }

  // Runs the batch over the CSR directory and checks the reject table and the invariants.
  BatchFacts run_batch(const std::string& batch_id, bool reissue) {
    IssueArgs a;
    a.batch_id = batch_id;
    a.csr_dir = csrs;
    a.out = fleet.path("out-" + batch_id);
    a.reissue = reissue;
    const Outcome o = fleet.run(a.args());
    EXPECT_EQ(o.exit_code(), 3) << "completed with rejects\n" << o.describe();
    EXPECT_NE(o.out.find("rejects  " + a.out.string() + "/rejects.csv"), std::string::npos)
        << o.out;
    Expected e;
    e.batch_id = batch_id;
    e.out = a.out;
    e.inputs = inputs();
    const BatchFacts f = check_batch(fleet, e);
    // The directory holds exactly the table's files, so the table is the whole batch.
    EXPECT_EQ(e.inputs.size(), kBadInputs.size() + kGoodInputs.size());
    return f;
  }

  void expect_rejected(const BatchFacts& f, const std::map<std::string, std::string>& table) {
    for (const auto& [file, code] : table) {
      auto it = f.reject_code_by_source.find((csrs / file).string());
      if (it == f.reject_code_by_source.end()) {
        ADD_FAILURE() << file << " was not rejected (expected " << code << ")";
        continue;
      }
      EXPECT_EQ(it->second, code) << file;
    }
    EXPECT_EQ(f.reject_code_by_source.size(), table.size());
  }

  void expect_issued(const BatchFacts& f, const std::string& device) {
    EXPECT_EQ(f.issued_by_device.count(device), 1u) << device << " was not issued";
  }

  Fleet fleet;
  fs::path csrs = fleet.path("csrs");
};

TEST_F(BatchRejects, EveryBadInputGetsOneRejectWithItsExactCodeAndTheGoodOnesAreIssued) {
  const BatchFacts f = run_batch("rejects", false);
  expect_rejected(f, kBadInputs);
  for (const auto& [file, device] : kGoodInputs) expect_issued(f, device);
  EXPECT_EQ(f.issued, static_cast<std::int64_t>(kGoodInputs.size()));
  EXPECT_EQ(f.issued_by_device.count("prior-device"), 0u);
  // The rejects name the device where the CSR named one.
  const auto lines = lines_of(testing::read_file(fleet.path("out-rejects") / "rejects.csv"));
  std::map<std::string, std::string> device_of;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const auto v = csv_fields(lines[i]);
    if (v.size() == 4) device_of[fs::path(v[0]).filename().string()] = v[1];
  }
  EXPECT_EQ(device_of["good_p256_copy.csr"], "good-p256");
  EXPECT_EQ(device_of["prior_device_new_key.csr"], "prior-device");
}

// The CN is read for the report even when the CSR fails a later check (its key, its signature),
// so rejects.csv names the device; a CSR that names no single CN leaves the column empty.
TEST_F(BatchRejects, RejectsNameTheDeviceWhenTheCsrNamesOneEvenIfItFailsItsChecks) {
  run_batch("named", false);
  const auto lines = lines_of(testing::read_file(fleet.path("out-named") / "rejects.csv"));
  std::map<std::string, std::string> device_of;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const auto v = csv_fields(lines[i]);
    if (v.size() == 4) device_of[fs::path(v[0]).filename().string()] = v[1];
  }
  EXPECT_EQ(device_of["bad_rsa1024.csr"], "bad-rsa1024");
  EXPECT_EQ(device_of["bad_rsa_e3.csr"], "bad-rsa-e3");
  EXPECT_EQ(device_of["bad_signature.csr"], "bad-signature");
  EXPECT_EQ(device_of["bad_id_space.csr"], "bad id");
  EXPECT_EQ(device_of["bad_no_cn.csr"], "");
  EXPECT_EQ(device_of["bad_two_cn.csr"], "");
}

TEST_F(BatchRejects, ReissueCertifiesTheDeviceThatAlreadyHoldsACertificate) {
  std::string prior_serial;
  {
    auto registry = fleet.registry();
    const auto prior = registry->certs_of_device("prior-device");
    ASSERT_EQ(prior.size(), 1u);
    prior_serial = prior[0].serial;
  }
  const BatchFacts f = run_batch("reissue", true);
  auto table = kBadInputs;
  table.erase("prior_device_new_key.csr");
  expect_rejected(f, table);
  expect_issued(f, "prior-device");
  for (const auto& [file, device] : kGoodInputs) expect_issued(f, device);
  EXPECT_EQ(f.issued, static_cast<std::int64_t>(kGoodInputs.size()) + 1);
  auto it = f.issued_by_device.find("prior-device");
  if (it != f.issued_by_device.end()) {
    EXPECT_NE(it->second.serial, prior_serial) << "a new certificate, under a new serial";
    // The new certificate certifies the new key, from prior_device_new_key.csr.
    const X509Ptr cert = parse_cert_der(to_string(it->second.der));
    ASSERT_TRUE(cert);
    const auto csr_pem = testing::read_file(csrs / "prior_device_new_key.csr");
    BIO* bio = BIO_new_mem_buf(csr_pem.data(), static_cast<int>(csr_pem.size()));
    X509_REQ* req = PEM_read_bio_X509_REQ(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    ASSERT_NE(req, nullptr);
    EXPECT_EQ(EVP_PKEY_eq(X509_REQ_get0_pubkey(req), X509_get0_pubkey(cert.get())), 1);
    X509_REQ_free(req);
  }
  auto registry = fleet.registry();
  EXPECT_EQ(registry->certs_of_device("prior-device").size(), 2u)
      << "the earlier certificate is kept";
}

}  // namespace
}  // namespace fleetsign::batchtest
