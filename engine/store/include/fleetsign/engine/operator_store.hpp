// The people and systems that may use fleetsign's HTTP service (issue 12): each holds a client
// certificate from an operator CA whose key is in the token, and a role. The registry keeps who
// holds which certificate; a request's certificate (its SHA-256) is looked up here on every
// request, so removing an operator takes effect at once, without waiting for a CRL.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fleetsign::engine {

// auditor reads; factory reads and issues batches for its own enrollment groups; operator does
// everything.
enum class OperatorRole { kAuditor, kFactory, kOperator };
std::string_view operator_role_name(OperatorRole role) noexcept;  // "auditor", …
std::optional<OperatorRole> parse_operator_role(std::string_view name) noexcept;

struct OperatorRecord {
  std::string name;  // the certificate's CN (the device-ID alphabet)
  OperatorRole role = OperatorRole::kAuditor;
  std::vector<std::string> groups;  // factory: the enrollment groups it issues for
  std::string ca_name;              // the operator CA that issued the certificate
  std::string serial;               // the certificate's serial (upper-case hex)
  std::string sha256;               // its thumbprint (upper-case hex): what a request presents
  std::int64_t not_after = 0;
  std::int64_t created_at = 0;
  std::int64_t removed_at = 0;  // 0 = active
};

class OperatorStore {
 public:
  virtual ~OperatorStore() = default;
  // Records an operator (audited). kAlreadyExists when an active operator has that name.
  virtual void add_operator(const OperatorRecord& op) = 0;
  // The active operator holding the certificate with this SHA-256, if any (removed: none).
  virtual std::optional<OperatorRecord> find_operator_by_cert(const std::string& sha256) = 0;
  // Every operator, removed ones included, by created_at.
  virtual std::vector<OperatorRecord> list_operators() = 0;
  // Removes the active operator `name` (audited); kNotFound when there is none.
  virtual void remove_operator(const std::string& name, std::int64_t at) = 0;
};

}  // namespace fleetsign::engine
