// One device certificate from one CSR: a one-item batch through BatchRunner, so it takes the same
// checked steps as every batch (check → prepare → record intent → lint + sign + verify → record
// certificate → output) and the same recovery: an output failure leaves the certificate recorded
// and the batch unfinished, and the same request again re-emits it instead of signing anew.
#pragma once

#include <string>
#include <vector>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/result.hpp"

namespace fleetsign::engine {

struct SingleIssueRequest {
  std::string ca_name;
  Der csr_der;
  Lineage lineage;
  bool reissue = false;  // allow a device that already holds a valid certificate
  std::string group;     // policy group whose device validity applies (empty: the default)
  // Where {id}_cert.pem and {id}_fullchain.pem go; empty: nothing is written (the certificate
  // comes back in the result only).
  std::string out_dir;
  std::string source;  // names the CSR in the batch's parameters (e.g. its file)
};

struct SingleIssueResult {
  SignedCert cert;
  std::vector<Der> chain;          // issuing CA first, root last
  std::vector<std::string> files;  // written: cert, fullchain (with out_dir)
  std::string batch_id;            // the one-item batch
  bool reemitted = false;          // recorded by an earlier, interrupted run of the same request
  bool extensions_ignored = false;
  bool clamped = false;
};

// Per-item failures (bad CSR, policy, already issued) come back as values; environment failures
// (token, registry, output I/O) throw. The certificate is recorded before any file is written.
// With out_dir, the batch ID is derived from the CA and the CSR ("single-<hash>-<n>"), so the
// same request after an interrupted run resumes that run (never a second serial for it).
Result<SingleIssueResult> issue_single(Stores& registry, CaService& cas,
                                       const policy::Policy& policy, const Clock& clock,
                                       RandomSource& random, const SingleIssueRequest& request);

}  // namespace fleetsign::engine
