#include "tls.hpp"

#include <arpa/inet.h>
#include <openssl/x509v3.h>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::device {

bool TlsIdentity::present(SSL* ssl) const {
  return m_parsed != nullptr && SSL_use_certificate(ssl, m_parsed->leaf.get()) == 1 &&
         SSL_use_PrivateKey(ssl, m_parsed->key.get()) == 1 &&
         SSL_set1_chain(ssl, m_parsed->issuers) == 1;
}

TlsContexts::TlsContexts(const std::filesystem::path& trust_file) : m_store(X509_STORE_new()) {
  const std::string text = read_bounded(trust_file.string(), kChainFileLimit, "trust file");
  std::string problem;
  const auto certs = ossl::parse_certificates(text, problem);
  if (!problem.empty() || certs.empty()) {
    throw Error(ErrorCode::kCertificateMalformed,
                "trust file " + trust_file.string() + ": " +
                    (problem.empty() ? "holds no PEM certificate" : problem));
  }
  for (const auto& cert : certs) {
    if (X509_STORE_add_cert(m_store.get(), cert.get()) != 1) {
      ERR_clear_error();  // a certificate listed twice: harmless
    }
  }
}

int TlsContexts::certificate_callback(SSL* ssl, void* arg) {
  const auto* self = static_cast<const TlsContexts*>(arg);
  // No identity (a bug) aborts the handshake rather than connecting anonymously.
  return self->m_active != nullptr && self->m_active->present(ssl) ? 1 : 0;
}

SSL_CTX* TlsContexts::for_host(const std::string& host) {
  if (auto it = m_contexts.find(host); it != m_contexts.end()) return it->second.get();
  ossl::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) throw Error(ErrorCode::kInternal, "making a TLS context: " + ossl::last_error());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set1_cert_store(ctx.get(), m_store.get());
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS);  // idle connections hold no buffers
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  SSL_CTX_set_cert_cb(ctx.get(), &TlsContexts::certificate_callback, this);
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(ctx.get());
  unsigned char ip[16];
  const bool is_ip =
      inet_pton(AF_INET, host.c_str(), ip) == 1 || inet_pton(AF_INET6, host.c_str(), ip) == 1;
  const int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str())
                       : X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
  if (ok != 1) {
    throw Error(ErrorCode::kInvalidArgument, "broker host '" + host + "': " + ossl::last_error());
  }
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  SSL_CTX* raw = ctx.get();
  m_contexts.emplace(host, std::move(ctx));
  return raw;
}

}  // namespace fleetsign::device
