// PEM and DER decoding for device credentials. OpenSSL 3.0's generic decoders (d2i_AutoPrivateKey,
// the public key inside d2i_X509) cost 0.3-1.9 ms per call; at 10,000 devices that is minutes of
// start-up. So: EC and RSA private keys are decoded with their ASN.1 routines directly (~75 µs),
// and issuer certificates, identical across a batch, are decoded once and shared. New EC keys are
// made the same way: a provider key costs its encoders ~280 µs more to go into a CSR and a PEM.
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <map>
#include <mutex>

#include "ossl.hpp"

namespace fleetsign::device::ossl {

namespace {

struct PemBlock {
  std::string name;
  std::vector<unsigned char> der;
  ~PemBlock() { OPENSSL_cleanse(der.data(), der.size()); }
};

// Next PEM block of `bio`; false at the end. `problem` is set when what follows is no PEM block.
bool next_block(BIO* bio, PemBlock& block, std::string& problem) {
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* data = nullptr;
  long len = 0;
  ERR_clear_error();
  if (PEM_read_bio(bio, &name, &header, &data, &len) != 1) {
    const unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE) {
      problem = "malformed PEM block: " + last_error();
    }
    ERR_clear_error();
    return false;
  }
  block.name = name;
  if (header != nullptr && header[0] != '\0') {
    problem = "PEM block " + block.name + " has headers (an encrypted key?)";
  }
  OPENSSL_cleanse(block.der.data(), block.der.size());
  block.der.assign(data, data + len);
  OPENSSL_clear_free(data, static_cast<std::size_t>(len));
  OPENSSL_free(name);
  OPENSSL_free(header);
  return problem.empty();
}

X509Ptr decode_certificate(const std::vector<unsigned char>& der) {
  const unsigned char* p = der.data();
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (cert && p != der.data() + der.size()) cert.reset();
  return cert;
}

// Issuer certificates by DER: a batch's devices share them. Bounded: hostile input with many
// distinct issuers only stops being cached.
X509Ptr shared_issuer(const std::vector<unsigned char>& der) {
  static std::mutex mutex;
  static std::map<std::vector<unsigned char>, X509Ptr> cache;
  constexpr std::size_t kMaxCached = 256;
  std::lock_guard lock(mutex);
  auto it = cache.find(der);
  if (it == cache.end()) {
    X509Ptr cert = decode_certificate(der);
    if (!cert || cache.size() >= kMaxCached) return cert;
    it = cache.emplace(der, std::move(cert)).first;
  }
  X509_up_ref(it->second.get());
  return X509Ptr(it->second.get());
}

PkeyPtr from_ec(EC_KEY* ec) {
  PkeyPtr key(EVP_PKEY_new());
  // EC_KEY_check_key: the private scalar really yields the public point stored beside it.
  if (!key || ec == nullptr || EC_KEY_check_key(ec) != 1 ||
      EVP_PKEY_assign_EC_KEY(key.get(), ec) != 1) {
    EC_KEY_free(ec);
    return nullptr;
  }
  return key;
}

PkeyPtr from_rsa(RSA* rsa) {
  PkeyPtr key(EVP_PKEY_new());
  if (!key || rsa == nullptr || EVP_PKEY_assign_RSA(key.get(), rsa) != 1) {
    RSA_free(rsa);
    return nullptr;
  }
  return key;
}

// PrivateKeyInfo (PKCS#8, unencrypted): EC and RSA by their own ASN.1 decoders, anything else by
// OpenSSL's generic (slow) one.
PkeyPtr decode_pkcs8(const std::vector<unsigned char>& der) {
  const unsigned char* p = der.data();
  std::unique_ptr<PKCS8_PRIV_KEY_INFO, Deleter<PKCS8_PRIV_KEY_INFO, PKCS8_PRIV_KEY_INFO_free>> p8(
      d2i_PKCS8_PRIV_KEY_INFO(nullptr, &p, static_cast<long>(der.size())));
  if (!p8 || p != der.data() + der.size()) return nullptr;
  const ASN1_OBJECT* algorithm = nullptr;
  const unsigned char* inner = nullptr;
  int inner_len = 0;
  const X509_ALGOR* alg = nullptr;
  if (PKCS8_pkey_get0(&algorithm, &inner, &inner_len, &alg, p8.get()) != 1) return nullptr;
  const int nid = OBJ_obj2nid(algorithm);
  if (nid == NID_X9_62_id_ecPublicKey) {
    int ptype = 0;
    const void* pval = nullptr;
    X509_ALGOR_get0(nullptr, &ptype, &pval, alg);
    if (ptype != V_ASN1_OBJECT) return nullptr;  // named curves only
    EC_KEY* ec = EC_KEY_new_by_curve_name(OBJ_obj2nid(static_cast<const ASN1_OBJECT*>(pval)));
    const unsigned char* q = inner;
    if (ec == nullptr || d2i_ECPrivateKey(&ec, &q, inner_len) == nullptr ||
        q != inner + inner_len) {
      EC_KEY_free(ec);
      return nullptr;
    }
    return from_ec(ec);
  }
  if (nid == NID_rsaEncryption) {
    const unsigned char* q = inner;
    RSA* rsa = d2i_RSAPrivateKey(nullptr, &q, inner_len);
    if (rsa != nullptr && q != inner + inner_len) {
      RSA_free(rsa);
      return nullptr;
    }
    return from_rsa(rsa);
  }
  p = der.data();
  PkeyPtr key(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der.size())));
  return key && p == der.data() + der.size() ? std::move(key) : nullptr;
}

}  // namespace

PkeyPtr generate_ec_key(int curve_nid) {
  EC_KEY* ec = EC_KEY_new_by_curve_name(curve_nid);
  PkeyPtr key(EVP_PKEY_new());
  if (ec == nullptr || !key || EC_KEY_generate_key(ec) != 1 ||
      EVP_PKEY_assign_EC_KEY(key.get(), ec) != 1) {
    EC_KEY_free(ec);
    return nullptr;
  }
  return key;
}

std::vector<X509Ptr> parse_certificates(std::string_view pem, std::string& problem) {
  std::vector<X509Ptr> out;
  auto bio = mem_bio(pem);
  PemBlock block;
  while (next_block(bio.get(), block, problem)) {
    if (block.name != "CERTIFICATE") {
      problem = "holds a " + block.name + " block where a CERTIFICATE was expected";
      break;
    }
    X509Ptr cert = out.empty() ? decode_certificate(block.der) : shared_issuer(block.der);
    if (!cert) {
      problem = "certificate " + std::to_string(out.size() + 1) + " is not valid X.509";
      ERR_clear_error();
      break;
    }
    out.push_back(std::move(cert));
  }
  return out;
}

PkeyPtr parse_private_key(std::string_view pem, std::string& problem) {
  auto bio = mem_bio(pem);
  PemBlock block;
  if (!next_block(bio.get(), block, problem)) {
    if (problem.empty()) problem = "holds no PEM private key";
    return nullptr;
  }
  PkeyPtr key;
  if (block.name == "PRIVATE KEY") {
    key = decode_pkcs8(block.der);
  } else if (block.name == "EC PRIVATE KEY") {
    const unsigned char* p = block.der.data();
    EC_KEY* ec = d2i_ECPrivateKey(nullptr, &p, static_cast<long>(block.der.size()));
    if (p == block.der.data() + block.der.size()) {
      key = from_ec(ec);
    } else {
      EC_KEY_free(ec);
    }
  } else if (block.name == "RSA PRIVATE KEY") {
    const unsigned char* p = block.der.data();
    RSA* rsa = d2i_RSAPrivateKey(nullptr, &p, static_cast<long>(block.der.size()));
    if (p == block.der.data() + block.der.size()) {
      key = from_rsa(rsa);
    } else {
      RSA_free(rsa);
    }
  } else if (block.name == "ENCRYPTED PRIVATE KEY") {
    problem = "holds an encrypted private key; a device key file must be unencrypted";
    return nullptr;
  } else {
    problem = "holds a " + block.name + " block where a PRIVATE KEY was expected";
    return nullptr;
  }
  if (!key) {
    problem = "private key does not decode: " + last_error();
    return nullptr;
  }
  PemBlock extra;
  if (next_block(bio.get(), extra, problem) || !problem.empty()) {
    problem = "holds more than one PEM block; expected exactly one private key";
    return nullptr;
  }
  return key;
}

}  // namespace fleetsign::device::ossl
