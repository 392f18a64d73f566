// Certificates, keys and CSRs for the batch tests: PEM blocks, serials, key/certificate matching,
// CSRs made in-process.
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>

#include "batch_support.hpp"

namespace fleetsign::batchtest {

std::vector<std::string> pem_blocks(const std::string& text, const std::string& name) {
  std::vector<std::string> out;
  BIO* bio = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
  for (;;) {
    char* block_name = nullptr;
    char* header = nullptr;
    unsigned char* data = nullptr;
    long len = 0;
    if (PEM_read_bio(bio, &block_name, &header, &data, &len) != 1) break;
    if (name == block_name)
      out.emplace_back(reinterpret_cast<const char*>(data), static_cast<std::size_t>(len));
    OPENSSL_free(block_name);
    OPENSSL_free(header);
    OPENSSL_free(data);
  }
  BIO_free(bio);
  return out;
}

X509Ptr parse_cert_der(const std::string& der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  return X509Ptr(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
}

std::string serial_of(const X509* cert) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
  char* hex = BN_bn2hex(bn);
  std::string s(hex);
  OPENSSL_free(hex);
  BN_free(bn);
  return s;
}

std::string normalize_serial(const std::string& hex) {
  std::string s = hex;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  const auto first = s.find_first_not_of('0');
  return first == std::string::npos ? "0" : s.substr(first);
}

std::string der_serial(const std::string& cert_der) {
  // Reads one TLV header at `at`; returns the content length, or -1 when malformed.
  const auto header = [&](std::size_t& at, unsigned char& tag) -> long {
    if (at + 2 > cert_der.size()) return -1;
    tag = static_cast<unsigned char>(cert_der[at++]);
    std::size_t len = static_cast<unsigned char>(cert_der[at++]);
    if (len & 0x80) {
      const std::size_t n = len & 0x7F;
      if (n == 0 || n > 3 || at + n > cert_der.size()) return -1;
      len = 0;
      for (std::size_t i = 0; i < n; ++i)
        len = (len << 8) | static_cast<unsigned char>(cert_der[at++]);
    }
    return at + len <= cert_der.size() ? static_cast<long>(len) : -1;
  };
  std::size_t at = 0;
  unsigned char tag = 0;
  if (header(at, tag) < 0 || tag != 0x30 || header(at, tag) < 0 || tag != 0x30) return "";
  long len = header(at, tag);
  if (len >= 0 && tag == 0xA0) {  // [0] EXPLICIT version
    at += static_cast<std::size_t>(len);
    len = header(at, tag);
  }
  if (len <= 0 || tag != 0x02) return "";
  static const char* kHex = "0123456789ABCDEF";
  std::string hex;
  for (long i = 0; i < len; ++i) {
    const auto b = static_cast<unsigned char>(cert_der[at + static_cast<std::size_t>(i)]);
    hex += kHex[b >> 4];
    hex += kHex[b & 15];
  }
  return normalize_serial(hex);
}

std::string public_key_bits(const X509* cert) {
  const ASN1_BIT_STRING* bits = X509_get0_pubkey_bitstr(cert);
  return bits == nullptr ? ""
                         : std::string(reinterpret_cast<const char*>(bits->data), bits->length);
}

namespace {

// EC: the public point for the private scalar, in the encoding `like` uses (first byte 04, 02, 03).
std::string ec_public_bits(const unsigned char* der, int len, int curve_nid,
                           const std::string& like) {
  std::string out;
  EC_KEY* key = EC_KEY_new_by_curve_name(curve_nid);
  const unsigned char* p = der;
  if (key != nullptr && d2i_ECPrivateKey(&key, &p, len) != nullptr) {
    const EC_GROUP* group = EC_KEY_get0_group(key);
    EC_POINT* point = EC_POINT_new(group);
    const auto form =
        !like.empty() && like[0] != 4 ? POINT_CONVERSION_COMPRESSED : POINT_CONVERSION_UNCOMPRESSED;
    if (EC_POINT_mul(group, point, EC_KEY_get0_private_key(key), nullptr, nullptr, nullptr) == 1) {
      out.resize(EC_POINT_point2oct(group, point, form, nullptr, 0, nullptr));
      EC_POINT_point2oct(group, point, form, reinterpret_cast<unsigned char*>(out.data()),
                         out.size(), nullptr);
    }
    EC_POINT_free(point);
  }
  EC_KEY_free(key);
  return out;
}

}  // namespace

bool key_matches(const std::string& key_pem, const std::string& public_bits) {
  const auto blocks = pem_blocks(key_pem, "PRIVATE KEY");
  if (blocks.size() != 1) return false;
  const auto* p = reinterpret_cast<const unsigned char*>(blocks[0].data());
  PKCS8_PRIV_KEY_INFO* p8 =
      d2i_PKCS8_PRIV_KEY_INFO(nullptr, &p, static_cast<long>(blocks[0].size()));
  if (p8 == nullptr) return false;
  const ASN1_OBJECT* alg_oid = nullptr;
  const unsigned char* inner = nullptr;
  int inner_len = 0;
  const X509_ALGOR* alg = nullptr;
  PKCS8_pkey_get0(&alg_oid, &inner, &inner_len, &alg, p8);
  int param_type = 0;
  const void* param = nullptr;
  X509_ALGOR_get0(nullptr, &param_type, &param, alg);
  std::string bits;
  if (OBJ_obj2nid(alg_oid) == NID_X9_62_id_ecPublicKey && param_type == V_ASN1_OBJECT) {
    bits = ec_public_bits(inner, inner_len, OBJ_obj2nid(static_cast<const ASN1_OBJECT*>(param)),
                          public_bits);
  } else if (EVP_PKEY* key = EVP_PKCS82PKEY(p8)) {
    X509_PUBKEY* pub = nullptr;
    const unsigned char* pub_bits = nullptr;
    int pub_len = 0;
    if (X509_PUBKEY_set(&pub, key) == 1 &&
        X509_PUBKEY_get0_param(nullptr, &pub_bits, &pub_len, nullptr, pub) == 1) {
      bits.assign(reinterpret_cast<const char*>(pub_bits), static_cast<std::size_t>(pub_len));
    }
    X509_PUBKEY_free(pub);
    EVP_PKEY_free(key);
  }
  PKCS8_PRIV_KEY_INFO_free(p8);
  return !bits.empty() && bits == public_bits;
}

std::string der_to_pem(const std::vector<std::uint8_t>& der, const std::string& name) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio(bio, name.c_str(), "", der.data(), static_cast<long>(der.size()));
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<std::size_t>(n));
  BIO_free(bio);
  return pem;
}

std::string to_string(const std::vector<std::uint8_t>& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::string make_csr_pem(const std::string& cn) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509_REQ* req = X509_REQ_new();
  X509_REQ_set_version(req, 0);
  X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_REQ_set_pubkey(req, key);
  X509_REQ_sign(req, key, EVP_sha256());
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509_REQ(bio, req);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<std::size_t>(n));
  BIO_free(bio);
  X509_REQ_free(req);
  EVP_PKEY_free(key);
  return pem;
}

std::vector<Input> write_csr_bundle(const fs::path& file, const std::vector<std::string>& ids) {
  std::vector<Input> inputs;
  std::string text;
  int line = 1;
  for (const auto& id : ids) {
    const std::string pem = make_csr_pem(id);
    inputs.push_back(Input{id, file.string() + ":" + std::to_string(line)});
    line += static_cast<int>(std::count(pem.begin(), pem.end(), '\n'));
    text += pem;
  }
  testing::write_file(file, text);
  return inputs;
}

}  // namespace fleetsign::batchtest
