#include <Poco/Util/Option.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli.hpp"
#include "fleetsign/engine/sign_metrics.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

namespace fs = std::filesystem;

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = options.find(name);
  if (it == options.end() || it->second.empty()) {
    return std::nullopt;
  }
  return it->second.back();
}

std::string Args::require(const std::string& name) const {
  auto v = get(name);
  if (!v || v->empty()) {
    throw Error(ErrorCode::kUsage, "missing --" + name + " (see --help)");
  }
  return *v;
}

std::optional<int> Args::get_int(const std::string& name) const {
  auto v = get(name);
  if (!v) {
    return std::nullopt;
  }
  try {
    std::size_t used = 0;
    const int n = std::stoi(*v, &used);
    if (used == v->size()) {
      return n;
    }
  } catch (const std::exception&) {
  }
  throw Error(ErrorCode::kUsage, "--" + name + " must be an integer, got '" + *v + "'");
}

std::string Args::positional_at(std::size_t i, const std::string& what) const {
  if (i >= positional.size()) {
    throw Error(ErrorCode::kUsage, "missing " + what + " (see --help)");
  }
  return positional[i];
}

std::optional<fs::path> path_option(const Args& args, const std::string& name) {
  auto v = args.get(name);
  return v ? std::optional<fs::path>(*v) : std::nullopt;
}

void add_option(Poco::Util::OptionSet& set, const std::string& name, const std::string& arg,
                const std::string& help, bool repeatable) {
  set.addOption(Poco::Util::Option(name, "", help).argument(arg).repeatable(repeatable));
}

void add_flag(Poco::Util::OptionSet& set, const std::string& name, const std::string& help) {
  set.addOption(Poco::Util::Option(name, "", help));
}

Poco::JSON::Object::Ptr counts_json(const std::map<std::string, std::int64_t>& counts) {
  Poco::JSON::Object::Ptr out = new Poco::JSON::Object(Poco::JSON_PRESERVE_KEY_ORDER);
  for (const auto& [name, n] : counts) out->set(name, n);
  return out;
}

Context::Context(std::optional<fs::path> home_dir, Args args)
    : m_home_dir(std::move(home_dir)), m_args(std::move(args)) {
  protect_directory(this->home_dir());  // no --out may land in the home, opened or not
}

Context::~Context() {
  // What the token's signing took in this command, added to the home's (serve's /metrics): the
  // flusher saves the rest when it stops.
  m_sign_flusher.reset();
}

fs::path Context::home_dir() const {
  if (m_home_dir) {
    return *m_home_dir;
  }
  if (const char* env = std::getenv("FLEETSIGN_HOME"); env != nullptr && *env != '\0') {
    return env;
  }
  const char* user_home = std::getenv("HOME");
  return fs::path(user_home != nullptr ? user_home : ".") / ".fleetsign";
}

namespace {
engine::Services::StoresWrapper& stores_wrapper() {
  static engine::Services::StoresWrapper wrapper;
  return wrapper;
}
}  // namespace

void set_stores_wrapper(engine::Services::StoresWrapper wrapper) {
  stores_wrapper() = std::move(wrapper);
}

engine::Services& Context::services() {
  if (!m_services) {
    // The PIN is read only when a command first needs the token.
    auto pin_source = [this](const std::string& label) {
      return hsm::Pin::from_sources(path_option(m_args, "pin-file"), "FLEETSIGN_PIN",
                                    "user PIN for token '" + label + "': ");
    };
    m_services =
        std::make_unique<engine::Services>(engine::Home::open(home_dir()), std::move(pin_source));
    protect_directory(m_services->home().config().dir);
    // The HTTP service runs commands for an operator: FLEETSIGN_ACTOR=http:NAME names them.
    if (const char* actor = std::getenv("FLEETSIGN_ACTOR"); actor != nullptr && *actor != '\0') {
      m_services->set_actor(actor);
    } else if (const char* user = std::getenv("USER"); user != nullptr && *user != '\0') {
      m_services->set_actor(user);
    }
    if (stores_wrapper()) {
      m_services->wrap_stores(stores_wrapper());
    }
  }
  return *m_services;
}

hsm::Token& Context::token() { return open_token(true); }

hsm::Token& Context::token_for_inspection() { return open_token(false); }

engine::CaService& Context::cas() {
  token();  // the CA service needs the token: open it here, with the CLI's advice and notices
  return services().cas();
}

hsm::Token& Context::open_token(bool check_registry) {
  engine::Services& s = services();
  s.set_wait_for_lock(m_args.has("wait"));
  const std::size_t shown = s.notices().size();
  hsm::Token* token = nullptr;
  try {
    token = check_registry ? &s.token() : &s.token_for_inspection();
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kRegistryMissing) {
      throw Error(e.code(), std::string(e.what()) +
                                " (`fleetsign ca orphans` lists the keys the registry lacks)");
    }
    if (e.code() == ErrorCode::kHomeBusy) {
      throw Error(e.code(), std::string(e.what()) + "; add --wait to wait for it");
    }
    throw;
  }
  if (!m_sign_flusher) {
    m_sign_flusher =
        std::make_unique<engine::SignLatencyFlusher>(home_dir(), std::chrono::seconds(10));
  }
  if (s.notices().size() != shown) {
    for (const auto& line : s.notices()) {
      std::fprintf(stderr, "fleetsign: %s\n", line.c_str());
    }
  }
  return *token;
}

void Context::print_json(const Poco::JSON::Object& obj) const {
  std::ostringstream s;
  obj.stringify(s);
  std::cout << s.str() << std::endl;
}

// The .pfx password, when `needed` (see cli.hpp): from --pfx-password-file, FLEETSIGN_PFX_PASSWORD
// or a prompt. An empty password (it would leave the keys unprotected) or one with a NUL byte (it
// would be cut there) is refused, wherever it came from.
std::optional<hsm::Pin> pfx_password(const Args& a, bool needed, const std::string& needed_by) {
  if (!needed) {
    return std::nullopt;
  }
  const auto file = path_option(a, "pfx-password-file");
  const char* env = std::getenv("FLEETSIGN_PFX_PASSWORD");
  const std::string source = file             ? "--pfx-password-file " + file->string()
                             : env != nullptr ? std::string("FLEETSIGN_PFX_PASSWORD")
                                              : std::string("the typed password");
  if (!file && env != nullptr && *env == '\0') {
    throw Error(ErrorCode::kInvalidArgument,
                "FLEETSIGN_PFX_PASSWORD is empty: a .pfx needs a password that protects its key");
  }
  if (!file && env == nullptr && isatty(STDIN_FILENO) == 0) {
    throw Error(ErrorCode::kUsage,
                needed_by + " needs a password: --pfx-password-file F or FLEETSIGN_PFX_PASSWORD");
  }
  // The PIN reader's refusals (empty, NUL byte) are a bad argument here, not a token problem.
  hsm::Pin password = [&] {
    try {
      return hsm::Pin::from_sources(file, "FLEETSIGN_PFX_PASSWORD",
                                    "password for " + needed_by + ": ");
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kPinMissing) {
        throw Error(
            ErrorCode::kInvalidArgument,
            source + ": the password is empty: a .pfx needs a password that protects its key");
      }
      if (e.code() == ErrorCode::kInvalidArgument) {
        throw Error(ErrorCode::kInvalidArgument, "the .pfx password: " + std::string(e.what()));
      }
      throw;
    }
  }();
  if (password.size() == 0) {
    throw Error(ErrorCode::kInvalidArgument,
                source + ": the password is empty: a .pfx needs a password that protects its key");
  }
  if (std::strlen(password.c_str()) != password.size()) {
    throw Error(ErrorCode::kInvalidArgument,
                source + ": the password holds a NUL byte (it would be cut short there)");
  }
  return password;
}

}  // namespace fleetsign::cli
