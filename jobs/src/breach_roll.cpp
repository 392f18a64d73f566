// Breach roll (rollover.hpp): revoke first, then roll what can be reached.
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {
namespace {

// The open job (running, paused, or stopping) that has not settled the device yet, if any; the
// device's breach roll first, when another job holds the device as well.
std::optional<std::pair<engine::JobRecord, engine::JobTask>> open_job_of(
    engine::Stores& stores, const std::string& device_id) {
  std::optional<std::pair<engine::JobRecord, engine::JobTask>> found;
  for (auto& job : stores.list_jobs(engine::ListPage{})) {
    if (job.state != "running" && job.state != "paused" && !job_is_stopping(job)) continue;
    if (found && job.kind != "breach-roll") continue;
    for (auto& t : stores.job_tasks(job.id, "")) {
      if (t.device_id == device_id &&
          (!is_final_task_state(t.state) || (t.state == "offline" && t.next_at != 0))) {
        if (job.kind == "breach-roll") return std::make_pair(std::move(job), std::move(t));
        found = std::make_pair(job, std::move(t));
        break;
      }
    }
  }
  return found;
}

}  // namespace

bool revoke_breached(engine::Stores& stores, const std::string& serial, std::int64_t at) {
  const auto state = stores.cert_state(serial);
  if (state != engine::CertState::kIssued && state != engine::CertState::kRevoked) return false;
  // Its key blocked with it. Revoked before for another reason (superseded by a rollover): its
  // key is compromised all the same (blocked), and its CRL entry now says keyCompromise, which
  // makes its CRL behind.
  const std::string serials[] = {serial};
  return stores.revoke_certs(serials, "keyCompromise", at) > 0;
}

BreachRollStart start_breach_roll(engine::Stores& stores, const engine::Clock& clock,
                                  const std::string& device_id, const std::string& serial_in,
                                  RolloverParams params) {
  const auto device = stores.find_device(device_id);
  if (!device) throw Error(ErrorCode::kNotFound, "no device '" + device_id + "' in the registry");
  BreachRollStart out;
  // Run again (after a kill between recording the job and the revocation, or twice): the open
  // breach roll of the device continues, its revocation made if it was not; never a second job.
  // Another certificate of the device named while its breach roll is open: revoked too, at once
  // (a responder's revocation never waits), and the open job goes on rolling the device.
  auto open = open_job_of(stores, device_id);
  if (open && open->first.kind != "breach-roll") {
    out.held_by = open->first.id;
    out.held_by_state = open->first.state;
    open.reset();
  }
  if (open) {
    out.job_id = open->first.id;
    out.serial = open->second.old_serial;
    out.slot = open->second.target_slot;
    out.continued = true;
    revoke_breached(stores, out.serial, open->first.created_at);
    if (!serial_in.empty() && serial_in != out.serial) {
      if (const auto c = stores.find_cert(serial_in); c && c->batch_id == out.job_id) {
        // The open job's own new certificate: continuing would move the device onto it.
        throw Error(ErrorCode::kInvalidArgument,
                    "certificate 0x" + serial_in + " is the one breach roll " + out.job_id +
                        " issued to replace 0x" + out.serial +
                        " (revoked): cancel that job first (`job cancel " + out.job_id +
                        "`), then run this breach roll again");
      }
      if (serial_in != device->primary_serial && serial_in != device->secondary_serial) {
        throw Error(ErrorCode::kNotFound, "device '" + device_id + "' holds no certificate 0x" +
                                              serial_in + " in a slot (its breach roll, job " +
                                              out.job_id + ", is about 0x" + out.serial +
                                              ", revoked)");
      }
      revoke_breached(stores, serial_in, clock.now());
      out.also_revoked = serial_in;
    }
    const auto now_device = stores.find_device(device_id);
    const bool other_primary = out.slot == "secondary";  // the slot it held is the free one
    const std::string other = !now_device     ? ""
                              : other_primary ? now_device->primary_serial
                                              : now_device->secondary_serial;
    const std::int64_t other_not_after = !now_device     ? 0
                                         : other_primary ? now_device->primary_not_after
                                                         : now_device->secondary_not_after;
    out.other_certificate = !other.empty() && other_not_after > clock.now();
    return out;
  }
  std::string serial = serial_in;
  if (serial.empty()) {
    for (const auto& s : stores.connected_devices()) {
      if (s.device_id == device_id) serial = s.cert_serial;
    }
    if (serial.empty() ||
        (serial != device->primary_serial && serial != device->secondary_serial)) {
      if (!device->primary_serial.empty() && !device->secondary_serial.empty()) {
        throw Error(ErrorCode::kInvalidArgument,
                    "device '" + device_id +
                        "' holds two certificates and is not connected: name the compromised one "
                        "with --serial (" +
                        device->primary_serial + " or " + device->secondary_serial + ")");
      }
      serial = device->primary_serial.empty() ? device->secondary_serial : device->primary_serial;
    }
  }
  if (serial.empty() || (serial != device->primary_serial && serial != device->secondary_serial)) {
    throw Error(ErrorCode::kNotFound,
                serial.empty()
                    ? "device '" + device_id + "' holds no certificate in a slot"
                    : "device '" + device_id + "' holds no certificate 0x" + serial + " in a slot");
  }
  out.serial = serial;
  const bool was_primary = serial == device->primary_serial;
  out.slot = was_primary ? "primary" : "secondary";
  const std::string& other = was_primary ? device->secondary_serial : device->primary_serial;
  const std::int64_t other_not_after =
      was_primary ? device->secondary_not_after : device->primary_not_after;
  out.other_certificate = !other.empty() && other_not_after > clock.now();

  params.kind = "breach-roll";
  params.selection = Selection{};
  params.selection.devices = {device_id};
  RolloverPlan plan;
  PlannedDevice p;
  p.device_id = device_id;
  p.ca_name = params.ca.empty() ? device->ca_name : params.ca;
  p.lot = device->lot;
  p.old_serial = serial;
  p.target_slot = out.slot;  // the freed slot
  // Another job is rotating the device (a rollover, a CA rollover, an incident run): that job
  // brings it onto a new key and retires the certificate; a second rotation here would race it
  // for the device's slots. The revocation below never waits.
  if (!out.held_by.empty()) {
    p.conflict = "the device is in job " + out.held_by + " (" + out.held_by_state +
                 "), which rotates it onto a new key; that job brings it back";
  }
  plan.devices.push_back(std::move(p));
  // The job first, then the revocation (at once: no overlap). Killed between the two, the job
  // records which certificate it is about: its runner, or this command run again, revokes it.
  out.job_id = create_job(stores, clock, params, plan);
  revoke_breached(stores, serial, clock.now());
  return out;
}

}  // namespace fleetsign::jobs
