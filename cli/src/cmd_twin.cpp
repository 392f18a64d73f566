// fleetsign twin show | set-desired, and the connected view of `device list`: the device twins and
// sessions the broker plugin keeps in the registry (see broker/PROTOCOL.md).
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>

#include <cstdio>

#include "cli.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/broker/broker_home.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "table.hpp"

namespace fleetsign::cli {

namespace {

using Poco::JSON::Object;

std::string checked_device(Context& ctx) {
  const std::string id = ctx.args().positional_at(0, "DEVICE");
  auto checked = engine::DeviceId::check(ctx.policy(), id);
  if (!checked) {
    throw Error(ErrorCode::kDeviceIdInvalid, "device '" + id + "': " + checked.error().message);
  }
  return checked.value().str();
}

Object::Ptr parse_object(const std::string& text, const std::string& what) {
  try {
    Poco::Dynamic::Var v = Poco::JSON::Parser().parse(text);
    if (v.type() == typeid(Object::Ptr)) {
      return v.extract<Object::Ptr>();
    }
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument, what + " is not valid JSON: " + e.displayText());
  }
  throw Error(ErrorCode::kInvalidArgument, what + " must be a JSON object");
}

Object session_json(const engine::DeviceSession& s) {
  Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("device_id", s.device_id);
  o.set("connected", s.connected);
  o.set("mode", s.mode);
  o.set("cert_sha256", s.cert_sha256);
  o.set("cert_serial", s.cert_serial);
  o.set("connected_at", s.connected_at != 0 ? engine::iso8601(s.connected_at) : "");
  o.set("disconnected_at", s.disconnected_at != 0 ? engine::iso8601(s.disconnected_at) : "");
  return o;
}

Object document(const std::string& json, std::int64_t version, const std::string& what) {
  Object::Ptr doc = parse_object(json, what);
  Object o(*doc);
  o.set("$version", version);
  return o;
}

int run_show(Context& ctx) {
  const std::string id = checked_device(ctx);
  const auto twin = ctx.registry().twin(id).value_or(engine::Twin{id});
  Object props(Poco::JSON_PRESERVE_KEY_ORDER);
  props.set("desired", document(twin.desired, twin.desired_version, "stored desired properties"));
  props.set("reported",
            document(twin.reported, twin.reported_version, "stored reported properties"));
  Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("deviceId", id);
  o.set("properties", props);
  std::optional<engine::DeviceSession> session;
  for (const auto& s : ctx.registry().connected_devices()) {
    if (s.device_id == id) session = s;
  }
  o.set("connected", session.has_value());
  if (session) {
    o.set("session", session_json(*session));
  }
  if (ctx.json()) {
    ctx.print_json(o);
  } else {
    std::printf(
        "twin of %s (%s)\n", id.c_str(),
        session ? ("connected with certificate " + session->cert_sha256).c_str() : "not connected");
    props.stringify(std::cout, 2);
    std::cout << '\n';
  }
  return 0;
}

int run_set_desired(Context& ctx) {
  const std::string id = checked_device(ctx);
  const Args& a = ctx.args();
  std::string patch;
  if (const auto file = path_option(a, "patch-file")) {
    patch = read_bounded(file->string(), engine::kTwinDocLimit, "--patch-file");
  } else {
    patch = a.require("patch");
  }
  if (patch.size() > engine::kTwinDocLimit) {
    throw Error(ErrorCode::kInputTooLarge, "--patch is larger than the twin limit of " +
                                               std::to_string(engine::kTwinDocLimit) + " bytes");
  }
  parse_object(patch, "--patch");  // named here; the store checks again
  const std::int64_t version = ctx.registry().set_desired(id, patch);
  if (ctx.json()) {
    Object o;
    o.set("deviceId", id);
    o.set("desired_version", version);
    ctx.print_json(o);
  } else {
    std::printf(
        "desired properties of %s at version %lld; the broker pushes the patch to the "
        "device when it is connected\n",
        id.c_str(), static_cast<long long>(version));
  }
  return 0;
}

}  // namespace

int run_device_list_connected(Context& ctx) {
  // The plugin records sessions; a broker that died (kill -9) leaves rows that say connected
  // until its next start. Without a running broker, nobody is connected.
  std::vector<engine::DeviceSession> sessions;
  bool broker_running = false;
  {
    broker::BrokerHome home(ctx.home_dir());
    if (home.initialised()) {
      broker::Supervisor sup(home);
      broker_running = sup.status(home.load()).running;
    }
  }
  if (broker_running) {
    sessions = ctx.registry().connected_devices();
  }
  if (ctx.json()) {
    Poco::JSON::Array arr;
    for (const auto& s : sessions) arr.add(session_json(s));
    Object o;
    o.set("connected", arr);
    o.set("count", static_cast<std::int64_t>(sessions.size()));
    o.set("broker_running", broker_running);
    ctx.print_json(o);
    return 0;
  }
  Table t({"DEVICE", "MODE", "SINCE", "CERTIFICATE SHA-256", "SERIAL"});
  for (const auto& s : sessions) {
    t.add({s.device_id, s.mode, engine::iso8601(s.connected_at), s.cert_sha256, s.cert_serial});
  }
  t.print();
  std::printf("%zu connected%s\n", sessions.size(),
              broker_running ? "" : " (the broker is not running)");
  return 0;
}

void add_twin_commands(std::vector<Command>& commands) {
  commands.push_back(Command{{"twin", "show"},
                             "DEVICE [--json]",
                             "a device's twin (desired and reported properties) and session",
                             [](Poco::Util::OptionSet& s) { add_flag(s, "json", "print JSON"); },
                             run_show});
  commands.push_back(Command{
      {"twin", "set-desired"},
      "DEVICE (--patch JSON | --patch-file F) [--json]",
      "merge-patch a device's desired properties; the broker pushes them to the device",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "patch", "JSON", "a JSON object (RFC 7386 merge patch: null removes a key)");
        add_option(s, "patch-file", "F", "the patch from a file");
        add_flag(s, "json", "print JSON");
      },
      run_set_desired});
}

}  // namespace fleetsign::cli
