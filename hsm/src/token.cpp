#include "fleetsign/hsm/token.hpp"

#include <libp11.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "fleetsign/error.hpp"
#include "fleetsign/hsm/sign_latency.hpp"
#include "mechanisms.hpp"
#include "pkcs11_raw.hpp"
#include "signing_key_fast.hpp"

namespace fleetsign::hsm {

namespace {

// DER of the curve OIDs, as CKA_EC_PARAMS wants them.
constexpr std::uint8_t kP256Params[] = {0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07};
constexpr std::uint8_t kP384Params[] = {0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22};

// libp11 reports a PKCS#11 failure as an OpenSSL error whose reason is the CK_RV.
CK_RV last_ckr() {
  CK_RV rv = CKR_GENERAL_ERROR;
  unsigned long e = 0;
  while ((e = ERR_get_error()) != 0) {
    if (ERR_GET_LIB(e) == ERR_get_CKR_code()) {
      rv = ERR_GET_REASON(e);
    }
  }
  return rv;
}

std::string hex(const std::vector<std::uint8_t>& bytes) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (const auto b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

// CKA_EC_POINT is a DER OCTET STRING around the point on conforming tokens, the bare point on
// some others: accept both.
std::vector<std::uint8_t> unwrap_ec_point(const std::vector<std::uint8_t>& attr) {
  const unsigned char* p = attr.data();
  ASN1_OCTET_STRING* os = d2i_ASN1_OCTET_STRING(nullptr, &p, static_cast<long>(attr.size()));
  if (os != nullptr && p == attr.data() + attr.size()) {
    std::vector<std::uint8_t> point(os->data, os->data + os->length);
    ASN1_OCTET_STRING_free(os);
    return point;
  }
  ASN1_OCTET_STRING_free(os);
  return attr;
}

// Reads the token's public key object for `id` and returns its SubjectPublicKeyInfo DER and type.
std::pair<std::vector<std::uint8_t>, KeyType> read_public_key(const raw::Session& s,
                                                              const KeyRef& ref) {
  const CK_OBJECT_HANDLE pub = s.find(CKO_PUBLIC_KEY, ref.id);
  if (pub == CK_INVALID_HANDLE) {
    throw Error(ErrorCode::kKeyNotFound, "key " + ref.uri() + ": no public key object");
  }
  EVP_PKEY* pkey = EVP_PKEY_new();
  KeyType type = KeyType::kEcP256;
  const auto params = s.get_bytes(pub, CKA_EC_PARAMS);
  if (!params.empty()) {
    const unsigned char* p = params.data();
    ASN1_OBJECT* oid = d2i_ASN1_OBJECT(nullptr, &p, static_cast<long>(params.size()));
    const int nid = oid != nullptr ? OBJ_obj2nid(oid) : NID_undef;
    ASN1_OBJECT_free(oid);
    if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1) {
      EVP_PKEY_free(pkey);
      throw Error(ErrorCode::kMechanismUnsupported, "key " + ref.uri() + ": unsupported curve");
    }
    type = nid == NID_secp384r1 ? KeyType::kEcP384 : KeyType::kEcP256;
    const auto point = unwrap_ec_point(s.get_bytes(pub, CKA_EC_POINT));
    EC_KEY* ec = EC_KEY_new_by_curve_name(nid);
    EC_POINT* pt = EC_POINT_new(EC_KEY_get0_group(ec));
    if (EC_POINT_oct2point(EC_KEY_get0_group(ec), pt, point.data(), point.size(), nullptr) != 1 ||
        EC_KEY_set_public_key(ec, pt) != 1) {
      EC_POINT_free(pt);
      EC_KEY_free(ec);
      EVP_PKEY_free(pkey);
      throw Error(ErrorCode::kTokenError, "key " + ref.uri() + ": unreadable CKA_EC_POINT");
    }
    EC_POINT_free(pt);
    EVP_PKEY_assign_EC_KEY(pkey, ec);
  } else {
    const auto n = s.get_bytes(pub, CKA_MODULUS);
    const auto e = s.get_bytes(pub, CKA_PUBLIC_EXPONENT);
    if (n.empty() || e.empty()) {
      EVP_PKEY_free(pkey);
      throw Error(ErrorCode::kMechanismUnsupported,
                  "key " + ref.uri() + ": neither an EC nor an RSA key");
    }
    RSA* rsa = RSA_new();
    RSA_set0_key(rsa, BN_bin2bn(n.data(), static_cast<int>(n.size()), nullptr),
                 BN_bin2bn(e.data(), static_cast<int>(e.size()), nullptr), nullptr);
    const int bits = RSA_bits(rsa);
    type = bits >= 4096 ? KeyType::kRsa4096 : bits >= 3072 ? KeyType::kRsa3072 : KeyType::kRsa2048;
    EVP_PKEY_assign_RSA(pkey, rsa);
  }
  const int len = i2d_PUBKEY(pkey, nullptr);
  std::vector<std::uint8_t> spki(static_cast<std::size_t>(len));
  unsigned char* out = spki.data();
  i2d_PUBKEY(pkey, &out);
  EVP_PKEY_free(pkey);
  return {std::move(spki), type};
}

}  // namespace

std::string key_type_names(const std::vector<KeyType>& types) {
  std::string out;
  for (const KeyType t : types) {
    out += out.empty() ? "" : ", ";
    out += key_type_name(t);
  }
  return out.empty() ? "none" : out;
}

std::string_view key_type_name(KeyType type) noexcept {
  switch (type) {
    case KeyType::kEcP256:
      return "ec-p256";
    case KeyType::kEcP384:
      return "ec-p384";
    case KeyType::kRsa2048:
      return "rsa-2048";
    case KeyType::kRsa3072:
      return "rsa-3072";
    case KeyType::kRsa4096:
      return "rsa-4096";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// Token

struct Token::Impl {
  PKCS11_CTX* ctx = nullptr;
  PKCS11_SLOT* slots = nullptr;
  unsigned int nslots = 0;
  PKCS11_SLOT* slot = nullptr;
  CK_SLOT_ID slot_id = 0;
  std::optional<raw::Module> module;  // same module libp11 loaded; for what libp11 lacks
  bool loaded = false;                // PKCS11_CTX_unload on a context that never loaded crashes

  ~Impl() {
    module.reset();
    if (slots != nullptr) {
      PKCS11_release_all_slots(ctx, slots, nslots);
    }
    if (ctx != nullptr) {
      if (loaded) {
        PKCS11_CTX_unload(ctx);
      }
      PKCS11_CTX_free(ctx);
    }
  }
};

Token::Token(TokenConfig config) : m_config(std::move(config)), m_impl(std::make_unique<Impl>()) {}

Token::~Token() {
  m_keys.clear();  // EVP_PKEYs reference the module: free them before it is unloaded
  m_impl.reset();
}

std::unique_ptr<Token> Token::open(const TokenConfig& config, const Pin& user_pin) {
  const std::string module = config.module.string();
  std::error_code ec;
  if (!std::filesystem::exists(config.module, ec)) {
    throw Error(ErrorCode::kModuleNotFound, "PKCS#11 module " + module + ": no such file");
  }
  std::unique_ptr<Token> token(new Token(config));
  Impl& impl = *token->m_impl;
  impl.ctx = PKCS11_CTX_new();
  if (PKCS11_CTX_load(impl.ctx, module.c_str()) != 0) {
    ERR_clear_error();
    throw Error(ErrorCode::kModuleNotFound,
                "PKCS#11 module " + module + ": cannot be loaded or initialised");
  }
  impl.loaded = true;
  if (PKCS11_enumerate_slots(impl.ctx, &impl.slots, &impl.nslots) != 0) {
    throw Error(ErrorCode::kTokenError,
                "PKCS#11 module " + module + ": cannot list slots: " + raw::ckr_name(last_ckr()));
  }
  std::string seen;
  for (unsigned int i = 0; i < impl.nslots; ++i) {
    PKCS11_SLOT* s = &impl.slots[i];
    if (s->token == nullptr || !s->token->initialized) {
      continue;
    }
    if (config.token_label == s->token->label) {
      impl.slot = s;
      break;
    }
    seen += seen.empty() ? "" : ", ";
    seen += std::string("'") + s->token->label + "'";
  }
  if (impl.slot == nullptr) {
    throw Error(ErrorCode::kTokenNotFound,
                "token '" + config.token_label + "' not found in " + module +
                    (seen.empty() ? " (no initialised tokens)" : " (tokens: " + seen + ")"));
  }
  impl.slot_id = PKCS11_get_slotid_from_slot(impl.slot);
  // One attempt only: retrying a wrong PIN walks the token towards a lock-out.
  if (PKCS11_login(impl.slot, 0, user_pin.c_str()) != 0) {
    const CK_RV rv = last_ckr();
    if (rv == CKR_PIN_LOCKED) {
      throw Error(ErrorCode::kPinLocked, "token '" + config.token_label + "': user PIN is locked");
    }
    if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE) {
      throw Error(ErrorCode::kPinIncorrect, "token '" + config.token_label +
                                                "': login refused: wrong user PIN (" +
                                                raw::ckr_name(rv) + ")");
    }
    throw Error(ErrorCode::kTokenError,
                "token '" + config.token_label + "': login failed: " + raw::ckr_name(rv));
  }
  impl.module.emplace(raw::Module::attach(config.module));
  token->m_key_types = raw::supported_key_types(impl.module->f(), impl.slot_id);
  return token;
}

void Token::require_key_type(KeyType type) const {
  if (std::find(m_key_types.begin(), m_key_types.end(), type) != m_key_types.end()) {
    return;
  }
  const bool ec = type == KeyType::kEcP256 || type == KeyType::kEcP384;
  throw Error(ErrorCode::kMechanismUnsupported,
              "token '" + m_config.token_label + "' (PKCS#11 module " + m_config.module.string() +
                  ") cannot make " + std::string(key_type_name(type)) + " keys: it lacks " +
                  (ec ? "CKM_EC_KEY_PAIR_GEN/CKM_ECDSA for that curve"
                      : "CKM_RSA_PKCS_KEY_PAIR_GEN/CKM_RSA_PKCS for that size") +
                  "; it offers " + key_type_names(m_key_types));
}

void Token::initialize(const TokenConfig& config, const Pin& so_pin, const Pin& user_pin) {
  raw::Module module = raw::Module::load(config.module);
  CK_FUNCTION_LIST_PTR f = module.f();
  auto slot_list = [&] {
    CK_ULONG n = 0;
    f->C_GetSlotList(CK_TRUE, nullptr, &n);
    std::vector<CK_SLOT_ID> ids(n);
    f->C_GetSlotList(CK_TRUE, ids.data(), &n);
    ids.resize(n);
    return ids;
  };
  CK_SLOT_ID free_slot = 0;
  bool found_free = false;
  for (const CK_SLOT_ID id : slot_list()) {
    CK_TOKEN_INFO info{};
    if (f->C_GetTokenInfo(id, &info) != CKR_OK) {
      continue;
    }
    const bool initialised = (info.flags & CKF_TOKEN_INITIALIZED) != 0;
    if (initialised && raw::token_label(info) == config.token_label) {
      throw Error(ErrorCode::kAlreadyExists, "token '" + config.token_label + "' already exists");
    }
    if (!initialised && !found_free) {
      free_slot = id;
      found_free = true;
    }
  }
  if (!found_free) {
    throw Error(ErrorCode::kTokenNotFound,
                "PKCS#11 module " + config.module.string() + ": no free slot for a new token");
  }
  unsigned char label[32];
  std::memset(label, ' ', sizeof label);
  std::memcpy(label, config.token_label.data(),
              std::min<std::size_t>(32, config.token_label.size()));
  CK_RV rv = f->C_InitToken(free_slot,
                            reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(so_pin.c_str())),
                            so_pin.size(), label);
  if (rv != CKR_OK) {
    throw Error(ErrorCode::kTokenError,
                "initialising token '" + config.token_label + "': " + raw::ckr_name(rv));
  }
  // Some modules (SoftHSM2) move an initialised token to a new slot ID: look it up again.
  for (const CK_SLOT_ID id : slot_list()) {
    CK_TOKEN_INFO info{};
    if (f->C_GetTokenInfo(id, &info) != CKR_OK || raw::token_label(info) != config.token_label) {
      continue;
    }
    raw::Session s(f, id);
    rv = f->C_Login(s.h(), CKU_SO,
                    reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(so_pin.c_str())),
                    so_pin.size());
    if (rv == CKR_OK) {
      rv = f->C_InitPIN(s.h(),
                        reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(user_pin.c_str())),
                        user_pin.size());
      f->C_Logout(s.h());
    }
    if (rv != CKR_OK) {
      throw Error(ErrorCode::kTokenError, "setting the user PIN of token '" + config.token_label +
                                              "': " + raw::ckr_name(rv));
    }
    return;
  }
  throw Error(ErrorCode::kTokenError,
              "token '" + config.token_label + "' vanished after initialisation");
}

KeyRef Token::generate_key(KeyType type, const std::string& label) {
  require_key_type(type);
  KeyRef ref{m_config.token_label, std::vector<std::uint8_t>(16), label};
  RAND_bytes(ref.id.data(), static_cast<int>(ref.id.size()));
  return generate_key(type, ref);
}

KeyRef Token::generate_key(KeyType type, const KeyRef& wanted) {
  if (wanted.id.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "a token key needs a non-empty CKA_ID");
  }
  KeyRef ref{m_config.token_label, wanted.id, wanted.label};
  const std::string& label = ref.label;
  raw::Session s(m_impl->module->f(), m_impl->slot_id);
  CK_BBOOL yes = CK_TRUE;
  CK_BBOOL no = CK_FALSE;
  CK_ULONG bits = type == KeyType::kRsa4096 ? 4096 : type == KeyType::kRsa3072 ? 3072 : 2048;
  CK_BYTE exponent[] = {0x01, 0x00, 0x01};
  const bool ec = type == KeyType::kEcP256 || type == KeyType::kEcP384;
  const std::uint8_t* params = type == KeyType::kEcP384 ? kP384Params : kP256Params;
  const CK_ULONG params_len = type == KeyType::kEcP384 ? sizeof kP384Params : sizeof kP256Params;
  std::vector<CK_ATTRIBUTE> pub = {
      {CKA_TOKEN, &yes, sizeof yes},
      {CKA_PRIVATE, &no, sizeof no},
      {CKA_VERIFY, &yes, sizeof yes},
      {CKA_ID, ref.id.data(), ref.id.size()},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
  };
  if (ec) {
    pub.push_back({CKA_EC_PARAMS, const_cast<std::uint8_t*>(params), params_len});
  } else {
    pub.push_back({CKA_MODULUS_BITS, &bits, sizeof bits});
    pub.push_back({CKA_PUBLIC_EXPONENT, exponent, sizeof exponent});
  }
  // SoftHSM2 2.6.1 defaults CKA_SENSITIVE to false: every protection attribute is explicit.
  CK_ATTRIBUTE priv[] = {
      {CKA_TOKEN, &yes, sizeof yes},
      {CKA_PRIVATE, &yes, sizeof yes},
      {CKA_SENSITIVE, &yes, sizeof yes},
      {CKA_EXTRACTABLE, &no, sizeof no},
      {CKA_SIGN, &yes, sizeof yes},
      // A CA key signs and does nothing else.
      {CKA_DECRYPT, &no, sizeof no},
      {CKA_UNWRAP, &no, sizeof no},
      {CKA_DERIVE, &no, sizeof no},
      {CKA_ID, ref.id.data(), ref.id.size()},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
  };
  CK_MECHANISM mech{ec ? CKM_EC_KEY_PAIR_GEN : CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE pub_h = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE priv_h = CK_INVALID_HANDLE;
  const CK_RV rv = m_impl->module->f()->C_GenerateKeyPair(
      s.h(), &mech, pub.data(), pub.size(), priv, sizeof priv / sizeof priv[0], &pub_h, &priv_h);
  if (rv != CKR_OK) {
    const ErrorCode code =
        rv == CKR_MECHANISM_INVALID ? ErrorCode::kMechanismUnsupported : ErrorCode::kTokenError;
    throw Error(code, "generating a " + std::string(key_type_name(type)) + " key '" + label +
                          "' in token '" + m_config.token_label + "': " + raw::ckr_name(rv));
  }
  const KeyProtection p = protection(ref);
  if (!p.protected_ok()) {
    destroy_key(ref);
    throw Error(ErrorCode::kKeyNotProtected,
                "token '" + m_config.token_label +
                    "' made a key that is not sensitive and never-extractable; destroyed it");
  }
  return ref;
}

std::vector<KeyRef> Token::list_private_keys() {
  raw::Session s(m_impl->module->f(), m_impl->slot_id);
  CK_FUNCTION_LIST_PTR f = m_impl->module->f();
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof cls}};
  std::vector<CK_OBJECT_HANDLE> handles;
  if (f->C_FindObjectsInit(s.h(), tmpl, 1) == CKR_OK) {
    CK_OBJECT_HANDLE batch[64];
    CK_ULONG n = 0;
    while (f->C_FindObjects(s.h(), batch, 64, &n) == CKR_OK && n > 0) {
      handles.insert(handles.end(), batch, batch + n);
    }
    f->C_FindObjectsFinal(s.h());
  }
  std::vector<KeyRef> out;
  for (const CK_OBJECT_HANDLE h : handles) {
    const auto label = s.get_bytes(h, CKA_LABEL);
    out.push_back(
        {m_config.token_label, s.get_bytes(h, CKA_ID), std::string(label.begin(), label.end())});
  }
  return out;
}

std::size_t Token::destroy_unidentified_keys() {
  raw::Session s(m_impl->module->f(), m_impl->slot_id);
  CK_FUNCTION_LIST_PTR f = m_impl->module->f();
  std::vector<CK_OBJECT_HANDLE> doomed;
  for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof cls}};
    if (f->C_FindObjectsInit(s.h(), tmpl, 1) != CKR_OK) {
      continue;
    }
    CK_OBJECT_HANDLE batch[64];
    CK_ULONG n = 0;
    while (f->C_FindObjects(s.h(), batch, 64, &n) == CKR_OK && n > 0) {
      for (CK_ULONG i = 0; i < n; ++i) {
        if (s.get_bytes(batch[i], CKA_ID).empty()) {
          doomed.push_back(batch[i]);
        }
      }
    }
    f->C_FindObjectsFinal(s.h());
  }
  for (const CK_OBJECT_HANDLE h : doomed) {
    f->C_DestroyObject(s.h(), h);
  }
  return doomed.size();
}

KeyProtection Token::protection(const KeyRef& ref) {
  raw::Session s(m_impl->module->f(), m_impl->slot_id);
  const CK_OBJECT_HANDLE obj = s.find(CKO_PRIVATE_KEY, ref.id);
  if (obj == CK_INVALID_HANDLE) {
    throw Error(ErrorCode::kKeyNotFound,
                "key " + ref.uri() + " not found in token '" + m_config.token_label + "'");
  }
  KeyProtection p;
  p.sensitive = s.get_bool(obj, CKA_SENSITIVE, false);
  p.always_sensitive = s.get_bool(obj, CKA_ALWAYS_SENSITIVE, false);
  p.extractable = s.get_bool(obj, CKA_EXTRACTABLE, true);
  p.never_extractable = s.get_bool(obj, CKA_NEVER_EXTRACTABLE, false);
  p.token_object = s.get_bool(obj, CKA_TOKEN, false);
  p.private_object = s.get_bool(obj, CKA_PRIVATE, false);
  return p;
}

unsigned long Token::try_read_private_value(const KeyRef& ref) {
  raw::Session s(m_impl->module->f(), m_impl->slot_id);
  const CK_OBJECT_HANDLE obj = s.find(CKO_PRIVATE_KEY, ref.id);
  if (obj == CK_INVALID_HANDLE) {
    throw Error(ErrorCode::kKeyNotFound, "key " + ref.uri() + " not found");
  }
  CK_RV rv = CKR_OK;
  s.get_bytes(obj, CKA_VALUE, &rv);
  if (rv == CKR_ATTRIBUTE_TYPE_INVALID) {
    s.get_bytes(obj, CKA_PRIVATE_EXPONENT, &rv);  // RSA keys have no CKA_VALUE
  }
  return rv;
}

void Token::destroy_key(const KeyRef& ref) {
  m_keys.erase(ref.id);
  raw::Session s(m_impl->module->f(), m_impl->slot_id);
  for (const CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
    const CK_OBJECT_HANDLE obj = s.find(cls, ref.id);
    if (obj != CK_INVALID_HANDLE) {
      m_impl->module->f()->C_DestroyObject(s.h(), obj);
    }
  }
}

std::unique_ptr<SigningKey::Fast> Token::make_fast(const KeyRef& ref) {
  auto fast = std::make_unique<SigningKey::Fast>();
  fast->f = m_impl->module->f();
  fast->slot = m_impl->slot_id;
  CK_RV rv = fast->f->C_OpenSession(fast->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr,
                                    nullptr, &fast->owner);
  if (rv != CKR_OK) {
    throw Error(ErrorCode::kTokenError,
                "key " + ref.uri() + ": C_OpenSession: " + raw::ckr_name(rv));
  }
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof cls},
                         {CKA_ID, const_cast<std::uint8_t*>(ref.id.data()), ref.id.size()}};
  CK_ULONG count = 0;
  if (fast->f->C_FindObjectsInit(fast->owner, tmpl, 2) == CKR_OK) {
    fast->f->C_FindObjects(fast->owner, &fast->object, 1, &count);
    fast->f->C_FindObjectsFinal(fast->owner);
  }
  if (count != 1) {
    throw Error(ErrorCode::kKeyNotFound,
                "key " + ref.uri() + " not found in token '" + m_config.token_label + "'");
  }
  CK_BBOOL no = CK_FALSE;
  CK_ATTRIBUTE copy_tmpl[] = {{CKA_TOKEN, &no, sizeof no}};
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  if (fast->f->C_CopyObject(fast->owner, fast->object, copy_tmpl, 1, &copy) == CKR_OK) {
    // Use the copy only if the token kept it protected (PKCS#11 forbids weakening, but check).
    CK_BBOOL sensitive = CK_FALSE, extractable = CK_TRUE;
    CK_ATTRIBUTE q[] = {{CKA_SENSITIVE, &sensitive, sizeof sensitive},
                        {CKA_EXTRACTABLE, &extractable, sizeof extractable}};
    if (fast->f->C_GetAttributeValue(fast->owner, copy, q, 2) == CKR_OK && sensitive == CK_TRUE &&
        extractable == CK_FALSE) {
      fast->object = copy;
      fast->copied = true;
    } else {
      fast->f->C_DestroyObject(fast->owner, copy);
    }
  }
  return fast;
}

const SigningKey& Token::key(const KeyRef& ref) {
  if (auto it = m_keys.find(ref.id); it != m_keys.end()) {
    return *it->second;
  }
  if (!protection(ref).protected_ok()) {
    throw Error(
        ErrorCode::kKeyNotProtected,
        "key " + ref.uri() + " is not sensitive and never-extractable; refusing it as a CA key");
  }
  auto [spki, type] = read_public_key(raw::Session(m_impl->module->f(), m_impl->slot_id), ref);
  PKCS11_KEY* keys = nullptr;
  unsigned int n = 0;
  if (PKCS11_enumerate_keys(m_impl->slot->token, &keys, &n) != 0) {
    throw Error(ErrorCode::kTokenError, "listing keys in token '" + m_config.token_label +
                                            "': " + raw::ckr_name(last_ckr()));
  }
  for (unsigned int i = 0; i < n; ++i) {
    if (!keys[i].isPrivate || keys[i].id_len != ref.id.size() ||
        std::memcmp(keys[i].id, ref.id.data(), ref.id.size()) != 0) {
      continue;
    }
    EVP_PKEY* pkey = PKCS11_get_private_key(&keys[i]);
    if (pkey == nullptr) {
      break;
    }
    auto key = std::make_unique<SigningKey>(ref, type, pkey, std::move(spki), make_fast(ref));
    const SigningKey& result = *key;
    m_keys.emplace(ref.id, std::move(key));
    return result;
  }
  throw Error(ErrorCode::kKeyNotFound, "key " + ref.uri() + " (id " + hex(ref.id) +
                                           ") not found in token '" + m_config.token_label + "'");
}

}  // namespace fleetsign::hsm
