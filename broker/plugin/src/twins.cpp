// Device twins: see twins.hpp.
#include "twins.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <sstream>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/twin_doc.hpp"
#include "fleetsign/error.hpp"
#include "topics.hpp"

namespace fleetsign::broker {

namespace {

using Poco::JSON::Object;

Object::Ptr versioned(const std::string& doc, std::int64_t version) {
  Poco::JSON::Parser parser;
  Object::Ptr o = parser.parse(doc).extract<Object::Ptr>();  // stored documents are objects
  o->set("$version", static_cast<Poco::Int64>(version));
  return o;
}

std::string error_body(const std::string& message) {
  return engine::json_object({{"message", message}});
}

}  // namespace

TwinService::Entry& TwinService::load(const std::string& device_id) {
  auto it = m_cache.find(device_id);
  if (it == m_cache.end()) {
    auto twin = m_reads.twin(device_id);
    Entry e;
    e.twin = twin ? *twin : engine::Twin{};
    e.twin.device_id = device_id;
    it = m_cache.emplace(device_id, std::move(e)).first;
  }
  it->second.present = true;
  return it->second;
}

void TwinService::get(const std::string& device_id, std::string_view rid) {
  try {
    const Entry& e = load(device_id);
    Object body(Poco::JSON_PRESERVE_KEY_ORDER);
    body.set("desired", versioned(e.twin.desired, e.twin.desired_version));
    body.set("reported", versioned(e.twin.reported, e.twin.reported_version));
    std::ostringstream s;
    body.stringify(s);
    m_transport.publish(device_id, twin_answer_topic(200, rid), s.str());
  } catch (const std::exception& e) {
    m_transport.log(LogLevel::kError, "fleetsign: twin of " + device_id + ": " + e.what());
    m_transport.publish(device_id, twin_answer_topic(500, rid), error_body("twin unavailable"));
  }
}

void TwinService::patch_reported(const std::string& device_id, std::string_view rid,
                                 std::string_view payload) {
  Entry* e = nullptr;
  try {
    e = &load(device_id);
  } catch (const std::exception& ex) {
    m_transport.log(LogLevel::kError, "fleetsign: twin of " + device_id + ": " + ex.what());
    m_transport.publish(device_id, twin_answer_topic(500, rid), error_body("twin unavailable"));
    return;
  }
  std::string merged;
  try {
    merged = engine::merge_patch(e->twin.reported, payload, "reported properties of " + device_id);
  } catch (const Error& ex) {
    m_transport.publish(device_id, twin_answer_topic(400, rid), error_body(ex.what()));
    return;
  }
  e->twin.reported = std::move(merged);
  e->twin.reported_version += 1;
  e->write_seq =
      m_writer.enqueue(engine::ReportedTwin{device_id, e->twin.reported, e->twin.reported_version});
  m_transport.publish(device_id, twin_reported_answer_topic(rid, e->twin.reported_version), "");
}

void TwinService::desired_changed(const std::string& device_id, std::int64_t version,
                                  const std::string& patch, bool connected) {
  const auto it = m_cache.find(device_id);
  if (it != m_cache.end()) {
    engine::Twin& t = it->second.twin;
    if (version <= t.desired_version) {
      return;  // the device read this version already (a GET after the change)
    }
    try {
      t.desired = engine::merge_patch(t.desired, patch, "desired properties of " + device_id);
      t.desired_version = version;
    } catch (const Error&) {
      m_cache.erase(it);  // cannot follow: read it afresh next time
    }
  }
  if (connected) {
    try {
      std::ostringstream s;
      versioned(patch, version)->stringify(s);
      m_transport.publish(device_id, twin_desired_topic(version), s.str());
    } catch (const std::exception& ex) {
      m_transport.log(LogLevel::kWarning,
                      "fleetsign: desired patch for " + device_id + " not pushed: " + ex.what());
    }
  }
}

void TwinService::device_left(const std::string& device_id) {
  const auto it = m_cache.find(device_id);
  if (it != m_cache.end()) {
    it->second.present = false;
  }
}

void TwinService::evict() {
  const std::uint64_t committed = m_writer.committed();
  for (auto it = m_cache.begin(); it != m_cache.end();) {
    if (!it->second.present && it->second.write_seq <= committed) {
      it = m_cache.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace fleetsign::broker
