// The one error vocabulary of fleetsign: an append-only ErrorCode that appears in --json output,
// the journal and exit codes, and the Error exception for environment failures.
//
// Three tiers (see shared/style.md): a bug is an assert; a per-item outcome (bad CSR, rejected by
// policy) is a value carrying an ErrorCode; an environment failure (token gone, wrong PIN,
// registry unwritable) is a thrown Error. This header is dependency-free so that every library
// (policy included) can use it.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace fleetsign {

// Append-only: a code is never renumbered or reused. Names appear in JSON as snake_case strings.
enum class ErrorCode : int {
  kOk = 0,
  kInternal = 1,
  kUsage = 2,
  kIo = 3,
  // token / PKCS#11
  kModuleNotFound = 10,
  kTokenNotFound = 11,
  kPinIncorrect = 12,
  kPinMissing = 13,
  kKeyNotFound = 14,
  kMechanismUnsupported = 15,
  kKeyNotProtected = 16,
  kKeyCertMismatch = 17,
  kTokenError = 18,
  kPinLocked = 19,
  kTokenCorrupt = 20,  // the token's files are damaged (and could not be restored)
  // registry
  kRegistryError = 30,
  kRegistryBusy = 31,
  kNotFound = 32,
  kAlreadyExists = 33,
  kSchemaTooNew = 34,
  kHomeBusy = 35,         // another fleetsign process holds the home (or the batch)
  kRegistryMissing = 36,  // the registry is missing or empty while the token holds CA keys
  // policy and administrative input
  kPolicyInvalid = 40,
  kInvalidSubject = 41,
  kValidityBeyondIssuer = 42,
  kInvalidArgument = 43,
  kInputTooLarge = 44,   // a bounded read hit its limit (the message names input and limit)
  kCaConstraint = 45,    // a CA that its own chain forbids (pathLen, name constraints)
  kOutputDirInUse = 46,  // --out is a non-empty directory that is not this batch's own
  // per-item outcomes of issuance
  kCsrMalformed = 60,
  kCsrSignatureInvalid = 61,
  kDeviceIdInvalid = 62,
  kDuplicateInBatch = 63,
  kAlreadyIssued = 64,
  kKeyRejected = 65,
  kSignFailed = 66,
  kVerificationCodeMismatch = 67,
  kVerificationSignatureInvalid = 68,
  kCertificateMalformed = 69,
  // The fleet plane (80–89).
  kBrokerFailed = 80,  // mosquitto would not start, stop or reload (the message quotes its log)
  kCrlInvalid = 81,    // a CRL that does not parse, verify, match its CA, or is stale/older
  // direct methods (the trigger layer, `fleetsign method invoke`)
  kDeviceOffline = 70,       // the device was not online within the connect timeout (404)
  kDeviceTimeout = 71,       // no answer within the response timeout (504)
  kMethodFailed = 72,        // the device or the service answered with another non-2xx status
  kServiceUnavailable = 73,  // the broker or IoT Hub cannot be reached, or broke the protocol
  // Revocation (90–99).
  kKeyBlocked = 90,  // a CSR's public key is on the compromised-key blocklist (per item)
};

// Stable snake_case name, e.g. "csr_signature_invalid"; and the process exit status for a
// failure of this code (0 only for kOk). Defined at the end of this header.
std::string_view error_code_name(ErrorCode code) noexcept;
int exit_status_for(ErrorCode code) noexcept;

// An environment failure. The message names the input and the cause; callers add context with
// `with_context` as the error crosses a layer ("recording serial 0x…: database is locked").
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), m_code(code) {}
  ErrorCode code() const noexcept { return m_code; }
  Error with_context(std::string_view context) const {
    return Error(m_code, std::string(context) + ": " + what());
  }

 private:
  ErrorCode m_code;
};

}  // namespace fleetsign

namespace fleetsign {

inline std::string_view error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kOk:
      return "ok";
    case ErrorCode::kInternal:
      return "internal";
    case ErrorCode::kUsage:
      return "usage";
    case ErrorCode::kIo:
      return "io";
    case ErrorCode::kModuleNotFound:
      return "module_not_found";
    case ErrorCode::kTokenNotFound:
      return "token_not_found";
    case ErrorCode::kPinIncorrect:
      return "pin_incorrect";
    case ErrorCode::kPinMissing:
      return "pin_missing";
    case ErrorCode::kKeyNotFound:
      return "key_not_found";
    case ErrorCode::kMechanismUnsupported:
      return "mechanism_unsupported";
    case ErrorCode::kKeyNotProtected:
      return "key_not_protected";
    case ErrorCode::kKeyCertMismatch:
      return "key_cert_mismatch";
    case ErrorCode::kTokenError:
      return "token_error";
    case ErrorCode::kPinLocked:
      return "pin_locked";
    case ErrorCode::kTokenCorrupt:
      return "token_corrupt";
    case ErrorCode::kRegistryError:
      return "registry_error";
    case ErrorCode::kRegistryBusy:
      return "registry_busy";
    case ErrorCode::kNotFound:
      return "not_found";
    case ErrorCode::kAlreadyExists:
      return "already_exists";
    case ErrorCode::kSchemaTooNew:
      return "schema_too_new";
    case ErrorCode::kHomeBusy:
      return "home_busy";
    case ErrorCode::kRegistryMissing:
      return "registry_missing";
    case ErrorCode::kPolicyInvalid:
      return "policy_invalid";
    case ErrorCode::kInvalidSubject:
      return "invalid_subject";
    case ErrorCode::kValidityBeyondIssuer:
      return "validity_beyond_issuer";
    case ErrorCode::kInvalidArgument:
      return "invalid_argument";
    case ErrorCode::kInputTooLarge:
      return "input_too_large";
    case ErrorCode::kCaConstraint:
      return "ca_constraint";
    case ErrorCode::kOutputDirInUse:
      return "output_dir_in_use";
    case ErrorCode::kCsrMalformed:
      return "csr_malformed";
    case ErrorCode::kCsrSignatureInvalid:
      return "csr_signature_invalid";
    case ErrorCode::kDeviceIdInvalid:
      return "device_id_invalid";
    case ErrorCode::kDuplicateInBatch:
      return "duplicate_in_batch";
    case ErrorCode::kAlreadyIssued:
      return "already_issued";
    case ErrorCode::kKeyRejected:
      return "key_rejected";
    case ErrorCode::kSignFailed:
      return "sign_failed";
    case ErrorCode::kVerificationCodeMismatch:
      return "verification_code_mismatch";
    case ErrorCode::kVerificationSignatureInvalid:
      return "verification_signature_invalid";
    case ErrorCode::kBrokerFailed:
      return "broker_failed";
    case ErrorCode::kCertificateMalformed:
      return "certificate_malformed";
    case ErrorCode::kCrlInvalid:
      return "crl_invalid";
    case ErrorCode::kDeviceOffline:
      return "device_offline";
    case ErrorCode::kDeviceTimeout:
      return "device_timeout";
    case ErrorCode::kMethodFailed:
      return "method_failed";
    case ErrorCode::kServiceUnavailable:
      return "service_unavailable";
    case ErrorCode::kKeyBlocked:
      return "key_blocked";
  }
  return "unknown";
}

// Exit statuses (documented in README): 0 ok, 1 internal, 2 usage/invalid input, 3 completed
// with rejects (set by the batch command, not here), 4 token, 5 registry, 6 policy, 7 refused
// (a verification or per-item check failed), 8 I/O, and for direct methods: 9 device offline
// (404), 10 device timeout (504), 11 another non-2xx method status, 12 broker or hub unavailable.
inline int exit_status_for(ErrorCode code) noexcept {
  const int v = static_cast<int>(code);
  if (code == ErrorCode::kOk) return 0;
  if (code == ErrorCode::kUsage || code == ErrorCode::kInvalidArgument ||
      code == ErrorCode::kInvalidSubject || code == ErrorCode::kNotFound ||
      code == ErrorCode::kAlreadyExists || code == ErrorCode::kValidityBeyondIssuer ||
      code == ErrorCode::kInputTooLarge || code == ErrorCode::kCaConstraint ||
      code == ErrorCode::kOutputDirInUse) {
    return 2;
  }
  if (code == ErrorCode::kIo) return 8;
  if (code == ErrorCode::kDeviceOffline) return 9;
  if (code == ErrorCode::kDeviceTimeout) return 10;
  if (code == ErrorCode::kMethodFailed) return 11;
  if (code == ErrorCode::kServiceUnavailable || code == ErrorCode::kBrokerFailed) return 12;
  if (v >= 10 && v < 30) return 4;
  if (v >= 30 && v < 40) return 5;
  if (v >= 40 && v < 60) return 6;
  if (v >= 60) return 7;
  return 1;
}

}  // namespace fleetsign
