// CRLs signed in the token (crl.hpp): the numbered steps of CrlSigner::sign.
#include "fleetsign/engine/crl.hpp"

#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <utility>

#include "crl_der.hpp"
#include "der.hpp"
#include "fleetsign/engine/crl_check.hpp"
#include "fleetsign/error.hpp"
#include "oids.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

namespace {

constexpr std::array<std::pair<std::string_view, int>, 10> kReasons = {{
    {"unspecified", 0},
    {"keyCompromise", 1},
    {"cACompromise", 2},
    {"affiliationChanged", 3},
    {"superseded", 4},
    {"cessationOfOperation", 5},
    {"certificateHold", 6},
    {"privilegeWithdrawn", 9},
    {"aACompromise", 10},
    {"", 0},
}};

// The signature algorithm follows the CA key, as for certificates: P-384 with SHA-384, the
// others with SHA-256.
struct Algorithm {
  Der identifier;
  const EVP_MD* md = nullptr;
  int md_nid = 0;
};

Algorithm algorithm_for(const hsm::SigningKey& key) {
  Algorithm a;
  if (key.is_ec()) {
    const bool p384 = key.type() == hsm::KeyType::kEcP384;
    a.md = p384 ? EVP_sha384() : EVP_sha256();
    a.md_nid = p384 ? NID_sha384 : NID_sha256;
    const ByteView oid = p384 ? ByteView(oid::kEcdsaSha384) : ByteView(oid::kEcdsaSha256);
    der::put_header(a.identifier, der::tag::kSequence, 2 + oid.size());
    der::put_tlv(a.identifier, der::tag::kOid, oid);
  } else {
    a.md = EVP_sha256();
    a.md_nid = NID_sha256;
    der::put_header(a.identifier, der::tag::kSequence, 2 + sizeof oid::kRsaSha256 + 2);
    der::put_tlv(a.identifier, der::tag::kOid, oid::kRsaSha256);
    der::put_header(a.identifier, der::tag::kNull, 0);
  }
  return a;
}

Der name_der(const X509_NAME* name) {
  const unsigned char* enc = nullptr;
  std::size_t len = 0;
  X509_NAME_get0_der(const_cast<X509_NAME*>(name), &enc, &len);
  return Der(enc, enc + len);
}

}  // namespace

std::optional<int> crl_reason_code(std::string_view name) noexcept {
  for (const auto& [n, code] : kReasons) {
    if (n == name) return code;
  }
  return std::nullopt;
}

std::string_view crl_state_name(CrlState state) noexcept {
  switch (state) {
    case CrlState::kMissing:
      return "missing";
    case CrlState::kFresh:
      return "fresh";
    case CrlState::kDue:
      return "due";
    case CrlState::kNear:
      return "near";
    case CrlState::kStale:
      return "stale";
  }
  return "unknown";
}

CrlState crl_state(const std::optional<CrlRecord>& latest, const policy::CrlSchedule& schedule,
                   std::int64_t now) noexcept {
  if (!latest) return CrlState::kMissing;
  const std::int64_t left = latest->next_update - now;
  if (left <= 0) return CrlState::kStale;
  if (left < std::int64_t{schedule.warn_hours} * 3600) return CrlState::kNear;
  if (left < std::int64_t{schedule.resign_hours} * 3600) return CrlState::kDue;
  return CrlState::kFresh;
}

namespace {
std::int64_t key_compromise_count(const std::vector<RevokedSerial>& revoked) {
  return std::count_if(revoked.begin(), revoked.end(),
                       [](const RevokedSerial& r) { return r.reason == "keyCompromise"; });
}
}  // namespace

std::vector<RevokedSerial> revoked_by(CrlStore& crls, CaStore& cas, const std::string& ca_name) {
  std::vector<RevokedSerial> out = crls.revoked_certs_of(ca_name);
  for (const CaRecord& child : cas.list_cas()) {
    if (child.parent != ca_name || child.revoked_at == 0 || child.name == ca_name) continue;
    out.push_back(
        {summarize_certificate(child.cert_der).serial, child.revoked_at, child.revocation_reason});
  }
  return out;
}

std::vector<CrlStatus> crl_statuses(Stores& stores, const policy::CrlSchedule& schedule,
                                    std::int64_t now) {
  std::vector<CrlStatus> out;
  for (const CaRecord& ca : stores.list_cas()) {
    if (!can_sign_crl(ca)) continue;
    CrlStatus st;
    st.ca_name = ca.name;
    st.latest = stores.latest_crl(ca.name);
    if (st.latest) st.latest->der.clear();
    st.state = crl_state(st.latest, schedule, now);
    const auto revoked = revoked_by(stores, stores, ca.name);
    st.revoked_now = static_cast<std::int64_t>(revoked.size());
    // Behind: a revocation since, or a reason raised to keyCompromise since (the same entries).
    // A CRL signed before schema v16 does not know its keyCompromise entries (-1): behind when
    // any entry now says keyCompromise (one re-sign per such CA, then it knows).
    const std::int64_t kc = key_compromise_count(revoked);
    const std::int64_t known = st.latest ? st.latest->key_compromise_entries : 0;
    st.revoked_since =
        st.latest && (st.revoked_now != st.latest->entries || (known < 0 ? kc > 0 : kc != known));
    out.push_back(std::move(st));
  }
  return out;
}

CrlSigner::CrlSigner(Stores& stores, CaService& cas, const policy::CrlSchedule& schedule,
                     const Clock& clock)
    : m_stores(stores), m_cas(cas), m_schedule(schedule), m_clock(clock) {}

CrlRecord CrlSigner::sign(const std::string& ca_name) {
  const CaRecord ca = m_cas.get(ca_name);
  const hsm::SigningKey& key = m_cas.load_key(ca);
  const ossl::X509Ptr cert = ossl::from_der(ca.cert_der);
  if (!cert) {
    throw Error(ErrorCode::kCertificateMalformed,
                "CA '" + ca_name + "': stored certificate is malformed");
  }
  const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(cert.get());
  if (ski == nullptr) {
    throw Error(ErrorCode::kCertificateMalformed, "CA '" + ca_name + "': certificate has no SKI");
  }
  // 1. What the CA revoked.
  const std::vector<RevokedSerial> revoked = revoked_by(m_stores, m_stores, ca_name);
  // 2. The number, committed before the token signs: never used twice.
  const std::int64_t number = m_stores.reserve_crl_number(ca_name);
  // 3. The TBSCertList.
  const std::int64_t now = m_clock.now();
  const Algorithm alg = algorithm_for(key);
  const Der issuer = name_der(X509_get_subject_name(cert.get()));
  crl_der::TbsHeader header;
  header.algorithm = alg.identifier;
  header.issuer_name = issuer;
  header.authority_key_id = ByteView(ski->data, static_cast<std::size_t>(ski->length));
  header.number = number;
  header.this_update = now;
  header.next_update = now + std::int64_t{m_schedule.validity_hours} * 3600;
  const Der tbs = crl_der::tbs(header, revoked);
  // 4. The token signs the digest.
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  EVP_Digest(tbs.data(), tbs.size(), digest, &digest_len, alg.md, nullptr);
  std::vector<std::uint8_t> signature;
  std::string error;
  if (!key.sign_digest(ByteView(digest, digest_len), alg.md_nid, signature, error)) {
    throw Error(ErrorCode::kTokenError, "signing CRL number " + std::to_string(number) +
                                            " of CA '" + ca_name + "': " + error);
  }
  CrlRecord rec;
  rec.ca_name = ca_name;
  rec.number = number;
  rec.this_update = header.this_update;
  rec.next_update = header.next_update;
  rec.entries = static_cast<std::int64_t>(revoked.size());
  rec.key_compromise_entries = key_compromise_count(revoked);
  rec.der = crl_der::certificate_list(tbs, alg.identifier, signature);
  // 5. Checked as a relying party would before anything is stored (Boulder's rule).
  const CrlInfo info = check_crl(
      rec.der, ca.cert_der, now,
      "CRL number " + std::to_string(number) + " of CA '" + ca_name + "' as the token signed it");
  if (info.number != number || info.entries != revoked.size()) {
    throw Error(ErrorCode::kCrlInvalid, "CRL number " + std::to_string(number) + " of CA '" +
                                            ca_name + "' does not read back as built");
  }
  // 6. Stored.
  rec.created_at = now;
  m_stores.store_crl(rec);
  return rec;
}

std::vector<CrlRecord> refresh_crls(Stores& stores, CaService& cas,
                                    const policy::CrlSchedule& schedule, const Clock& clock,
                                    std::span<const std::string> ca_names) {
  CrlSigner signer(stores, cas, schedule, clock);
  std::vector<CrlRecord> out;
  for (const std::string& name : ca_names) {
    if (!can_sign_crl(cas.get(name))) continue;
    out.push_back(signer.sign(name));
  }
  return out;
}

}  // namespace fleetsign::engine
