// Test support for the fault tests: a private SoftHSM2 store behind fleetsign-fault-pkcs11, set up
// in THIS process's environment (so every `fleetsign` child inherits it), a schedule file the
// tests rewrite while a run goes on, and the log of the faults the module injected.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "test_home.hpp"

namespace fleetsign::faulttest {

// The module under test, built next to the tests.
inline constexpr const char* kFaultModule = FLEETSIGN_FAULT_MODULE_PATH;

class FaultEnv {
 public:
  // Writes DIR/softhsm2.conf (tokens in DIR/tokens) and sets SOFTHSM2_CONF,
  // FLEETSIGN_FAULT_FILE, FLEETSIGN_P11_FAULT_LOG; clears FLEETSIGN_P11_FAULT. Healthy at first.
  FaultEnv();
  ~FaultEnv();
  FaultEnv(const FaultEnv&) = delete;  // owns process-wide environment variables
  FaultEnv& operator=(const FaultEnv&) = delete;

  // Replaces the schedule (schedule.hpp syntax); "" makes the module healthy. The module's call
  // counts restart with the new text.
  void schedule(const std::string& text) const;
  // The faults injected so far, one "OP N WHAT" line each; clear_log() empties the log.
  std::vector<std::string> injected() const;
  void clear_log() const;
  // How many injected lines contain `what` (e.g. "CKR_DEVICE_REMOVED", "corrupt").
  std::size_t injected_count(const std::string& what) const;

  const std::filesystem::path& dir() const { return m_dir.path(); }

 private:
  testing::TempDir m_dir;
};

}  // namespace fleetsign::faulttest
