#include "der.hpp"

#include <ctime>

namespace fleetsign::engine::der {

bool read(Bytes& in, Tlv& out) {
  if (in.size() < 2) {
    return false;
  }
  const std::uint8_t t = in[0];
  if ((t & 0x1F) == 0x1F) {
    return false;  // multi-byte tags never occur in what we parse
  }
  std::size_t pos = 1;
  std::size_t len = in[pos++];
  if (len & 0x80) {
    const std::size_t n = len & 0x7F;
    if (n == 0 || n > 4 || pos + n > in.size() || in[pos] == 0) {
      return false;  // indefinite, absurd, truncated or non-minimal length
    }
    len = 0;
    for (std::size_t i = 0; i < n; ++i) {
      len = (len << 8) | in[pos++];
    }
    if (len < 0x80) {
      return false;
    }
  }
  if (len > in.size() - pos) {
    return false;
  }
  out.tag = t;
  out.content = in.subspan(pos, len);
  out.whole = in.subspan(0, pos + len);
  in = in.subspan(pos + len);
  return true;
}

bool expect(Bytes& in, std::uint8_t wanted_tag, Tlv& out) {
  return read(in, out) && out.tag == wanted_tag;
}

std::size_t header_size(std::size_t length) {
  if (length < 0x80) return 2;
  if (length < 0x100) return 3;
  if (length < 0x10000) return 4;
  return 5;
}

void put_header(std::vector<std::uint8_t>& out, std::uint8_t t, std::size_t length) {
  out.push_back(t);
  if (length < 0x80) {
    out.push_back(static_cast<std::uint8_t>(length));
  } else if (length < 0x100) {
    out.push_back(0x81);
    out.push_back(static_cast<std::uint8_t>(length));
  } else if (length < 0x10000) {
    out.push_back(0x82);
    out.push_back(static_cast<std::uint8_t>(length >> 8));
    out.push_back(static_cast<std::uint8_t>(length));
  } else {
    out.push_back(0x83);
    out.push_back(static_cast<std::uint8_t>(length >> 16));
    out.push_back(static_cast<std::uint8_t>(length >> 8));
    out.push_back(static_cast<std::uint8_t>(length));
  }
}

void put_tlv(std::vector<std::uint8_t>& out, std::uint8_t t, Bytes content) {
  put_header(out, t, content.size());
  put_bytes(out, content);
}

namespace {
void put_digits(std::vector<std::uint8_t>& out, int value, int width) {
  char buf[8];
  for (int i = width - 1; i >= 0; --i) {
    buf[i] = static_cast<char>('0' + value % 10);
    value /= 10;
  }
  out.insert(out.end(), buf, buf + width);
}
}  // namespace

void put_time(std::vector<std::uint8_t>& out, std::int64_t unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  const int year = tm.tm_year + 1900;
  // RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
  const bool utc = year >= 1950 && year <= 2049;
  put_header(out, utc ? tag::kUtcTime : tag::kGeneralizedTime, utc ? 13 : 15);
  put_digits(out, utc ? year % 100 : year, utc ? 2 : 4);
  put_digits(out, tm.tm_mon + 1, 2);
  put_digits(out, tm.tm_mday, 2);
  put_digits(out, tm.tm_hour, 2);
  put_digits(out, tm.tm_min, 2);
  put_digits(out, tm.tm_sec, 2);
  out.push_back('Z');
}

}  // namespace fleetsign::engine::der
