#include <Poco/JSON/Array.h>

#include <cstdio>

#include "cli.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

namespace {

hsm::Pin user_pin_for_init(const Args& a, const char* prompt) {
  return hsm::Pin::from_sources(path_option(a, "pin-file"), "FLEETSIGN_PIN", prompt);
}

// `init --module M --token-label L`: an existing token (a real HSM's) is adopted, never
// initialised; a new one is made only on request, with the SO PIN.
engine::Home make_home(Context& ctx, std::vector<hsm::KeyType>& offered) {
  const Args& a = ctx.args();
  const auto module = path_option(a, "module");
  const auto label = a.get("token-label");
  if (label && label->empty()) {
    throw Error(ErrorCode::kUsage, "--token-label must not be empty");
  }
  const bool init_token = !module || a.has("init-token");
  const std::string registry = a.get("registry").value_or("");
  if (module && !init_token) {
    if (a.has("so-pin-file")) {
      throw Error(ErrorCode::kUsage,
                  "--so-pin-file is only for --init-token: an existing token is adopted with the "
                  "user PIN and is never re-initialised");
    }
    const hsm::Pin user_pin = user_pin_for_init(a, "user PIN of the existing token: ");
    try {
      return engine::Home::adopt(ctx.home_dir(), *module, label.value_or("fleetsign"), user_pin,
                                 &offered, registry);
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kTokenNotFound) {
        throw;
      }
      throw Error(e.code(), std::string(e.what()) +
                                "; to create a new token in a free slot, add --init-token "
                                "(needs --so-pin-file or FLEETSIGN_SO_PIN)");
    }
  }
  const hsm::Pin so_pin = hsm::Pin::from_sources(path_option(a, "so-pin-file"), "FLEETSIGN_SO_PIN",
                                                 "new SO PIN for the token: ");
  const hsm::Pin user_pin = user_pin_for_init(a, "new user PIN for the token: ");
  try {
    return engine::Home::init(ctx.home_dir(), module, label, so_pin, user_pin, registry);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kAlreadyExists || !module) {
      throw;
    }
    throw Error(e.code(), std::string(e.what()) +
                              "; fleetsign never re-initialises a token: leave out --init-token "
                              "to adopt it with its user PIN");
  }
}

int run_init(Context& ctx) {
  std::vector<hsm::KeyType> offered;
  const engine::Home home = make_home(ctx, offered);
  const auto& c = home.config();
  const bool adopted = !c.softhsm_conf && !ctx.args().has("init-token");
  if (ctx.json()) {
    Poco::JSON::Object obj;
    obj.set("home", c.dir.string());
    obj.set("module", c.module.string());
    obj.set("token_label", c.token_label);
    obj.set("embedded_token", c.softhsm_conf.has_value());
    obj.set("adopted_token", adopted);
    if (adopted) {
      Poco::JSON::Array types;
      for (const hsm::KeyType t : offered) {
        types.add(std::string(hsm::key_type_name(t)));
      }
      obj.set("ca_key_types", types);
    }
    obj.set("registry", home.registry_path().string());
    obj.set("policy", home.policy_path().string());
    ctx.print_json(obj);
  } else {
    std::printf(
        "initialised fleetsign home %s\n  token     '%s' in %s%s\n  registry  %s\n  policy    %s\n",
        c.dir.c_str(), c.token_label.c_str(), c.module.c_str(),
        c.softhsm_conf ? " (private SoftHSM2 store in the home)"
                       : (adopted ? " (existing token, adopted)" : " (new token)"),
        home.registry_path().c_str(), home.policy_path().c_str());
    if (adopted) {
      std::printf("  CA keys   %s\n", hsm::key_type_names(offered).c_str());
    }
  }
  return 0;
}

}  // namespace

void add_init_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"init"},
      "[--module PATH --token-label LABEL [--init-token --so-pin-file F]] [--pin-file F] "
      "[--registry postgresql://USER@HOST[:PORT]/DB] [--json]",
      "create a home: config, policy, registry, and (without --module) a private SoftHSM2 token; "
      "with --module, adopt the existing token LABEL (user PIN only, never re-initialised); with "
      "--registry, the registry lives in that PostgreSQL database instead of the home's SQLite "
      "file",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "module", "PATH",
                   "PKCS#11 module of an existing token to adopt, instead of a private SoftHSM2 "
                   "token");
        add_option(s, "token-label", "LABEL", "token label (default: fleetsign)");
        add_flag(s, "init-token",
                 "with --module: initialise a NEW token in a free slot (needs the SO PIN); never "
                 "touches an existing one");
        add_option(s, "so-pin-file", "FILE",
                   "file holding the new SO PIN (else FLEETSIGN_SO_PIN); only for a new token");
        add_option(s, "pin-file", "FILE", "file holding the user PIN (else FLEETSIGN_PIN)");
        add_option(s, "registry", "URL",
                   "PostgreSQL registry (postgresql://USER@HOST[:PORT]/DB, an empty database or "
                   "one an interrupted init left; the password through PGPASSWORD or "
                   "~/.pgpass, never in the URL); default: the SQLite file in the home");
        add_flag(s, "json", "print the result as JSON");
      },
      run_init});
}

}  // namespace fleetsign::cli
