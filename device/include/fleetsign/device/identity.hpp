// Device identities: a checked device ID and the credential a device connects with (certificate
// chain + private key), loaded from a batch's outputs (`fleetsign issue --out DIR`, per-device
// files or the bundle). Everything read here is hostile: every file is read bounded, every PEM
// block decoded strictly, the device ID comes from the certificate's single CN and passes the
// policy's device-ID rule before it names a file or a topic, and the key must match the
// certificate. Errors are fleetsign::Error naming the file (and line) and the cause.
//
// OpenSSL stays inside the library: a credential is PEM text plus the facts a device reports.
// All functions are thread-safe (no shared state).
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/policy/policy.hpp"
#include "fleetsign/result.hpp"

namespace fleetsign::device {

// RFC 5280 ub-common-name: the CN that carries the device ID has at most 64 characters.
inline constexpr std::size_t kMaxCommonNameLength = 64;
// Bounds on what a device reads: one key file, one certificate or chain file.
inline constexpr std::size_t kKeyFileLimit = 64 * 1024;
inline constexpr std::size_t kDeviceChainFileLimit = 256 * 1024;

// Reads at most `limit` bytes of `path` (fleetsign::read_bounded's errors) into a string of
// exactly the file's size: 10,000 devices must not keep 10,000 buffers of `limit` bytes. The
// scratch buffer is reused per thread and, for a `secret`, wiped after the copy.
std::string read_device_file(const std::filesystem::path& path, std::size_t limit,
                             std::string_view what, bool secret);

// A device ID that passed the policy's device-ID rule and the CN bound. Only `check` makes one,
// so an unchecked string cannot reach a file name or a topic. The alphabet (letters, digits, '-'
// and the policy's extras) holds no '/', '+', '#' or NUL.
class DeviceId {
 public:
  // kDeviceIdInvalid with the rule that failed.
  static Result<DeviceId> check(const policy::DeviceIdRule& rule, std::string_view id);
  const std::string& str() const noexcept { return m_value; }
  auto operator<=>(const DeviceId&) const = default;

 private:
  explicit DeviceId(std::string value) : m_value(std::move(value)) {}
  std::string m_value;
};

// What a device reports about the certificate it runs, in the engine's formats (upper-case hex).
struct CertInfo {
  std::string sha256;  // SHA-256 of the leaf's DER
  std::string serial;
  std::int64_t not_before = 0, not_after = 0;  // Unix seconds
};

struct ParsedCredential;  // its OpenSSL objects, private to the library

// A checked credential. Move-only: the key text is wiped when the object dies.
class Credential {
 public:
  Credential(DeviceId id, std::string chain_pem, std::string key_pem, CertInfo cert,
             std::string source, std::shared_ptr<const ParsedCredential> parsed);
  ~Credential();
  Credential(Credential&&) noexcept = default;
  Credential& operator=(Credential&&) noexcept = default;
  Credential(const Credential&) = delete;  // holds a private key: one copy, wiped once

  const DeviceId& id() const noexcept { return m_id; }
  const std::string& chain_pem() const noexcept { return m_chain_pem; }  // leaf first
  const std::string& key_pem() const noexcept { return m_key_pem; }      // PKCS#8 PEM
  const CertInfo& cert() const noexcept { return m_cert; }
  const std::string& source() const noexcept { return m_source; }  // file(s) it came from
  const std::shared_ptr<const ParsedCredential>& parsed() const noexcept { return m_parsed; }

 private:
  DeviceId m_id;
  std::string m_chain_pem, m_key_pem;
  CertInfo m_cert;
  std::string m_source;
  std::shared_ptr<const ParsedCredential> m_parsed;
};

// Checks a chain (PEM, leaf first, at least the leaf) and a key (one unencrypted PEM private
// key) and makes a credential. `source` names the input in messages. Throws Error:
// kCertificateMalformed (no or bad certificate), kDeviceIdInvalid (CN missing, repeated, or not a
// valid device ID), kKeyRejected (no, encrypted or bad key), kKeyCertMismatch.
Credential make_credential(std::string chain_pem, std::string key_pem, std::string source,
                           const policy::DeviceIdRule& rule);

// A batch output directory: every `{id}_cert.pem` is a device; its `{id}_fullchain.pem` is used
// when present, and `{id}_key.pem` must exist (batches issued from CSRs have no keys: the device
// keeps its own). The file name's {id} must equal the certificate's CN. Sorted by device ID.
// kIo when the directory or a file cannot be read, kInvalidArgument when it holds no device.
std::vector<Credential> load_batch_dir(const std::filesystem::path& dir,
                                       const policy::DeviceIdRule& rule);

// A batch's `bundle.pem`: CERTIFICATE blocks, each followed by its PRIVATE KEY block. Streamed
// line by line with bounded lines and blocks; anything else than those blocks (text outside a
// block, another block type, a certificate without a key) is refused naming the line.
// kDuplicateInBatch for a device ID seen twice. Sorted by device ID.
std::vector<Credential> load_bundle(const std::filesystem::path& file,
                                    const policy::DeviceIdRule& rule);

}  // namespace fleetsign::device
