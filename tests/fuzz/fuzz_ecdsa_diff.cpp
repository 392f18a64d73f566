// fuzz_ecdsa_diff: the fixed-key ECDSA verifier (FixedKeyVerifier: the CA's key with precomputed
// tables, verify and the batch verify_all with one shared inversion) differentially against
// OpenSSL's ECDSA_verify on the same key, digest and signature. Any disagreement aborts.
//
// Keys: two P-256 and two P-384 keys made deterministically (private scalar = a hash of a fixed
// label), so checked-in seeds carry valid signatures for them.
// Input: key (1 byte, mod 4), checks (1 byte, 1 + b mod 4), then per check: digest (1 length byte
// + up to 255 bytes), DER signature (1 length byte + up to 255 bytes).
// Seeds (FLEETSIGN_FUZZ_SEEDS_OUT): valid signatures of each key over digests of 32, 48 and 64
// bytes, alone and in batches beside invalid ones, so mutations explore near-valid signatures.
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fixed_key_verifier.hpp"
#include "fuzz_input.hpp"
#include "fuzz_keys.hpp"

namespace {

using fleetsign::engine::FixedKeyVerifier;
using Bytes = std::vector<std::uint8_t>;

struct Key {
  EC_KEY* ec = nullptr;
  std::unique_ptr<FixedKeyVerifier> fast;
};

std::array<Key, 4>& keys() {
  static std::array<Key, 4> k = [] {
    std::array<Key, 4> out;
    const int nids[] = {NID_X9_62_prime256v1, NID_X9_62_prime256v1, NID_secp384r1, NID_secp384r1};
    for (std::size_t i = 0; i < out.size(); ++i) {
      out[i].ec =
          fleetsign::fuzz::deterministic_key(nids[i], "fleetsign fuzz key " + std::to_string(i));
      out[i].fast = std::make_unique<FixedKeyVerifier>(out[i].ec);
    }
    return out;
  }();
  return k;
}

bool reference(EC_KEY* key, const Bytes& digest, const Bytes& sig) {
  const bool ok = ECDSA_verify(0, digest.data(), static_cast<int>(digest.size()), sig.data(),
                               static_cast<int>(sig.size()), key) == 1;
  ERR_clear_error();
  return ok;
}

Bytes sign(EC_KEY* key, const Bytes& digest) {
  Bytes sig(static_cast<std::size_t>(ECDSA_size(key)));
  unsigned len = 0;
  if (ECDSA_sign(0, digest.data(), static_cast<int>(digest.size()), sig.data(), &len, key) != 1) {
    fleetsign::fuzz::violated("ECDSA_sign failed");
  }
  sig.resize(len);
  return sig;
}

void append_field(Bytes& out, const Bytes& field) {
  out.push_back(static_cast<std::uint8_t>(field.size()));
  out.insert(out.end(), field.begin(), field.end());
}

// Valid signatures as seeds (only when FLEETSIGN_FUZZ_SEEDS_OUT is set).
void write_seeds() {
  if (fleetsign::fuzz::seeds_out() == nullptr) return;
  for (std::size_t k = 0; k < keys().size(); ++k) {
    for (const std::size_t digest_size : {32, 48, 64}) {
      Bytes digest(digest_size);
      for (std::size_t i = 0; i < digest.size(); ++i)
        digest[i] = static_cast<std::uint8_t>(i * 7 + k);
      const Bytes sig = sign(keys()[k].ec, digest);
      Bytes one{static_cast<std::uint8_t>(k), 0};
      append_field(one, digest);
      append_field(one, sig);
      fleetsign::fuzz::write_seed(
          "valid-key" + std::to_string(k) + "-digest" + std::to_string(digest_size), one);
      Bytes bad_sig = sig;
      bad_sig.back() ^= 1;
      Bytes batch{static_cast<std::uint8_t>(k), 2};
      append_field(batch, digest);
      append_field(batch, sig);
      append_field(batch, digest);
      append_field(batch, bad_sig);
      digest[0] ^= 0x80;
      append_field(batch, digest);
      append_field(batch, sign(keys()[k].ec, digest));
      fleetsign::fuzz::write_seed(
          "batch-key" + std::to_string(k) + "-digest" + std::to_string(digest_size), batch);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)keys();
  write_seeds();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fleetsign::fuzz::Input in(data, size);
  const Key& key = keys()[in.byte() % 4];
  const std::size_t count = 1 + in.byte() % 4;
  std::vector<Bytes> digests, sigs;
  for (std::size_t i = 0; i < count; ++i) {
    const auto d = in.short_field();
    const auto s = in.short_field();
    digests.emplace_back(d.begin(), d.end());
    sigs.emplace_back(s.begin(), s.end());
  }
  std::vector<FixedKeyVerifier::Check> checks;
  for (std::size_t i = 0; i < count; ++i) checks.push_back({digests[i], sigs[i]});
  key.fast->verify_all(checks);
  for (std::size_t i = 0; i < count; ++i) {
    const bool expected = reference(key.ec, digests[i], sigs[i]);
    if (checks[i].valid != expected) {
      fleetsign::fuzz::violated(expected ? "verify_all refused a signature ECDSA_verify accepts"
                                         : "verify_all accepted a signature ECDSA_verify refuses");
    }
    if (key.fast->verify(digests[i], sigs[i]) != expected) {
      fleetsign::fuzz::violated("verify disagrees with ECDSA_verify");
    }
  }
  return 0;
}
