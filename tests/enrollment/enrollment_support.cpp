#include "enrollment_support.hpp"

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <gtest/gtest.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "fleetsign/engine/issuance.hpp"
#include "registry_backend.hpp"

namespace fleetsign::testing {

namespace fs = std::filesystem;

Pkey ec_key() { return Pkey(EVP_EC_gen("P-256")); }

engine::Der csr_der(const std::string& cn) {
  Pkey key = ec_key();
  X509_REQ* req = X509_REQ_new();
  X509_NAME* name = X509_REQ_get_subject_name(req);
  X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_REQ_set_pubkey(req, key.get());
  X509_REQ_sign(req, key.get(), EVP_sha256());
  const int len = i2d_X509_REQ(req, nullptr);
  engine::Der der(static_cast<std::size_t>(len));
  unsigned char* p = der.data();
  i2d_X509_REQ(req, &p);
  X509_REQ_free(req);
  return der;
}

MadeCert make_cert(const std::string& cn, bool ca, int days, const MadeCert* issuer) {
  MadeCert out{{}, ec_key()};
  X509* cert = X509_new();
  X509_set_version(cert, X509_VERSION_3);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7F;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
  BN_free(bn);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* issuer_cert = nullptr;
  if (issuer != nullptr) {
    const unsigned char* p = issuer->der.data();
    issuer_cert = d2i_X509(nullptr, &p, static_cast<long>(issuer->der.size()));
    X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert));
  } else {
    X509_set_issuer_name(cert, name);
  }
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert), static_cast<long>(days) * 86400);
  X509_set_pubkey(cert, out.key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer_cert != nullptr ? issuer_cert : cert, cert, nullptr, nullptr, 0);
  auto add = [&](int nid, const char* value) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
  };
  add(NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  add(NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  add(NID_subject_key_identifier, "hash");
  X509_sign(cert, issuer != nullptr ? issuer->key.get() : out.key.get(), EVP_sha256());
  const int len = i2d_X509(cert, nullptr);
  out.der.resize(static_cast<std::size_t>(len));
  unsigned char* p = out.der.data();
  i2d_X509(cert, &p);
  X509_free(cert);
  X509_free(issuer_cert);
  return out;
}

std::string issue_device(TestHome& th, const std::string& ca, const std::string& id,
                         const std::string& lot) {
  engine::SingleIssueRequest request{ca, csr_der(id), engine::Lineage{lot, "", "", ""}, true};
  auto result =
      engine::issue_single(*th.registry, *th.cas, th.policy, th.clock, th.random, request);
  EXPECT_TRUE(result.has_value()) << (result ? "" : result.error().message);
  return result ? result->cert.serial : "";
}

void tamper(const fs::path& registry_db, const std::string& sql) {
  test::raw_query(registry_db.string(), sql);
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

Outcome Binary::run(const std::string& args) const {
  TempDir scratch;
  const fs::path err = scratch.path() / "stderr.txt";
  Outcome o;
  o.status = testing::run("( env -u FLEETSIGN_HOME FLEETSIGN_PIN=" + quoted(kUserPin) +
                              " FLEETSIGN_SO_PIN=" + quoted(kSoPin) + " " +
                              quoted(fleetsign_bin()) + " --home " + quoted(m_home.string()) + " " +
                              args + " 2>" + quoted(err.string()) + " </dev/null )",
                          &o.out);
  o.err = read_file(err);
  return o;
}

Outcome Binary::ok(const std::string& args) const {
  Outcome o = run(args);
  EXPECT_EQ(o.status, 0) << "fleetsign " << args << "\nstdout: " << o.out << "\nstderr: " << o.err;
  return o;
}

}  // namespace fleetsign::testing
