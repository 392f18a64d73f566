// check_csr: the first issuance step, without OpenSSL's generic ASN.1 decoder (design.md: it
// costs more than the signature). The structure is walked strictly by der::read; the signature is
// checked with the low-level EC/RSA verify on the exact CertificationRequestInfo bytes.
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <optional>

#include "der.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "names.hpp"
#include "oids.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

namespace {

using der::Bytes;

const EC_GROUP* group_for(int nid) {
  // Built once, shared read-only by every thread.
  static const EC_GROUP* p256 = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  static const EC_GROUP* p384 = EC_GROUP_new_by_curve_name(NID_secp384r1);
  return nid == NID_secp384r1 ? p384 : p256;
}

struct SpkiParts {
  Bytes algorithm;   // OID content
  Bytes parameters;  // OID content of the curve (EC), empty otherwise
  Bytes key_bits;    // BIT STRING content without the unused-bits octet
};

bool split_spki(Bytes spki, SpkiParts& out) {
  der::Tlv seq, alg, oid, bits;
  if (!der::expect(spki, der::tag::kSequence, seq) || !spki.empty()) return false;
  Bytes inner = seq.content;
  if (!der::expect(inner, der::tag::kSequence, alg) ||
      !der::expect(inner, der::tag::kBitString, bits) || !inner.empty()) {
    return false;
  }
  Bytes a = alg.content;
  if (!der::expect(a, der::tag::kOid, oid)) return false;
  out.algorithm = oid.content;
  // At most one parameters element (a named curve's OID, RSA's NULL) and nothing after it: extra
  // bytes would give one key another SPKI hash, past the blocklist and the replaced-key check.
  der::Tlv params;
  if (!a.empty()) {
    if (!der::read(a, params) || !a.empty()) return false;
    if (params.tag == der::tag::kOid) out.parameters = params.content;
  }
  if (bits.content.empty() || bits.content[0] != 0) return false;
  out.key_bits = bits.content.subspan(1);
  return true;
}

int rsa_modulus_bits(Bytes key_bits) {
  der::Tlv seq, n;
  if (!der::expect(key_bits, der::tag::kSequence, seq)) return 0;
  Bytes inner = seq.content;
  if (!der::expect(inner, der::tag::kInteger, n) || n.content.empty()) return 0;
  Bytes m = n.content;
  while (!m.empty() && m[0] == 0) m = m.subspan(1);
  if (m.empty()) return 0;
  int bits = static_cast<int>(m.size()) * 8;
  for (std::uint8_t top = m[0]; (top & 0x80) == 0; top = static_cast<std::uint8_t>(top << 1))
    --bits;
  return bits;
}

// RSA public exponent: odd, at least 65537 and below 2^256 (an exponent of 1 makes every
// "signature" equal its message; small or huge ones are outside what verifiers accept).
std::optional<std::string> check_rsa_exponent(Bytes key_bits) {
  der::Tlv seq, n, e;
  if (!der::expect(key_bits, der::tag::kSequence, seq)) return "RSA public key is malformed";
  Bytes inner = seq.content;
  if (!der::expect(inner, der::tag::kInteger, n) || !der::expect(inner, der::tag::kInteger, e) ||
      !inner.empty() || e.content.empty() || (e.content[0] & 0x80) != 0) {
    return "RSA public key is malformed";
  }
  Bytes v = e.content;
  while (!v.empty() && v[0] == 0) v = v.subspan(1);
  if (v.empty() || (v.back() & 1) == 0) return "RSA public exponent is even";
  if (v.size() > 32) return "RSA public exponent is above 2^256";
  if (v.size() < 3 || (v.size() == 3 && (v[0] << 16 | v[1] << 8 | v[2]) < 65537)) {
    return "RSA public exponent is below 65537";
  }
  return std::nullopt;
}

struct CurveName {
  Bytes oid;
  const char* name;
  int bits;
};

policy::KeyDescription describe(const SpkiParts& p) {
  policy::KeyDescription d;
  if (der::equal(p.algorithm, oid::kEcPublicKey)) {
    d.kind = policy::KeyDescription::Kind::kEc;
    static const CurveName kCurves[] = {{oid::kP256, "P-256", 256},
                                        {oid::kP384, "P-384", 384},
                                        {oid::kP521, "P-521", 521},
                                        {oid::kSecp256k1, "secp256k1", 256}};
    d.curve = "unknown curve " + hex_upper(p.parameters);
    for (const auto& c : kCurves) {
      if (der::equal(p.parameters, c.oid)) {
        d.curve = c.name;
        d.bits = c.bits;
      }
    }
  } else if (der::equal(p.algorithm, oid::kRsaEncryption)) {
    d.kind = policy::KeyDescription::Kind::kRsa;
    d.bits = rsa_modulus_bits(p.key_bits);
  }
  return d;
}

// The digest a signature algorithm uses, if it fits the key kind.
const EVP_MD* digest_for(Bytes sig_alg_oid, policy::KeyDescription::Kind kind) {
  using K = policy::KeyDescription::Kind;
  if (kind == K::kEc) {
    if (der::equal(sig_alg_oid, oid::kEcdsaSha256)) return EVP_sha256();
    if (der::equal(sig_alg_oid, oid::kEcdsaSha384)) return EVP_sha384();
    if (der::equal(sig_alg_oid, oid::kEcdsaSha512)) return EVP_sha512();
  } else if (kind == K::kRsa) {
    if (der::equal(sig_alg_oid, oid::kRsaSha256)) return EVP_sha256();
    if (der::equal(sig_alg_oid, oid::kRsaSha384)) return EVP_sha384();
    if (der::equal(sig_alg_oid, oid::kRsaSha512)) return EVP_sha512();
  }
  return nullptr;
}

enum class EcVerdict { kGood, kPointInvalid, kSignatureInvalid };

// One EC_KEY per thread and curve, reused for every CSR: a fresh key per CSR costs an allocation
// and a copy of the curve group (EC_KEY_set_group duplicates it), about 5% of the verify. Each use
// replaces the public key before verifying, and a point that fails to decode is never verified.
struct ThreadKeys {
  EC_KEY* p256 = nullptr;
  EC_KEY* p384 = nullptr;
  ThreadKeys() = default;
  ThreadKeys(const ThreadKeys&) = delete;  // owns the keys
  ThreadKeys& operator=(const ThreadKeys&) = delete;
  ~ThreadKeys() {
    EC_KEY_free(p256);
    EC_KEY_free(p384);
  }
  EC_KEY* get(int nid) {
    EC_KEY*& key = nid == NID_secp384r1 ? p384 : p256;
    if (key == nullptr) {
      key = EC_KEY_new();
      if (key != nullptr && EC_KEY_set_group(key, group_for(nid)) != 1) {
        EC_KEY_free(key);
        key = nullptr;
      }
    }
    return key;
  }
};

// The point is decoded once: oct2point refuses a point that is not on the curve (kPointInvalid,
// a key problem, told apart from a bad signature at no extra cost).
EcVerdict verify_ec(const policy::KeyDescription& key, Bytes point, const std::uint8_t* md,
                    unsigned md_len, Bytes sig) {
  const int nid = key.bits == 384 ? NID_secp384r1 : NID_X9_62_prime256v1;
  const EC_GROUP* group = group_for(nid);
  thread_local ThreadKeys keys;
  EC_KEY* ec = keys.get(nid);
  EC_POINT* pt = EC_POINT_new(group);
  EcVerdict verdict = EcVerdict::kSignatureInvalid;
  if (ec == nullptr || pt == nullptr ||
      EC_POINT_oct2point(group, pt, point.data(), point.size(), nullptr) != 1 ||
      EC_KEY_set_public_key(ec, pt) != 1) {
    verdict = EcVerdict::kPointInvalid;
  } else if (ECDSA_verify(0, md, static_cast<int>(md_len), sig.data(), static_cast<int>(sig.size()),
                          ec) == 1) {
    verdict = EcVerdict::kGood;
  }
  EC_POINT_free(pt);
  ERR_clear_error();
  return verdict;
}

bool verify_generic(Bytes spki, const EVP_MD* md_type, const std::uint8_t* md, unsigned md_len,
                    Bytes sig) {
  auto pkey = ossl::public_key_from_spki(spki);
  if (!pkey) return false;
  ossl::PkeyCtxPtr ctx(EVP_PKEY_CTX_new(pkey.get(), nullptr));
  bool ok = ctx && EVP_PKEY_verify_init(ctx.get()) == 1 &&
            EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) == 1 &&
            EVP_PKEY_CTX_set_signature_md(ctx.get(), md_type) == 1 &&
            EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), md, md_len) == 1;
  ERR_clear_error();
  return ok;
}

bool has_extension_request(Bytes attributes) {
  while (!attributes.empty()) {
    der::Tlv attr, type;
    if (!der::expect(attributes, der::tag::kSequence, attr)) return false;
    Bytes a = attr.content;
    if (der::expect(a, der::tag::kOid, type) && der::equal(type.content, oid::kExtensionRequest)) {
      return true;
    }
  }
  return false;
}

}  // namespace

policy::KeyDescription describe_key_algorithm(policy::KeyAlgorithm alg) {
  using K = policy::KeyDescription::Kind;
  switch (alg) {
    case policy::KeyAlgorithm::kEcP256:
      return {K::kEc, 256, "P-256"};
    case policy::KeyAlgorithm::kEcP384:
      return {K::kEc, 384, "P-384"};
    case policy::KeyAlgorithm::kRsa2048:
      return {K::kRsa, 2048, ""};
    case policy::KeyAlgorithm::kRsa3072:
      return {K::kRsa, 3072, ""};
    case policy::KeyAlgorithm::kRsa4096:
      return {K::kRsa, 4096, ""};
  }
  return {};
}

policy::KeyDescription describe_spki(ByteView spki) {
  SpkiParts parts;
  if (!split_spki(spki, parts)) return {};
  return describe(parts);
}

Result<CheckedCsr> check_csr(ByteView input, const policy::Policy& policy) {
  // 1. Structure: CertificationRequest ::= SEQUENCE { info, signatureAlgorithm, signature }.
  Bytes in = input;
  der::Tlv outer, info, sig_alg, sig_bits;
  if (!der::expect(in, der::tag::kSequence, outer) || !in.empty()) {
    return fail(ErrorCode::kCsrMalformed,
                "not a DER CertificationRequest (bad outer SEQUENCE or trailing bytes)");
  }
  Bytes body = outer.content;
  if (!der::expect(body, der::tag::kSequence, info) ||
      !der::expect(body, der::tag::kSequence, sig_alg) ||
      !der::expect(body, der::tag::kBitString, sig_bits) || !body.empty()) {
    return fail(ErrorCode::kCsrMalformed,
                "CertificationRequest does not have info, algorithm and signature");
  }
  Bytes fields = info.content;
  der::Tlv version, subject, spki, attributes;
  if (!der::expect(fields, der::tag::kInteger, version) || version.content.size() != 1 ||
      version.content[0] != 0 || !der::expect(fields, der::tag::kSequence, subject) ||
      !der::expect(fields, der::tag::kSequence, spki)) {
    return fail(ErrorCode::kCsrMalformed,
                "CertificationRequestInfo is not version 1 with subject and key");
  }
  bool extensions_ignored = false;
  if (!fields.empty()) {
    if (!der::expect(fields, der::tag::kContext0, attributes) || !fields.empty()) {
      return fail(ErrorCode::kCsrMalformed, "CertificationRequestInfo has malformed attributes");
    }
    extensions_ignored = has_extension_request(attributes.content);
  }
  // 2. Key: the policy decides which algorithms and sizes a device may have.
  SpkiParts parts;
  if (!split_spki(spki.whole, parts)) {
    return fail(ErrorCode::kCsrMalformed, "SubjectPublicKeyInfo is malformed");
  }
  const policy::KeyDescription key = describe(parts);
  if (auto why = policy::check_device_key(policy, key)) {
    return fail(ErrorCode::kKeyRejected, *why);
  }
  if (key.kind == policy::KeyDescription::Kind::kRsa) {
    if (auto why = check_rsa_exponent(parts.key_bits)) return fail(ErrorCode::kKeyRejected, *why);
  }
  // 3. Signature: the device proves it holds the private key.
  Bytes alg = sig_alg.content;
  der::Tlv alg_oid;
  if (!der::expect(alg, der::tag::kOid, alg_oid)) {
    return fail(ErrorCode::kCsrMalformed, "signature algorithm is malformed");
  }
  // Parameters: none, or NULL (RSA's PKCS#1 v1.5), and nothing after. Any other element, or one
  // whose length overruns the AlgorithmIdentifier, is malformed (OpenSSL refuses to parse such a
  // request; found by fuzz_csr).
  if (!alg.empty()) {
    der::Tlv params;
    if (!der::read(alg, params) || !alg.empty() || params.tag != der::tag::kNull ||
        !params.content.empty()) {
      return fail(ErrorCode::kCsrMalformed, "signature algorithm parameters are not NULL");
    }
  }
  const EVP_MD* md_type = digest_for(alg_oid.content, key.kind);
  if (md_type == nullptr) {
    return fail(ErrorCode::kCsrSignatureInvalid,
                "signature algorithm does not match the key type or is unsupported");
  }
  if (sig_bits.content.empty() || sig_bits.content[0] != 0) {
    return fail(ErrorCode::kCsrMalformed, "signature BIT STRING is malformed");
  }
  std::uint8_t md[EVP_MAX_MD_SIZE];
  unsigned md_len = 0;
  EVP_Digest(info.whole.data(), info.whole.size(), md, &md_len, md_type, nullptr);
  const Bytes sig = sig_bits.content.subspan(1);
  const EcVerdict verdict = key.kind == policy::KeyDescription::Kind::kEc
                                ? verify_ec(key, parts.key_bits, md, md_len, sig)
                            : verify_generic(spki.whole, md_type, md, md_len, sig)
                                ? EcVerdict::kGood
                                : EcVerdict::kSignatureInvalid;
  if (verdict == EcVerdict::kPointInvalid) {
    return fail(ErrorCode::kKeyRejected, "EC public key is not a point on its curve");
  }
  if (verdict != EcVerdict::kGood) {
    return fail(ErrorCode::kCsrSignatureInvalid,
                "CSR signature does not verify with its own public key");
  }
  // 4. Subject: exactly one CN, which must be a valid device ID.
  auto cn = single_common_name(subject.whole);
  if (!cn) {
    return cn.error();
  }
  auto id = DeviceId::check(policy, *cn);
  if (!id) {
    return id.error();
  }
  return CheckedCsr{std::move(*id), Der(spki.whole.begin(), spki.whole.end()), key,
                    extensions_ignored};
}

Result<DeviceId> DeviceId::check(const policy::Policy& policy, std::string_view id) {
  if (auto why = policy::check_device_id(policy.device_id, id)) {
    return fail(ErrorCode::kDeviceIdInvalid, *why);
  }
  // Checked after the alphabet, so the ID is ASCII and bytes are characters.
  if (id.size() > kMaxCommonNameLength) {
    return fail(ErrorCode::kDeviceIdInvalid,
                "device ID is " + std::to_string(id.size()) +
                    " characters; a certificate's common name holds at most " +
                    std::to_string(kMaxCommonNameLength) + " (RFC 5280 ub-common-name)");
  }
  return DeviceId(std::string(id));
}

std::string csr_common_name(ByteView der) {
  der::Tlv outer, info, version, subject;
  Bytes in = der;
  if (!der::expect(in, der::tag::kSequence, outer)) return {};
  Bytes body = outer.content;
  if (!der::expect(body, der::tag::kSequence, info)) return {};
  Bytes fields = info.content;
  if (!der::expect(fields, der::tag::kInteger, version) ||
      !der::expect(fields, der::tag::kSequence, subject)) {
    return {};
  }
  auto cn = single_common_name(subject.whole);
  return cn ? std::move(*cn) : std::string();
}

}  // namespace fleetsign::engine
