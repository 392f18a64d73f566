// fleetsign broker init | start | stop | status | reload: the fleet's mosquitto, supervised from
// the home (see broker/PROTOCOL.md).
#include <Poco/JSON/Array.h>

#include <cstdio>
#include <cstdlib>

#include "cli.hpp"
#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/broker/broker_home.hpp"
#include "fleetsign/broker/crl_install.hpp"
#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

namespace fs = std::filesystem;

namespace {

constexpr const char* kDefaultCa = "broker-ca";
constexpr const char* kServiceName = "fleetsign-service";

fs::path mosquitto_binary(const Args& a) {
  if (const auto p = path_option(a, "mosquitto")) {
    return *p;
  }
  if (const char* env = std::getenv("FLEETSIGN_MOSQUITTO"); env != nullptr && *env != '\0') {
    return env;
  }
  return "/usr/sbin/mosquitto";
}

// The CA chain of `ca` as PEM, leaf-most first; `with_root` false leaves the root out.
std::string chain_pem(engine::CaService& cas, const std::string& ca) {
  std::string pem;
  for (const engine::CaRecord& rec : cas.chain(ca)) {
    engine::append_pem(pem, rec.cert_der, "CERTIFICATE");
  }
  return pem;
}

engine::CaRecord broker_ca(Context& ctx, const std::string& name, bool explicit_ca) {
  if (const auto found = ctx.registry().find_ca(name)) {
    return *found;
  }
  if (explicit_ca) {
    throw Error(ErrorCode::kNotFound, "--ca " + name + ": no such CA in the registry");
  }
  engine::CaSpec spec;
  spec.name = name;
  spec.subject = "/CN=fleetsign broker CA";
  return ctx.cas().create_root(spec);
}

Poco::JSON::Object status_json(const broker::BrokerHome& home, const broker::BrokerSettings& s,
                               const broker::BrokerStatus& st) {
  Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("running", st.running);
  if (st.running) {
    o.set("pid", static_cast<int>(st.pid));
    o.set("accepting", st.accepting);
  }
  o.set("port", s.port);
  Poco::JSON::Array hosts;
  for (const auto& h : s.hosts) {
    hosts.add(h);
  }
  o.set("hosts", hosts);
  o.set("id_scope", s.id_scope);
  Poco::JSON::Object endpoints(Poco::JSON_PRESERVE_KEY_ORDER);
  endpoints.set("hub", s.endpoint());
  endpoints.set("dps", s.endpoint());
  endpoints.set("connection_string_template",
                "HostName=" + s.endpoint() + ";DeviceId={deviceId};x509=true");
  o.set("endpoints", endpoints);
  o.set("ca", s.ca);
  o.set("trust", home.ca_path().string());
  o.set("config", home.config_path().string());
  o.set("log", home.log_path().string());
  o.set("plugin", s.plugin);
  return o;
}

void print_status(const broker::BrokerHome& home, const broker::BrokerSettings& s,
                  const broker::BrokerStatus& st) {
  if (st.running) {
    std::printf("broker running (pid %d)%s\n", static_cast<int>(st.pid),
                st.accepting ? "" : ", NOT accepting connections");
  } else {
    std::printf("broker stopped\n");
  }
  std::printf(
      "  hub endpoint  %s\n  DPS endpoint  %s (ID scope %s)\n  trust         %s\n"
      "  log           %s\n",
      s.endpoint().c_str(), s.endpoint().c_str(), s.id_scope.c_str(),
      home.ca_path().string().c_str(), home.log_path().string().c_str());
}

int run_init(Context& ctx) {
  const Args& a = ctx.args();
  broker::BrokerHome home(ctx.home_dir());
  broker::BrokerSettings s;
  const bool again = home.initialised();
  if (again) {
    s = home.load();
  }
  if (a.has("host")) {
    s.hosts = a.options.at("host");
  } else if (s.hosts.empty()) {
    s.hosts = {"localhost", "127.0.0.1"};
  }
  for (const auto& h : s.hosts) {
    broker::check_host(h);
  }
  if (const auto port = a.get_int("port")) {
    if (*port < 1 || *port > 65535) {
      throw Error(ErrorCode::kUsage, "--port must be 1..65535");
    }
    s.port = *port;
  }
  if (const auto bind = a.get("bind")) {
    if (!bind->empty() && !broker::is_ip_address(*bind)) {
      throw Error(ErrorCode::kUsage, "--bind '" + *bind + "' is not an IP address");
    }
    s.bind = *bind;
  }
  if (const auto expire = a.get("session-expiry")) {
    const bool ok = expire->size() >= 2 && expire->size() <= 8 &&
                    std::string("hdwmy").find(expire->back()) != std::string::npos &&
                    expire->find_first_not_of("0123456789") == expire->size() - 1;
    if (!ok) {
      throw Error(ErrorCode::kUsage, "--session-expiry '" + *expire +
                                         "' must be a number and h, d, w, m or y (e.g. 7d)");
    }
    s.persistent_client_expiration = *expire;
  }
  s.plugin = broker::find_plugin(path_option(a, "plugin")).string();
  const bool explicit_ca = a.has("ca");
  s.ca = a.get("ca").value_or(s.ca.empty() ? kDefaultCa : s.ca);
  if (s.id_scope.empty()) {
    s.id_scope = broker::make_id_scope(ctx.random());
  }
  const engine::CaRecord ca = broker_ca(ctx, s.ca, explicit_ca);
  std::error_code ec;
  fs::create_directories(home.dir(), ec);
  fs::permissions(home.dir(), fs::perms::owner_all, ec);

  engine::TlsCertSpec server;
  server.common_name = s.hosts.front();
  for (const auto& h : s.hosts) {
    (broker::is_ip_address(h) ? server.ip_addresses : server.dns_names).push_back(h);
  }
  const std::string server_sha =
      issue_endpoint(ctx, ca.name, server, home.server_cert_path(), home.server_key_path());
  engine::TlsCertSpec service;
  service.common_name = kServiceName;
  service.server = false;
  const std::string service_sha =
      issue_endpoint(ctx, ca.name, service, home.service_cert_path(), home.service_key_path());
  s.service_sha256 = {service_sha};
  write_file_atomic(home.ca_path(), chain_pem(ctx.cas(), ca.name), 0644);
  const std::size_t trusted = home.write_clients_ca(ctx.registry());
  home.write_config(s);
  home.save(s);
  // The broker's CA signs client certificates too (the service clients'): with its first CRL the
  // broker's CRL file covers every issuer, and mosquitto checks revocation at TLS as well.
  const bool first_crl = !ctx.registry().latest_crl(ca.name).has_value();
  const std::string crl_line = refresh_crls_and_broker(
      ctx, first_crl ? std::vector<std::string>{ca.name} : std::vector<std::string>{});
  if (!ctx.json() && !crl_line.empty()) std::fprintf(stderr, "%s\n", crl_line.c_str());
  ctx.registry().audit(
      "broker.init", s.endpoint(),
      engine::json_object({{"ca", s.ca}, {"id_scope", s.id_scope}, {"server_sha256", server_sha}}));
  if (ctx.json()) {
    Poco::JSON::Object o = status_json(home, s, broker::BrokerStatus{});
    o.set("server_sha256", server_sha);
    o.set("trusted_client_cas", static_cast<int>(trusted));
    o.remove("running");
    ctx.print_json(o);
  } else {
    std::printf(
        "%s the broker in %s\n  server certificate for %s from CA %s (SHA-256 %s)\n"
        "  devices trust %s\n  hub and DPS endpoint %s, ID scope %s\n"
        "next: fleetsign broker start\n",
        again ? "re-initialised" : "initialised", home.dir().string().c_str(),
        s.hosts.front().c_str(), ca.name.c_str(), server_sha.c_str(),
        home.ca_path().string().c_str(), s.endpoint().c_str(), s.id_scope.c_str());
  }
  return 0;
}

// Regenerates what depends on the registry or the install (trust file, config) before mosquitto
// reads it.
broker::BrokerSettings refresh(Context& ctx, const broker::BrokerHome& home) {
  broker::BrokerSettings s = home.load();
  std::error_code ec;
  if (!fs::is_regular_file(s.plugin, ec)) {
    s.plugin = broker::find_plugin(path_option(ctx.args(), "plugin")).string();
    home.save(s);
  }
  home.write_clients_ca(ctx.registry());
  // The CRL file is checked before it is installed: a bad one would leave mosquitto with none.
  try {
    broker::install_registry_crls(home, ctx.registry(), ctx.clock().now());
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kCrlInvalid) throw;
    throw Error(e.code(),
                std::string(e.what()) +
                    ": run `fleetsign crl sign --due` (or keep `fleetsign serve` running)");
  }
  home.write_config(s);
  return s;
}

// start and restart (start_home_broker), with the status printed.
int start_broker(Context& ctx, bool restart) {
  const broker::BrokerStatus st = start_home_broker(ctx, restart);
  broker::BrokerHome home(ctx.home_dir());
  const broker::BrokerSettings s = home.load();
  if (ctx.json()) {
    ctx.print_json(status_json(home, s, st));
  } else {
    print_status(home, s, st);
  }
  return 0;
}

int run_start(Context& ctx) { return start_broker(ctx, false); }

int run_stop(Context& ctx) {
  broker::BrokerHome home(ctx.home_dir());
  const broker::BrokerSettings s = home.load();
  broker::Supervisor sup(home, mosquitto_binary(ctx.args()));
  const bool was_running = sup.stop();
  if (was_running) {
    ctx.registry().audit("broker.stop", s.endpoint(), "{}");
  }
  if (ctx.json()) {
    Poco::JSON::Object o;
    o.set("stopped", was_running);
    ctx.print_json(o);
  } else {
    std::printf(was_running ? "broker stopped\n" : "broker was not running\n");
  }
  return 0;
}

int run_status(Context& ctx) {
  broker::BrokerHome home(ctx.home_dir());
  const broker::BrokerSettings s = home.load();
  broker::Supervisor sup(home, mosquitto_binary(ctx.args()));
  const broker::BrokerStatus st = sup.status(s);
  if (ctx.json()) {
    ctx.print_json(status_json(home, s, st));
  } else {
    print_status(home, s, st);
  }
  return st.running ? 0 : 3;
}

// The trust file mosquitto read last ("" when missing or damaged: it is rewritten anyway). Only a
// regular file is read: it is the broker's own, and a device there is damage, not 64 MiB to read.
std::string current_trust(const broker::BrokerHome& home) {
  std::error_code ec;
  if (!fs::is_regular_file(home.clients_ca_path(), ec)) return {};
  try {
    return read_bounded(home.clients_ca_path().string(), 64 * 1024 * 1024, "client trust file");
  } catch (const Error&) {
    return {};
  }
}

int run_reload(Context& ctx) {
  broker::BrokerHome home(ctx.home_dir());
  const std::string before = current_trust(home);
  const bool crl_before = fs::exists(home.crl_path());
  const broker::BrokerSettings s = refresh(ctx, home);
  // mosquitto reads its listener's cafile and whether it has a crlfile only when it starts.
  const bool trust_changed =
      current_trust(home) != before || fs::exists(home.crl_path()) != crl_before;
  broker::Supervisor sup(home, mosquitto_binary(ctx.args()));
  sup.reload();
  if (trust_changed) {
    // mosquitto 2.0 reads its listener's cafile only when it starts.
    std::fprintf(stderr,
                 "fleetsign: the client trust changed (a new CA or self-signed enrollment); "
                 "mosquitto reads it only at start: run `fleetsign broker restart` (devices "
                 "reconnect, sessions persist)\n");
  }
  if (ctx.json()) {
    Poco::JSON::Object o = status_json(home, s, sup.status(s));
    o.set("restart_needed", trust_changed);
    ctx.print_json(o);
  } else {
    std::printf("broker reloaded: configuration, policy and registry state re-read%s\n",
                trust_changed ? "; restart it for the new client trust" : "");
  }
  return 0;
}

int run_restart(Context& ctx) { return start_broker(ctx, true); }

void mosquitto_option(Poco::Util::OptionSet& set) {
  add_option(set, "mosquitto", "PATH",
             "mosquitto binary (default $FLEETSIGN_MOSQUITTO, else /usr/sbin/mosquitto)");
  add_flag(set, "json", "print JSON");
}

}  // namespace

std::string issue_endpoint(Context& ctx, const std::string& ca, const engine::TlsCertSpec& spec,
                           const fs::path& cert_path, const fs::path& key_path) {
  const engine::TlsKeyPair key = engine::make_tls_key();
  const engine::Der cert = ctx.cas().make_tls_cert(ca, spec, key.spki_der);
  std::string pem = engine::pem(cert, "CERTIFICATE");
  const auto chain = ctx.cas().chain(ca);
  for (std::size_t i = 0; i + 1 < chain.size(); ++i) {  // intermediates, not the root
    engine::append_pem(pem, chain[i].cert_der, "CERTIFICATE");
  }
  write_file_atomic(key_path, key.private_pem, 0600);
  write_file_atomic(cert_path, pem, 0644);
  return engine::thumbprint_sha256(cert);
}

fs::path broker_binary(const Args& args) { return mosquitto_binary(args); }

broker::BrokerStatus start_home_broker(Context& ctx, bool restart) {
  broker::BrokerHome home(ctx.home_dir());
  const broker::BrokerSettings s = refresh(ctx, home);
  broker::Supervisor sup(home, mosquitto_binary(ctx.args()));
  if (restart) {
    sup.stop();
  }
  const broker::BrokerStatus st = sup.start(s);
  ctx.registry().audit(restart ? "broker.restart" : "broker.start", s.endpoint(),
                       engine::json_object({{"pid", static_cast<std::int64_t>(st.pid)}}));
  return st;
}

void add_broker_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"broker", "init"},
      "[--host NAME ...] [--port 8883] [--bind ADDR] [--ca NAME] [--session-expiry 7d]",
      "set up the fleet's broker: server certificate from a fleetsign CA, config in the home",
      [](Poco::Util::OptionSet& set) {
        add_option(set, "host", "NAME",
                   "DNS name or IP address devices use (repeatable; default localhost, 127.0.0.1)",
                   true);
        add_option(set, "port", "N", "TLS port (default 8883)");
        add_option(set, "bind", "ADDR", "listen on this address only (default: all)");
        add_option(set, "ca", "NAME",
                   "CA that issues the server certificate (default: broker-ca, created as a root)");
        add_option(set, "session-expiry", "DURATION",
                   "drop sessions of devices away this long (mosquitto's "
                   "persistent_client_expiration; default 7d)");
        add_option(set, "plugin", "PATH",
                   "fleetsign-broker-plugin.so (default: found next to fleetsign)");
        add_option(set, "pin-file", "FILE", "user PIN file (else FLEETSIGN_PIN or a prompt)");
        add_flag(set, "json", "print JSON");
      },
      run_init});
  commands.push_back(Command{{"broker", "start"},
                             "[--mosquitto PATH]",
                             "start the fleet's mosquitto (pid file and log in the home)",
                             [](Poco::Util::OptionSet& set) {
                               mosquitto_option(set);
                               add_option(set, "plugin", "PATH", "fleetsign-broker-plugin.so");
                             },
                             run_start});
  commands.push_back(
      Command{{"broker", "stop"}, "", "stop the fleet's mosquitto", mosquitto_option, run_stop});
  commands.push_back(
      Command{{"broker", "status"},
              "[--json]",
              "is the broker running; its endpoints and DPS ID scope (exit 3: stopped)",
              mosquitto_option,
              run_status});
  commands.push_back(Command{{"broker", "restart"},
                             "[--mosquitto PATH]",
                             "stop and start the broker (picks up new client trust: new CAs, "
                             "self-signed enrollments); devices reconnect, sessions persist",
                             [](Poco::Util::OptionSet& set) {
                               mosquitto_option(set);
                               add_option(set, "plugin", "PATH", "fleetsign-broker-plugin.so");
                             },
                             run_restart});
  commands.push_back(Command{{"broker", "reload"},
                             "",
                             "re-read configuration and policy (SIGHUP); says when new client "
                             "trust needs a restart",
                             [](Poco::Util::OptionSet& set) {
                               mosquitto_option(set);
                               add_option(set, "plugin", "PATH", "fleetsign-broker-plugin.so");
                             },
                             run_reload});
}

}  // namespace fleetsign::cli
