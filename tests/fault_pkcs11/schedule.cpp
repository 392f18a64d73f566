#include "schedule.hpp"

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace fleetsign::faultp11 {

namespace {

constexpr std::pair<const char*, CK_RV> kErrors[] = {
    {"DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"DEVICE_MEMORY", CKR_DEVICE_MEMORY},
    {"DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"PIN_INCORRECT", CKR_PIN_INCORRECT},
};

constexpr const char* kOpNames[kOpCount] = {"sign", "signinit", "signupdate", "login"};

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

std::vector<std::string> split(const std::string& s, const char* seps) {
  std::vector<std::string> out;
  std::string::size_type start = 0;
  while (true) {
    const auto end = s.find_first_of(seps, start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

// A whole decimal number of at most 9 digits (no sign, nothing after it).
bool parse_uint(const std::string& s, std::uint64_t& out) {
  if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  out = std::strtoull(s.c_str(), nullptr, 10);
  return true;
}

// splitmix64: a uniform 64-bit value from (seed, op, call), without shared state.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

double uniform(std::uint64_t seed, std::uint64_t salt, std::uint64_t call) {
  return static_cast<double>(mix(mix(seed ^ salt) ^ call) >> 11) / 9007199254740992.0;  // 2^53
}

}  // namespace

const char* op_name(Op op) noexcept { return kOpNames[static_cast<std::size_t>(op)]; }

std::string rv_name(CK_RV rv) {
  for (const auto& [name, code] : kErrors) {
    if (code == rv) return std::string("CKR_") + name;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "CKR 0x%lx", static_cast<unsigned long>(rv));
  return buf;
}

std::unique_ptr<Schedule> Schedule::parse(const std::string& text, std::string& error) {
  auto s = std::make_unique<Schedule>();
  s->m_text = text;
  for (std::string line : split(text, ";\n")) {
    if (const auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    line = trim(line);
    if (line.empty()) continue;
    const auto fields = split(line, ":");
    Rule r;
    bool op_ok = false;
    for (std::size_t i = 0; i < kOpCount; ++i) {
      if (trim(fields[0]) == kOpNames[i]) {
        r.op = static_cast<Op>(i);
        op_ok = true;
      }
    }
    if (!op_ok) {
      error = "rule '" + line + "': unknown operation '" + fields[0] + "'";
      return nullptr;
    }
    bool has_action = false;
    for (std::size_t i = 1; i < fields.size(); ++i) {
      const std::string field = trim(fields[i]);
      const auto eq = field.find('=');
      const std::string key = field.substr(0, eq);
      const std::string value = eq == std::string::npos ? "" : field.substr(eq + 1);
      bool ok = true;
      if (key == "error") {
        std::string name = value.rfind("CKR_", 0) == 0 ? value.substr(4) : value;
        ok = false;
        for (const auto& [n, code] : kErrors) {
          if (name == n) {
            r.error = code;
            ok = true;
          }
        }
        r.action = Action::kError;
        has_action = true;
      } else if (key == "corrupt" && eq == std::string::npos) {
        r.action = Action::kCorrupt;
        has_action = true;
      } else if (key == "latency") {
        const auto dash = value.find('-');
        std::uint64_t lo = 0, hi = 0;
        ok = parse_uint(value.substr(0, dash), lo) &&
             (dash == std::string::npos ? (hi = lo, true)
                                        : parse_uint(value.substr(dash + 1), hi)) &&
             lo <= hi && hi <= 10000;
        r.action = Action::kLatency;
        r.latency_min = static_cast<int>(lo);
        r.latency_max = static_cast<int>(hi);
        has_action = true;
      } else if (key == "at" || key == "every" || key == "from") {
        ok = parse_uint(value, r.n) && r.n > 0;
        r.trigger = key == "at" ? Trigger::kAt : key == "every" ? Trigger::kEvery : Trigger::kFrom;
      } else if (key == "rate") {
        char* end = nullptr;
        r.rate = std::strtod(value.c_str(), &end);
        ok = !value.empty() && *end == '\0' && r.rate >= 0 && r.rate <= 1;
        r.trigger = Trigger::kRate;
      } else if (key == "seed") {
        ok = parse_uint(value, r.seed);
      } else {
        ok = false;
      }
      if (!ok) {
        error = "rule '" + line + "': bad field '" + field + "'";
        return nullptr;
      }
    }
    if (!has_action) {
      error = "rule '" + line + "': no action (error=…, corrupt or latency=…)";
      return nullptr;
    }
    s->m_rules.push_back(r);
  }
  return s;
}

bool Schedule::fires(const Rule& r, std::uint64_t call) {
  switch (r.trigger) {
    case Trigger::kAlways:
      return true;
    case Trigger::kAt:
      return call == r.n;
    case Trigger::kEvery:
      return call % r.n == 0;
    case Trigger::kFrom:
      return call >= r.n;
    case Trigger::kRate:
      return uniform(r.seed, static_cast<std::uint64_t>(r.op) + 1, call) < r.rate;
  }
  return false;
}

Fault Schedule::next(Op op) {
  Fault f;
  f.call = ++m_calls[static_cast<std::size_t>(op)];
  bool decided = false;
  for (const Rule& r : m_rules) {
    if (r.op != op || !fires(r, f.call)) continue;
    if (r.action == Action::kLatency) {
      const double u = uniform(r.seed, 0x1A7E, f.call);
      f.latency_ms += r.latency_min + static_cast<int>(u * (r.latency_max - r.latency_min + 1));
    } else if (!decided) {
      decided = true;
      f.error = r.action == Action::kError ? r.error : CKR_OK;
      f.corrupt = r.action == Action::kCorrupt;
    }
  }
  return f;
}

}  // namespace fleetsign::faultp11
