#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <optional>

#include "cli.hpp"
#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/revocation.hpp"

namespace fleetsign::cli {

// RFC 3339 (any offset, a fraction of a second), a date, or unix seconds (jobs::parse_time).
std::int64_t parse_auth_time(const std::string& text) {
  try {
    return jobs::parse_time(text, "--at");
  } catch (const Error& e) {
    throw Error(ErrorCode::kUsage, e.what());
  }
}

Poco::JSON::Object auth_decision_json(const engine::AuthDecision& d, std::int64_t at) {
  Poco::JSON::Object o;
  o.set("allowed", d.allowed);
  o.set("rule", d.rule);
  o.set("reason", d.reason);
  o.set("registration_id", d.registration_id);
  o.set("enrollment", d.enrollment);
  o.set("slot", d.slot);
  o.set("serial", d.leaf_serial);
  o.set("sha256", d.leaf_sha256);
  o.set("at", engine::iso8601(at));
  return o;
}

namespace {

int run_auth_check(Context& ctx) {
  const Args& a = ctx.args();
  const std::string file = a.require("chain");
  const auto chain = engine::read_certificates(file, "chain", kChainFileLimit);
  const std::int64_t at = a.has("at") ? parse_auth_time(*a.get("at")) : ctx.clock().now();
  engine::Authenticator auth(ctx.registry());
  const auto d = auth.check(chain, at, a.get("registration-id").value_or(""), a.has("openssl"));
  if (ctx.json()) {
    ctx.print_json(auth_decision_json(d, at));
  } else {
    std::printf("%s: %s (%s)\n  %s\n  registration ID %s, serial %s\n",
                d.allowed ? "ALLOWED" : "REFUSED", d.rule.c_str(), file.c_str(), d.reason.c_str(),
                d.registration_id.c_str(), d.leaf_serial.c_str());
  }
  // 0 = allowed; a refusal is status 7 ("refused"), like any failed check.
  return d.allowed ? 0 : exit_status_for(ErrorCode::kVerificationSignatureInvalid);
}

}  // namespace

void add_auth_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"auth", "check"},
      "--chain FILE [--at TIME] [--registration-id ID] [--openssl] [--json]",
      "decide as the cloud would whether a device presenting this chain is allowed, and by which "
      "rule "
      "(exit 0 = allowed, 7 = refused)",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "chain", "FILE", "PEM: the device certificate first, then any intermediates");
        add_option(s, "at", "TIME", "decide at this time (RFC 3339, a date or unix seconds)");
        add_option(s, "registration-id", "ID",
                   "the registration ID the device claims (default: its CN)");
        add_flag(s, "openssl", "validate with OpenSSL's X509_verify_cert only (no fast path)");
        add_flag(s, "json", "print the decision as JSON");
      },
      run_auth_check});
}

}  // namespace fleetsign::cli
