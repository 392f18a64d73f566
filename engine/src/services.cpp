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

// The CA service refers to the token and registry: destroy it first.
Services::~Services() { m_cas.reset(); }

const policy::Policy& Services::policy() {
  if (!m_policy) {
    m_policy.emplace(m_home.load_policy());
  }
  return *m_policy;
}

Registry& Services::registry() {
  if (!m_registry) {
    m_registry = m_home.open_registry();
  }
  return *m_registry;
}

hsm::Token& Services::token() {
  if (!m_token) {
    const hsm::Pin pin = m_pin_source(m_home.config().token_label);
    m_token = m_home.open_token(pin);
  }
  return *m_token;
}

CaService& Services::cas() {
  if (!m_cas) {
    m_cas = std::make_unique<CaService>(registry(), token(), policy(), *m_clock, *m_random);
  }
  return *m_cas;
}

}  // namespace fleetsign::engine
