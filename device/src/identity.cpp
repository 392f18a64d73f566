#include "fleetsign/device/identity.hpp"

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <ctime>
#include <fstream>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "ossl.hpp"

namespace fleetsign::device {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------

std::string read_device_file(const fs::path& path, std::size_t limit, std::string_view what,
                             bool secret) {
  thread_local std::vector<char> scratch;
  if (scratch.size() < limit) scratch.resize(limit);
  std::size_t n = 0;
  try {
    n = read_bounded_into(path.string(), std::span<char>(scratch.data(), limit), what);
  } catch (...) {
    if (secret) OPENSSL_cleanse(scratch.data(), limit);
    throw;
  }
  std::string out(scratch.data(), n);
  if (secret) OPENSSL_cleanse(scratch.data(), n);
  return out;
}

Result<DeviceId> DeviceId::check(const policy::DeviceIdRule& rule, std::string_view id) {
  if (auto why = policy::check_device_id(rule, id)) {
    return fail(ErrorCode::kDeviceIdInvalid, *why);
  }
  if (id.size() > kMaxCommonNameLength) {
    return fail(ErrorCode::kDeviceIdInvalid, "device ID is " + std::to_string(id.size()) +
                                                 " characters; a certificate CN holds at most " +
                                                 std::to_string(kMaxCommonNameLength));
  }
  return DeviceId(std::string(id));
}

Credential::Credential(DeviceId id, std::string chain_pem, std::string key_pem, CertInfo cert,
                       std::string source, std::shared_ptr<const ParsedCredential> parsed)
    : m_id(std::move(id)),
      m_chain_pem(std::move(chain_pem)),
      m_key_pem(std::move(key_pem)),
      m_cert(std::move(cert)),
      m_source(std::move(source)),
      m_parsed(std::move(parsed)) {}

Credential::~Credential() {
  if (!m_key_pem.empty()) OPENSSL_cleanse(m_key_pem.data(), m_key_pem.size());
}

namespace {

// The single CN of `cert` as a checked device ID.
DeviceId device_id_of(X509* cert, const policy::DeviceIdRule& rule, const std::string& source) {
  X509_NAME* subject = X509_get_subject_name(cert);
  const int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (at < 0) {
    throw Error(ErrorCode::kDeviceIdInvalid, source + ": the certificate's subject has no CN");
  }
  if (X509_NAME_get_index_by_NID(subject, NID_commonName, at) >= 0) {
    throw Error(ErrorCode::kDeviceIdInvalid,
                source + ": the certificate's subject has more than one CN");
  }
  unsigned char* utf8 = nullptr;
  const int n =
      ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at)));
  if (n < 0) {
    throw Error(ErrorCode::kDeviceIdInvalid, source + ": the certificate's CN does not decode");
  }
  const std::string cn(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(n));
  OPENSSL_free(utf8);
  auto id = DeviceId::check(rule, cn);
  if (!id) {
    throw Error(ErrorCode::kDeviceIdInvalid,
                source + ": the certificate's CN is not a valid device ID: " + id.error().message);
  }
  return std::move(id).value();
}

std::int64_t unix_time(const ASN1_TIME* t) {
  std::tm tm{};
  return ASN1_TIME_to_tm(t, &tm) == 1 ? static_cast<std::int64_t>(timegm(&tm)) : 0;
}

}  // namespace

CertInfo info_of(X509* leaf) {
  unsigned char* der = nullptr;
  const int len = i2d_X509(leaf, &der);
  if (len <= 0) throw Error(ErrorCode::kCertificateMalformed, "certificate does not encode");
  CertInfo info;
  info.sha256 = engine::thumbprint_sha256(engine::ByteView(der, static_cast<std::size_t>(len)));
  OPENSSL_free(der);
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), nullptr);
  std::vector<std::uint8_t> serial(static_cast<std::size_t>(BN_num_bytes(bn)));
  BN_bn2bin(bn, serial.data());
  BN_free(bn);
  info.serial = engine::hex_upper(serial);
  info.not_before = unix_time(X509_get0_notBefore(leaf));
  info.not_after = unix_time(X509_get0_notAfter(leaf));
  return info;
}

Credential make_credential(std::string chain_pem, std::string key_pem, std::string source,
                           const policy::DeviceIdRule& rule) {
  std::string problem;
  auto chain = ossl::parse_certificates(chain_pem, problem);
  if (!problem.empty() || chain.empty()) {
    throw Error(ErrorCode::kCertificateMalformed,
                source + ": " + (problem.empty() ? "holds no certificate" : problem));
  }
  DeviceId id = device_id_of(chain.front().get(), rule, source);
  auto parsed = std::make_shared<ParsedCredential>();
  parsed->key = ossl::parse_private_key(key_pem, problem);
  if (!parsed->key) {
    throw Error(ErrorCode::kKeyRejected, source + ": " + problem);
  }
  if (X509_check_private_key(chain.front().get(), parsed->key.get()) != 1) {
    ERR_clear_error();
    throw Error(ErrorCode::kKeyCertMismatch,
                source + ": the private key does not match the certificate of " + id.str());
  }
  CertInfo info = info_of(chain.front().get());
  parsed->leaf = std::move(chain.front());
  // The issuers the device presents: intermediates, not a self-signed root (a trust anchor the
  // broker has; sending it costs the broker a certificate decode per handshake).
  for (std::size_t i = 1; i < chain.size(); ++i) {
    X509* cert = chain[i].get();
    if (X509_check_issued(cert, cert) == X509_V_OK) continue;
    sk_X509_push(parsed->issuers, chain[i].release());
  }
  return Credential(std::move(id), std::move(chain_pem), std::move(key_pem), std::move(info),
                    std::move(source), std::move(parsed));
}

namespace {

constexpr std::size_t kMaxDevices = 1'000'000;
constexpr std::string_view kCertSuffix = "_cert.pem";

void sort_and_check_unique(std::vector<Credential>& out, const std::string& origin) {
  std::sort(out.begin(), out.end(),
            [](const Credential& a, const Credential& b) { return a.id() < b.id(); });
  for (std::size_t i = 1; i < out.size(); ++i) {
    if (out[i].id() == out[i - 1].id()) {
      throw Error(ErrorCode::kDuplicateInBatch, origin + ": device " + out[i].id().str() +
                                                    " appears twice (" + out[i - 1].source() +
                                                    ", " + out[i].source() + ")");
    }
  }
  if (out.empty()) {
    throw Error(ErrorCode::kInvalidArgument, origin + ": holds no device");
  }
}

// One device of a batch directory, from its `{id}_cert.pem` (named by `stem`).
Credential load_dir_device(const fs::path& dir, const std::string& stem,
                           const policy::DeviceIdRule& rule) {
  const fs::path cert = dir / (stem + std::string(kCertSuffix));
  auto named = DeviceId::check(rule, stem);
  if (!named) {
    throw Error(ErrorCode::kDeviceIdInvalid,
                cert.string() + ": the file name does not start with a valid device ID: " +
                    named.error().message);
  }
  std::error_code ec;
  const fs::path full = dir / (stem + "_fullchain.pem");
  const fs::path chain_file = fs::exists(full, ec) ? full : cert;
  const fs::path key_file = dir / (stem + "_key.pem");
  if (!fs::exists(key_file, ec)) {
    throw Error(ErrorCode::kIo, key_file.string() +
                                    ": missing (a batch issued from CSRs has no keys: run "
                                    "devices whose keys were generated by the batch)");
  }
  Credential c = make_credential(
      read_device_file(chain_file, kDeviceChainFileLimit, "device certificate", false),
      read_device_file(key_file, kKeyFileLimit, "device key", true),
      chain_file.string() + " + " + key_file.string(), rule);
  if (c.id() != named.value()) {
    throw Error(ErrorCode::kDeviceIdInvalid, chain_file.string() + ": the certificate's CN '" +
                                                 c.id().str() + "' is not the file's device " +
                                                 named->str());
  }
  return c;
}

}  // namespace

std::vector<Credential> load_batch_dir(const fs::path& dir, const policy::DeviceIdRule& rule) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw Error(ErrorCode::kIo, dir.string() + ": not a directory");
  }
  std::vector<Credential> out;
  fs::directory_iterator it(dir, ec);
  if (ec) throw Error(ErrorCode::kIo, dir.string() + ": cannot be listed: " + ec.message());
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= kCertSuffix.size() ||
        name.compare(name.size() - kCertSuffix.size(), kCertSuffix.size(), kCertSuffix) != 0) {
      continue;
    }
    if (out.size() == kMaxDevices) {
      throw Error(ErrorCode::kInputTooLarge,
                  dir.string() + ": more than " + std::to_string(kMaxDevices) + " devices");
    }
    out.push_back(load_dir_device(dir, name.substr(0, name.size() - kCertSuffix.size()), rule));
  }
  sort_and_check_unique(out, dir.string());
  return out;
}

// ---------------------------------------------------------------------------------------------
// bundle.pem, streamed

namespace {

class BundleReader {
 public:
  static constexpr std::size_t kMaxLine = 64 * 1024;
  static constexpr std::size_t kMaxBlock = 64 * 1024;

  BundleReader(const fs::path& file, const policy::DeviceIdRule& rule)
      : m_name(file.string()), m_in(file, std::ios::binary), m_rule(rule) {
    std::error_code ec;
    if (fs::is_directory(file, ec)) {
      throw Error(ErrorCode::kIo, "bundle " + m_name + ": is a directory, not a file");
    }
    if (!m_in) throw Error(ErrorCode::kIo, "bundle " + m_name + ": cannot be opened");
  }

  std::vector<Credential> read_all() {
    std::string line;
    std::string cert_pem;  // the certificate waiting for its key
    std::int64_t cert_line = 0;
    while (read_line(line)) {
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      if (line.rfind("-----BEGIN ", 0) != 0) {
        throw bad(m_line, "text outside a PEM block");
      }
      const std::int64_t start = m_line;
      std::string block = read_block(line, start);
      if (line == "-----BEGIN CERTIFICATE-----") {
        if (!cert_pem.empty()) throw bad(cert_line, "certificate has no PRIVATE KEY after it");
        cert_pem = std::move(block);
        cert_line = start;
      } else if (line.find("PRIVATE KEY-----") != std::string::npos) {
        if (cert_pem.empty()) throw bad(start, "private key follows no certificate");
        add(std::move(cert_pem), std::move(block), cert_line);
        cert_pem.clear();
      } else {
        throw bad(start, "unexpected PEM block " + line);
      }
    }
    if (!cert_pem.empty()) throw bad(cert_line, "certificate has no PRIVATE KEY after it");
    sort_and_check_unique(m_out, "bundle " + m_name);
    return std::move(m_out);
  }

 private:
  Error bad(std::int64_t line, const std::string& why) const {
    return Error(ErrorCode::kCertificateMalformed,
                 "bundle " + m_name + ":" + std::to_string(line) + ": " + why);
  }
  // The block that starts with `begin` (already read), up to its END line.
  std::string read_block(const std::string& begin, std::int64_t start) {
    std::string block = begin + "\n", line;
    const std::string end = "-----END " + begin.substr(11);
    while (read_line(line)) {
      if (block.size() + line.size() + 1 > kMaxBlock) {
        throw Error(ErrorCode::kInputTooLarge, "bundle " + m_name + ":" + std::to_string(start) +
                                                   ": PEM block larger than " +
                                                   std::to_string(kMaxBlock) + " bytes");
      }
      block += line;
      block += '\n';
      if (line == end) return block;
    }
    throw bad(start, "PEM block has no END line");
  }
  void add(std::string cert_pem, std::string key_pem, std::int64_t line) {
    if (m_out.size() == kMaxDevices) {
      throw Error(ErrorCode::kInputTooLarge,
                  "bundle " + m_name + ": more than " + std::to_string(kMaxDevices) + " devices");
    }
    m_out.push_back(make_credential(std::move(cert_pem), std::move(key_pem),
                                    m_name + ":" + std::to_string(line), m_rule));
  }
  // One line without its '\n', bounded: getline into a buffer of kMaxLine + 1 bytes, so a file
  // without line breaks (/dev/zero) is refused after kMaxLine bytes, never held whole.
  bool read_line(std::string& line) {
    if (m_buf.empty()) m_buf.resize(kMaxLine + 1);
    m_in.getline(m_buf.data(), static_cast<std::streamsize>(m_buf.size()));
    const auto extracted = static_cast<std::size_t>(m_in.gcount());
    if (m_in.fail() && !m_in.eof()) {
      if (m_in.bad()) throw Error(ErrorCode::kIo, "bundle " + m_name + ": cannot be read");
      throw Error(ErrorCode::kInputTooLarge, "bundle " + m_name + ": line " +
                                                 std::to_string(m_line + 1) + " is longer than " +
                                                 std::to_string(kMaxLine) + " bytes");
    }
    if (extracted == 0) return false;
    line.assign(m_buf.data(), m_in.eof() ? extracted : extracted - 1);
    ++m_line;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
  }

  std::string m_name;
  std::ifstream m_in;
  const policy::DeviceIdRule& m_rule;
  std::string m_buf;
  std::int64_t m_line = 0;
  std::vector<Credential> m_out;
};

}  // namespace

std::vector<Credential> load_bundle(const fs::path& file, const policy::DeviceIdRule& rule) {
  return BundleReader(file, rule).read_all();
}

}  // namespace fleetsign::device
