// The fault schedule of fleetsign-fault-pkcs11: which call of which wrapped function fails, how,
// and how slowly. Test-only.
//
// A schedule is rules separated by ';' or new lines ('#' starts a comment, blank = healthy):
//
//   OP:ACTION[:TRIGGER][:seed=S]
//
//   OP       sign (C_Sign and C_SignFinal, the calls that produce a signature; length queries are
//            not counted), signinit, signupdate, login
//   ACTION   error=NAME   fail with CKR_NAME (DEVICE_REMOVED, SESSION_HANDLE_INVALID,
//                         GENERAL_ERROR, DEVICE_MEMORY, DEVICE_ERROR, FUNCTION_FAILED,
//                         TOKEN_NOT_PRESENT, PIN_INCORRECT; the CKR_ prefix is optional)
//            corrupt      a signature with its first byte flipped
//            latency=A-B  sleep A..B ms (uniform) before the call; latency=A sleeps A ms
//   TRIGGER  at=N         only the Nth call of OP (1-based)
//            every=N      calls N, 2N, 3N, ...
//            from=N       the Nth call and every later one (a persistent fault)
//            rate=P       each call with probability P (0..1), drawn from seed S (default 1) and
//                         the call's number: the same calls fail in every run
//            (none)       every call
//
// Calls are counted per OP from the moment the schedule's text last changed. Thread-safe.
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fleetsign::faultp11 {

enum class Op { kSign, kSignInit, kSignUpdate, kLogin };
constexpr std::size_t kOpCount = 4;
const char* op_name(Op op) noexcept;
// "CKR_DEVICE_REMOVED", or "CKR 0x…" for a code this module does not name.
std::string rv_name(CK_RV rv);

// What to do with one call.
struct Fault {
  std::uint64_t call = 0;  // this call's number for its OP (1-based)
  CK_RV error = CKR_OK;    // CKR_OK: forward the call
  bool corrupt = false;    // flip the first byte of the signature
  int latency_ms = 0;
};

class Schedule final {
 public:
  // nullptr with `error` set when `text` is malformed.
  static std::unique_ptr<Schedule> parse(const std::string& text, std::string& error);

  const std::string& text() const noexcept { return m_text; }
  // Counts a call of `op` and says what to do with it. Latency adds over matching rules; the
  // first matching error or corrupt rule wins.
  Fault next(Op op);

 private:
  enum class Action { kError, kCorrupt, kLatency };
  enum class Trigger { kAlways, kAt, kEvery, kFrom, kRate };
  struct Rule {
    Op op = Op::kSign;
    Action action = Action::kError;
    CK_RV error = CKR_OK;
    int latency_min = 0, latency_max = 0;
    Trigger trigger = Trigger::kAlways;
    std::uint64_t n = 0;
    double rate = 0;
    std::uint64_t seed = 1;
  };
  static bool fires(const Rule& r, std::uint64_t call);

  std::string m_text;
  std::vector<Rule> m_rules;
  std::array<std::atomic<std::uint64_t>, kOpCount> m_calls{};
};

}  // namespace fleetsign::faultp11
