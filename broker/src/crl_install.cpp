#include "fleetsign/broker/crl_install.hpp"

#include <map>
#include <vector>

#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/crl_check.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::broker {

namespace fs = std::filesystem;

namespace {

// A CRL of 10^6 entries is about 50 MB of PEM.
constexpr std::size_t kCrlFileLimit = std::size_t{256} * 1024 * 1024;

// The CRLs of the installed file by issuer; empty when there is none or it does not read.
std::map<std::string, std::vector<engine::Der>> installed_crls(const fs::path& file) {
  std::map<std::string, std::vector<engine::Der>> out;
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return out;
  try {
    for (engine::Der& der :
         engine::crls_from_pem(read_bounded(file.string(), kCrlFileLimit, "installed CRL file"))) {
      const engine::CrlInfo info = engine::read_crl(der);
      out[info.issuer].push_back(std::move(der));
    }
  } catch (const Error&) {
    out.clear();  // a damaged file is replaced, not trusted for numbering
  }
  return out;
}

// The highest number among the installed CRLs of `issuer` that the CA really signed: a CRL
// someone wrote into the file by hand (a forged number 999999) counts for nothing and is replaced.
std::int64_t installed_number(const std::map<std::string, std::vector<engine::Der>>& installed,
                              const std::string& issuer, const engine::CaRecord& ca) {
  std::int64_t n = -1;
  const auto it = installed.find(issuer);
  if (it == installed.end()) return n;
  for (const engine::Der& der : it->second) {
    if (engine::crl_signed_by(der, ca.cert_der)) n = std::max(n, engine::read_crl(der).number);
  }
  return n;
}

}  // namespace

CrlInstall install_crl_bundle(const BrokerHome& home, const std::vector<CrlCandidate>& crls,
                              bool complete, const std::string& off_reason, std::int64_t now) {
  const fs::path file = home.dir() / "crl.pem";
  const auto installed = installed_crls(file);
  std::string pem;
  for (const CrlCandidate& c : crls) {
    const std::string what = "the CRL of CA '" + c.ca.name + "'";
    const engine::CrlInfo info = engine::check_crl(c.der, c.ca.cert_der, now, what);
    const std::int64_t installed_n = installed_number(installed, info.issuer, c.ca);
    if (info.number < installed_n) {
      throw Error(ErrorCode::kCrlInvalid, what + ": number " + std::to_string(info.number) +
                                              " is lower than the installed " +
                                              std::to_string(installed_n));
    }
    engine::append_pem(pem, c.der, "X509 CRL");
  }
  CrlInstall out;
  std::error_code ec;
  if (!complete || crls.empty()) {
    out.off_reason = crls.empty() && off_reason.empty() ? "no CRL" : off_reason;
    out.changed = fs::remove(file, ec);
    return out;
  }
  std::string before;
  if (fs::is_regular_file(file, ec)) {
    try {
      before = read_bounded(file.string(), kCrlFileLimit, "installed CRL file");
    } catch (const Error&) {
    }
  }
  out.enabled = true;
  out.crls = crls.size();
  out.changed = before != pem;
  if (out.changed) write_file_atomic(file, pem, 0644);
  return out;
}

CrlInstall install_registry_crls(const BrokerHome& home, engine::Stores& stores, std::int64_t now) {
  std::vector<CrlCandidate> crls;
  std::string off;
  for (const engine::CaRecord& ca : stores.list_cas()) {
    if (ca.key_uri.empty()) {
      off = "CA '" + ca.name + "' is external: fleetsign cannot sign its CRL";
      continue;
    }
    auto latest = stores.latest_crl(ca.name);
    if (!latest) {
      if (off.empty()) off = "CA '" + ca.name + "' has no CRL yet (fleetsign crl sign)";
      continue;
    }
    crls.push_back({ca, std::move(latest->der)});
  }
  for (const engine::IndividualEnrollment& ie : stores.list_individuals()) {
    for (const auto* cert : {&ie.primary_cert, &ie.secondary_cert}) {
      if (cert->empty() || !off.empty()) continue;
      const engine::CertSummary s = engine::summarize_certificate(*cert);
      if (s.subject == s.issuer) {
        off = "device '" + ie.registration_id +
              "' has a self-signed certificate: no CRL can cover it";
      }
    }
  }
  return install_crl_bundle(home, crls, off.empty(), off, now);
}

fs::path crl_loaded_path(const BrokerHome& home) { return home.crl_path().string() + ".loaded"; }

std::string installed_crl_marker(const BrokerHome& home) {
  std::error_code ec;
  const std::string conf =
      read_bounded(home.config_path().string(), kConfigFileLimit, "broker configuration");
  if (conf.find("\ncrlfile ") == std::string::npos || !fs::is_regular_file(home.crl_path(), ec)) {
    return std::string(kNoCrlFile);
  }
  const std::string bytes = read_bounded(home.crl_path().string(), kCrlFileLimit, "CRL file");
  return engine::thumbprint_sha256(
      engine::ByteView(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
}

std::string read_crl_marker(const BrokerHome& home) {
  std::error_code ec;
  if (!fs::is_regular_file(crl_loaded_path(home), ec)) return {};
  return read_bounded(crl_loaded_path(home).string(), 128, "CRL marker");
}

void write_crl_marker(const BrokerHome& home, const std::string& marker) {
  write_file_atomic(crl_loaded_path(home), marker, 0644);
}

}  // namespace fleetsign::broker
