// The fleetsign command line: a table of commands ("ca create-root", …), each with its own
// Poco::Util::OptionSet. Commands parse, call the engine/jobs, and print (human or --json).
#pragma once

#include <Poco/JSON/Object.h>
#include <Poco/Util/OptionSet.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "fleetsign/broker/broker_home.hpp"
#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/home.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/services.hpp"
#include "fleetsign/hsm/token.hpp"
#include "fleetsign/jobs/trigger.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {
class SignLatencyFlusher;
}

namespace fleetsign::cli {

// Parsed options of one invocation: repeated options keep every value.
class Args {
 public:
  std::map<std::string, std::vector<std::string>> options;
  std::vector<std::string> positional;

  bool has(const std::string& name) const { return options.count(name) != 0; }
  std::optional<std::string> get(const std::string& name) const;
  std::string require(const std::string& name) const;         // kUsage when missing
  std::optional<int> get_int(const std::string& name) const;  // kUsage when not an integer
  std::string positional_at(std::size_t i, const std::string& what) const;
};

// What a command runs against: the engine's Services for the home, opened lazily on first use.
class Context {
 public:
  Context(std::optional<std::filesystem::path> home_dir, Args args);
  ~Context();

  const Args& args() const { return m_args; }
  bool json() const { return m_args.has("json"); }
  std::filesystem::path home_dir() const;
  engine::Services& services();
  engine::Home& home() { return services().home(); }
  const policy::Policy& policy() { return services().policy(); }
  engine::Stores& registry() { return services().stores(); }
  // Locks the home (kHomeBusy, or waits with --wait), restores damaged token metadata, logs in
  // (asks for the user PIN: file, FLEETSIGN_PIN, or prompt), cleans up interrupted CA creations,
  // and refuses an embedded token with keys behind a registry without CAs (kRegistryMissing).
  // Prints what was restored or cleaned up on stderr, and adds advice to the errors.
  hsm::Token& token();
  // The same without the last check: for commands that inspect such a mismatch (`ca orphans`).
  hsm::Token& token_for_inspection();
  engine::CaService& cas();
  const engine::Clock& clock() { return services().clock(); }
  engine::RandomSource& random() { return services().random(); }

  // Prints a JSON object on stdout (one line).
  void print_json(const Poco::JSON::Object& obj) const;

 private:
  std::optional<std::filesystem::path> m_home_dir;
  Args m_args;
  std::unique_ptr<engine::Services> m_services;
  // The token's signing latency, saved to the home while the token is open (sign_metrics.hpp).
  std::unique_ptr<engine::SignLatencyFlusher> m_sign_flusher;
  hsm::Token& open_token(bool check_registry);
};

struct Command {
  std::vector<std::string> words;  // {"ca", "create-root"}
  std::string usage;               // after the words, e.g. "--name NAME --subject DN [--key ALG]"
  std::string summary;
  std::function<void(Poco::Util::OptionSet&)> options;
  std::function<int(Context&)> run;  // returns the exit status
};

// The whole program: parses argv, runs the command, maps errors to exit statuses.
int run_main(int argc, char** argv);
// Test builds only: every Services the program opens gets this wrapper (fault injection).
void set_stores_wrapper(engine::Services::StoresWrapper wrapper);

// Registration (one function per command family, in its own file).
void add_init_commands(std::vector<Command>& commands);
void add_registry_commands(std::vector<Command>& commands);  // registry migrate
void add_ca_commands(std::vector<Command>& commands);
void add_issue_commands(std::vector<Command>& commands);
void add_overview_commands(std::vector<Command>& commands);    // fleet overview, audit
void add_enrollment_commands(std::vector<Command>& commands);  // enrollment …, device …
void add_report_commands(std::vector<Command>& commands);      // expiry report, export …
void add_auth_commands(std::vector<Command>& commands);        // auth check
// `auth check`'s time (--at) and JSON answer, shared with the HTTP service (cmd_auth.cpp):
// "2026-11-23T07:13:11Z", "2026-11-23" or unix seconds (kUsage otherwise).
std::int64_t parse_auth_time(const std::string& text);
Poco::JSON::Object auth_decision_json(const engine::AuthDecision& d, std::int64_t at);
void add_broker_commands(std::vector<Command>& commands);  // broker init|start|stop|…
void add_twin_commands(std::vector<Command>& commands);    // twin show, twin set-desired
// `device list --connected`: the sessions the broker records (cmd_twin.cpp).
int run_device_list_connected(Context& ctx);
void add_method_commands(std::vector<Command>& commands);    // method invoke, fleet backend
void add_rollover_commands(std::vector<Command>& commands);  // rollover …, job …
void add_incident_commands(std::vector<Command>& commands);  // incident start|list
// The home's broker (cmd_broker.cpp): its trust file and config refreshed from the registry,
// mosquitto started (stopped first when `restart`) and audited. kAlreadyExists when it runs;
// kBrokerFailed when it does not come up. The mosquitto binary: --mosquitto, FLEETSIGN_MOSQUITTO,
// else /usr/sbin/mosquitto.
broker::BrokerStatus start_home_broker(Context& ctx, bool restart);
std::filesystem::path broker_binary(const Args& args);
// Re-installs the broker's CRL file from the registry's CRLs and reloads a running mosquitto
// (cmd_crl.cpp). Returns a line for the operator ("" when no broker runs from this home).
std::string update_broker(Context& ctx, std::int64_t now);
// A key and a TLS certificate for one of fleetsign's endpoints (cmd_broker.cpp): the key written
// 0600, the certificate with its chain (the root left out); returns its SHA-256.
std::string issue_endpoint(Context& ctx, const std::string& ca, const engine::TlsCertSpec& spec,
                           const std::filesystem::path& cert_path,
                           const std::filesystem::path& key_path);
void add_serve_commands(std::vector<Command>& commands);   // serve
void add_worker_commands(std::vector<Command>& commands);  // worker clone, batch work
// A lease holder's name, "host~tag:pid" (cmd_worker.cpp; the tag names the kernel's boot and the
// PID namespace), and whether the holder named is a process of this host that is gone (a lease it
// held is free at once, not when it expires).
std::string host_name();
// A child of `serve` names the error that ends it on serve's status channel (run.cpp; a command
// that reports its own failure and returns its exit status calls it itself).
void tell_parent(const Error& e);
std::string process_holder_name();
bool holder_is_gone(const std::string& holder);
// The test hook (cmd_serve.cpp): --now UNIX or FLEETSIGN_TEST_NOW pins a clock (serve's scheduler,
// crl's); else the system clock. kUsage for anything but a unix time in seconds.
std::unique_ptr<engine::Clock> test_hook_clock(const Args& args);
void add_crl_commands(std::vector<Command>& commands);  // crl show|export|sign
// After a revocation (cmd_crl.cpp): new CRLs for `ca_names` signed in the token, then the broker's
// CRL file re-installed (checked first) and mosquitto reloaded when it runs. Returns a line for
// the operator about the CRLs and the broker.
std::string refresh_crls_and_broker(Context& ctx, const std::vector<std::string>& ca_names);
// Signs the CRL of every CA that is behind a revocation, one CA at a time, then installs the
// broker's CRL file. Never throws: what was signed, and what could not be (and why), in a line.
std::string refresh_behind_crls(Context& ctx) noexcept;
void add_revoke_commands(std::vector<Command>& commands);    // revoke, blocklist …
void add_operator_commands(std::vector<Command>& commands);  // operator add|list|remove, http init
// The HTTP service's files in the home (cmd_operator.cpp): its certificate and key (`http init`)
// and the CAs its TLS accepts client certificates from (every CA of the registry that is not
// revoked; the route decides who may do what).
struct HttpFiles {
  std::filesystem::path dir, cert, key, clients_ca;
};
HttpFiles http_files(const std::filesystem::path& home);
// Writes clients_ca from the registry; returns how many CAs it holds (kNotFound: none).
std::size_t write_http_trust(engine::Stores& stores, const HttpFiles& files);
// The fleet's trigger as HOME/fleet.json says (cmd_method.cpp): the broker, or IoT Hub.
std::unique_ptr<jobs::Trigger> open_fleet_backend(const std::filesystem::path& home);

// Helpers shared by commands.
void add_option(Poco::Util::OptionSet& set, const std::string& name, const std::string& arg,
                const std::string& help, bool repeatable = false);
void add_flag(Poco::Util::OptionSet& set, const std::string& name, const std::string& help);
std::optional<std::filesystem::path> path_option(const Args& args, const std::string& name);
// The password of a PKCS#12 file, when `needed`: from --pfx-password-file, FLEETSIGN_PFX_PASSWORD
// or a prompt on a terminal (kUsage naming `needed_by` when there is none). An empty password (it
// would leave the key unprotected) or one with a NUL byte (it would be cut there) is refused.
std::optional<hsm::Pin> pfx_password(const Args& a, bool needed, const std::string& needed_by);
// {"name": count, …} in the map's order (a plan's counts per group, lot, site, CA).
Poco::JSON::Object::Ptr counts_json(const std::map<std::string, std::int64_t>& counts);

// Output files (output_file.cpp). A regular path (or one that does not exist yet) is written to a
// temporary file in the same directory, fsync'ed, given `perms` and renamed over the target (a
// symlink to a regular file keeps the link and replaces its file). A special file — a device
// (/dev/full), a FIFO, a terminal, or a link under /dev or /proc (/dev/stdout) — is written in
// place (appending), never created, truncated or replaced. Every write, flush, fsync and close is
// checked: Error(kIo) naming the file and the cause. On failure no temporary or empty file is left
// behind and an existing target is untouched. An error thrown by `produce` propagates (the
// temporary removed).
using OutputProducer = std::function<void(std::ostream&)>;
// Outputs never go into the home (a `--out registry.db` would destroy it): the Context protects
// the home's directory when it opens it, and every output path is checked against it
// (kInvalidArgument naming both).
void protect_directory(const std::filesystem::path& dir);
void refuse_protected(const std::filesystem::path& path);
void write_output_file(const std::filesystem::path& path, std::filesystem::perms perms,
                       const OutputProducer& produce);
void write_text_file(const std::filesystem::path& path, const std::string& text,
                     std::filesystem::perms perms);

}  // namespace fleetsign::cli
