// Which CA key types a token can make and sign with, asked of its module. Private to hsm/.
#pragma once

#include <p11-kit/pkcs11.h>

#include <vector>

#include "fleetsign/hsm/key_ref.hpp"

namespace fleetsign::hsm::raw {

// The key types for which the slot's module lists key pair generation and signing mechanisms
// (CKM_EC_KEY_PAIR_GEN + CKM_ECDSA, CKM_RSA_PKCS_KEY_PAIR_GEN + CKM_RSA_PKCS) and whose key size
// is within what C_GetMechanismInfo allows. The module must be initialised.
std::vector<KeyType> supported_key_types(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot);

}  // namespace fleetsign::hsm::raw
