#include "pkcs11_raw.hpp"

#include <dlfcn.h>

#include <cstdio>

#include "fleetsign/error.hpp"

namespace fleetsign::hsm::raw {

std::string ckr_name(CK_RV rv) {
  switch (rv) {
    case CKR_OK:
      return "CKR_OK";
    case CKR_GENERAL_ERROR:
      return "CKR_GENERAL_ERROR";
    case CKR_FUNCTION_FAILED:
      return "CKR_FUNCTION_FAILED";
    case CKR_ARGUMENTS_BAD:
      return "CKR_ARGUMENTS_BAD";
    case CKR_ATTRIBUTE_SENSITIVE:
      return "CKR_ATTRIBUTE_SENSITIVE";
    case CKR_ATTRIBUTE_TYPE_INVALID:
      return "CKR_ATTRIBUTE_TYPE_INVALID";
    case CKR_ATTRIBUTE_VALUE_INVALID:
      return "CKR_ATTRIBUTE_VALUE_INVALID";
    case CKR_DEVICE_ERROR:
      return "CKR_DEVICE_ERROR";
    case CKR_DEVICE_REMOVED:
      return "CKR_DEVICE_REMOVED";
    case CKR_DEVICE_MEMORY:
      return "CKR_DEVICE_MEMORY";
    case CKR_HOST_MEMORY:
      return "CKR_HOST_MEMORY";
    case CKR_OPERATION_ACTIVE:
      return "CKR_OPERATION_ACTIVE";
    case CKR_SESSION_CLOSED:
      return "CKR_SESSION_CLOSED";
    case CKR_MECHANISM_INVALID:
      return "CKR_MECHANISM_INVALID";
    case CKR_OBJECT_HANDLE_INVALID:
      return "CKR_OBJECT_HANDLE_INVALID";
    case CKR_PIN_INCORRECT:
      return "CKR_PIN_INCORRECT";
    case CKR_PIN_INVALID:
      return "CKR_PIN_INVALID";
    case CKR_PIN_LEN_RANGE:
      return "CKR_PIN_LEN_RANGE";
    case CKR_PIN_LOCKED:
      return "CKR_PIN_LOCKED";
    case CKR_SESSION_HANDLE_INVALID:
      return "CKR_SESSION_HANDLE_INVALID";
    case CKR_SLOT_ID_INVALID:
      return "CKR_SLOT_ID_INVALID";
    case CKR_TEMPLATE_INCOMPLETE:
      return "CKR_TEMPLATE_INCOMPLETE";
    case CKR_TEMPLATE_INCONSISTENT:
      return "CKR_TEMPLATE_INCONSISTENT";
    case CKR_TOKEN_NOT_PRESENT:
      return "CKR_TOKEN_NOT_PRESENT";
    case CKR_TOKEN_WRITE_PROTECTED:
      return "CKR_TOKEN_WRITE_PROTECTED";
    case CKR_USER_NOT_LOGGED_IN:
      return "CKR_USER_NOT_LOGGED_IN";
    case CKR_USER_ALREADY_LOGGED_IN:
      return "CKR_USER_ALREADY_LOGGED_IN";
    case CKR_CRYPTOKI_NOT_INITIALIZED:
      return "CKR_CRYPTOKI_NOT_INITIALIZED";
    case CKR_CRYPTOKI_ALREADY_INITIALIZED:
      return "CKR_CRYPTOKI_ALREADY_INITIALIZED";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "CKR 0x%lx", static_cast<unsigned long>(rv));
      return buf;
    }
  }
}

namespace {

CK_FUNCTION_LIST_PTR function_list(void* handle, const std::filesystem::path& path) {
  using GetFunctionList = CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR);
  auto get = reinterpret_cast<GetFunctionList>(dlsym(handle, "C_GetFunctionList"));
  CK_FUNCTION_LIST_PTR f = nullptr;
  if (get == nullptr || get(&f) != CKR_OK || f == nullptr) {
    dlclose(handle);
    throw Error(ErrorCode::kModuleNotFound, "PKCS#11 module " + path.string() +
                                                ": no C_GetFunctionList (not a PKCS#11 module)");
  }
  return f;
}

}  // namespace

Module Module::attach(const std::filesystem::path& path) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (handle == nullptr) {
    throw Error(ErrorCode::kModuleNotFound,
                "PKCS#11 module " + path.string() + ": not loaded in this process");
  }
  return Module(handle, function_list(handle, path), false);
}

Module Module::load(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw Error(ErrorCode::kModuleNotFound, "PKCS#11 module " + path.string() + ": no such file");
  }
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    throw Error(ErrorCode::kModuleNotFound,
                "PKCS#11 module " + path.string() + ": cannot be loaded: " + dlerror());
  }
  CK_FUNCTION_LIST_PTR f = function_list(handle, path);
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  const CK_RV rv = f->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    dlclose(handle);
    throw Error(ErrorCode::kTokenError,
                "PKCS#11 module " + path.string() + ": C_Initialize failed: " + ckr_name(rv));
  }
  return Module(handle, f, rv == CKR_OK);
}

Module::Module(Module&& other) noexcept
    : m_handle(other.m_handle), m_f(other.m_f), m_finalize(other.m_finalize) {
  other.m_handle = nullptr;
  other.m_f = nullptr;
  other.m_finalize = false;
}

Module::~Module() {
  if (m_finalize && m_f != nullptr) {
    m_f->C_Finalize(nullptr);
  }
  if (m_handle != nullptr) {
    dlclose(m_handle);
  }
}

Session::Session(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot) : m_f(f) {
  const CK_RV rv =
      f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &m_h);
  if (rv != CKR_OK) {
    throw Error(ErrorCode::kTokenError, "C_OpenSession failed: " + ckr_name(rv));
  }
}

Session::~Session() {
  if (m_h != CK_INVALID_HANDLE) {
    m_f->C_CloseSession(m_h);
  }
}

CK_OBJECT_HANDLE Session::find(CK_OBJECT_CLASS cls, const std::vector<std::uint8_t>& id) const {
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof cls},
      {CKA_ID, const_cast<std::uint8_t*>(id.data()), id.size()},
  };
  CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
  CK_ULONG count = 0;
  if (m_f->C_FindObjectsInit(m_h, tmpl, 2) != CKR_OK) {
    return CK_INVALID_HANDLE;
  }
  m_f->C_FindObjects(m_h, &obj, 1, &count);
  m_f->C_FindObjectsFinal(m_h);
  return count == 1 ? obj : CK_INVALID_HANDLE;
}

bool Session::get_bool(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type, bool fallback) const {
  CK_BBOOL value = fallback ? CK_TRUE : CK_FALSE;
  CK_ATTRIBUTE attr{type, &value, sizeof value};
  if (m_f->C_GetAttributeValue(m_h, obj, &attr, 1) != CKR_OK) {
    return fallback;
  }
  return value == CK_TRUE;
}

std::vector<std::uint8_t> Session::get_bytes(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
                                             CK_RV* rv_out) const {
  CK_ATTRIBUTE attr{type, nullptr, 0};
  CK_RV rv = m_f->C_GetAttributeValue(m_h, obj, &attr, 1);
  std::vector<std::uint8_t> out;
  if (rv == CKR_OK && attr.ulValueLen != static_cast<CK_ULONG>(-1)) {
    out.resize(attr.ulValueLen);
    attr.pValue = out.data();
    rv = m_f->C_GetAttributeValue(m_h, obj, &attr, 1);
    if (rv != CKR_OK) {
      out.clear();
    }
  }
  if (rv_out != nullptr) {
    *rv_out = rv;
  }
  return out;
}

std::string token_label(const CK_TOKEN_INFO& info) {
  std::string label(reinterpret_cast<const char*>(info.label), sizeof info.label);
  while (!label.empty() && (label.back() == ' ' || label.back() == '\0')) {
    label.pop_back();
  }
  return label;
}

}  // namespace fleetsign::hsm::raw
