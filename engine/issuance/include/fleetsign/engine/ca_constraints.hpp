// What a CA's own chain allows: the checks made before a CA certificate is created, so that no CA
// is made whose certificates would all fail path validation (RFC 5280 6.1), and the alphabet of
// CA names. Pure functions over certificates: no token, no registry. Thread-safe.
#pragma once

#include <openssl/x509.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fleetsign::engine {

// One CA above the new one: its name in the registry and its certificate (borrowed).
struct ChainLink {
  std::string name;
  const X509* cert = nullptr;
};

// Why `issuers` (the new CA's issuer first, the root last) forbids a new CA certificate whose
// subject is `subject` and which asks for `path_len` (nullopt: unlimited); nullopt when every CA
// on the path allows it. Names the CA that forbids it and why:
//   - a CA's pathLenConstraint, counting every CA below it on the path plus the new one;
//   - a requested path_len larger than a CA above still allows below the new CA;
//   - a CA's nameConstraints that exclude (or do not permit) the new subject, as OpenSSL's
//     NAME_CONSTRAINTS_check decides it.
std::optional<std::string> chain_forbids_ca(const std::vector<ChainLink>& issuers,
                                            const X509_NAME* subject, std::optional<int> path_len);

// Why `name` is not a usable CA name (nullopt when it is): 1..64 characters of A-Z a-z 0-9 . _ -,
// starting with a letter or digit. Names appear in audit lines, JSON, file names and key labels,
// so a newline, quote, slash or space is refused rather than escaped everywhere.
std::optional<std::string> check_ca_name(std::string_view name);
// The same alphabet for any name that becomes a file name or a line of output (batch IDs):
// 1-64 of letters, digits, '.', '_', '-', starting with a letter or digit. `what` names it.
std::optional<std::string> check_safe_name(std::string_view name, std::string_view what);

}  // namespace fleetsign::engine
