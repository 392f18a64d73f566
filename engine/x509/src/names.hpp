// Reading X.501 Names on the hot paths (CSR check, authentication) without OpenSSL's decoder.
// Private to engine/.
#pragma once

#include <string>

#include "der.hpp"
#include "fleetsign/result.hpp"

namespace fleetsign::engine {

// The single CN of a DER Name (UTF8String, PrintableString or IA5String). Codes: kCsrMalformed
// for a broken Name, kDeviceIdInvalid for no CN, several CNs, or another string type.
Result<std::string> single_common_name(der::Bytes name);

}  // namespace fleetsign::engine
