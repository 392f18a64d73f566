// The compromised-key blocklist's key identity (key_sha256_of_spki): one EC key has one hash
// whether its point is sent uncompressed, compressed or hybrid, and every other SPKI (RSA,
// uncompressed EC, bytes OpenSSL cannot decode) hashes exactly as sent.
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "fleetsign/engine/x509.hpp"

namespace fleetsign::engine {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Der spki_in_form(EVP_PKEY* key, const char* form) {
  if (form != nullptr) {
    EXPECT_EQ(EVP_PKEY_set_utf8_string_param(key, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, form),
              1);
  }
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(key, &der);
  EXPECT_GT(n, 0);
  Der out(der, der + n);
  OPENSSL_free(der);
  return out;
}

TEST(KeyHash, OneEcKeyHasOneHashInEveryPointEncoding) {
  for (const char* curve : {"P-256", "P-384", "P-521"}) {
    Pkey key(EVP_EC_gen(curve));
    ASSERT_TRUE(key) << curve;
    const Der plain = spki_in_form(key.get(), "uncompressed");
    const Der compressed = spki_in_form(key.get(), "compressed");
    const Der hybrid = spki_in_form(key.get(), "hybrid");
    ASSERT_NE(plain, compressed) << curve;
    ASSERT_LT(compressed.size(), plain.size()) << curve;
    ASSERT_NE(plain, hybrid) << curve;
    // Uncompressed is hashed as sent: the hash recorded before this canonical form is unchanged.
    EXPECT_EQ(key_sha256_of_spki(plain), thumbprint_sha256(plain)) << curve;
    EXPECT_EQ(key_sha256_of_spki(compressed), thumbprint_sha256(plain)) << curve;
    EXPECT_EQ(key_sha256_of_spki(hybrid), thumbprint_sha256(plain)) << curve;
    EXPECT_NE(thumbprint_sha256(compressed), thumbprint_sha256(plain)) << curve;
  }
  // Two different keys stay different when both are compressed.
  Pkey a(EVP_EC_gen("P-256")), b(EVP_EC_gen("P-256"));
  EXPECT_NE(key_sha256_of_spki(spki_in_form(a.get(), "compressed")),
            key_sha256_of_spki(spki_in_form(b.get(), "compressed")));
}

TEST(KeyHash, RsaAndUndecodableSpkisHashAsSent) {
  Pkey rsa(EVP_RSA_gen(2048));
  ASSERT_TRUE(rsa);
  const Der spki = spki_in_form(rsa.get(), nullptr);
  EXPECT_EQ(key_sha256_of_spki(spki), thumbprint_sha256(spki));
  // An EC SPKI with a compressed point OpenSSL refuses (x = 2^256 - 1, above the field prime):
  // hashed as sent, no throw.
  Pkey ec(EVP_EC_gen("P-256"));
  Der broken = spki_in_form(ec.get(), "compressed");
  for (std::size_t i = broken.size() - 32; i < broken.size(); ++i) broken[i] = 0xFF;
  EXPECT_EQ(key_sha256_of_spki(broken), thumbprint_sha256(broken));
  const Der garbage = {0x30, 0x03, 0x02, 0x01, 0x00};
  EXPECT_EQ(key_sha256_of_spki(garbage), thumbprint_sha256(garbage));
}

Der self_signed(EVP_PKEY* key, long version) {
  X509* cert = X509_new();
  X509_set_pubkey(cert, key);
  X509_set_version(cert, version);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  Der out;
  if (X509_sign(cert, key, EVP_sha256()) > 0) {
    unsigned char* der = nullptr;
    const int n = i2d_X509(cert, &der);
    if (n > 0) out.assign(der, der + n);
    OPENSSL_free(der);
  }
  X509_free(cert);
  return out;
}

// Adds one to the DER length at `at` (short form, or long form with one or two octets).
bool grow_length(Der& der, std::size_t at) {
  const std::uint8_t first = der[at + 1];
  if (first < 0x7F) {
    ++der[at + 1];
    return true;
  }
  if (first == 0x81 && der[at + 2] < 0xFF) {
    ++der[at + 2];
    return true;
  }
  if (first == 0x82) {
    const unsigned n = (unsigned{der[at + 2]} << 8 | der[at + 3]) + 1;
    der[at + 2] = static_cast<std::uint8_t>(n >> 8);
    der[at + 3] = static_cast<std::uint8_t>(n);
    return true;
  }
  return false;
}

// `cert` (a P-256 key) with its key's AlgorithmIdentifier length written as 81 13 instead of 13:
// BER that OpenSSL accepts. Empty when the layout is not the expected one.
Der with_long_form_key_algorithm(Der cert) {
  const std::uint8_t spki[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07};
  const auto it = std::search(cert.begin(), cert.end(), std::begin(spki), std::end(spki));
  if (it == cert.end() || cert[0] != 0x30 || (cert[1] != 0x81 && cert[1] != 0x82)) return {};
  const auto at = static_cast<std::size_t>(it - cert.begin());
  const std::size_t tbs = cert[1] == 0x81 ? 3 : 4;  // the header, then the TBSCertificate
  if (!grow_length(cert, 0) || !grow_length(cert, tbs)) return {};
  cert[at + 1] = 0x5A;
  cert.insert(cert.begin() + static_cast<std::ptrdiff_t>(at + 3), 0x81);
  return cert;
}

// The engine's DER walk reads a v3 certificate's key; OpenSSL's decoder reads what the walk
// refuses (a v1 certificate, trailing bytes after it), with the same hash.
TEST(KeyHash, ACertificateHashesLikeItsSpki) {
  Pkey key(EVP_EC_gen("P-256"));
  const std::string want = thumbprint_sha256(spki_in_form(key.get(), "uncompressed"));
  const Der v3 = self_signed(key.get(), 2);
  ASSERT_FALSE(v3.empty());
  EXPECT_EQ(key_sha256_of_cert(v3), want);
  const Der v1 = self_signed(key.get(), 0);
  ASSERT_FALSE(v1.empty());
  EXPECT_EQ(key_sha256_of_cert(v1), want);
  Der trailing = v3;
  trailing.push_back(0x00);
  EXPECT_EQ(key_sha256_of_cert(trailing), want);
  EXPECT_EQ(key_sha256_of_cert(Der(v3.begin(), v3.end() - 1)), "");  // cut short
  // BER inside the key (the AlgorithmIdentifier's length in long form), which OpenSSL reads and
  // encodes again in DER: the same key, the same hash.
  const Der ber = with_long_form_key_algorithm(v3);
  ASSERT_FALSE(ber.empty());
  const unsigned char* p = ber.data();
  X509* parsed = d2i_X509(nullptr, &p, static_cast<long>(ber.size()));
  ASSERT_NE(parsed, nullptr);
  X509_free(parsed);
  EXPECT_EQ(key_sha256_of_cert(ber), want);
  EXPECT_EQ(key_sha256_of_cert(Der{0x30, 0x00}), "");
}

}  // namespace
}  // namespace fleetsign::engine
