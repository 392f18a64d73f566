// DPS registration: see dps.hpp.
#include "dps.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <sstream>
#include <vector>

#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "topics.hpp"

namespace fleetsign::broker {

namespace {

using Poco::JSON::Object;

std::string text(const Object& o) {
  std::ostringstream s;
  o.stringify(s);
  return s.str();
}

// The registrationId a register request carries; empty when the payload has none.
std::string registration_id_of(std::string_view payload) {
  if (payload.empty() || payload.size() > kDpsPayloadLimit) {
    return {};
  }
  try {
    Poco::JSON::Parser parser;
    const auto v = parser.parse(std::string(payload));
    if (v.type() != typeid(Object::Ptr)) {
      return {};
    }
    const auto id = v.extract<Object::Ptr>()->get("registrationId");
    return id.isString() ? id.extract<std::string>() : std::string();
  } catch (const Poco::Exception&) {
    return {};
  }
}

}  // namespace

std::string DpsService::random_hex(std::size_t bytes) {
  std::vector<std::uint8_t> b(bytes);
  m_random.fill(b);
  std::string hex = engine::hex_upper(b);
  for (char& c : hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return hex;
}

void DpsService::refuse(const Session& session, std::string_view rid, int status, std::int64_t code,
                        const std::string& message, std::int64_t now) {
  Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("errorCode", static_cast<Poco::Int64>(code));
  body.set("trackingId", random_hex(16));
  body.set("message", message);
  body.set("timestampUtc", engine::iso8601(now));
  m_transport.publish(session.client_id, dps_answer_topic(status, rid, false), text(body));
}

void DpsService::register_device(const Session& session, std::string_view rid,
                                 std::string_view payload, engine::Authenticator& auth,
                                 std::int64_t now) {
  const std::string& id = session.client_id;
  if (registration_id_of(payload) != id) {
    refuse(session, rid, 400, 400004,
           "the request must be a JSON object whose registrationId is '" + id + "'", now);
    return;
  }
  engine::AuthDecision d;
  try {
    d = auth.check(std::span<const engine::Der>(session.leaf.get(), 1), now, id);
  } catch (const Error& e) {
    m_transport.log(LogLevel::kError, "fleetsign: DPS registration of " + id + ": " + e.what());
    refuse(session, rid, 500, 500000, "the registry could not answer", now);
    return;
  }
  if (!d.allowed) {
    m_transport.log(LogLevel::kNotice, "fleetsign: DPS registration of " + id +
                                           " refused: " + d.rule + ": " + d.reason);
    refuse(session, rid, 401, 401002, "registration refused: " + d.rule, now);
    return;
  }
  Operation op{"4." + random_hex(8) + "." + random_hex(16), "\"" + random_hex(8) + "\"", now};
  Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("operationId", op.id);
  body.set("status", "assigning");
  m_operations[id] = std::move(op);
  m_transport.publish(id, dps_answer_topic(202, rid, true), text(body));
}

void DpsService::operation_status(const Session& session, std::string_view rid,
                                  std::string_view operation_id) {
  const std::string& id = session.client_id;
  const auto it = m_operations.find(id);
  if (it == m_operations.end() || it->second.id != operation_id) {
    Object body(Poco::JSON_PRESERVE_KEY_ORDER);
    body.set("errorCode", static_cast<Poco::Int64>(404002));
    body.set("message", "no such registration operation for " + id);
    m_transport.publish(id, dps_answer_topic(404, rid, false), text(body));
    return;
  }
  const Operation& op = it->second;
  Object::Ptr state(new Object(Poco::JSON_PRESERVE_KEY_ORDER));
  state->set("registrationId", id);
  state->set("assignedHub", m_config.assigned_hub());
  state->set("deviceId", id);
  state->set("status", "assigned");
  state->set("substatus", "initialAssignment");
  state->set("createdDateTimeUtc", engine::iso8601(op.created));
  state->set("lastUpdatedDateTimeUtc", engine::iso8601(op.created));
  state->set("etag", op.etag);
  Object body(Poco::JSON_PRESERVE_KEY_ORDER);
  body.set("operationId", op.id);
  body.set("status", "assigned");
  body.set("registrationState", state);
  m_transport.publish(id, dps_answer_topic(200, rid, false), text(body));
}

}  // namespace fleetsign::broker
