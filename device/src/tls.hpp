// The TLS side of the fleet. Private to device/.
//
// One client SSL_CTX per broker host (its hostname check lives in the context's verify
// parameters), all sharing one X509_STORE with the broker trust. A device's certificate is not in
// the context: the context's certificate callback presents the identity of the client the fleet
// is driving at that moment (`set_active`, set before every libmosquitto call on a client: a
// handshake only advances inside such a call). Measured on OpenSSL 3.0: an SSL_CTX costs ~1-2 ms
// of CPU and ~13 KB to make, so one per device would cost 10-20 s and 130 MB at 10,000 devices;
// a parsed certificate and key cost a few KB and nothing to present.
// Not thread-safe: used from the fleet's thread.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "fleetsign/device/identity.hpp"
#include "ossl.hpp"

namespace fleetsign::device {

// What a device presents in its handshakes: its credential's decoded objects, shared.
class TlsIdentity final {
 public:
  explicit TlsIdentity(const Credential& credential) : m_parsed(credential.parsed()) {}
  // Puts the identity on `ssl`; false when OpenSSL refuses.
  bool present(SSL* ssl) const;

 private:
  std::shared_ptr<const ParsedCredential> m_parsed;
};

class TlsContexts final {
 public:
  // Reads the trust file (bounded, every certificate checked). Error(kIo / kCertificateMalformed)
  // naming the file.
  explicit TlsContexts(const std::filesystem::path& trust_file);
  TlsContexts(const TlsContexts&) = delete;  // owns the store and contexts

  // The context for connections to `host` (DNS name or IP literal), made on first use: TLS 1.2+,
  // peer verification against the trust store, hostname (or IP) check, no session cache.
  SSL_CTX* for_host(const std::string& host);

  void set_active(const TlsIdentity* identity) noexcept { m_active = identity; }

 private:
  static int certificate_callback(SSL* ssl, void* arg);

  ossl::StorePtr m_store;
  std::map<std::string, ossl::SslCtxPtr> m_contexts;
  const TlsIdentity* m_active = nullptr;
};

}  // namespace fleetsign::device
