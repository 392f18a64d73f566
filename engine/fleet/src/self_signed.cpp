// Self-signed device certificates (`issue --self-signed`): the key pair is made here in software
// and signs its own certificate. No registry CA is involved, so nothing goes into the certificates
// table; the audit log records what was made.
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <cstdio>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/error.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

namespace {

constexpr std::int64_t kBackdateSeconds = 60;

ossl::PkeyPtr generate_key(policy::KeyAlgorithm alg) {
  EVP_PKEY* key = nullptr;
  switch (alg) {
    case policy::KeyAlgorithm::kEcP256:
      key = EVP_EC_gen("P-256");
      break;
    case policy::KeyAlgorithm::kEcP384:
      key = EVP_EC_gen("P-384");
      break;
    case policy::KeyAlgorithm::kRsa2048:
      key = EVP_RSA_gen(2048);
      break;
    case policy::KeyAlgorithm::kRsa3072:
      key = EVP_RSA_gen(3072);
      break;
    case policy::KeyAlgorithm::kRsa4096:
      key = EVP_RSA_gen(4096);
      break;
  }
  if (key == nullptr) {
    throw Error(ErrorCode::kInternal, "generating a device key: " + ossl::last_error());
  }
  return ossl::PkeyPtr(key);
}

void add_ext(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  ossl::X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    throw Error(ErrorCode::kInternal,
                std::string("building extension ") + OBJ_nid2sn(nid) + ": " + ossl::last_error());
  }
}

std::string private_key_pem(EVP_PKEY* key) {
  std::unique_ptr<BIO, ossl::Deleter<BIO_free>> bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    throw Error(ErrorCode::kInternal, "encoding the device key: " + ossl::last_error());
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

void write_file(const std::filesystem::path& path, const std::string& text, mode_t mode) {
  const std::string tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) {
    throw Error(ErrorCode::kIo, tmp + ": cannot be created");
  }
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    throw Error(ErrorCode::kIo, path.string() + ": cannot be written");
  }
}

}  // namespace

SelfSignedDevice::~SelfSignedDevice() { OPENSSL_cleanse(key_pem.data(), key_pem.size()); }

SelfSignedDevice make_self_signed_device(Stores& registry, const policy::Policy& policy,
                                         const Clock& clock, RandomSource& random,
                                         const std::string& device_id, policy::KeyAlgorithm alg,
                                         std::optional<int> days) {
  // 1. Inputs: the ID and the key under the policy, a positive validity.
  // The same device-ID check as every certificate's CN (at most 64 characters).
  if (auto checked = DeviceId::check(policy, device_id); !checked) {
    throw Error(ErrorCode::kDeviceIdInvalid, "--id: " + checked.error().message);
  }
  if (auto why = policy::check_device_key(policy, describe_key_algorithm(alg))) {
    throw Error(ErrorCode::kPolicyInvalid,
                "--key " + std::string(policy::key_algorithm_name(alg)) + ": " + *why);
  }
  const int valid_days = days.value_or(policy.validity.device_days);
  if (valid_days <= 0 || valid_days > 36500) {
    throw Error(ErrorCode::kInvalidArgument,
                "validity must be 1 to 36500 days, got " + std::to_string(valid_days));
  }
  // 2. The key, and the certificate it signs.
  auto key = generate_key(alg);
  ossl::X509Ptr cert(X509_new());
  X509_set_version(cert.get(), X509_VERSION_3);
  std::uint8_t serial[16];
  random.fill(serial);
  serial[0] = static_cast<std::uint8_t>((serial[0] & 0x3F) | 0x40);  // positive, no leading zero
  ossl::BnPtr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get()));
  ossl::X509NamePtr name(X509_NAME_new());
  X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(device_id.c_str()), -1, -1, 0);
  X509_set_subject_name(cert.get(), name.get());
  X509_set_issuer_name(cert.get(), name.get());
  const std::int64_t not_before = clock.now() - kBackdateSeconds;
  const std::int64_t not_after = not_before + std::int64_t{valid_days} * 86400;
  ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(not_before));
  ASN1_TIME_set(X509_getm_notAfter(cert.get()), static_cast<time_t>(not_after));
  X509_set_pubkey(cert.get(), key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
  add_ext(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature");
  add_ext(cert.get(), &ctx, NID_ext_key_usage, "clientAuth");
  add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash");
  // 3. The intent (serial + TBS), committed before the key signs, as for every certificate:
  // its serial is never used again, whatever happens next.
  CaCertIntent intent;
  intent.serial = ossl::serial_hex(cert.get());
  intent.kind = "self-signed";
  intent.subject_name = device_id;
  intent.issuer_ca = device_id;  // it names itself, as a root does
  intent.tbs_der = ossl::tbs_der(cert.get());
  registry.record_ca_cert_intent(intent);
  // 4. Sign and verify; then the certificate is recorded.
  const EVP_MD* md = alg == policy::KeyAlgorithm::kEcP384 ? EVP_sha384() : EVP_sha256();
  if (X509_sign(cert.get(), key.get(), md) <= 0 || X509_verify(cert.get(), key.get()) != 1) {
    registry.abandon_ca_cert_intent(intent.serial);
    throw Error(ErrorCode::kSignFailed,
                "self-signing the certificate of '" + device_id + "': " + ossl::last_error());
  }
  registry.record_ca_cert_issued(intent.serial, ossl::to_der(cert.get()));
  // 5. The result, audited (there is no issuing CA whose records would show it).
  SelfSignedDevice out;
  out.device_id = device_id;
  out.cert = ossl::to_der(cert.get());
  out.key_pem = private_key_pem(key.get());
  out.serial = ossl::serial_hex(cert.get());
  out.sha1 = thumbprint_sha1(out.cert);
  out.sha256 = thumbprint_sha256(out.cert);
  out.not_before = not_before;
  out.not_after = not_after;
  registry.audit(
      "cert.self-signed", device_id,
      json_object(
          {{"serial", out.serial}, {"sha256", out.sha256}, {"not_after", iso8601(not_after)}}));
  return out;
}

std::vector<std::string> write_self_signed_files(const std::filesystem::path& dir,
                                                 const SelfSignedDevice& device) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  const auto cert_path = dir / (device.device_id + "_cert.pem");
  const auto key_path = dir / (device.device_id + "_key.pem");
  write_file(key_path, device.key_pem, 0600);
  write_file(cert_path, pem(device.cert, "CERTIFICATE"), 0644);
  return {cert_path.string(), key_path.string()};
}

}  // namespace fleetsign::engine
