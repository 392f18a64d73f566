// The only code in fleetsign that talks PKCS#11. libp11 loads the module, finds the token, logs
// in and hands OpenSSL token-backed keys; the module's own C_GenerateKeyPair is called where
// libp11 0.4.12 falls short (EC keys, and the sensitive/non-extractable template).
//
// Thread safety (libp11's documented pattern): open, log in and look keys up once, on one thread,
// at start-up (`Token::open`, `Token::key`, `generate_key`, `destroy_key` are NOT safe alongside
// signing). After that, `SigningKey::sign_digest` and `SigningKey::pkey()` may be used from any
// number of threads at once. Never fork after a Token is open.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "fleetsign/hsm/key_ref.hpp"
#include "fleetsign/hsm/pin.hpp"

namespace fleetsign::hsm {

struct TokenConfig {
  std::filesystem::path module;  // PKCS#11 module (.so)
  std::string token_label;
};

// What the token says about a private key, read back after generation and at every start-up.
struct KeyProtection {
  bool sensitive = false;
  bool always_sensitive = false;
  bool extractable = true;
  bool never_extractable = false;
  bool token_object = false;
  bool private_object = false;
  bool protected_ok() const {
    return sensitive && always_sensitive && !extractable && never_extractable && token_object &&
           private_object;
  }
};

// A token private key, looked up once. Non-owning handle: valid while its Token lives.
//
// Hot-path signing (`sign_digest`) goes straight to the module through a pool of per-worker
// sessions. Where the token allows it, it signs with a session-object copy of the key made by
// C_CopyObject (CKA_TOKEN=false; still sensitive and non-extractable, it never leaves the token
// and vanishes with the process): SoftHSM2 re-reads a token object's file on every operation,
// which costs it a third of its signing rate. `pkey()` (libp11) serves OpenSSL's X509/CRL code.
class SigningKey final {
 public:
  struct Fast;  // module function list, sessions, object handle (token.cpp)
  SigningKey(KeyRef ref, KeyType type, EVP_PKEY* private_key, std::vector<std::uint8_t> spki,
             std::unique_ptr<Fast> fast);
  ~SigningKey();
  SigningKey(const SigningKey&) = delete;  // owns an EVP_PKEY reference
  SigningKey& operator=(const SigningKey&) = delete;

  const KeyRef& ref() const noexcept { return m_ref; }
  KeyType type() const noexcept { return m_type; }
  bool is_ec() const noexcept { return m_type == KeyType::kEcP256 || m_type == KeyType::kEcP384; }
  // Token-backed private key for OpenSSL's X509_sign / X509_CRL_sign. Borrowed.
  EVP_PKEY* pkey() const noexcept { return m_pkey; }
  // SubjectPublicKeyInfo DER of the key pair (read from the token's public key object).
  const std::vector<std::uint8_t>& spki_der() const noexcept { return m_spki; }
  // True when signing uses a session-object copy of the key (see above).
  bool signs_with_session_copy() const noexcept;

  // Signs a message digest (SHA-256 or SHA-384, per `md_nid`) in the token. Writes the DER
  // signature (ECDSA-Sig-Value, or the RSA PKCS#1 v1.5 block) into `out` (resized). Thread-safe.
  // Returns false on a token failure; `error` then says why. A session that fails is closed, never
  // reused; a session error (CKR_SESSION_HANDLE_INVALID, CKR_GENERAL_ERROR, CKR_DEVICE_MEMORY, …)
  // is tried again on a fresh session, up to 3 attempts in all; CKR_DEVICE_REMOVED and other
  // token-wide errors are not.
  bool sign_digest(std::span<const std::uint8_t> digest, int md_nid, std::vector<std::uint8_t>& out,
                   std::string& error) const;

 private:
  KeyRef m_ref;
  KeyType m_type;
  EVP_PKEY* m_pkey;
  std::vector<std::uint8_t> m_spki;
  std::unique_ptr<Fast> m_fast;
};

class Token final {
 public:
  // Loads `config.module`, finds the token labelled `config.token_label`, logs in as the user
  // with exactly one attempt. Throws Error: kModuleNotFound, kTokenNotFound, kPinIncorrect,
  // kPinLocked, kTokenError — each message names the module/token.
  static std::unique_ptr<Token> open(const TokenConfig& config, const Pin& user_pin);

  // Initialises a token in the first slot without one: sets its label, SO PIN and user PIN.
  // Throws Error(kAlreadyExists) when a token with that label exists: an existing token (a real
  // HSM's, set up by its administrators) is never re-initialised, only opened.
  static void initialize(const TokenConfig& config, const Pin& so_pin, const Pin& user_pin);

  ~Token();
  Token(const Token&) = delete;  // owns the loaded module and its login
  Token& operator=(const Token&) = delete;

  const std::string& label() const noexcept { return m_config.token_label; }

  // The CA key types this token can both generate and sign with, from the module's
  // C_GetMechanismList / C_GetMechanismInfo (key pair generation, CKM_ECDSA or CKM_RSA_PKCS, and
  // the key sizes it allows). Asked once at open.
  const std::vector<KeyType>& key_types() const noexcept { return m_key_types; }
  // Throws Error(kMechanismUnsupported) naming the token, the module, the missing mechanism and
  // the key types it does offer, when `type` is not among key_types(). generate_key calls it.
  void require_key_type(KeyType type) const;

  // Generates a key pair inside the token (CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not
  // CKA_EXTRACTABLE, random 16-byte CKA_ID) and reads its protection back; a key that fails
  // KeyProtection::protected_ok() is destroyed and Error(kKeyNotProtected) thrown.
  KeyRef generate_key(KeyType type, const std::string& label);
  // The same with a CKA_ID chosen by the caller (`ref.id`, non-empty; `ref.label` the label), so
  // that the caller can record which key it is about to make before it exists. The whole
  // template (ID, label, sensitive, never extractable) is in the one C_GenerateKeyPair call: no
  // moment exists in which the key is unlabelled or unprotected.
  KeyRef generate_key(KeyType type, const KeyRef& ref);

  // Every private key object in the token (CKA_ID and CKA_LABEL). Not safe alongside signing.
  std::vector<KeyRef> list_private_keys();
  // Destroys the private and public key objects that have no CKA_ID and returns how many.
  // SoftHSM2 stores a new object first and its attributes after, so a process killed inside
  // C_GenerateKeyPair can leave such a half-made key; fleetsign never makes a key without one.
  std::size_t destroy_unidentified_keys();

  // Looks the key up (once; later calls return the same handle). Throws kKeyNotFound,
  // kKeyNotProtected (a CA key must be sensitive and never extractable).
  const SigningKey& key(const KeyRef& ref);

  KeyProtection protection(const KeyRef& ref);
  // Asks the token for the private key's CKA_VALUE; returns the CK_RV it answered (a protected
  // key answers CKR_ATTRIBUTE_SENSITIVE). For tests and `ca show --check-token`.
  unsigned long try_read_private_value(const KeyRef& ref);
  void destroy_key(const KeyRef& ref);

 private:
  struct Impl;
  explicit Token(TokenConfig config);
  std::unique_ptr<SigningKey::Fast> make_fast(const KeyRef& ref);
  TokenConfig m_config;
  std::unique_ptr<Impl> m_impl;
  std::vector<KeyType> m_key_types;
  std::map<std::vector<std::uint8_t>, std::unique_ptr<SigningKey>> m_keys;
};

std::string_view key_type_name(KeyType type) noexcept;          // "ec-p256", …
std::string key_type_names(const std::vector<KeyType>& types);  // "rsa-2048, rsa-3072" or "none"

}  // namespace fleetsign::hsm
