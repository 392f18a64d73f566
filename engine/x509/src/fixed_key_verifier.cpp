#include "fixed_key_verifier.hpp"

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>

#include <cstring>

#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

struct BnCtx {
  BN_CTX* ctx = BN_CTX_new();
  ~BnCtx() { BN_CTX_free(ctx); }
};

}  // namespace

FixedKeyVerifier::FixedKeyVerifier(const EC_KEY* key) {
  const EC_GROUP* g = EC_KEY_get0_group(key);
  const int nid = g != nullptr ? EC_GROUP_get_curve_name(g) : NID_undef;
  if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1) {
    throw Error(ErrorCode::kInternal, "FixedKeyVerifier: only P-256 and P-384 keys");
  }
  BnCtx bn;
  m_group = EC_GROUP_new_by_curve_name(nid);
  m_q_group = EC_GROUP_new_by_curve_name(nid);
  m_order = BN_dup(EC_GROUP_get0_order(m_group));
  m_order_bits = BN_num_bits(m_order);
  if (m_group == nullptr || m_q_group == nullptr || m_order == nullptr ||
      EC_GROUP_set_generator(m_q_group, EC_KEY_get0_public_key(key), m_order,
                             EC_GROUP_get0_cofactor(m_group)) != 1 ||
      EC_GROUP_precompute_mult(m_q_group, bn.ctx) != 1) {
    throw Error(ErrorCode::kInternal, "FixedKeyVerifier: cannot precompute the key's table");
  }
}

FixedKeyVerifier::~FixedKeyVerifier() {
  EC_GROUP_free(m_group);
  EC_GROUP_free(m_q_group);
  BN_free(m_order);
}

bool FixedKeyVerifier::verify(std::span<const std::uint8_t> digest,
                              std::span<const std::uint8_t> der) const {
  const unsigned char* p = der.data();
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
  // Strict DER, as ECDSA_verify demands: the signature must re-encode to the same bytes
  // (d2i accepts e.g. non-minimal lengths, which would make a second valid encoding).
  unsigned char* again = nullptr;
  const int again_len = sig != nullptr ? i2d_ECDSA_SIG(sig, &again) : -1;
  const bool canonical = sig != nullptr && p == der.data() + der.size() && again_len > 0 &&
                         static_cast<std::size_t>(again_len) == der.size() &&
                         std::memcmp(again, der.data(), der.size()) == 0;
  OPENSSL_free(again);
  if (!canonical) {
    ECDSA_SIG_free(sig);
    ERR_clear_error();
    return false;
  }
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig, &r, &s);
  BnCtx bn;
  BN_CTX_start(bn.ctx);
  BIGNUM* e = BN_CTX_get(bn.ctx);
  BIGNUM* w = BN_CTX_get(bn.ctx);
  BIGNUM* u1 = BN_CTX_get(bn.ctx);
  BIGNUM* u2 = BN_CTX_get(bn.ctx);
  BIGNUM* x = BN_CTX_get(bn.ctx);
  EC_POINT* p1 = EC_POINT_new(m_group);
  EC_POINT* p2 = EC_POINT_new(m_q_group);
  bool ok = x != nullptr && p1 != nullptr && p2 != nullptr &&
            // 0 < r, s < n (SEC 1, 4.1.4 step 1)
            !BN_is_zero(r) && !BN_is_negative(r) && BN_ucmp(r, m_order) < 0 && !BN_is_zero(s) &&
            !BN_is_negative(s) && BN_ucmp(s, m_order) < 0;
  if (ok) {
    // e = leftmost bits of the digest (SEC 1, 4.1.4 step 3).
    const int digest_bits = static_cast<int>(digest.size()) * 8;
    ok = BN_bin2bn(digest.data(), static_cast<int>(digest.size()), e) != nullptr &&
         (digest_bits <= m_order_bits || BN_rshift(e, e, digest_bits - m_order_bits) == 1) &&
         BN_mod_inverse(w, s, m_order, bn.ctx) != nullptr &&
         BN_mod_mul(u1, e, w, m_order, bn.ctx) == 1 && BN_mod_mul(u2, r, w, m_order, bn.ctx) == 1 &&
         // u1·G and u2·Q, each from its group's precomputed table.
         EC_POINT_mul(m_group, p1, u1, nullptr, nullptr, bn.ctx) == 1 &&
         EC_POINT_mul(m_q_group, p2, u2, nullptr, nullptr, bn.ctx) == 1;
  }
  if (ok) {
    // Same curve and method: the point from Q's group can be added in the named group.
    EC_POINT* sum = EC_POINT_new(m_group);
    ok = sum != nullptr && EC_POINT_copy(sum, p2) == 1 &&
         EC_POINT_add(m_group, sum, p1, sum, bn.ctx) == 1 &&
         EC_POINT_is_at_infinity(m_group, sum) == 0 &&
         EC_POINT_get_affine_coordinates(m_group, sum, x, nullptr, bn.ctx) == 1 &&
         BN_nnmod(x, x, m_order, bn.ctx) == 1 && BN_cmp(x, r) == 0;
    EC_POINT_free(sum);
  }
  EC_POINT_free(p1);
  EC_POINT_free(p2);
  BN_CTX_end(bn.ctx);
  ECDSA_SIG_free(sig);
  ERR_clear_error();
  return ok;
}

}  // namespace fleetsign::engine
