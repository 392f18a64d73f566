// The HTTP service (http_service.hpp): TLS and the server, who is calling, the route table's
// access rules, parameters into CLI arguments, the children, idempotency and the audit log.
#include "http_service.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequestImpl.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/SecureServerSocket.h>
#include <Poco/Net/SecureStreamSocket.h>
#include <Poco/Net/X509Certificate.h>
#include <Poco/URI.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "child.hpp"
#include "fleetsign/atomic_file.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "http_internal.hpp"

namespace fleetsign::cli {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kMaxJsonBody = 1u << 20;
constexpr std::size_t kMaxKey = 200;

engine::Services::PinSource no_pin() {
  return [](const std::string&) -> hsm::Pin {
    throw Error(ErrorCode::kInternal, "the HTTP service never opens the token itself");
  };
}

}  // namespace

namespace {

Caller identify(HttpService::Impl& impl, Poco::Net::HTTPServerRequest& req) {
  Caller c;
  auto* http = dynamic_cast<Poco::Net::HTTPServerRequestImpl*>(&req);
  if (http == nullptr) return c;
  Poco::Net::SecureStreamSocket socket(http->socket());
  if (!socket.havePeerCertificate()) return c;
  const Poco::Net::X509Certificate cert = socket.peerCertificate();
  unsigned char* buf = nullptr;
  const int len = i2d_X509(const_cast<X509*>(cert.certificate()), &buf);
  if (len <= 0) return c;
  c.cert_der.assign(buf, buf + len);
  OPENSSL_free(buf);
  c.has_cert = true;
  c.cert_sha256 = engine::thumbprint_sha256(c.cert_der);
  c.op =
      impl.with_stores([&](engine::Stores& s) { return s.find_operator_by_cert(c.cert_sha256); });
  if (c.op && c.op->not_after != 0 &&
      c.op->not_after < std::chrono::duration_cast<std::chrono::seconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count()) {
    c.op.reset();  // TLS checked the dates too; a record past its certificate's end is no one's
  }
  return c;
}

// A request without a client certificate is anyone's: at most one audit row a second for those
// (saying how many were left out since), so an anonymous flood cannot grow the registry.
bool anonymous_audit_due(std::int64_t& left_out) {
  static std::mutex mutex;
  static std::int64_t last_second = 0, skipped = 0;
  const std::int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::steady_clock::now().time_since_epoch())
                               .count();
  std::lock_guard lock(mutex);
  if (now == last_second) {
    ++skipped;
    return false;
  }
  last_second = now;
  left_out = skipped;
  skipped = 0;
  return true;
}

void audit(HttpService::Impl& impl, const Caller& caller, const std::string& method,
           const std::string& path, int status) {
  std::int64_t left_out = 0;
  if (!caller.has_cert && !anonymous_audit_due(left_out)) return;
  try {
    impl.with_stores([&](engine::Stores& s) {
      s.audit("http.request", caller.name(),
              engine::json_object({{"method", method},
                                   {"path", engine::valid_utf8(path)},
                                   {"status", static_cast<std::int64_t>(status)},
                                   {"cert_sha256", caller.cert_sha256},
                                   {"anonymous_left_out", left_out}}));
    });
  } catch (const Error& e) {
    std::fprintf(stderr, "fleetsign serve: http: audit failed: %s\n", e.what());
  }
}

class Handler final : public Poco::Net::HTTPRequestHandler {
 public:
  explicit Handler(HttpService::Impl& impl) : m_impl(impl) {}
  void handleRequest(Poco::Net::HTTPServerRequest& req,
                     Poco::Net::HTTPServerResponse& resp) override;

 private:
  void after_command(const ApiRoute& route, const Answer& a);
  void dispatch(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp,
                Caller& caller);
  HttpService::Impl& m_impl;
  const ApiRoute* m_route = nullptr;  // what the request matched, once it did
};

void Handler::handleRequest(Poco::Net::HTTPServerRequest& req,
                            Poco::Net::HTTPServerResponse& resp) {
  // The head is in: no deadline while it is answered (an upload, an event stream), and the
  // next head is due within the deadline again once it is.
  auto* http = dynamic_cast<Poco::Net::HTTPServerRequestImpl*>(&req);
  const void* conn = http != nullptr ? http->socket().impl() : nullptr;
  m_impl.guard->busy(conn);
  struct Idle {
    ConnectionGuard& guard;
    const void* conn;
    ~Idle() { guard.idle(conn); }
  } idle{*m_impl.guard, conn};
  Caller caller;
  try {
    caller = identify(m_impl, req);
    dispatch(req, resp, caller);
  } catch (const Error& e) {
    if (!resp.sent()) {
      send_error(resp, http_status_for(std::string(error_code_name(e.code()))),
                 std::string(error_code_name(e.code())), e.what());
    }
  } catch (const Poco::Exception& e) {
    if (!resp.sent())
      send_error(resp, 400, "invalid_argument", engine::valid_utf8(e.displayText()));
  } catch (const std::exception& e) {
    if (!resp.sent()) send_error(resp, 500, "internal", e.what());
  }
  const int status = static_cast<int>(resp.getStatus());
  m_impl.answered[std::min(5, std::max(0, status / 100))]++;
  // Who did what: every request that may change something (a route that changes, or one that
  // matched none), answered or refused, and every refusal of a read.
  if ((req.getMethod() != "GET" && (m_route == nullptr || m_route->changes)) || status == 401 ||
      status == 403) {
    std::string path = req.getURI();
    try {
      path = Poco::URI(req.getURI()).getPath();
    } catch (const Poco::Exception&) {
    }
    audit(m_impl, caller, req.getMethod(), path, status);
  }
}

void Handler::dispatch(Poco::Net::HTTPServerRequest& req, Poco::Net::HTTPServerResponse& resp,
                       Caller& caller) {
  const Poco::URI uri(req.getURI());
  const std::string path = uri.getPath();
  if (path.empty() || path.front() != '/') {
    send_error(resp, 400, "invalid_argument", "the request path must start with '/'");
    return;
  }
  std::vector<std::string> segments;
  for (std::size_t start = 1; start <= path.size();) {
    const std::size_t end = path.find('/', start);
    segments.push_back(
        path.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (req.getMethod() != "GET" && req.getMethod() != "HEAD") {
    // A browser sends the operator's certificate with every site's requests: a change is taken
    // only from the dashboard's own origin, or from no browser at all (curl and scripts send
    // neither header). A form on another site cannot issue, revoke or cancel.
    const std::string site = req.get("Sec-Fetch-Site", "");
    const std::string origin = req.get("Origin", "");
    if (site == "cross-site" || site == "same-site" ||
        (!origin.empty() && origin != "https://" + req.getHost())) {
      send_error(resp, 403, "forbidden",
                 "a cross-origin request may not change anything (Origin '" +
                     engine::valid_utf8(origin) + "', Sec-Fetch-Site '" + engine::valid_utf8(site) +
                     "')");
      return;
    }
  }
  const RouteMatch m = match_route(req.getMethod(), segments);
  if (m.route == nullptr) {
    send_error(resp, 404, "not_found",
               "no route " + req.getMethod() + " " + engine::valid_utf8(path));
    return;
  }
  if (!m.method_ok) {
    resp.set("Allow", m.route->method);
    send_error(resp, 405, "usage", engine::valid_utf8(path) + " does not take " + req.getMethod());
    return;
  }
  const ApiRoute& route = *m.route;
  m_route = &route;
  if (!route.access.is_public) {
    std::string denied;
    int status = 0;
    if (!caller.has_cert) {
      status = 401;
      denied = "this route needs an operator's client certificate (fleetsign operator add)";
    } else if (!caller.op) {
      status = 403;
      denied = "certificate " + caller.cert_sha256 + " is not an active operator's";
    } else if (!role_allows(caller.op->role, route.access.min_role)) {
      status = 403;
      denied = "operator " + caller.op->name + " has role " +
               std::string(engine::operator_role_name(caller.op->role)) + "; " + route.method +
               " " + route.path + " needs " +
               std::string(engine::operator_role_name(route.access.min_role));
    }
    if (status != 0) {
      send_error(resp, status, status == 401 ? "unauthenticated" : "forbidden", denied);
      return;
    }
  }
  Request r{req, resp, route, m.values, caller};
  if (route.words.empty()) {
    if (!answer_dashboard(m_impl, r)) answer_own(m_impl, r);
    return;
  }

  std::string body;
  fs::path upload;
  if (route.body == ApiBody::kPem) {
    upload =
        m_impl.opt.data_dir / "uploads" /
        ("body-" +
         sha256_hex(std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) +
                    caller.cert_sha256 + path)
             .substr(0, 24) +
         ".pem");
    save_body(req, upload, 16u << 20);
  } else if (req.getMethod() != "GET") {
    body = read_body(req, kMaxJsonBody);
  }
  struct Cleanup {
    fs::path file;
    ~Cleanup() {
      std::error_code ec;
      if (!file.empty()) fs::remove(file, ec);
    }
  } cleanup{upload};
  std::vector<std::string> args = command_args(r, uri, body);
  if (route.body == ApiBody::kPem) args.push_back("--" + route.file_option + "=" + upload.string());
  args.insert(args.end(), route.fixed_args.begin(), route.fixed_args.end());

  const std::string key = req.get("Idempotency-Key", "");
  if (route.changes && !key.empty()) {
    if (key.size() > kMaxKey || key.find_first_of(std::string("\0\r\n", 3)) != std::string::npos) {
      throw Error(ErrorCode::kInvalidArgument,
                  "Idempotency-Key: at most " + std::to_string(kMaxKey) + " characters, one line");
    }
    Idempotency idem(m_impl, caller, key,
                     sha256_hex(req.getMethod() + " " + req.getURI() + "\n" + body));
    if (const auto kept = idem.replay()) {
      resp.set("Idempotent-Replayed", "true");
      send_json(resp, kept->first, kept->second);
      return;
    }
    const Answer a = run_command(m_impl, r, args);
    after_command(route, a);
    // Only a definite answer is kept: a 5xx (busy, unavailable), a device that was offline or a
    // request in flight may be retried with the key.
    if (a.status < 400 || a.status == 400 || a.status == 403 || a.status == 413 ||
        a.status == 422) {
      idem.keep(a.status, a.body);
    }
    send_json(resp, a.status, a.body);
  } else {
    const Answer a = run_command(m_impl, r, args);
    after_command(route, a);
    send_json(resp, a.status, a.body);
  }
}

void Handler::after_command(const ApiRoute& route, const Answer& a) {
  // A job made or reopened: serve runs it now rather than at its next tick.
  const bool makes_job = std::find(route.fixed_args.begin(), route.fixed_args.end(), "--no-run") !=
                         route.fixed_args.end();
  if (makes_job && a.status < 300 && m_impl.opt.wake) m_impl.opt.wake();
}

class HandlerFactory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  explicit HandlerFactory(HttpService::Impl& impl) : m_impl(impl) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(
      const Poco::Net::HTTPServerRequest&) override {
    return new Handler(m_impl);
  }

 private:
  HttpService::Impl& m_impl;
};

}  // namespace

HttpService::Impl::Impl(HttpOptions o) : opt(std::move(o)) {
  m_services = std::make_unique<engine::Services>(engine::Home::open(opt.home), no_pin());
  m_services->set_actor("http-service");
  m_services->stores();
}

std::unique_ptr<HttpService::Impl::AuthSlot> HttpService::Impl::take_auth() {
  std::unique_ptr<AuthSlot> slot;
  {
    std::lock_guard lock(m_auth_mutex);
    if (!m_auth_free.empty()) {
      slot = std::move(m_auth_free.back());
      m_auth_free.pop_back();
    }
  }
  if (!slot) {
    slot = std::make_unique<AuthSlot>();
    slot->registry = engine::Home::open(opt.home).open_registry();
  }
  // Rebuilt (CA paths validated again) only when a change may alter admission: the audit rows
  // since this Authenticator was built, as the broker's watcher reads them.
  const std::int64_t mark = slot->registry->change_mark();
  bool rebuild = !slot->auth || mark < slot->mark;
  for (std::int64_t seen = slot->mark; !rebuild && seen < mark;) {
    const auto rows = slot->registry->audit_after(seen, 1000);
    if (rows.empty()) break;
    for (const auto& row : rows) {
      rebuild =
          rebuild || !(row.action.starts_with("job.") || row.action.starts_with("alert.") ||
                       row.action.starts_with("http.") || row.action.starts_with("operator.") ||
                       row.action == "twin.set-desired");
      seen = row.id;
    }
  }
  if (rebuild) slot->auth = std::make_unique<engine::Authenticator>(*slot->registry);
  slot->mark = mark;
  return slot;
}

void HttpService::refresh_trust() {
  Impl& impl = *m_impl;
  if (!impl.tls) return;
  impl.with_stores([&](engine::Stores& s) {
    const std::int64_t mark = s.change_mark();
    if (mark == impl.trust_mark) return;
    impl.trust_mark = mark;
    X509_STORE* store = SSL_CTX_get_cert_store(impl.tls->sslContext());
    for (const auto& ca : s.list_cas()) {
      if (ca.revoked_at != 0 || ca.cert_der.empty() || impl.trusted.count(ca.name) != 0) continue;
      const unsigned char* p = ca.cert_der.data();
      X509* x = d2i_X509(nullptr, &p, static_cast<long>(ca.cert_der.size()));
      if (x == nullptr) continue;
      X509_STORE_add_cert(store, x);  // the store's own lock; one already there is kept
      X509_free(x);
      impl.trusted.insert(ca.name);
    }
    ERR_clear_error();
  });
}

void HttpService::Impl::give_back(std::unique_ptr<AuthSlot> slot) {
  std::lock_guard lock(m_auth_mutex);
  m_auth_free.push_back(std::move(slot));
}

HttpService::HttpService(HttpOptions options) : m_impl(std::make_unique<Impl>(std::move(options))) {
  Impl& impl = *m_impl;
  for (const auto& [file, what] :
       {std::pair{impl.opt.cert_file, "certificate"}, std::pair{impl.opt.key_file, "key"},
        std::pair{impl.opt.clients_ca_file, "client CA file"}}) {
    if (!fs::is_regular_file(file)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "HTTP service " + std::string(what) + " " + file.string() + ": not a file");
    }
  }
  if (!fs::exists(impl.opt.data_dir)) {
    fs::create_directories(impl.opt.data_dir);
    fs::permissions(impl.opt.data_dir, fs::perms::owner_all);
  } else if ((fs::status(impl.opt.data_dir).permissions() &
              (fs::perms::group_write | fs::perms::others_write)) != fs::perms::none) {
    throw Error(ErrorCode::kInvalidArgument,
                "--http-data " + impl.opt.data_dir.string() +
                    ": others may write there; give a directory of the service's own (0700)");
  }
  // Uploads left by a crash or a client that went away: kept only while their batch may resume.
  std::error_code ec;
  for (const auto& f : fs::directory_iterator(impl.opt.data_dir / "uploads", ec)) {
    const auto batch =
        impl.with_stores([&](engine::Stores& s) { return s.find_batch(f.path().stem().string()); });
    if (f.path().extension() != ".pem" || !batch || batch->state == "finished") {
      fs::remove(f.path(), ec);
    }
  }
  try {
    Poco::Net::Context::Params p;
    p.privateKeyFile = impl.opt.key_file.string();
    p.certificateFile = impl.opt.cert_file.string();
    p.caLocation = impl.opt.clients_ca_file.string();
    p.verificationMode = Poco::Net::Context::VERIFY_RELAXED;
    p.verificationDepth = 9;
    p.loadDefaultCAs = false;
    p.cipherList = "HIGH:!aNULL:!eNULL:!MD5:!RC4:!3DES";
    impl.tls = new Poco::Net::Context(Poco::Net::Context::TLS_SERVER_USE, p);
    impl.tls->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
    SSL_CTX* ssl = impl.tls->sslContext();
    // OpenSSL's own verdict on the client's chain: a bad one ends the handshake, none is allowed
    // (public routes), and Poco's certificate handlers (which want an Application) stay out.
    SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
    static const unsigned char kSid[] = "fleetsign-http";
    SSL_CTX_set_session_id_context(ssl, kSid, sizeof kSid - 1);
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument,
                "HTTP service TLS files (" + impl.opt.cert_file.string() + ", " +
                    impl.opt.key_file.string() + "): " + e.displayText());
  }
  try {
    Poco::Net::SecureServerSocket socket(Poco::Net::SocketAddress(impl.opt.host, impl.opt.port),
                                         128, impl.tls);
    auto* params = new Poco::Net::HTTPServerParams;
    params->setMaxThreads(impl.opt.threads);
    params->setMaxQueued(512);
    params->setKeepAlive(true);
    // A connection that sends nothing (or stalls its TLS handshake) holds a thread for at most
    // this long; a large upload is fine as long as each read brings data.
    params->setTimeout(Poco::Timespan(10, 0));
    params->setKeepAliveTimeout(Poco::Timespan(10, 0));
    params->setServerName("fleetsign");
    // A request head (the TLS handshake included) is due within 10 s of the connection's start or
    // of its last answer, however its bytes trickle in; one address holds at most half the
    // threads.
    impl.guard = std::make_unique<ConnectionGuard>(std::chrono::seconds(10),
                                                   std::max(1, impl.opt.threads / 2));
    Poco::Net::HTTPServerParams::Ptr shared(params);
    impl.server = std::make_unique<Poco::Net::TCPServer>(
        new GuardedConnectionFactory(*impl.guard, shared, new HandlerFactory(impl)), socket,
        shared);
    impl.server->start();
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kIo, "HTTP service: cannot listen on " + impl.opt.host + ":" +
                                    std::to_string(impl.opt.port) + ": " + e.displayText());
  }
}

std::unique_ptr<engine::Registry> HttpService::Impl::open_report_registry() {
  return engine::Home::open(opt.home).open_registry();
}

HttpService::~HttpService() {
  if (m_impl) m_impl->stopping = true;  // event streams end within a second
  if (m_impl && m_impl->server) {
    m_impl->server->stop();  // no new connections
    // Idle keep-alive connections end now; requests in progress are answered first (an event
    // stream ends within a second of `stopping`).
    m_impl->guard->drain(std::chrono::seconds(30));
  }
}

std::uint16_t HttpService::port() const { return m_impl->server->port(); }

}  // namespace fleetsign::cli
