// The fixed-key ECDSA verifier against OpenSSL's ECDSA_verify, the reference it must equal: random
// keys and messages, valid signatures, and every malformation a signature can carry (bit flips,
// wrong message or key, r or s = 0 or >= n, negative values, non-minimal DER, wrong lengths,
// truncation, trailing bytes). Both must agree on every input.
#include "fixed_key_verifier.hpp"

#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fleetsign/error.hpp"

namespace fleetsign::engine {
namespace {

using Bytes = std::vector<std::uint8_t>;

struct KeyFree {
  void operator()(EC_KEY* k) const noexcept { EC_KEY_free(k); }
};
using Key = std::unique_ptr<EC_KEY, KeyFree>;
struct BnFree {
  void operator()(BIGNUM* b) const noexcept { BN_free(b); }
};
using Bn = std::unique_ptr<BIGNUM, BnFree>;

Key new_key(int nid) {
  Key key(EC_KEY_new_by_curve_name(nid));
  EXPECT_EQ(EC_KEY_generate_key(key.get()), 1);
  return key;
}

Bytes digest_of(const Bytes& message, const EVP_MD* md) {
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned len = 0;
  EVP_Digest(message.data(), message.size(), out.data(), &len, md, nullptr);
  out.resize(len);
  return out;
}

Bytes sign(const Bytes& digest, EC_KEY* key) {
  Bytes out(static_cast<std::size_t>(ECDSA_size(key)));
  unsigned len = 0;
  EXPECT_EQ(ECDSA_sign(0, digest.data(), static_cast<int>(digest.size()), out.data(), &len, key),
            1);
  out.resize(len);
  return out;
}

// r and s of a DER signature (copies).
std::pair<Bn, Bn> split(const Bytes& der) {
  const unsigned char* p = der.data();
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig, &r, &s);
  std::pair<Bn, Bn> out{Bn(BN_dup(r)), Bn(BN_dup(s))};
  ECDSA_SIG_free(sig);
  return out;
}

// DER of (r, s) as i2d_ECDSA_SIG writes it, whatever the values (0, negative, >= n).
Bytes encode(const BIGNUM* r, const BIGNUM* s) {
  ECDSA_SIG* sig = ECDSA_SIG_new();
  ECDSA_SIG_set0(sig, BN_dup(r), BN_dup(s));
  unsigned char* buf = nullptr;
  const int len = i2d_ECDSA_SIG(sig, &buf);
  Bytes out(buf, buf + (len > 0 ? len : 0));
  OPENSSL_free(buf);
  ECDSA_SIG_free(sig);
  return out;
}

// Hand-made DER pieces for encodings i2d never writes.
Bytes tlv(std::uint8_t tag, const Bytes& body, bool long_form = false) {
  Bytes out{tag};
  if (long_form || body.size() > 127) {
    out.push_back(0x81);
  }
  out.push_back(static_cast<std::uint8_t>(body.size()));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Bytes minimal_content(const BIGNUM* v) {
  Bytes out(static_cast<std::size_t>(BN_num_bytes(v)));
  BN_bn2bin(v, out.data());
  if (out.empty() || (out[0] & 0x80) != 0) out.insert(out.begin(), 0x00);
  return out;
}

Bytes cat(const Bytes& a, const Bytes& b) {
  Bytes out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// Counts agreements and names the first few disagreements.
class Referee {
 public:
  explicit Referee(EC_KEY* key) : m_key(key), m_fast(key) {}

  void check(const Bytes& digest, const Bytes& der, const std::string& what, bool expect_valid) {
    const bool fast = m_fast.verify(digest, der);
    const int ref = ECDSA_verify(0, digest.data(), static_cast<int>(digest.size()), der.data(),
                                 static_cast<int>(der.size()), m_key);
    ERR_clear_error();
    EXPECT_EQ(fast, ref == 1) << what << " (OpenSSL said " << ref << ")";
    EXPECT_EQ(ref == 1, expect_valid) << what << ": the case itself is not what it claims";
    ++checks;
    if (ref == 1) ++valid;
    m_cases.push_back({digest, der, what, ref == 1});
  }

  // Every case so far again, all in one verify_all batch (one shared inversion of the s values):
  // each verdict must still be OpenSSL's.
  void check_as_one_batch() {
    std::vector<FixedKeyVerifier::Check> batch;
    for (const auto& c : m_cases) batch.push_back({c.digest, c.der});
    m_fast.verify_all(batch);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      EXPECT_EQ(batch[i].valid, m_cases[i].valid)
          << "in a batch of " << batch.size() << ": " << m_cases[i].what;
    }
    m_cases.clear();
  }

  int checks = 0;
  int valid = 0;

 private:
  struct Case {
    Bytes digest, der;
    std::string what;
    bool valid;
  };
  EC_KEY* m_key;
  FixedKeyVerifier m_fast;
  std::vector<Case> m_cases;
};

// Every malformation of one valid signature `der` over `digest`.
void malform(Referee& ref, EC_KEY* key, const Bytes& digest, const Bytes& der, std::mt19937& rng) {
  const BIGNUM* n = EC_GROUP_get0_order(EC_KEY_get0_group(key));
  auto [r, s] = split(der);
  Bn zero(BN_new()), big(BN_new()), neg(BN_dup(r.get())), high_s(BN_new());
  BN_zero(zero.get());
  BN_add(big.get(), r.get(), n);  // r + n: same residue, out of range
  BN_set_negative(neg.get(), 1);
  BN_sub(high_s.get(), n, s.get());  // n - s: the other valid s (ECDSA is malleable)

  ref.check(digest, der, "valid", true);
  ref.check(digest, encode(r.get(), high_s.get()), "n - s (valid)", true);
  Bytes flipped = der;
  flipped[rng() % flipped.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
  ref.check(digest, flipped, "one bit flipped", false);
  Bytes other = digest;
  // Within the leftmost bits that ECDSA uses (a longer digest is truncated to the order's size).
  const std::size_t used = std::min(other.size(), static_cast<std::size_t>(BN_num_bytes(n)));
  other[rng() % used] ^= 0x01;
  ref.check(other, der, "other message", false);
  ref.check(digest, encode(zero.get(), s.get()), "r = 0", false);
  ref.check(digest, encode(r.get(), zero.get()), "s = 0", false);
  ref.check(digest, encode(n, s.get()), "r = n", false);
  ref.check(digest, encode(r.get(), n), "s = n", false);
  ref.check(digest, encode(big.get(), s.get()), "r + n", false);
  ref.check(digest, encode(neg.get(), s.get()), "r negative", false);
  ref.check(digest, Bytes(der.begin(), der.end() - 1), "last byte cut", false);
  ref.check(digest, Bytes(der.begin(), der.begin() + static_cast<long>(rng() % der.size())),
            "truncated", false);
  ref.check(digest, cat(der, {0x00}), "trailing zero byte", false);
  ref.check(digest, cat(der, {0x05, 0x00}), "trailing NULL", false);
  ref.check(digest, {}, "empty", false);
  const Bytes ri = tlv(0x02, minimal_content(r.get())), si = tlv(0x02, minimal_content(s.get()));
  ref.check(digest, tlv(0x30, cat(ri, si)), "hand-made minimal DER (valid)", true);
  ref.check(digest, tlv(0x30, cat(ri, si), true), "long-form sequence length", false);
  ref.check(digest, tlv(0x30, cat(tlv(0x02, cat({0x00}, minimal_content(r.get()))), si)),
            "r with an extra leading zero", false);
  ref.check(digest, tlv(0x30, cat(ri, tlv(0x02, minimal_content(s.get()), true))),
            "long-form INTEGER length", false);
  Bytes longer = der;
  longer[1] = static_cast<std::uint8_t>(longer[1] + 1);
  ref.check(digest, longer, "sequence length one too long", false);
  Bytes shorter = der;
  shorter[1] = static_cast<std::uint8_t>(shorter[1] - 1);
  ref.check(digest, shorter, "sequence length one too short", false);
  ref.check(digest, tlv(0x31, cat(ri, si)), "SET instead of SEQUENCE", false);
  ref.check(digest, tlv(0x30, cat(ri, cat(si, tlv(0x02, {0x01})))), "three INTEGERs", false);
  ref.check(digest, tlv(0x30, ri), "r only", false);
}

struct Curve {
  int nid;
  const EVP_MD* md;
  const char* name;
};

TEST(FixedKeyVerifier, AgreesWithOpensslEcdsaVerifyOnRandomAndMalformedSignatures) {
  std::mt19937 rng(20261126);
  int keys = 0, messages = 0;
  for (const Curve c : {Curve{NID_X9_62_prime256v1, EVP_sha256(), "P-256"},
                        Curve{NID_X9_62_prime256v1, EVP_sha384(), "P-256/SHA-384"},
                        Curve{NID_X9_62_prime256v1, EVP_sha1(), "P-256/SHA-1"},
                        Curve{NID_secp384r1, EVP_sha384(), "P-384"}}) {
    const int key_count = c.md == EVP_sha256() ? 50 : 8;
    for (int k = 0; k < key_count; ++k) {
      Key key = new_key(c.nid);
      Key stranger = new_key(c.nid);
      Referee ref(key.get());
      ++keys;
      for (int m = 0; m < 15; ++m, ++messages) {
        Bytes message(rng() % 200);
        for (auto& b : message) b = static_cast<std::uint8_t>(rng());
        const Bytes digest = digest_of(message, c.md);
        const Bytes der = sign(digest, key.get());
        malform(ref, key.get(), digest, der, rng);
        ref.check(digest, sign(digest, stranger.get()), std::string(c.name) + " other key", false);
      }
      ref.check_as_one_batch();
      EXPECT_GT(ref.valid, 0);
      if (::testing::Test::HasFailure()) return;  // the first key that disagrees is enough
    }
  }
  EXPECT_GE(messages, 1000);
  std::printf("[ checked  ] %d keys, %d messages, each valid and malformed\n", keys, messages);
}

// The branch no random signature reaches (probability about 2^-128): the point's x lies in
// [n, p), so r = x - n. With Q = R itself, digest 0 and s = r, u1 = 0 and u2 = 1 give R.
TEST(FixedKeyVerifier, AcceptsASignatureWhosePointXIsAtLeastTheOrder) {
  for (const int nid : {NID_X9_62_prime256v1, NID_secp384r1}) {
    EC_GROUP* group = EC_GROUP_new_by_curve_name(nid);
    const BIGNUM* n = EC_GROUP_get0_order(group);
    Bn x(BN_dup(n)), r(BN_new());
    EC_POINT* point = EC_POINT_new(group);
    int tries = 0;
    do {
      BN_add_word(x.get(), 1);
      ERR_clear_error();
    } while (EC_POINT_set_compressed_coordinates(group, point, x.get(), 0, nullptr) != 1 &&
             ++tries < 200);
    ASSERT_LT(tries, 200) << "no point with x in [n, n + 200]";
    BN_sub(r.get(), x.get(), n);
    Key key(EC_KEY_new_by_curve_name(nid));
    ASSERT_EQ(EC_KEY_set_public_key(key.get(), point), 1);
    const Bytes digest(static_cast<std::size_t>(BN_num_bytes(n)), 0);
    const Bytes der = encode(r.get(), r.get());
    const int ref = ECDSA_verify(0, digest.data(), static_cast<int>(digest.size()), der.data(),
                                 static_cast<int>(der.size()), key.get());
    EXPECT_EQ(ref, 1) << "OpenSSL accepts r = x - n";
    FixedKeyVerifier fast(key.get());
    EXPECT_TRUE(fast.verify(digest, der));
    Bytes other = digest;
    other.back() = 1;
    EXPECT_FALSE(fast.verify(other, der));
    EC_POINT_free(point);
    EC_GROUP_free(group);
  }
}

TEST(FixedKeyVerifier, RefusesKeysOnOtherCurves) {
  Key key = new_key(NID_secp521r1);
  EXPECT_THROW(FixedKeyVerifier{key.get()}, Error);
}

}  // namespace
}  // namespace fleetsign::engine
