// fuzz_id_pattern: the `--id-pattern` expander of `issue --generate` (expand_id_pattern,
// validate_id_pattern) and the device-ID check every ID passes before it becomes a certificate
// CN, a registry key, an MQTT topic level or a file name (policy::check_device_id,
// DeviceId::check).
//
// Input: count (8 bytes, big-endian, signed), the rule's extra characters (1 byte: bits 0..3 pick
// '.', '_', ':', '-'), the rule's max length (1 byte, 1..128), n (8 bytes, signed), then the
// pattern (the rest, e.g. "../x-{03}").
//
// Invariants:
//   - the only exceptions are fleetsign::Error with the documented codes;
//   - an ID that passes the check holds only [A-Za-z0-9] and the rule's extra characters (never
//     '/', NUL, '+', '#' or a space), is at most min(max length, 64) long;
//   - when validate_id_pattern accepts (pattern, count), every n in 1..count expands to an ID that
//     passes (checked for n and a few others), and the expansion holds n's decimal digits.
#include <climits>
#include <cstdint>
#include <string>

#include "fleetsign/engine/batch.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/error.hpp"
#include "fuzz_input.hpp"

namespace {

using namespace fleetsign;

std::int64_t int64_of(fuzz::Input& in) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | in.byte();
  return static_cast<std::int64_t>(v);
}

bool id_char(char c, const std::string& extra) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         (c != '\0' && extra.find(c) != std::string::npos);
}

// DeviceId::check on one ID, with the invariants of an accepted ID.
bool check_id(const policy::Policy& p, const std::string& id) {
  const auto checked = engine::DeviceId::check(p, id);
  const bool rule_ok = !policy::check_device_id(p.device_id, id).has_value();
  if (!checked) {
    if (checked.error().code != ErrorCode::kDeviceIdInvalid) {
      fuzz::violated("DeviceId::check failed with another code");
    }
    return false;
  }
  if (!rule_ok || checked->str() != id || id.empty() ||
      id.size() > std::min<std::size_t>(p.device_id.max_length, engine::kMaxCommonNameLength)) {
    fuzz::violated("DeviceId::check accepted an ID its rule refuses");
  }
  for (const char c : id) {
    if (!id_char(c, p.device_id.extra_chars)) {
      fuzz::violated("DeviceId::check accepted a character outside the alphabet");
    }
  }
  return true;
}

void expand_checked(const policy::Policy& p, const std::string& pattern, std::int64_t n) {
  const std::string id = engine::expand_id_pattern(pattern, n);
  if (id.find(std::to_string(n)) == std::string::npos) {  // n >= 1 here
    fuzz::violated("the expansion lost the number's digits");
  }
  if (!check_id(p, id)) fuzz::violated("validate_id_pattern accepted a pattern whose ID fails");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const std::int64_t count = int64_of(in);
  policy::Policy p;
  const std::uint8_t extra = in.byte();
  for (int i = 0; i < 4; ++i) {
    if ((extra & (1 << i)) != 0) p.device_id.extra_chars += "._:-"[i];
  }
  p.device_id.max_length = 1 + in.byte() % 128;
  const std::int64_t n = int64_of(in);
  const std::string pattern(in.rest_text());

  (void)check_id(p, pattern);
  try {
    (void)check_id(p, engine::expand_id_pattern(pattern, n));
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidArgument) fuzz::violated("expand: another error code");
  }
  try {
    engine::validate_id_pattern(pattern, count, p);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidArgument && e.code() != ErrorCode::kDeviceIdInvalid) {
      fuzz::violated("validate_id_pattern: another error code");
    }
    return 0;
  }
  const std::int64_t last = std::max<std::int64_t>(count, 1);
  for (const std::int64_t k :
       {std::int64_t{1}, last, last / 2 + 1, last - 1, n > 0 && n <= last ? n : std::int64_t{1}}) {
    if (k >= 1) expand_checked(p, pattern, k);
  }
  return 0;
}
