// Direct methods a device answers (IoT Hub's `$iothub/methods/POST/{name}/?$rid=` calls): a
// registry of handlers by method name. The reference agent registers `ping`, `getCertificate` and
// the rotation methods (new key + CSR for the free slot, install a chain, reprovision), which use
// the device's SlotStore and `reconnect_after_answer`.
//
// Handlers run on the fleet's one thread, one call at a time per fleet: they must not block
// (no network, no waiting); writing a slot file is fine. A handler that throws answers 500.
#pragma once

#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Object.h>

#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "fleetsign/device/identity.hpp"
#include "fleetsign/device/state.hpp"

namespace fleetsign::device {

// A method's answer: an HTTP-like status and a JSON payload.
struct MethodResponse {
  int status = 200;
  std::string payload = "null";  // JSON text

  static MethodResponse json(int status, const Poco::JSON::Object& body);
  // {"message": message}: what the reference agent answers on an error.
  static MethodResponse error(int status, std::string_view message);
};

// What a handler sees of the device it runs on. Valid during the call only.
class MethodContext {
 public:
  virtual ~MethodContext() = default;
  virtual const DeviceId& device_id() const = 0;
  virtual const CertInfo& certificate() const = 0;  // the certificate it is connected with
  virtual Slot slot() const = 0;                    // the slot that certificate is in
  virtual SlotStore* store() = 0;                   // the device's flash; null without --state
  // Once the answer is sent: disconnect and connect again with the store's active slot (a
  // rotation switches the slot first), registering through DPS first when `reprovision` is set
  // and the fleet runs with DPS.
  virtual void reconnect_after_answer(bool reprovision) = 0;
};

using MethodHandler =
    std::function<MethodResponse(MethodContext& device, const Poco::Dynamic::Var& payload)>;

// Maps method names to handlers. Fill it before the fleet starts; read-only afterwards.
class MethodRegistry final {
 public:
  void add(std::string name, MethodHandler handler);  // replaces a handler of the same name
  const MethodHandler* find(std::string_view name) const;

  // Answers one call as the reference agent does: 400 {"message"} for a payload that is not JSON
  // (an empty payload is null), 501 {"message"} for a name with no handler, else the handler's
  // answer (500 {"message"} when it throws).
  MethodResponse dispatch(MethodContext& device, std::string_view name,
                          std::string_view payload_text) const;

 private:
  std::map<std::string, MethodHandler, std::less<>> m_handlers;
};

// `ping`: answers 200 with the payload it was given.
// `getCertificate`: 200 {"sha256","serial","notAfter","slot"} of the certificate in use.
void add_builtin_methods(MethodRegistry& registry);

// The rotation methods (../../../../broker/PROTOCOL.md, "Rotation methods"), each idempotent:
// `createCsr` {"jobId","slot","keyType"}: a new key for the free slot, kept in flash as pending,
//   and a CSR for it (the same key again for the same job);
// `installCertificate` {"jobId","slot","chain"}: the certificate for the pending key goes into
//   the slot;
// `reprovision` {"jobId","slot","sha256"}: the slot becomes the active one (durably), then the
//   device reconnects with it (through DPS when the fleet uses DPS).
// 400 for a bad payload (naming the field), 409 for a state conflict (or no --state), 500 for
// an I/O failure (naming the file). `reuse_key`: createCsr signs with the key the device already
// runs instead of a new one (a device that cannot make keys; fleetsign refuses a blocked key).
void add_rotation_methods(MethodRegistry& registry, bool reuse_key = false);

}  // namespace fleetsign::device
