#include "fleetsign/engine/services.hpp"

namespace fleetsign::engine {

Services::Services(Home home, PinSource pin_source)
    : Services(std::move(home), std::move(pin_source), std::make_unique<SystemClock>(),
               std::make_unique<CsprngSource>()) {}

Services::Services(Home home, PinSource pin_source, std::unique_ptr<Clock> clock,
                   std::unique_ptr<RandomSource> random)
    : m_home(std::move(home)),
      m_pin_source(std::move(pin_source)),
      m_clock(std::move(clock)),
      m_random(std::move(random)) {}

// The CA service refers to the token and registry, and the token to the lock: in that order.
Services::~Services() {
  m_cas.reset();
  m_token_session.reset();
  m_wrapped.reset();
}

const policy::Policy& Services::policy() {
  if (!m_policy) {
    m_policy.emplace(m_home.load_policy());
  }
  return *m_policy;
}

Stores& Services::stores() {
  if (!m_registry) {
    RegistryOptions options;
    options.now = [clock = m_clock.get()] { return clock->now(); };
    options.actor = m_actor;
    m_registry = m_home.open_registry(std::move(options));
    if (m_wrap_stores) {
      m_wrapped = m_wrap_stores(*m_registry);
    }
  }
  return m_wrapped ? *m_wrapped : static_cast<Stores&>(*m_registry);
}

hsm::Token& Services::token() { return open_token(true); }

hsm::Token& Services::token_for_inspection() { return open_token(false); }

hsm::Token& Services::open_token(bool check_registry) {
  if (!m_token_session) {
    TokenSessionOptions options;
    options.wait_for_lock = m_wait_for_lock;
    options.check_registry = check_registry;
    const std::string label = m_home.config().token_label;
    m_token_session = std::make_unique<TokenSession>(open_token_session(
        m_home, stores(), [&] { return m_pin_source(label); }, options));
    m_notices = m_token_session->notices;
  }
  return *m_token_session->token;
}

CaService& Services::cas() {
  if (!m_cas) {
    m_cas = std::make_unique<CaService>(stores(), token(), policy(), *m_clock, *m_random);
  }
  return *m_cas;
}

}  // namespace fleetsign::engine
