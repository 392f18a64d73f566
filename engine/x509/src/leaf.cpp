#include "leaf.hpp"

#include <ctime>

namespace fleetsign::engine {

namespace {

constexpr std::uint8_t kBasicConstraints[] = {0x55, 0x1D, 0x13};
constexpr std::uint8_t kKeyUsage[] = {0x55, 0x1D, 0x0F};
constexpr std::uint8_t kExtKeyUsage[] = {0x55, 0x1D, 0x25};
constexpr std::uint8_t kClientAuth[] = {0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02};
constexpr std::uint8_t kAnyEku[] = {0x55, 0x1D, 0x25, 0x00};
// Extensions a device certificate may mark critical that do not restrict client authentication.
constexpr std::uint8_t kSubjectKeyId[] = {0x55, 0x1D, 0x0E};
constexpr std::uint8_t kAuthorityKeyId[] = {0x55, 0x1D, 0x23};
constexpr std::uint8_t kSubjectAltName[] = {0x55, 0x1D, 0x11};

int digits(der::Bytes b, std::size_t at, std::size_t n) {
  int v = 0;
  for (std::size_t i = at; i < at + n; ++i) {
    if (b[i] < '0' || b[i] > '9') return -1;
    v = v * 10 + (b[i] - '0');
  }
  return v;
}

bool parse_time(const der::Tlv& t, std::int64_t& out) {
  const der::Bytes c = t.content;
  std::tm tm{};
  std::size_t pos = 0;
  if (t.tag == der::tag::kUtcTime && c.size() == 13) {
    const int yy = digits(c, 0, 2);
    tm.tm_year = (yy < 50 ? 2000 + yy : 1900 + yy) - 1900;
    pos = 2;
  } else if (t.tag == der::tag::kGeneralizedTime && c.size() == 15) {
    tm.tm_year = digits(c, 0, 4) - 1900;
    pos = 4;
  } else {
    return false;
  }
  tm.tm_mon = digits(c, pos, 2) - 1;
  tm.tm_mday = digits(c, pos + 2, 2);
  tm.tm_hour = digits(c, pos + 4, 2);
  tm.tm_min = digits(c, pos + 6, 2);
  tm.tm_sec = digits(c, pos + 8, 2);
  if (c.back() != 'Z' || tm.tm_mon < 0 || tm.tm_mday < 1 || tm.tm_hour < 0 || tm.tm_min < 0 ||
      tm.tm_sec < 0) {
    return false;
  }
  out = static_cast<std::int64_t>(timegm(&tm));
  return true;
}

bool parse_extension(der::Bytes ext, LeafView& out) {
  der::Tlv oid, next;
  if (!der::expect(ext, der::tag::kOid, oid) || !der::read(ext, next)) return false;
  bool critical = false;
  if (next.tag == 0x01) {  // BOOLEAN critical
    critical = next.content.size() == 1 && next.content[0] != 0;
    if (!der::read(ext, next)) return false;
  }
  if (next.tag != der::tag::kOctetString || !ext.empty()) return false;
  der::Bytes value = next.content;
  if (der::equal(oid.content, kBasicConstraints)) {
    der::Tlv seq, ca;
    if (!der::expect(value, der::tag::kSequence, seq)) return false;
    der::Bytes inner = seq.content;
    out.is_ca = !inner.empty() && der::read(inner, ca) && ca.tag == 0x01 &&
                ca.content.size() == 1 && ca.content[0] != 0;
  } else if (der::equal(oid.content, kKeyUsage)) {
    der::Tlv bits;
    if (!der::expect(value, der::tag::kBitString, bits) || bits.content.empty()) return false;
    out.has_key_usage = true;
    out.digital_signature = bits.content.size() > 1 && (bits.content[1] & 0x80) != 0;
  } else if (der::equal(oid.content, kExtKeyUsage)) {
    der::Tlv seq;
    if (!der::expect(value, der::tag::kSequence, seq)) return false;
    out.has_eku = true;
    der::Bytes purposes = seq.content;
    while (!purposes.empty()) {
      der::Tlv p;
      if (!der::expect(purposes, der::tag::kOid, p)) return false;
      if (der::equal(p.content, kClientAuth) || der::equal(p.content, kAnyEku))
        out.client_auth = true;
    }
  } else if (critical && !der::equal(oid.content, kSubjectKeyId) &&
             !der::equal(oid.content, kAuthorityKeyId) &&
             !der::equal(oid.content, kSubjectAltName)) {
    out.unknown_critical = true;
  }
  return true;
}

}  // namespace

bool parse_leaf(der::Bytes in, LeafView& out, std::string& why) {
  der::Tlv cert, tbs, sig_alg, sig, alg_oid;
  if (!der::expect(in, der::tag::kSequence, cert) || !in.empty()) {
    why = "not a DER certificate";
    return false;
  }
  der::Bytes body = cert.content;
  if (!der::expect(body, der::tag::kSequence, tbs) ||
      !der::expect(body, der::tag::kSequence, sig_alg) ||
      !der::expect(body, der::tag::kBitString, sig) || !body.empty() || sig.content.empty() ||
      sig.content[0] != 0) {
    why = "certificate structure is malformed";
    return false;
  }
  der::Bytes a = sig_alg.content;
  if (!der::expect(a, der::tag::kOid, alg_oid)) {
    why = "signature algorithm is malformed";
    return false;
  }
  out.tbs = tbs.whole;
  out.sig_alg = sig_alg.whole;
  out.sig_alg_oid = alg_oid.content;
  out.signature = sig.content.subspan(1);
  der::Bytes f = tbs.content;
  der::Tlv version, serial, inner_alg, issuer, validity, subject, spki, nb, na;
  if (!der::expect(f, der::tag::kContext0, version) ||
      !der::expect(f, der::tag::kInteger, serial) ||
      !der::expect(f, der::tag::kSequence, inner_alg) ||
      !der::expect(f, der::tag::kSequence, issuer) ||
      !der::expect(f, der::tag::kSequence, validity) ||
      !der::expect(f, der::tag::kSequence, subject) || !der::expect(f, der::tag::kSequence, spki)) {
    why = "TBSCertificate is not a v3 certificate with the required fields";
    return false;
  }
  der::Bytes v = validity.content;
  if (!der::read(v, nb) || !der::read(v, na) || !v.empty() || !parse_time(nb, out.not_before) ||
      !parse_time(na, out.not_after)) {
    why = "validity is malformed";
    return false;
  }
  out.serial = serial.content;
  out.tbs_sig_alg = inner_alg.whole;
  out.issuer = issuer.whole;
  out.subject = subject.whole;
  out.spki = spki.whole;
  while (!f.empty()) {
    der::Tlv field;
    if (!der::read(f, field)) {
      why = "TBSCertificate has trailing garbage";
      return false;
    }
    if (field.tag != der::tag::kContext3) continue;  // issuer/subject unique IDs: ignored
    der::Bytes ext_body = field.content;
    der::Tlv exts;
    if (!der::expect(ext_body, der::tag::kSequence, exts)) {
      why = "extensions are malformed";
      return false;
    }
    der::Bytes list = exts.content;
    while (!list.empty()) {
      der::Tlv ext;
      if (!der::expect(list, der::tag::kSequence, ext) || !parse_extension(ext.content, out)) {
        why = "an extension is malformed";
        return false;
      }
    }
  }
  return true;
}

}  // namespace fleetsign::engine
