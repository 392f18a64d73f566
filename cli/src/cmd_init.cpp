#include <cstdio>

#include "cli.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

namespace {

int run_init(Context& ctx) {
  const Args& a = ctx.args();
  const auto module = path_option(a, "module");
  const auto label = a.get("token-label");
  if (!module && label && label->empty()) {
    throw Error(ErrorCode::kUsage, "--token-label must not be empty");
  }
  const hsm::Pin so_pin = hsm::Pin::from_sources(path_option(a, "so-pin-file"), "FLEETSIGN_SO_PIN",
                                                 "new SO PIN for the token: ");
  const hsm::Pin user_pin = hsm::Pin::from_sources(path_option(a, "pin-file"), "FLEETSIGN_PIN",
                                                   "new user PIN for the token: ");
  const engine::Home home = engine::Home::init(ctx.home_dir(), module, label, so_pin, user_pin);
  const auto& c = home.config();
  if (ctx.json()) {
    Poco::JSON::Object obj;
    obj.set("home", c.dir.string());
    obj.set("module", c.module.string());
    obj.set("token_label", c.token_label);
    obj.set("embedded_token", c.softhsm_conf.has_value());
    obj.set("registry", home.registry_path().string());
    obj.set("policy", home.policy_path().string());
    ctx.print_json(obj);
  } else {
    std::printf(
        "initialised fleetsign home %s\n  token     '%s' in %s%s\n  registry  %s\n  policy    %s\n",
        c.dir.c_str(), c.token_label.c_str(), c.module.c_str(),
        c.softhsm_conf ? " (private SoftHSM2 store in the home)" : "", home.registry_path().c_str(),
        home.policy_path().c_str());
  }
  return 0;
}

}  // namespace

void add_init_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"init"},
      "[--module PATH --token-label LABEL] [--so-pin-file F] [--pin-file F] [--json]",
      "create a home: config, policy, registry, and (without --module) a private SoftHSM2 token",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "module", "PATH",
                   "PKCS#11 module to use instead of a private SoftHSM2 token");
        add_option(s, "token-label", "LABEL", "token label (default: fleetsign)");
        add_option(s, "so-pin-file", "FILE", "file holding the new SO PIN (else FLEETSIGN_SO_PIN)");
        add_option(s, "pin-file", "FILE", "file holding the new user PIN (else FLEETSIGN_PIN)");
        add_flag(s, "json", "print the result as JSON");
      },
      run_init});
}

}  // namespace fleetsign::cli
