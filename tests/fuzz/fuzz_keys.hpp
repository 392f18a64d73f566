// Deterministic EC keys for the fuzz targets: the private scalar is SHA-512 of a fixed label,
// reduced modulo the curve order, so a seed signed by "fleetsign fuzz key 0" today verifies with
// the key the target makes tomorrow. Test keys only: never use them for anything else.
#pragma once

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include <string>

#include "fuzz_input.hpp"

namespace fleetsign::fuzz {

// A new EC_KEY (the caller owns it) on curve `nid`, private and public parts set.
inline EC_KEY* deterministic_key(int nid, const std::string& label) {
  EC_KEY* key = EC_KEY_new_by_curve_name(nid);
  const EC_GROUP* group = key != nullptr ? EC_KEY_get0_group(key) : nullptr;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned md_len = 0;
  EVP_Digest(label.data(), label.size(), md, &md_len, EVP_sha512(), nullptr);
  BIGNUM* d = BN_bin2bn(md, static_cast<int>(md_len), nullptr);
  BN_CTX* ctx = BN_CTX_new();
  EC_POINT* q = group != nullptr ? EC_POINT_new(group) : nullptr;
  const bool ok = d != nullptr && ctx != nullptr && q != nullptr &&
                  BN_nnmod(d, d, EC_GROUP_get0_order(group), ctx) == 1 && !BN_is_zero(d) &&
                  EC_KEY_set_private_key(key, d) == 1 &&
                  EC_POINT_mul(group, q, d, nullptr, nullptr, ctx) == 1 &&
                  EC_KEY_set_public_key(key, q) == 1;
  EC_POINT_free(q);
  BN_CTX_free(ctx);
  BN_clear_free(d);
  if (!ok) violated("cannot make a deterministic key");
  return key;
}

// The same key as an EVP_PKEY (the caller owns it).
inline EVP_PKEY* deterministic_pkey(int nid, const std::string& label) {
  EVP_PKEY* pkey = EVP_PKEY_new();
  if (pkey == nullptr || EVP_PKEY_assign_EC_KEY(pkey, deterministic_key(nid, label)) != 1) {
    violated("cannot wrap a deterministic key");
  }
  return pkey;
}

}  // namespace fleetsign::fuzz
