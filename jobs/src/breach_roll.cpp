// Breach roll (rollover.hpp): revoke first, then roll what can be reached.
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {

BreachRollStart start_breach_roll(engine::Stores& stores, const engine::Clock& clock,
                                  const std::string& device_id, const std::string& serial_in,
                                  RolloverParams params) {
  const auto device = stores.find_device(device_id);
  if (!device) throw Error(ErrorCode::kNotFound, "no device '" + device_id + "' in the registry");
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
  BreachRollStart out;
  out.serial = serial;
  const bool was_primary = serial == device->primary_serial;
  out.slot = was_primary ? "primary" : "secondary";
  const std::string& other = was_primary ? device->secondary_serial : device->primary_serial;
  const std::int64_t other_not_after =
      was_primary ? device->secondary_not_after : device->primary_not_after;
  out.other_certificate = !other.empty() && other_not_after > clock.now();

  // At once: no overlap.
  const std::string serials[] = {serial};
  stores.revoke_certs(serials, "keyCompromise", clock.now());

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
  plan.devices.push_back(std::move(p));
  out.job_id = create_job(stores, clock, params, plan);
  return out;
}

}  // namespace fleetsign::jobs
