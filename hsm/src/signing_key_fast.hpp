// The sessions a SigningKey signs on (token.cpp makes them, signing_key.cpp uses them): a copy of
// the key as a session object when the token keeps it protected, and a pool of sessions, one per
// concurrent signer. Private to hsm/.
#pragma once

#include <algorithm>
#include <mutex>
#include <vector>

#include "fleetsign/hsm/token.hpp"
#include "pkcs11_raw.hpp"

namespace fleetsign::hsm {

struct SigningKey::Fast {
  CK_FUNCTION_LIST_PTR f = nullptr;
  CK_SLOT_ID slot = 0;
  CK_SESSION_HANDLE owner = CK_INVALID_HANDLE;  // keeps the session-object copy alive
  CK_OBJECT_HANDLE object = CK_INVALID_HANDLE;
  bool copied = false;
  std::mutex mutex;
  std::vector<CK_SESSION_HANDLE> idle;  // sessions free for the next signer
  std::vector<CK_SESSION_HANDLE> all;

  ~Fast() {
    for (const CK_SESSION_HANDLE s : all) f->C_CloseSession(s);
    if (copied) f->C_DestroyObject(owner, object);
    if (owner != CK_INVALID_HANDLE) f->C_CloseSession(owner);
  }
  CK_SESSION_HANDLE acquire(CK_RV& rv) {
    {
      std::lock_guard lock(mutex);
      if (!idle.empty()) {
        const CK_SESSION_HANDLE s = idle.back();
        idle.pop_back();
        return s;
      }
    }
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &s);
    if (rv == CKR_OK) {
      std::lock_guard lock(mutex);
      all.push_back(s);
    }
    return s;
  }
  void release(CK_SESSION_HANDLE s) {
    std::lock_guard lock(mutex);
    idle.push_back(s);
  }
  // A session whose signing failed is never handed out again: closed (its error ignored: it may
  // be gone already), and the next signer opens a fresh one.
  void discard(CK_SESSION_HANDLE s) {
    {
      std::lock_guard lock(mutex);
      all.erase(std::remove(all.begin(), all.end(), s), all.end());
    }
    f->C_CloseSession(s);
  }
};

}  // namespace fleetsign::hsm
