// The broker's part of a fleetsign home (HOME/broker/, see ../../../PROTOCOL.md): its settings
// (broker.json), the mosquitto configuration generated from them, the trust file the TLS layer
// uses for device certificates, and the supervision of Debian's mosquitto (pid file, log).
//
// Nothing here opens the token: certificates are made by the CLI through the engine's CaService
// at `broker init`; start, stop, status and reload need only the files and the registry.
// Not thread-safe; one process at a time (the CLI).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/stores.hpp"

namespace fleetsign::broker {

struct BrokerSettings {
  int port = 8883;
  std::vector<std::string> hosts;  // DNS names and IP addresses in the server certificate
  std::string bind;                // listener address; empty: every interface
  std::string id_scope;            // the DPS ID scope devices register with ("0ne" + 8 hex)
  std::string ca;                  // the fleetsign CA that issued the server certificate
  std::vector<std::string> service_sha256;  // thumbprints of fleetsign's service clients
  std::string persistent_client_expiration = "7d";
  std::string plugin;  // the plugin's path, as resolved at init

  // "host:port" of the first host: the hub a device is assigned to.
  std::string endpoint() const;
};

class BrokerHome final {
 public:
  explicit BrokerHome(std::filesystem::path home_dir);

  const std::filesystem::path& dir() const noexcept { return m_dir; }
  std::filesystem::path home_dir() const { return m_dir.parent_path(); }
  std::filesystem::path settings_path() const { return m_dir / "broker.json"; }
  std::filesystem::path config_path() const { return m_dir / "mosquitto.conf"; }
  // OpenSSL's settings for this broker's mosquitto (OPENSSL_CONF): no TLS 1.3 session tickets.
  std::filesystem::path openssl_config_path() const { return m_dir / "openssl.cnf"; }
  std::filesystem::path ca_path() const { return m_dir / "ca.pem"; }
  std::filesystem::path server_cert_path() const { return m_dir / "server.crt"; }
  std::filesystem::path server_key_path() const { return m_dir / "server.key"; }
  std::filesystem::path clients_ca_path() const { return m_dir / "clients-ca.pem"; }
  std::filesystem::path service_cert_path() const { return m_dir / "service.crt"; }
  std::filesystem::path service_key_path() const { return m_dir / "service.key"; }
  std::filesystem::path pid_path() const { return m_dir / "mosquitto.pid"; }
  std::filesystem::path log_path() const { return m_dir / "mosquitto.log"; }
  std::filesystem::path data_dir() const { return m_dir / "data"; }
  // mosquitto's crlfile, when installed (crl_install.hpp); write_config names it only then.
  std::filesystem::path crl_path() const { return m_dir / "crl.pem"; }

  bool initialised() const;
  // The broker runs from this home (its server key is here): false for a worker's home, which
  // holds only the client side (`worker clone`) to reach a broker that runs elsewhere.
  bool hosts_broker() const;
  // Reads broker.json (kNotFound: "run fleetsign broker init"; kInvalidArgument naming a bad
  // field). Bounded read.
  BrokerSettings load() const;
  void save(const BrokerSettings& settings) const;  // atomic replace

  // mosquitto.conf from the settings: TLS with client certificates required, the plugin with
  // plugin_opt_home, persistence, pid file and log in this directory; `crlfile` when crl.pem
  // is installed (mosquitto reads that line only at start: a change needs a restart).
  void write_config(const BrokerSettings& settings) const;
  // clients-ca.pem: every registry CA certificate plus the certificates in individual
  // enrollments' slots (self-signed device certificates are their own issuers). Returns how many.
  std::size_t write_clients_ca(engine::Stores& stores) const;

 private:
  std::filesystem::path m_dir;
};

// Validates a --host value: a DNS name or an IP address (kInvalidArgument naming it otherwise).
bool is_ip_address(const std::string& host);
void check_host(const std::string& host);
// A fresh ID scope: "0ne" followed by 8 upper-case hex digits from `random`.
std::string make_id_scope(engine::RandomSource& random);

// Where the plugin is: `explicit_path` if given; else next to the running program, in
// ../lib/fleetsign/ of it, or where the build put it. kNotFound lists the places tried.
std::filesystem::path find_plugin(const std::optional<std::filesystem::path>& explicit_path);

struct BrokerStatus {
  bool running = false;
  pid_t pid = 0;
  bool accepting = false;  // the port accepts TCP connections
};

// Supervision of one mosquitto per home.
class Supervisor final {
 public:
  explicit Supervisor(const BrokerHome& home,
                      std::filesystem::path mosquitto = "/usr/sbin/mosquitto");

  // Starts mosquitto as a daemon (spawned, never forked from this process) and waits up to
  // `wait_seconds` until it accepts connections. kAlreadyExists when it is running already;
  // kBrokerFailed with the end of its log when it exits or does not listen in time.
  BrokerStatus start(const BrokerSettings& settings, int wait_seconds = 15);
  // SIGTERM, then SIGKILL after `wait_seconds`. Returns false when it was not running.
  bool stop(int wait_seconds = 10);
  BrokerStatus status(const BrokerSettings& settings) const;
  // SIGHUP: mosquitto re-reads its configuration and certificates; the plugin reloads.
  // kBrokerFailed when it is not running.
  void reload();

 private:
  std::optional<pid_t> running_pid() const;
  const BrokerHome& m_home;
  std::filesystem::path m_mosquitto;
};

}  // namespace fleetsign::broker
