// Services: what every front end (the CLI, the jobs, the coming HTTP service) runs against, built
// once at start-up from a home: the policy, the registry stores, the token, the CA service, the
// clock and the random source. Nothing else in the engine reads the wall clock, the RNG or the
// environment; tests build a Services with a FixedClock and their own random source.
//
// Each part is opened on first use, so a read-only command never logs in to the token.
// Ownership: Services owns everything it opens; references it hands out live as long as it does.
// Thread safety: not thread-safe; open what is needed on one thread, then share the parts that
// say they are thread-safe (Issuer, SigningKey) with workers.
// Errors: those of Home, the registry and the token (thrown fleetsign::Error).
#pragma once

#include <functional>
#include <memory>
#include <optional>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/home.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/token_session.hpp"
#include "fleetsign/hsm/pin.hpp"
#include "fleetsign/hsm/token.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {

class Services final {
 public:
  // Where the user PIN comes from when the token is first needed (a file, the environment or a
  // prompt: the front end decides; the engine never reads them itself).
  using PinSource = std::function<hsm::Pin(const std::string& token_label)>;

  // Production: the system clock and OpenSSL's CSPRNG.
  Services(Home home, PinSource pin_source);
  // Tests and tools: an injected clock and random source (owned).
  Services(Home home, PinSource pin_source, std::unique_ptr<Clock> clock,
           std::unique_ptr<RandomSource> random);
  ~Services();
  Services(const Services&) = delete;  // owns the registry connection and the token session
  Services& operator=(const Services&) = delete;

  Home& home() noexcept { return m_home; }
  const policy::Policy& policy();
  // The registry's stores (the home's SQLite backend, or what a test's wrapper made of it).
  Stores& stores();
  // Tests wrap the backend, e.g. to inject faults (tests/support/fault_stores.hpp): called once,
  // when the stores are first opened; the wrapper is used from then on. Set it before first use.
  using StoresWrapper = std::function<std::unique_ptr<Stores>(Stores& backend)>;
  void wrap_stores(StoresWrapper wrapper) { m_wrap_stores = std::move(wrapper); }
  // The token, opened the one safe way on first use (token_session.hpp): the home is locked
  // (kHomeBusy unless set_wait_for_lock), damaged token metadata restored, the PIN taken from the
  // PinSource, interrupted CA creations cleaned up, and a registry without CAs beside a token
  // with keys refused (kRegistryMissing).
  hsm::Token& token();
  // The same without the last check: for commands that inspect that mismatch (`ca orphans`).
  hsm::Token& token_for_inspection();
  void set_wait_for_lock(bool wait) noexcept { m_wait_for_lock = wait; }
  // Who acts, as the audit log records it (the front end knows: a user, an operator's
  // certificate). Set before the stores are first opened.
  void set_actor(std::string actor) { m_actor = std::move(actor); }
  // What opening the token restored or cleaned up, one line each, for the front end to show.
  const std::vector<std::string>& notices() const noexcept { return m_notices; }
  CaService& cas();  // the CA hierarchy over registry, token, policy, clock and random
  const Clock& clock() const noexcept { return *m_clock; }
  RandomSource& random() noexcept { return *m_random; }

 private:
  Home m_home;
  PinSource m_pin_source;
  std::unique_ptr<Clock> m_clock;
  std::unique_ptr<RandomSource> m_random;
  std::optional<policy::Policy> m_policy;
  std::unique_ptr<Registry> m_registry;
  StoresWrapper m_wrap_stores;
  std::unique_ptr<Stores> m_wrapped;              // set when a wrapper is
  std::unique_ptr<TokenSession> m_token_session;  // the home lock and the token
  std::unique_ptr<CaService> m_cas;
  std::vector<std::string> m_notices;
  bool m_wait_for_lock = false;
  std::string m_actor = "unknown";
  hsm::Token& open_token(bool check_registry);
};

}  // namespace fleetsign::engine
