#include "fleetsign/engine/ca.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>

#include "fleetsign/engine/ca_constraints.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/error.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

namespace {

constexpr std::int64_t kBackdateSeconds = 60;

void add_ext(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  ossl::X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    throw Error(ErrorCode::kInternal, std::string("building extension ") + OBJ_nid2sn(nid) + "=" +
                                          value + ": " + ossl::last_error());
  }
}

void set_random_serial(X509* cert, RandomSource& random) {
  std::uint8_t serial[19];
  random.fill(serial);
  serial[0] = static_cast<std::uint8_t>((serial[0] & 0x3F) | 0x40);
  ossl::BnPtr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert));
}

const EVP_MD* md_for(hsm::KeyType type) {
  return type == hsm::KeyType::kEcP384 ? EVP_sha384() : EVP_sha256();
}

// Signs in the token, then checks the signature with the issuer's public key before anything is
// recorded: a token fault must not produce a certificate.
void sign_and_check(X509* cert, const hsm::SigningKey& key, EVP_PKEY* issuer_public,
                    const std::string& what) {
  if (X509_sign(cert, key.pkey(), md_for(key.type())) <= 0) {
    throw Error(ErrorCode::kTokenError,
                "signing " + what + " with " + key.ref().uri() + ": " + ossl::last_error());
  }
  if (X509_verify(cert, issuer_public) != 1) {
    throw Error(ErrorCode::kTokenError,
                "signature on " + what + " made by the token does not verify; nothing recorded");
  }
}

// Days that still fit when the command is run again a while later (an hour's margin: advice given
// at a second's boundary must not be refused a second later).
std::string days_hint(std::int64_t from, std::int64_t until) {
  return std::to_string(std::max<std::int64_t>(0, (until - from - 3600) / 86400));
}

}  // namespace

hsm::KeyType to_key_type(policy::KeyAlgorithm alg) noexcept {
  switch (alg) {
    case policy::KeyAlgorithm::kEcP256:
      return hsm::KeyType::kEcP256;
    case policy::KeyAlgorithm::kEcP384:
      return hsm::KeyType::kEcP384;
    case policy::KeyAlgorithm::kRsa2048:
      return hsm::KeyType::kRsa2048;
    case policy::KeyAlgorithm::kRsa3072:
      return hsm::KeyType::kRsa3072;
    case policy::KeyAlgorithm::kRsa4096:
      return hsm::KeyType::kRsa4096;
  }
  return hsm::KeyType::kEcP256;
}

CaService::CaService(Stores& registry, hsm::Token& token, const policy::Policy& policy,
                     const Clock& clock, RandomSource& random)
    : m_registry(registry), m_token(token), m_policy(policy), m_clock(clock), m_random(random) {}

CaRecord CaService::get(const std::string& name) {
  auto ca = m_registry.find_ca(name);
  if (!ca) {
    throw Error(ErrorCode::kNotFound, "CA '" + name + "' not found in the registry");
  }
  return *ca;
}

CaRecord CaService::create_root(const CaSpec& spec) { return create(spec, nullptr); }

CaRecord CaService::create_intermediate(const CaSpec& spec) {
  require_can_sign(spec.issuer);
  const CaRecord issuer = get(spec.issuer);
  return create(spec, &issuer);
}

CaRecord CaService::create(const CaSpec& spec, const CaRecord* issuer) {
  // 1. Inputs: name safe and free, key allowed and offered by the token, subject valid, the
  // issuer's chain allows the new CA, validity within the issuer's.
  if (auto why = check_ca_name(spec.name)) {
    throw Error(ErrorCode::kInvalidArgument, *why);
  }
  if (m_registry.find_ca(spec.name)) {
    throw Error(ErrorCode::kAlreadyExists, "CA '" + spec.name + "' already exists");
  }
  if (auto why = policy::check_ca_key(m_policy, spec.key)) {
    throw Error(ErrorCode::kPolicyInvalid, "CA '" + spec.name + "': " + *why);
  }
  m_token.require_key_type(to_key_type(spec.key));
  // A subject is printed in `ca list` and the audit log: a control character would forge lines.
  for (const char c : spec.subject) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
      throw Error(ErrorCode::kInvalidSubject,
                  "CA '" + spec.name + "': the subject holds a control character");
    }
  }
  auto subject = ossl::parse_subject(spec.subject);
  const std::optional<int> path_len =
      issuer ? std::optional<int>(spec.path_len.value_or(0)) : spec.path_len;
  if (path_len && *path_len < 0) {
    throw Error(ErrorCode::kInvalidArgument, "CA '" + spec.name + "': pathLen must be >= 0");
  }
  if (issuer) {
    check_chain_allows(spec.name, *issuer, subject.get(), path_len);
  }
  const int days = spec.days.value_or(issuer ? m_policy.validity.intermediate_days
                                             : m_policy.validity.root_days);
  // 100 years, as the policy file allows; X.509 time ends at 9999-12-31 (GeneralizedTime).
  if (days <= 0 || days > 36500) {
    throw Error(
        ErrorCode::kInvalidArgument,
        "CA '" + spec.name + "': validity must be 1 to 36500 days, got " + std::to_string(days));
  }
  const std::int64_t not_before = m_clock.now() - kBackdateSeconds;
  const std::int64_t not_after = not_before + std::int64_t{days} * 86400;
  if (issuer && not_after > issuer->not_after) {
    throw Error(ErrorCode::kValidityBeyondIssuer,
                "CA '" + spec.name + "' would be valid until " + iso8601(not_after) +
                    ", after its issuer '" + issuer->name + "' expires (" +
                    iso8601(issuer->not_after) + "); use --days " +
                    days_hint(not_before, issuer->not_after) + " or less");
  }
  const hsm::SigningKey* issuer_key = nullptr;
  ossl::X509Ptr issuer_cert;
  if (issuer) {
    issuer_key = &load_key(*issuer);
    issuer_cert = ossl::from_der(issuer->cert_der);
  }

  // 2. The key pair, made in the token under an ID recorded (pending) before it exists.
  const hsm::KeyRef ref = begin_key(spec.name);
  std::string serial;
  try {
    m_token.generate_key(to_key_type(spec.key), ref);
    const hsm::SigningKey& key = m_token.key(ref);
    // 3. The certificate.
    ossl::X509Ptr cert(X509_new());
    X509_set_version(cert.get(), X509_VERSION_3);
    set_random_serial(cert.get(), m_random);
    X509_set_subject_name(cert.get(), subject.get());
    X509_set_issuer_name(cert.get(),
                         issuer ? X509_get_subject_name(issuer_cert.get()) : subject.get());
    ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(not_before));
    ASN1_TIME_set(X509_getm_notAfter(cert.get()), static_cast<time_t>(not_after));
    auto pub = ossl::public_key_from_spki(key.spki_der());
    X509_set_pubkey(cert.get(), pub.get());
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer ? issuer_cert.get() : cert.get(), cert.get(), nullptr, nullptr, 0);
    std::string bc = "critical,CA:TRUE";
    if (path_len) {
      bc += ",pathlen:" + std::to_string(*path_len);
    }
    add_ext(cert.get(), &ctx, NID_basic_constraints, bc.c_str());
    add_ext(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash");
    add_ext(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always");
    serial = record_intent(cert.get(), "ca", spec.name, issuer ? issuer->name : spec.name);
    sign_and_check(cert.get(), issuer ? *issuer_key : key,
                   issuer ? X509_get0_pubkey(issuer_cert.get()) : pub.get(),
                   "CA '" + spec.name + "'");

    // 4. Record it: the CA row, the certificate issued and the pending row gone, at once.
    CaRecord rec;
    rec.name = spec.name;
    rec.parent = issuer ? issuer->name : "";
    rec.subject = ossl::subject_line(subject.get());
    rec.key_uri = ref.uri();
    rec.key_type = std::string(policy::key_algorithm_name(spec.key));
    rec.cert_der = ossl::to_der(cert.get());
    rec.not_before = not_before;
    rec.not_after = not_after;
    rec.sha1 = thumbprint_sha1(rec.cert_der);
    rec.sha256 = thumbprint_sha256(rec.cert_der);
    rec.created_at = m_clock.now();
    m_registry.complete_ca(rec, serial);
    m_registry.audit(issuer ? "ca.create-intermediate" : "ca.create-root", rec.name,
                     "{\"subject\":" + json_quote(rec.subject) + ",\"key\":" +
                         json_quote(rec.key_uri) + ",\"sha256\":" + json_quote(rec.sha256) + "}");
    return rec;
  } catch (...) {
    // Never leave an orphan key behind a CA that was not recorded. (After a kill, the pending
    // row does the same at the next start: recover_pending_cas.)
    m_token.destroy_key(ref);
    m_registry.drop_pending_ca(spec.name);
    throw;
  }
}

void CaService::check_chain_allows(const std::string& name, const CaRecord& issuer,
                                   const X509_NAME* subject, std::optional<int> path_len) {
  std::vector<ossl::X509Ptr> certs;
  std::vector<ChainLink> links;
  for (const CaRecord& ca : chain(issuer.name)) {
    certs.push_back(ossl::from_der(ca.cert_der));
    if (!certs.back()) {
      throw Error(ErrorCode::kCertificateMalformed,
                  "CA '" + ca.name + "': its recorded certificate cannot be parsed");
    }
    links.push_back({ca.name, certs.back().get()});
  }
  if (auto why = chain_forbids_ca(links, subject, path_len)) {
    throw Error(ErrorCode::kCaConstraint,
                "CA '" + name + "' cannot be created under '" + issuer.name + "': " + *why);
  }
}

hsm::KeyRef CaService::begin_key(const std::string& name) {
  // A label is a CA's name: a second key with it would make "which key is root?" ambiguous.
  for (const hsm::KeyRef& k : m_token.list_private_keys()) {
    if (k.label == name) {
      throw Error(ErrorCode::kAlreadyExists,
                  "token '" + m_token.label() + "' already holds a key labelled '" + name +
                      "' that no CA row references (" + k.uri() + "); refusing to make a second");
    }
  }
  hsm::KeyRef ref{m_token.label(), std::vector<std::uint8_t>(16), name};
  m_random.fill(ref.id);
  PendingCa pending;
  pending.name = name;
  pending.key_uri = ref.uri();
  pending.created_at = m_clock.now();
  m_registry.add_pending_ca(pending);
  return ref;
}

std::string CaService::record_intent(X509* cert, const std::string& kind,
                                     const std::string& subject_name, const std::string& issuer) {
  CaCertIntent intent;
  intent.serial = ossl::serial_hex(cert);
  intent.kind = kind;
  intent.subject_name = subject_name;
  intent.issuer_ca = issuer;
  intent.tbs_der = ossl::tbs_der(cert);
  m_registry.record_ca_cert_intent(intent);
  return intent.serial;
}

const hsm::SigningKey& CaService::load_key(const CaRecord& ca) {
  if (ca.key_uri.empty()) {
    // Imported with `ca import`: the certificate is known, its key lives elsewhere.
    throw Error(ErrorCode::kKeyNotFound,
                "CA " + ca.name + " is external: its key is not in this token");
  }
  const hsm::SigningKey& key = m_token.key(hsm::KeyRef::parse_uri(ca.key_uri));
  auto cert = ossl::from_der(ca.cert_der);
  const X509_PUBKEY* cert_key = cert ? X509_get_X509_PUBKEY(cert.get()) : nullptr;
  unsigned char* spki = nullptr;
  const int len = cert_key ? i2d_X509_PUBKEY(cert_key, &spki) : -1;
  const bool same = len > 0 && static_cast<std::size_t>(len) == key.spki_der().size() &&
                    std::equal(key.spki_der().begin(), key.spki_der().end(), spki);
  OPENSSL_free(spki);
  if (!same) {
    throw Error(ErrorCode::kKeyCertMismatch,
                "CA '" + ca.name + "': token key " + ca.key_uri +
                    " does not match the CA certificate's public key; refusing to sign");
  }
  return key;
}

std::vector<CaRecord> CaService::chain(const std::string& name) {
  std::vector<CaRecord> out;
  std::string next = name;
  while (!next.empty() && out.size() < 16) {
    out.push_back(get(next));
    next = out.back().parent;
  }
  return out;
}

void CaService::require_can_sign(const std::string& name) {
  for (const CaRecord& ca : chain(name)) {
    if (ca.revoked_at == 0) continue;
    throw Error(ErrorCode::kCaConstraint,
                "CA '" + ca.name + "' was revoked (" + ca.revocation_reason + ") at " +
                    iso8601(ca.revoked_at) + ": nothing more is signed under it" +
                    (ca.name == name ? std::string() : " (it issued CA '" + name + "')"));
  }
}

Der CaService::make_verification_cert(const std::string& ca_name, const std::string& code) {
  if (code.empty() || code.size() > 64) {
    throw Error(ErrorCode::kInvalidArgument, "verification code must be 1..64 characters");
  }
  const CaRecord ca = get(ca_name);
  const hsm::SigningKey& key = load_key(ca);
  auto ca_cert = ossl::from_der(ca.cert_der);
  // The certificate's own key pair is irrelevant to the proof: a throw-away software key.
  ossl::PkeyPtr leaf_key(EVP_EC_gen("P-256"));
  ossl::X509Ptr cert(X509_new());
  X509_set_version(cert.get(), X509_VERSION_3);
  set_random_serial(cert.get(), m_random);
  ossl::X509NamePtr subject(X509_NAME_new());
  X509_NAME_add_entry_by_NID(subject.get(), NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(code.c_str()), -1, -1, 0);
  X509_set_subject_name(cert.get(), subject.get());
  X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert.get()));
  const std::int64_t not_before = m_clock.now() - kBackdateSeconds;
  const std::int64_t not_after = std::min(
      not_before + std::int64_t{m_policy.validity.verification_days} * 86400, ca.not_after);
  ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(not_before));
  ASN1_TIME_set(X509_getm_notAfter(cert.get()), static_cast<time_t>(not_after));
  X509_set_pubkey(cert.get(), leaf_key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca_cert.get(), cert.get(), nullptr, nullptr, 0);
  add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
  add_ext(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature");
  add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash");
  add_ext(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  const std::string serial = record_intent(cert.get(), "verification", code, ca_name);
  try {
    sign_and_check(cert.get(), key, X509_get0_pubkey(ca_cert.get()), "verification certificate");
  } catch (...) {
    m_registry.abandon_ca_cert_intent(serial);
    throw;
  }
  Der der = ossl::to_der(cert.get());
  m_registry.record_ca_cert_issued(serial, der);
  m_registry.audit("ca.verification-cert", ca_name,
                   "{\"code\":" + json_quote(code) +
                       ",\"serial\":" + json_quote(ossl::serial_hex(cert.get())) + "}");
  return der;
}

namespace {

bool is_dns_name(std::string_view name) {
  if (name.empty() || name.size() > 253 || name.front() == '.' || name.back() == '.' ||
      name.front() == '-') {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-';
  });
}

}  // namespace

TlsKeyPair make_tls_key() {
  ossl::PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) {
    throw Error(ErrorCode::kInternal, "generating a P-256 key: " + ossl::last_error());
  }
  TlsKeyPair out;
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr ||
      PEM_write_bio_PrivateKey(bio, key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    BIO_free(bio);
    throw Error(ErrorCode::kInternal, "encoding a P-256 key: " + ossl::last_error());
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  out.private_pem.assign(data, static_cast<std::size_t>(len));
  BIO_free(bio);
  unsigned char* spki = nullptr;
  const int spki_len = i2d_PUBKEY(key.get(), &spki);
  if (spki_len <= 0) {
    throw Error(ErrorCode::kInternal, "encoding a P-256 public key: " + ossl::last_error());
  }
  out.spki_der.assign(spki, spki + spki_len);
  OPENSSL_free(spki);
  return out;
}

Der CaService::make_tls_cert(const std::string& ca_name, const TlsCertSpec& spec,
                             const Der& spki_der) {
  const bool printable = std::all_of(spec.common_name.begin(), spec.common_name.end(),
                                     [](char c) { return c >= 0x20 && c < 0x7f; });
  if (spec.common_name.empty() || spec.common_name.size() > 64 || !printable) {
    throw Error(ErrorCode::kInvalidArgument, "TLS certificate name '" + spec.common_name +
                                                 "' must be 1..64 printable characters");
  }
  std::string san;
  for (const std::string& dns : spec.dns_names) {
    if (!is_dns_name(dns)) {
      throw Error(ErrorCode::kInvalidArgument, "host name '" + dns + "' is not a DNS name");
    }
    san += (san.empty() ? "DNS:" : ",DNS:") + dns;
  }
  for (const std::string& ip : spec.ip_addresses) {
    ASN1_OCTET_STRING* parsed = a2i_IPADDRESS(ip.c_str());
    ASN1_OCTET_STRING_free(parsed);
    if (parsed == nullptr) {
      throw Error(ErrorCode::kInvalidArgument, "'" + ip + "' is not an IP address");
    }
    san += (san.empty() ? "IP:" : ",IP:") + ip;
  }
  if (spec.days < 1 || spec.days > 36500) {
    throw Error(ErrorCode::kInvalidArgument, "TLS certificate days must be 1..36500");
  }
  const unsigned char* p = spki_der.data();
  ossl::PkeyPtr public_key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki_der.size())));
  if (!public_key) {
    throw Error(ErrorCode::kInvalidArgument, "TLS certificate key is not a SubjectPublicKeyInfo");
  }
  const CaRecord ca = get(ca_name);
  const hsm::SigningKey& key = load_key(ca);
  auto ca_cert = ossl::from_der(ca.cert_der);
  ossl::X509Ptr cert(X509_new());
  X509_set_version(cert.get(), X509_VERSION_3);
  set_random_serial(cert.get(), m_random);
  ossl::X509NamePtr subject(X509_NAME_new());
  X509_NAME_add_entry_by_NID(subject.get(), NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1,
                             -1, 0);
  X509_set_subject_name(cert.get(), subject.get());
  X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert.get()));
  const std::int64_t not_before = m_clock.now() - kBackdateSeconds;
  const std::int64_t not_after =
      std::min(not_before + std::int64_t{spec.days} * 86400, ca.not_after);
  ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(not_before));
  ASN1_TIME_set(X509_getm_notAfter(cert.get()), static_cast<time_t>(not_after));
  X509_set_pubkey(cert.get(), public_key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca_cert.get(), cert.get(), nullptr, nullptr, 0);
  add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
  add_ext(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature");
  add_ext(cert.get(), &ctx, NID_ext_key_usage, spec.server ? "serverAuth" : "clientAuth");
  if (!san.empty()) {
    add_ext(cert.get(), &ctx, NID_subject_alt_name, san.c_str());
  }
  add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash");
  add_ext(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  const std::string kind = spec.server ? "tls-server" : "tls-client";
  const std::string serial = record_intent(cert.get(), kind, spec.common_name, ca_name);
  try {
    sign_and_check(cert.get(), key, X509_get0_pubkey(ca_cert.get()), kind + " certificate");
  } catch (...) {
    m_registry.abandon_ca_cert_intent(serial);
    throw;
  }
  Der der = ossl::to_der(cert.get());
  m_registry.record_ca_cert_issued(serial, der);
  m_registry.audit("ca." + kind + "-cert", ca_name,
                   json_object({{"name", spec.common_name}, {"serial", serial}}));
  return der;
}

void verify_possession(Stores& registry, const Clock& clock, const std::string& ca_name,
                       const std::string& code, const Der& der) {
  const auto found = registry.find_ca(ca_name);
  if (!found) {
    throw Error(ErrorCode::kNotFound, "CA '" + ca_name + "' not found in the registry");
  }
  const CaRecord& ca = *found;
  auto ca_cert = ossl::from_der(ca.cert_der);
  auto cert = ossl::from_der(der);
  if (!cert) {
    throw Error(ErrorCode::kCertificateMalformed,
                "verification certificate is not a valid X.509 certificate");
  }
  if (X509_NAME_cmp(X509_get_issuer_name(cert.get()), X509_get_subject_name(ca_cert.get())) != 0 ||
      X509_verify(cert.get(), X509_get0_pubkey(ca_cert.get())) != 1) {
    ERR_clear_error();
    throw Error(ErrorCode::kVerificationSignatureInvalid,
                "verification certificate was not signed by CA '" + ca_name + "' key");
  }
  char cn[256] = {0};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof cn);
  if (code != cn) {
    throw Error(ErrorCode::kVerificationCodeMismatch, "verification certificate has CN '" +
                                                          std::string(cn) +
                                                          "', expected the code '" + code + "'");
  }
  const std::int64_t now = clock.now();
  if (now < ossl::to_unix(X509_get0_notBefore(cert.get())) ||
      now > ossl::to_unix(X509_get0_notAfter(cert.get()))) {
    throw Error(ErrorCode::kVerificationSignatureInvalid,
                "verification certificate is outside its validity period");
  }
  registry.set_ca_verified(ca_name, true);
  registry.audit("ca.verify", ca_name, "{\"code\":" + json_quote(code) + "}");
}

}  // namespace fleetsign::engine
