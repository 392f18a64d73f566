// Device certificate issuance, as named steps (Boulder's order):
//   check_csr  → the device proves its key; key type, size and device ID pass the policy
//   prepare    → the policy decides every extension (never copied from the CSR); a serial is
//                taken from the CSPRNG; the TBSCertificate is built
//   [caller records the intent: serial + TBS, committed before the token signs]
//   sign       → the token signs; the signature is verified with the CA certificate's key;
//                the certificate is assembled and its thumbprints computed
//   [caller records the certificate, then releases it]
// A PreparedCert is single-use and only `prepare` makes one, so only a checked certificate can
// be signed. Per-item failures are values (Result); environment failures throw.
//
// Thread safety: an Issuer is immutable after construction; check_csr, prepare and sign may run
// on any number of threads at once (the token key is libp11's thread-safe handle).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/policy/policy.hpp"
#include "fleetsign/result.hpp"

namespace fleetsign::hsm {
class SigningKey;
}

namespace fleetsign::engine {

struct CaRecord;
class RevocationStore;

// The compromised-key blocklist as issuance checks it: SPKI SHA-256 hashes (upper-case hex),
// loaded once per batch or job into a hash set. Immutable; thread-safe to read.
class KeyBlocklist final {
 public:
  KeyBlocklist() = default;
  explicit KeyBlocklist(const std::vector<std::string>& hashes)
      : m_hashes(hashes.begin(), hashes.end()) {}
  // Reads RevocationStore::blocked_key_hashes(); nullptr when the list is empty (the hot path
  // then skips the check).
  static std::shared_ptr<const KeyBlocklist> load(RevocationStore& store);
  bool empty() const noexcept { return m_hashes.empty(); }
  bool contains(const std::string& key_sha256) const { return m_hashes.count(key_sha256) != 0; }
  std::size_t size() const noexcept { return m_hashes.size(); }

 private:
  std::unordered_set<std::string> m_hashes;
};

// RFC 5280 ub-common-name: a certificate's CN (= the device ID) has at most 64 characters. The
// policy's longer limit (up to 128) applies only to IDs that never go into a certificate.
inline constexpr std::size_t kMaxCommonNameLength = 64;

// A device ID that passed the policy's device-ID rule and the certificate CN bound. Only `check`
// makes one, so an unchecked string cannot reach a TBS, an intent or a file name. The alphabet
// (letters, digits, '-' and the policy's extras from ".:_") holds no '/' or NUL.
class DeviceId {
 public:
  // kDeviceIdInvalid with the rule that failed.
  static Result<DeviceId> check(const policy::Policy& policy, std::string_view id);
  const std::string& str() const noexcept { return m_value; }

 private:
  explicit DeviceId(std::string value) : m_value(std::move(value)) {}
  std::string m_value;
};

struct CheckedCsr {
  DeviceId device_id;
  Der spki;  // SubjectPublicKeyInfo exactly as the device sent it
  policy::KeyDescription key;
  bool extensions_ignored = false;  // the CSR asked for extensions; the policy decided instead
};

// Parses a DER CSR strictly, checks its key against the policy (RSA: also the public exponent,
// which must be odd and in 65537..2^256), its self-signature, and that its subject has exactly
// one CN that is a valid device ID (DeviceId::check). Codes: kCsrMalformed, kKeyRejected,
// kCsrSignatureInvalid, kDeviceIdInvalid.
Result<CheckedCsr> check_csr(ByteView der, const policy::Policy& policy);

// The subject CN of a CSR, best effort and unchecked (for reject reports only): empty when the
// CSR is malformed or names no single CN.
std::string csr_common_name(ByteView der);

// Describes the key in a SubjectPublicKeyInfo without OpenSSL's decoder; kOther when unknown.
policy::KeyDescription describe_spki(ByteView spki);

// The KeyDescription of a key algorithm (to check --generate's --key against the policy).
policy::KeyDescription describe_key_algorithm(policy::KeyAlgorithm alg);

// Single-use: moved into Issuer::sign.
class PreparedCert {
 public:
  PreparedCert(PreparedCert&&) noexcept = default;
  PreparedCert& operator=(PreparedCert&&) noexcept = default;
  PreparedCert(const PreparedCert&) = delete;  // single use: one TBS is signed at most once

  const std::string& device_id() const noexcept { return m_device_id; }
  const std::string& serial() const noexcept { return m_serial; }  // upper-case hex
  const Der& tbs() const noexcept { return m_tbs; }
  std::int64_t not_before() const noexcept { return m_not_before; }
  std::int64_t not_after() const noexcept { return m_not_after; }
  const std::string& subject() const noexcept { return m_subject; }
  const std::string& key_sha256() const noexcept { return m_key_sha256; }  // SPKI SHA-256

 private:
  friend class Issuer;
  PreparedCert() = default;
  std::string m_device_id, m_serial, m_subject, m_key_sha256;
  Der m_tbs;
  std::int64_t m_not_before = 0, m_not_after = 0;
};

struct SignedCert {
  std::string device_id;
  std::string serial;
  Der der;
  std::string sha1, sha256;
  std::int64_t not_before = 0, not_after = 0;
  std::string key_sha256;  // key_sha256_of_spki: the blocklist's key identity
};

class Issuer final {
 public:
  // `ca` must have been loaded (its key matched its certificate). The issuer keeps references to
  // key, policy, clock and random source: they must outlive it. `device_days` is the validity;
  // a certificate never outlives its CA: not_after is clamped to the CA's (see clamped()).
  // `blocklist` (may be null): prepare refuses a key on it with kKeyBlocked.
  Issuer(const CaRecord& ca, const hsm::SigningKey& key, const policy::Policy& policy,
         int device_days, const Clock& clock, RandomSource& random,
         std::shared_ptr<const KeyBlocklist> blocklist = nullptr);
  ~Issuer();
  Issuer(const Issuer&) = delete;  // owns OpenSSL key objects
  Issuer& operator=(const Issuer&) = delete;

  // kKeyBlocked when the key's SPKI SHA-256 is on the issuer's blocklist.
  Result<PreparedCert> prepare(const CheckedCsr& csr) const;
  // A key made here (--generate): the ID is checked (DeviceId), `spki` is our own encoder's.
  Result<PreparedCert> prepare(const DeviceId& device_id, ByteView spki) const;
  // Lint, then token sign + verify + assemble. The lint re-reads the TBS and checks it against
  // the profile before the token signs (Boulder): CN == device ID and at most 64 characters,
  // validity non-empty and ending by the CA's end, serial positive and at most 20 octets,
  // issuer == the CA, and
  // exactly the profile's extensions. kSignFailed when the lint refuses the TBS, the token fails
  // or the signature does not verify against the CA certificate's public key.
  Result<SignedCert> sign(PreparedCert&& prepared) const;
  // The same steps for a batch (a pipeline chunk): each TBS is linted and signed in turn, then the
  // token's signatures are verified together (for an EC P-256/P-384 CA one modular inversion
  // serves the whole batch), then assembled. Element i is what sign(std::move(prepared[i]))
  // would return, except that after a token failure the rest are not offered to the token (they
  // fail with kSignFailed too). Every element is consumed.
  std::vector<Result<SignedCert>> sign(std::vector<PreparedCert>&& prepared) const;

  // True when the policy's validity would outlive the CA and not_after was clamped to it.
  bool clamped() const noexcept;
  const std::string& ca_name() const noexcept;
  // Issuer chain in PEM: this CA and its parents up to (excluding) the root… set by the caller.
  const policy::Policy& policy() const noexcept { return m_policy; }

 private:
  const char* lint(const PreparedCert& prepared) const;  // nullptr: the TBS fits the profile
  struct Impl;
  const policy::Policy& m_policy;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace fleetsign::engine
