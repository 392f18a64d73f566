// Fast, valid P-256 CSRs for the bench. The openssl CLI makes ~70/s; here each CSR is a fresh key
// from EC_KEY_generate_key, a CertificationRequestInfo built as DER by hand (subject CN only, no
// attributes), an ECDSA-with-SHA256 signature by that key, and PEM — in parallel with TBB.
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>

#include "bench.hpp"

namespace fleetsign::bench {

namespace {

using Bytes = std::vector<std::uint8_t>;

void append_len(Bytes& out, std::size_t len) {
  if (len < 0x80) {
    out.push_back(static_cast<std::uint8_t>(len));
  } else if (len < 0x100) {
    out.push_back(0x81);
    out.push_back(static_cast<std::uint8_t>(len));
  } else {
    out.push_back(0x82);
    out.push_back(static_cast<std::uint8_t>(len >> 8));
    out.push_back(static_cast<std::uint8_t>(len & 0xff));
  }
}

Bytes tlv(std::uint8_t tag, const Bytes& content) {
  Bytes out{tag};
  append_len(out, content.size());
  out.insert(out.end(), content.begin(), content.end());
  return out;
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const auto& p : parts) {
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (unused 0) 04 || X || Y }
const Bytes kSpkiP256Prefix = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                               0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
                               0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};
// AlgorithmIdentifier ecdsa-with-SHA256 (no parameters)
const Bytes kEcdsaSha256 = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
const Bytes kOidCommonName = {0x06, 0x03, 0x55, 0x04, 0x03};

const EC_GROUP* p256() {
  static const EC_GROUP* group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  return group;
}

std::string to_pem(const Bytes& der) {
  static constexpr char kHead[] = "-----BEGIN CERTIFICATE REQUEST-----\n";
  static constexpr char kTail[] = "-----END CERTIFICATE REQUEST-----\n";
  std::string pem = kHead;
  unsigned char line[80];
  for (std::size_t at = 0; at < der.size(); at += 48) {
    const std::size_t n = std::min<std::size_t>(48, der.size() - at);
    const int len = EVP_EncodeBlock(line, der.data() + at, static_cast<int>(n));
    pem.append(reinterpret_cast<const char*>(line), static_cast<std::size_t>(len));
    pem.push_back('\n');
  }
  pem += kTail;
  return pem;
}

std::string make_csr(std::size_t index) {
  EC_KEY* ec = EC_KEY_new();
  if (ec == nullptr || EC_KEY_set_group(ec, p256()) != 1 || EC_KEY_generate_key(ec) != 1) {
    EC_KEY_free(ec);
    throw std::runtime_error("EC P-256 key generation failed");
  }
  std::uint8_t point[65];
  if (EC_POINT_point2oct(p256(), EC_KEY_get0_public_key(ec), POINT_CONVERSION_UNCOMPRESSED, point,
                         sizeof point, nullptr) != sizeof point) {
    EC_KEY_free(ec);
    throw std::runtime_error("EC point encoding failed");
  }
  char cn[32];
  const int cn_len = std::snprintf(cn, sizeof cn, "bench-%06zu", index);
  const Bytes cn_bytes(cn, cn + cn_len);

  const Bytes name = tlv(0x30, tlv(0x31, tlv(0x30, cat({kOidCommonName, tlv(0x0c, cn_bytes)}))));
  Bytes spki = kSpkiP256Prefix;
  spki.insert(spki.end(), point, point + sizeof point);
  const Bytes version = {0x02, 0x01, 0x00};
  const Bytes no_attributes = {0xa0, 0x00};
  const Bytes info = tlv(0x30, cat({version, name, spki, no_attributes}));

  std::uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(info.data(), info.size(), digest);
  Bytes sig(static_cast<std::size_t>(ECDSA_size(ec)) + 1);
  unsigned int sig_len = 0;
  const int ok = ECDSA_sign(0, digest, sizeof digest, sig.data() + 1, &sig_len, ec);
  EC_KEY_free(ec);
  if (ok != 1) {
    throw std::runtime_error("ECDSA signing of a CSR failed");
  }
  sig[0] = 0x00;  // BIT STRING: no unused bits
  sig.resize(sig_len + 1);
  return to_pem(tlv(0x30, cat({info, kEcdsaSha256, tlv(0x03, sig)})));
}

}  // namespace

std::vector<std::string> make_csrs(std::size_t first, std::size_t count, int threads) {
  std::vector<std::string> pems(count);
  std::atomic<bool> failed{false};
  tbb::task_arena arena(threads);
  arena.execute([&] {
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, count, 256),
                      [&](const tbb::blocked_range<std::size_t>& r) {
                        for (std::size_t i = r.begin(); i != r.end(); ++i) {
                          try {
                            pems[i] = make_csr(first + i);
                          } catch (const std::exception&) {
                            failed = true;
                          }
                        }
                      });
  });
  if (failed) {
    throw std::runtime_error("CSR generation failed");
  }
  return pems;
}

void write_bundle(const std::filesystem::path& file, const std::vector<std::string>& pems,
                  std::size_t from, std::size_t count) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  const std::size_t end = count > pems.size() - from ? pems.size() : from + count;
  for (std::size_t i = from; i < end; ++i) {
    out << pems[i];
  }
  if (!out.flush()) {
    throw std::runtime_error(file.string() + ": cannot be written");
  }
}

bool openssl_accepts_csr(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509_REQ* req = PEM_read_bio_X509_REQ(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (req == nullptr) {
    return false;
  }
  EVP_PKEY* key = X509_REQ_get0_pubkey(req);
  const bool ok = key != nullptr && X509_REQ_verify(req, key) == 1;
  X509_REQ_free(req);
  return ok;
}

}  // namespace fleetsign::bench
