#include "device_keys.hpp"

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include "fleetsign/error.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

namespace {

// SubjectPublicKeyInfo for id-ecPublicKey/prime256v1; the 65-byte uncompressed point follows.
constexpr std::uint8_t kP256SpkiPrefix[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48,
                                            0xCE, 0x3D, 0x02, 0x01, 0x06, 0x08, 0x2A, 0x86, 0x48,
                                            0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};
// PrivateKeyInfo { 0, algorithm, OCTET STRING { ECPrivateKey { 1, OCTET STRING(32) d, … } } }.
constexpr std::uint8_t kP256Pkcs8Prefix[] = {0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06,
                                             0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06,
                                             0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07,
                                             0x04, 0x6D, 0x30, 0x6B, 0x02, 0x01, 0x01, 0x04, 0x20};
// [1] publicKey BIT STRING; the 65-byte point follows.
constexpr std::uint8_t kP256Pkcs8PublicPrefix[] = {0xA1, 0x44, 0x03, 0x42, 0x00};

DeviceKey generate_p256() {
  static const EC_GROUP* group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  EC_KEY* ec = EC_KEY_new();
  if (ec == nullptr || EC_KEY_set_group(ec, group) != 1 || EC_KEY_generate_key(ec) != 1) {
    EC_KEY_free(ec);
    throw Error(ErrorCode::kInternal, "generating a P-256 device key: " + ossl::last_error());
  }
  std::uint8_t point[65];
  std::uint8_t scalar[32];
  const bool ok =
      EC_POINT_point2oct(group, EC_KEY_get0_public_key(ec), POINT_CONVERSION_UNCOMPRESSED, point,
                         sizeof point, nullptr) == sizeof point &&
      BN_bn2binpad(EC_KEY_get0_private_key(ec), scalar, sizeof scalar) == sizeof scalar;
  EC_KEY_free(ec);
  if (!ok) {
    OPENSSL_cleanse(scalar, sizeof scalar);
    throw Error(ErrorCode::kInternal, "encoding a P-256 device key");
  }
  DeviceKey key;
  key.spki.reserve(sizeof kP256SpkiPrefix + sizeof point);
  key.spki.insert(key.spki.end(), std::begin(kP256SpkiPrefix), std::end(kP256SpkiPrefix));
  key.spki.insert(key.spki.end(), std::begin(point), std::end(point));
  key.pkcs8.reserve(sizeof kP256Pkcs8Prefix + 32 + sizeof kP256Pkcs8PublicPrefix + sizeof point);
  key.pkcs8.insert(key.pkcs8.end(), std::begin(kP256Pkcs8Prefix), std::end(kP256Pkcs8Prefix));
  key.pkcs8.insert(key.pkcs8.end(), std::begin(scalar), std::end(scalar));
  key.pkcs8.insert(key.pkcs8.end(), std::begin(kP256Pkcs8PublicPrefix),
                   std::end(kP256Pkcs8PublicPrefix));
  key.pkcs8.insert(key.pkcs8.end(), std::begin(point), std::end(point));
  OPENSSL_cleanse(scalar, sizeof scalar);
  return key;
}

DeviceKey generate_generic(policy::KeyAlgorithm alg) {
  ossl::PkeyPtr pkey;
  switch (alg) {
    case policy::KeyAlgorithm::kEcP384:
      pkey.reset(EVP_EC_gen("P-384"));
      break;
    case policy::KeyAlgorithm::kRsa2048:
      pkey.reset(EVP_RSA_gen(2048));
      break;
    case policy::KeyAlgorithm::kRsa3072:
      pkey.reset(EVP_RSA_gen(3072));
      break;
    case policy::KeyAlgorithm::kRsa4096:
      pkey.reset(EVP_RSA_gen(4096));
      break;
    case policy::KeyAlgorithm::kEcP256:
      pkey.reset(EVP_EC_gen("P-256"));
      break;
  }
  if (!pkey) {
    throw Error(ErrorCode::kInternal, "generating a device key: " + ossl::last_error());
  }
  DeviceKey key;
  unsigned char* buf = nullptr;
  int len = i2d_PUBKEY(pkey.get(), &buf);
  key.spki.assign(buf, buf + len);
  OPENSSL_free(buf);
  PKCS8_PRIV_KEY_INFO* p8 = EVP_PKEY2PKCS8(pkey.get());
  buf = nullptr;
  len = i2d_PKCS8_PRIV_KEY_INFO(p8, &buf);
  key.pkcs8.assign(buf, buf + len);
  OPENSSL_clear_free(buf, static_cast<std::size_t>(len));
  PKCS8_PRIV_KEY_INFO_free(p8);
  return key;
}

}  // namespace

DeviceKey::~DeviceKey() {
  if (!pkcs8.empty()) {
    OPENSSL_cleanse(pkcs8.data(), pkcs8.size());
  }
}

DeviceKey generate_device_key(policy::KeyAlgorithm alg) {
  return alg == policy::KeyAlgorithm::kEcP256 ? generate_p256() : generate_generic(alg);
}

Der make_pfx(const Der& cert_der, const Der& pkcs8, const std::vector<Der>& chain,
             const std::string& friendly_name, const char* password) {
  const unsigned char* p = pkcs8.data();
  ossl::PkeyPtr pkey(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(pkcs8.size())));
  auto cert = ossl::from_der(cert_der);
  STACK_OF(X509)* cas = sk_X509_new_null();
  for (const auto& c : chain) {
    sk_X509_push(cas, ossl::from_der(c).release());
  }
  PKCS12* p12 = pkey && cert ? PKCS12_create(password, friendly_name.c_str(), pkey.get(),
                                             cert.get(), cas, 0, 0, 0, 0, 0)
                             : nullptr;
  sk_X509_pop_free(cas, X509_free);
  if (p12 == nullptr) {
    throw Error(ErrorCode::kInternal,
                "building the PKCS#12 for " + friendly_name + ": " + ossl::last_error());
  }
  unsigned char* buf = nullptr;
  const int len = i2d_PKCS12(p12, &buf);
  Der out(buf, buf + len);
  OPENSSL_free(buf);
  PKCS12_free(p12);
  return out;
}

}  // namespace fleetsign::engine
