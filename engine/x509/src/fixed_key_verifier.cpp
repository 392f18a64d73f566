#include "fixed_key_verifier.hpp"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>

#include <memory>
#include <vector>

#include "der.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

struct BnCtx {
  BN_CTX* ctx = BN_CTX_new();
  BnCtx() = default;
  BnCtx(const BnCtx&) = delete;  // owns the context
  BnCtx& operator=(const BnCtx&) = delete;
  ~BnCtx() { BN_CTX_free(ctx); }
};

struct BnFree {
  void operator()(BIGNUM* b) const noexcept { BN_free(b); }
};
using Bn = std::unique_ptr<BIGNUM, BnFree>;
struct PointFree {
  void operator()(EC_POINT* p) const noexcept { EC_POINT_free(p); }
};
using Point = std::unique_ptr<EC_POINT, PointFree>;

// The content of a DER INTEGER that is minimal and not negative (a negative r or s is never
// valid, and a non-minimal encoding is not DER: ECDSA_verify refuses both).
bool read_unsigned(der::Bytes& in, der::Bytes& value) {
  der::Tlv t;
  if (!der::expect(in, der::tag::kInteger, t) || t.content.empty()) return false;
  const der::Bytes c = t.content;
  if ((c[0] & 0x80) != 0) return false;
  if (c.size() > 1 && c[0] == 0 && (c[1] & 0x80) == 0) return false;
  value = c;
  return true;
}

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
  m_order = m_group != nullptr ? BN_dup(EC_GROUP_get0_order(m_group)) : nullptr;
  if (bn.ctx == nullptr || m_group == nullptr || m_q_group == nullptr || m_order == nullptr ||
      EC_GROUP_set_generator(m_q_group, EC_KEY_get0_public_key(key), m_order,
                             EC_GROUP_get0_cofactor(m_group)) != 1 ||
      EC_GROUP_precompute_mult(m_q_group, bn.ctx) != 1) {
    release();
    throw Error(ErrorCode::kInternal, "FixedKeyVerifier: cannot precompute the key's table");
  }
  m_order_bits = BN_num_bits(m_order);
  m_order_bytes = static_cast<std::size_t>(BN_num_bytes(m_order));
}

FixedKeyVerifier::~FixedKeyVerifier() { release(); }

void FixedKeyVerifier::release() noexcept {
  EC_GROUP_free(m_group);
  EC_GROUP_free(m_q_group);
  BN_free(m_order);
  m_group = m_q_group = nullptr;
  m_order = nullptr;
}

bool FixedKeyVerifier::verify(std::span<const std::uint8_t> digest,
                              std::span<const std::uint8_t> der) const {
  Check check{digest, der};
  verify_all(std::span<Check>(&check, 1));
  return check.valid;
}

void FixedKeyVerifier::verify_all(std::span<Check> checks) const {
  for (Check& c : checks) c.valid = false;
  BnCtx bn;
  if (bn.ctx == nullptr) return;
  const std::size_t count = checks.size();
  std::vector<Bn> r(count), w(count);  // w: first the product of the s before, then 1/s
  std::vector<Bn> s(count);
  Bn acc(BN_new()), inv(BN_new());
  if (!acc || !inv || BN_one(acc.get()) != 1) return;

  // 1. Parse (strict DER, SEC 1 4.1.4 step 1: 0 < r, s < n) and take the running product of s.
  for (std::size_t i = 0; i < count; ++i) {
    der::Bytes in = checks[i].der_signature, rv, sv;
    der::Tlv seq;
    if (!der::expect(in, der::tag::kSequence, seq) || !in.empty()) continue;
    der::Bytes body = seq.content;
    if (!read_unsigned(body, rv) || !read_unsigned(body, sv) || !body.empty()) continue;
    if (rv.size() > m_order_bytes + 1 || sv.size() > m_order_bytes + 1) continue;
    Bn ri(BN_bin2bn(rv.data(), static_cast<int>(rv.size()), nullptr));
    Bn si(BN_bin2bn(sv.data(), static_cast<int>(sv.size()), nullptr));
    Bn wi(BN_dup(acc.get()));
    if (!ri || !si || !wi || BN_is_zero(ri.get()) || BN_ucmp(ri.get(), m_order) >= 0 ||
        BN_is_zero(si.get()) || BN_ucmp(si.get(), m_order) >= 0 ||
        BN_mod_mul(acc.get(), acc.get(), si.get(), m_order, bn.ctx) != 1) {
      continue;
    }
    r[i] = std::move(ri);
    s[i] = std::move(si);
    w[i] = std::move(wi);
  }
  // 2. One inversion for the batch, then 1/s_i = (s_1..s_{i-1}) / (s_1..s_i), walking back.
  if (BN_mod_inverse(inv.get(), acc.get(), m_order, bn.ctx) == nullptr) {
    ERR_clear_error();
    return;
  }
  for (std::size_t i = count; i-- > 0;) {
    if (!r[i]) continue;
    if (BN_mod_mul(w[i].get(), w[i].get(), inv.get(), m_order, bn.ctx) != 1 ||
        BN_mod_mul(inv.get(), inv.get(), s[i].get(), m_order, bn.ctx) != 1) {
      ERR_clear_error();
      return;
    }
  }
  // 3. Per signature: x(u1·G + u2·Q) mod n == r (SEC 1, 4.1.4 steps 4-8).
  Point p1(EC_POINT_new(m_group)), p2(EC_POINT_new(m_q_group)), sum(EC_POINT_new(m_group));
  BN_CTX_start(bn.ctx);
  BIGNUM* e = BN_CTX_get(bn.ctx);
  BIGNUM* u1 = BN_CTX_get(bn.ctx);
  BIGNUM* u2 = BN_CTX_get(bn.ctx);
  BIGNUM* x = BN_CTX_get(bn.ctx);
  if (x != nullptr && p1 && p2 && sum) {
    for (std::size_t i = 0; i < count; ++i) {
      if (!r[i]) continue;
      const auto digest = checks[i].digest;
      // e = the leftmost order-bits of the digest (SEC 1, 4.1.4 step 3).
      const int digest_bits = static_cast<int>(digest.size()) * 8;
      checks[i].valid =
          BN_bin2bn(digest.data(), static_cast<int>(digest.size()), e) != nullptr &&
          (digest_bits <= m_order_bits || BN_rshift(e, e, digest_bits - m_order_bits) == 1) &&
          BN_mod_mul(u1, e, w[i].get(), m_order, bn.ctx) == 1 &&
          BN_mod_mul(u2, r[i].get(), w[i].get(), m_order, bn.ctx) == 1 &&
          // u1·G and u2·Q, each from its group's precomputed table.
          EC_POINT_mul(m_group, p1.get(), u1, nullptr, nullptr, bn.ctx) == 1 &&
          EC_POINT_mul(m_q_group, p2.get(), u2, nullptr, nullptr, bn.ctx) == 1 &&
          // Same curve and method: the point from Q's group can be added in the named group.
          EC_POINT_copy(sum.get(), p2.get()) == 1 &&
          EC_POINT_add(m_group, sum.get(), p1.get(), sum.get(), bn.ctx) == 1 &&
          EC_POINT_is_at_infinity(m_group, sum.get()) == 0 &&
          EC_POINT_get_affine_coordinates(m_group, sum.get(), x, nullptr, bn.ctx) == 1 &&
          BN_nnmod(x, x, m_order, bn.ctx) == 1 && BN_cmp(x, r[i].get()) == 0;
    }
  }
  BN_CTX_end(bn.ctx);
  ERR_clear_error();
}

}  // namespace fleetsign::engine
