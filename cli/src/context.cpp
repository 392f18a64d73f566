#include <Poco/Util/Option.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli.hpp"
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

void write_text_file(const fs::path& path, const std::string& text, fs::perms perms) {
  if (path.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out || !(out << text) || !out.flush()) {
    throw Error(ErrorCode::kIo, path.string() + ": cannot be written");
  }
  out.close();
  fs::permissions(path, perms);
}

Context::Context(std::optional<fs::path> home_dir, Args args)
    : m_home_dir(std::move(home_dir)), m_args(std::move(args)) {}

Context::~Context() = default;

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

engine::Home& Context::home() {
  if (!m_home) {
    m_home.emplace(engine::Home::open(home_dir()));
  }
  return *m_home;
}

const policy::Policy& Context::policy() {
  if (!m_policy) {
    m_policy.emplace(home().load_policy());
  }
  return *m_policy;
}

engine::Registry& Context::registry() {
  if (!m_registry) {
    m_registry = home().open_registry();
  }
  return *m_registry;
}

hsm::Token& Context::token() { return open_token(true); }

hsm::Token& Context::token_for_inspection() { return open_token(false); }

hsm::Token& Context::open_token(bool check_registry) {
  if (m_token_session) {
    return *m_token_session->token;
  }
  engine::Home& h = home();
  auto pin = [&] {
    return hsm::Pin::from_sources(path_option(m_args, "pin-file"), "FLEETSIGN_PIN",
                                  "user PIN for token '" + h.config().token_label + "': ");
  };
  engine::TokenSessionOptions options;
  options.wait_for_lock = m_args.has("wait");
  options.check_registry = check_registry;
  try {
    m_token_session = std::make_unique<engine::TokenSession>(
        engine::open_token_session(h, registry(), pin, options));
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
  for (const auto& line : m_token_session->notices) {
    std::fprintf(stderr, "fleetsign: %s\n", line.c_str());
  }
  return *m_token_session->token;
}

void Context::print_json(const Poco::JSON::Object& obj) const {
  std::ostringstream s;
  obj.stringify(s);
  std::cout << s.str() << std::endl;
}

}  // namespace fleetsign::cli
