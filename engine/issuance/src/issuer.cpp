// Issuer: builds device TBSCertificates from a fixed template and signs them in the token.
// The template is the policy's extension set written once as DER; per certificate only the
// serial, validity, subject, public key and SKI change (design.md: encoder machinery, not crypto,
// dominated a naive OpenSSL loop).
#include "fleetsign/engine/issuer.hpp"

#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <cassert>

#include "der.hpp"
#include "fixed_key_verifier.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/hsm/token.hpp"
#include "oids.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

namespace {

// Serial: 20 octets = a 30-bit counter (random start per Issuer, first octet 0x40..0x7F so the
// INTEGER is positive and minimally encoded) + 128 bits from the CSPRNG. The counter gives the
// registry's serial index locality (one page per chunk, not one per certificate); uniqueness and
// unpredictability come from the 128 random bits and the database constraint.
constexpr std::size_t kSerialBytes = 20;
constexpr std::int64_t kBackdateSeconds = 60;  // tolerate small device clock skew

// Extensions every device certificate gets, in order (policy decides; the CSR never does):
//   basicConstraints critical CA:FALSE; keyUsage critical digitalSignature; EKU clientAuth.
constexpr std::uint8_t kFixedExtensions[] = {
    0x30, 0x0C, 0x06, 0x03, 0x55, 0x1D, 0x13, 0x01, 0x01, 0xFF, 0x04, 0x02, 0x30,
    0x00, 0x30, 0x0E, 0x06, 0x03, 0x55, 0x1D, 0x0F, 0x01, 0x01, 0xFF, 0x04, 0x04,
    0x03, 0x02, 0x07, 0x80, 0x30, 0x13, 0x06, 0x03, 0x55, 0x1D, 0x25, 0x04, 0x0C,
    0x30, 0x0A, 0x06, 0x08, 0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02};
// SKI extension prefix; 20 bytes of SHA-1 follow.
constexpr std::uint8_t kSkiPrefix[] = {0x30, 0x1D, 0x06, 0x03, 0x55, 0x1D,
                                       0x0E, 0x04, 0x16, 0x04, 0x14};

Der name_der(const X509_NAME* name) {
  const int len = i2d_X509_NAME(name, nullptr);
  Der out(static_cast<std::size_t>(len));
  unsigned char* p = out.data();
  i2d_X509_NAME(name, &p);
  return out;
}

void put_rdn(Der& out, ByteView type_oid, std::string_view value) {
  const std::size_t oid_len = 2 + type_oid.size();
  const std::size_t val_len = der::header_size(value.size()) + value.size();
  const std::size_t atv_len = oid_len + val_len;
  der::put_header(out, der::tag::kSet, der::header_size(atv_len) + atv_len);
  der::put_header(out, der::tag::kSequence, atv_len);
  der::put_tlv(out, der::tag::kOid, type_oid);
  der::put_header(out, der::tag::kUtf8String, value.size());
  out.insert(out.end(), value.begin(), value.end());
}

// A GENERAL_NAME uniformResourceIdentifier holding `uri` (nullptr when out of memory).
GENERAL_NAME* uri_name(const std::string& uri) {
  GENERAL_NAME* name = GENERAL_NAME_new();
  ASN1_IA5STRING* text = ASN1_IA5STRING_new();
  if (name == nullptr || text == nullptr ||
      ASN1_STRING_set(text, uri.data(), static_cast<int>(uri.size())) != 1) {
    GENERAL_NAME_free(name);
    ASN1_IA5STRING_free(text);
    return nullptr;
  }
  GENERAL_NAME_set0_value(name, GEN_URI, text);
  return name;
}

// Appends a non-critical extension's DER; `ext` is consumed.
void append_extension(Der& out, X509_EXTENSION* ext, const std::string& what) {
  const int len = ext == nullptr ? -1 : i2d_X509_EXTENSION(ext, nullptr);
  if (len <= 0) {
    X509_EXTENSION_free(ext);
    throw Error(ErrorCode::kInternal, "cannot encode the " + what + " extension");
  }
  const std::size_t at = out.size();
  out.resize(at + static_cast<std::size_t>(len));
  unsigned char* p = out.data() + at;
  i2d_X509_EXTENSION(ext, &p);
  X509_EXTENSION_free(ext);
}

// cRLDistributionPoints with one distribution point whose full name is `uri` (RFC 5280 4.2.1.13).
void append_crl_dp(Der& out, const std::string& uri) {
  CRL_DIST_POINTS* points = sk_DIST_POINT_new_null();
  DIST_POINT* point = DIST_POINT_new();
  if (points != nullptr && point != nullptr && sk_DIST_POINT_push(points, point) > 0) {
    point->distpoint = DIST_POINT_NAME_new();
    if (point->distpoint != nullptr) {
      point->distpoint->type = 0;  // fullName
      point->distpoint->name.fullname = sk_GENERAL_NAME_new_null();
      if (GENERAL_NAME* name = uri_name(uri); name != nullptr) {
        if (point->distpoint->name.fullname == nullptr ||
            sk_GENERAL_NAME_push(point->distpoint->name.fullname, name) <= 0) {
          GENERAL_NAME_free(name);
        }
      }
    }
  } else {
    DIST_POINT_free(point);
  }
  X509_EXTENSION* ext = points == nullptr || sk_DIST_POINT_num(points) != 1
                            ? nullptr
                            : X509V3_EXT_i2d(NID_crl_distribution_points, 0, points);
  sk_DIST_POINT_pop_free(points, DIST_POINT_free);
  append_extension(out, ext, "CRL distribution point");
}

// authorityInfoAccess with one caIssuers access description at `uri` (RFC 5280 4.2.2.1).
void append_aia(Der& out, const std::string& uri) {
  AUTHORITY_INFO_ACCESS* aia = sk_ACCESS_DESCRIPTION_new_null();
  ACCESS_DESCRIPTION* ad = ACCESS_DESCRIPTION_new();
  X509_EXTENSION* ext = nullptr;
  if (aia != nullptr && ad != nullptr) {
    ad->method = OBJ_nid2obj(NID_ad_ca_issuers);
    GENERAL_NAME_free(ad->location);
    ad->location = uri_name(uri);
    if (ad->location != nullptr && sk_ACCESS_DESCRIPTION_push(aia, ad) > 0) {
      ad = nullptr;
      ext = X509V3_EXT_i2d(NID_info_access, 0, aia);
    }
  }
  ACCESS_DESCRIPTION_free(ad);
  sk_ACCESS_DESCRIPTION_pop_free(aia, ACCESS_DESCRIPTION_free);
  append_extension(out, ext, "authority information access");
}

}  // namespace

struct Issuer::Impl {
  std::string ca_name;
  const hsm::SigningKey& key;
  const Clock& clock;
  RandomSource& random;
  int device_days;
  std::int64_t ca_not_after;
  Der issuer_name;  // the CA certificate's subject, DER, copied into every TBS
  Der algorithm;    // AlgorithmIdentifier DER
  const EVP_MD* md;
  int md_nid;
  // The extensions after the SKI, DER: authorityKeyIdentifier, then (policy publish.base_url)
  // cRLDistributionPoints and authorityInfoAccess.
  Der aki_ext;
  Der subject_prefix;  // RDNs before CN (O, OU), DER
  std::string subject_line_prefix;
  ossl::PkeyPtr ca_public;                          // for verifying every signature the token makes
  std::unique_ptr<FixedKeyVerifier> fast_verifier;  // P-256 CAs: precomputed tables for the key
  mutable std::atomic<std::uint32_t> serial_counter{0};
  std::shared_ptr<const KeyBlocklist> blocklist;  // null: nothing is blocked

  Impl(const CaRecord& ca, const hsm::SigningKey& k, const Clock& c, RandomSource& r, int days)
      : ca_name(ca.name),
        key(k),
        clock(c),
        random(r),
        device_days(days),
        ca_not_after(ca.not_after) {}
};

std::shared_ptr<const KeyBlocklist> KeyBlocklist::load(RevocationStore& store) {
  const auto hashes = store.blocked_key_hashes();
  if (hashes.empty()) return nullptr;
  return std::make_shared<const KeyBlocklist>(hashes);
}

Issuer::Issuer(const CaRecord& ca, const hsm::SigningKey& key, const policy::Policy& policy,
               int device_days, const Clock& clock, RandomSource& random,
               std::shared_ptr<const KeyBlocklist> blocklist)
    : m_policy(policy), m_impl(std::make_unique<Impl>(ca, key, clock, random, device_days)) {
  Impl& m = *m_impl;
  m.blocklist = std::move(blocklist);
  std::uint8_t start[4];
  random.fill(start);
  m.serial_counter = (std::uint32_t{start[0]} << 24) | (std::uint32_t{start[1]} << 16) |
                     (std::uint32_t{start[2]} << 8) | start[3];
  auto cert = ossl::from_der(ca.cert_der);
  if (!cert) {
    throw Error(ErrorCode::kCertificateMalformed,
                "CA '" + ca.name + "': stored certificate is malformed");
  }
  m.issuer_name = name_der(X509_get_subject_name(cert.get()));
  m.ca_public.reset(X509_get_pubkey(cert.get()));
  if (key.type() == hsm::KeyType::kEcP256) {
    m.fast_verifier = std::make_unique<FixedKeyVerifier>(EVP_PKEY_get0_EC_KEY(m.ca_public.get()));
  }
  // Signature algorithm follows the CA key: P-384 signs with SHA-384, others with SHA-256.
  if (key.is_ec()) {
    const bool p384 = key.type() == hsm::KeyType::kEcP384;
    m.md = p384 ? EVP_sha384() : EVP_sha256();
    m.md_nid = p384 ? NID_sha384 : NID_sha256;
    const ByteView alg_oid = p384 ? ByteView(oid::kEcdsaSha384) : ByteView(oid::kEcdsaSha256);
    der::put_header(m.algorithm, der::tag::kSequence, 2 + alg_oid.size());
    der::put_tlv(m.algorithm, der::tag::kOid, alg_oid);
  } else {
    m.md = EVP_sha256();
    m.md_nid = NID_sha256;
    der::put_header(m.algorithm, der::tag::kSequence, 2 + sizeof oid::kRsaSha256 + 2);
    der::put_tlv(m.algorithm, der::tag::kOid, oid::kRsaSha256);
    der::put_header(m.algorithm, der::tag::kNull, 0);
  }
  // AKI = the CA's SKI (keyIdentifier only).
  const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(cert.get());
  if (ski == nullptr) {
    throw Error(ErrorCode::kCertificateMalformed, "CA '" + ca.name + "': certificate has no SKI");
  }
  const std::size_t ski_len = static_cast<std::size_t>(ASN1_STRING_length(ski));
  const std::size_t keyid_len = 2 + ski_len;         // [0] keyid
  const std::size_t aki_val_len = 2 + keyid_len;     // SEQUENCE
  const std::size_t ext_body = 5 + 2 + aki_val_len;  // OID + OCTET STRING
  der::put_header(m.aki_ext, der::tag::kSequence, ext_body);
  const std::uint8_t aki_oid[] = {0x55, 0x1D, 0x23};
  der::put_tlv(m.aki_ext, der::tag::kOid, aki_oid);
  der::put_header(m.aki_ext, der::tag::kOctetString, aki_val_len);
  der::put_header(m.aki_ext, der::tag::kSequence, keyid_len);
  der::put_header(m.aki_ext, 0x80, ski_len);
  der::put_bytes(m.aki_ext, ByteView(ASN1_STRING_get0_data(ski), ski_len));
  if (!policy.publish.base_url.empty()) {
    // Where relying parties find the CA's CRL and certificate (fleetsign serve --http answers
    // both); the same bytes in every certificate of this CA.
    const std::string& base = policy.publish.base_url;
    append_crl_dp(m.aki_ext, base + "/crl/" + ca.name + ".crl");
    append_aia(m.aki_ext, base + "/ca/" + ca.name + ".crt");
  }
  if (!policy.device_subject.organization.empty()) {
    put_rdn(m.subject_prefix, oid::kOrganization, policy.device_subject.organization);
    m.subject_line_prefix += "/O=" + policy.device_subject.organization;
  }
  if (!policy.device_subject.organizational_unit.empty()) {
    put_rdn(m.subject_prefix, oid::kOrganizationalUnit, policy.device_subject.organizational_unit);
    m.subject_line_prefix += "/OU=" + policy.device_subject.organizational_unit;
  }
}

Issuer::~Issuer() = default;

bool Issuer::clamped() const noexcept {
  const Impl& m = *m_impl;
  return m.clock.now() - kBackdateSeconds + std::int64_t{m.device_days} * 86400 > m.ca_not_after;
}
const std::string& Issuer::ca_name() const noexcept { return m_impl->ca_name; }

Result<PreparedCert> Issuer::prepare(const CheckedCsr& csr) const {
  return prepare(csr.device_id, csr.spki);
}

Result<PreparedCert> Issuer::prepare(const DeviceId& checked_id, ByteView spki) const {
  const Impl& m = *m_impl;
  const std::string& device_id = checked_id.str();
  PreparedCert p;
  // Cheap (one SHA-256 over ~91 bytes; a compressed EC point is re-encoded first, so the same key
  // sent compressed has the same hash); the blocklist's set is only consulted when not empty.
  p.m_key_sha256 = key_sha256_of_spki(spki);
  if (m.blocklist && m.blocklist->contains(p.m_key_sha256)) {
    return fail(ErrorCode::kKeyBlocked, "device '" + device_id +
                                            "': its public key (SPKI SHA-256 " + p.m_key_sha256 +
                                            ") is on the compromised-key blocklist");
  }
  p.m_device_id = device_id;
  p.m_subject = m.subject_line_prefix + "/CN=" + device_id;
  p.m_not_before = m.clock.now() - kBackdateSeconds;
  p.m_not_after = std::min(p.m_not_before + std::int64_t{m.device_days} * 86400, m.ca_not_after);
  if (m.ca_not_after <= m.clock.now()) {
    return fail(ErrorCode::kValidityBeyondIssuer, "CA '" + m.ca_name + "' has expired");
  }
  std::uint8_t serial[kSerialBytes];
  const std::uint32_t n =
      (m.serial_counter.fetch_add(1, std::memory_order_relaxed) & 0x3FFFFFFFu) | 0x40000000u;
  serial[0] = static_cast<std::uint8_t>(n >> 24);
  serial[1] = static_cast<std::uint8_t>(n >> 16);
  serial[2] = static_cast<std::uint8_t>(n >> 8);
  serial[3] = static_cast<std::uint8_t>(n);
  m.random.fill(std::span<std::uint8_t>(serial + 4, kSerialBytes - 4));
  p.m_serial = hex_upper(serial);

  // SKI: SHA-1 of the subjectPublicKey bits (RFC 5280 4.2.1.2, method 1).
  ByteView spki_rest = spki;
  der::Tlv seq, alg, bits;
  if (!der::expect(spki_rest, der::tag::kSequence, seq)) {
    return fail(ErrorCode::kCsrMalformed, "public key is not a SubjectPublicKeyInfo");
  }
  ByteView inner = seq.content;
  if (!der::expect(inner, der::tag::kSequence, alg) ||
      !der::expect(inner, der::tag::kBitString, bits) || bits.content.empty()) {
    return fail(ErrorCode::kCsrMalformed, "public key is not a SubjectPublicKeyInfo");
  }
  std::uint8_t ski[SHA_DIGEST_LENGTH];
  EVP_Digest(bits.content.data() + 1, bits.content.size() - 1, ski, nullptr, EVP_sha1(), nullptr);

  // Subject: policy RDNs, then CN = device ID.
  Der subject_body;
  subject_body.reserve(m.subject_prefix.size() + device_id.size() + 16);
  der::put_bytes(subject_body, m.subject_prefix);
  put_rdn(subject_body, oid::kCommonName, device_id);

  const std::size_t ext_len =
      sizeof kFixedExtensions + sizeof kSkiPrefix + sizeof ski + m.aki_ext.size();
  const std::size_t exts_len = der::header_size(ext_len) + ext_len;  // SEQUENCE OF Extension
  Der& tbs = p.m_tbs;
  tbs.reserve(64 + m.issuer_name.size() + subject_body.size() + spki.size() + exts_len + 48);
  Der body;
  body.reserve(tbs.capacity());
  const std::uint8_t version[] = {0xA0, 0x03, 0x02, 0x01, 0x02};
  der::put_bytes(body, version);
  der::put_tlv(body, der::tag::kInteger, serial);
  der::put_bytes(body, m.algorithm);
  der::put_bytes(body, m.issuer_name);
  Der validity;
  der::put_time(validity, p.m_not_before);
  der::put_time(validity, p.m_not_after);
  der::put_tlv(body, der::tag::kSequence, validity);
  der::put_tlv(body, der::tag::kSequence, subject_body);
  der::put_bytes(body, spki);
  der::put_header(body, der::tag::kContext3, exts_len);
  der::put_header(body, der::tag::kSequence, ext_len);
  der::put_bytes(body, kFixedExtensions);
  der::put_bytes(body, kSkiPrefix);
  der::put_bytes(body, ski);
  der::put_bytes(body, m.aki_ext);
  der::put_header(tbs, der::tag::kSequence, body.size());
  der::put_bytes(tbs, body);
  return p;
}

namespace {

bool positive_minimal_serial(der::Bytes v) {
  if (v.empty() || v.size() > kSerialBytes || (v[0] & 0x80) != 0) return false;
  if (v.size() > 1 && v[0] == 0 && (v[1] & 0x80) == 0) return false;  // not minimal
  for (const std::uint8_t b : v) {
    if (b != 0) return true;
  }
  return false;  // zero
}

bool starts_with(der::Bytes& in, der::Bytes prefix) {
  if (in.size() < prefix.size() || !der::equal(in.first(prefix.size()), prefix)) return false;
  in = in.subspan(prefix.size());
  return true;
}

}  // namespace

// The lint: the TBS as DER says exactly what the profile allows, read back from the bytes that
// the token is about to sign (Boulder lints the TBS before the CA signs). nullptr when it does.
const char* Issuer::lint(const PreparedCert& p) const {
  const Impl& m = *m_impl;
  der::Bytes in = p.m_tbs;
  der::Tlv tbs, version, serial, alg, issuer, validity, subject, spki, exts;
  if (!der::expect(in, der::tag::kSequence, tbs) || !in.empty()) return "TBS is not one SEQUENCE";
  der::Bytes f = tbs.content;
  const std::uint8_t v3[] = {0xA0, 0x03, 0x02, 0x01, 0x02};
  if (!starts_with(f, v3)) return "TBS is not version 3";
  if (!der::expect(f, der::tag::kInteger, serial) || !positive_minimal_serial(serial.content)) {
    return "serial is not a positive, minimal INTEGER of at most 20 octets";
  }
  if (!der::read(f, alg) || !der::equal(alg.whole, m.algorithm)) return "signature algorithm";
  if (!der::read(f, issuer) || !der::equal(issuer.whole, m.issuer_name)) return "issuer name";
  if (!der::expect(f, der::tag::kSequence, validity)) return "validity is malformed";
  thread_local Der expected;
  expected.clear();
  der::put_time(expected, p.m_not_before);
  der::put_time(expected, p.m_not_after);
  // Not after the CA's end; the start may precede the CA's (backdating is the caller's call).
  if (!der::equal(validity.content, expected) || p.m_not_before >= p.m_not_after ||
      p.m_not_after > m.ca_not_after) {
    return "validity is empty or ends after the CA's";
  }
  if (!der::expect(f, der::tag::kSequence, subject)) return "subject is malformed";
  der::Bytes rdns = subject.content;
  const std::string& id = p.m_device_id;
  expected.clear();
  put_rdn(expected, oid::kCommonName, id);
  if (id.empty() || id.size() > kMaxCommonNameLength || !starts_with(rdns, m.subject_prefix) ||
      !der::equal(rdns, expected)) {
    return "subject is not the profile's with CN = the device ID (at most 64 characters)";
  }
  if (!der::expect(f, der::tag::kSequence, spki)) return "public key is malformed";
  if (!der::expect(f, der::tag::kContext3, exts) || !f.empty()) return "extensions are missing";
  der::Bytes e = exts.content;
  der::Tlv list;
  if (!der::expect(e, der::tag::kSequence, list) || !e.empty()) return "extensions are malformed";
  der::Bytes x = list.content;
  if (!starts_with(x, kFixedExtensions) || !starts_with(x, kSkiPrefix) ||
      x.size() != SHA_DIGEST_LENGTH + m.aki_ext.size() ||
      !der::equal(x.subspan(SHA_DIGEST_LENGTH), m.aki_ext)) {
    return "extensions are not exactly the profile's";
  }
  return nullptr;
}

Result<SignedCert> Issuer::sign(PreparedCert&& prepared) const {
  std::vector<PreparedCert> one;
  one.push_back(std::move(prepared));
  return std::move(sign(std::move(one)).front());
}

namespace {

// One certificate between the token's signature and the verdict on it.
struct Pending {
  std::uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned digest_len = 0;
  std::vector<std::uint8_t> signature;
  bool signed_ok = false;
};

}  // namespace

std::vector<Result<SignedCert>> Issuer::sign(std::vector<PreparedCert>&& prepared) const {
  const Impl& m = *m_impl;
  const std::vector<PreparedCert> batch = std::move(prepared);
  std::vector<Result<SignedCert>> out;
  out.reserve(batch.size());
  std::vector<Pending> pending(batch.size());
  std::string token_failure;  // the first one: a failing token is not asked again
  // 1. Lint, then the token signs: each certificate on its own.
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const PreparedCert& p = batch[i];
    Pending& s = pending[i];
    if (!token_failure.empty()) {
      out.emplace_back(fail(
          ErrorCode::kSignFailed,
          "serial " + p.m_serial + ": not signed after a token failure (" + token_failure + ")"));
      continue;
    }
    if (const char* why = lint(p)) {
      out.emplace_back(
          fail(ErrorCode::kSignFailed,
               "serial " + p.m_serial + ": the certificate was not signed: lint: " + why));
      continue;
    }
    EVP_Digest(p.m_tbs.data(), p.m_tbs.size(), s.digest, &s.digest_len, m.md, nullptr);
    std::string error;
    if (!m.key.sign_digest(ByteView(s.digest, s.digest_len), m.md_nid, s.signature, error)) {
      token_failure = error;
      out.emplace_back(fail(ErrorCode::kSignFailed, "serial " + p.m_serial + ": " + error));
      continue;
    }
    s.signed_ok = true;
    out.emplace_back(SignedCert{});
  }
  // 2. Verify what the token produced before anything is recorded or released (Boulder's rule):
  //    all signatures of the batch at once where the CA key allows it (one shared inversion).
  std::vector<FixedKeyVerifier::Check> checks;
  if (m.fast_verifier) {
    checks.reserve(batch.size());
    for (const Pending& s : pending) {
      checks.push_back({ByteView(s.digest, s.digest_len), s.signature});
    }
    m.fast_verifier->verify_all(checks);
  }
  // 3. Assemble: TBS, algorithm, signature.
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (!pending[i].signed_ok) continue;
    const PreparedCert& p = batch[i];
    const Pending& s = pending[i];
    bool verified = false;
    if (m.fast_verifier) {
      verified = checks[i].valid;
    } else {
      ossl::PkeyCtxPtr ctx(EVP_PKEY_CTX_new(m.ca_public.get(), nullptr));
      verified = ctx && EVP_PKEY_verify_init(ctx.get()) == 1 &&
                 EVP_PKEY_CTX_set_signature_md(ctx.get(), m.md) == 1 &&
                 EVP_PKEY_verify(ctx.get(), s.signature.data(), s.signature.size(), s.digest,
                                 s.digest_len) == 1;
    }
    if (!verified) {
      ERR_clear_error();
      out[i] = fail(ErrorCode::kSignFailed,
                    "serial " + p.m_serial + ": the token's signature does not verify with CA '" +
                        m.ca_name + "' certificate's key");
      continue;
    }
    SignedCert& cert = *out[i];
    cert.device_id = p.m_device_id;
    cert.serial = p.m_serial;
    cert.key_sha256 = p.m_key_sha256;
    cert.not_before = p.m_not_before;
    cert.not_after = p.m_not_after;
    const std::size_t bits_len = s.signature.size() + 1;
    const std::size_t body_len =
        p.m_tbs.size() + m.algorithm.size() + der::header_size(bits_len) + bits_len;
    cert.der.reserve(der::header_size(body_len) + body_len);
    der::put_header(cert.der, der::tag::kSequence, body_len);
    der::put_bytes(cert.der, p.m_tbs);
    der::put_bytes(cert.der, m.algorithm);
    der::put_header(cert.der, der::tag::kBitString, bits_len);
    cert.der.push_back(0);
    der::put_bytes(cert.der, s.signature);
    cert.sha1 = thumbprint_sha1(cert.der);
    cert.sha256 = thumbprint_sha256(cert.der);
  }
  return out;
}

}  // namespace fleetsign::engine
