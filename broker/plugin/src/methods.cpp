// Direct methods: see methods.hpp.
#include "methods.hpp"

#include <algorithm>
#include <array>

#include "fleetsign/engine/json.hpp"

namespace fleetsign::broker {

namespace {

std::string error_body(std::int64_t code, const std::string& message) {
  return engine::json_object({{"errorCode", code}, {"message", message}});
}

std::string caller_key(const std::string& service, std::string_view rid) {
  return service + ' ' + std::string(rid);
}

}  // namespace

std::string MethodRouter::new_drid() {
  std::array<std::uint8_t, 16> bytes{};
  m_random.fill(bytes);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(32);
  for (const auto b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

void MethodRouter::refuse(const std::string& service, std::string_view rid,
                          const std::string& message) {
  m_transport.publish(service, service_answer_topic(400, rid), error_body(400027, message));
}

void MethodRouter::call(const std::string& service, const Request& req, std::string_view payload,
                        bool ready, std::int64_t now_ms) {
  const std::string device(req.device_id);
  if (payload.size() > kMethodPayloadLimit) {
    refuse(service, req.rid,
           "the payload is " + std::to_string(payload.size()) + " bytes, over 128 KiB");
    return;
  }
  const std::string key = caller_key(service, req.rid);
  if (m_caller_rids.count(key) != 0) {
    m_transport.log(LogLevel::kWarning, "method call from " + service + " reuses pending rid " +
                                            std::string(req.rid) + ": dropped");
    return;
  }
  auto& held = m_held[device];
  if (m_calls.size() >= kMaxPendingCalls || (!ready && held.size() >= kMaxHeldPerDevice)) {
    m_transport.publish(service, service_answer_topic(429, req.rid),
                        error_body(429001, "too many calls in flight for device " + device));
    if (held.empty()) m_held.erase(device);
    return;
  }
  std::string drid = new_drid();
  Call c;
  c.service = service;
  c.rid = req.rid;
  c.device = device;
  c.method = req.method;
  c.payload = payload;
  c.response_timeout_s = req.response_timeout_s;
  c.deadline = m_deadlines.emplace(now_ms + std::int64_t{req.connect_timeout_s} * 1000, drid);
  auto [it, inserted] = m_calls.emplace(drid, std::move(c));
  m_caller_rids.insert(key);
  ++m_per_service[service];
  if (ready) {
    if (held.empty()) m_held.erase(device);
    send(drid, it->second, now_ms);
  } else {
    held.push_back(drid);
  }
}

void MethodRouter::send(const std::string& drid, Call& c, std::int64_t now_ms) {
  c.sent = true;
  m_deadlines.erase(c.deadline);
  c.deadline = m_deadlines.emplace(now_ms + std::int64_t{c.response_timeout_s} * 1000, drid);
  m_transport.publish(c.device, device_method_topic(c.method, drid), c.payload);
  c.payload.clear();
  c.payload.shrink_to_fit();
}

void MethodRouter::device_ready(const std::string& device_id, std::int64_t now_ms,
                                bool rotation_only) {
  const auto it = m_held.find(device_id);
  if (it == m_held.end()) {
    return;
  }
  const std::vector<std::string> drids = std::move(it->second);
  m_held.erase(it);
  for (const auto& drid : drids) {
    const auto c = m_calls.find(drid);
    if (c == m_calls.end() || c->second.sent) {
      continue;
    }
    if (rotation_only && !rotation_method(c->second.method)) {
      error_answer(c->second, 400, 400027, rotation_only_refusal(device_id, c->second.method));
      finish(drid);
      continue;
    }
    send(drid, c->second, now_ms);
  }
}

bool MethodRouter::answer(const std::string& device_id, const Request& req,
                          std::string_view payload) {
  const auto it = m_calls.find(std::string(req.rid));
  if (it == m_calls.end() || !it->second.sent || it->second.device != device_id) {
    return false;
  }
  if (payload.size() > kMethodPayloadLimit) {
    // The caller learns at once what the device did, rather than a timeout later.
    const std::string what = "device " + device_id + " answered " + it->second.method + " with " +
                             std::to_string(payload.size()) + " bytes, over the 128 KiB limit";
    m_transport.log(LogLevel::kWarning, what + ": the call fails with 502");
    error_answer(it->second, 502, 502001, what);
    finish(it->first);
    return true;
  }
  m_transport.publish(it->second.service, service_answer_topic(req.status, it->second.rid),
                      payload);
  ++m_routed;
  finish(it->first);
  return true;
}

void MethodRouter::error_answer(const Call& c, int status, std::int64_t code,
                                const std::string& message) {
  m_transport.publish(c.service, service_answer_topic(status, c.rid), error_body(code, message));
}

void MethodRouter::expire(std::int64_t now_ms) {
  while (!m_deadlines.empty() && m_deadlines.begin()->first <= now_ms) {
    const std::string drid = m_deadlines.begin()->second;
    const auto it = m_calls.find(drid);
    if (it == m_calls.end()) {
      m_deadlines.erase(m_deadlines.begin());
      continue;
    }
    const Call& c = it->second;
    if (c.sent) {
      error_answer(c, 504, 504101,
                   "device " + c.device + " did not answer in " +
                       std::to_string(c.response_timeout_s) + " s");
    } else {
      error_answer(c, 404, 404103, "device " + c.device + " is not online");
    }
    finish(drid);
  }
}

void MethodRouter::finish(const std::string& drid_in) {
  const std::string drid = drid_in;  // the argument may live in the erased entry
  const auto it = m_calls.find(drid);
  if (it == m_calls.end()) {
    return;
  }
  Call& c = it->second;
  m_deadlines.erase(c.deadline);
  m_caller_rids.erase(caller_key(c.service, c.rid));
  const auto per = m_per_service.find(c.service);
  if (per != m_per_service.end() && --per->second == 0) {
    m_per_service.erase(per);
  }
  if (!c.sent) {
    const auto held = m_held.find(c.device);
    if (held != m_held.end()) {
      auto& v = held->second;
      v.erase(std::remove(v.begin(), v.end(), drid), v.end());
      if (v.empty()) m_held.erase(held);
    }
  }
  m_calls.erase(it);
}

void MethodRouter::service_gone(const std::string& service) {
  if (m_per_service.count(service) == 0) {
    return;  // the common case (a CLI call that got its answer): no scan
  }
  std::vector<std::string> drids;
  for (const auto& [drid, c] : m_calls) {
    if (c.service == service) drids.push_back(drid);
  }
  for (const auto& drid : drids) {
    finish(drid);
  }
}

}  // namespace fleetsign::broker
