#include "crl_der.hpp"

#include "der.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine::crl_der {

namespace {

constexpr std::uint8_t kCrlNumberOid[] = {0x55, 0x1D, 0x14};
constexpr std::uint8_t kAuthorityKeyIdOid[] = {0x55, 0x1D, 0x23};

int nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The content octets of a positive INTEGER from hex: leading zero octets dropped, one 0x00 put
// back when the top bit is set (DER's minimal two's-complement form).
void integer_content(const std::string& hex, std::vector<std::uint8_t>& out) {
  out.clear();
  const bool odd = hex.size() % 2 != 0;
  for (std::size_t i = 0; i < hex.size();) {
    const int hi = (odd && i == 0) ? 0 : nibble(hex[i++]);
    const int lo = i < hex.size() ? nibble(hex[i++]) : -1;
    if (hi < 0 || lo < 0) {
      throw Error(ErrorCode::kRegistryError, "revoked serial '" + hex + "' is not hexadecimal");
    }
    const auto octet = static_cast<std::uint8_t>((hi << 4) | lo);
    if (!out.empty() || octet != 0) out.push_back(octet);
  }
  if (out.empty() || (out.front() & 0x80) != 0) out.insert(out.begin(), 0x00);
}

void put_integer(Der& out, std::int64_t value) {
  std::uint8_t bytes[9];
  int n = 0;
  auto v = static_cast<std::uint64_t>(value);
  do {
    bytes[8 - n++] = static_cast<std::uint8_t>(v & 0xFF);
    v >>= 8;
  } while (v != 0);
  if ((bytes[9 - n] & 0x80) != 0) bytes[8 - n++] = 0;
  der::put_tlv(out, der::tag::kInteger, ByteView(bytes + 9 - n, static_cast<std::size_t>(n)));
}

// Extension ::= SEQUENCE { extnID, extnValue OCTET STRING } (never critical here).
void put_extension(Der& out, ByteView oid, const Der& value) {
  Der body;
  der::put_tlv(body, der::tag::kOid, oid);
  der::put_tlv(body, der::tag::kOctetString, value);
  der::put_tlv(out, der::tag::kSequence, body);
}

std::size_t time_size(std::int64_t t) {
  Der probe;
  der::put_time(probe, t);
  return probe.size();
}

}  // namespace

Der tbs(const TbsHeader& h, std::span<const RevokedSerial> entries) {
  Der body;
  body.reserve(256 + entries.size() * 48);
  put_integer(body, 1);  // v2
  der::put_bytes(body, h.algorithm);
  der::put_bytes(body, h.issuer_name);
  der::put_time(body, h.this_update);
  der::put_time(body, h.next_update);
  if (!entries.empty()) {
    // One pass to size the SEQUENCE OF, one to write it: no per-entry buffer.
    std::vector<std::uint8_t> serial;
    std::vector<int> reasons(entries.size());
    std::size_t list_len = 0;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const auto code = crl_reason_code(entries[i].reason);
      if (!code) {
        throw Error(ErrorCode::kInvalidArgument, "revoked serial 0x" + entries[i].serial +
                                                     ": unknown reason '" + entries[i].reason +
                                                     "'");
      }
      reasons[i] = *code;
      integer_content(entries[i].serial, serial);
      std::size_t entry = 2 + serial.size() + time_size(entries[i].revoked_at);
      if (*code != 0) entry += 2 + 12;  // SEQUENCE OF one reasonCode extension (12 octets)
      list_len += der::header_size(entry) + entry;
    }
    der::put_header(body, der::tag::kSequence, list_len);
    for (std::size_t i = 0; i < entries.size(); ++i) {
      integer_content(entries[i].serial, serial);
      Der when;
      der::put_time(when, entries[i].revoked_at);
      std::size_t entry = 2 + serial.size() + when.size();
      if (reasons[i] != 0) entry += 2 + 12;
      der::put_header(body, der::tag::kSequence, entry);
      der::put_tlv(body, der::tag::kInteger, serial);
      der::put_bytes(body, when);
      if (reasons[i] != 0) {
        // SEQUENCE OF { Extension { id-ce-cRLReasons, OCTET STRING { ENUMERATED code } } }
        const std::uint8_t ext[] = {
            0x30, 0x0C, 0x30, 0x0A, 0x06, 0x03, 0x55,
            0x1D, 0x15, 0x04, 0x03, 0x0A, 0x01, static_cast<std::uint8_t>(reasons[i])};
        der::put_bytes(body, ByteView(ext, sizeof ext));
      }
    }
  }
  Der exts;
  Der aki_value, keyid;
  der::put_header(keyid, 0x80, h.authority_key_id.size());  // [0] IMPLICIT keyIdentifier
  der::put_bytes(keyid, h.authority_key_id);
  der::put_tlv(aki_value, der::tag::kSequence, keyid);
  put_extension(exts, kAuthorityKeyIdOid, aki_value);
  Der number;
  put_integer(number, h.number);
  put_extension(exts, kCrlNumberOid, number);
  Der ext_seq;
  der::put_tlv(ext_seq, der::tag::kSequence, exts);
  der::put_tlv(body, der::tag::kContext0, ext_seq);
  Der out;
  out.reserve(der::header_size(body.size()) + body.size());
  der::put_tlv(out, der::tag::kSequence, body);
  return out;
}

Der certificate_list(ByteView tbs, ByteView algorithm, ByteView signature) {
  const std::size_t bits = signature.size() + 1;
  const std::size_t len = tbs.size() + algorithm.size() + der::header_size(bits) + bits;
  Der out;
  out.reserve(der::header_size(len) + len);
  der::put_header(out, der::tag::kSequence, len);
  der::put_bytes(out, tbs);
  der::put_bytes(out, algorithm);
  der::put_header(out, der::tag::kBitString, bits);
  out.push_back(0);
  der::put_bytes(out, signature);
  return out;
}

}  // namespace fleetsign::engine::crl_der
