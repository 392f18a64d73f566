// The CA hierarchy against a real SoftHSM2 token and SQLite registry: certificate profile,
// refusals that must leave nothing behind (no record, no audit row, no orphan key in the token),
// proof of possession, and the key/certificate match check. Chains are checked with `openssl
// verify`, token contents with `pkcs11-tool`: tools we did not write.
#include "fleetsign/engine/ca.hpp"

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <gtest/gtest.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>

#include "fleetsign/engine/issuance.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/hsm/key_ref.hpp"
#include "test_home.hpp"

namespace fleetsign::engine {
namespace {

namespace fs = std::filesystem;
using fleetsign::testing::TestHome;

using testing::make_csrs;
using testing::X509Ptr;
X509Ptr parse(const Der& der) { return testing::parse_der_certificate(der); }

using testing::error_from;

bool is_critical(X509* cert, int nid) {
  const int i = X509_get_ext_by_NID(cert, nid, -1);
  return i >= 0 && X509_EXTENSION_get_critical(X509_get_ext(cert, i)) == 1;
}

// basicConstraints as {CA flag, pathLen or -1}.
std::pair<bool, long> basic_constraints(X509* cert) {
  auto* bc = static_cast<BASIC_CONSTRAINTS*>(
      X509_get_ext_d2i(cert, NID_basic_constraints, nullptr, nullptr));
  EXPECT_NE(bc, nullptr) << "no basicConstraints";
  if (bc == nullptr) {
    return {false, -1};
  }
  const std::pair<bool, long> out{bc->ca != 0, bc->pathlen ? ASN1_INTEGER_get(bc->pathlen) : -1};
  BASIC_CONSTRAINTS_free(bc);
  return out;
}

class CaTest : public ::testing::Test {
 protected:
  TestHome th;

  static CaSpec spec_for(const std::string& name, const std::string& issuer) {
    CaSpec spec;
    spec.name = name;
    spec.issuer = issuer;
    spec.subject = "/CN=" + name + " CA/O=fleetsign tests";
    return spec;
  }

  CaRecord create(const CaSpec& spec) {
    return spec.issuer.empty() ? th.cas->create_root(spec) : th.cas->create_intermediate(spec);
  }

  CaRecord make_ca(const std::string& name, const std::string& issuer, std::optional<int> days = {},
                   policy::KeyAlgorithm key = policy::KeyAlgorithm::kEcP256) {
    CaSpec spec = spec_for(name, issuer);
    spec.key = key;
    spec.days = days;
    return create(spec);
  }

  std::string write_pem(const std::string& file, const Der& der) {
    const fs::path path = th.dir.path() / file;
    testing::write_file(path, pem(der, "CERTIFICATE"));
    return path.string();
  }

  int openssl_verify(const std::string& args, std::string* out) {
    return testing::run("openssl verify " + args, out);
  }

  // Private keys in the token as pkcs11-tool counts them.
  int private_keys_in_token() {
    std::string out;
    const int status =
        testing::run("SOFTHSM2_CONF='" + (th.home_dir / "softhsm2.conf").string() +
                         "' pkcs11-tool --module " + th.home->config().module.string() +
                         " --login --pin '" + testing::kUserPin + "' --list-objects --type privkey",
                     &out);
    EXPECT_EQ(status, 0) << out;
    int n = 0;
    for (std::size_t at = 0; (at = out.find("Private Key Object", at)) != std::string::npos; ++at) {
      ++n;
    }
    return n;
  }

  std::size_t audit_rows() { return th.registry->audit_log(1'000'000).size(); }

  // A fixture CSR from tests/data/make_csrs.sh (made on first use into this test's directory).
  Der fixture_csr(const std::string& name) {
    const fs::path dir = th.dir.path() / "csrs";
    if (!fs::exists(dir)) {
      EXPECT_TRUE(make_csrs(dir));
    }
    return read_csrs(dir / name).at(0).der;
  }

  SignedCert issue_device(const std::string& ca_name) {
    SingleIssueRequest req;
    req.ca_name = ca_name;
    req.csr_der = fixture_csr("good_p256.csr");
    auto result = issue_single(*th.registry, *th.cas, th.policy, th.clock, th.random, req);
    EXPECT_TRUE(result) << result.error().message;
    return result->cert;
  }
};

// --- chain and profile -------------------------------------------------------------------------

class CaChain
    : public CaTest,
      public ::testing::WithParamInterface<std::tuple<policy::KeyAlgorithm, policy::KeyAlgorithm>> {
};

TEST_P(CaChain, RootIntermediateDeviceChainVerifiesWithOpensslStrict) {
  const auto [root_key, int_key] = GetParam();
  const CaRecord root = make_ca("root", "", {}, root_key);
  const CaRecord inter = make_ca("int", "root", 3000, int_key);
  const std::string root_pem = write_pem("root.pem", root.cert_der);
  const std::string int_pem = write_pem("int.pem", inter.cert_der);
  const std::string leaf_pem = write_pem("leaf.pem", issue_device("int").der);
  std::string out;
  EXPECT_EQ(openssl_verify("-x509_strict -purpose sslclient -CAfile " + root_pem + " -untrusted " +
                               int_pem + " " + leaf_pem,
                           &out),
            0)
      << out;
  EXPECT_NE(out.find("leaf.pem: OK"), std::string::npos) << out;
  // The same check fails without the intermediate: it is really checking the chain.
  EXPECT_NE(openssl_verify("-x509_strict -CAfile " + root_pem + " " + leaf_pem, &out), 0) << out;
}

INSTANTIATE_TEST_SUITE_P(
    KeyPairs, CaChain,
    ::testing::Values(
        std::make_tuple(policy::KeyAlgorithm::kEcP256, policy::KeyAlgorithm::kEcP256),
        std::make_tuple(policy::KeyAlgorithm::kEcP384, policy::KeyAlgorithm::kRsa2048),
        std::make_tuple(policy::KeyAlgorithm::kRsa2048, policy::KeyAlgorithm::kEcP384)),
    [](const auto& info) {
      std::string name = std::string(policy::key_algorithm_name(std::get<0>(info.param))) +
                         "_root_" +
                         std::string(policy::key_algorithm_name(std::get<1>(info.param))) + "_int";
      std::replace(name.begin(), name.end(), '-', '_');
      return name;
    });

TEST_F(CaTest, RootHasCriticalCaBasicConstraintsCertSignKeyUsageAndSki) {
  const auto root = parse(make_ca("root", "").cert_der);
  EXPECT_EQ(basic_constraints(root.get()), std::make_pair(true, -1L)) << "CA:TRUE, no pathlen";
  EXPECT_TRUE(is_critical(root.get(), NID_basic_constraints));
  EXPECT_EQ(X509_get_key_usage(root.get()),
            static_cast<std::uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_TRUE(is_critical(root.get(), NID_key_usage));
  ASSERT_NE(X509_get0_subject_key_id(root.get()), nullptr);
  EXPECT_EQ(X509_check_issued(root.get(), root.get()), X509_V_OK) << "self-issued";
  EXPECT_EQ(X509_verify(root.get(), X509_get0_pubkey(root.get())), 1) << "self-signed";
}

TEST_F(CaTest, IntermediateHasPathLenZeroByDefaultAndAkiEqualToTheRootSki) {
  const auto root = parse(make_ca("root", "").cert_der);
  const auto inter = parse(make_ca("int", "root", 3000).cert_der);
  EXPECT_EQ(basic_constraints(inter.get()), std::make_pair(true, 0L));
  EXPECT_TRUE(is_critical(inter.get(), NID_basic_constraints));
  EXPECT_EQ(X509_get_key_usage(inter.get()),
            static_cast<std::uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  const ASN1_OCTET_STRING* aki = X509_get0_authority_key_id(inter.get());
  ASSERT_NE(aki, nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(aki, X509_get0_subject_key_id(root.get())), 0);
  EXPECT_NE(ASN1_OCTET_STRING_cmp(aki, X509_get0_subject_key_id(inter.get())), 0);
  EXPECT_EQ(X509_verify(inter.get(), X509_get0_pubkey(root.get())), 1);
}

TEST_F(CaTest, IntermediatePathLenIsTakenFromTheSpec) {
  make_ca("root", "");
  CaSpec spec = spec_for("int", "root");
  spec.path_len = 2;
  const auto inter = parse(create(spec).cert_der);
  EXPECT_EQ(basic_constraints(inter.get()), std::make_pair(true, 2L));
}

// --- refusals leave nothing behind ------------------------------------------------------------

TEST_F(CaTest, IntermediateOutlivingItsRootIsRefusedLeavingNoRecordAuditRowOrKey) {
  make_ca("root", "", 100);
  const int keys = private_keys_in_token();
  const std::size_t audits = audit_rows();
  const Error e = error_from([&] { make_ca("int", "root", 200); });
  EXPECT_EQ(e.code(), ErrorCode::kValidityBeyondIssuer) << e.what();
  EXPECT_FALSE(th.registry->find_ca("int").has_value());
  EXPECT_EQ(th.registry->list_cas().size(), 1u);
  EXPECT_EQ(audit_rows(), audits);
  EXPECT_EQ(private_keys_in_token(), keys) << "orphan key left in the token";
  // The message's advice ("use --days N or less") is advice that works.
  const std::string what = e.what();
  const auto at = what.find("--days ");
  ASSERT_NE(at, std::string::npos) << what;
  const int suggested = std::stoi(what.substr(at + 7));
  EXPECT_GE(suggested, 99);
  EXPECT_NO_THROW(make_ca("int", "root", suggested));
}

TEST_F(CaTest, FailureAfterKeyGenerationDestroysTheNewKey) {
  make_ca("root", "");
  const int keys = private_keys_in_token();
  CaSpec spec = spec_for("int", "root");
  spec.path_len = -1;
  EXPECT_EQ(error_from([&] { create(spec); }).code(), ErrorCode::kInvalidArgument);
  EXPECT_FALSE(th.registry->find_ca("int").has_value());
  EXPECT_EQ(private_keys_in_token(), keys) << "orphan key left in the token";
}

TEST_F(CaTest, FailureAfterKeyGenerationLeavesNoPendingCaAndTheNameCanBeRetried) {
  make_ca("root", "");
  const int keys = private_keys_in_token();
  CaSpec spec = spec_for("int", "root");
  spec.path_len = -1;
  EXPECT_EQ(error_from([&] { create(spec); }).code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(th.registry->list_pending_cas().empty());
  spec.path_len = 0;
  const CaRecord ca = create(spec);
  EXPECT_EQ(private_keys_in_token(), keys + 1);
  EXPECT_TRUE(th.registry->list_pending_cas().empty());
  const auto certs = th.registry->ca_certs_of("int");
  ASSERT_EQ(certs.size(), 1u);
  EXPECT_EQ(certs[0].state, "issued");
  EXPECT_EQ(certs[0].der, ca.cert_der);
}

TEST_F(CaTest, DuplicateCaNameIsAlreadyExistsAndMakesNoKey) {
  const CaRecord first = make_ca("root", "");
  const int keys = private_keys_in_token();
  const Error e = error_from([&] { make_ca("root", ""); });
  EXPECT_EQ(e.code(), ErrorCode::kAlreadyExists);
  EXPECT_NE(std::string(e.what()).find("'root'"), std::string::npos) << e.what();
  EXPECT_EQ(private_keys_in_token(), keys);
  EXPECT_EQ(th.registry->find_ca("root")->sha256, first.sha256) << "the first CA must be untouched";
}

TEST_F(CaTest, MalformedSubjectIsInvalidSubjectNamingIt) {
  const int keys = private_keys_in_token();
  for (const std::string subject :
       {"CN=No Leading Slash", "/CN=", "/CN", "/NOSUCHATTR=x", "/", ""}) {
    SCOPED_TRACE("subject '" + subject + "'");
    CaSpec spec = spec_for("root", "");
    spec.subject = subject;
    const Error e = error_from([&] { create(spec); });
    EXPECT_EQ(e.code(), ErrorCode::kInvalidSubject) << e.what();
    EXPECT_NE(std::string(e.what()).find("'" + subject + "'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(th.registry->list_cas().empty());
  EXPECT_EQ(private_keys_in_token(), keys);
}

// --- proof of possession ------------------------------------------------------------------------

TEST_F(CaTest, VerificationCertHasTheCodeAsCnVerifiesAgainstTheCaAndMarksItVerified) {
  th.make_hierarchy();
  const std::string code = "8C2F1A9E04B7D36E5A1C";
  const Der vc = th.cas->make_verification_cert("int1", code);
  const auto cert = parse(vc);
  char cn[256] = {0};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof cn);
  EXPECT_EQ(std::string(cn), code);
  std::string out;
  EXPECT_EQ(openssl_verify("-partial_chain -CAfile " +
                               write_pem("int.pem", th.cas->get("int1").cert_der) + " " +
                               write_pem("vc.pem", vc),
                           &out),
            0)
      << out;
  EXPECT_FALSE(th.registry->find_ca("int1")->verified);
  verify_possession(*th.registry, th.clock, "int1", code, vc);
  EXPECT_TRUE(th.registry->find_ca("int1")->verified);
  EXPECT_FALSE(th.registry->find_ca("root")->verified) << "only the proven CA is marked";
}

TEST_F(CaTest, WrongVerificationCodeIsCodeMismatchAndTheCaStaysUnverified) {
  th.make_hierarchy();
  const Der vc = th.cas->make_verification_cert("root", "CODE-ONE");
  const Error e =
      error_from([&] { verify_possession(*th.registry, th.clock, "root", "CODE-TWO", vc); });
  EXPECT_EQ(e.code(), ErrorCode::kVerificationCodeMismatch) << e.what();
  EXPECT_FALSE(th.registry->find_ca("root")->verified);
}

TEST_F(CaTest, VerificationCertFromAnotherCaIsSignatureInvalid) {
  th.make_hierarchy();
  const Der vc = th.cas->make_verification_cert("root", "CODE");
  const Error e =
      error_from([&] { verify_possession(*th.registry, th.clock, "int1", "CODE", vc); });
  EXPECT_EQ(e.code(), ErrorCode::kVerificationSignatureInvalid) << e.what();
  EXPECT_FALSE(th.registry->find_ca("int1")->verified);
}

TEST_F(CaTest, VerificationCertFromAnotherKeyWithTheSameSubjectIsSignatureInvalid) {
  th.make_hierarchy();
  CaSpec twin = spec_for("twin", "");
  twin.subject = th.cas->get("root").subject;  // same DN, different key
  create(twin);
  const Der vc = th.cas->make_verification_cert("twin", "CODE");
  const Error e =
      error_from([&] { verify_possession(*th.registry, th.clock, "root", "CODE", vc); });
  EXPECT_EQ(e.code(), ErrorCode::kVerificationSignatureInvalid) << e.what();
  EXPECT_FALSE(th.registry->find_ca("root")->verified);
}

TEST_F(CaTest, ExpiredVerificationCertIsRefused) {
  th.make_hierarchy();
  const Der vc = th.cas->make_verification_cert("root", "CODE");
  const FixedClock later(th.clock.now() +
                         std::int64_t{th.policy.validity.verification_days + 1} * 86400);
  EXPECT_EQ(error_from([&] { verify_possession(*th.registry, later, "root", "CODE", vc); }).code(),
            ErrorCode::kVerificationSignatureInvalid);
  EXPECT_FALSE(th.registry->find_ca("root")->verified);
}

TEST_F(CaTest, VerificationInputThatIsNotACertificateIsMalformed) {
  th.make_hierarchy();
  const Der garbage{0x30, 0x03, 0x02, 0x01, 0x01};
  EXPECT_EQ(
      error_from([&] { verify_possession(*th.registry, th.clock, "root", "C", garbage); }).code(),
      ErrorCode::kCertificateMalformed);
}

// --- the token key must match the certificate ------------------------------------------------

TEST_F(CaTest, RegistryPointingACaAtAnotherCasKeyIsKeyCertMismatchAndIssuesNothing) {
  th.make_hierarchy();
  const std::string other_key = th.cas->get("root").key_uri;
  {
    // A second, independent connection: the tampering happens on disk, as an attacker's would.
    Poco::Data::SQLite::Connector::registerConnector();
    Poco::Data::Session raw("SQLite", th.home->registry_path().string());
    using Poco::Data::Keywords::now;
    using Poco::Data::Keywords::use;
    std::string name = "int1";
    std::string uri = other_key;
    raw << "UPDATE cas SET key_uri = ? WHERE name = ?", use(uri), use(name), now;
  }
  const CaRecord tampered = th.cas->get("int1");
  ASSERT_EQ(tampered.key_uri, other_key);
  const Error e = error_from([&] { th.cas->load_key(tampered); });
  EXPECT_EQ(e.code(), ErrorCode::kKeyCertMismatch) << e.what();
  EXPECT_NE(std::string(e.what()).find("'int1'"), std::string::npos) << e.what();
  // Neither issuance path signs with it: nothing is recorded.
  EXPECT_EQ(error_from([&] { issue_device("int1"); }).code(), ErrorCode::kKeyCertMismatch);
  EXPECT_EQ(error_from([&] { th.cas->make_verification_cert("int1", "C"); }).code(),
            ErrorCode::kKeyCertMismatch);
  EXPECT_EQ(th.registry->count_certs("", CertState::kIntent), 0);
  EXPECT_EQ(th.registry->count_certs("", CertState::kIssued), 0);
  // The untampered CA still loads.
  EXPECT_NO_THROW(th.cas->load_key(th.cas->get("root")));
}

// The token signs with a key that is not the CA certificate's (a faulty or swapped token key):
// the check before release must refuse it, whichever verifier the CA's key type uses.
class WrongKeySigning : public CaTest,
                        public ::testing::WithParamInterface<policy::KeyAlgorithm> {};

TEST_P(WrongKeySigning, SignatureByAKeyOtherThanTheCasIsSignFailed) {
  const CaRecord a = make_ca("a", "", {}, GetParam());
  const hsm::SigningKey& b_key = th.cas->load_key(make_ca("b", "", {}, GetParam()));
  const Issuer issuer(a, b_key, th.policy, 365, th.clock, th.random);
  const auto csr = check_csr(fixture_csr("good_p256.csr"), th.policy);
  ASSERT_TRUE(csr.has_value());
  auto prepared = issuer.prepare(csr.value());
  ASSERT_TRUE(prepared.has_value());
  const auto signed_cert = issuer.sign(std::move(*prepared));
  ASSERT_FALSE(signed_cert.has_value()) << "released a certificate that does not verify";
  EXPECT_EQ(error_code_name(signed_cert.error().code), error_code_name(ErrorCode::kSignFailed));
}

INSTANTIATE_TEST_SUITE_P(CaKeys, WrongKeySigning,
                         ::testing::Values(policy::KeyAlgorithm::kEcP256,
                                           policy::KeyAlgorithm::kEcP384,
                                           policy::KeyAlgorithm::kRsa2048),
                         [](const auto& info) {
                           std::string n(policy::key_algorithm_name(info.param));
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace fleetsign::engine
