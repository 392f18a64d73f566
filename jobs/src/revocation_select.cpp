// Revocation selectors and reasons: every value checked before it reaches a query (revocation.hpp).
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>

#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/revocation.hpp"

namespace fleetsign::jobs {

namespace {

constexpr std::size_t kMaxName = 128;

// Upper-case hex without "0x" and ':' separators; kInvalidArgument unless 1..`max` hex digits.
std::string normalize_hex(const std::string& option, std::string_view text, std::size_t min,
                          std::size_t max) {
  std::string_view v = text;
  if (v.starts_with("0x") || v.starts_with("0X")) v.remove_prefix(2);
  std::string out;
  for (const char c : v) {
    if (c == ':') continue;
    if (!std::isxdigit(static_cast<unsigned char>(c))) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--" + option + " '" + std::string(text) + "': not hexadecimal");
    }
    out += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  if (out.size() < min || out.size() > max) {
    throw Error(
        ErrorCode::kInvalidArgument,
        "--" + option + " '" + std::string(text) + "': expected " +
            (min == max ? std::to_string(min) : std::to_string(min) + ".." + std::to_string(max)) +
            " hex digits, got " + std::to_string(out.size()));
  }
  return out;
}

}  // namespace

std::string check_name(const std::string& option, const std::string& value) {
  if (value.empty() || value.size() > kMaxName) {
    throw Error(ErrorCode::kInvalidArgument, "--" + option + ": expected 1.." +
                                                 std::to_string(kMaxName) + " characters, got " +
                                                 std::to_string(value.size()));
  }
  for (const char c : value) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
      throw Error(ErrorCode::kInvalidArgument, "--" + option + ": control character in the value");
    }
  }
  return value;
}

std::int64_t parse_time(std::string_view text, std::string_view what) {
  const std::string s(text.substr(0, 64));
  const auto bad = [&] {
    return Error(ErrorCode::kInvalidArgument,
                 std::string(what) + " '" + s +
                     "': expected RFC 3339 (2026-01-01T00:00:00Z, 2026-01-01T01:00:00.5+01:00), "
                     "a date (2026-01-01) or unix seconds");
  };
  if (text.size() > 64) throw bad();
  if (!s.empty() && s.size() <= 12 &&
      std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::stoll(s);
  }
  // Fixed-width digits at `at`; -1 when they are not all digits.
  const auto digits = [&](std::size_t at, std::size_t n) {
    if (at + n > s.size()) return -1;
    int v = 0;
    for (std::size_t i = at; i < at + n; ++i) {
      if (s[i] < '0' || s[i] > '9') return -1;
      v = v * 10 + (s[i] - '0');
    }
    return v;
  };
  std::tm tm{};
  tm.tm_year = digits(0, 4);
  tm.tm_mon = digits(5, 2);
  tm.tm_mday = digits(8, 2);
  if (s.size() < 10 || s[4] != '-' || s[7] != '-' || tm.tm_year < 0 || tm.tm_mon < 0 ||
      tm.tm_mday < 0) {
    throw bad();
  }
  std::int64_t offset = 0;  // the local time's offset from UTC, in seconds
  if (s.size() > 10) {
    // RFC 3339 date-time: "T" (or "t"), hh:mm:ss, an optional fraction, then "Z" or ±hh:mm.
    tm.tm_hour = digits(11, 2);
    tm.tm_min = digits(14, 2);
    tm.tm_sec = digits(17, 2);
    if ((s[10] != 'T' && s[10] != 't') || s.size() < 20 || s[13] != ':' || s[16] != ':' ||
        tm.tm_hour < 0 || tm.tm_min < 0 || tm.tm_sec < 0) {
      throw bad();
    }
    std::size_t at = 19;
    if (s[at] == '.') {  // a fraction of a second: the time is taken to the second below
      const std::size_t from = ++at;
      while (at < s.size() && s[at] >= '0' && s[at] <= '9') ++at;
      if (at == from) throw bad();
    }
    if (at + 1 == s.size() && (s[at] == 'Z' || s[at] == 'z')) {
      offset = 0;
    } else if (at + 6 == s.size() && (s[at] == '+' || s[at] == '-') && s[at + 3] == ':') {
      const int h = digits(at + 1, 2), m = digits(at + 4, 2);
      if (h < 0 || m < 0 || h > 23 || m > 59) throw bad();
      offset = (s[at] == '-' ? -1 : 1) * (std::int64_t{h} * 3600 + m * 60);
    } else {
      throw bad();
    }
  }
  const std::tm given = tm;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  const std::int64_t t = static_cast<std::int64_t>(timegm(&tm));
  // timegm normalizes 2026-02-31 into March: a date that moved was not a date.
  if (tm.tm_year + 1900 != given.tm_year || tm.tm_mon + 1 != given.tm_mon ||
      tm.tm_mday != given.tm_mday || tm.tm_hour != given.tm_hour || tm.tm_min != given.tm_min ||
      tm.tm_sec != given.tm_sec || given.tm_year < 1970 || t - offset < 0) {
    throw bad();
  }
  return t - offset;
}

RevocationSelector parse_selector(const policy::Policy& policy, const std::string& kind,
                                  const std::vector<std::string>& values) {
  RevocationSelector sel;
  sel.kind = kind;
  const std::size_t want = kind == "issued-between" ? 2 : 1;
  if (values.size() != want) {
    throw Error(ErrorCode::kUsage, "--" + kind + " takes " + std::to_string(want) + " value" +
                                       (want == 1 ? "" : "s") + ", got " +
                                       std::to_string(values.size()));
  }
  if (kind == "serial") {
    // DER's sign byte (a leading 00 before a byte >= 0x80, as some tools print a serial) is not
    // part of the number as the registry records it.
    sel.value = normalize_hex(kind, values[0], 1, 42);
    while (sel.value.size() > 2 && sel.value.starts_with("00")) sel.value.erase(0, 2);
    if (sel.value.size() > 40) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--serial '" + values[0] + "': expected at most 20 bytes (40 hex digits)");
    }
  } else if (kind == "key-sha256") {
    sel.value = normalize_hex(kind, values[0], 64, 64);
  } else if (kind == "device") {
    auto id = engine::DeviceId::check(policy, values[0]);
    if (!id) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--device '" + values[0] + "': " + id.error().message);
    }
    sel.value = id.value().str();
  } else if (kind == "ca" || kind == "lot" || kind == "batch" || kind == "site" || kind == "line") {
    sel.value = check_name(kind, values[0]);
  } else if (kind == "issued-between") {
    sel.from = parse_time(values[0], "--issued-between T1");
    sel.to = parse_time(values[1], "--issued-between T2");
    if (sel.from >= sel.to) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--issued-between: T1 (" + values[0] + ") must be before T2 (" + values[1] + ")");
    }
  } else {
    throw Error(ErrorCode::kUsage, "unknown selector --" + kind);
  }
  return sel;
}

std::string RevocationSelector::describe() const {
  if (kind == "issued-between") {
    return "--issued-between " + engine::iso8601(from) + " " + engine::iso8601(to);
  }
  if (kind == "run") return value;  // a run of exact certificates (revoke_serials)
  return "--" + kind + " " + value;
}

std::string check_reason(const std::string& reason, const RevocationSelector& selector) {
  if (reason.empty()) {
    // A key named by its hash is a compromised key; for anything else the responder says why.
    if (selector.kind == "key-sha256") return "keyCompromise";
    throw Error(ErrorCode::kUsage,
                "--reason is required (keyCompromise, cACompromise, affiliationChanged, "
                "superseded or cessationOfOperation)");
  }
  for (const auto r : kReasons) {
    if (reason == r) return reason;
  }
  throw Error(ErrorCode::kInvalidArgument,
              "--reason '" + reason +
                  "': expected keyCompromise, cACompromise, affiliationChanged, superseded or "
                  "cessationOfOperation (RFC 5280; unspecified is not accepted: say why)");
}

}  // namespace fleetsign::jobs
