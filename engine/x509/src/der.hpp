// Minimal strict DER reading and writing for the issuance hot path: the structures we parse
// (CSRs) and build (device TBSCertificates) are fixed and small, and OpenSSL's generic ASN.1
// decoder/encoder costs more than the signature itself (see design.md). Private to engine/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace fleetsign::engine::der {

using Bytes = std::span<const std::uint8_t>;

namespace tag {
constexpr std::uint8_t kInteger = 0x02, kBitString = 0x03, kOctetString = 0x04, kNull = 0x05,
                       kOid = 0x06, kUtf8String = 0x0C, kPrintableString = 0x13, kIa5String = 0x16,
                       kUtcTime = 0x17, kGeneralizedTime = 0x18, kSequence = 0x30, kSet = 0x31,
                       kContext0 = 0xA0, kContext3 = 0xA3;
}

struct Tlv {
  std::uint8_t tag = 0;
  Bytes content;
  Bytes whole;  // tag + length + content
};

// Reads one TLV from the front of `in` and advances it. Strict: single-byte tags, definite and
// minimally encoded lengths, length within the input. Returns false on any violation.
bool read(Bytes& in, Tlv& out);
// Reads one TLV and requires its tag.
bool expect(Bytes& in, std::uint8_t wanted_tag, Tlv& out);

inline bool equal(Bytes a, Bytes b) {
  return a.size() == b.size() && (a.empty() || __builtin_memcmp(a.data(), b.data(), a.size()) == 0);
}

// Appends tag + DER length (content is appended by the caller).
void put_header(std::vector<std::uint8_t>& out, std::uint8_t tag, std::size_t length);
void put_tlv(std::vector<std::uint8_t>& out, std::uint8_t tag, Bytes content);
inline void put_bytes(std::vector<std::uint8_t>& out, Bytes bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}
std::size_t header_size(std::size_t length);

// Writes a UTCTime (years 1950..2049) or GeneralizedTime (others) TLV for unix seconds.
void put_time(std::vector<std::uint8_t>& out, std::int64_t unix_seconds);

}  // namespace fleetsign::engine::der
