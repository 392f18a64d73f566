// Bad inputs are refused with the exact ErrorCode and a message that names the file and the
// cause: batch directories and bundles made by the real CLI, then damaged; odd certificates made
// by openssl. Also the device's flash (SlotStore) and the program's argument checks.
#include <gtest/gtest.h>

#include <fstream>

#include "device_fixture.hpp"
#include "fleetsign/device/fleet.hpp"
#include "fleetsign/device/identity.hpp"
#include "fleetsign/device/state.hpp"

namespace fleetsign::testing {
namespace {

using device::load_batch_dir;
using device::load_bundle;

class Inputs : public ::testing::Test {
 protected:
  const DevicePki& pki = DevicePki::get();
  TempDir dir;
  policy::DeviceIdRule rule;

  // A copy of the batch directory to damage.
  fs::path batch_copy() {
    const fs::path copy = dir.path() / "batch";
    fs::copy(pki.batch, copy);
    return copy;
  }
  fs::path bundle_with(const std::string& text) {
    const fs::path file = dir.path() / "bundle.pem";
    write_file(file, text);
    return file;
  }
  // A self-signed certificate and key with subject `subject`, by openssl.
  void openssl_cert(const std::string& subject, const fs::path& cert, const fs::path& key) {
    std::string out;
    ASSERT_EQ(
        run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout '" +
                key.string() + "' -out '" + cert.string() + "' -days 2 -subj '" + subject + "'",
            &out),
        0)
        << out;
  }
  template <typename Fn>
  void expect_error(Fn&& fn, ErrorCode code, std::initializer_list<std::string> needles) {
    const Error e = error_from(fn);
    EXPECT_EQ(e.code(), code) << e.what();
    for (const auto& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "'" << needle << "' not in: " << e.what();
    }
  }
};

TEST_F(Inputs, LoadsEveryDeviceOfABatchDirectorySortedById) {
  const auto devices = load_batch_dir(pki.batch, rule);
  ASSERT_EQ(devices.size(), 3u);
  EXPECT_EQ(devices[0].id().str(), "dev-01");
  EXPECT_EQ(devices[2].id().str(), "dev-03");
  const std::string manifest = read_file(pki.batch / "manifest.csv");
  for (const auto& d : devices) {
    EXPECT_NE(manifest.find(d.id().str() + "," + d.cert().serial + ","), std::string::npos);
    EXPECT_NE(manifest.find(d.cert().sha256), std::string::npos);
    // The full chain (leaf + intermediate + root) is what the device presents.
    EXPECT_EQ(count_of(d.chain_pem(), "BEGIN CERTIFICATE"), 3u);
  }
}

TEST_F(Inputs, LoadsEveryDeviceOfABundle) {
  const auto devices = load_bundle(pki.bundle / "bundle.pem", rule);
  ASSERT_EQ(devices.size(), 2u);
  EXPECT_EQ(devices[0].id().str(), "bun-01");
  EXPECT_EQ(devices[1].id().str(), "bun-02");
}

TEST_F(Inputs, MissingKeyFileIsRefusedNamingIt) {
  const fs::path b = batch_copy();
  fs::remove(b / "dev-02_key.pem");
  expect_error([&] { load_batch_dir(b, rule); }, ErrorCode::kIo,
               {(b / "dev-02_key.pem").string(), "missing"});
}

TEST_F(Inputs, KeyOfAnotherDeviceIsAMismatch) {
  const fs::path b = batch_copy();
  fs::copy_file(b / "dev-01_key.pem", b / "dev-02_key.pem", fs::copy_options::overwrite_existing);
  expect_error([&] { load_batch_dir(b, rule); }, ErrorCode::kKeyCertMismatch,
               {"dev-02_key.pem", "does not match the certificate of dev-02"});
}

TEST_F(Inputs, CertificateWhoseCnIsNotADeviceIdIsRefused) {
  const fs::path b = batch_copy();
  openssl_cert("/CN=bad id!", b / "dev-09_cert.pem", b / "dev-09_key.pem");
  expect_error([&] { load_batch_dir(b, rule); }, ErrorCode::kDeviceIdInvalid,
               {"dev-09_cert.pem", "CN is not a valid device ID", "' '"});
}

TEST_F(Inputs, CertificateWithoutCnIsRefused) {
  const fs::path b = batch_copy();
  openssl_cert("/O=no common name", b / "dev-09_cert.pem", b / "dev-09_key.pem");
  expect_error([&] { load_batch_dir(b, rule); }, ErrorCode::kDeviceIdInvalid,
               {"dev-09_cert.pem", "has no CN"});
}

TEST_F(Inputs, DeviceIdsAreCheckedWithThePolicysRule) {
  policy::DeviceIdRule short_ids;
  short_ids.max_length = 5;
  expect_error([&] { load_batch_dir(pki.batch, short_ids); }, ErrorCode::kDeviceIdInvalid,
               {"dev-01", "the maximum is 5"});
  EXPECT_FALSE(device::DeviceId::check(rule, std::string(65, 'a')));  // a CN holds 64
  EXPECT_TRUE(device::DeviceId::check(rule, std::string(64, 'a')));
  EXPECT_FALSE(device::DeviceId::check(rule, "a/b"));
  EXPECT_FALSE(device::DeviceId::check(rule, "#"));
}

TEST_F(Inputs, CnThatIsNotTheFileNamesDeviceIsRefused) {
  const fs::path b = batch_copy();
  fs::copy_file(b / "dev-01_cert.pem", b / "dev-07_cert.pem");
  fs::copy_file(b / "dev-01_key.pem", b / "dev-07_key.pem");
  expect_error([&] { load_batch_dir(b, rule); }, ErrorCode::kDeviceIdInvalid,
               {"dev-07_cert.pem", "'dev-01' is not the file's device dev-07"});
}

TEST_F(Inputs, FileNameThatIsNotADeviceIdIsRefused) {
  const fs::path b = batch_copy();
  fs::copy_file(b / "dev-01_cert.pem", b / "dev 1_cert.pem");
  expect_error([&] { load_batch_dir(b, rule); }, ErrorCode::kDeviceIdInvalid,
               {"dev 1_cert.pem", "file name does not start with a valid device ID"});
}

TEST_F(Inputs, EncryptedKeyIsRefused) {
  const fs::path b = batch_copy();
  std::string out;
  ASSERT_EQ(run("openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:secret -in '" +
                    (b / "dev-01_key.pem").string() + "' -out '" + (b / "enc.pem").string() + "'",
                &out),
            0)
      << out;
  fs::rename(b / "enc.pem", b / "dev-01_key.pem");
  expect_error([&] { load_batch_dir(b, rule); }, ErrorCode::kKeyRejected,
               {"dev-01_key.pem", "encrypted"});
}

TEST_F(Inputs, CertificateFileOfGarbageIsRefused) {
  const fs::path b = batch_copy();
  write_file(b / "dev-03_fullchain.pem",
             "-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
             "-----END CERTIFICATE-----\n");
  expect_error([&] { load_batch_dir(b, rule); }, ErrorCode::kCertificateMalformed,
               {"dev-03_fullchain.pem"});
}

TEST_F(Inputs, HugeKeyFileIsRefusedAtTheLimit) {
  const fs::path b = batch_copy();
  write_file(b / "dev-01_key.pem", std::string(device::kKeyFileLimit + 1, 'A'));
  expect_error([&] { load_batch_dir(b, rule); }, ErrorCode::kInputTooLarge,
               {"dev-01_key.pem", "65536"});
}

TEST_F(Inputs, DirectoryWithoutDevicesOrMissingIsRefused) {
  fs::create_directories(dir.path() / "empty");
  expect_error([&] { load_batch_dir(dir.path() / "empty", rule); }, ErrorCode::kInvalidArgument,
               {"holds no device"});
  expect_error([&] { load_batch_dir(dir.path() / "nope", rule); }, ErrorCode::kIo,
               {"nope", "not a directory"});
}

TEST_F(Inputs, BundleOfGarbageIsRefusedNamingTheLine) {
  expect_error([&] { load_bundle(bundle_with("\nhello world\n"), rule); },
               ErrorCode::kCertificateMalformed, {"bundle.pem:2: text outside a PEM block"});
  expect_error([&] { load_bundle(bundle_with(""), rule); }, ErrorCode::kInvalidArgument,
               {"holds no device"});
  expect_error([&] { load_bundle(dir.path() / "absent.pem", rule); }, ErrorCode::kIo,
               {"absent.pem", "cannot be opened"});
}

TEST_F(Inputs, BundleWithACertificateButNoKeyIsRefused) {
  const std::string cert = read_file(pki.batch / "dev-01_cert.pem");
  expect_error([&] { load_bundle(bundle_with(cert), rule); }, ErrorCode::kCertificateMalformed,
               {"bundle.pem:1: certificate has no PRIVATE KEY after it"});
  const std::string key = read_file(pki.batch / "dev-01_key.pem");
  expect_error([&] { load_bundle(bundle_with(key + cert), rule); },
               ErrorCode::kCertificateMalformed, {"private key follows no certificate"});
}

TEST_F(Inputs, BundleWithTruncatedOrOversizedBlocksIsRefused) {
  const std::string cert = read_file(pki.batch / "dev-01_cert.pem");
  expect_error([&] { load_bundle(bundle_with(cert.substr(0, cert.size() / 2)), rule); },
               ErrorCode::kCertificateMalformed, {"has no END line"});
  expect_error([&] { load_bundle(bundle_with(std::string(70 * 1024, 'x')), rule); },
               ErrorCode::kInputTooLarge, {"line 1 is longer than 65536 bytes"});
  std::string huge = "-----BEGIN CERTIFICATE-----\n";
  for (int i = 0; i < 2000; ++i) huge += std::string(64, 'A') + "\n";
  expect_error([&] { load_bundle(bundle_with(huge), rule); }, ErrorCode::kInputTooLarge,
               {"bundle.pem:1: PEM block larger than"});
}

TEST_F(Inputs, BundleNamingADeviceTwiceIsRefused) {
  const std::string pair =
      read_file(pki.batch / "dev-01_cert.pem") + read_file(pki.batch / "dev-01_key.pem");
  expect_error([&] { load_bundle(bundle_with(pair + pair), rule); }, ErrorCode::kDuplicateInBatch,
               {"device dev-01 appears twice"});
}

TEST_F(Inputs, TrustFileWithoutCertificatesIsRefused) {
  device::FleetOptions o;
  o.broker_host = "localhost";
  o.trust_file = dir.path() / "trust.pem";
  write_file(o.trust_file, "nothing here\n");
  expect_error([&] { device::DeviceFleet fleet(std::move(o)); }, ErrorCode::kCertificateMalformed,
               {"trust file", "trust.pem"});
}

// --- the device's flash ----------------------------------------------------------------------

TEST_F(Inputs, SlotStoreRefusesToStoreAnotherDevicesCertificate) {
  auto devices = load_batch_dir(pki.batch, rule);
  device::SlotStore store(dir.path() / "state", devices[0].id(), rule);
  const std::string sha256 = devices[0].cert().sha256;
  const auto [credential, slot] =
      store.load_or_create(std::move(load_batch_dir(pki.batch, rule)[0]));
  EXPECT_EQ(slot, device::Slot::kPrimary);
  EXPECT_EQ(credential.cert().sha256, sha256);
  // Read back from the files it wrote, checked again.
  EXPECT_EQ(store.read(device::Slot::kPrimary).cert().sha256, sha256);
  expect_error(
      [&] { store.write(device::Slot::kSecondary, devices[1].chain_pem(), devices[1].key_pem()); },
      ErrorCode::kDeviceIdInvalid, {"dev-02", "cannot go into dev-01's secondary slot"});
  EXPECT_FALSE(store.has(device::Slot::kSecondary));
  expect_error(
      [&] { store.write(device::Slot::kSecondary, devices[0].chain_pem(), devices[1].key_pem()); },
      ErrorCode::kKeyCertMismatch, {"does not match"});
  EXPECT_FALSE(store.has(device::Slot::kSecondary));
}

TEST_F(Inputs, SlotStoreSwitchesSlotsAndRefusesAnUnknownActiveSlot) {
  auto devices = load_batch_dir(pki.batch, rule);
  device::SlotStore store(dir.path() / "state", devices[0].id(), rule);
  expect_error([&] { store.load_or_create(std::move(devices[1])); }, ErrorCode::kDeviceIdInvalid,
               {"cannot hold dev-02's credential"});
  EXPECT_FALSE(store.exists());
  store.load_or_create(std::move(load_batch_dir(pki.batch, rule)[0]));
  store.write(device::Slot::kSecondary, devices[0].chain_pem(), devices[0].key_pem());
  store.set_active(device::Slot::kSecondary);
  EXPECT_EQ(store.load_or_create(std::move(load_batch_dir(pki.batch, rule)[0])).second,
            device::Slot::kSecondary);
  // "trial" is a JSON true or nothing: any other value is no trial, and never an unusable file.
  store.set_active(device::Slot::kSecondary, true);
  EXPECT_TRUE(store.active_state().trial);
  for (const char* other : {R"("no")", R"("0x")", "null", "{}", "1", "false"}) {
    write_file(store.dir() / "slot.json",
               std::string(R"({"active":"secondary","trial":)") + other + "}");
    EXPECT_FALSE(store.active_state().trial) << other;
    EXPECT_EQ(store.active(), device::Slot::kSecondary) << other;
  }
  store.set_active(device::Slot::kSecondary);
  EXPECT_FALSE(store.active_state().trial);
  write_file(store.dir() / "slot.json", R"({"active":"tertiary"})");
  expect_error([&] { store.active(); }, ErrorCode::kCertificateMalformed,
               {"slot.json", "'tertiary' is neither primary nor secondary"});
  write_file(store.dir() / "slot.json", "{");
  expect_error([&] { store.active(); }, ErrorCode::kCertificateMalformed, {"slot.json"});
}

// read() decodes a slot again only when its files changed since this store last wrote or read
// it: the same files give the same decoded credential, and any other text is checked in full.
TEST_F(Inputs, SlotStoreReusesADecodedSlotOnlyWhileItsFilesAreUnchanged) {
  auto devices = load_batch_dir(pki.batch, rule);
  device::SlotStore store(dir.path() / "state", devices[0].id(), rule);
  store.load_or_create(std::move(load_batch_dir(pki.batch, rule)[0]));
  const auto sec = device::Slot::kSecondary;
  store.write(sec, devices[0].chain_pem(), devices[0].key_pem());
  const auto first = store.read(sec).parsed();
  EXPECT_EQ(store.read(sec).parsed(), first) << "unchanged files: decoded once";
  const fs::path chain = store.dir() / "secondary.chain.pem",
                 key = store.dir() / "secondary.key.pem";
  write_file(chain, devices[0].chain_pem() + "\n\n\n");  // padding, as a write in place leaves
  EXPECT_EQ(store.read(sec).parsed(), first);
  EXPECT_NE(store.read(device::Slot::kPrimary).parsed(), first) << "another slot";
  // Another key behind the store's back: the slot is checked again, not taken from memory.
  write_file(key, devices[1].key_pem());
  expect_error([&] { store.read(sec); }, ErrorCode::kKeyCertMismatch, {"does not match"});
  write_file(chain, devices[1].chain_pem());
  expect_error([&] { store.read(sec); }, ErrorCode::kDeviceIdInvalid,
               {"the certificate is for dev-02, not for dev-01"});
  write_file(chain, devices[0].chain_pem());
  write_file(key, devices[0].key_pem());
  EXPECT_EQ(store.read(sec).cert().sha256, devices[0].cert().sha256);
}

// --- the program's arguments ------------------------------------------------------------------

TEST_F(Inputs, ProgramRefusesBadArgumentsWithUsageAndExitStatus) {
  const std::string base = "--broker localhost:1 --trust " + pki.server_ca.string() + " ";
  struct Case {
    std::string args;
    int status;
    std::string needle;
  } cases[] = {
      {"--dir " + pki.batch.string(), 2, "--broker is required"},
      {base, 2, "exactly one of --dir and --bundle"},
      {base + "--dir a --bundle b", 2, "exactly one of --dir and --bundle"},
      {base + "--dir " + pki.batch.string() + " --offline-fraction 1.5", 2,
       "--offline-fraction '1.5': must be a number in 0..1"},
      {base + "--dir " + pki.batch.string() + " --count 4", 2, "the batch has 3 devices"},
      {base + "--dir " + (dir.path() / "none").string(), 8, "none: not a directory"},
      {"--broker localhost --trust x --dir y", 2, "--broker 'localhost': expected HOST:PORT"},
      {base + "--dir " + pki.batch.string() + " --dps 'a/b'", 2, "ID scope"},
      {base + "--frobnicate", 2, "unknown argument '--frobnicate'"},
  };
  for (const auto& c : cases) {
    std::string out;
    EXPECT_EQ(run_device(c.args, &out), c.status) << c.args << "\n" << out;
    EXPECT_NE(out.find(c.needle), std::string::npos) << c.args << "\n" << out;
  }
  std::string help;
  EXPECT_EQ(run_device("--help", &help), 0);
  EXPECT_NE(help.find("usage: fleetsign-device --broker HOST:PORT"), std::string::npos);
}

}  // namespace
}  // namespace fleetsign::testing
