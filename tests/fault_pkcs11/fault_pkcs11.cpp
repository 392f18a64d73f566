// fleetsign-fault-pkcs11: a PKCS#11 module that forwards every call to a real module (SoftHSM2 by
// default) and fails on purpose, on a schedule. Test-only (see schedule.hpp for the syntax).
//
//   FLEETSIGN_FAULT_TARGET    the real module (default /usr/lib/softhsm/libsofthsm2.so)
//   FLEETSIGN_FAULT_FILE      a file holding the schedule, read again at every wrapped call, so a
//                             test can change it (or empty it: healthy) while a process runs
//   FLEETSIGN_P11_FAULT       the schedule itself, when no file is named (FLEETSIGN_FAULT is
//                             taken: fleetsign-faulty's kill points)
//   FLEETSIGN_P11_FAULT_LOG   a file that gets one line per injected fault ("sign 3 CKR_…")
//
// Wrapped: C_Login, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal. An injected C_Sign or
// C_SignFinal error first ends the real operation (as a real failure would: the session can sign
// again); CKR_SESSION_HANDLE_INVALID also closes the real session, so a caller that keeps using
// it gets the real error. Every other entry of the function list is the real module's.
#include <dlfcn.h>
#include <fcntl.h>
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "schedule.hpp"

namespace {

using fleetsign::faultp11::Fault;
using fleetsign::faultp11::Op;
using fleetsign::faultp11::Schedule;

CK_FUNCTION_LIST_PTR g_real = nullptr;
CK_FUNCTION_LIST g_list{};

// The schedule now in force: parsed again only when its text changes (then its counters restart).
std::shared_ptr<Schedule> current_schedule() {
  static std::mutex mutex;
  static std::shared_ptr<Schedule> current;
  std::string text;
  if (const char* file = std::getenv("FLEETSIGN_FAULT_FILE"); file != nullptr && *file != '\0') {
    std::ifstream in(file, std::ios::binary);
    char buf[4096];
    in.read(buf, sizeof buf);
    text.assign(buf, static_cast<std::size_t>(in.gcount()));  // a missing file: healthy
  } else if (const char* env = std::getenv("FLEETSIGN_P11_FAULT"); env != nullptr) {
    text = env;
  }
  std::lock_guard lock(mutex);
  if (!current || current->text() != text) {
    std::string error;
    auto parsed = Schedule::parse(text, error);
    if (!parsed) {
      std::fprintf(stderr, "fleetsign-fault-pkcs11: bad schedule '%s': %s\n", text.c_str(),
                   error.c_str());
      std::abort();  // a test's mistake: fail loudly, never run healthy by accident
    }
    current = std::move(parsed);
  }
  return current;
}

void log_fault(Op op, std::uint64_t n, const std::string& what) {
  const char* path = std::getenv("FLEETSIGN_P11_FAULT_LOG");
  if (path == nullptr || *path == '\0') return;
  const std::string line =
      std::string(fleetsign::faultp11::op_name(op)) + " " + std::to_string(n) + " " + what + "\n";
  const int fd = ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;
  const ssize_t written = ::write(fd, line.data(), line.size());  // one short line: atomic
  (void)written;
  ::close(fd);
}

// The fault for this call of `op` (latency already slept).
Fault next_fault(Op op) {
  const auto schedule = current_schedule();
  Fault f = schedule->next(op);
  if (f.latency_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(f.latency_ms));
  }
  if (f.error != CKR_OK) {
    log_fault(op, f.call, fleetsign::faultp11::rv_name(f.error));
  } else if (f.corrupt) {
    log_fault(op, f.call, "corrupt");
  }
  return f;
}

// Ends the real signing operation the way a failed C_Sign/C_SignFinal does, then fails.
CK_RV fail_operation(CK_SESSION_HANDLE session, CK_RV error, bool final_step, CK_BYTE_PTR data,
                     CK_ULONG data_len) {
  CK_BYTE scratch[2048];
  CK_ULONG scratch_len = sizeof scratch;
  if (final_step) {
    g_real->C_SignFinal(session, scratch, &scratch_len);
  } else {
    g_real->C_Sign(session, data, data_len, scratch, &scratch_len);
  }
  if (error == CKR_SESSION_HANDLE_INVALID) {
    g_real->C_CloseSession(session);
  }
  return error;
}

CK_RV wrap_Login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                 CK_ULONG pin_len) {
  const Fault f = next_fault(Op::kLogin);
  if (f.error != CKR_OK) return f.error;
  return g_real->C_Login(session, user, pin, pin_len);
}

CK_RV wrap_SignInit(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key) {
  const Fault f = next_fault(Op::kSignInit);
  if (f.error != CKR_OK) {
    if (f.error == CKR_SESSION_HANDLE_INVALID) g_real->C_CloseSession(session);
    return f.error;
  }
  return g_real->C_SignInit(session, mech, key);
}

CK_RV wrap_Sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG data_len, CK_BYTE_PTR sig,
                CK_ULONG_PTR sig_len) {
  if (sig == nullptr) {  // a length query is not a signing operation
    return g_real->C_Sign(session, data, data_len, sig, sig_len);
  }
  const Fault f = next_fault(Op::kSign);
  if (f.error != CKR_OK) return fail_operation(session, f.error, false, data, data_len);
  const CK_RV rv = g_real->C_Sign(session, data, data_len, sig, sig_len);
  if (rv == CKR_OK && f.corrupt && sig_len != nullptr && *sig_len > 0) sig[0] ^= 0xFF;
  return rv;
}

CK_RV wrap_SignUpdate(CK_SESSION_HANDLE session, CK_BYTE_PTR part, CK_ULONG part_len) {
  const Fault f = next_fault(Op::kSignUpdate);
  if (f.error != CKR_OK) return fail_operation(session, f.error, true, nullptr, 0);
  return g_real->C_SignUpdate(session, part, part_len);
}

CK_RV wrap_SignFinal(CK_SESSION_HANDLE session, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len) {
  if (sig == nullptr) {
    return g_real->C_SignFinal(session, sig, sig_len);
  }
  const Fault f = next_fault(Op::kSign);
  if (f.error != CKR_OK) return fail_operation(session, f.error, true, nullptr, 0);
  const CK_RV rv = g_real->C_SignFinal(session, sig, sig_len);
  if (rv == CKR_OK && f.corrupt && sig_len != nullptr && *sig_len > 0) sig[0] ^= 0xFF;
  return rv;
}

CK_RV wrap_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

CK_RV load_target() {
  const char* env = std::getenv("FLEETSIGN_FAULT_TARGET");
  const std::string path = env != nullptr && *env != '\0' ? env : "/usr/lib/softhsm/libsofthsm2.so";
  // Never closed: the real module lives as long as the process.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    std::fprintf(stderr, "fleetsign-fault-pkcs11: cannot load %s: %s\n", path.c_str(), dlerror());
    return CKR_GENERAL_ERROR;
  }
  using GetFunctionList = CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR);
  auto get = reinterpret_cast<GetFunctionList>(dlsym(handle, "C_GetFunctionList"));
  CK_FUNCTION_LIST_PTR real = nullptr;
  if (get == nullptr || get(&real) != CKR_OK || real == nullptr) {
    std::fprintf(stderr, "fleetsign-fault-pkcs11: %s has no C_GetFunctionList\n", path.c_str());
    return CKR_GENERAL_ERROR;
  }
  g_real = real;
  g_list = *real;  // forward everything ...
  g_list.C_GetFunctionList = wrap_GetFunctionList;
  g_list.C_Login = wrap_Login;  // ... but these
  g_list.C_SignInit = wrap_SignInit;
  g_list.C_Sign = wrap_Sign;
  g_list.C_SignUpdate = wrap_SignUpdate;
  g_list.C_SignFinal = wrap_SignFinal;
  return CKR_OK;
}

CK_RV wrap_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
  static std::once_flag once;
  static CK_RV loaded = CKR_GENERAL_ERROR;
  std::call_once(once, [] { loaded = load_target(); });
  if (loaded != CKR_OK) return loaded;
  if (list == nullptr) return CKR_ARGUMENTS_BAD;
  *list = &g_list;
  return CKR_OK;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) CK_RV C_GetFunctionList(
    CK_FUNCTION_LIST_PTR_PTR list) {
  return wrap_GetFunctionList(list);
}
