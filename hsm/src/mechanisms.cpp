#include "mechanisms.hpp"

#include <algorithm>
#include <utility>

namespace fleetsign::hsm::raw {

namespace {

struct MechanismSupport {
  bool keygen = false;
  bool sign = false;
  CK_ULONG min_bits = 0;
  CK_ULONG max_bits = 0;
  bool allows(CK_ULONG bits) const {
    return keygen && sign && (max_bits == 0 || (bits >= min_bits && bits <= max_bits));
  }
};

// What the slot's module offers for one kind of key: `gen` (key pair generation) and `sign`.
MechanismSupport mechanism_support(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot, CK_MECHANISM_TYPE gen,
                                   CK_MECHANISM_TYPE sign) {
  MechanismSupport out;
  CK_MECHANISM_INFO info{};
  if (f->C_GetMechanismInfo(slot, gen, &info) == CKR_OK) {
    out.keygen = (info.flags & CKF_GENERATE_KEY_PAIR) != 0;
    out.min_bits = info.ulMinKeySize;
    out.max_bits = info.ulMaxKeySize;
  }
  CK_MECHANISM_INFO sign_info{};
  if (f->C_GetMechanismInfo(slot, sign, &sign_info) == CKR_OK) {
    out.sign = (sign_info.flags & CKF_SIGN) != 0;
  }
  return out;
}

bool module_lists(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot, CK_MECHANISM_TYPE m) {
  CK_ULONG n = 0;
  if (f->C_GetMechanismList(slot, nullptr, &n) != CKR_OK) {
    return false;
  }
  std::vector<CK_MECHANISM_TYPE> list(n);
  if (f->C_GetMechanismList(slot, list.data(), &n) != CKR_OK) {
    return false;
  }
  list.resize(n);
  return std::find(list.begin(), list.end(), m) != list.end();
}

}  // namespace

std::vector<KeyType> supported_key_types(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot) {
  std::vector<KeyType> out;
  if (module_lists(f, slot, CKM_EC_KEY_PAIR_GEN) && module_lists(f, slot, CKM_ECDSA)) {
    MechanismSupport ec = mechanism_support(f, slot, CKM_EC_KEY_PAIR_GEN, CKM_ECDSA);
    if (ec.max_bits != 0 && ec.max_bits < 128) {  // some modules count EC sizes in bytes
      ec.min_bits *= 8;
      ec.max_bits *= 8;
    }
    for (const auto& [type, bits] : {std::pair{KeyType::kEcP256, 256}, {KeyType::kEcP384, 384}}) {
      if (ec.allows(bits)) {
        out.push_back(type);
      }
    }
  }
  if (module_lists(f, slot, CKM_RSA_PKCS_KEY_PAIR_GEN) && module_lists(f, slot, CKM_RSA_PKCS)) {
    const MechanismSupport rsa =
        mechanism_support(f, slot, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS);
    for (const auto& [type, bits] : {std::pair{KeyType::kRsa2048, 2048},
                                     {KeyType::kRsa3072, 3072},
                                     {KeyType::kRsa4096, 4096}}) {
      if (rsa.allows(bits)) {
        out.push_back(type);
      }
    }
  }
  return out;
}

}  // namespace fleetsign::hsm::raw
