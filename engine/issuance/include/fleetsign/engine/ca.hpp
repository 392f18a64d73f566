// The CA hierarchy: roots and intermediates whose private keys are made in, and never leave, the
// token; proof-of-possession (verification) certificates; loading a CA for signing.
//
// Decision on validity: a CA certificate is never allowed to outlive its issuer — asking for one
// is Error(kValidityBeyondIssuer) that says the largest --days that fits. (Device certificates are
// clamped instead, see Issuer, because refusing a whole batch for it helps nobody.)
//
// Not thread-safe (it generates and looks up token keys): use it on one thread, before signing.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/hsm/token.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {

struct CaSpec {
  std::string name;
  std::string issuer;   // empty for a root
  std::string subject;  // openssl -subj form
  policy::KeyAlgorithm key = policy::KeyAlgorithm::kEcP256;
  std::optional<int> days;      // default from the policy
  std::optional<int> path_len;  // intermediates default to 0; roots to none
};

hsm::KeyType to_key_type(policy::KeyAlgorithm alg) noexcept;

// A TLS certificate for fleetsign's own endpoints (the broker's server certificate, its service
// clients' certificates): the key pair is the caller's (a software key on the endpoint's host),
// the signature the CA's token key's.
struct TlsCertSpec {
  std::string common_name;                // 1..64 printable characters
  std::vector<std::string> dns_names;     // subjectAltName dNSName (letters, digits, '.', '-')
  std::vector<std::string> ip_addresses;  // subjectAltName iPAddress (IPv4 or IPv6 text)
  bool server = true;                     // extendedKeyUsage serverAuth; false: clientAuth
  int days = 397;                         // clamped to the CA's own notAfter
};

// A software P-256 key pair for a TLS endpoint (never in the token: it lives on the endpoint's
// host): the private key as unencrypted PKCS#8 PEM, the public key as SubjectPublicKeyInfo DER.
struct TlsKeyPair {
  std::string private_pem;
  Der spki_der;
};
TlsKeyPair make_tls_key();

class CaService final {
 public:
  CaService(Stores& registry, hsm::Token& token, const policy::Policy& policy, const Clock& clock,
            RandomSource& random);

  // Records the CA as pending (name + the CKA_ID it is about to use), generates the key in the
  // token, records the certificate's intent (serial + TBS), signs and verifies it, then records
  // the CA in one transaction that drops the pending row (see ca_recovery.hpp for a kill).
  // Errors: kInvalidArgument (name outside the safe alphabet, see check_ca_name), kAlreadyExists
  // (name, or a token key with that label), kNotFound (issuer), kPolicyInvalid (key not allowed
  // by policy), kMechanismUnsupported (the token cannot make that key type; names what it
  // offers), kCaConstraint (the issuer's chain forbids the new CA: pathLen or name constraints,
  // naming the CA that forbids it), kValidityBeyondIssuer, kInvalidSubject, token errors.
  CaRecord create_root(const CaSpec& spec);
  CaRecord create_intermediate(const CaSpec& spec);

  // The CA's record (kNotFound otherwise).
  CaRecord get(const std::string& name);
  // Looks the CA's token key up and refuses it unless it matches the certificate's public key
  // (kKeyCertMismatch) and is sensitive/never-extractable (kKeyNotProtected).
  const hsm::SigningKey& load_key(const CaRecord& ca);
  // The CA and its issuers, leaf-most first, ending with the root.
  std::vector<CaRecord> chain(const std::string& name);
  // kCaConstraint naming the CA when `name` or one of its issuers is revoked: nothing more is
  // signed under it (device certificates, CAs). Its CRL still is.
  void require_can_sign(const std::string& name);

  // Proof of possession: a certificate with CN = code signed by the CA's token key. Its intent
  // (serial + TBS) is recorded before the token signs, the certificate after.
  Der make_verification_cert(const std::string& ca_name, const std::string& code);

  // A TLS certificate (see TlsCertSpec) for the public key `spki_der` (SubjectPublicKeyInfo),
  // with an intent recorded before the token signs ("tls-server" | "tls-client") and the
  // certificate after, like every certificate. Errors: kInvalidArgument naming a bad name,
  // address or key; kNotFound; token errors.
  Der make_tls_cert(const std::string& ca_name, const TlsCertSpec& spec, const Der& spki_der);

 private:
  CaRecord create(const CaSpec& spec, const CaRecord* issuer);
  // Throws kCaConstraint when the chain of `issuer` forbids the new CA (see ca_constraints.hpp).
  void check_chain_allows(const std::string& name, const CaRecord& issuer, const X509_NAME* subject,
                          std::optional<int> path_len);
  hsm::KeyRef begin_key(const std::string& name);
  std::string record_intent(X509* cert, const std::string& kind, const std::string& subject_name,
                            const std::string& issuer);
  Stores& m_registry;
  hsm::Token& m_token;
  const policy::Policy& m_policy;
  const Clock& m_clock;
  RandomSource& m_random;
};

// Checks a verification certificate (issued by this CA, signature verifies with the CA
// certificate's key, CN = code, within validity) and marks the CA verified. Needs no token.
// Errors: kNotFound, kVerificationSignatureInvalid, kVerificationCodeMismatch,
// kCertificateMalformed.
void verify_possession(Stores& registry, const Clock& clock, const std::string& ca_name,
                       const std::string& code, const Der& cert);

}  // namespace fleetsign::engine
