// The rotation methods (createCsr, installCertificate, reprovision): the device side of a
// certificate rollover, as ../../broker/PROTOCOL.md ("Rotation methods") describes them. The
// private key is made here, kept in the device's flash (SlotStore) and never leaves it. Every
// call may be repeated by the engine (crash, retry) and answers the same.
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "fleetsign/device/methods.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "ossl.hpp"

namespace fleetsign::device {

namespace {

constexpr std::size_t kMaxJobId = 64;
constexpr std::size_t kMaxChainBytes = 64 * 1024;
constexpr std::size_t kMaxChainCerts = 8;

// An answer other than 200, thrown by the checks and turned into {"message"} by `guarded`.
struct Refusal {
  int status;
  std::string message;
};

[[noreturn]] void refuse(int status, std::string message) {
  throw Refusal{status, std::move(message)};
}

// Refusals as their status; fleetsign::Error as 500 (I/O, naming the file) or 409 (what the flash
// holds is unusable); anything else reaches the registry's 500.
MethodHandler guarded(MethodHandler fn) {
  return [fn = std::move(fn)](MethodContext& device, const Poco::Dynamic::Var& payload) {
    try {
      return fn(device, payload);
    } catch (const Refusal& r) {
      return MethodResponse::error(r.status, r.message);
    } catch (const Error& e) {
      return MethodResponse::error(e.code() == ErrorCode::kIo ? 500 : 409, e.what());
    }
  };
}

Poco::JSON::Object::Ptr object_of(const Poco::Dynamic::Var& payload) {
  if (payload.type() != typeid(Poco::JSON::Object::Ptr)) {
    refuse(400, "payload must be a JSON object");
  }
  auto object = payload.extract<Poco::JSON::Object::Ptr>();
  if (!object) refuse(400, "payload must be a JSON object");
  return object;
}

std::string string_field(const Poco::JSON::Object& o, const std::string& name) {
  if (!o.has(name)) refuse(400, "field '" + name + "' is missing");
  const Poco::Dynamic::Var v = o.get(name);
  if (!v.isString()) refuse(400, "field '" + name + "' must be a string");
  return v.extract<std::string>();
}

std::string job_id(const Poco::JSON::Object& o) {
  std::string id = string_field(o, "jobId");
  const bool ok =
      !id.empty() && id.size() <= kMaxJobId && std::all_of(id.begin(), id.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '.' ||
               c == ':' || c == '-';
      });
  if (!ok) refuse(400, "field 'jobId' must be 1..64 characters of [A-Za-z0-9_.:-]");
  return id;
}

Slot slot_field(const Poco::JSON::Object& o) {
  const std::string name = string_field(o, "slot");
  if (name == "primary") return Slot::kPrimary;
  if (name == "secondary") return Slot::kSecondary;
  refuse(400, "field 'slot' must be \"primary\" or \"secondary\"");
}

SlotStore& store_of(MethodContext& device) {
  SlotStore* store = device.store();
  if (store == nullptr) refuse(409, "this device has no flash (--state) to rotate into");
  return *store;
}

std::string slot_str(Slot slot) { return std::string(slot_name(slot)); }

// "slot" is optional: without it the device decides (the engine need not track the device's
// own slot names).
std::optional<Slot> optional_slot(const Poco::JSON::Object& o) {
  if (!o.has("slot")) return std::nullopt;
  return slot_field(o);
}

// The slot whose leaf has this SHA-256, if any.
std::optional<Slot> slot_holding(const SlotStore& store, const std::string& sha256) {
  for (const Slot s : {Slot::kPrimary, Slot::kSecondary}) {
    if (store.has(s) && store.leaf_sha256(s) == sha256) return s;
  }
  return std::nullopt;
}

void refuse_active(Slot slot) {
  refuse(409, "slot '" + slot_str(slot) + "' is the active slot (the device runs on it); a " +
                  "rotation goes into the free slot '" + slot_str(other_slot(slot)) + "'");
}

// --- keys and CSRs ---------------------------------------------------------------------------

const char* curve_of(const std::string& key_type) {
  if (key_type == "ec-p256") return "P-256";
  if (key_type == "ec-p384") return "P-384";
  return nullptr;
}

ossl::PkeyPtr generate_key(const std::string& key_type) {
  ossl::PkeyPtr key =
      ossl::generate_ec_key(key_type == "ec-p384" ? NID_secp384r1 : NID_X9_62_prime256v1);
  if (!key) throw std::runtime_error("key generation failed: " + ossl::last_error());
  return key;
}

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string private_key_pem(EVP_PKEY* key) {
  ossl::BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    throw std::runtime_error("the new key does not encode: " + ossl::last_error());
  }
  return bio_text(bio.get());
}

// Keys this process made, by the SHA-256 of the PEM it wrote for them. installCertificate reads
// the pending key back from flash; when the text is exactly what createCsr wrote, it takes the key
// made then instead of decoding and checking it again (a scalar multiplication). Bounded (a key
// never installed is forgotten when the map fills); any other text is decoded as before.
class MadeKeys {
 public:
  void add(const std::string& pem, EVP_PKEY* key) {
    const std::lock_guard lock(m_mutex);
    if (m_keys.size() >= kMax) m_keys.clear();
    if (EVP_PKEY_up_ref(key) == 1)
      m_keys.insert_or_assign(engine::thumbprint_sha256(bytes(pem)), ossl::PkeyPtr(key));
  }
  // The key whose PEM is `pem` (decoded, and checked, when this process did not make it).
  ossl::PkeyPtr parse(const std::string& pem, std::string& problem, bool forget) {
    {
      const std::lock_guard lock(m_mutex);
      const auto it = m_keys.find(engine::thumbprint_sha256(bytes(pem)));
      if (it != m_keys.end()) {
        ossl::PkeyPtr key = forget ? std::move(it->second) : up_ref(it->second.get());
        if (forget) m_keys.erase(it);
        if (key) return key;
      }
    }
    return ossl::parse_private_key(pem, problem);
  }

 private:
  static constexpr std::size_t kMax = 4096;
  static engine::ByteView bytes(const std::string& s) {
    return engine::ByteView(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  }
  static ossl::PkeyPtr up_ref(EVP_PKEY* key) {
    return ossl::PkeyPtr(EVP_PKEY_up_ref(key) == 1 ? key : nullptr);
  }
  std::mutex m_mutex;
  std::unordered_map<std::string, ossl::PkeyPtr> m_keys;
};

MadeKeys& made_keys() {
  static MadeKeys keys;
  return keys;
}

// PKCS#10, version 1, subject exactly CN=<device ID>, no attributes or extensions, signed with
// SHA-256 (P-256) or SHA-384 (P-384).
std::string make_csr(const DeviceId& id, EVP_PKEY* key, const std::string& key_type) {
  using ReqPtr = std::unique_ptr<X509_REQ, ossl::Deleter<X509_REQ, X509_REQ_free>>;
  ReqPtr req(X509_REQ_new());
  X509_NAME* name = req ? X509_REQ_get_subject_name(req.get()) : nullptr;
  const auto* cn = reinterpret_cast<const unsigned char*>(id.str().c_str());
  const EVP_MD* md = key_type == "ec-p384" ? EVP_sha384() : EVP_sha256();
  ossl::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!req || !bio || X509_REQ_set_version(req.get(), 0) != 1 ||
      X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, cn, -1, -1, 0) != 1 ||
      X509_REQ_set_pubkey(req.get(), key) != 1 || X509_REQ_sign(req.get(), key, md) <= 0 ||
      PEM_write_bio_X509_REQ(bio.get(), req.get()) != 1) {
    throw std::runtime_error("the CSR cannot be made: " + ossl::last_error());
  }
  return bio_text(bio.get());
}

// --- createCsr -----------------------------------------------------------------------------

// `reuse_key`: the CSR carries the key of the active slot (a device that cannot make keys).
MethodResponse create_csr(MethodContext& device, const Poco::Dynamic::Var& payload,
                          bool reuse_key) {
  const auto o = object_of(payload);
  const std::string job = job_id(*o);
  const auto asked = optional_slot(*o);
  std::string key_type = "ec-p256";
  if (o->has("keyType")) key_type = string_field(*o, "keyType");
  if (curve_of(key_type) == nullptr) {
    refuse(400, "field 'keyType' must be \"ec-p256\" or \"ec-p384\"");
  }
  SlotStore& store = store_of(device);
  const Slot slot = asked ? *asked : other_slot(store.active());
  if (store.active() == slot) refuse_active(slot);

  // The same job asking again (the engine retried): the key already in flash, so every CSR of
  // one job carries one public key. A damaged pending file is replaced like another job's.
  std::optional<PendingKey> pending;
  try {
    pending = store.pending(slot);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kIo) throw;
  }
  ossl::PkeyPtr key;
  if (pending && pending->job_id == job) {
    if (pending->key_type != key_type) {
      refuse(409, "job '" + job + "' already made a " + pending->key_type + " key for slot '" +
                      slot_str(slot) + "', not " + key_type);
    }
    std::string problem;
    key = made_keys().parse(pending->key_pem, problem, false);
  }
  if (!key) {
    if (reuse_key) {
      std::string problem;
      key = ossl::parse_private_key(store.read(store.active()).key_pem(), problem);
      if (!key) refuse(409, "the active slot's key cannot be read: " + problem);
      // curve_of accepted key_type: P-256 or P-384, told apart by their size.
      const int bits = key_type == "ec-p256" ? 256 : 384;
      if (EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_EC || EVP_PKEY_get_bits(key.get()) != bits) {
        refuse(409, "this device reuses its key, which is not an " + key_type + " key");
      }
    } else {
      key = generate_key(key_type);
    }
    const PendingKey made(job, key_type, private_key_pem(key.get()));
    store.write_pending(slot, made);
    made_keys().add(made.key_pem, key.get());
  }
  Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("csr", make_csr(device.device_id(), key.get(), key_type));
  body.set("slot", slot_str(slot));
  body.set("keyType", key_type);
  return MethodResponse::json(200, body);
}

// --- installCertificate --------------------------------------------------------------------

// The leaf's single CN, or "" when it has none or more than one.
std::string common_name(X509* cert) {
  X509_NAME* subject = X509_get_subject_name(cert);
  const int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (at < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, at) >= 0) return "";
  unsigned char* utf8 = nullptr;
  const int n =
      ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at)));
  if (n < 0) return "";
  std::string cn(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(n));
  OPENSSL_free(utf8);
  return cn;
}

// The chain, parsed strictly and checked: 1..8 certificates, each signed by the next, the leaf
// valid now and issued to this device.
std::vector<ossl::X509Ptr> checked_chain(const std::string& pem, const DeviceId& id) {
  if (pem.size() > kMaxChainBytes) {
    refuse(400, "field 'chain' is " + std::to_string(pem.size()) + " bytes; at most " +
                    std::to_string(kMaxChainBytes));
  }
  std::string problem;
  auto chain = ossl::parse_certificates(pem, problem);
  if (!problem.empty()) refuse(400, "field 'chain': " + problem);
  if (chain.empty()) refuse(400, "field 'chain' holds no PEM certificate");
  if (chain.size() > kMaxChainCerts) {
    refuse(400, "field 'chain' holds " + std::to_string(chain.size()) + " certificates; at most " +
                    std::to_string(kMaxChainCerts));
  }
  X509* leaf = chain.front().get();
  const std::string cn = common_name(leaf);
  if (cn != id.str()) {
    refuse(400, "field 'chain': the leaf certificate is for '" + cn.substr(0, 64) +
                    "', not for this device (" + id.str() + ")");
  }
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
    refuse(400, "field 'chain': the leaf certificate has expired");
  }
  for (std::size_t i = 0; i + 1 < chain.size(); ++i) {
    X509* issuer = chain[i + 1].get();
    if (X509_check_issued(issuer, chain[i].get()) != X509_V_OK ||
        X509_verify(chain[i].get(), X509_get0_pubkey(issuer)) != 1) {
      ERR_clear_error();
      refuse(400, "field 'chain': certificate " + std::to_string(i + 1) +
                      " is not signed by certificate " + std::to_string(i + 2) +
                      " (leaf first, then its issuers, in order)");
    }
  }
  return chain;
}

Poco::JSON::Object installed(Slot slot, const CertInfo& info) {
  Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("slot", slot_str(slot));
  body.set("sha256", info.sha256);
  body.set("serial", info.serial);
  body.set("notAfter", engine::iso8601(info.not_after));
  return body;
}

MethodResponse install_certificate(MethodContext& device, const Poco::Dynamic::Var& payload) {
  const auto o = object_of(payload);
  const std::string job = job_id(*o);
  const auto asked = optional_slot(*o);
  const std::string pem = string_field(*o, "chain");
  SlotStore& store = store_of(device);
  auto chain = checked_chain(pem, device.device_id());
  X509* leaf = chain.front().get();
  const CertInfo info = info_of(leaf);
  // Without "slot": the slot that holds this leaf already (a repeated call), else the free one.
  const Slot slot =
      asked ? *asked : slot_holding(store, info.sha256).value_or(other_slot(store.active()));

  // Installed already (a repeated call, before or after reprovision): the same answer.
  if (store.has(slot)) {
    // The thumbprint of what the slot holds: a slot written by write() was checked whole.
    if (store.leaf_sha256(slot) == info.sha256) {
      store.remove_pending(slot);  // left by a power cut between the write and the removal
      Poco::JSON::Object body = installed(slot, info);
      body.set("already", true);
      return MethodResponse::json(200, body);
    }
  }
  if (store.active() == slot) refuse_active(slot);
  std::optional<PendingKey> pending;
  try {
    pending = store.pending(slot);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kIo) throw;
    refuse(409, std::string("no pending key for this certificate: ") + e.what());
  }
  if (!pending) {
    refuse(409, "no pending key for this certificate: slot '" + slot_str(slot) +
                    "' has none (createCsr first)");
  }
  std::string problem;
  auto key = made_keys().parse(pending->key_pem, problem, true);
  if (!key || X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    refuse(409, "no pending key for this certificate: its public key is not the key slot '" +
                    slot_str(slot) + "' holds for job '" + pending->job_id + "'");
  }
  // The chain and key as checked here (CN, key match, links): written without decoding again.
  auto parsed = std::make_shared<ParsedCredential>();
  for (std::size_t i = 1; i < chain.size(); ++i) {
    if (X509_check_issued(chain[i].get(), chain[i].get()) == X509_V_OK) continue;  // a root
    sk_X509_push(parsed->issuers, chain[i].release());
  }
  parsed->leaf = std::move(chain.front());  // `leaf` is valid while `parsed` lives: not below
  parsed->key = std::move(key);
  store.write(
      slot, Credential(device.device_id(), pem, pending->key_pem, info,
                       store.dir().string() + " (" + slot_str(slot) + " slot)", std::move(parsed)));
  store.remove_pending(slot);
  return MethodResponse::json(200, installed(slot, info));
}

// --- reprovision ---------------------------------------------------------------------------

MethodResponse reprovision(MethodContext& device, const Poco::Dynamic::Var& payload) {
  const auto o = object_of(payload);
  job_id(*o);
  const auto asked = optional_slot(*o);
  std::string sha = string_field(*o, "sha256");
  if (sha.size() != 64 || !std::all_of(sha.begin(), sha.end(), [](char c) {
        return std::isxdigit(static_cast<unsigned char>(c)) != 0;
      })) {
    refuse(400, "field 'sha256' must be 64 hex digits (the leaf certificate's SHA-256)");
  }
  std::transform(sha.begin(), sha.end(), sha.begin(), [](char c) {
    return static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  });
  SlotStore& store = store_of(device);
  // Without "slot": the slot that holds the certificate named by its thumbprint.
  const Slot slot = asked ? *asked : slot_holding(store, sha).value_or(other_slot(store.active()));
  const auto held = store.leaf_sha256(slot);
  if (!held) refuse(409, "slot '" + slot_str(slot) + "' holds no certificate");
  if (*held != sha) {
    refuse(409, "slot '" + slot_str(slot) + "' holds certificate " + *held + ", not " + sha);
  }
  Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("slot", slot_str(slot));
  body.set("sha256", sha);
  const bool running =
      store.active() == slot && device.slot() == slot && device.certificate().sha256 == sha;
  if (!running) {
    store.read(slot);  // the whole slot checked before the switch: one it cannot use is 409
    // Durable before the answer: after a power cut the device runs it. On trial until it
    // connects: a certificate the broker keeps refusing sends the device back to its old slot.
    store.set_active(slot, true);
    device.reconnect_after_answer(true);
  }
  body.set("reconnecting", !running);
  return MethodResponse::json(200, body);
}

}  // namespace

void add_rotation_methods(MethodRegistry& registry, bool reuse_key) {
  registry.add("createCsr", guarded([reuse_key](MethodContext& d, const Poco::Dynamic::Var& p) {
                 return create_csr(d, p, reuse_key);
               }));
  registry.add("installCertificate", guarded(&install_certificate));
  registry.add("reprovision", guarded(&reprovision));
}

}  // namespace fleetsign::device
