// CRLs signed in the token, at the engine: what a CA's CRL lists (exactly the revoked device
// certificates and intermediates, with their reasons), checked by openssl and GnuTLS as relying
// parties; the numbering; freshness; a 100,000-entry CRL within the time target; and the broker's
// installer, which never installs a CRL that does not check.
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <map>

#include "enrollment_support.hpp"
#include "fleetsign/broker/crl_install.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/crl_check.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

using testing::TestHome;

struct CrlFree {
  void operator()(X509_CRL* c) const noexcept { X509_CRL_free(c); }
};
using CrlPtr = std::unique_ptr<X509_CRL, CrlFree>;

CrlPtr parse_crl(const engine::Der& der) {
  const unsigned char* p = der.data();
  CrlPtr crl(d2i_X509_CRL(nullptr, &p, static_cast<long>(der.size())));
  EXPECT_TRUE(crl) << "OpenSSL parses the CRL";
  return crl;
}

// serial (upper-case hex) → reason code (-1 when the entry has no reasonCode), read by OpenSSL.
std::map<std::string, int> entries_of(X509_CRL* crl) {
  std::map<std::string, int> out;
  const STACK_OF(X509_REVOKED)* list = X509_CRL_get_REVOKED(crl);
  for (int i = 0; i < sk_X509_REVOKED_num(list); ++i) {
    X509_REVOKED* r = sk_X509_REVOKED_value(list, i);
    BIGNUM* bn = ASN1_INTEGER_to_BN(X509_REVOKED_get0_serialNumber(r), nullptr);
    char* hex = BN_bn2hex(bn);
    int crit = 0;
    auto* reason =
        static_cast<ASN1_ENUMERATED*>(X509_REVOKED_get_ext_d2i(r, NID_crl_reason, &crit, nullptr));
    out[hex] = reason ? static_cast<int>(ASN1_ENUMERATED_get(reason)) : -1;
    ASN1_ENUMERATED_free(reason);
    OPENSSL_free(hex);
    BN_free(bn);
  }
  return out;
}

std::string strip_zeros(std::string hex) {
  while (hex.size() > 2 && hex.compare(0, 2, "00") == 0) hex.erase(0, 2);
  return hex;
}

class CrlEngine : public ::testing::Test {
 protected:
  TestHome th;
  engine::FixedClock clock{1'800'000'000};
  void SetUp() override { th.make_hierarchy(); }
  engine::CrlRecord sign(const std::string& ca) {
    engine::CrlSigner signer(*th.registry, *th.cas, th.policy.crl, clock);
    return signer.sign(ca);
  }
  std::filesystem::path file(const std::string& name, const std::string& text) {
    const auto p = th.dir.path() / name;
    testing::write_file(p, text);
    return p;
  }
  std::string pem_of(const std::string& ca) {
    return engine::pem(th.registry->find_ca(ca)->cert_der, "CERTIFICATE");
  }
};

TEST_F(CrlEngine, ListsExactlyTheRevokedSerialsWithTheirReasons) {
  const std::string a = testing::issue_device(th, "int1", "dev-a");
  const std::string b = testing::issue_device(th, "int1", "dev-b");
  const std::string c = testing::issue_device(th, "int1", "dev-c");
  const std::string good = testing::issue_device(th, "int1", "dev-good");
  const std::string other_ca = testing::issue_device(th, "root", "dev-root");
  th.registry->revoke_certs(std::vector<std::string>{a}, "keyCompromise", clock.now() - 60);
  th.registry->revoke_certs(std::vector<std::string>{b}, "unspecified", clock.now() - 60);
  th.registry->revoke_certs(std::vector<std::string>{c, other_ca}, "superseded", clock.now());

  const engine::CrlRecord crl = sign("int1");
  EXPECT_EQ(crl.number, 1);
  EXPECT_EQ(crl.entries, 3);
  EXPECT_EQ(crl.this_update, clock.now());
  EXPECT_EQ(crl.next_update, clock.now() + th.policy.crl.validity_hours * 3600);
  const auto parsed = parse_crl(crl.der);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(X509_CRL_get_version(parsed.get()), X509_CRL_VERSION_2);
  const auto entries = entries_of(parsed.get());
  const std::map<std::string, int> want = {
      {strip_zeros(a), 1}, {strip_zeros(b), -1}, {strip_zeros(c), 4}};
  EXPECT_EQ(entries, want) << "the revoked serials, reasons by RFC 5280 code; none for unspecified";
  EXPECT_EQ(entries.count(strip_zeros(good)), 0u);
  int crit = 0;
  auto* aki = static_cast<AUTHORITY_KEYID*>(
      X509_CRL_get_ext_d2i(parsed.get(), NID_authority_key_identifier, &crit, nullptr));
  ASSERT_NE(aki, nullptr) << "authority key identifier";
  AUTHORITY_KEYID_free(aki);
  const auto latest = th.registry->latest_crl("int1");
  ASSERT_TRUE(latest);
  EXPECT_EQ(latest->der, crl.der) << "stored as signed";
}

TEST_F(CrlEngine, ARevokedIntermediateIsListedByItsIssuersCrl) {
  engine::CaSpec spec;
  spec.name = "int2";
  spec.issuer = "root";
  spec.subject = "/CN=Int Two";
  const engine::CaRecord int2 = th.cas->create_intermediate(spec);
  EXPECT_TRUE(th.registry->revoke_ca("int2", "cACompromise", clock.now()));
  EXPECT_FALSE(th.registry->revoke_ca("int2", "cACompromise", clock.now())) << "already revoked";
  EXPECT_EQ(th.registry->find_ca("int2")->revocation_reason, "cACompromise");
  const auto entries = entries_of(parse_crl(sign("root").der).get());
  const std::string serial = engine::summarize_certificate(int2.cert_der).serial;
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries.begin()->first, strip_zeros(serial));
  EXPECT_EQ(entries.begin()->second, 2) << "cACompromise";
  EXPECT_EQ(testing::error_from([&] { th.registry->revoke_ca("nope", "x", 1); }).code(),
            ErrorCode::kNotFound);
}

TEST_F(CrlEngine, OpensslAndGnutlsAcceptTheCrlAndARevokedLeafFailsVerification) {
  const std::string bad = testing::issue_device(th, "int1", "dev-bad");
  testing::issue_device(th, "int1", "dev-ok");
  th.registry->revoke_certs(std::vector<std::string>{bad}, "keyCompromise", clock.now());
  engine::SystemClock wall;  // openssl checks the times against the wall clock
  engine::CrlSigner signer(*th.registry, *th.cas, th.policy.crl, wall);
  const engine::CrlRecord crl = signer.sign("int1");
  const engine::CrlRecord root_crl = signer.sign("root");
  const auto crl_pem = file("int1.crl", engine::pem(crl.der, "X509 CRL"));
  const auto both_crls =
      file("both.crl", engine::pem(crl.der, "X509 CRL") + engine::pem(root_crl.der, "X509 CRL"));
  const auto chain = file("chain.pem", pem_of("int1") + pem_of("root"));
  const auto int1 = file("int1.pem", pem_of("int1"));
  std::string leaf_bad, leaf_ok;
  for (const auto& cert : th.registry->certs_of_device("dev-bad")) {
    leaf_bad = engine::pem(cert.der, "CERTIFICATE");
  }
  for (const auto& cert : th.registry->certs_of_device("dev-ok")) {
    leaf_ok = engine::pem(cert.der, "CERTIFICATE");
  }
  const auto bad_pem = file("bad.pem", leaf_bad);
  const auto ok_pem = file("ok.pem", leaf_ok);
  std::string out;
  EXPECT_EQ(testing::run(
                "openssl crl -noout -verify -in " + crl_pem.string() + " -CAfile " + chain.string(),
                &out),
            0)
      << out;
  EXPECT_NE(out.find("verify OK"), std::string::npos) << out;
  const std::string verify =
      "openssl verify -crl_check -CAfile " + chain.string() + " -CRLfile " + crl_pem.string() + " ";
  EXPECT_NE(testing::run(verify + bad_pem.string(), &out), 0);
  EXPECT_NE(out.find("certificate revoked"), std::string::npos) << out;
  EXPECT_EQ(testing::run(verify + ok_pem.string(), &out), 0) << out;
  // Every CRL of the chain (root's included) with -crl_check_all.
  EXPECT_EQ(testing::run("openssl verify -crl_check_all -CAfile " + chain.string() + " -CRLfile " +
                             both_crls.string() + " " + ok_pem.string(),
                         &out),
            0)
      << out;
  if (testing::run("command -v certtool >/dev/null") == 0) {
    EXPECT_EQ(testing::run("certtool --crl-info --infile " + crl_pem.string(), &out), 0) << out;
    EXPECT_NE(out.find("Revoked certificates (1)"), std::string::npos) << out;
    EXPECT_EQ(testing::run("certtool --verify-crl --load-ca-certificate " + int1.string() +
                               " --infile " + crl_pem.string(),
                           &out),
              0)
        << out;
  } else {
    std::fprintf(stderr, "note: certtool (gnutls-bin) is not installed: GnuTLS check skipped\n");
  }
}

TEST_F(CrlEngine, NumbersIncreaseAndAReservedNumberIsNeverReused) {
  EXPECT_EQ(sign("int1").number, 1);
  EXPECT_EQ(th.registry->reserve_crl_number("int1"), 2) << "reserved, then the process died";
  EXPECT_EQ(sign("int1").number, 3) << "2 was reserved: never used";
  EXPECT_EQ(sign("root").number, 1) << "numbering is per CA";
  engine::CrlRecord forged = *th.registry->latest_crl("int1");
  forged.number = 9;
  EXPECT_EQ(testing::error_from([&] { th.registry->store_crl(forged); }).code(),
            ErrorCode::kRegistryError)
      << "a number that was never reserved";
}

TEST_F(CrlEngine, FreshnessFollowsThePolicySchedule) {
  const policy::CrlSchedule& s = th.policy.crl;
  EXPECT_EQ(engine::crl_state(std::nullopt, s, 0), engine::CrlState::kMissing);
  const engine::CrlRecord crl = sign("int1");
  const auto at = [&](std::int64_t hours_left) {
    return engine::crl_state(crl, s, crl.next_update - hours_left * 3600);
  };
  EXPECT_EQ(at(s.resign_hours + 1), engine::CrlState::kFresh);
  EXPECT_EQ(at(s.resign_hours - 1), engine::CrlState::kDue);
  EXPECT_EQ(at(s.warn_hours - 1), engine::CrlState::kNear);
  EXPECT_EQ(at(0), engine::CrlState::kStale);
  // A revocation after the CRL makes it behind, whatever its time.
  auto statuses = engine::crl_statuses(*th.registry, s, clock.now());
  for (const auto& st : statuses) EXPECT_EQ(st.needs_signing(), st.ca_name == "root");
  const std::string serial = testing::issue_device(th, "int1", "dev-x");
  th.registry->revoke_certs(std::vector<std::string>{serial}, "superseded", clock.now());
  statuses = engine::crl_statuses(*th.registry, s, clock.now());
  ASSERT_EQ(statuses.size(), 2u);
  EXPECT_TRUE(statuses[1].revoked_since);
  EXPECT_TRUE(statuses[1].needs_signing());
}

// A CRL of 100,000 entries: built directly, signed in the token, checked and stored in < 5 s.
TEST_F(CrlEngine, AHundredThousandEntryCrlIsSignedAndStoredWithinFiveSeconds) {
  testing::tamper(
      th.registry_path_for_tests(),
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) "
      "INSERT INTO certificates (serial, device_id, ca_name, state, created_at, "
      "revoked_at, revocation_reason) SELECT printf('%040X', 1000000 + i * 7919), "
      "'bulk-' || i, 'int1', 'revoked', 1, 1700000000 + i, "
      "CASE i % 3 WHEN 0 THEN 'keyCompromise' WHEN 1 THEN 'superseded' "
      "ELSE 'unspecified' END FROM n");
  const auto t0 = std::chrono::steady_clock::now();
  const engine::CrlRecord crl = sign("int1");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(crl.entries, 100000);
  EXPECT_LT(seconds, 5.0);
  std::fprintf(stderr, "crl_100k_sign_store_s %.3f (%zu bytes)\n", seconds, crl.der.size());
  const auto parsed = parse_crl(crl.der);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(parsed.get())), 100000);
}

// --- the broker's installer ----------------------------------------------------------------

class CrlInstaller : public CrlEngine {
 protected:
  broker::BrokerHome home{th.home_dir};
  void SetUp() override {
    CrlEngine::SetUp();
    std::filesystem::create_directories(home.dir());
  }
  broker::CrlCandidate candidate(const std::string& ca, engine::Der der) {
    return {*th.registry->find_ca(ca), std::move(der)};
  }
  std::string installed() { return testing::read_file(home.crl_path()); }
};

TEST_F(CrlInstaller, InstallsCheckedCrlsAndNeverAGarbageOne) {
  const engine::Der root1 = sign("root").der, int1 = sign("int1").der;
  const auto first = broker::install_crl_bundle(
      home, {candidate("root", root1), candidate("int1", int1)}, true, "", clock.now());
  EXPECT_TRUE(first.enabled);
  EXPECT_EQ(first.crls, 2u);
  const std::string good = installed();
  EXPECT_EQ(engine::crls_from_pem(good).size(), 2u);

  const auto refused = [&](std::vector<broker::CrlCandidate> crls, std::int64_t now) {
    const Error e =
        testing::error_from([&] { broker::install_crl_bundle(home, crls, true, "", now); });
    EXPECT_EQ(e.code(), ErrorCode::kCrlInvalid) << e.what();
    EXPECT_EQ(installed(), good) << "the installed file is untouched";
    return std::string(e.what());
  };
  engine::Der garbage(int1.begin(), int1.begin() + 40);
  EXPECT_NE(refused({candidate("int1", garbage)}, clock.now()).find("int1"), std::string::npos);
  engine::Der flipped = int1;
  flipped[flipped.size() - 5] ^= 0x01;  // inside the signature
  EXPECT_NE(refused({candidate("int1", flipped)}, clock.now()).find("signature"),
            std::string::npos);
  EXPECT_NE(refused({candidate("root", int1)}, clock.now()).find("issuer"), std::string::npos)
      << "int1's CRL offered as root's";
  EXPECT_NE(refused({candidate("int1", int1)}, clock.now() + 8 * 86400).find("stale"),
            std::string::npos);
  EXPECT_NE(refused({candidate("int1", int1)}, clock.now() - 3600).find("not valid yet"),
            std::string::npos);
  // A newer CRL installs; the older one cannot come back after it.
  const engine::Der int1_v2 = sign("int1").der;
  broker::install_crl_bundle(home, {candidate("root", root1), candidate("int1", int1_v2)}, true, "",
                             clock.now());
  const std::string newer = installed();
  const Error e = testing::error_from([&] {
    broker::install_crl_bundle(home, {candidate("root", root1), candidate("int1", int1)}, true, "",
                               clock.now());
  });
  EXPECT_EQ(e.code(), ErrorCode::kCrlInvalid);
  EXPECT_NE(std::string(e.what()).find("lower"), std::string::npos) << e.what();
  EXPECT_EQ(installed(), newer);
}

// Someone appends to the installed file a CRL with int1's issuer and key identifier, number
// 999999, signed with another key. It must not count for numbering (else no genuine CRL of int1
// could be installed again, and `broker start` would refuse to run): the next install replaces it.
TEST_F(CrlInstaller, AForgedCrlInTheInstalledFileIsReplacedNotTrusted) {
  const engine::Der root1 = sign("root").der, int1 = sign("int1").der;
  broker::install_crl_bundle(home, {candidate("root", root1), candidate("int1", int1)}, true, "",
                             clock.now());
  const CrlPtr forged = parse_crl(int1);
  ASN1_INTEGER* number = ASN1_INTEGER_new();
  ASN1_INTEGER_set(number, 999999);
  ASSERT_EQ(X509_CRL_add1_ext_i2d(forged.get(), NID_crl_number, number, 0, X509V3_ADD_REPLACE), 1);
  ASN1_INTEGER_free(number);
  EVP_PKEY* attacker = EVP_EC_gen("P-256");
  ASSERT_NE(attacker, nullptr);
  ASSERT_GT(X509_CRL_sign(forged.get(), attacker, EVP_sha256()), 0);
  EVP_PKEY_free(attacker);
  unsigned char* buf = nullptr;
  const int len = i2d_X509_CRL(forged.get(), &buf);
  ASSERT_GT(len, 0);
  const engine::Der forged_der(buf, buf + len);
  OPENSSL_free(buf);
  EXPECT_EQ(engine::read_crl(forged_der).number, 999999);
  std::string file = installed();
  engine::append_pem(file, forged_der, "X509 CRL");
  testing::write_file(home.crl_path(), file);

  const engine::Der int1_v2 = sign("int1").der;
  const auto inst = broker::install_crl_bundle(
      home, {candidate("root", root1), candidate("int1", int1_v2)}, true, "", clock.now());
  EXPECT_TRUE(inst.changed);
  const auto now_installed = engine::crls_from_pem(installed());
  ASSERT_EQ(now_installed.size(), 2u);
  EXPECT_EQ(now_installed[1], int1_v2) << "the forged CRL is gone";
  // A genuine older CRL is still refused after a genuine newer one.
  EXPECT_EQ(testing::error_from([&] {
              broker::install_crl_bundle(home, {candidate("root", root1), candidate("int1", int1)},
                                         true, "", clock.now());
            }).code(),
            ErrorCode::kCrlInvalid);
}

TEST_F(CrlInstaller, ABundleThatDoesNotCoverEveryIssuerIsNotInstalled) {
  sign("root");
  // int1 has no CRL: mosquitto would refuse every device of int1.
  auto inst = broker::install_registry_crls(home, *th.registry, clock.now());
  EXPECT_FALSE(inst.enabled);
  EXPECT_NE(inst.off_reason.find("int1"), std::string::npos) << inst.off_reason;
  EXPECT_FALSE(std::filesystem::exists(home.crl_path()));
  sign("int1");
  inst = broker::install_registry_crls(home, *th.registry, clock.now());
  EXPECT_TRUE(inst.enabled) << inst.off_reason;
  EXPECT_TRUE(std::filesystem::exists(home.crl_path()));
  home.write_config(broker::BrokerSettings{.plugin = "/x.so"});
  EXPECT_NE(testing::read_file(home.config_path()).find("crlfile " + home.crl_path().string()),
            std::string::npos);
}

}  // namespace
}  // namespace fleetsign
