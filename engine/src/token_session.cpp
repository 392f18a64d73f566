#include "fleetsign/engine/token_session.hpp"

#include <Poco/JSON/Object.h>

#include <sstream>

#include "fleetsign/engine/ca_recovery.hpp"

namespace fleetsign::engine {

namespace {

void audit_notice(Stores& registry, const std::string& action, const std::string& subject,
                  const std::string& notice) {
  Poco::JSON::Object detail;
  detail.set("notice", notice);
  std::ostringstream text;
  detail.stringify(text);
  registry.audit(action, subject, text.str());
}

}  // namespace

TokenSession open_token_session(const Home& home, Stores& registry,
                                const std::function<hsm::Pin()>& pin,
                                const TokenSessionOptions& options) {
  TokenSession session{HomeLock::acquire(home.config().dir, options.wait_for_lock), nullptr, {}};
  session.token = home.open_token(pin(), &session.notices);
  for (const auto& line : session.notices) {
    audit_notice(registry, "token.restore", home.config().token_label, line);
  }
  for (auto& line : recover_pending_cas(registry, *session.token, home.embedded_token())) {
    session.notices.push_back(std::move(line));
  }
  if (options.check_registry && home.embedded_token()) {
    refuse_registry_without_cas(registry, *session.token, home.registry_path());
  }
  return session;
}

}  // namespace fleetsign::engine
