// EST (RFC 7030) for devices: /.well-known/est[/{label}]/cacerts, csrattrs, simpleenroll,
// simplereenroll.
// A device authenticates with its current certificate (TLS); the fleet's own decision
// (engine/auth.hpp) must admit it, the CSR must name it, and the new certificate is issued by the
// same single-issue path as `fleetsign issue --csr … --reissue` (a child, like every command the
// service runs): recorded before it leaves, into the device's free slot. In this fleet a device
// always enrolls with a certificate it already holds (the factory's), so simpleenroll and
// simplereenroll are the same operation.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>

#include <array>
#include <chrono>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "http_internal.hpp"

namespace fleetsign::cli {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kMaxCsrBody = 64u << 10;

// A CA and its issuers, leaf-most first (registry order, no token).
std::vector<engine::CaRecord> chain_of(engine::Stores& s, const std::string& name) {
  std::vector<engine::CaRecord> out;
  std::string next = name;
  while (!next.empty() && out.size() < 16) {
    auto ca = s.find_ca(next);
    if (!ca) break;
    next = ca->parent;
    out.push_back(std::move(*ca));
  }
  return out;
}

// Base64 in 64-column lines (RFC 7030's transfer encoding): the PEM encoder's body.
std::string base64_lines(const engine::Der& der) {
  const std::string text = engine::pem(der, "PKCS7");
  const std::size_t begin = text.find('\n') + 1;
  const std::size_t end = text.rfind("-----END");
  return text.substr(begin, end - begin);
}

// RFC 7030 4.1.3: a certs-only CMS SignedData (PKCS#7, no signers).
engine::Der certs_only(const std::vector<engine::Der>& certs) {
  std::unique_ptr<PKCS7, void (*)(PKCS7*)> p7(PKCS7_new(), PKCS7_free);
  if (!p7 || PKCS7_set_type(p7.get(), NID_pkcs7_signed) != 1 ||
      PKCS7_content_new(p7.get(), NID_pkcs7_data) != 1) {
    throw Error(ErrorCode::kInternal, "building the EST certs-only message failed");
  }
  for (const auto& der : certs) {
    const unsigned char* p = der.data();
    X509* x = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
    if (x == nullptr || PKCS7_add_certificate(p7.get(), x) != 1) {
      X509_free(x);
      throw Error(ErrorCode::kInternal, "a registry CA certificate does not parse");
    }
    X509_free(x);
  }
  unsigned char* buf = nullptr;
  const int len = i2d_PKCS7(p7.get(), &buf);
  if (len <= 0) throw Error(ErrorCode::kInternal, "encoding the EST certs-only message failed");
  engine::Der out(buf, buf + len);
  OPENSSL_free(buf);
  return out;
}

Answer est_cacerts(HttpService::Impl& impl, Request& r) {
  const std::optional<std::string> label =
      r.values.empty() ? std::nullopt : std::optional<std::string>(r.values[0]);
  std::vector<engine::Der> certs;
  std::string problem;
  impl.with_stores([&](engine::Stores& s) {
    std::vector<std::string> roots;
    const auto groups = s.list_groups();
    if (label) {
      const auto g = s.find_group(*label);
      if (!g) {
        problem = "no enrollment group '" + *label + "'";
        return;
      }
      roots = {g->primary_ca, g->secondary_ca};
    } else if (groups.size() == 1) {
      roots = {groups[0].primary_ca, groups[0].secondary_ca};
    } else {
      std::set<std::string> operator_cas;
      for (const auto& op : s.list_operators()) operator_cas.insert(op.ca_name);
      for (const auto& ca : s.list_cas()) {
        if (operator_cas.count(ca.name) == 0 && ca.revoked_at == 0) roots.push_back(ca.name);
      }
    }
    std::set<std::string> seen;
    for (const auto& name : roots) {
      if (name.empty()) continue;
      for (const auto& ca : chain_of(s, name)) {
        if (seen.insert(ca.name).second && !ca.cert_der.empty()) certs.push_back(ca.cert_der);
      }
    }
  });
  if (!problem.empty()) return error_answer(404, "not_found", problem);
  if (certs.empty()) return error_answer(404, "not_found", "no CA certificate to give");
  return {200, base64_lines(certs_only(certs))};
}

// The base64 body of an EST request (line breaks allowed) as DER; nullopt when it is not base64.
std::optional<engine::Der> decode_base64(const std::string& body) {
  std::string clean;
  for (const char c : body) {
    if (c == '\r' || c == '\n' || c == ' ' || c == '\t') continue;
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '/' && c != '=') {
      return std::nullopt;
    }
    clean += c;
  }
  if (clean.empty() || clean.size() % 4 != 0) return std::nullopt;
  engine::Der out(clean.size() / 4 * 3);
  const int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(clean.data()),
                                static_cast<int>(clean.size()));
  if (n < 0) return std::nullopt;
  std::size_t pad = 0;
  for (std::size_t i = clean.size(); i > 0 && clean[i - 1] == '='; --i) ++pad;
  if (pad > 2 || pad > static_cast<std::size_t>(n)) return std::nullopt;  // "====": no bytes
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

// The SPKI key hash of a DER CSR (empty when it does not parse; the issuance path then says why).
std::string csr_key_sha256(const engine::Der& der) {
  const unsigned char* p = der.data();
  std::unique_ptr<X509_REQ, void (*)(X509_REQ*)> req(
      d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())), X509_REQ_free);
  EVP_PKEY* key = req ? X509_REQ_get0_pubkey(req.get()) : nullptr;
  unsigned char* spki = nullptr;
  const int len = key != nullptr ? i2d_PUBKEY(key, &spki) : -1;
  if (len <= 0) return "";
  const std::string out =
      engine::key_sha256_of_spki(engine::ByteView(spki, static_cast<std::size_t>(len)));
  OPENSSL_free(spki);
  return out;
}

Answer est_enroll(HttpService::Impl& impl, Request& r, const std::optional<std::string>& label) {
  if (!r.caller.has_cert) {
    return error_answer(401, "unauthenticated",
                        "EST enrollment needs the device's current certificate (TLS client "
                        "authentication)");
  }
  const std::int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  engine::AuthDecision decision;
  std::string issuing_ca, lot, other_serial;
  bool both_slots = false;
  {
    auto slot = impl.take_auth();  // pooled, like the auth check: no rebuild under the lock
    const std::vector<engine::Der> chain = {r.caller.cert_der};
    decision = slot->auth->check(chain, now);
    impl.give_back(std::move(slot));
  }
  impl.with_stores([&](engine::Stores& s) {
    if (!decision.allowed) return;
    if (const auto g = s.find_group(decision.enrollment)) {
      issuing_ca = !g->primary_ca.empty() ? g->primary_ca : g->secondary_ca;
    }
    if (const auto cert = s.find_cert(decision.leaf_serial); cert && issuing_ca.empty()) {
      issuing_ca = cert->ca_name;
    }
    if (const auto d = s.find_device(decision.registration_id)) {
      lot = d->lot;  // the device keeps its lineage: a lot's recall still finds it
      both_slots = !d->primary_serial.empty() && !d->secondary_serial.empty();
    }
  });
  if (!decision.allowed) {
    return error_answer(
        403, "forbidden",
        "the fleet refuses this certificate (" + decision.rule + "): " + decision.reason);
  }
  if (decision.rotation_only) {
    // Pinned by an open incident: its job rotates the device (over the rotation methods); a
    // certificate made here, outside it, would pass for one of the job's replacements.
    return error_answer(
        403, "forbidden",
        "device " + decision.registration_id +
            " may not re-enroll over EST while an incident pins it: " + decision.reason);
  }
  if (label && decision.enrollment != *label) {
    return error_answer(
        403, "forbidden",
        "device " + decision.registration_id + " is not in enrollment group '" + *label + "'");
  }
  if (issuing_ca.empty()) {
    return error_answer(409, "invalid_argument",
                        "no CA of this registry issues for device " + decision.registration_id +
                            " (an individual enrollment of an outside certificate)");
  }
  const std::string type = engine::valid_utf8(r.http.getContentType());
  if (!type.starts_with("application/pkcs10")) {
    return error_answer(415, "invalid_argument",
                        "Content-Type '" + type +
                            "': EST takes application/pkcs10, a base64 PKCS#10 (RFC 7030 4.2.1)");
  }
  const auto der = decode_base64(read_body(r.http, kMaxCsrBody));
  const std::string key = der ? csr_key_sha256(*der) : std::string();
  if (key.empty()) {
    return error_answer(400, "csr_malformed",
                        "the body must be a base64-encoded PKCS#10 request (RFC 7030 4.2.1)");
  }
  const std::string cn = engine::csr_common_name(*der);
  if (cn != decision.registration_id) {
    return error_answer(400, "invalid_argument",
                        "the CSR names '" + engine::valid_utf8(cn) + "'; the certificate is " +
                            decision.registration_id + "'s");
  }
  if (key == engine::key_sha256_of_cert(r.caller.cert_der)) {
    return error_answer(422, "key_rejected",
                        "the CSR reuses the current certificate's key: make a new key pair");
  }
  const std::string id =
      sha256_hex(r.caller.cert_sha256 + "\n" + std::string(der->begin(), der->end())).substr(0, 24);
  const fs::path dir = impl.opt.data_dir / "est" / id;
  // The same request again (a client's retry) gets the certificate it got, never a second one;
  // a copy in flight waits for the first.
  static std::array<std::mutex, 16> stripes;
  std::lock_guard stripe(stripes[static_cast<unsigned char>(id[0]) % stripes.size()]);
  const fs::path answer_file = dir / "answer.b64";
  if (std::error_code ec; fs::is_regular_file(answer_file, ec)) {
    return {200, read_bounded(answer_file.string(), kChainFileLimit, "EST answer")};
  }
  fs::create_directories(dir);
  const fs::path csr_file = dir / "request.pem";
  {
    std::ofstream out(csr_file, std::ios::trunc);
    out << engine::pem(*der, "CERTIFICATE REQUEST");
    if (!out.flush())
      throw Error(ErrorCode::kIo, "EST request " + csr_file.string() + ": not written");
  }
  ApiRoute cmd = r.route;
  cmd.words = {"issue"};
  cmd.success_status = 200;
  Caller device = r.caller;
  device.op.reset();
  Request run{r.http, r.resp, cmd, {}, device};
  // Into the device's free slot: with both held, the one the device did not present is retired
  // (its certificate revoked as superseded), as a rollover's retire step does.
  if (both_slots) {
    engine::SlotChange retire;
    retire.kind = engine::SlotChange::Kind::kRetireDevice;
    retire.device_id = decision.registration_id;
    retire.serial = decision.leaf_serial;
    impl.with_stores([&](engine::Stores& s) { s.save_job_tasks({}, {&retire, 1}); });
  }
  std::vector<std::string> args = {"--csr=" + csr_file.string(), "--ca=" + issuing_ca, "--reissue",
                                   "--out=" + (dir / "out").string()};
  if (!lot.empty()) args.push_back("--lot=" + lot);
  const Answer a = run_command(impl, run, args);
  if (a.status != 200) return a;
  const auto result = Poco::JSON::Parser().parse(a.body).extract<Poco::JSON::Object::Ptr>();
  const auto certs = engine::read_certificates(result->getValue<std::string>("cert"), "EST result");
  const std::string answer = base64_lines(certs_only({certs.front()}));
  write_file_atomic(answer_file, answer, 0600);
  return {200, answer};
}

}  // namespace

void answer_est(HttpService::Impl& impl, Request& r) {
  const std::string& path = r.route.path;
  const bool labelled = path.find("{label}") != std::string::npos;
  const std::optional<std::string> label =
      labelled ? std::optional<std::string>(r.values[0]) : std::nullopt;
  const std::string op = path.substr(path.rfind('/') + 1);
  if (op == "csrattrs") {
    // RFC 7030 4.5.2: a server that asks for no particular attributes answers 204. A label must
    // still name an enrollment group.
    const bool known = !label || impl.with_stores([&](engine::Stores& s) {
      return s.find_group(*label).has_value();
    });
    if (!known) {
      send_json(r.resp, 404,
                error_answer(404, "not_found", "no enrollment group '" + *label + "'").body);
      return;
    }
    r.resp.setStatusAndReason(Poco::Net::HTTPResponse::HTTP_NO_CONTENT);
    r.resp.setContentLength(0);
    r.resp.send();
    return;
  }
  const Answer a = op == "cacerts" ? est_cacerts(impl, r) : est_enroll(impl, r, label);
  if (a.status != 200) {
    send_json(r.resp, a.status, a.body);
    return;
  }
  r.resp.set("Content-Transfer-Encoding", "base64");
  send_bytes(r.resp, 200, "application/pkcs7-mime; smime-type=certs-only", a.body);
}

}  // namespace fleetsign::cli
