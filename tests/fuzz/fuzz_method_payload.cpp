// fuzz_method_payload: what the fleet plane reads from a published message, besides twins.
// The first byte picks the reader; the rest is its input.
//   0  broker: parse_request on a topic (every kind: method calls and answers, twin, DPS), then a
//      method call through the MethodRouter (call, device ready, expiry) with the payload after
//      the topic's NUL
//   1  device agent: the topics it receives (method calls, twin and DPS answers, desired
//      patches) and a DPS assignment's host:port
//   2  device agent: MethodRegistry::dispatch of a method (name up to the NUL, payload after it)
//      with the built-in and rotation methods, on a device whose flash was never provisioned (so
//      nothing is ever written and every input runs the same)
//
// Invariants: what a parser accepts fits the grammar it promises (PROTOCOL.md: rids and method
// names of their alphabets and lengths, timeouts in range, statuses 100..999); a dispatched call
// answers one of 200/400/409/500/501 with a JSON payload; the router holds nothing after every
// deadline passed.
#include <Poco/Exception.h>
#include <Poco/JSON/Parser.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "broker/plugin/src/methods.hpp"
#include "broker/plugin/src/topics.hpp"
#include "device/src/topics.hpp"
#include "fleetsign/device/methods.hpp"
#include "fleetsign/device/state.hpp"
#include "fleetsign/engine/clock.hpp"
#include "fuzz_input.hpp"

namespace {

using namespace fleetsign;
namespace bt = fleetsign::broker;
namespace dt = fleetsign::device::topics;

bool rid_alphabet(std::string_view s, std::size_t max, bool colon) {
  if (s.empty() || s.size() > max) return false;
  for (const char c : s) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-' || (colon && c == ':');
    if (!ok) return false;
  }
  return true;
}

class NullTransport final : public bt::Transport {
 public:
  void publish(const std::string&, const std::string& topic, std::string_view) override {
    if (topic.find('\0') != std::string::npos) fuzz::violated("a published topic holds a NUL");
  }
  void kick(const std::string&) override {}
  void log(bt::LogLevel, const std::string&) override {}
};

class CountingRandom final : public engine::RandomSource {
 public:
  void fill(std::span<std::uint8_t> out) override {
    for (auto& b : out) b = static_cast<std::uint8_t>(++m_n * 131);
  }

 private:
  std::uint64_t m_n = 0;
};

void broker_request(fuzz::Input& in) {
  const std::string_view topic = in.text_until_nul();
  const std::string_view payload = in.rest_text();
  const bt::Request r = bt::parse_request(topic);
  using K = bt::Request::Kind;
  switch (r.kind) {
    case K::kNone:
    case K::kMalformed:
      if (r.kind == K::kMalformed && r.problem.empty()) fuzz::violated("malformed, no reason");
      return;
    case K::kMethodCall:
      if (!bt::valid_call_rid(r.rid) || !bt::valid_method_name(r.method) || r.device_id.empty() ||
          r.device_id.find('/') != std::string_view::npos || r.connect_timeout_s < 0 ||
          r.connect_timeout_s > 300 || r.response_timeout_s < 1 || r.response_timeout_s > 300) {
        fuzz::violated("parse_request accepted a method call outside its grammar");
      }
      break;
    case K::kMethodResponse:
      if (!bt::valid_call_rid(r.rid) || r.status < 100 || r.status > 999) {
        fuzz::violated("parse_request accepted a method answer outside its grammar");
      }
      return;
    case K::kDpsStatus:
      if (!rid_alphabet(r.operation_id, 64, false)) fuzz::violated("bad operationId accepted");
      [[fallthrough]];
    case K::kTwinGet:
    case K::kTwinReported:
    case K::kDpsRegister:
      if (!bt::valid_device_rid(r.rid)) fuzz::violated("parse_request accepted a bad $rid");
      return;
  }
  NullTransport transport;
  CountingRandom random;
  bt::MethodRouter router(transport, random);
  const bool ready = payload.size() % 2 == 0;
  router.call("service-1", r, payload, ready, 1000);
  router.call("service-1", r, payload, ready, 1000);  // the same rid again: dropped
  // Pinned by an incident or not: a held call is sent, or answered 400 and dropped.
  router.device_ready(std::string(r.device_id), 2000, payload.size() % 3 == 0);
  router.expire(1000 + 301'000 + 301'000);
  if (router.pending() != 0) fuzz::violated("the router holds a call after every deadline");
}

void device_topics(fuzz::Input& in) {
  const std::string_view topic = in.rest_text();
  if (const auto call = dt::parse_method_call(topic)) {
    if (!dt::is_request_id(call->rid) || (!call->name.empty() && !dt::is_method_name(call->name))) {
      fuzz::violated("parse_method_call accepted a bad rid or name");
    }
  }
  for (const auto& r : {dt::parse_twin_response(topic), dt::parse_dps_response(topic)}) {
    if (r && (r->status < 0 || r->status > 999 || !dt::is_request_id(r->rid) ||
              (r->version && *r->version < 0) || (r->retry_after && *r->retry_after < 0))) {
      fuzz::violated("a response topic parsed outside its grammar");
    }
  }
  if (const auto v = dt::parse_desired_patch(topic); v && *v < 0) {
    fuzz::violated("a negative desired version");
  }
  if (const auto hp = dt::parse_host_port(topic, 8883)) {
    if (hp->port < 1 || hp->port > 65535 || !rid_alphabet(hp->host, 253, false) ||
        hp->host.find('_') != std::string::npos) {
      fuzz::violated("parse_host_port accepted a bad host or port");
    }
  }
}

class Device final : public device::MethodContext {
 public:
  explicit Device(const std::filesystem::path& root)
      : m_id(device::DeviceId::check(policy::DeviceIdRule{}, "dev-1").value()),
        m_store(root, m_id, policy::DeviceIdRule{}) {
    m_cert.sha256 = std::string(64, 'A');
    m_cert.serial = "01";
  }
  const device::DeviceId& device_id() const override { return m_id; }
  const device::CertInfo& certificate() const override { return m_cert; }
  device::Slot slot() const override { return device::Slot::kPrimary; }
  device::SlotStore* store() override { return &m_store; }
  void reconnect_after_answer(bool) override {
    fuzz::violated("a device that has no slot was asked to reconnect");
  }

 private:
  device::DeviceId m_id;
  device::CertInfo m_cert;
  device::SlotStore m_store;
};

void device_dispatch(fuzz::Input& in) {
  static const device::MethodRegistry registry = [] {
    device::MethodRegistry r;
    device::add_builtin_methods(r);
    device::add_rotation_methods(r);
    return r;
  }();
  // Never provisioned: reading its flash finds nothing, and nothing is written.
  static Device dev(std::filesystem::temp_directory_path() / "fleetsign-fuzz-no-such-state");
  const std::string name(in.text_until_nul());
  // The agent answers 400 itself for a name outside [A-Za-z0-9_.-]{1,128} (DeviceClient::
  // handle_method): dispatch only ever sees names that parse_method_call accepted.
  if (!dt::is_method_name(name)) return;
  const auto answer = registry.dispatch(dev, name, in.rest_text());
  const int s = answer.status;
  if (s != 200 && s != 400 && s != 409 && s != 500 && s != 501) {
    fuzz::violated("dispatch answered an unexpected status");
  }
  try {
    Poco::JSON::Parser parser;
    (void)parser.parse("[" + answer.payload + "]");
  } catch (const Poco::Exception&) {
    fuzz::violated("dispatch answered a payload that is not JSON");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  switch (in.byte() % 3) {
    case 0:
      broker_request(in);
      break;
    case 1:
      device_topics(in);
      break;
    default:
      device_dispatch(in);
      break;
  }
  return 0;
}
