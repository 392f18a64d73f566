// Issuance for jobs (rollovers): CSRs that devices made for a job, signed through the one core —
// check_csr (the CSR's CN must be the task's device) → prepare → intents recorded (batch_id = the
// job's ID, seq = the task's seq) → token sign of the chunk, verified → certificates recorded.
// Checks and signatures run in parallel (oneTBB) across sub-chunks; the registry sees one
// transaction for the chunk's intents and one for its certificates.
//
// Exactly once: a job never holds two certificates for one device. After a crash, recover()
// gives the certificates the job already issued (to be installed, not signed again) and abandons
// the intents that never became certificates (their serials are never reused).
//
// Per-device failures (a bad CSR, a CN that is not the device) are values; token and registry
// failures throw. Not thread-safe: one JobIssuer per runner thread.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/result.hpp"

namespace fleetsign::engine {

struct JobCsr {
  std::string device_id;  // the task's device (checked against the policy when the job was made)
  std::int64_t seq = 0;   // the task's seq in the job
  Der csr_der;
  // Lineage of the new certificate: the replaced one's lot, line and site (a later revocation or
  // incident by site or line finds the device again); its operator is the job.
  Lineage lineage;
  Der replaced_cert;  // the certificate it replaces: a CSR with that certificate's key is refused
};

class JobIssuer final {
 public:
  JobIssuer(Stores& stores, std::string job_id) : m_stores(stores), m_job_id(std::move(job_id)) {}

  // One chunk, all signed by `issuer`. Element i answers csrs[i]: the signed certificate
  // (recorded) or why not (kCsrMalformed, kKeyRejected, kCsrSignatureInvalid, kDeviceIdInvalid,
  // kInvalidArgument: the CSR names another device; kKeyRejected also when it reuses the key of
  // the certificate it replaces). A token that fails to sign, or signs what does not verify
  // (kSignFailed from Issuer::sign), is Error(kTokenError) once the chunk's signed certificates
  // are recorded; its other intents stay open for recover(). A transient token error has been
  // retried by then (hsm::SigningKey::sign_digest).
  std::vector<Result<SignedCert>> issue(const Issuer& issuer, std::span<const JobCsr> csrs);

  // The certificates this job issued, by device (the newest when there are several), after the
  // job's open intents are abandoned. Call once, before issuing, when a job resumes.
  std::unordered_map<std::string, CertRecord> recover();
  // The same certificates, with the intents left alone (recover's second half). A runner of a
  // shared job reads a claimed device's certificate on its own instead (certs_of_device): the
  // claim already abandoned that task's open intents (JobStore::claim_job_tasks).
  std::unordered_map<std::string, CertRecord> issued();

 private:
  Stores& m_stores;
  std::string m_job_id;
};

}  // namespace fleetsign::engine
