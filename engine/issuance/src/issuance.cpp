#include "fleetsign/engine/issuance.hpp"

#include <filesystem>

#include "fleetsign/engine/batch.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

// The first unfinished one-item batch of this CA and CSR, else the first free ID: a request
// interrupted after its certificate was recorded resumes, a finished one is never reopened.
std::string single_batch_id(Stores& registry, const SingleIssueRequest& request) {
  Der key(request.ca_name.begin(), request.ca_name.end());
  key.push_back(0);
  key.insert(key.end(), request.csr_der.begin(), request.csr_der.end());
  const std::string base = "single-" + thumbprint_sha256(key).substr(0, 16) + "-";
  for (int n = 1;; ++n) {
    const std::string id = base + std::to_string(n);
    auto existing = registry.find_batch(id);
    if (!existing || existing->state != "finished") return id;
  }
}

}  // namespace

Result<SingleIssueResult> issue_single(Stores& registry, CaService& cas,
                                       const policy::Policy& policy, const Clock& clock,
                                       RandomSource& random, const SingleIssueRequest& request) {
  // 1. A one-item batch: the same steps, checks and recovery as any batch.
  BatchOptions o;
  o.ca_name = request.ca_name;
  o.group = request.group;
  o.lineage = request.lineage;
  o.reissue = request.reissue;
  o.input.kind = BatchInput::Kind::kCsrDer;
  o.input.der = request.csr_der;
  o.input.path = request.source;
  o.out_dir = request.out_dir;
  o.delivery = request.out_dir.empty() ? Delivery::kReturned : Delivery::kDeviceFiles;
  o.threads = 1;
  o.chunk_size = 1;
  if (!request.out_dir.empty()) o.batch_id = single_batch_id(registry, request);
  BatchRunner runner(registry, cas, policy, clock, random);
  BatchSummary s = runner.run(o, nullptr);
  // 2. A reject is this request's failure; the certificate otherwise.
  if (s.first_reject != ErrorCode::kOk) return fail(s.first_reject, s.first_reject_reason);
  if (s.delivered.empty()) {
    // Killed after its files were written and the watermark moved, before the batch finished:
    // the run had nothing left to do. The recorded certificate is the answer.
    auto recorded = registry.batch_issued_after(s.batch_id, -1);
    if (recorded.size() == 1) {
      CertRecord& r = recorded.front();
      s.delivered.push_back(SignedCert{r.device_id, r.serial, std::move(r.der), r.sha1, r.sha256,
                                       r.not_before, r.not_after});
      s.reemitted = 1;
    }
  }
  if (s.delivered.size() != 1) {
    throw Error(ErrorCode::kInternal, "batch " + s.batch_id + " delivered " +
                                          std::to_string(s.delivered.size()) +
                                          " certificates for one CSR");
  }
  SingleIssueResult result;
  result.cert = std::move(s.delivered.front());
  result.batch_id = s.batch_id;
  result.reemitted = s.reemitted > 0;
  result.extensions_ignored = s.extensions_ignored;
  result.clamped = s.clamped;
  for (const auto& c : cas.chain(request.ca_name)) {
    result.chain.push_back(c.cert_der);
  }
  if (!request.out_dir.empty()) {
    const std::filesystem::path dir = std::filesystem::absolute(request.out_dir);
    result.files = {(dir / (result.cert.device_id + "_cert.pem")).string(),
                    (dir / (result.cert.device_id + "_fullchain.pem")).string()};
  }
  return result;
}

}  // namespace fleetsign::engine
