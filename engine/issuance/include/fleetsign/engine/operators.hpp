// Operators of the HTTP service (issue 12): a person or a system gets a client certificate from
// an operator CA whose key is in the token, and a role recorded in the registry. There are no
// passwords: the certificate is the credential, and it travels as a PKCS#12 (its key made here,
// in software, for the holder; the CA's key never leaves the token).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {

// The operator CA's name when none is given; `add_operator` creates it (a root in the token) on
// first use.
inline constexpr const char* kDefaultOperatorCa = "operators";

struct OperatorSpec {
  std::string name;  // the certificate's CN: the device-ID alphabet, at most 64 characters
  OperatorRole role = OperatorRole::kAuditor;
  // factory only, and required there: enrollment groups (their primary CA issues) or the
  // policy's issuance groups (`issue --group`)
  std::vector<std::string> groups;
  std::string ca = kDefaultOperatorCa;
  int days = 397;
};

struct OperatorCredential {
  OperatorRecord record;
  Der cert;
  Der pfx;                  // key, certificate and chain (the root included)
  bool created_ca = false;  // the operator CA was made by this call
};

// The operator CA `name`: found, or (the default name only) created as a root in the token.
// kNotFound for another name that does not exist; kInvalidArgument when an enrollment group
// trusts it or one of its issuers (its certificates would be device identities). `created`
// tells which.
CaRecord ensure_operator_ca(CaService& cas, Stores& stores, const std::string& name,
                            bool* created = nullptr);

// Checks the spec (kInvalidArgument naming the field: a name outside the alphabet, groups for a
// role without, a factory without groups; kNotFound for an unknown group or a named CA that does
// not exist; kAlreadyExists for an active operator of that name), creates the default operator CA
// when missing, issues the certificate (its intent recorded before the token signs, like every
// certificate), builds the PKCS#12 under `password`, hands it to `deliver` (which writes it; an
// exception there records no operator) and then records the operator (audited).
OperatorCredential add_operator(CaService& cas, Stores& stores, const policy::Policy& policy,
                                const OperatorSpec& spec, const char* password,
                                const std::function<void(const OperatorCredential&)>& deliver);

}  // namespace fleetsign::engine
