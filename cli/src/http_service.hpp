// The HTTP service of `fleetsign serve --http HOST:PORT` (issue 12): TLS (Poco::Net), operators
// authenticated by their client certificates (operator_store.hpp), roles per route
// (http_api.hpp), every request that changes something audited with the operator's name.
//
// The token and the registry stay behind it. Reads that need no token (health, CA certificates,
// CRLs, EST's CA certificates, who am I, metrics) are answered here from the registry; every CLI
// command the API offers runs as a child `fleetsign --home HOME … --json`, with the PIN in its
// environment and FLEETSIGN_ACTOR=http:NAME, so the API shares the CLI's one code path, its checks,
// its JSON and its error codes, and takes the home's lock per request like any command.
//
// Thread safety: the server answers on a pool of threads; the registry connection it reads is
// behind a mutex.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "fleetsign/hsm/pin.hpp"

namespace fleetsign::cli {

struct HttpOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8443;  // 0: any free port (tests)
  std::filesystem::path home;
  std::filesystem::path data_dir;  // uploads, batch outputs, idempotency records (not in the home)
  std::filesystem::path program;   // this fleetsign binary, for the children
  std::filesystem::path cert_file, key_file, clients_ca_file;
  const hsm::Pin* pin = nullptr;                      // for the children; must outlive the service
  std::uint64_t max_upload = std::uint64_t{4} << 30;  // a CSR bundle's bytes at most
  int threads = 16;
  // Called after a request created or reopened a job (serve then ticks at once, not at its next
  // tick). From the server's threads: must be thread-safe.
  std::function<void()> wake;
};

class HttpService final {
 public:
  // Binds and starts answering. kIo naming the address when it cannot bind; kInvalidArgument
  // naming the file when the TLS files do not load.
  explicit HttpService(HttpOptions options);
  ~HttpService();  // stops: waits for the requests in progress
  HttpService(const HttpService&) = delete;
  HttpService& operator=(const HttpService&) = delete;

  std::uint16_t port() const;

  // Client certificates from CAs made since the start (a CA rollover's, an incident's
  // replacement) are accepted from now on: the TLS trust store gains every CA of the registry it
  // lacks. Cheap when nothing changed (one read of the registry's change mark); serve calls it
  // between ticks.
  void refresh_trust();

  struct Impl;

 private:
  std::unique_ptr<Impl> m_impl;
};

}  // namespace fleetsign::cli
