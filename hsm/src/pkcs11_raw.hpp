// Direct PKCS#11 calls for what libp11 0.4.12 cannot do: key generation with our template, EC
// keys, attribute read-back, token initialisation. Private to hsm/.
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace fleetsign::hsm::raw {

std::string ckr_name(CK_RV rv);

// The module's function list. `attach` re-opens a module already loaded (by libp11) and never
// initialises or finalises it; `load` loads and initialises it and finalises on destruction
// (unless the module was already initialised in this process).
class Module final {
 public:
  static Module attach(const std::filesystem::path& path);
  static Module load(const std::filesystem::path& path);
  Module(Module&& other) noexcept;
  Module& operator=(Module&&) = delete;
  Module(const Module&) = delete;  // owns a dlopen reference
  ~Module();

  CK_FUNCTION_LIST_PTR f() const noexcept { return m_f; }

 private:
  Module(void* handle, CK_FUNCTION_LIST_PTR f, bool finalize)
      : m_handle(handle), m_f(f), m_finalize(finalize) {}
  void* m_handle;
  CK_FUNCTION_LIST_PTR m_f;
  bool m_finalize;
};

class Session final {
 public:
  Session(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot);  // read-write session; throws on failure
  ~Session();
  Session(const Session&) = delete;  // owns the session handle
  Session& operator=(const Session&) = delete;
  CK_SESSION_HANDLE h() const noexcept { return m_h; }

  // The object of `cls` with CKA_ID = id, or CK_INVALID_HANDLE.
  CK_OBJECT_HANDLE find(CK_OBJECT_CLASS cls, const std::vector<std::uint8_t>& id) const;
  bool get_bool(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type, bool fallback) const;
  // Variable-length attribute; empty with `rv` set when unavailable.
  std::vector<std::uint8_t> get_bytes(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
                                      CK_RV* rv = nullptr) const;

 private:
  CK_FUNCTION_LIST_PTR m_f;
  CK_SESSION_HANDLE m_h = CK_INVALID_HANDLE;
};

// Trailing-space-trimmed token label from CK_TOKEN_INFO.
std::string token_label(const CK_TOKEN_INFO& info);

}  // namespace fleetsign::hsm::raw
