// The rotation methods (createCsr, installCertificate, reprovision) on a device's real flash
// (SlotStore in a temp dir), with CSRs signed by the real `fleetsign issue --csr` against the
// test PKI's token. The device the handlers see is a MethodContext over a real credential from a
// CLI-issued batch; what it is connected with follows reprovision as the fleet's client does.
// Also the cost of one rotation per device, with and without fsync.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <map>
#include <memory>

#include "device_fixture.hpp"
#include "fleetsign/device/identity.hpp"
#include "fleetsign/device/methods.hpp"
#include "fleetsign/device/state.hpp"

namespace fleetsign::testing {
namespace {

using device::Slot;
using Clock = std::chrono::steady_clock;

Poco::JSON::Object::Ptr parse(const std::string& text) {
  Poco::JSON::Parser parser;
  return parser.parse(text).extract<Poco::JSON::Object::Ptr>();
}

std::string json(std::initializer_list<std::pair<std::string, std::string>> fields) {
  Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  for (const auto& [k, v] : fields) o.set(k, v);
  std::ostringstream out;
  o.stringify(out);
  return out.str();
}

// A device as the fleet's client presents it to a handler: its flash and the credential it runs.
class Device final : public device::MethodContext {
 public:
  Device(const fs::path& state, device::Credential initial, bool sync = true)
      : m_store(state, initial.id(), {}) {
    m_store.set_sync(sync);
    auto [credential, slot] = m_store.load_or_create(std::move(initial));
    m_id.emplace(credential.id());
    m_cert = credential.cert();
    m_slot = slot;
  }
  const device::DeviceId& device_id() const override { return *m_id; }
  const device::CertInfo& certificate() const override { return m_cert; }
  Slot slot() const override { return m_slot; }
  device::SlotStore* store() override { return &m_store; }
  void reconnect_after_answer(bool reprovision) override {
    EXPECT_TRUE(reprovision);
    ++reconnects;
    // What the client does once the answer is out: reload the active slot.
    const Slot active = m_store.active();
    m_cert = m_store.read(active).cert();
    m_slot = active;
  }
  int reconnects = 0;

 private:
  device::SlotStore m_store;
  std::optional<device::DeviceId> m_id;
  device::CertInfo m_cert;
  Slot m_slot = Slot::kPrimary;
};

// Every file of a directory with its content: "changes nothing in flash" is this, unchanged.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    out[e.path().filename().string()] = read_file(e.path());
  }
  return out;
}

// The public key of a PEM CSR (DER of its SubjectPublicKeyInfo), after checking what a CSR of
// this device must be: signature valid, subject exactly CN=id, no attributes or extensions.
std::string csr_public_key(const std::string& pem, const std::string& id) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509_REQ* req = PEM_read_bio_X509_REQ(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (req == nullptr) {
    ADD_FAILURE() << "not a PEM CSR: " << pem;
    return "";
  }
  EXPECT_EQ(X509_REQ_verify(req, X509_REQ_get0_pubkey(req)), 1);
  X509_NAME* subject = X509_REQ_get_subject_name(req);
  EXPECT_EQ(X509_NAME_entry_count(subject), 1);
  char cn[128] = {};
  X509_NAME_get_text_by_NID(subject, NID_commonName, cn, sizeof cn);
  EXPECT_EQ(std::string(cn), id);
  EXPECT_EQ(X509_REQ_get_attr_count(req), 0);
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(X509_REQ_get0_pubkey(req), &der);
  std::string key(reinterpret_cast<char*>(der), static_cast<std::size_t>(n));
  OPENSSL_free(der);
  X509_REQ_free(req);
  return key;
}

// A pending key file as another writer would leave it, holding `key_pem`.
std::string pending_json(const std::string& job, const std::string& key_pem) {
  return json({{"jobId", job}, {"keyType", "ec-p256"}, {"key", key_pem}});
}

// `key` in PEM: PKCS#8 ("PRIVATE KEY"), or the traditional encoding ("EC PRIVATE KEY").
std::string key_pem(EVP_PKEY* key, bool traditional) {
  BIO* bio = BIO_new(BIO_s_mem());
  const int ok =
      traditional
          ? PEM_write_bio_PrivateKey_traditional(bio, key, nullptr, nullptr, 0, nullptr, nullptr)
          : PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  EXPECT_EQ(ok, 1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<std::size_t>(n));
  BIO_free(bio);
  return out;
}

class Rotation : public ::testing::Test {
 protected:
  const DevicePki& pki = DevicePki::get();
  TempDir dir;
  device::MethodRegistry registry;
  int signed_count = 0;

  void SetUp() override {
    device::add_builtin_methods(registry);
    device::add_rotation_methods(registry);
  }
  device::Credential batch_device(const std::string& id) {
    for (auto& c : device::load_batch_dir(pki.batch, {})) {
      if (c.id().str() == id) return std::move(c);
    }
    throw std::runtime_error("no " + id + " in the batch");
  }
  device::MethodResponse call(Device& d, const std::string& name, const std::string& payload) {
    return registry.dispatch(d, name, payload);
  }
  // The CSR signed by the real CLI: the device's new chain (leaf first, then the intermediate).
  std::string sign(const std::string& csr, const std::string& id) {
    const fs::path in = dir.path() / ("csr-" + std::to_string(++signed_count) + ".pem");
    const fs::path out = dir.path() / ("signed-" + std::to_string(signed_count));
    write_file(in, csr);
    std::string log;
    EXPECT_EQ(fleetsign_cli(pki.home,
                            "issue --ca int --reissue --csr '" + in.string() + "' --out '" +
                                out.string() + "'",
                            &log),
              0)
        << log;
    return read_file(out / (id + "_fullchain.pem"));
  }
  std::string create(Device& d, const std::string& job, const std::string& slot = "secondary") {
    const auto r =
        call(d, "createCsr", json({{"jobId", job}, {"slot", slot}, {"keyType", "ec-p256"}}));
    EXPECT_EQ(r.status, 200) << r.payload;
    return r.status == 200 ? parse(r.payload)->getValue<std::string>("csr") : "";
  }
  device::MethodResponse install(Device& d, const std::string& job, const std::string& chain,
                                 const std::string& slot = "secondary") {
    return call(d, "installCertificate", json({{"jobId", job}, {"slot", slot}, {"chain", chain}}));
  }
  device::MethodResponse reprovision(Device& d, const std::string& job, const std::string& sha,
                                     const std::string& slot = "secondary") {
    return call(d, "reprovision", json({{"jobId", job}, {"slot", slot}, {"sha256", sha}}));
  }
};

TEST_F(Rotation, CreateCsrKeepsOneKeyPerJobInFlashAndANewJobReplacesIt) {
  Device d(dir.path() / "state", batch_device("dev-01"));
  const fs::path flash = dir.path() / "state" / "dev-01";
  const std::string a1 = csr_public_key(create(d, "job-a"), "dev-01");
  struct stat st {};
  ASSERT_EQ(::stat((flash / "secondary.pending.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(parse(read_file(flash / "secondary.pending.json"))->getValue<std::string>("jobId"),
            "job-a");
  const std::string a2 = csr_public_key(create(d, "job-a"), "dev-01");
  EXPECT_FALSE(a1.empty());
  EXPECT_EQ(a1, a2);  // a repeated call: the same key
  const std::string b = csr_public_key(create(d, "job-b"), "dev-01");
  EXPECT_NE(a1, b);  // another job: a new key, replacing job-a's
  EXPECT_EQ(parse(read_file(flash / "secondary.pending.json"))->getValue<std::string>("jobId"),
            "job-b");
  EXPECT_EQ(csr_public_key(create(d, "job-a"), "dev-01") == a1, false);
  // The private key never leaves the device: no answer carries a PRIVATE KEY block.
  const auto r = call(d, "createCsr", json({{"jobId", "job-c"}, {"slot", "secondary"}}));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.payload.find("PRIVATE KEY"), std::string::npos);
  EXPECT_EQ(parse(r.payload)->getValue<std::string>("keyType"), "ec-p256");  // the default
  const auto p384 = call(d, "createCsr",
                         json({{"jobId", "job-d"}, {"slot", "secondary"}, {"keyType", "ec-p384"}}));
  ASSERT_EQ(p384.status, 200) << p384.payload;
  EXPECT_NE(csr_public_key(parse(p384.payload)->getValue<std::string>("csr"), "dev-01").size(),
            a1.size());
  // The same job cannot change its key type.
  EXPECT_EQ(call(d, "createCsr", json({{"jobId", "job-d"}, {"slot", "secondary"}})).status, 409);
}

TEST_F(Rotation, AFullRotationSwitchesSlotsAndEveryRepeatAnswersTheSame) {
  const fs::path flash = dir.path() / "state" / "dev-02";
  Device d(dir.path() / "state", batch_device("dev-02"));
  const std::string old_sha = d.certificate().sha256;
  const std::string chain = sign(create(d, "job-1"), "dev-02");
  ASSERT_FALSE(chain.empty());

  const auto i1 = install(d, "job-1", chain);
  ASSERT_EQ(i1.status, 200) << i1.payload;
  const auto installed = parse(i1.payload);
  const std::string sha = installed->getValue<std::string>("sha256");
  EXPECT_EQ(installed->getValue<std::string>("slot"), "secondary");
  EXPECT_FALSE(installed->has("already"));
  EXPECT_FALSE(fs::exists(flash / "secondary.pending.json"));
  EXPECT_EQ(read_file(flash / "secondary.chain.pem"), chain);
  struct stat st {};
  ASSERT_EQ(::stat((flash / "secondary.key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(d.slot(), Slot::kPrimary);  // installed, not yet running

  const auto i2 = install(d, "job-1", chain);  // repeated: 200 although the pending key is gone
  ASSERT_EQ(i2.status, 200) << i2.payload;
  EXPECT_TRUE(parse(i2.payload)->getValue<bool>("already"));
  EXPECT_EQ(parse(i2.payload)->getValue<std::string>("sha256"), sha);

  // reprovision with the lower-case thumbprint: the slot becomes active and the device reconnects.
  std::string lower = sha;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  const auto r1 = reprovision(d, "job-1", lower);
  ASSERT_EQ(r1.status, 200) << r1.payload;
  EXPECT_TRUE(parse(r1.payload)->getValue<bool>("reconnecting"));
  EXPECT_EQ(d.reconnects, 1);
  EXPECT_EQ(parse(read_file(flash / "slot.json"))->getValue<std::string>("active"), "secondary");
  const auto r2 = reprovision(d, "job-1", sha);  // repeated: already running it, no reconnect
  ASSERT_EQ(r2.status, 200);
  EXPECT_FALSE(parse(r2.payload)->getValue<bool>("reconnecting"));
  EXPECT_EQ(d.reconnects, 1);
  const auto i3 = install(d, "job-1", chain);  // repeated after the switch: still 200
  EXPECT_EQ(i3.status, 200) << i3.payload;

  const auto cert = parse(call(d, "getCertificate", "").payload);
  EXPECT_EQ(cert->getValue<std::string>("slot"), "secondary");
  EXPECT_EQ(cert->getValue<std::string>("sha256"), sha);
  EXPECT_NE(sha, old_sha);

  // The next rollover alternates: the free slot is now primary; secondary is refused.
  EXPECT_EQ(call(d, "createCsr", json({{"jobId", "job-2"}, {"slot", "secondary"}})).status, 409);
  const std::string chain2 = sign(create(d, "job-2", "primary"), "dev-02");
  ASSERT_EQ(install(d, "job-2", chain2, "primary").status, 200);
  const std::string sha2 =
      parse(install(d, "job-2", chain2, "primary").payload)->getValue<std::string>("sha256");
  ASSERT_EQ(reprovision(d, "job-2", sha2, "primary").status, 200);
  EXPECT_EQ(d.slot(), Slot::kPrimary);
  EXPECT_EQ(d.certificate().sha256, sha2);
  EXPECT_EQ(d.reconnects, 2);
}

// The pending key in flash is what counts. The agent remembers the keys it made only to skip
// decoding them again: a pending file rewritten behind its back, with another key or with the same
// key in another encoding, is read from flash.
TEST_F(Rotation, APendingKeyRewrittenInFlashIsTheKeyThatCounts) {
  const fs::path flash = dir.path() / "state" / "dev-01";
  Device d(dir.path() / "state", batch_device("dev-01"));
  const std::string chain = sign(create(d, "job-1"), "dev-01");
  ASSERT_FALSE(chain.empty());
  const fs::path pending = flash / "secondary.pending.json";
  const std::string made_pem = parse(read_file(pending))->getValue<std::string>("key");
  using Key = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
  BIO* bio = BIO_new_mem_buf(made_pem.data(), static_cast<int>(made_pem.size()));
  const Key made(PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr), EVP_PKEY_free);
  BIO_free(bio);
  ASSERT_NE(made, nullptr);
  const Key other(EVP_EC_gen("P-256"), EVP_PKEY_free);
  ASSERT_NE(other, nullptr);
  unsigned char* der = nullptr;
  const int der_len = i2d_PUBKEY(other.get(), &der);
  ASSERT_GT(der_len, 0);
  const std::string other_spki(reinterpret_cast<char*>(der), static_cast<std::size_t>(der_len));
  OPENSSL_free(der);

  // Another key under the same job: the certificate for the key made is refused and nothing in
  // flash changes.
  write_file(pending, pending_json("job-1", key_pem(other.get(), false)));
  const auto before = snapshot(flash);
  const auto refused = install(d, "job-1", chain);
  EXPECT_EQ(refused.status, 409) << refused.payload;
  EXPECT_NE(refused.payload.find("is not the key slot 'secondary' holds"), std::string::npos)
      << refused.payload;
  EXPECT_EQ(snapshot(flash), before);
  // createCsr of the same job again: its CSR carries the key in flash, not the key made.
  EXPECT_EQ(csr_public_key(create(d, "job-1"), "dev-01"), other_spki);

  // The key made, written back in the traditional encoding (other text, the same key): decoded
  // from flash, it matches the certificate, and the slot's key file holds that text.
  const std::string traditional = key_pem(made.get(), true);
  ASSERT_NE(traditional.find("EC PRIVATE KEY"), std::string::npos);
  write_file(pending, pending_json("job-1", traditional));
  const auto ok = install(d, "job-1", chain);
  ASSERT_EQ(ok.status, 200) << ok.payload;
  EXPECT_EQ(read_file(flash / "secondary.key.pem"), traditional);
  EXPECT_FALSE(fs::exists(pending));
}

TEST_F(Rotation, HostileCallsAnswerTheDocumentedStatusAndChangeNothingInFlash) {
  const fs::path flash = dir.path() / "state" / "dev-03";
  Device d(dir.path() / "state", batch_device("dev-03"));
  const std::string csr = create(d, "job-h");
  const std::string good = sign(csr, "dev-03");
  // A certificate for another device (dev-01's batch chain) and one whose key is not pending
  // (dev-03's own batch certificate: right CN, wrong key).
  const std::string other = read_file(pki.cert("dev-01"));
  const std::string wrong_key = read_file(pki.cert("dev-03"));
  const std::string leaf_only = good.substr(0, good.find("-----END CERTIFICATE-----") + 26);
  const std::string intermediate = good.substr(leaf_only.size());
  const auto before = snapshot(flash);

  struct Case {
    std::string method, payload;
    int status;
    std::string needle;
  };
  const std::string big(1 << 20, 'A');
  const std::vector<Case> cases = {
      {"createCsr", json({{"jobId", "j"}, {"slot", "primary"}}), 409, "active slot"},
      {"createCsr", json({{"jobId", "j"}, {"slot", "third"}}), 400, "'slot'"},
      {"createCsr", json({{"slot", "secondary"}}), 400, "'jobId' is missing"},
      {"createCsr", json({{"jobId", "a/b"}, {"slot", "secondary"}}), 400, "'jobId'"},
      {"createCsr", json({{"jobId", std::string(65, 'j')}, {"slot", "secondary"}}), 400, "jobId"},
      {"createCsr", json({{"jobId", "j"}, {"slot", "secondary"}, {"keyType", "rsa-1024"}}), 400,
       "'keyType'"},
      {"createCsr", R"({"jobId":7,"slot":"secondary"})", 400, "'jobId' must be a string"},
      {"createCsr", "[1,2]", 400, "JSON object"},
      {"createCsr", "\"text\"", 400, "JSON object"},
      {"createCsr", "", 400, "JSON object"},
      {"installCertificate", json({{"jobId", "j"}, {"slot", "secondary"}, {"chain", other}}), 400,
       "not for this device"},
      {"installCertificate", json({{"jobId", "j"}, {"slot", "secondary"}, {"chain", wrong_key}}),
       409, "no pending key for this certificate"},
      {"installCertificate", json({{"jobId", "j"}, {"slot", "primary"}, {"chain", good}}), 409,
       "active slot"},
      {"installCertificate",
       json({{"jobId", "j"},
             {"slot", "secondary"},
             {"chain", "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"}}),
       400, "'chain'"},
      {"installCertificate", json({{"jobId", "j"}, {"slot", "secondary"}, {"chain", "garbage"}}),
       400, "no PEM certificate"},
      {"installCertificate",
       json({{"jobId", "j"}, {"slot", "secondary"}, {"chain", intermediate + leaf_only}}), 400,
       "not for this device"},
      {"installCertificate",
       json({{"jobId", "j"}, {"slot", "secondary"}, {"chain", leaf_only + leaf_only}}), 400,
       "not signed by certificate 2"},
      {"installCertificate", json({{"jobId", "j"}, {"slot", "secondary"}, {"chain", big}}), 400,
       "'chain' is 1048576 bytes"},
      {"installCertificate", json({{"jobId", "j"}, {"slot", "secondary"}}), 400,
       "'chain' is missing"},
      {"installCertificate", "null", 400, "JSON object"},
      {"reprovision",
       json({{"jobId", "j"}, {"slot", "secondary"}, {"sha256", std::string(64, 'A')}}), 409,
       "holds no certificate"},
      {"reprovision", json({{"jobId", "j"}, {"slot", "primary"}, {"sha256", std::string(64, 'A')}}),
       409, "holds certificate"},
      {"reprovision", json({{"jobId", "j"}, {"slot", "primary"}, {"sha256", "xyz"}}), 400,
       "'sha256'"},
      {"reprovision", json({{"jobId", "j"}, {"slot", "primary"}}), 400, "'sha256' is missing"},
      {"reprovision", "42", 400, "JSON object"},
  };
  for (const auto& c : cases) {
    const auto r = call(d, c.method, c.payload);
    EXPECT_EQ(r.status, c.status) << c.method << " " << c.payload.substr(0, 200) << ": "
                                  << r.payload;
    EXPECT_NE(parse(r.payload)->getValue<std::string>("message").find(c.needle), std::string::npos)
        << c.method << ": '" << c.needle << "' not in " << r.payload;
    EXPECT_EQ(snapshot(flash), before) << c.method << " " << c.payload.substr(0, 200);
  }
  EXPECT_EQ(d.reconnects, 0);
  // After all of that the real chain still installs.
  EXPECT_EQ(install(d, "job-h", good).status, 200);
}

// --sync never rewrites files in place (no rename, no fsync): two rollovers, the second into the
// slot the batch wrote, read back exactly as with atomic writes; a blanked pending file is none.
TEST_F(Rotation, SyncNeverRotatesTwiceWithFilesRewrittenInPlace) {
  const fs::path flash = dir.path() / "state" / "dev-01";
  Device d(dir.path() / "state", batch_device("dev-01"), false);
  for (const std::string slot : {"secondary", "primary"}) {
    const std::string job = "job-" + slot;
    const std::string chain = sign(create(d, job, slot), "dev-01");
    const auto r = install(d, job, chain, slot);
    ASSERT_EQ(r.status, 200) << r.payload;
    const std::string sha = parse(r.payload)->getValue<std::string>("sha256");
    EXPECT_FALSE(d.store()->pending(slot == "primary" ? Slot::kPrimary : Slot::kSecondary));
    EXPECT_TRUE(parse(install(d, job, chain, slot).payload)->getValue<bool>("already"));
    ASSERT_EQ(reprovision(d, job, sha, slot).status, 200);
    EXPECT_EQ(d.certificate().sha256, sha);
    EXPECT_EQ(parse(read_file(flash / "slot.json"))->getValue<std::string>("active"), slot);
  }
  EXPECT_EQ(d.reconnects, 2);
  // What the device reads back on its next start: the primary slot, as rotated.
  device::SlotStore again(dir.path() / "state", d.device_id(), {});
  EXPECT_EQ(again.active(), Slot::kPrimary);
  EXPECT_EQ(again.read(Slot::kPrimary).cert().sha256, d.certificate().sha256);
}

TEST_F(Rotation, WithoutFlashEveryRotationMethodAnswers409) {
  // The builtin context of a fleet without --state: store() is null.
  class NoFlash final : public device::MethodContext {
   public:
    explicit NoFlash(device::Credential c) : m_id(c.id()), m_cert(c.cert()) {}
    const device::DeviceId& device_id() const override { return m_id; }
    const device::CertInfo& certificate() const override { return m_cert; }
    Slot slot() const override { return Slot::kPrimary; }
    device::SlotStore* store() override { return nullptr; }
    void reconnect_after_answer(bool) override { ADD_FAILURE(); }

   private:
    device::DeviceId m_id;
    device::CertInfo m_cert;
  } d(batch_device("dev-01"));
  const std::string sha = d.certificate().sha256;
  for (const auto& [method, payload] : std::vector<std::pair<std::string, std::string>>{
           {"createCsr", json({{"jobId", "j"}, {"slot", "secondary"}})},
           {"installCertificate",
            json(
                {{"jobId", "j"}, {"slot", "secondary"}, {"chain", read_file(pki.cert("dev-01"))}})},
           {"reprovision", json({{"jobId", "j"}, {"slot", "primary"}, {"sha256", sha}})}}) {
    const auto r = registry.dispatch(d, method, payload);
    EXPECT_EQ(r.status, 409) << method;
    EXPECT_EQ(parse(r.payload)->getValue<std::string>("message"),
              "this device has no flash (--state) to rotate into");
  }
}

TEST_F(Rotation, AFlashWriteThatFailsAnswers500NamingTheFile) {
  const fs::path flash = dir.path() / "state" / "dev-01";
  Device d(dir.path() / "state", batch_device("dev-01"));
  // A directory where the temporary file must go: the atomic write cannot create it.
  fs::create_directory(flash / "secondary.pending.json.tmp");
  fs::create_directory(flash / "secondary.pending.json.tmp" / "x");
  const auto r = call(d, "createCsr", json({{"jobId", "j"}, {"slot", "secondary"}}));
  EXPECT_EQ(r.status, 500) << r.payload;
  EXPECT_NE(r.payload.find("secondary.pending.json"), std::string::npos) << r.payload;
  EXPECT_FALSE(fs::exists(flash / "secondary.pending.json"));
}

// The cost of one device's rotation methods (createCsr with a new key, installCertificate,
// reprovision), with fsync and without (--sync never), on this machine's disk. The CSRs of all
// devices are signed by the CLI in one batch between the timed steps.
TEST_F(Rotation, CostPerDeviceWithAndWithoutFsync) {
  const int n = 100;
  const fs::path batch = dir.path() / "fleet";
  std::string log;
  ASSERT_EQ(fleetsign_cli(pki.home,
                          "issue --ca int --generate " + std::to_string(n) +
                              " --id-pattern rot-{03} --out '" + batch.string() + "'",
                          &log),
            0)
      << log;
  // The state on this test's disk, fsynced and not; and unsynced on tmpfs (/dev/shm), where no
  // block is discarded when a file is replaced.
  const fs::path shm = fs::path("/dev/shm") / ("fleetsign-rotation-" + std::to_string(::getpid()));
  struct Config {
    bool sync;
    fs::path root;
    const char* name;
  };
  std::vector<Config> configs = {{true, dir.path(), "disk, --sync always"},
                                 {false, dir.path(), "disk, --sync never"}};
  if (fs::is_directory("/dev/shm") && fs::create_directory(shm)) {
    configs.push_back({false, shm, "tmpfs, --sync never"});
  }
  const auto cpu_now = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
  };
  int round = 0;
  for (const Config& config : configs) {
    const std::string tag = std::to_string(++round);
    const fs::path state = config.root / ("state-" + tag);
    std::vector<std::unique_ptr<Device>> fleet;
    for (auto& c : device::load_batch_dir(batch, {})) {
      fleet.push_back(std::make_unique<Device>(state, std::move(c), config.sync));
    }
    double wall_us = 0, cpu_us = 0;
    const auto timed = [&](auto&& step) {
      const auto t0 = Clock::now();
      const double c0 = cpu_now();
      step();
      wall_us += std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
      cpu_us += cpu_now() - c0;
    };
    std::string bundle;
    timed([&] {
      for (auto& d : fleet) bundle += create(*d, "bench");
    });
    const fs::path csrs = dir.path() / ("csrs-" + tag + ".pem");
    const fs::path out = dir.path() / ("signed-" + tag);
    write_file(csrs, bundle);
    ASSERT_EQ(fleetsign_cli(pki.home,
                            "issue --ca int --reissue --csr-file '" + csrs.string() + "' --out '" +
                                out.string() + "'",
                            &log),
              0)
        << log;
    std::vector<std::string> chains, shas;
    for (auto& d : fleet) {
      chains.push_back(read_file(out / (d->device_id().str() + "_fullchain.pem")));
    }
    timed([&] {
      for (std::size_t i = 0; i < fleet.size(); ++i) {
        const auto r = install(*fleet[i], "bench", chains[i]);
        ASSERT_EQ(r.status, 200) << r.payload;
        shas.push_back(parse(r.payload)->getValue<std::string>("sha256"));
      }
      for (std::size_t i = 0; i < fleet.size(); ++i) {
        ASSERT_EQ(reprovision(*fleet[i], "bench", shas[i]).status, 200);
      }
    });
    for (auto& d : fleet) EXPECT_EQ(d->reconnects, 1);
    std::printf(
        "rotation methods (createCsr + installCertificate + reprovision), %s: %.0f us wall, "
        "%.0f us CPU per device\n",
        config.name, wall_us / n, cpu_us / n);
  }
  fs::remove_all(shm);
}

}  // namespace
}  // namespace fleetsign::testing
