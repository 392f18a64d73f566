// fleetsign-faulty: the fleetsign program, built from the same library, with its stores wrapped
// by FaultStores (tests/support/fault_stores.hpp) for the crash tests. Production code has no
// crash hook; this program dies at exact points by watching the real store's calls.
//
// FLEETSIGN_FAULT=POINT:N makes it SIGKILL itself (exactly like `kill -9`) when the Nth chunk
// of the run reaches POINT:
//   after_intent      the chunk's intents are committed               (record_intents, after)
//   after_sign        the chunk is signed; its certificates are not   (record_issued, before)
//   after_commit      its certificates are committed; nothing written (record_issued, after)
//   before_watermark  its outputs are written and synced; the watermark has not moved past them
//                     (update_batch_progress, before)
//   crl_reserved      a CRL's number is committed and signed; the CRL is not stored (store_crl,
//                     before)
//   job_created       a job and its tasks are committed; nothing after (create_job, after)
// FLEETSIGN_FAULT=revoke_issued revokes ("superseded") every certificate right after it is
// committed, as an operator's `revoke` in another process could before the certificate reaches
// its device: a rollover then delivers certificates the hub refuses.
// Without FLEETSIGN_FAULT it behaves exactly like fleetsign.
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cli.hpp"
#include "fault_stores.hpp"

namespace {

// POINT → (store call, phase).
const std::map<std::string, std::pair<std::string, std::string>>& kill_points() {
  static const std::map<std::string, std::pair<std::string, std::string>> points = {
      {"after_intent", {"record_intents", "after"}},
      {"after_sign", {"record_issued", "before"}},
      {"after_commit", {"record_issued", "after"}},
      {"before_watermark", {"update_batch_progress", "before"}},
      // A CRL's number is reserved (committed), the token signed it, it is not stored yet.
      {"crl_reserved", {"store_crl", "before"}},
      // A job is recorded; what its command does next (a breach roll's revocation) is not.
      {"job_created", {"create_job", "after"}},
  };
  return points;
}

}  // namespace

int main(int argc, char** argv) {
  const char* spec = std::getenv("FLEETSIGN_FAULT");
  if (spec != nullptr && *spec != '\0') {
    const std::string s(spec);
    if (s == "revoke_issued") {
      fleetsign::cli::set_stores_wrapper([](fleetsign::engine::Stores& backend) {
        auto stores = std::make_unique<fleetsign::test::FaultStores>(
            backend, [](const std::string&, const char*, int) {});
        stores->after_issued([](fleetsign::engine::Stores& inner,
                                std::span<const fleetsign::engine::IssuedCert> certs) {
          std::vector<std::string> serials;
          for (const auto& c : certs) serials.push_back(c.serial);
          inner.revoke_certs(serials, "superseded", std::time(nullptr));
        });
        return stores;
      });
      return fleetsign::cli::run_main(argc, argv);
    }
    const auto colon = s.find(':');
    const auto it = kill_points().find(s.substr(0, colon));
    if (it == kill_points().end()) {
      return 99;  // a test asked for a point that does not exist
    }
    const int chunk = colon == std::string::npos ? 1 : std::atoi(s.c_str() + colon + 1);
    const auto [op, phase] = it->second;
    fleetsign::cli::set_stores_wrapper([op, phase, chunk](fleetsign::engine::Stores& backend) {
      return std::make_unique<fleetsign::test::FaultStores>(
          backend,
          [op, phase, chunk](const std::string& call_op, const char* call_phase, int call) {
            if (call_op == op && phase == call_phase && call == chunk) {
              std::raise(SIGKILL);
            }
          });
    });
  }
  return fleetsign::cli::run_main(argc, argv);
}
