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
  OperatorRecord rec;
  std::string role, groups;
  void bind_into(Statement& st) {
    st, kw::into(rec.name), kw::into(role), kw::into(groups), kw::into(rec.ca_name),
        kw::into(rec.serial), kw::into(rec.sha256), kw::into(rec.not_after),
        kw::into(rec.created_at), kw::into(rec.removed_at);
  }
  OperatorRecord take() {
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
    std::int64_t active = 0;
    m_impl->m_session << "SELECT COUNT(*) FROM operators WHERE name = ? AND removed_at = 0",
        kw::into(active), kw::bind(op.name), kw::now;
    if (active != 0) {
      throw Error(ErrorCode::kAlreadyExists,
                  what + ": an active operator has that name (remove it first)");
    }
    const std::string role(operator_role_name(op.role));
    const std::string groups = groups_json(op.groups);
    const std::int64_t created = m_impl->stamp(op.created_at);
    m_impl->m_session << "INSERT INTO operators (sha256, name, role, groups_json, ca_name, serial, "
                         "not_after, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        kw::bind(op.sha256), kw::bind(op.name), kw::bind(role), kw::bind(groups),
        kw::bind(op.ca_name), kw::bind(op.serial), kw::bind(op.not_after), kw::bind(created),
        kw::now;
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
    const std::int64_t when = m_impl->stamp(at);
    Statement st = (m_impl->m_session
                        << "UPDATE operators SET removed_at = ? WHERE name = ? AND removed_at = 0",
                    kw::bind(when), kw::bind(name));
    Registry::Impl::expect_row(st, what);
    registry_detail::audit_row(*m_impl, "operator.remove", name, "{}");
  });
}

}  // namespace fleetsign::engine
