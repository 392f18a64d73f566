// Registry: the HTTP service's operators (schema v13). See operator_store.hpp for the contract.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>

#include <sstream>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

constexpr const char* kColumns =
    "SELECT name, role, groups_json, ca_name, serial, sha256, not_after, created_at, removed_at "
    "FROM operators ";

std::string groups_json(const std::vector<std::string>& groups) {
  Poco::JSON::Array arr;
  for (const auto& g : groups) arr.add(g);
  std::ostringstream out;
  arr.stringify(out);
  return out.str();
}

std::vector<std::string> parse_groups(const std::string& text) {
  std::vector<std::string> out;
  try {
    const auto arr = Poco::JSON::Parser().parse(text).extract<Poco::JSON::Array::Ptr>();
    for (std::size_t i = 0; arr && i < arr->size(); ++i)
      out.push_back(arr->getElement<std::string>(i));
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kRegistryError, "operators: groups '" + text + "' are not a JSON array");
  }
  return out;
}

struct OperatorRow {
  static OperatorRecord read(sql::Stmt& st) {
    OperatorRecord rec;
    rec.name = std::string(st.text(0));
    const std::string role(st.text(1));
    const std::string groups(st.text(2));
    rec.ca_name = std::string(st.text(3));
    rec.serial = std::string(st.text(4));
    rec.sha256 = std::string(st.text(5));
    rec.not_after = st.int64(6);
    rec.created_at = st.int64(7);
    rec.removed_at = st.int64(8);
    const auto parsed = parse_operator_role(role);
    if (!parsed) {
      throw Error(ErrorCode::kRegistryError,
                  "operator '" + rec.name + "': unknown role '" + role + "' in the registry");
    }
    rec.role = *parsed;
    rec.groups = parse_groups(groups);
    return rec;
  }
};

}  // namespace

std::string_view operator_role_name(OperatorRole role) noexcept {
  switch (role) {
    case OperatorRole::kAuditor:
      return "auditor";
    case OperatorRole::kFactory:
      return "factory";
    case OperatorRole::kOperator:
      return "operator";
  }
  return "auditor";
}

std::optional<OperatorRole> parse_operator_role(std::string_view name) noexcept {
  for (const OperatorRole r :
       {OperatorRole::kAuditor, OperatorRole::kFactory, OperatorRole::kOperator}) {
    if (operator_role_name(r) == name) return r;
  }
  return std::nullopt;
}

void Registry::add_operator(const OperatorRecord& op) {
  const std::string what = "adding operator '" + op.name + "'";
  m_impl->write(what, [&] {
    if (m_impl->count("SELECT COUNT(*) FROM operators WHERE name = ? AND removed_at = 0",
                      op.name) != 0) {
      throw Error(ErrorCode::kAlreadyExists,
                  what + ": an active operator has that name (remove it first)");
    }
    const std::string role(operator_role_name(op.role));
    const std::string groups = groups_json(op.groups);
    m_impl->change(
        "INSERT INTO operators (sha256, name, role, groups_json, ca_name, serial, "
        "not_after, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        op.sha256, op.name, role, groups, op.ca_name, op.serial, op.not_after,
        m_impl->stamp(op.created_at));
    registry_detail::audit_row(*m_impl, "operator.add", op.name,
                               json_object({{"role", role},
                                            {"groups", groups},
                                            {"ca", op.ca_name},
                                            {"serial", op.serial},
                                            {"sha256", op.sha256}}));
  });
}

std::optional<OperatorRecord> Registry::find_operator_by_cert(const std::string& sha256) {
  return m_impl->guarded("looking up an operator certificate", [&] {
    auto rows = m_impl->select<OperatorRow>(
        std::string(kColumns) + "WHERE sha256 = ? AND removed_at = 0", sha256);
    return rows.empty() ? std::nullopt : std::optional<OperatorRecord>(std::move(rows.front()));
  });
}

std::vector<OperatorRecord> Registry::list_operators() {
  return m_impl->guarded("listing operators", [&] {
    return m_impl->select<OperatorRow>(std::string(kColumns) + "ORDER BY created_at, name");
  });
}

void Registry::remove_operator(const std::string& name, std::int64_t at) {
  const std::string what = "removing operator '" + name + "'";
  m_impl->write(what, [&] {
    Registry::Impl::expect_row(
        m_impl->change("UPDATE operators SET removed_at = ? WHERE name = ? AND removed_at = 0",
                       m_impl->stamp(at), name),
        what);
    registry_detail::audit_row(*m_impl, "operator.remove", name, "{}");
  });
}

}  // namespace fleetsign::engine
