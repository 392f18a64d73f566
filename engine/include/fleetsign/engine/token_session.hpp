// Opening the home's token the one safe way, for every front end (the CLI's Context, and the
// Services object that replaces it):
//   1. lock the home (HomeLock: kHomeBusy, or wait);
//   2. restore token metadata a kill left truncated, log in, refresh the copies (Home::open_token);
//   3. clean up CA creations a kill interrupted (recover_pending_cas);
//   4. for the embedded token, refuse a registry without CAs beside a token with keys
//      (refuse_registry_without_cas; skipped for commands that inspect that mismatch).
// What was restored or cleaned up is recorded in the audit log and returned as notices for the
// front end to show. Not thread-safe; call once, at start-up, before any signing.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fleetsign/engine/home.hpp"
#include "fleetsign/engine/home_lock.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/hsm/pin.hpp"
#include "fleetsign/hsm/token.hpp"

namespace fleetsign::engine {

struct TokenSessionOptions {
  bool wait_for_lock = false;  // wait for another process instead of kHomeBusy
  bool check_registry = true;  // step 4
};

struct TokenSession {
  HomeLock lock;  // declared first: released after the token logs out
  std::unique_ptr<hsm::Token> token;
  std::vector<std::string> notices;  // one line per thing restored or cleaned up
};

// `pin` is asked only once the lock is held (a busy home fails before any prompt).
TokenSession open_token_session(const Home& home, Stores& registry,
                                const std::function<hsm::Pin()>& pin,
                                const TokenSessionOptions& options);

}  // namespace fleetsign::engine
