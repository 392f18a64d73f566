#include "fleetsign/engine/issuance.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

Result<SingleIssueResult> issue_single(Registry& registry, CaService& cas,
                                       const policy::Policy& policy, const Clock& clock,
                                       RandomSource& random, const SingleIssueRequest& request) {
  const CaRecord ca = cas.get(request.ca_name);
  // 1. Check the CSR (signature, key policy, device ID); extensions are never copied.
  auto checked = check_csr(request.csr_der, policy);
  if (!checked) {
    return checked.error();
  }
  if (!request.reissue) {
    const std::string id = checked->device_id;
    if (!registry.devices_with_valid_cert(std::span<const std::string>(&id, 1), clock.now())
             .empty()) {
      return fail(
          ErrorCode::kAlreadyIssued,
          "device '" + id + "' already holds a valid certificate (use --reissue to issue another)");
    }
  }
  // 2. Policy decides every extension; serial from the CSPRNG; TBS built.
  const hsm::SigningKey& key = cas.load_key(ca);
  Issuer issuer(ca, key, policy, policy::device_days_for(policy, request.group), clock, random);
  auto prepared = issuer.prepare(*checked);
  if (!prepared) {
    return prepared.error();
  }
  // 3. Record the intent before the token signs: the serial is spent from here on.
  CertIntent intent;
  intent.serial = prepared->serial();
  intent.device_id = prepared->device_id();
  intent.ca_name = ca.name;
  intent.subject = prepared->subject();
  intent.not_before = prepared->not_before();
  intent.not_after = prepared->not_after();
  intent.tbs_der = prepared->tbs();
  intent.lineage = request.lineage;
  registry.record_intents(std::span<const CertIntent>(&intent, 1));
  // 4. Sign in the token and verify the signature.
  auto signed_cert = issuer.sign(std::move(*prepared));
  if (!signed_cert) {
    return signed_cert.error();  // the intent stays; `abandon` marks it, the serial is never reused
  }
  // 5. Record the certificate; only then may it leave the process.
  IssuedCert issued{signed_cert->serial, signed_cert->der, signed_cert->sha1, signed_cert->sha256};
  registry.record_issued(std::span<const IssuedCert>(&issued, 1));
  registry.audit(
      "cert.issue", signed_cert->device_id,
      "{\"serial\":" + json_quote(signed_cert->serial) + ",\"ca\":" + json_quote(ca.name) + "}");
  SingleIssueResult result;
  result.extensions_ignored = checked->extensions_ignored;
  result.clamped = issuer.clamped();
  result.cert = std::move(*signed_cert);
  for (const auto& c : cas.chain(ca.name)) {
    result.chain.push_back(c.cert_der);
  }
  return result;
}

namespace {

void write_atomic(const std::filesystem::path& path, const std::string& text, mode_t mode) {
  const std::string tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) {
    throw Error(ErrorCode::kIo, tmp + ": cannot be created");
  }
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    throw Error(ErrorCode::kIo, path.string() + ": cannot be written");
  }
}

}  // namespace

std::vector<std::string> write_device_files(const std::string& out_dir, const SignedCert& cert,
                                            const std::vector<Der>& chain) {
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  const std::filesystem::path dir(out_dir);
  std::string leaf = pem(cert.der, "CERTIFICATE");
  std::string full = leaf;
  for (const auto& c : chain) {
    append_pem(full, c, "CERTIFICATE");
  }
  const auto cert_path = dir / (cert.device_id + "_cert.pem");
  const auto chain_path = dir / (cert.device_id + "_fullchain.pem");
  write_atomic(cert_path, leaf, 0644);
  write_atomic(chain_path, full, 0644);
  return {cert_path.string(), chain_path.string()};
}

}  // namespace fleetsign::engine
