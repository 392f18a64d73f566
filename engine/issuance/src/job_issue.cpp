#include "fleetsign/engine/job_issue.hpp"

#include <tbb/parallel_for.h>

#include <optional>

#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

constexpr std::size_t kSubChunk = 32;  // CSRs per parallel task: a token round trip amortised

struct Item {
  std::string key_sha256;  // the CSR's key (SPKI SHA-256), once checked
  std::optional<PreparedCert> prepared;
  std::optional<Failure> failure;
  std::optional<Result<SignedCert>> signed_cert;
};

void check_and_prepare(const Issuer& issuer, const JobCsr& csr, Item& slot) {
  auto checked = check_csr(csr.csr_der, issuer.policy());
  if (!checked) {
    slot.failure = checked.error();
    return;
  }
  if (checked.value().device_id.str() != csr.device_id) {
    slot.failure = Failure{ErrorCode::kInvalidArgument, "the CSR names device '" +
                                                            checked.value().device_id.str() +
                                                            "', not '" + csr.device_id + "'"};
    return;
  }
  // The blocklist first (prepare): a reused key that is also compromised is reported as blocked.
  auto prepared = issuer.prepare(checked.value());
  if (!prepared) {
    slot.failure = prepared.error();
    return;
  }
  // By key identity, not bytes: the replaced key sent with its EC point compressed is the same key.
  slot.key_sha256 = key_sha256_of_spki(checked.value().spki);
  if (!csr.replaced_cert.empty() && slot.key_sha256 == key_sha256_of_cert(csr.replaced_cert)) {
    slot.failure = Failure{ErrorCode::kKeyRejected,
                           "the CSR reuses the key of the certificate it replaces: a rollover "
                           "needs a new key"};
    return;
  }
  slot.prepared.emplace(std::move(prepared.value()));
}

}  // namespace

std::vector<Result<SignedCert>> JobIssuer::issue(const Issuer& issuer,
                                                 std::span<const JobCsr> csrs) {
  std::vector<Item> slots(csrs.size());
  const std::size_t chunks = (csrs.size() + kSubChunk - 1) / kSubChunk;
  tbb::parallel_for(std::size_t{0}, chunks, [&](std::size_t c) {
    const std::size_t end = std::min(csrs.size(), (c + 1) * kSubChunk);
    for (std::size_t i = c * kSubChunk; i < end; ++i) check_and_prepare(issuer, csrs[i], slots[i]);
  });

  // Nor any key the device was certified for before (A → B → A): a rollover needs a key that no
  // certificate of the device ever held. Its own certificate from this job (signed before a
  // crash, the same CSR answered again) is not a reuse.
  for (std::size_t i = 0; i < csrs.size(); ++i) {
    if (!slots[i].prepared) continue;
    CertQuery q;
    q.device_id = csrs[i].device_id;
    for (const auto& c : m_stores.select_certs(q)) {
      if (c.key_sha256 != slots[i].key_sha256 || c.batch_id == m_job_id) continue;
      slots[i].prepared.reset();
      slots[i].failure = Failure{ErrorCode::kKeyRejected,
                                 "the CSR reuses the key of certificate 0x" + c.serial +
                                     ", which the device held before (" +
                                     (c.state == CertState::kRevoked ? "revoked" : "issued") +
                                     "): a rollover needs a new key"};
      break;
    }
  }

  std::vector<CertIntent> intents;
  intents.reserve(csrs.size());
  for (std::size_t i = 0; i < csrs.size(); ++i) {
    if (!slots[i].prepared) continue;
    const PreparedCert& p = *slots[i].prepared;
    CertIntent intent;
    intent.serial = p.serial();
    intent.device_id = p.device_id();
    intent.ca_name = issuer.ca_name();
    intent.batch_id = m_job_id;
    intent.seq = csrs[i].seq;
    intent.subject = p.subject();
    intent.not_before = p.not_before();
    intent.not_after = p.not_after();
    intent.tbs_der = p.tbs();
    intent.lineage = csrs[i].lineage;
    intent.lineage.operator_name = "job " + m_job_id;
    intents.push_back(std::move(intent));
  }
  if (!intents.empty()) m_stores.record_intents(intents);  // committed before the token signs

  tbb::parallel_for(std::size_t{0}, chunks, [&](std::size_t c) {
    const std::size_t end = std::min(csrs.size(), (c + 1) * kSubChunk);
    std::vector<PreparedCert> batch;
    std::vector<std::size_t> index;
    for (std::size_t i = c * kSubChunk; i < end; ++i) {
      if (!slots[i].prepared) continue;
      batch.push_back(std::move(*slots[i].prepared));
      slots[i].prepared.reset();
      index.push_back(i);
    }
    if (batch.empty()) return;
    auto results = issuer.sign(std::move(batch));
    for (std::size_t k = 0; k < results.size(); ++k) {
      slots[index[k]].signed_cert.emplace(std::move(results[k]));
    }
  });

  std::vector<IssuedCert> issued;
  issued.reserve(intents.size());
  for (auto& slot : slots) {
    if (slot.signed_cert && slot.signed_cert->has_value()) {
      const SignedCert& c = slot.signed_cert->value();
      issued.push_back(IssuedCert{c.serial, c.der, c.sha1, c.sha256, c.key_sha256});
    }
  }
  if (!issued.empty()) m_stores.record_issued(issued);  // before any certificate leaves
  // kSignFailed is the token's failure (or the lint's), never the device's: the chunk stops
  // here, its signed certificates recorded above, the rest left as intents for recover().
  for (const auto& slot : slots) {
    if (slot.signed_cert && !slot.signed_cert->has_value() &&
        slot.signed_cert->error().code == ErrorCode::kSignFailed) {
      throw Error(
          ErrorCode::kTokenError,
          "job " + m_job_id + ": " + slot.signed_cert->error().message + " (" +
              std::to_string(issued.size()) +
              " certificates of this chunk were signed and recorded; once the token signs again, "
              "`fleetsign job resume " +
              m_job_id + "` continues the job)");
    }
  }

  std::vector<Result<SignedCert>> out;
  out.reserve(csrs.size());
  for (auto& slot : slots) {
    if (slot.failure) {
      out.emplace_back(std::move(*slot.failure));
    } else {
      out.emplace_back(std::move(*slot.signed_cert));
    }
  }
  return out;
}

std::unordered_map<std::string, CertRecord> JobIssuer::recover() {
  m_stores.abandon_intents(m_job_id);
  return issued();
}

std::unordered_map<std::string, CertRecord> JobIssuer::issued() {
  std::unordered_map<std::string, CertRecord> out;
  for (auto& cert : m_stores.batch_issued_after(m_job_id, -1)) {
    auto [it, fresh] = out.try_emplace(cert.device_id, cert);
    if (!fresh && cert.created_at >= it->second.created_at) it->second = std::move(cert);
  }
  return out;
}

}  // namespace fleetsign::engine
