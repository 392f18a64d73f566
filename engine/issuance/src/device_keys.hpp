// Device key pairs generated here (`issue --generate`): for test fleets and factories without
// secure elements. P-256 has a fast path that writes SPKI and PKCS#8 DER from fixed templates;
// other algorithms go through OpenSSL's generic encoders. Thread-safe. Private to engine/.
#pragma once

#include <string>
#include <vector>

#include "fleetsign/engine/x509.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {

struct DeviceKey {
  Der spki;      // SubjectPublicKeyInfo
  Der pkcs8;     // PrivateKeyInfo (unencrypted; written to a 0600 file or the bundle)
  ~DeviceKey();  // wipes pkcs8
};

// Throws Error(kInternal) if OpenSSL cannot generate a key.
DeviceKey generate_device_key(policy::KeyAlgorithm alg);

// PKCS#12 with the key, the certificate and the chain (AES-256 + PBKDF2 + SHA-256 MAC, OpenSSL 3
// defaults: .NET Core / Windows 10 1709+ open it). `friendly_name` is the device ID.
Der make_pfx(const Der& cert, const Der& pkcs8, const std::vector<Der>& chain,
             const std::string& friendly_name, const char* password);

}  // namespace fleetsign::engine
