// SigningKey: signatures made in the token (token.hpp), on the fast path's own sessions when the
// module allows it, with transient session failures retried on fresh sessions.
#include <openssl/err.h>
#include <openssl/evp.h>

#include <cstring>

#include "fleetsign/error.hpp"
#include "fleetsign/hsm/sign_latency.hpp"
#include "fleetsign/hsm/token.hpp"
#include "mechanisms.hpp"
#include "signing_key_fast.hpp"

namespace fleetsign::hsm {

namespace {

// DigestInfo prefixes for RSA PKCS#1 v1.5 (RFC 8017 9.2 note 1).
constexpr std::uint8_t kSha256Info[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                        0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
constexpr std::uint8_t kSha384Info[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                        0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};

// PKCS#11 gives ECDSA signatures as r || s; X.509 wants DER ECDSA-Sig-Value.
void append_der_integer(std::vector<std::uint8_t>& out, const std::uint8_t* p, std::size_t n) {
  while (n > 1 && *p == 0) {
    ++p;
    --n;
  }
  const bool pad = (*p & 0x80) != 0;
  out.push_back(0x02);
  out.push_back(static_cast<std::uint8_t>(n + (pad ? 1 : 0)));
  if (pad) out.push_back(0);
  out.insert(out.end(), p, p + n);
}

// Failures of a session rather than of the key or the token: the same request may succeed on a
// fresh session. CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, CKR_USER_NOT_LOGGED_IN and the like
// are not retried: they stay until someone acts.
bool transient_ckr(CK_RV rv) {
  switch (rv) {
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_HOST_MEMORY:
    case CKR_OPERATION_ACTIVE:
      return true;
    default:
      return false;
  }
}
constexpr int kSignAttempts = 3;  // a transient failure is tried twice more, on fresh sessions

void ecdsa_raw_to_der(const std::uint8_t* raw, std::size_t len, std::vector<std::uint8_t>& out) {
  std::uint8_t body[2 * (2 + 1 + 66)];
  std::vector<std::uint8_t> ints;
  ints.reserve(sizeof body);
  append_der_integer(ints, raw, len / 2);
  append_der_integer(ints, raw + len / 2, len / 2);
  out.clear();
  out.push_back(0x30);
  if (ints.size() >= 0x80) out.push_back(0x81);
  out.push_back(static_cast<std::uint8_t>(ints.size()));
  out.insert(out.end(), ints.begin(), ints.end());
}

}  // namespace

SigningKey::SigningKey(KeyRef ref, KeyType type, EVP_PKEY* private_key,
                       std::vector<std::uint8_t> spki, std::unique_ptr<Fast> fast)
    : m_ref(std::move(ref)),
      m_type(type),
      m_pkey(private_key),
      m_spki(std::move(spki)),
      m_fast(std::move(fast)) {}

SigningKey::~SigningKey() {
  m_fast.reset();
  EVP_PKEY_free(m_pkey);
}

bool SigningKey::signs_with_session_copy() const noexcept { return m_fast && m_fast->copied; }

bool SigningKey::sign_digest(std::span<const std::uint8_t> digest, int md_nid,
                             std::vector<std::uint8_t>& out, std::string& error) const {
  const SignTimer timer;  // the latency histogram (/metrics)
  std::uint8_t input[19 + 64];
  std::size_t input_len = digest.size();
  CK_MECHANISM mech{is_ec() ? CKM_ECDSA : CKM_RSA_PKCS, nullptr, 0};
  if (is_ec()) {
    std::memcpy(input, digest.data(), digest.size());
  } else {
    const std::uint8_t* info = md_nid == NID_sha384 ? kSha384Info : kSha256Info;
    std::memcpy(input, info, sizeof kSha256Info);
    std::memcpy(input + sizeof kSha256Info, digest.data(), digest.size());
    input_len += sizeof kSha256Info;
  }
  std::uint8_t sig[1024];
  CK_ULONG sig_len = sizeof sig;
  CK_RV rv = CKR_OK;
  int attempt = 1;
  for (;; ++attempt) {
    const CK_SESSION_HANDLE session = m_fast->acquire(rv);
    if (session != CK_INVALID_HANDLE) {
      sig_len = sizeof sig;
      rv = m_fast->f->C_SignInit(session, &mech, m_fast->object);
      if (rv == CKR_OK) {
        rv = m_fast->f->C_Sign(session, input, input_len, sig, &sig_len);
      }
      if (rv == CKR_OK) {
        m_fast->release(session);
        break;
      }
      m_fast->discard(session);
    }
    if (!transient_ckr(rv) || attempt == kSignAttempts) {
      error = "token signing with " + m_ref.uri() + " failed: " + raw::ckr_name(rv) +
              (session == CK_INVALID_HANDLE ? " (C_OpenSession)" : "") +
              (attempt > 1 ? " (" + std::to_string(attempt) + " attempts, each on a fresh session)"
                           : "");
      out.clear();
      return false;
    }
  }
  if (is_ec()) {
    ecdsa_raw_to_der(sig, sig_len, out);
  } else {
    out.assign(sig, sig + sig_len);
  }
  return true;
}

}  // namespace fleetsign::hsm
