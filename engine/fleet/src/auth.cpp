// Authenticator: see auth.hpp for the rules and the two paths (the incident pins are in
// auth_incident.cpp).
#include "fleetsign/engine/auth.hpp"

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "auth_impl.hpp"
#include "fixed_key_verifier.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/policy/policy.hpp"
#include "leaf.hpp"
#include "names.hpp"
#include "oids.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

using auth_detail::Anchor;
using auth_detail::Ca;
using auth_detail::leaf_signed_by;
using auth_detail::outside_validity;
using auth_detail::refuse;
using auth_detail::StorePtr;

namespace {

constexpr std::size_t kMaxDepth = 16;  // registry parent links followed at most (a cycle guard)

const EVP_MD* digest_of(der::Bytes oid_content) {
  if (der::equal(oid_content, oid::kEcdsaSha256) || der::equal(oid_content, oid::kRsaSha256))
    return EVP_sha256();
  if (der::equal(oid_content, oid::kEcdsaSha384) || der::equal(oid_content, oid::kRsaSha384))
    return EVP_sha384();
  if (der::equal(oid_content, oid::kEcdsaSha512) || der::equal(oid_content, oid::kRsaSha512))
    return EVP_sha512();
  return nullptr;
}

// Signatures verified already (positive answers only), for the whole process: in a rollover a
// device presents its new certificate twice (to DPS, then to the hub), and the broker's re-check
// runs the certificate of every live session through the decision again whenever admission
// changes. An entry is the SHA-256 of the whole input of the verification (the digest algorithm,
// the SHA-256 of the issuer's whole SubjectPublicKeyInfo, the TBS digest and the signature), so a
// hit answers exactly what verifying again would. Two generations of kGeneration entries bound its
// memory (~5 MB).
class VerifiedSignatures {
 public:
  using Key = std::array<std::uint8_t, 32>;

  // The key of a verification, or nullopt when there is none to remember (the issuer's key could
  // not be encoded, or hashing failed).
  static std::optional<Key> key_of(const Ca& issuer, const EVP_MD* md, ByteView digest,
                                   der::Bytes signature) {
    if (!issuer.key_id_ok) return std::nullopt;
    thread_local std::vector<std::uint8_t> input;
    input.clear();
    const int type = EVP_MD_get_type(md);
    put(input, ByteView(reinterpret_cast<const std::uint8_t*>(&type), sizeof type));
    put(input, issuer.key_id);
    put(input, digest);
    put(input, signature);
    Key key{};
    if (EVP_Digest(input.data(), input.size(), key.data(), nullptr, EVP_sha256(), nullptr) != 1) {
      ERR_clear_error();
      return std::nullopt;
    }
    return key;
  }
  bool contains(const Key& key) {
    const std::lock_guard lock(m_mutex);
    return m_recent.contains(key) || m_older.contains(key);
  }
  void add(const Key& key) {
    const std::lock_guard lock(m_mutex);
    if (m_recent.size() >= kGeneration) m_older = std::exchange(m_recent, {});
    m_recent.insert(key);
  }

 private:
  static constexpr std::size_t kGeneration = 32768;
  // Length-prefixed, so that no two inputs run together alike.
  static void put(std::vector<std::uint8_t>& out, ByteView bytes) {
    const auto n = static_cast<std::uint32_t>(bytes.size());
    const auto* len = reinterpret_cast<const std::uint8_t*>(&n);
    out.insert(out.end(), len, len + sizeof n);
    out.insert(out.end(), bytes.begin(), bytes.end());
  }
  struct Hash {
    std::size_t operator()(const Key& k) const {
      std::size_t h;
      std::memcpy(&h, k.data(), sizeof h);  // the key is a SHA-256 already
      return h;
    }
  };
  std::mutex m_mutex;
  std::unordered_set<Key, Hash> m_recent, m_older;
};

VerifiedSignatures& verified_signatures() {
  static VerifiedSignatures cache;
  return cache;
}

// The errors X509_verify_cert gives when the chain is fine but ends at nothing trusted.
bool untrusted_anchor(int err) {
  return err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
         err == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
         err == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
         err == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT;
}

// A validity failure reported by X509_verify_cert, as the rule the fast path gives it: a time
// before a certificate's notBefore is "not-yet-valid" wherever it is in the chain, a time after a
// CA's notAfter is "ca-expired".
std::optional<AuthDecision> time_refusal(int err, int depth) {
  if (err != X509_V_ERR_CERT_HAS_EXPIRED && err != X509_V_ERR_CERT_NOT_YET_VALID)
    return std::nullopt;
  const bool at_leaf = depth == 0;
  const bool expired = err == X509_V_ERR_CERT_HAS_EXPIRED;
  return refuse(expired ? (at_leaf ? "expired" : "ca-expired") : "not-yet-valid",
                std::string(at_leaf ? "the leaf" : "a CA in the chain") + ": " +
                    X509_verify_cert_error_string(err));
}

std::string serial_hex(der::Bytes content) {
  while (content.size() > 1 && content[0] == 0) content = content.subspan(1);
  return hex_upper(content);
}

}  // namespace

void Authenticator::Impl::load() {
  for (auto& rec : registry.list_cas()) {
    Ca ca;
    ca.x509 = ossl::from_der(rec.cert_der);
    if (!ca.x509) continue;
    const X509_NAME* subject = X509_get_subject_name(ca.x509.get());
    unsigned char* buf = nullptr;
    const int len = i2d_X509_NAME(subject, &buf);
    ca.subject_der.assign(reinterpret_cast<char*>(buf), static_cast<std::size_t>(len));
    OPENSSL_free(buf);
    EVP_PKEY* pub = X509_get0_pubkey(ca.x509.get());
    const EC_KEY* ec = pub != nullptr ? EVP_PKEY_get0_EC_KEY(pub) : nullptr;
    if (ec != nullptr && EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)) == NID_X9_62_prime256v1) {
      ca.fast = std::make_unique<FixedKeyVerifier>(ec);
    }
    unsigned char* spki = nullptr;
    const int spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(ca.x509.get()), &spki);
    ca.key_id_ok =
        spki_len > 0 && EVP_Digest(spki, static_cast<std::size_t>(spki_len), ca.key_id.data(),
                                   nullptr, EVP_sha256(), nullptr) == 1;
    OPENSSL_free(spki);
    ERR_clear_error();
    ca.constrained = X509_get_ext_by_NID(ca.x509.get(), NID_name_constraints, -1) >= 0 ||
                     X509_get_ext_by_NID(ca.x509.get(), NID_policy_constraints, -1) >= 0;
    ca.rec = std::move(rec);
    cas.emplace(ca.rec.name, std::move(ca));
  }
  for (auto& [name, ca] : cas) by_subject[ca.subject_der].push_back(&ca);
  for (const auto& [name, ca] : cas) {
    if (ca.rec.revoked_at != 0) revoked_cas.emplace(name, ca.rec.revoked_at);  // revoke --ca
  }
  for (const auto& i : registry.list_incidents(false)) {
    OpenIncident o{i.id, i.compromised_at, i.opened_at, i.reason, i.scope_kind, i.scope, i.job_id};
    if (i.scope_kind == "ca" && i.ca_revoked_at != 0) revoked_cas.emplace(i.scope, i.ca_revoked_at);
    if (i.closed_at != 0) continue;
    if (i.scope_kind == "ca") {
      load_replacements(i.job_id, i.scope);
      ca_incidents.emplace(i.scope, std::move(o));
    } else if (i.reason != "keyCompromise") {
      lineage_incidents.push_back(std::move(o));
    }
  }
  for (const auto& g : registry.list_groups()) {
    for (const auto& [slot, ca_name] :
         {std::pair{Slot::kPrimary, g.primary_ca}, std::pair{Slot::kSecondary, g.secondary_ca}}) {
      if (auto it = cas.find(ca_name); it != cas.end())
        it->second.anchors.push_back(Anchor{g.name, slot, g.enabled});
    }
  }
  // Each CA's own path (signatures, basicConstraints, pathLen) is checked once, here, by OpenSSL;
  // validity is time-dependent and is checked per decision.
  for (auto& [name, ca] : cas) {
    STACK_OF(X509)* untrusted = sk_X509_new_null();
    StorePtr roots(X509_STORE_new());
    for (auto* p = &ca; p != nullptr;) {
      auto parent = cas.find(p->rec.parent);
      if (p->rec.parent.empty() || parent == cas.end()) {
        X509_STORE_add_cert(roots.get(), p->x509.get());
        break;
      }
      if (p != &ca) sk_X509_push(untrusted, p->x509.get());
      p = &parent->second;
    }
    X509_STORE_CTX* ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, roots.get(), ca.x509.get(), untrusted);
    X509_STORE_CTX_set_flags(
        ctx, X509_V_FLAG_NO_CHECK_TIME | X509_V_FLAG_X509_STRICT | X509_V_FLAG_PARTIAL_CHAIN);
    ca.path_ok = X509_verify_cert(ctx) == 1;
    X509_STORE_CTX_free(ctx);
    sk_X509_free(untrusted);
    ERR_clear_error();
    // A leaf below this CA adds one more level: every ancestor's pathLen must allow the CAs
    // between it and the leaf (RFC 5280 4.2.1.9), which validating the CA alone does not show.
    int below = 0;
    for (auto parent = cas.find(ca.rec.parent);
         ca.path_ok && !ca.rec.parent.empty() && parent != cas.end();
         parent = cas.find(parent->second.rec.parent)) {
      ++below;
      const long max = X509_get_pathlen(parent->second.x509.get());
      if (max >= 0 && max < below) ca.path_ok = false;
      if (parent->second.rec.parent.empty()) break;
    }
  }
  for (auto& [name, ca] : cas) vouch(ca);
  trusted.reset(X509_STORE_new());
  everyone.reset(X509_STORE_new());
  for (auto& [name, ca] : cas) {
    X509_STORE_add_cert(everyone.get(), ca.x509.get());
    for (const auto& a : ca.anchors) {
      if (a.enabled && ca.vouched) {
        X509_STORE_add_cert(trusted.get(), ca.x509.get());
        break;
      }
    }
  }
}

void Authenticator::Impl::vouch(Ca& ca) {
  if (ca.rec.verified) {
    ca.vouched = true;
    ca.vouched_by = ca.rec.name;
    return;
  }
  // Only a path that OpenSSL validated up to the root makes an ancestor's verification count.
  if (!ca.path_ok) return;
  std::size_t depth = 0;
  for (auto parent = cas.find(ca.rec.parent);
       !ca.rec.parent.empty() && parent != cas.end() && depth < kMaxDepth;
       parent = cas.find(parent->second.rec.parent), ++depth) {
    if (parent->second.rec.verified) {
      ca.vouched = true;
      ca.vouched_by = parent->second.rec.name;
      return;
    }
    if (parent->second.rec.parent.empty()) return;
  }
}

AuthDecision Authenticator::Impl::classify_anchor(const Ca& ca) {
  for (const auto& a : ca.anchors) {
    if (a.enabled && ca.vouched) {
      AuthDecision d;
      d.allowed = true;
      d.rule = "enrollment-group";
      d.enrollment = a.group;
      d.slot = std::string(slot_name(a.slot));
      d.reason = "chain validates to CA '" + ca.rec.name + "' in the " + d.slot +
                 " slot of enabled group '" + a.group + "'";
      if (ca.vouched_by != ca.rec.name) {
        d.reason += " (issued by verified CA '" + ca.vouched_by + "')";
      }
      return d;
    }
  }
  for (const auto& a : ca.anchors) {
    if (a.enabled) {
      return refuse("ca-not-verified",
                    "CA '" + ca.rec.name + "' sits in the " + std::string(slot_name(a.slot)) +
                        " slot of group '" + a.group +
                        "' but neither it nor a CA above it has proved possession of its key");
    }
  }
  if (!ca.anchors.empty()) {
    return refuse("group-disabled", "CA '" + ca.rec.name + "' is only in disabled group '" +
                                        ca.anchors.front().group + "'");
  }
  return refuse("no-enrollment", "");
}

std::optional<AuthDecision> auth_detail::outside_validity(const LeafView& leaf, std::int64_t at) {
  if (at < leaf.not_before)
    return refuse("not-yet-valid", "the leaf is not valid until " + iso8601(leaf.not_before));
  if (at > leaf.not_after)
    return refuse("expired", "the leaf expired at " + iso8601(leaf.not_after));
  return std::nullopt;
}

bool auth_detail::leaf_signed_by(const Ca& issuer, const LeafView& leaf) {
  const EVP_MD* md = digest_of(leaf.sig_alg_oid);
  if (md == nullptr || !der::equal(leaf.sig_alg, leaf.tbs_sig_alg)) return false;
  std::uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned digest_len = 0;
  EVP_Digest(leaf.tbs.data(), leaf.tbs.size(), digest, &digest_len, md, nullptr);
  const ByteView tbs_digest(digest, digest_len);
  const auto key = VerifiedSignatures::key_of(issuer, md, tbs_digest, leaf.signature);
  if (key && verified_signatures().contains(*key)) return true;
  bool good = false;
  if (issuer.fast && md == EVP_sha256()) {
    good = issuer.fast->verify(tbs_digest, leaf.signature);
  } else {
    ossl::PkeyCtxPtr ctx(EVP_PKEY_CTX_new(X509_get0_pubkey(issuer.x509.get()), nullptr));
    good = ctx && EVP_PKEY_verify_init(ctx.get()) == 1 &&
           EVP_PKEY_CTX_set_signature_md(ctx.get(), md) == 1 &&
           EVP_PKEY_verify(ctx.get(), leaf.signature.data(), leaf.signature.size(), digest,
                           digest_len) == 1;
    ERR_clear_error();
  }
  if (good && key) verified_signatures().add(*key);
  return good;
}

AuthDecision Authenticator::Impl::fast_path(const Ca& issuer, const LeafView& leaf,
                                            std::int64_t at) {
  // 1. The leaf's own checks: signature by its issuer, end-entity, usage, validity.
  if (digest_of(leaf.sig_alg_oid) == nullptr || !der::equal(leaf.sig_alg, leaf.tbs_sig_alg)) {
    return refuse("chain-invalid", "unsupported or inconsistent signature algorithm");
  }
  const bool good = leaf_signed_by(issuer, leaf);
  if (!good)
    return refuse("chain-invalid",
                  "leaf signature does not verify with CA '" + issuer.rec.name + "'");
  if (leaf.is_ca)
    return refuse("chain-invalid", "the leaf is a CA certificate, not a device certificate");
  if (leaf.unknown_critical)
    return refuse("chain-invalid", "the leaf has an unsupported critical extension");
  if ((leaf.has_key_usage && !leaf.digital_signature) || (leaf.has_eku && !leaf.client_auth)) {
    return refuse("chain-invalid", "the leaf's key usage does not allow TLS client authentication");
  }
  // 2. Up the registry's hierarchy to the nearest verified CA in an enabled group's slot. CAs
  //    are checked for validity before the leaf, in the order OpenSSL reports them.

  AuthDecision why_not = refuse("no-enrollment", "");
  for (const Ca* ca = &issuer; ca != nullptr;) {
    if (at < ca->rec.not_before) {
      return refuse("not-yet-valid",
                    "CA '" + ca->rec.name + "' is not valid until " + iso8601(ca->rec.not_before));
    }
    if (at > ca->rec.not_after) {
      return refuse("ca-expired",
                    "CA '" + ca->rec.name + "' expired at " + iso8601(ca->rec.not_after));
    }
    AuthDecision d = classify_anchor(*ca);
    if (d.allowed) {
      if (auto bad = outside_validity(leaf, at)) return *bad;
      return d;
    }
    if (why_not.rule == "no-enrollment" && d.rule != "no-enrollment") why_not = d;
    auto parent = cas.find(ca->rec.parent);
    ca = ca->rec.parent.empty() || parent == cas.end() ? nullptr : &parent->second;
  }
  if (auto bad = outside_validity(leaf, at)) return *bad;
  if (why_not.rule == "no-enrollment") {
    why_not.reason =
        "no enabled enrollment group trusts CA '" + issuer.rec.name + "' or its issuers";
  }
  return why_not;
}

const Ca* Authenticator::Impl::ca_for_cert(const X509* cert) {
  for (const auto& [name, ca] : cas) {
    if (X509_cmp(ca.x509.get(), cert) == 0) return &ca;
  }
  return nullptr;
}

AuthDecision Authenticator::Impl::openssl_path(const Der& leaf_der, std::span<const Der> chain,
                                               std::int64_t at) {
  auto leaf = ossl::from_der(leaf_der);
  if (!leaf) return refuse("chain-malformed", "the leaf is not a valid X.509 certificate");
  // cA = TRUE makes a CA certificate whatever its keyUsage says, as on the fast path
  // (X509_check_ca answers 0 when keyUsage lacks keyCertSign: found by fuzz_chain).
  if (X509_check_ca(leaf.get()) != 0 || (X509_get_extension_flags(leaf.get()) & EXFLAG_CA) != 0)
    return refuse("chain-invalid", "the leaf is a CA certificate, not a device certificate");
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  std::vector<ossl::X509Ptr> owned;
  for (std::size_t i = 1; i < chain.size(); ++i) {
    if (auto c = ossl::from_der(chain[i])) {
      sk_X509_push(untrusted, c.get());
      owned.push_back(std::move(c));
    }
  }
  for (auto& [name, ca] : cas) sk_X509_push(untrusted, ca.x509.get());
  auto run = [&](X509_STORE* store, const Ca** anchor) {
    X509_STORE_CTX* ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store, leaf.get(), untrusted);
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_time(param, static_cast<time_t>(at));
    X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_CLIENT);
    // Not X509_STRICT: it refuses, e.g., leaves without an AKI, which a cloud accepts.
    X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
    const bool ok = X509_verify_cert(ctx) == 1;
    const int err = X509_STORE_CTX_get_error(ctx);
    const int depth = X509_STORE_CTX_get_error_depth(ctx);
    STACK_OF(X509)* built = X509_STORE_CTX_get0_chain(ctx);
    *anchor = ok && built != nullptr ? ca_for_cert(sk_X509_value(built, sk_X509_num(built) - 1))
                                     : nullptr;
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
    return std::pair<int, int>(ok ? X509_V_OK : err, depth);
  };
  const Ca* anchor = nullptr;
  auto [err, depth] = run(trusted.get(), &anchor);
  AuthDecision d;
  if (err == X509_V_OK && anchor != nullptr) {
    d = classify_anchor(*anchor);
  } else if (auto timed = time_refusal(err, depth)) {
    d = *timed;
  } else if (untrusted_anchor(err)) {
    // Nothing trusted: would any registry CA have anchored it? That names the reason.
    const Ca* would = nullptr;
    auto [err2, depth2] = run(everyone.get(), &would);
    if (auto timed = time_refusal(err2, depth2)) {
      d = *timed;
    } else if (err2 == X509_V_OK && would != nullptr) {
      for (const Ca* ca = would; ca != nullptr;) {
        AuthDecision c = classify_anchor(*ca);
        if (c.rule != "no-enrollment") {
          d = c;
          break;
        }
        auto parent = cas.find(ca->rec.parent);
        ca = ca->rec.parent.empty() || parent == cas.end() ? nullptr : &parent->second;
      }
      if (d.rule.empty())
        d = refuse("no-enrollment", "no enabled enrollment group trusts CA '" + would->rec.name +
                                        "' or its issuers");
    } else if (err2 != X509_V_OK && !untrusted_anchor(err2)) {
      d = refuse("chain-invalid",
                 std::string("chain does not validate: ") + X509_verify_cert_error_string(err2));
    } else {
      d = refuse("no-enrollment", "the chain leads to no CA known to this registry");
    }
  } else {
    d = refuse("chain-invalid",
               std::string("chain does not validate: ") + X509_verify_cert_error_string(err));
  }
  sk_X509_free(untrusted);
  return d;
}

AuthDecision Authenticator::Impl::decide(const Der& leaf_der, const LeafView& leaf,
                                         std::span<const Der> chain, std::int64_t at,
                                         bool force_openssl,
                                         const std::optional<IndividualEnrollment>& individual) {
  // 1. Individual enrollment first (of the leaf's CN, looked up with its state): it wins over
  //    any group.
  if (const auto& ie = individual) {
    if (!ie->enabled) {
      return refuse("individual-disabled",
                    "individual enrollment '" + ie->registration_id +
                        "' is disabled (it refuses the device even if a group would accept it)");
    }
    const std::string tp = thumbprint_sha256(leaf_der);
    const bool primary = !ie->primary_sha256.empty() && ie->primary_sha256 == tp;
    const bool secondary = !ie->secondary_sha256.empty() && ie->secondary_sha256 == tp;
    if (!primary && !secondary) {
      return refuse("individual-mismatch",
                    "the certificate matches neither slot of individual enrollment '" +
                        ie->registration_id + "'");
    }
    if (auto outside = outside_validity(leaf, at)) return *outside;
    AuthDecision d;
    d.allowed = true;
    d.rule = "individual-enrollment";
    d.enrollment = ie->registration_id;
    d.slot = primary ? "primary" : "secondary";
    d.reason = "certificate matches the " + d.slot + " slot of individual enrollment '" +
               ie->registration_id + "'";
    return d;
  }
  // 2. Groups: the fast path when the issuer is one CA of this registry with a clean path.
  if (!force_openssl) {
    auto it = by_subject.find(
        std::string(reinterpret_cast<const char*>(leaf.issuer.data()), leaf.issuer.size()));
    if (it != by_subject.end() && it->second.size() == 1) {
      const Ca& issuer = *it->second.front();
      bool clean = issuer.path_ok;
      for (const Ca* ca = &issuer; ca != nullptr && clean;) {
        clean = !ca->constrained;
        auto parent = cas.find(ca->rec.parent);
        ca = ca->rec.parent.empty() || parent == cas.end() ? nullptr : &parent->second;
      }
      if (clean) {
        AuthDecision d = fast_path(issuer, leaf, at);
        d.fast_path = true;
        return d;
      }
    }
  }
  return openssl_path(leaf_der, chain, at);
}

Authenticator::Authenticator(Stores& registry) : m_impl(std::make_unique<Impl>(registry)) {
  m_impl->load();
}

Authenticator::~Authenticator() = default;

AuthDecision Authenticator::check(std::span<const Der> chain, std::int64_t at,
                                  std::string_view claimed_id, bool force_openssl) {
  if (chain.empty()) return refuse("chain-malformed", "no certificate presented");
  LeafView leaf;
  std::string why;
  if (!parse_leaf(chain[0], leaf, why)) return refuse("chain-malformed", "leaf: " + why);
  auto cn = single_common_name(leaf.subject);
  if (!cn) return refuse("registration-id-invalid", cn.error().message);
  AuthDecision d;
  const std::string serial = serial_hex(leaf.serial);
  // One round trip: the certificate's state and the CN's individual enrollment.
  const auto found = m_impl->registry.auth_lookup(serial, *cn);
  const auto& state = found.state;
  if (!claimed_id.empty() && claimed_id != *cn) {
    d = refuse("registration-id-mismatch", "the certificate's CN '" + *cn +
                                               "' is not the registration ID '" +
                                               std::string(claimed_id) + "'");
  } else if (auto incident =
                 m_impl->incident_decision(chain, leaf, *cn, serial, at, found.individual)) {
    d = std::move(*incident);
  } else if (state == CertState::kRevoked) {
    d = refuse("revoked", "certificate serial " + serial + " is revoked");
  } else {
    d = m_impl->decide(chain[0], leaf, chain, at, force_openssl, found.individual);
  }
  // Only an ID in the cloud's alphabet (DPS registration IDs: letters, digits, "-._:", 128 at
  // most, the widest a policy allows) is admitted; a home's narrower rule is the issuer's and the
  // broker's. Checked last, so a refusal keeps its more telling rule (found by fuzz_chain).
  if (d.allowed) {
    if (auto bad = policy::check_device_id(policy::DeviceIdRule{"._:", 128}, *cn)) {
      d = refuse("registration-id-invalid", "the certificate's CN: " + *bad);
    }
  }
  d.registration_id = *cn;
  d.leaf_serial = serial;
  d.leaf_sha256 = thumbprint_sha256(chain[0]);
  return d;
}

}  // namespace fleetsign::engine
