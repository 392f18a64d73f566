// A fleetsign home directory: its configuration, policy, registry and — by default — a private
// SoftHSM2 configuration and token store, so that nothing touches the system-wide token.
//
//   DIR/fleetsign.json   {"module": …, "token_label": …, "softhsm_conf": "softhsm2.conf"|null}
//   DIR/policy.json      issuance policy (see policy/)
//   DIR/registry.db      SQLite registry (WAL), unless the config names a PostgreSQL registry
//   DIR/softhsm2.conf, DIR/tokens/   the embedded SoftHSM2 token (without --module)
//   DIR/token-backup/    verified copies of the embedded token's metadata (see token_guard.hpp)
//   DIR/.lock            the home lock (see home_lock.hpp)
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/hsm/pin.hpp"
#include "fleetsign/hsm/token.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {

extern const char* const kDefaultModule;  // SoftHSM2's module path on this platform

struct HomeConfig {
  std::filesystem::path dir;
  std::filesystem::path module;
  std::string token_label = "fleetsign";
  std::optional<std::filesystem::path> softhsm_conf;  // set for the embedded token
  // Empty: the embedded SQLite file DIR/registry.db. Else a postgresql:// URL without a password
  // (libpq reads it from PGPASSWORD or ~/.pgpass).
  std::string registry_url;
};

// Checks a registry URL for `init --registry`: postgresql:// (or postgres://) and no password in
// it (a config file and a command line are no place for one). Throws Error(kInvalidArgument).
void check_registry_url(const std::string& url);

class Home final {
 public:
  // Creates DIR (if needed) with its config, default policy and registry, and a NEW token
  // initialised with the PINs (C_InitToken, which needs the SO PIN). Without `module`, the token
  // lives in a private SoftHSM2 config + token store in DIR; with `module`, in a free slot of
  // that module. An existing token is never re-initialised: Errors: kAlreadyExists when DIR is a
  // home already or a token with that label exists (adopt it instead); token errors.
  static Home init(const std::filesystem::path& dir,
                   const std::optional<std::filesystem::path>& module,
                   const std::optional<std::string>& token_label, const hsm::Pin& so_pin,
                   const hsm::Pin& user_pin, const std::string& registry_url = "");
  // Creates DIR with its config, default policy and registry for an EXISTING token of `module`
  // (a real HSM's, set up by its administrators): logs in once with the user PIN to prove the
  // label and PIN, never initialises or changes the token, needs no SO PIN. The token must offer
  // at least one CA key type; `offered` (optional) receives the ones it does.
  // Errors: kAlreadyExists (DIR is a home), kModuleNotFound, kTokenNotFound (lists the labels
  // there), kPinIncorrect, kPinLocked, kMechanismUnsupported (no CA key type), kTokenError.
  static Home adopt(const std::filesystem::path& dir, const std::filesystem::path& module,
                    const std::string& token_label, const hsm::Pin& user_pin,
                    std::vector<hsm::KeyType>* offered = nullptr,
                    const std::string& registry_url = "");
  // Reads DIR/fleetsign.json (kNotFound: "DIR is not a fleetsign home; run fleetsign init").
  // For an embedded token, points SOFTHSM2_CONF at DIR/softhsm2.conf before any module loads.
  static Home open(const std::filesystem::path& dir);

  const HomeConfig& config() const noexcept { return m_config; }
  // The SQLite file, or the PostgreSQL URL (Registry::open takes either).
  std::filesystem::path registry_path() const {
    return m_config.registry_url.empty() ? m_config.dir / "registry.db"
                                         : std::filesystem::path(m_config.registry_url);
  }
  bool sqlite_registry() const noexcept { return m_config.registry_url.empty(); }
  // Points the home at the PostgreSQL registry `url` from now on (fleetsign.json rewritten
  // atomically); `registry migrate` calls it once the copy is verified. The SQLite file stays.
  void switch_registry(const std::string& url);
  // A worker's home (issue 13): a new home at DIR on the same PostgreSQL registry, module, token
  // label and policy. With the embedded SoftHSM2 token, its token files are copied (a clone of the
  // token, as an HSM backup is cloned: the same keys, the same PINs); with a module (a network
  // HSM), the worker reaches the same token. fleet.json and the broker's client files (address,
  // trust, the service identity) come along, so the worker's jobs reach the fleet. Take the
  // HomeLock first (a consistent token copy).
  // Errors: kInvalidArgument for a SQLite home (workers share a PostgreSQL registry),
  // kAlreadyExists when DIR is a home or not empty, kIo.
  Home clone_worker(const std::filesystem::path& dir) const;
  std::filesystem::path policy_path() const { return m_config.dir / "policy.json"; }

  bool embedded_token() const noexcept { return m_config.softhsm_conf.has_value(); }

  policy::Policy load_policy() const;
  // Opens the registry. Only `init` creates one: a missing or empty registry.db (or a PostgreSQL
  // database without the registry's tables) in a home is Error(kRegistryMissing) — re-creating
  // it would orphan every CA key in the token.
  std::unique_ptr<Registry> open_registry(RegistryOptions options = {}) const;
  // Opens the token and logs in. For the embedded token, first restores a token.object that a
  // kill left truncated (a line per file restored is appended to `notices`, when given), and
  // after the login refreshes the verified copies. Errors: those of hsm::Token::open, and
  // kTokenCorrupt naming the file when it is damaged and no complete copy exists. Take the
  // HomeLock first: the restore and the copy assume no other process is in the token.
  std::unique_ptr<hsm::Token> open_token(const hsm::Pin& user_pin,
                                         std::vector<std::string>* notices = nullptr) const;

 private:
  explicit Home(HomeConfig config) : m_config(std::move(config)) {}
  static HomeConfig new_home_dir(const std::filesystem::path& dir);
  static Home finish_init(HomeConfig config, const std::string& registry_url);
  HomeConfig m_config;
};

}  // namespace fleetsign::engine
