// One device certificate from one CSR, through every issuance step in order, with the registry:
// check → prepare → record intent → sign + verify → record certificate. The batch pipeline runs
// the same steps (Issuer) in chunks; this is the one-device path (`issue --csr`).
#pragma once

#include <string>
#include <vector>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/result.hpp"

namespace fleetsign::engine {

struct SingleIssueRequest {
  std::string ca_name;
  Der csr_der;
  Lineage lineage;
  bool reissue = false;  // allow a device that already holds a valid certificate
  std::string group;     // policy group whose device validity applies (empty: the default)
};

struct SingleIssueResult {
  SignedCert cert;
  std::vector<Der> chain;  // issuing CA first, root last
  bool extensions_ignored = false;
  bool clamped = false;
};

// Per-item failures (bad CSR, policy, already issued) come back as values; environment failures
// (token, registry) throw. The certificate is recorded before this returns.
Result<SingleIssueResult> issue_single(Registry& registry, CaService& cas,
                                       const policy::Policy& policy, const Clock& clock,
                                       RandomSource& random, const SingleIssueRequest& request);

// The PEM files a device gets: {id}_cert.pem and {id}_fullchain.pem (device, issuers, root).
// Written atomically (temporary file + rename), mode 0644. Returns the paths written.
std::vector<std::string> write_device_files(const std::string& out_dir, const SignedCert& cert,
                                            const std::vector<Der>& chain);

}  // namespace fleetsign::engine
