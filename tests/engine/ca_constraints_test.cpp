// A CA that its own chain forbids is refused before a key is made (issue 7, hole 3): pathLen
// counted over every CA on the path, a requested pathLen above what the chain still allows, and
// name constraints; and CA names outside the safe alphabet. Leaves of the CAs that are allowed
// pass `openssl verify -x509_strict`, a tool we did not write.
#include "fleetsign/engine/ca_constraints.hpp"

#include <gtest/gtest.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <string>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/issuance.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "test_home.hpp"

namespace fleetsign::engine {
namespace {

namespace fs = std::filesystem;
using testing::error_from;
using testing::TestHome;

class CaConstraints : public ::testing::Test {
 protected:
  TestHome th;

  CaRecord make_ca(const std::string& name, const std::string& issuer,
                   std::optional<int> path_len) {
    CaSpec spec;
    spec.name = name;
    spec.issuer = issuer;
    spec.subject = "/CN=" + name + " CA/O=fleetsign tests";
    spec.path_len = path_len;
    // Each CA made later gets a day less: a child never asks to outlive its issuer, even when a
    // second boundary passes between the two (a flaky "valid after its issuer" otherwise).
    spec.days = issuer.empty() ? 4000 : m_next_days--;
    return issuer.empty() ? th.cas->create_root(spec) : th.cas->create_intermediate(spec);
  }

  int m_next_days = 3000;

  int private_keys_in_token() {
    std::string out;
    testing::run("SOFTHSM2_CONF='" + (th.home_dir / "softhsm2.conf").string() +
                     "' pkcs11-tool --module " + th.home->config().module.string() +
                     " --login --pin '" + testing::kUserPin + "' --list-objects --type privkey",
                 &out);
    int n = 0;
    for (std::size_t at = 0; (at = out.find("Private Key Object", at)) != std::string::npos; ++at) {
      ++n;
    }
    return n;
  }

  // Refuses `make_ca(name, issuer, path_len)` as kCaConstraint naming `culprit`; nothing recorded,
  // audited or left in the token.
  void expect_refused(const std::string& name, const std::string& issuer,
                      std::optional<int> path_len, const std::string& culprit) {
    const int keys = private_keys_in_token();
    const std::size_t cas = th.registry->list_cas().size();
    const std::size_t audits = th.registry->audit_log(1'000'000).size();
    const Error e = error_from([&] { make_ca(name, issuer, path_len); });
    EXPECT_EQ(e.code(), ErrorCode::kCaConstraint) << e.what();
    EXPECT_NE(std::string(e.what()).find("CA '" + culprit + "'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("pathLen"), std::string::npos) << e.what();
    EXPECT_FALSE(th.registry->find_ca(name).has_value());
    EXPECT_EQ(th.registry->list_cas().size(), cas);
    EXPECT_EQ(th.registry->audit_log(1'000'000).size(), audits);
    EXPECT_EQ(private_keys_in_token(), keys) << "a key was made for a refused CA";
  }

  std::string write_pem(const std::string& file, const Der& der) {
    const fs::path path = th.dir.path() / file;
    testing::write_file(path, pem(der, "CERTIFICATE"));
    return path.string();
  }

  // Issues a device certificate under chain_names.front() (issuer first, root last) and checks the
  // whole chain with openssl -x509_strict.
  void expect_leaf_verifies(const std::vector<std::string>& chain_names) {
    const fs::path csrs = th.dir.path() / "csrs";
    if (!fs::exists(csrs)) {
      ASSERT_TRUE(testing::make_csrs(csrs));
    }
    SingleIssueRequest req;
    req.ca_name = chain_names.front();
    req.csr_der = read_csrs(csrs / "good_p256.csr").at(0).der;
    auto result = issue_single(*th.registry, *th.cas, th.policy, th.clock, th.random, req);
    ASSERT_TRUE(result) << result.error().message;
    std::string untrusted;
    for (std::size_t i = 0; i + 1 < chain_names.size(); ++i) {
      untrusted += write_pem(chain_names[i] + ".pem", th.cas->get(chain_names[i]).cert_der) + " ";
    }
    const std::string root = write_pem("root.pem", th.cas->get(chain_names.back()).cert_der);
    const std::string bundle = (th.dir.path() / "untrusted.pem").string();
    testing::run("cat " + untrusted + " > " + bundle);
    const std::string leaf = write_pem("leaf.pem", result->cert.der);
    std::string out;
    EXPECT_EQ(testing::run("openssl verify -x509_strict -purpose sslclient -CAfile " + root +
                               " -untrusted " + bundle + " " + leaf,
                           &out),
              0)
        << out;
  }
};

TEST_F(CaConstraints, SubCaUnderAPathLenZeroIntermediateIsRefusedNamingItAndMakesNoKey) {
  make_ca("root", "", std::nullopt);
  make_ca("ica", "root", 0);
  expect_refused("sub", "ica", 0, "ica");
}

TEST_F(CaConstraints, PathLenOneRootAllowsAnIntermediateButNotASubIntermediate) {
  make_ca("root", "", 1);
  make_ca("int", "root", 0);
  expect_refused("sub", "int", 0, "int");
  expect_leaf_verifies({"int", "root"});
}

TEST_F(CaConstraints, PathLenIsCountedOverEveryCaOnThePathNotJustTheIssuer) {
  make_ca("root", "", 1);
  // int asks for pathLen 1, more than the root still allows below it: refused as well, because
  // a CA under it would then break the root's constraint.
  expect_refused("int", "root", 1, "root");
  make_ca("root2", "", 2);
  make_ca("int2", "root2", 1);
  make_ca("sub2", "int2", 0);
  expect_leaf_verifies({"sub2", "int2", "root2"});
  expect_refused("subsub", "sub2", 0, "sub2");
}

TEST_F(CaConstraints, CaNamesWithNewlineQuoteSlashOrSpaceAreInvalidArgumentAndRecordNothing) {
  for (const std::string name :
       {std::string("root\nforged line"), std::string("ro\"ot"), std::string("a/b"),
        std::string("../x"), std::string(" root"), std::string("-root"), std::string(""),
        std::string(65, 'a'), std::string("ro\xc3\xb6t")}) {
    SCOPED_TRACE(name);
    CaSpec spec;
    spec.name = name;
    spec.subject = "/CN=Root";
    const Error e = error_from([&] { th.cas->create_root(spec); });
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "raw name echoed";
  }
  EXPECT_TRUE(th.registry->list_cas().empty());
  EXPECT_EQ(check_ca_name("fleet-root_2024.v2"), std::nullopt);
}

TEST_F(CaConstraints, ImportedCaAndEnrollmentGroupNamesWithNewlineOrQuoteAreRefused) {
  const CaRecord root = make_ca("root", "", std::nullopt);
  const std::string forged = "x\n2026-01-01 ca.verify root";
  Error e = error_from([&] { import_external_ca(*th.registry, th.clock, forged, root.cert_der); });
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
  e = error_from([&] { import_external_ca(*th.registry, th.clock, "a\"b", root.cert_der); });
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
  EnrollmentService groups(*th.registry, th.policy, th.clock);
  for (const std::string name : {forged, std::string("g\"quote"), std::string("g/slash")}) {
    SCOPED_TRACE(name);
    EXPECT_EQ(error_from([&] { groups.create_group(name, "root", ""); }).code(),
              ErrorCode::kInvalidArgument);
  }
  EXPECT_EQ(th.registry->list_cas().size(), 1u);
  EXPECT_TRUE(th.registry->list_groups().empty());
}

// --- name constraints, over certificates made here in software -------------------------------

using testing::X509Ptr;

X509_NAME* name_of(const std::string& org) {
  X509_NAME* n = X509_NAME_new();
  X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(org.c_str()), -1, -1, 0);
  return n;
}

// A CA certificate (unsigned: only its extensions matter) whose nameConstraints permit or
// exclude the directoryName O=`org`.
X509Ptr ca_with_dirname_constraint(const std::string& org, bool permitted) {
  X509Ptr cert(X509_new());
  NAME_CONSTRAINTS* nc = NAME_CONSTRAINTS_new();
  GENERAL_SUBTREE* subtree = GENERAL_SUBTREE_new();
  GENERAL_NAME_set0_value(subtree->base, GEN_DIRNAME, name_of(org));
  auto*& list = permitted ? nc->permittedSubtrees : nc->excludedSubtrees;
  list = sk_GENERAL_SUBTREE_new_null();
  sk_GENERAL_SUBTREE_push(list, subtree);
  X509_add1_ext_i2d(cert.get(), NID_name_constraints, nc, 1, 0);
  NAME_CONSTRAINTS_free(nc);
  return cert;
}

TEST(CaNameConstraints, SubjectOutsideAPermittedSubtreeIsForbiddenNamingTheCa) {
  const X509Ptr root = ca_with_dirname_constraint("Allowed Org", true);
  const std::vector<ChainLink> chain = {{"root", root.get()}};
  X509_NAME* inside = name_of("Allowed Org");
  X509_NAME* outside = name_of("Other Org");
  EXPECT_EQ(chain_forbids_ca(chain, inside, 0), std::nullopt);
  const auto why = chain_forbids_ca(chain, outside, 0);
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("CA 'root'"), std::string::npos) << *why;
  EXPECT_NE(why->find("Other Org"), std::string::npos) << *why;
  X509_NAME_free(inside);
  X509_NAME_free(outside);
}

TEST(CaNameConstraints, ExcludedSubtreeOfACaHigherUpForbidsTheSubject) {
  X509Ptr issuer(X509_new());  // no constraints of its own
  const X509Ptr root = ca_with_dirname_constraint("Banned Org", false);
  const std::vector<ChainLink> chain = {{"int", issuer.get()}, {"root", root.get()}};
  X509_NAME* banned = name_of("Banned Org");
  const auto why = chain_forbids_ca(chain, banned, 0);
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("CA 'root'"), std::string::npos) << *why;
  X509_NAME_free(banned);
}

}  // namespace
}  // namespace fleetsign::engine
