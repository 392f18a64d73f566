// Operators: their certificates and records (operators.hpp).
#include "fleetsign/engine/operators.hpp"

#include <openssl/pem.h>

#include <algorithm>
#include <memory>

#include "device_keys.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

// The TLS key's PKCS#8 PEM as DER, for the PKCS#12 (wiped after use by DeviceKey's owner).
Der pkcs8_der(const std::string& pem_text) {
  const std::unique_ptr<BIO, int (*)(BIO*)> bio(
      BIO_new_mem_buf(pem_text.data(), static_cast<int>(pem_text.size())), BIO_free);
  const std::unique_ptr<EVP_PKEY, void (*)(EVP_PKEY*)> key(
      bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr, EVP_PKEY_free);
  unsigned char* buf = nullptr;
  const int len = key ? i2d_PrivateKey(key.get(), &buf) : -1;
  if (len <= 0) throw Error(ErrorCode::kInternal, "encoding the operator's new key failed");
  Der out(buf, buf + len);
  OPENSSL_clear_free(buf, static_cast<std::size_t>(len));
  return out;
}

void check_spec(Stores& stores, const policy::Policy& policy, const OperatorSpec& spec) {
  for (const char* reserved : {"anonymous", "http-service"}) {
    if (spec.name == reserved) {
      throw Error(ErrorCode::kInvalidArgument,
                  "operator name '" + spec.name + "' is reserved (the audit log uses it)");
    }
  }
  if (const auto id = DeviceId::check(policy, spec.name); !id) {
    throw Error(ErrorCode::kInvalidArgument,
                "operator name '" + spec.name + "': " + id.error().message);
  }
  if (spec.role == OperatorRole::kFactory && spec.groups.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "operator '" + spec.name + "': a factory needs the groups it issues for");
  }
  if (spec.role != OperatorRole::kFactory && !spec.groups.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "operator '" + spec.name +
                                                 "': groups apply to the factory role only (role " +
                                                 std::string(operator_role_name(spec.role)) + ")");
  }
  for (const auto& g : spec.groups) {
    if (!stores.find_group(g) && policy.groups.count(g) == 0) {
      throw Error(ErrorCode::kNotFound, "operator '" + spec.name + "': '" + g +
                                            "' is neither an enrollment group nor a policy group");
    }
  }
  for (const auto& op : stores.list_operators()) {
    if (op.name == spec.name && op.removed_at == 0) {
      throw Error(ErrorCode::kAlreadyExists,
                  "operator '" + spec.name + "' exists (remove it first to replace it)");
    }
  }
}

}  // namespace

CaRecord ensure_operator_ca(CaService& cas, Stores& stores, const std::string& name,
                            bool* created) {
  if (created != nullptr) *created = false;
  if (auto found = stores.find_ca(name)) {
    // Its certificates must never be device identities: no CA of its chain may sit in an
    // enrollment group's slot (the enrollment side refuses the converse).
    for (const auto& g : stores.list_groups()) {
      int depth = 0;
      for (auto at = std::optional<CaRecord>(*found); at && depth < 16;
           at = at->parent.empty() ? std::nullopt : stores.find_ca(at->parent), ++depth) {
        if (at->name == g.primary_ca || at->name == g.secondary_ca) {
          throw Error(ErrorCode::kInvalidArgument,
                      "CA '" + name + "' cannot issue operator certificates: enrollment group '" +
                          g.name + "' trusts " +
                          (at->name == name ? "it" : "its issuer '" + at->name + "'") +
                          ", so they would be device identities too (use a CA of its own)");
        }
      }
    }
    return *found;
  }
  if (name != kDefaultOperatorCa) {
    throw Error(ErrorCode::kNotFound, "operator CA '" + name + "' does not exist");
  }
  CaSpec ca;
  ca.name = name;
  ca.subject = "/CN=fleetsign operators CA";
  CaRecord rec = cas.create_root(ca);
  if (created != nullptr) *created = true;
  return rec;
}

OperatorCredential add_operator(CaService& cas, Stores& stores, const policy::Policy& policy,
                                const OperatorSpec& spec, const char* password,
                                const std::function<void(const OperatorCredential&)>& deliver) {
  check_spec(stores, policy, spec);
  OperatorCredential out;
  ensure_operator_ca(cas, stores, spec.ca, &out.created_ca);
  cas.require_can_sign(spec.ca);
  const TlsKeyPair key = make_tls_key();
  TlsCertSpec tls;
  tls.common_name = spec.name;
  tls.server = false;
  tls.days = spec.days;
  out.cert = cas.make_tls_cert(spec.ca, tls, key.spki_der);
  const CertSummary summary = summarize_certificate(out.cert);
  OperatorRecord& rec = out.record;
  rec.name = spec.name;
  rec.role = spec.role;
  rec.groups = spec.groups;
  rec.ca_name = spec.ca;
  rec.serial = summary.serial;
  rec.sha256 = summary.sha256;
  rec.not_after = summary.not_after;
  std::vector<Der> chain;
  for (const auto& ca : cas.chain(spec.ca)) chain.push_back(ca.cert_der);
  Der pkcs8 = pkcs8_der(key.private_pem);
  out.pfx = make_pfx(out.cert, pkcs8, chain, spec.name, password);
  OPENSSL_cleanse(pkcs8.data(), pkcs8.size());
  // The credential first, the role after: an operator is never recorded without the key that
  // makes it usable (a failed write records nothing; the certificate itself is recorded already).
  deliver(out);
  stores.add_operator(rec);
  return out;
}

}  // namespace fleetsign::engine
