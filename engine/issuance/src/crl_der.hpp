// The DER of a CRL, written directly: a CRL of 10^5 entries through OpenSSL's X509_REVOKED
// objects costs an allocation per field and a sort on encoding; written here it is one pass over
// the registry's rows. Private to engine/.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "fleetsign/engine/stores.hpp"
#include "fleetsign/engine/x509.hpp"

namespace fleetsign::engine::crl_der {

// The parts of a TBSCertList that do not change from entry to entry.
struct TbsHeader {
  ByteView algorithm;         // AlgorithmIdentifier DER (as in the signed certificates)
  ByteView issuer_name;       // the CA's subject Name DER
  ByteView authority_key_id;  // the CA's subject key identifier (keyIdentifier octets)
  std::int64_t number = 0;
  std::int64_t this_update = 0, next_update = 0;
};

// TBSCertList (RFC 5280 5.1): v2, one entry per revoked serial with its revocationDate and a
// reasonCode extension (none for "unspecified"), the CRL number and authority key identifier.
// Throws Error(kRegistryError) naming a serial that is not hex, Error(kInvalidArgument) naming an
// unknown reason.
Der tbs(const TbsHeader& header, std::span<const RevokedSerial> entries);

// CertificateList: SEQUENCE { tbs, algorithm, BIT STRING signature }.
Der certificate_list(ByteView tbs, ByteView algorithm, ByteView signature);

}  // namespace fleetsign::engine::crl_der
