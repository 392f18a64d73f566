// In-process rates: raw OpenSSL ECDSA P-256 verify, and the token's C_Sign through
// fleetsign::hsm::SigningKey::sign_digest. Both run N threads for a fixed time after a start
// barrier; the rate is the total count over the time from the start to the last thread's stop.
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <thread>

#include "bench.hpp"
#include "fleetsign/engine/home.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/hsm/key_ref.hpp"
#include "fleetsign/hsm/pin.hpp"
#include "fleetsign/hsm/token.hpp"

namespace fleetsign::bench {

namespace {

using Clock = std::chrono::steady_clock;

const EC_GROUP* p256() {
  static const EC_GROUP* group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  return group;
}

double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Runs `body(thread_index, stop)` on `threads` threads, released together; each returns its
// count. Returns count / seconds (start of release to the last thread's end), and the threads'
// CPU time per counted operation.
template <typename Prepare, typename Body>
Rate timed_threads(int threads, double seconds, Prepare prepare, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<long long> total{0};
  std::vector<double> cpu(static_cast<std::size_t>(threads));
  std::atomic<bool> failed{false};
  Clock::time_point start;
  std::vector<Clock::time_point> ends(static_cast<std::size_t>(threads));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      auto state = prepare(t);
      ++ready;
      while (!go.load(std::memory_order_acquire)) {
        std::this_thread::yield();
      }
      const auto stop = start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(seconds));
      long long n = 0;
      const double cpu0 = thread_cpu_s();
      if (!body(state, stop, n)) {
        failed = true;
      }
      cpu[static_cast<std::size_t>(t)] = thread_cpu_s() - cpu0;
      ends[static_cast<std::size_t>(t)] = Clock::now();
      total += n;
    });
  }
  while (ready.load() < threads) {
    std::this_thread::yield();
  }
  start = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) {
    th.join();
  }
  if (failed) {
    throw std::runtime_error("a measurement thread failed");
  }
  Clock::time_point last = start;
  for (const auto& e : ends) {
    last = std::max(last, e);
  }
  const double elapsed = std::chrono::duration<double>(last - start).count();
  double cpu_total = 0;
  for (const double c : cpu) cpu_total += c;
  const auto ops = static_cast<double>(total.load());
  return {elapsed > 0 ? ops / elapsed : 0, ops > 0 ? cpu_total * 1e6 / ops : 0};
}

struct VerifyPair {
  std::uint8_t point[65];
  std::uint8_t digest[32];
  std::vector<std::uint8_t> sig;
};

std::vector<VerifyPair> make_pairs(std::size_t count) {
  std::vector<VerifyPair> pairs(count);
  for (auto& p : pairs) {
    EC_KEY* ec = EC_KEY_new();
    bool ok = ec != nullptr && EC_KEY_set_group(ec, p256()) == 1 && EC_KEY_generate_key(ec) == 1 &&
              EC_POINT_point2oct(p256(), EC_KEY_get0_public_key(ec), POINT_CONVERSION_UNCOMPRESSED,
                                 p.point, sizeof p.point, nullptr) == sizeof p.point &&
              RAND_bytes(p.digest, sizeof p.digest) == 1;
    if (ok) {
      p.sig.resize(static_cast<std::size_t>(ECDSA_size(ec)));
      unsigned int len = 0;
      ok = ECDSA_sign(0, p.digest, sizeof p.digest, p.sig.data(), &len, ec) == 1;
      p.sig.resize(len);
    }
    EC_KEY_free(ec);
    if (!ok) {
      throw std::runtime_error("making verify pairs failed");
    }
  }
  return pairs;
}

// Exactly the CSR check's verify (engine/src/csr.cpp verify_ec): a fresh EC_KEY per signature.
bool verify_one(const VerifyPair& p) {
  const EC_GROUP* group = p256();
  EC_KEY* ec = EC_KEY_new();
  EC_POINT* pt = EC_POINT_new(group);
  const bool ok = EC_KEY_set_group(ec, group) == 1 &&
                  EC_POINT_oct2point(group, pt, p.point, sizeof p.point, nullptr) == 1 &&
                  EC_KEY_set_public_key(ec, pt) == 1 &&
                  ECDSA_verify(0, p.digest, sizeof p.digest, p.sig.data(),
                               static_cast<int>(p.sig.size()), ec) == 1;
  EC_POINT_free(pt);
  EC_KEY_free(ec);
  ERR_clear_error();
  return ok;
}

}  // namespace

Rate measure_raw_verify(int threads, double seconds) {
  constexpr std::size_t kPairsPerThread = 1024;
  return timed_threads(
      threads, seconds, [](int) { return make_pairs(kPairsPerThread); },
      [](const std::vector<VerifyPair>& pairs, Clock::time_point stop, long long& n) {
        std::size_t i = 0;
        do {
          for (int k = 0; k < 16; ++k, ++n) {  // check the clock every 16 verifies
            if (!verify_one(pairs[i])) {
              return false;
            }
            i = (i + 1) % pairs.size();
          }
        } while (Clock::now() < stop);
        return true;
      });
}

Rate measure_token_sign(const std::filesystem::path& home_dir, const std::string& user_pin,
                        const std::string& ca_name, int threads, double seconds) {
  // Home::open points SOFTHSM2_CONF at the home's private token store before the module loads.
  const auto home = engine::Home::open(home_dir);
  std::string key_uri;
  {
    auto registry = home.open_registry();
    const auto ca = registry->find_ca(ca_name);
    if (!ca) {
      throw std::runtime_error("CA '" + ca_name + "' not found in " + home_dir.string());
    }
    key_uri = ca->key_uri;
  }
  const auto token = home.open_token(hsm::Pin(user_pin));
  // Lookup on this thread, once, before any signing (libp11's rule).
  const hsm::SigningKey& key = token->key(hsm::KeyRef::parse_uri(key_uri));
  {
    std::vector<std::uint8_t> sig;
    std::string error;
    const std::uint8_t warm[32] = {1};
    if (!key.sign_digest(warm, NID_sha256, sig, error)) {
      throw std::runtime_error(error);
    }
    // A rate is only worth reporting if the token really signs with that key.
    const std::uint8_t* p = key.spki_der().data();
    EVP_PKEY* pub = d2i_PUBKEY(nullptr, &p, static_cast<long>(key.spki_der().size()));
    EVP_PKEY_CTX* ctx = pub != nullptr ? EVP_PKEY_CTX_new(pub, nullptr) : nullptr;
    const bool ok = ctx != nullptr && EVP_PKEY_verify_init(ctx) == 1 &&
                    EVP_PKEY_verify(ctx, sig.data(), sig.size(), warm, sizeof warm) == 1;
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pub);
    if (!ok) {
      throw std::runtime_error("the token's signature does not verify with the CA key's SPKI");
    }
  }
  return timed_threads(
      threads, seconds,
      [](int t) {
        std::array<std::uint8_t, 32> d{};
        SHA256(reinterpret_cast<const std::uint8_t*>(&t), sizeof t, d.data());
        return d;
      },
      [&key](std::array<std::uint8_t, 32>& digest, Clock::time_point stop, long long& n) {
        std::vector<std::uint8_t> sig;
        std::string error;
        do {
          std::memcpy(digest.data(), &n, sizeof n);  // a different digest each time
          if (!key.sign_digest(digest, NID_sha256, sig, error)) {
            std::fprintf(stderr, "fleetsign-bench: %s\n", error.c_str());
            return false;
          }
          ++n;
        } while (Clock::now() < stop);
        return true;
      });
}

}  // namespace fleetsign::bench
