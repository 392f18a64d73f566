// summarize_certificate for a caller that holds the decoded certificate already (the broker
// plugin: mosquitto hands it the X509 that TLS verified). OpenSSL 3.0 spends ~0.3 ms decoding a
// certificate's public key, so decoding the DER a second time is what this saves.
#pragma once

#include <openssl/types.h>

#include "fleetsign/engine/x509.hpp"

namespace fleetsign::engine {

// `der` must be `cert`'s DER (its thumbprints are taken from it).
CertSummary summarize_certificate(X509* cert, ByteView der);

}  // namespace fleetsign::engine
