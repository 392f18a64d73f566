#include "fleetsign/engine/home.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/token_guard.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/new_path.hpp"

namespace fleetsign::engine {

namespace fs = std::filesystem;

#ifndef FLEETSIGN_DEFAULT_MODULE
#define FLEETSIGN_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif
const char* const kDefaultModule = FLEETSIGN_DEFAULT_MODULE;

namespace {

constexpr const char* kConfigFile = "fleetsign.json";

void write_file(const fs::path& path, const std::string& text, fs::perms perms) {
  std::ofstream out(path, std::ios::trunc);
  if (!out || !(out << text) || !(out.flush())) {
    throw Error(ErrorCode::kIo, path.string() + ": cannot be written");
  }
  out.close();
  fs::permissions(path, perms);
}

void use_embedded_softhsm(const HomeConfig& config) {
  if (config.softhsm_conf) {
    // SoftHSM2 reads this when its module initialises: must be set before any load.
    setenv("SOFTHSM2_CONF", (config.dir / *config.softhsm_conf).c_str(), 1);
  }
}

// The private SoftHSM2 configuration names its token directory by absolute path (SoftHSM2 has no
// relative one): it is rewritten whenever the home is found elsewhere (moved, copied, restored
// from a backup), so a home always uses its own tokens.
std::string softhsm_conf_text(const fs::path& dir) {
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(dir, ec);
  return "# fleetsign's private SoftHSM2 token store (never the system one)\n"
         "directories.tokendir = " +
         ((ec ? dir : canonical) / "tokens").string() +
         "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n";
}

void write_softhsm_conf(const fs::path& dir) {
  const fs::path conf = dir / "softhsm2.conf";
  const fs::path tmp = dir / "softhsm2.conf.tmp";
  write_file(tmp, softhsm_conf_text(dir), fs::perms::owner_read | fs::perms::owner_write);
  std::error_code ec;
  fs::rename(tmp, conf, ec);
  if (ec) {
    throw Error(ErrorCode::kIo, conf.string() + ": cannot be written: " + ec.message());
  }
}

void point_softhsm_conf_here(const HomeConfig& config) {
  const fs::path conf = config.dir / *config.softhsm_conf;
  std::string current;
  try {
    current = read_bounded(conf.string(), kConfigFileLimit, "SoftHSM2 configuration");
  } catch (const Error&) {
    // Missing or unreadable: written anew below.
  }
  if (current != softhsm_conf_text(config.dir)) {
    write_softhsm_conf(config.dir);
  }
}

// A directory where an `init` was killed before it wrote fleetsign.json: it holds only what init
// makes, and its token no key (keys are made only in a home). Clear it so init can start again;
// refuse if its token holds any object, whatever happened.
void clear_interrupted_init(const fs::path& dir) {
  std::error_code ec;
  // Only what fleetsign's own init left: its SoftHSM2 configuration is the mark.
  try {
    const std::string conf =
        read_bounded((dir / "softhsm2.conf").string(), kConfigFileLimit, "SoftHSM2 configuration");
    if (conf.rfind("# fleetsign's private SoftHSM2 token store", 0) != 0) {
      return;
    }
  } catch (const Error&) {
    return;
  }
  const fs::path tokens = dir / "tokens";
  if (fs::is_directory(tokens, ec)) {
    for (const auto& token : fs::directory_iterator(tokens, ec)) {
      for (const auto& f : fs::directory_iterator(token.path(), ec)) {
        const std::string name = f.path().filename().string();
        if (name != "token.object" && name != "token.lock" && name != "generation") {
          throw Error(ErrorCode::kAlreadyExists,
                      dir.string() + " holds a token with objects (" + f.path().string() +
                          ") but no fleetsign.json: it is not a home fleetsign can re-initialise");
        }
      }
    }
  }
  for (const char* name : {"tokens", "token-backup", "softhsm2.conf", "softhsm2.conf.tmp",
                           "registry.db", "registry.db-wal", "registry.db-shm"}) {
    fs::remove_all(dir / name, ec);
  }
}

// A PostgreSQL database for a new home: its tables are made now, and it must hold no row of
// another home's (not even an audit row), before any token is made for it.
void refuse_used_registry(const std::string& url) {
  const auto registry = Registry::open(url);
  if (!registry->list_cas().empty() || !registry->list_pending_cas().empty() ||
      !registry->audit_log(1).empty()) {
    throw Error(ErrorCode::kAlreadyExists,
                "the PostgreSQL registry at " + redacted_registry_url(url) +
                    " is in use (it records CAs or an audit log): it belongs to another home; "
                    "give init an empty database");
  }
}

std::string config_json(const HomeConfig& config) {
  return "{\n  \"module\": " + json_quote(config.module.string()) +
         ",\n  \"token_label\": " + json_quote(config.token_label) + ",\n  \"softhsm_conf\": " +
         (config.softhsm_conf ? json_quote(config.softhsm_conf->string()) : "null") +
         (config.registry_url.empty() ? ""
                                      : ",\n  \"registry\": " + json_quote(config.registry_url)) +
         "\n}\n";
}

TokenStoreGuard token_guard(const HomeConfig& config) {
  return TokenStoreGuard(config.dir / "tokens", config.dir / "token-backup");
}

}  // namespace

HomeConfig Home::new_home_dir(const fs::path& dir) {
  HomeConfig config;
  config.dir = fs::absolute(dir);
  if (fs::exists(config.dir / kConfigFile)) {
    throw Error(ErrorCode::kAlreadyExists, config.dir.string() + " is already a fleetsign home");
  }
  std::error_code ec;
  fs::create_directories(config.dir, ec);
  if (ec) {
    throw Error(ErrorCode::kIo, config.dir.string() + ": cannot create: " + ec.message());
  }
  fs::permissions(config.dir, fs::perms::owner_all, ec);
  clear_interrupted_init(config.dir);
  return config;
}

Home Home::init(const fs::path& dir, const std::optional<fs::path>& module,
                const std::optional<std::string>& token_label, const hsm::Pin& so_pin,
                const hsm::Pin& user_pin, const std::string& registry_url) {
  if (!registry_url.empty()) {
    check_registry_url(registry_url);
    refuse_used_registry(registry_url);
  }
  HomeConfig config = new_home_dir(dir);
  config.module = module.value_or(fs::path(kDefaultModule));
  if (token_label) {
    config.token_label = *token_label;
  }
  if (!module) {
    config.softhsm_conf = "softhsm2.conf";
    fs::create_directories(config.dir / "tokens");
    fs::permissions(config.dir / "tokens", fs::perms::owner_all);
    write_softhsm_conf(config.dir);
  }
  use_embedded_softhsm(config);
  hsm::Token::initialize({config.module, config.token_label}, so_pin, user_pin);
  if (config.softhsm_conf) {
    token_guard(config).refresh_copies();
  }
  return finish_init(config, registry_url);
}

Home Home::adopt(const fs::path& dir, const fs::path& module, const std::string& token_label,
                 const hsm::Pin& user_pin, std::vector<hsm::KeyType>* offered,
                 const std::string& registry_url) {
  if (!registry_url.empty()) {
    check_registry_url(registry_url);
    refuse_used_registry(registry_url);
  }
  if (token_label.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "adopting a token needs its label");
  }
  // 1. The token must exist, take the PIN and offer a CA key type, before DIR becomes a home.
  std::vector<hsm::KeyType> types;
  {
    const auto token = hsm::Token::open({module, token_label}, user_pin);
    types = token->key_types();
  }
  if (types.empty()) {
    throw Error(ErrorCode::kMechanismUnsupported,
                "token '" + token_label + "' (PKCS#11 module " + module.string() +
                    ") offers no CA key type: it lists neither EC (CKM_EC_KEY_PAIR_GEN + "
                    "CKM_ECDSA) nor RSA (CKM_RSA_PKCS_KEY_PAIR_GEN + CKM_RSA_PKCS) signing keys");
  }
  if (offered != nullptr) {
    *offered = types;
  }
  // 2. The home around it.
  HomeConfig config = new_home_dir(dir);
  config.module = fs::absolute(module);
  config.token_label = token_label;
  return finish_init(config, registry_url);
}

Home Home::finish_init(HomeConfig config, const std::string& registry_url) {
  config.registry_url = registry_url;
  const std::string json = config_json(config);
  if (!fs::exists(config.dir / "policy.json")) {
    write_file(config.dir / "policy.json", policy::default_policy_json(),
               fs::perms::owner_read | fs::perms::owner_write);
  }
  Home home(config);
  // The one place a registry is created (a PostgreSQL one was checked empty before the token).
  const auto registry = Registry::open(home.registry_path());
  registry->audit("home.init", config.dir.string(),
                  json_object({{"module", config.module.string()}, {"token", config.token_label}}));
  // Written last: a home exists only once everything above succeeded.
  write_file(config.dir / kConfigFile, json, fs::perms::owner_read | fs::perms::owner_write);
  return home;
}

Home Home::open(const fs::path& dir) {
  HomeConfig config;
  config.dir = fs::absolute(dir);
  std::error_code exists_ec;
  if (!fs::exists(config.dir / kConfigFile, exists_ec)) {
    throw Error(ErrorCode::kNotFound,
                config.dir.string() + " is not a fleetsign home; run `fleetsign init` first");
  }
  const std::string text =
      read_bounded((config.dir / kConfigFile).string(), kConfigFileLimit, "config file");
  try {
    Poco::JSON::Parser parser;
    auto obj = parser.parse(text).extract<Poco::JSON::Object::Ptr>();
    config.module = obj->getValue<std::string>("module");
    config.token_label = obj->getValue<std::string>("token_label");
    if (obj->has("softhsm_conf") && !obj->isNull("softhsm_conf")) {
      config.softhsm_conf = obj->getValue<std::string>("softhsm_conf");
    }
    if (obj->has("registry") && !obj->isNull("registry")) {
      config.registry_url = obj->getValue<std::string>("registry");
      check_registry_url(config.registry_url);
    }
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument,
                (config.dir / kConfigFile).string() + ": malformed: " + e.displayText());
  }
  if (config.softhsm_conf) {
    point_softhsm_conf_here(config);
  }
  use_embedded_softhsm(config);
  return Home(config);
}

void Home::switch_registry(const std::string& url) {
  check_registry_url(url);
  HomeConfig next = m_config;
  next.registry_url = url;
  write_file_atomic(m_config.dir / kConfigFile, config_json(next), 0600);
  m_config = std::move(next);
}

namespace {

// The names a worker clone writes, and its marker: written first and removed last, so that what a
// clone killed halfway (kill -9: no cleanup ran) left behind, copies of the keys among it, is
// known for what it is and replaced by the next clone there instead of staying for ever.
constexpr const char* kPartialCloneMarker = ".fleetsign-partial-clone";

void remove_clone_names(const fs::path& at) {
  std::error_code ignored;
  for (const char* name :
       {kPartialCloneMarker, "tokens", "token-backup", "policy.json", "softhsm2.conf",
        "softhsm2.conf.tmp", "fleet.json", "broker", kConfigFile}) {
    fs::remove_all(at / name, ignored);
  }
}

}  // namespace

Home Home::clone_worker(const fs::path& dir) const {
  if (sqlite_registry()) {
    throw Error(ErrorCode::kInvalidArgument,
                "home " + m_config.dir.string() +
                    " keeps its registry in a SQLite file, which only processes of this home "
                    "share: workers share a PostgreSQL registry (fleetsign registry migrate --to "
                    "postgresql://…, then clone)");
  }
  std::error_code ec;
  // Resolved once, as the kernel will create it (a ".." after a missing directory is refused: found
  // by review, `worker clone X/new/..` wrote into X and a failed clone then emptied X), and used
  // for every check, the directories and the cleanup below. Neither inside the home (a copy of its
  // token into its own token store recurses for ever) nor around it.
  const fs::path target = resolve_new_path(dir, "worker home");
  const fs::path source = fs::weakly_canonical(m_config.dir, ec);
  const auto within = [](const fs::path& inner, const fs::path& outer) {
    const auto [end, at] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
    return end == outer.end();
  };
  if (within(target, source) || within(source, target)) {
    throw Error(ErrorCode::kInvalidArgument, target.string() +
                                                 ": a worker's home is made beside the home " +
                                                 source.string() + ", not inside it or around it");
  }
  if (fs::is_regular_file(target / kPartialCloneMarker, ec) &&
      !fs::exists(target / kConfigFile, ec)) {
    remove_clone_names(target);
  }
  if (fs::exists(target, ec) && !fs::is_empty(target, ec)) {
    throw Error(ErrorCode::kAlreadyExists, target.string() +
                                               " is not empty: a worker's home is made in a new "
                                               "or empty directory");
  }
  const bool made = !fs::exists(target, ec);
  HomeConfig config = new_home_dir(target);
  write_file(config.dir / kPartialCloneMarker, "a worker clone in progress\n",
             fs::perms::owner_read | fs::perms::owner_write);
  // A clone that fails halfway is removed (it may hold copies of the keys), so it can be retried:
  // the directory it made, or, in the empty one it was given, only the names it writes.
  struct Cleanup {
    fs::path dir;
    bool made;
    bool armed = true;
    ~Cleanup() {
      if (!armed) return;
      std::error_code ignored;
      if (made) {
        fs::remove_all(dir, ignored);
        return;
      }
      remove_clone_names(dir);
    }
  } cleanup{config.dir, made};
  config.module = m_config.module;
  config.token_label = m_config.token_label;
  config.softhsm_conf = m_config.softhsm_conf;
  config.registry_url = m_config.registry_url;
  const auto copy = [&](const fs::path& from, const fs::path& to) {
    std::error_code copy_ec;
    fs::copy(from, to, fs::copy_options::recursive, copy_ec);
    if (copy_ec) {
      throw Error(ErrorCode::kIo,
                  "copying " + from.string() + " to " + to.string() + ": " + copy_ec.message());
    }
  };
  copy(policy_path(), config.dir / "policy.json");
  // What a job's runner needs to reach the fleet (a worker runs rollovers and incidents): the
  // backend (fleet.json) and the broker's client side, fleetsign's service identity (its key
  // stays owner-only) and the broker's address and trust. Not the broker's own key or config:
  // the broker runs where the fleet connects.
  if (fs::exists(m_config.dir / "fleet.json", ec)) {
    copy(m_config.dir / "fleet.json", config.dir / "fleet.json");
  }
  if (fs::exists(m_config.dir / "broker" / "service.key", ec)) {
    fs::create_directories(config.dir / "broker", ec);
    if (!ec) fs::permissions(config.dir / "broker", fs::perms::owner_all, ec);  // as the source's
    if (ec) {
      throw Error(ErrorCode::kIo, (config.dir / "broker").string() + ": " + ec.message());
    }
    for (const char* name : {"broker.json", "ca.pem", "service.crt", "service.key"}) {
      copy(m_config.dir / "broker" / name, config.dir / "broker" / name);
    }
    fs::permissions(config.dir / "broker" / "service.key",
                    fs::perms::owner_read | fs::perms::owner_write, ec);
    if (ec) {
      throw Error(ErrorCode::kIo,
                  (config.dir / "broker" / "service.key").string() + ": " + ec.message());
    }
  }
  if (config.softhsm_conf) {
    copy(m_config.dir / "tokens", config.dir / "tokens");
    if (fs::exists(m_config.dir / "token-backup", ec)) {
      copy(m_config.dir / "token-backup", config.dir / "token-backup");
    }
    write_softhsm_conf(config.dir);
  }
  // Written last: a home exists only once everything above succeeded.
  write_file(config.dir / kConfigFile, config_json(config),
             fs::perms::owner_read | fs::perms::owner_write);
  cleanup.armed = false;
  fs::remove(config.dir / kPartialCloneMarker, ec);  // a home: the marker no longer counts
  return Home(config);
}

void check_registry_url(const std::string& url) {
  // The value is not echoed: a connection string that is not a URL may hold a password.
  if (!is_postgres_url(url)) {
    throw Error(ErrorCode::kInvalidArgument,
                "the registry is not a PostgreSQL URL (postgresql://USER@HOST[:PORT]/DATABASE); "
                "leave --registry out for the embedded SQLite registry");
  }
  if (registry_url_holds_password(url)) {
    throw Error(ErrorCode::kInvalidArgument,
                "the registry URL holds a password: leave it out of the URL and give it to libpq "
                "through PGPASSWORD or ~/.pgpass (PGPASSFILE), so it is never on a command line "
                "or in fleetsign.json");
  }
  if (!registry_url_names_database(url)) {
    throw Error(ErrorCode::kInvalidArgument,
                "the registry URL names no database (postgresql://USER@HOST[:PORT]/DATABASE): "
                "without one, PostgreSQL would use the user's name, often the server's own "
                "maintenance database");
  }
}

policy::Policy Home::load_policy() const { return policy::load_policy_file(policy_path()); }

std::unique_ptr<Registry> Home::open_registry(RegistryOptions options) const {
  if (!sqlite_registry()) {
    options.must_exist = true;
    return Registry::open(registry_path(), std::move(options));
  }
  const fs::path file = registry_path();
  std::error_code ec;
  const bool exists = fs::exists(file, ec);
  if (!exists || fs::file_size(file, ec) == 0 || ec) {
    throw Error(ErrorCode::kRegistryMissing,
                "registry " + file.string() + (exists ? " is empty" : " is missing") + ", but " +
                    m_config.dir.string() +
                    " is an initialised home: the record of its CAs and certificates is gone. "
                    "Restore registry.db from a backup; a new registry is never created in place "
                    "of a lost one, because the token's CA keys would be orphaned");
  }
  return Registry::open(file, std::move(options));
}

std::unique_ptr<hsm::Token> Home::open_token(const hsm::Pin& user_pin,
                                             std::vector<std::string>* notices) const {
  if (!embedded_token()) {
    return hsm::Token::open({m_config.module, m_config.token_label}, user_pin);
  }
  const TokenStoreGuard guard = token_guard(m_config);
  auto restored = guard.restore_damaged();
  auto token = hsm::Token::open({m_config.module, m_config.token_label}, user_pin);
  // The login rewrote token.object: keep the copy in step with what just loaded.
  guard.refresh_copies();
  if (notices != nullptr) {
    notices->insert(notices->end(), restored.begin(), restored.end());
  }
  return token;
}

}  // namespace fleetsign::engine
