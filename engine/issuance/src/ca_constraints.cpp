#include "fleetsign/engine/ca_constraints.hpp"

#include <openssl/x509v3.h>

#include <cctype>

#include "ossl.hpp"

namespace fleetsign::engine {

namespace {

constexpr std::size_t kMaxCaName = 64;

std::string ca_label(const ChainLink& link) { return "CA '" + link.name + "'"; }

// pathLenConstraint of `cert`, or nullopt when it sets none (unlimited).
std::optional<long> path_len_of(const X509* cert) {
  const long n = X509_get_pathlen(const_cast<X509*>(cert));
  return n >= 0 ? std::optional<long>(n) : std::nullopt;
}

// RFC 5280 6.1.4 (l)/(m): below the CA at `depth` (0 = the issuer) sit `depth` CAs of the chain
// and the new one, each of which uses one step of its pathLenConstraint.
std::optional<std::string> path_len_forbids(const std::vector<ChainLink>& issuers,
                                            std::optional<int> path_len) {
  for (std::size_t depth = 0; depth < issuers.size(); ++depth) {
    const auto limit = path_len_of(issuers[depth].cert);
    if (!limit) {
      continue;
    }
    const long below = static_cast<long>(depth) + 1;
    if (*limit < below) {
      return ca_label(issuers[depth]) + " has pathLen " + std::to_string(*limit) + ": it allows " +
             (*limit == 0 ? "no CA" : std::to_string(*limit) + " CA(s)") +
             " below it, and the new CA would be number " + std::to_string(below) +
             " on its path; every certificate under the new CA would fail path validation";
    }
    const long left = *limit - below;
    if (!path_len || *path_len > left) {
      return ca_label(issuers[depth]) + " has pathLen " + std::to_string(*limit) +
             ", so the new CA may allow at most " + std::to_string(left) +
             " CA(s) below it; asked for " +
             (path_len ? std::to_string(*path_len) : std::string("unlimited"));
    }
  }
  return std::nullopt;
}

std::optional<std::string> name_constraints_forbid(const std::vector<ChainLink>& issuers,
                                                   const X509_NAME* subject) {
  ossl::X509Ptr candidate(X509_new());
  X509_set_subject_name(candidate.get(), subject);
  for (const ChainLink& link : issuers) {
    auto* nc = static_cast<NAME_CONSTRAINTS*>(
        X509_get_ext_d2i(link.cert, NID_name_constraints, nullptr, nullptr));
    if (nc == nullptr) {
      continue;
    }
    const int rc = NAME_CONSTRAINTS_check(candidate.get(), nc);
    NAME_CONSTRAINTS_free(nc);
    if (rc != X509_V_OK) {
      return ca_label(link) + "'s name constraints forbid the subject " +
             ossl::subject_line(subject) + " (" + X509_verify_cert_error_string(rc) + ")";
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> chain_forbids_ca(const std::vector<ChainLink>& issuers,
                                            const X509_NAME* subject, std::optional<int> path_len) {
  if (auto why = path_len_forbids(issuers, path_len)) {
    return why;
  }
  return name_constraints_forbid(issuers, subject);
}

std::optional<std::string> check_safe_name(std::string_view name, std::string_view what) {
  const std::string w(what);
  if (name.empty()) {
    return "a " + w + " must not be empty";
  }
  if (name.size() > kMaxCaName) {
    return w + " is " + std::to_string(name.size()) + " characters; the maximum is " +
           std::to_string(kMaxCaName);
  }
  for (std::size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    const bool ok = std::isalnum(c) != 0 || (i > 0 && (c == '.' || c == '_' || c == '-'));
    if (!ok || c > 0x7F) {
      // The offending byte is shown as a number: it may be a newline or a quote.
      return w + " has byte 0x" + std::string(1, "0123456789abcdef"[c >> 4]) +
             std::string(1, "0123456789abcdef"[c & 15]) + " at position " + std::to_string(i) +
             "; a " + w + " is letters, digits, '.', '_' and '-', starting with a letter or digit";
    }
  }
  return std::nullopt;
}

std::optional<std::string> check_ca_name(std::string_view name) {
  return check_safe_name(name, "CA name");
}

}  // namespace fleetsign::engine
