// fuzz_csr: CSR bundles as batch issuance reads them (parse_csr_text: PEM blocks, or one DER CSR)
// and check_csr on each: the strict DER walk, the key rules of the policy, the self-signature and
// the device-ID check. The policy is one of three, by input size, so every input is checked
// against one fixed rule set.
//
// Invariants beyond "no crash, no leak, no UB": a CSR check_csr accepts
//   - is a CSR that OpenSSL parses (d2i_X509_REQ, nothing trailing) and whose signature OpenSSL
//     verifies (X509_REQ_verify): the fast path never accepts what the reference refuses;
//   - carries a device ID that passes the policy's device-ID rule and the 64-character CN bound;
//   - has the key that describe_spki reads from its SPKI.
// Errors are values here (Result): an exception out of check_csr is a bug.
#include <openssl/err.h>
#include <openssl/x509.h>

#include <cstdint>
#include <memory>

#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/policy/policy.hpp"
#include "fuzz_input.hpp"

namespace {

using namespace fleetsign;

struct Policies {
  policy::Policy all;       // the defaults: EC P-256/P-384, RSA 2048..4096
  policy::Policy narrow;    // P-384 only, IDs up to 16 characters with '.', '_' and ':'
  policy::Policy rsa_only;  // RSA 3072 only
  Policies() {
    narrow.device_keys = {policy::KeyAlgorithm::kEcP384};
    narrow.device_id = {"._:", 16};
    rsa_only.device_keys = {policy::KeyAlgorithm::kRsa3072};
  }
  const policy::Policy& pick(std::size_t size) const {
    return size % 3 == 0 ? all : size % 3 == 1 ? narrow : rsa_only;
  }
};

void check_accepted(const engine::CheckedCsr& csr, engine::ByteView der,
                    const policy::Policy& policy) {
  const unsigned char* p = der.data();
  std::unique_ptr<X509_REQ, decltype(&X509_REQ_free)> req(
      d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())), &X509_REQ_free);
  if (!req || p != der.data() + der.size()) {
    fuzz::violated("check_csr accepted a CSR that OpenSSL does not parse");
  }
  EVP_PKEY* key = X509_REQ_get0_pubkey(req.get());
  if (key == nullptr || X509_REQ_verify(req.get(), key) != 1) {
    fuzz::violated("check_csr accepted a CSR whose signature OpenSSL does not verify");
  }
  ERR_clear_error();
  if (policy::check_device_id(policy.device_id, csr.device_id.str()) ||
      csr.device_id.str().size() > engine::kMaxCommonNameLength) {
    fuzz::violated("check_csr accepted a device ID the policy refuses");
  }
  const auto described = engine::describe_spki(csr.spki);
  if (described.kind != csr.key.kind || described.bits != csr.key.bits ||
      described.curve != csr.key.curve) {
    fuzz::violated("describe_spki disagrees with check_csr about the key");
  }
  if (engine::csr_common_name(der) != csr.device_id.str()) {
    fuzz::violated("csr_common_name disagrees with check_csr about the CN");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const Policies policies;
  if (size > kCsrFileLimit) return 0;  // read_bounded refuses larger files before parsing
  const policy::Policy& policy = policies.pick(size);
  for (const auto& blob : engine::parse_csr_text(fuzz::as_text({data, size}))) {
    if (!blob.problem.empty()) continue;
    (void)engine::csr_common_name(blob.der);
    auto checked = engine::check_csr(blob.der, policy);
    if (checked) check_accepted(*checked, blob.der, policy);
  }
  ERR_clear_error();
  return 0;
}
