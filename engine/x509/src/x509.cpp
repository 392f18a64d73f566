#include "fleetsign/engine/x509.hpp"

#include <openssl/asn1.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cstring>
#include <ctime>

#include "der.hpp"
#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/x509_ossl.hpp"
#include "fleetsign/error.hpp"
#include "leaf.hpp"
#include "oids.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

std::int64_t SystemClock::now() const { return static_cast<std::int64_t>(std::time(nullptr)); }

void CsprngSource::fill(std::span<std::uint8_t> out) {
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) {
    throw Error(ErrorCode::kInternal, "the OpenSSL CSPRNG failed to produce random bytes");
  }
}

std::string hex_upper(ByteView bytes) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out(bytes.size() * 2, '0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return out;
}

std::string thumbprint_sha1(ByteView der) {
  std::uint8_t md[SHA_DIGEST_LENGTH];
  EVP_Digest(der.data(), der.size(), md, nullptr, EVP_sha1(), nullptr);
  return hex_upper(md);
}

std::string thumbprint_sha256(ByteView der) {
  std::uint8_t md[SHA256_DIGEST_LENGTH];
  EVP_Digest(der.data(), der.size(), md, nullptr, EVP_sha256(), nullptr);
  return hex_upper(md);
}

namespace {

// True when `spki` is an id-ecPublicKey SubjectPublicKeyInfo whose point is not in uncompressed
// form (0x02/0x03 compressed, 0x06/0x07 hybrid): the only encodings the key hash re-encodes.
bool ec_point_not_uncompressed(ByteView spki) {
  der::Bytes in = spki, body, alg, oid_tlv, bits;
  der::Tlv t;
  if (!der::expect(in, der::tag::kSequence, t)) return false;
  body = t.content;
  if (!der::expect(body, der::tag::kSequence, t)) return false;
  alg = t.content;
  if (!der::expect(alg, der::tag::kOid, t)) return false;
  oid_tlv = t.content;
  if (!der::expect(body, der::tag::kBitString, t) || t.content.size() < 2) return false;
  bits = t.content;
  const std::uint8_t form = bits[1];  // bits[0]: the unused-bits count
  if (form != 0x02 && form != 0x03 && form != 0x06 && form != 0x07) return false;
  return der::equal(oid_tlv, oid::kEcPublicKey);
}

}  // namespace

std::string key_sha256_of_spki(ByteView spki) {
  if (!ec_point_not_uncompressed(spki)) return thumbprint_sha256(spki);
  // Rare: decode and re-encode the point uncompressed, so one key has one identity.
  const unsigned char* p = spki.data();
  ossl::PkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  unsigned char* canonical = nullptr;
  const int len =
      key && p == spki.data() + spki.size() &&
              EVP_PKEY_set_utf8_string_param(key.get(), OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                             "uncompressed") == 1
          ? i2d_PUBKEY(key.get(), &canonical)
          : -1;
  // A key OpenSSL cannot decode is hashed as sent (the CSR check refuses it before issuance).
  std::string out = len > 0 ? thumbprint_sha256(ByteView(canonical, static_cast<std::size_t>(len)))
                            : thumbprint_sha256(spki);
  OPENSSL_free(canonical);
  if (len <= 0) ERR_clear_error();
  return out;
}

namespace {

// A SubjectPublicKeyInfo that OpenSSL would encode again byte for byte: id-ecPublicKey with a
// named curve (P-256, P-384, P-521), a BIT STRING without unused bits, strict DER throughout.
bool canonical_ec_spki(ByteView spki) {
  der::Bytes in = spki, body, alg;
  der::Tlv t, alg_seq, alg_oid, curve, bits;
  if (!der::expect(in, der::tag::kSequence, t) || !in.empty()) return false;
  body = t.content;
  if (!der::expect(body, der::tag::kSequence, alg_seq) ||
      !der::expect(body, der::tag::kBitString, bits) || !body.empty()) {
    return false;
  }
  alg = alg_seq.content;
  if (!der::expect(alg, der::tag::kOid, alg_oid) || !der::expect(alg, der::tag::kOid, curve) ||
      !alg.empty() || !der::equal(alg_oid.content, oid::kEcPublicKey)) {
    return false;
  }
  const der::Bytes c = curve.content;
  return (der::equal(c, oid::kP256) || der::equal(c, oid::kP384) || der::equal(c, oid::kP521)) &&
         bits.content.size() >= 2 && bits.content[0] == 0;
}

}  // namespace

std::string key_sha256_of_cert(ByteView cert_der) {
  // The engine's strict DER walk finds the SubjectPublicKeyInfo without decoding the key: d2i_X509
  // decodes it through OpenSSL 3.0's provider decoders, which cost more than the hash (a
  // rollover hashes the replaced certificate of every device). Only a named-curve EC key in strict
  // DER is taken as it stands (OpenSSL's encoding of it is the same bytes); anything else (RSA, a
  // v1 certificate, BER anywhere) takes OpenSSL's decoder and encoder, as before.
  LeafView leaf;
  std::string why;
  if (parse_leaf(cert_der, leaf, why) && canonical_ec_spki(leaf.spki)) {
    return key_sha256_of_spki(leaf.spki);
  }
  const unsigned char* p = cert_der.data();
  ossl::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(cert_der.size())));
  if (!cert) {
    ERR_clear_error();
    return {};
  }
  unsigned char* spki = nullptr;
  const int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert.get()), &spki);
  std::string out;
  if (len > 0) out = key_sha256_of_spki(ByteView(spki, static_cast<std::size_t>(len)));
  OPENSSL_free(spki);
  return out;
}

void append_pem(std::string& out, ByteView der, std::string_view label) {
  out += "-----BEGIN ";
  out += label;
  out += "-----\n";
  // 48 input bytes make one 64-column line.
  char line[66];
  for (std::size_t off = 0; off < der.size(); off += 48) {
    const int n = static_cast<int>(std::min<std::size_t>(48, der.size() - off));
    const int w = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(line), der.data() + off, n);
    out.append(line, static_cast<std::size_t>(w));
    out.push_back('\n');
  }
  out += "-----END ";
  out += label;
  out += "-----\n";
}

std::string pem(ByteView der, std::string_view label) {
  std::string out;
  out.reserve(der.size() * 4 / 3 + 64);
  append_pem(out, der, label);
  return out;
}

namespace {

bool decode_base64(std::string_view text, Der& out) {
  std::string clean;
  clean.reserve(text.size());
  for (const char c : text) {
    if (c != '\n' && c != '\r' && c != ' ' && c != '\t') {
      clean.push_back(c);
    }
  }
  if (clean.empty() || clean.size() % 4 != 0) {
    return false;
  }
  out.resize(clean.size() / 4 * 3);
  const int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(clean.data()),
                                static_cast<int>(clean.size()));
  if (n < 0) {
    return false;
  }
  std::size_t pad = 0;
  if (clean.back() == '=') ++pad;
  if (clean.size() > 1 && clean[clean.size() - 2] == '=') ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return true;
}

// Splits PEM text into blocks with the given labels; each with the line it starts on.
std::vector<CsrBlob> pem_blocks(std::string_view text,
                                std::initializer_list<std::string_view> labels, bool* any_marker) {
  std::vector<CsrBlob> blocks;
  int line_no = 1;
  std::size_t pos = 0;
  bool inside = false;
  std::string body;
  std::string current_label;
  CsrBlob block;
  while (pos <= text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!inside && line.substr(0, 11) == "-----BEGIN ") {
      for (const auto label : labels) {
        if (line == "-----BEGIN " + std::string(label) + "-----") {
          inside = true;
          current_label = label;
          block = CsrBlob{};
          block.line = line_no;
          body.clear();
        }
      }
      *any_marker = true;
    } else if (inside && line.substr(0, 9) == "-----END ") {
      inside = false;
      if (line != "-----END " + current_label + "-----") {
        block.problem = "PEM block starting on line " + std::to_string(block.line) +
                        " ends with a mismatched END line";
      } else if (!decode_base64(body, block.der)) {
        block.problem =
            "PEM block starting on line " + std::to_string(block.line) + " is not valid base64";
      }
      blocks.push_back(std::move(block));
    } else if (inside) {
      body.append(line);
    }
    if (end == text.size()) break;
    pos = end + 1;
    ++line_no;
  }
  if (inside) {
    block.problem = "PEM block starting on line " + std::to_string(block.line) + " has no END line";
    blocks.push_back(std::move(block));
  }
  return blocks;
}

}  // namespace

std::vector<Der> read_certificates(const std::filesystem::path& file, std::string_view what,
                                   std::size_t limit) {
  return certificates_from_text(read_bounded(file.string(), limit, what), file.string());
}

std::vector<Der> certificates_from_text(std::string_view text, const std::string& name) {
  bool marker = false;
  std::vector<Der> out;
  for (auto& b : pem_blocks(text, {"CERTIFICATE"}, &marker)) {
    if (!b.problem.empty()) {
      throw Error(ErrorCode::kCertificateMalformed, name + ": " + b.problem);
    }
    out.push_back(std::move(b.der));
  }
  if (!marker && !text.empty()) {
    out.emplace_back(text.begin(), text.end());  // DER
  }
  if (out.empty()) {
    throw Error(ErrorCode::kCertificateMalformed, name + ": holds no certificate");
  }
  for (const auto& der : out) {
    if (!ossl::from_der(der)) {
      throw Error(ErrorCode::kCertificateMalformed, name + ": not a valid X.509 certificate");
    }
  }
  return out;
}

std::vector<CsrBlob> parse_csr_text(std::string_view text) {
  bool marker = false;
  auto blocks = pem_blocks(text, {"CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"}, &marker);
  if (!marker) {
    CsrBlob b;
    b.der.assign(text.begin(), text.end());
    if (text.empty()) b.problem = "empty input";
    blocks.push_back(std::move(b));
  } else if (blocks.empty()) {
    CsrBlob b;
    b.problem = "no CERTIFICATE REQUEST block";
    blocks.push_back(std::move(b));
  }
  return blocks;
}

std::vector<CsrBlob> read_csrs(const std::filesystem::path& file) {
  return parse_csr_text(read_bounded(file.string(), kCsrFileLimit, "CSR file"));
}

CertSummary summarize_certificate(ByteView der) {
  auto cert = ossl::from_der(der);
  if (!cert) {
    throw Error(ErrorCode::kCertificateMalformed, "not a valid X.509 certificate");
  }
  return summarize_certificate(cert.get(), der);
}

CertSummary summarize_certificate(X509* cert, ByteView der) {
  CertSummary s;
  s.subject = ossl::subject_line(X509_get_subject_name(cert));
  s.issuer = ossl::subject_line(X509_get_issuer_name(cert));
  s.serial = ossl::serial_hex(cert);
  s.not_before = ossl::to_unix(X509_get0_notBefore(cert));
  s.not_after = ossl::to_unix(X509_get0_notAfter(cert));
  s.sha1 = thumbprint_sha1(der);
  s.sha256 = thumbprint_sha256(der);
  s.is_ca = X509_check_ca(cert) != 0;
  char cn[256] = {0};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
  s.common_name = cn;
  return s;
}

std::string iso8601(std::int64_t unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// ---------------------------------------------------------------------------------------------

namespace ossl {

X509NamePtr parse_subject(std::string_view dn) {
  auto fail = [&](const std::string& why) {
    return Error(ErrorCode::kInvalidSubject, "subject '" + std::string(dn) + "': " + why);
  };
  if (dn.empty() || dn[0] != '/') {
    throw fail("must start with '/', e.g. /CN=IoT Root CA/O=MyOrg/C=US");
  }
  X509NamePtr name(X509_NAME_new());
  std::size_t i = 1;
  while (i < dn.size()) {
    std::string type, value;
    bool in_value = false;
    for (; i < dn.size(); ++i) {
      char c = dn[i];
      if (c == '\\' && i + 1 < dn.size()) {
        (in_value ? value : type).push_back(dn[++i]);
        continue;
      }
      if (c == '/') break;
      if (c == '=' && !in_value) {
        in_value = true;
        continue;
      }
      (in_value ? value : type).push_back(c);
    }
    ++i;  // skip '/'
    if (!in_value || type.empty()) {
      throw fail("'" + type + "' is not of the form TYPE=value");
    }
    if (value.empty()) {
      throw fail("'" + type + "' has an empty value");
    }
    if (OBJ_txt2nid(type.c_str()) == NID_undef) {
      throw fail("unknown attribute type '" + type + "'");
    }
    if (X509_NAME_add_entry_by_txt(name.get(), type.c_str(), MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1,
                                   0) != 1) {
      throw fail("value of '" + type + "' is not acceptable (" + last_error() + ")");
    }
  }
  if (X509_NAME_entry_count(name.get()) == 0) {
    throw fail("no attributes");
  }
  return name;
}

std::string subject_line(const X509_NAME* name) {
  std::string out;
  for (int i = 0; i < X509_NAME_entry_count(name); ++i) {
    const X509_NAME_ENTRY* e = X509_NAME_get_entry(name, i);
    const int nid = OBJ_obj2nid(X509_NAME_ENTRY_get_object(e));
    const char* sn = nid != NID_undef ? OBJ_nid2sn(nid) : "?";
    unsigned char* utf8 = nullptr;
    const int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
    out += '/';
    out += sn;
    out += '=';
    for (int j = 0; j < len; ++j) {
      const char c = static_cast<char>(utf8[j]);
      if (c == '/' || c == '\\') out += '\\';
      out += c;
    }
    OPENSSL_free(utf8);
  }
  return out;
}

Der to_der(const X509* cert) {
  const int len = i2d_X509(cert, nullptr);
  Der out(static_cast<std::size_t>(len > 0 ? len : 0));
  unsigned char* p = out.data();
  i2d_X509(cert, &p);
  return out;
}

Der tbs_der(X509* cert) {
  unsigned char* tbs = nullptr;
  const int len = i2d_re_X509_tbs(cert, &tbs);
  Der out;
  if (len > 0) {
    out.assign(tbs, tbs + len);
  }
  OPENSSL_free(tbs);
  return out;
}

X509Ptr from_der(ByteView der) {
  const unsigned char* p = der.data();
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (cert && p != der.data() + der.size()) {
    return nullptr;  // trailing garbage
  }
  ERR_clear_error();
  return cert;
}

PkeyPtr public_key_from_spki(ByteView spki) {
  const unsigned char* p = spki.data();
  PkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki.size())));
  ERR_clear_error();
  return key;
}

std::string serial_hex(const X509* cert) {
  BnPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(BN_num_bytes(bn.get())));
  BN_bn2bin(bn.get(), bytes.data());
  return hex_upper(bytes);
}

std::int64_t to_unix(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) {
    return 0;
  }
  return static_cast<std::int64_t>(timegm(&tm));
}

std::string last_error() {
  std::string out;
  unsigned long e = 0;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

}  // namespace ossl
}  // namespace fleetsign::engine
