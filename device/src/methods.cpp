#include "fleetsign/device/methods.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>

#include <sstream>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/x509.hpp"

namespace fleetsign::device {

MethodResponse MethodResponse::json(int status, const Poco::JSON::Object& body) {
  std::ostringstream text;
  body.stringify(text);
  return MethodResponse{status, text.str()};
}

MethodResponse MethodResponse::error(int status, std::string_view message) {
  Poco::JSON::Object body;
  // Messages may quote the caller's bytes (the parser's error names the byte it refused): the
  // answer must stay JSON, which is UTF-8.
  body.set("message", engine::valid_utf8(message));
  return json(status, body);
}

void MethodRegistry::add(std::string name, MethodHandler handler) {
  m_handlers.insert_or_assign(std::move(name), std::move(handler));
}

const MethodHandler* MethodRegistry::find(std::string_view name) const {
  const auto it = m_handlers.find(name);
  return it == m_handlers.end() ? nullptr : &it->second;
}

MethodResponse MethodRegistry::dispatch(MethodContext& device, std::string_view name,
                                        std::string_view payload_text) const {
  Poco::Dynamic::Var payload;
  if (!payload_text.empty()) {
    // Any JSON value is a payload (IoT Hub sends numbers and strings too); Poco 1.11's parser
    // takes only objects and arrays at the top, so the payload is parsed as the one element of
    // an array ("1,2" makes two elements and is refused).
    try {
      Poco::JSON::Parser parser;
      std::string text;
      text.reserve(payload_text.size() + 2);
      text.append("[").append(payload_text).append("]");
      const auto array = parser.parse(text).extract<Poco::JSON::Array::Ptr>();
      if (!array || array->size() != 1) throw Poco::DataFormatException("not one JSON value");
      payload = array->get(0);
    } catch (const Poco::Exception& e) {
      return MethodResponse::error(400, "payload is not JSON: " + e.displayText());
    }
  }
  const MethodHandler* handler = find(name);
  if (handler == nullptr) {
    return MethodResponse::error(501, "method '" + std::string(name) + "' is not implemented by " +
                                          device.device_id().str());
  }
  try {
    return (*handler)(device, payload);
  } catch (const std::exception& e) {
    return MethodResponse::error(500, "method '" + std::string(name) + "' failed: " + e.what());
  }
}

void add_builtin_methods(MethodRegistry& registry) {
  registry.add("ping", [](MethodContext&, const Poco::Dynamic::Var& payload) {
    // The payload as it came, re-serialised by the library (it parsed, so it is JSON).
    if (payload.isEmpty()) return MethodResponse{200, "null"};
    std::ostringstream text;
    Poco::JSON::Stringifier::stringify(payload, text);
    return MethodResponse{200, text.str()};
  });
  registry.add("getCertificate", [](MethodContext& device, const Poco::Dynamic::Var&) {
    const CertInfo& cert = device.certificate();
    Poco::JSON::Object body(Poco::JSON_PRESERVE_KEY_ORDER);
    body.set("sha256", cert.sha256);
    body.set("serial", cert.serial);
    body.set("notAfter", engine::iso8601(cert.not_after));
    body.set("slot", std::string(slot_name(device.slot())));
    return MethodResponse::json(200, body);
  });
}

}  // namespace fleetsign::device
