// The rollover runner, its confirmation evidence (see rollover_runner.hpp): what the looks at a
// device after its reprovision show, and the end of a task whose device went back to its old
// certificate.
#include "rollover_runner.hpp"

namespace fleetsign::jobs {
namespace runner_detail {

void Runner::look(Live& t, const std::string& sha, std::int64_t since) {
  t.seen_sha256 = sha;
  if (sha.empty()) {
    t.changed = true;
  } else if (t.first_sha256.empty()) {
    t.first_sha256 = sha;
    t.first_since = since;
  } else if (sha != t.first_sha256 || since != t.first_since) {
    t.changed = true;
  }
}

// Positive evidence only, with no clock but the broker's: the latest look shows the device on
// the hub with its old certificate, and an earlier look since the reprovision saw it gone or on
// another connection (so this is a new connection, made after it was told to switch). A session
// row that never changed (the broker's writes may lag), no session at all, or a third
// certificate prove nothing: the task then times out and keeps the new certificate, which the
// device may be running.
bool Runner::is_back_on_old(const Live& t) {
  if (t.seen_sha256.empty() || t.seen_sha256 == t.row.new_sha256 || !t.changed) return false;
  const auto old = m_stores.find_cert(t.row.old_serial);
  return old && old->sha256 == t.seen_sha256;
}

// Back on its old certificate when the last wait ended: the hub refused the new one and the
// device went back (its trial), or it never switched. The new certificate is not in use: it is
// revoked and leaves the slots it went into, so the registry shows the certificate the device
// really runs, and a later rollover (or CA rollover) selects the device by it.
void Runner::went_back(std::size_t i) {
  Live& t = m_tasks[i];
  slot_changes(t, SlotChange::Kind::kReleaseDevice,
               t.enrollment_old_slot == engine::Slot::kPrimary ? engine::Slot::kSecondary
                                                               : engine::Slot::kPrimary);
  settle(i, "refused",
         "back on its old certificate 0x" + t.row.old_serial + " (connected after the " +
             "reprovision, not with the new one) " + std::to_string(m_params.step_timeout_s) +
             " s after reprovision: the hub refused the new certificate 0x" + t.row.new_serial +
             " (or the device never switched to it), so it was revoked and left its slot",
         "new_certificate_refused");
}

}  // namespace runner_detail
}  // namespace fleetsign::jobs
