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

}  // namespace

std::int64_t parse_time(std::string_view text, std::string_view what) {
  const std::string s(text);
  const auto bad = [&] {
    return Error(ErrorCode::kInvalidArgument,
                 std::string(what) + " '" + s +
                     "': expected RFC 3339 (2026-01-01T00:00:00Z), a date (2026-01-01) or unix "
                     "seconds");
  };
  if (!s.empty() && s.size() <= 12 &&
      std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::stoll(s);
  }
  std::tm tm{};
  int n = 0;
  if (s.size() == 10) {
    if (std::sscanf(s.c_str(), "%4d-%2d-%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &n) != 3 ||
        n != 10) {
      throw bad();
    }
  } else if (s.size() == 20 && s[10] == 'T' && s[19] == 'Z') {
    if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2dZ%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                    &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 ||
        n != 20) {
      throw bad();
    }
  } else {
    throw bad();
  }
  const std::tm given = tm;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  const std::int64_t t = static_cast<std::int64_t>(timegm(&tm));
  // timegm normalizes 2026-02-31 into March: a date that moved was not a date.
  if (tm.tm_year + 1900 != given.tm_year || tm.tm_mon + 1 != given.tm_mon ||
      tm.tm_mday != given.tm_mday || tm.tm_hour != given.tm_hour || tm.tm_min != given.tm_min ||
      tm.tm_sec != given.tm_sec || given.tm_year < 1970) {
    throw bad();
  }
  return t;
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
