// ECDSA verification for ONE fixed public key (the CA's): u1·G + u2·Q with both multiplications
// served from precomputed tables. OpenSSL's group arithmetic does the work: a copy of the curve
// group gets Q as its generator, and EC_GROUP_precompute_mult builds Q's table exactly as it does
// for G. Every token signature is verified before it is recorded (Boulder's rule), so this sits on
// the issuance hot path.
//
// For a batch, the inversion of s modulo the order (OpenSSL's generic BN_mod_inverse: about as
// costly as both table multiplications together) is done once for all signatures (Montgomery's
// trick).
//
// Thread-safe after construction (read-only tables; per-call BN_CTX). Private to engine/.
#pragma once

#include <openssl/ec.h>

#include <cstdint>
#include <memory>
#include <span>

namespace fleetsign::engine {

class FixedKeyVerifier final {
 public:
  // `public_key` must be an EC key on P-256 or P-384; throws Error(kInternal) otherwise.
  explicit FixedKeyVerifier(const EC_KEY* public_key);
  ~FixedKeyVerifier();
  FixedKeyVerifier(const FixedKeyVerifier&) = delete;  // owns OpenSSL groups and points
  FixedKeyVerifier& operator=(const FixedKeyVerifier&) = delete;

  // True iff `der_signature` (ECDSA-Sig-Value, strict DER) is valid for `digest` under the key.
  // Same answer as ECDSA_do_verify (the test compares them over valid and corrupted signatures).
  bool verify(std::span<const std::uint8_t> digest,
              std::span<const std::uint8_t> der_signature) const;

  // One signature of a batch: the inputs, and the verdict verify_all writes.
  struct Check {
    std::span<const std::uint8_t> digest;
    std::span<const std::uint8_t> der_signature;
    bool valid = false;
  };
  // Sets every check's `valid` to what verify() would return for it. A batch of N costs one
  // modular inversion and about 3N modular multiplications more than its table multiplications,
  // where N single verifies cost N inversions.
  void verify_all(std::span<Check> checks) const;

 private:
  void release() noexcept;
  EC_GROUP* m_group = nullptr;    // the named curve (its G table is built in)
  EC_GROUP* m_q_group = nullptr;  // same curve, generator = Q, with Q's table
  BIGNUM* m_order = nullptr;
  int m_order_bits = 0;
  std::size_t m_order_bytes = 0;
};

}  // namespace fleetsign::engine
