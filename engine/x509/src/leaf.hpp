// A device certificate as the authentication decision reads it: a strict DER walk of the fields
// RFC 5280 path validation needs for an end-entity, without OpenSSL's generic decoder (which
// costs more than the signature check). Views point into the caller's DER. Private to engine/.
#pragma once

#include <cstdint>
#include <string>

#include "der.hpp"

namespace fleetsign::engine {

struct LeafView {
  der::Bytes tbs;          // TBSCertificate, whole (what the signature covers)
  der::Bytes tbs_sig_alg;  // AlgorithmIdentifier inside the TBS
  der::Bytes sig_alg;      // outer AlgorithmIdentifier (must equal tbs_sig_alg)
  der::Bytes sig_alg_oid;  // OID content of sig_alg
  der::Bytes signature;    // BIT STRING content without the unused-bits octet
  der::Bytes serial;       // INTEGER content
  der::Bytes issuer;       // Name, whole
  der::Bytes subject;      // Name, whole
  der::Bytes spki;         // SubjectPublicKeyInfo, whole
  std::int64_t not_before = 0, not_after = 0;
  bool is_ca = false;  // basicConstraints cA = TRUE
  bool has_key_usage = false, digital_signature = false;
  bool has_eku = false, client_auth = false;  // clientAuth or anyExtendedKeyUsage
  bool unknown_critical = false;  // a critical extension this reader does not understand
};

// False (with `why`) when the DER is not a well-formed v3 certificate.
bool parse_leaf(der::Bytes der, LeafView& out, std::string& why);

}  // namespace fleetsign::engine
