// `fleetsign serve`: one long-running process that supervises the home's broker, runs the jobs
// and schedules rollovers (jobs/scheduler.hpp). Each tick, in order:
//   0. the CRLs (engine/crl.hpp): a CA's CRL that is missing, within the policy's re-sign margin
//      of its nextUpdate, or behind a revocation is re-signed by a child `fleetsign crl sign
//      --due` (which also installs the broker's CRL file); one near nextUpdate is warned about;
//   1. the broker: started when HOME/broker is set up and mosquitto is not running (it died);
//   2. the scheduler: rollover jobs created by policy, expiry alerts logged (and audited);
//   3. the jobs: each job in state running whose lease is free or stale (or aborted or canceled
//      with open tasks, by a runner that died before it ended), and that has no child of ours
//      already, is run by a child `fleetsign --home HOME --wait job resume ID` (spawned,
//      never forked, with the PIN in FLEETSIGN_PIN of its environment, never in argv). A child
//      that dies is simply spawned again at a later tick: the job resumes where it stopped. A
//      --worker also spawns one for a job another worker runs while tasks of it wait unclaimed:
//      that child helps (jobs/rollover.hpp: run_job), and the job's devices are shared.
// SIGTERM/SIGINT: no more spawning, SIGTERM to the children, wait for them, exit 0; the broker
// keeps running (it is a service of its own). --once: one tick, waiting for the children.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <thread>

#include "child.hpp"
#include "cli.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/rollover.hpp"
#include "fleetsign/jobs/scheduler.hpp"
#include "http_service.hpp"
#include "serve_children.hpp"

extern char** environ;

namespace fleetsign::cli {

std::unique_ptr<engine::Clock> test_hook_clock(const Args& args) {
  std::optional<std::string> text = args.get("now");
  if (!text) {
    if (const char* env = std::getenv("FLEETSIGN_TEST_NOW"); env != nullptr && *env != '\0') {
      text = env;
    }
  }
  if (!text) return std::make_unique<engine::SystemClock>();
  try {
    std::size_t used = 0;
    const long long t = std::stoll(*text, &used);
    if (used == text->size() && t >= 0) return std::make_unique<engine::FixedClock>(t);
  } catch (const std::exception&) {
  }
  throw Error(ErrorCode::kUsage,
              "--now / FLEETSIGN_TEST_NOW: '" + *text + "' is not a unix time in seconds");
}

namespace {

namespace fs = std::filesystem;

constexpr int kDefaultTick = 60;
constexpr int kMaxTick = 86400;
// Seconds without a heartbeat after which a job's runner is gone (the runners' own limit).
constexpr std::int64_t kLeaseStale = jobs::kJobHeartbeatStale;
constexpr auto kPoll = std::chrono::milliseconds(200);
// The scheduler's lease (one serve of the registry schedules): renewed every kLeaseRenew. On
// SQLite a serve that stops renewing loses it after kSchedulerLease (at once when it is a dead
// process of this host). On PostgreSQL it is also an advisory lock of the serve's connection
// (WorkStore::take_lease), which the server frees the moment that connection ends: the serve
// died (on any machine), or sat frozen past kLeaseIdleLimit; a slow tick keeps it.
constexpr const char* kSchedulerLeaseName = "scheduler";
constexpr std::int64_t kSchedulerLease = 15;
constexpr auto kLeaseRenew = std::chrono::seconds(5);

volatile std::sig_atomic_t g_stop = 0;
void on_stop_signal(int) { g_stop = 1; }
std::atomic<bool> g_wake{false};  // the HTTP service made a job: tick now

void log(const std::string& line) { std::fprintf(stderr, "fleetsign serve: %s\n", line.c_str()); }

class Server final {
 public:
  Server(Context& ctx, hsm::Pin pin, std::unique_ptr<engine::Clock> clock, bool worker)
      : m_ctx(ctx),
        m_worker(worker),
        m_pin(std::move(pin)),
        m_clock(std::move(clock)),
        m_scheduler(ctx.registry(), ctx.policy(), *m_clock),
        m_self(fs::read_symlink("/proc/self/exe")) {}
  Server(const Server&) = delete;  // owns its children
  Server& operator=(const Server&) = delete;

  Poco::JSON::Object tick();
  ServeChildren& children() { return m_children; }
  // Takes or renews the scheduler's lease; whether this serve holds it.
  bool hold_scheduler_lease();
  void release_scheduler_lease();
  bool scheduling() const { return m_scheduling; }
  const hsm::Pin& pin() const { return m_pin; }

 private:
  std::string supervise_broker();
  Poco::JSON::Array check_crls();
  void spawn(const std::string& label, const std::vector<std::string>& args) {
    m_children.spawn(label, args, m_pin);
  }
  bool has_child(const std::string& label) const { return m_children.has(label); }

  Context& m_ctx;
  bool m_worker;  // one of several serves: no broker here
  std::string m_holder = process_holder_name();
  bool m_scheduling = false;  // holds the scheduler's lease
  hsm::Pin m_pin;
  std::unique_ptr<engine::Clock> m_clock;
  jobs::Scheduler m_scheduler;
  fs::path m_self;
  ServeChildren m_children{m_self, m_ctx.home_dir(), log};  // "job ID", "crl", "shares"
};

// "absent" (no broker set up), "running", "started", or "failed".
std::string Server::supervise_broker() {
  const broker::BrokerHome home(m_ctx.home_dir());
  if (!home.hosts_broker()) return "absent";  // none, or a worker's client side only
  broker::Supervisor sup(home, broker_binary(m_ctx.args()));
  if (sup.status(home.load()).running) return "running";
  try {
    const auto st = start_home_broker(m_ctx, false);
    log("broker was not running: started it (pid " + std::to_string(st.pid) + ")");
    return "started";
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kAlreadyExists) return "running";
    log("broker: could not start it: " + std::string(e.what()));
    return "failed";
  }
}

// The CRLs' freshness duty: a CRL past nextUpdate makes relying parties refuse every device of
// its CA. Signing needs the token, so a child does it, like a job's runner.
Poco::JSON::Array Server::check_crls() {
  Poco::JSON::Array out;
  // The system clock, not the scheduler's test clock: a CRL is checked by relying parties and the
  // broker against the real time, so one signed at an injected future time would be "not valid
  // yet" for all of them and cut off every device.
  const std::int64_t now = engine::SystemClock().now();
  bool sign = false;
  for (const auto& c : engine::crl_statuses(m_ctx.registry(), m_ctx.policy().crl, now)) {
    if (c.state == engine::CrlState::kNear || c.state == engine::CrlState::kStale) {
      log("warning: the CRL of CA " + c.ca_name + " is " +
          std::string(engine::crl_state_name(c.state)) + " (nextUpdate " +
          engine::iso8601(c.latest->next_update) + ")");
    }
    sign = sign || c.needs_signing();
    Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("ca", c.ca_name);
    o.set("state", std::string(engine::crl_state_name(c.state)));
    o.set("revoked_since", c.revoked_since);
    out.add(o);
  }
  if (sign && !has_child("crl") && !m_children.token_failed()) {
    spawn("crl", {"crl", "sign", "--due", "--wait"});
  }
  return out;
}

bool Server::hold_scheduler_lease() {
  std::string holder;
  try {
    // A holder of this host whose process is gone frees the lease now, not at its expiry.
    std::string current;
    // Leases are stamped with the registry's clock, so serves whose clocks differ agree.
    const std::int64_t registry_now = m_ctx.registry().registry_time();
    const bool held = m_ctx.registry().take_lease(kSchedulerLeaseName, m_holder, registry_now,
                                                  kSchedulerLease, "", &current);
    const bool stolen = !held && holder_is_gone(current) &&
                        m_ctx.registry().take_lease(kSchedulerLeaseName, m_holder, registry_now,
                                                    kSchedulerLease, current, &current);
    holder = current;
    if ((held || stolen) != m_scheduling) {
      log((held || stolen) ? "this serve schedules now (it holds the scheduler's lease)"
                           : "the scheduler's lease is " + current + "'s: another serve schedules");
    }
    m_scheduling = held || stolen;
  } catch (const Error& e) {
    log("the scheduler's lease: " + std::string(e.what()));
    m_scheduling = false;
  }
  return m_scheduling;
}

void Server::release_scheduler_lease() {
  if (!m_scheduling) return;
  try {
    m_ctx.registry().release_lease(kSchedulerLeaseName, m_holder);
  } catch (const Error& e) {
    log("releasing the scheduler's lease: " + std::string(e.what()));
  }
  m_scheduling = false;
}

Poco::JSON::Object Server::tick() {
  Poco::JSON::Object out(Poco::JSON_PRESERVE_KEY_ORDER);
  out.set("worker", m_holder);
  // Scheduling (CRL freshness, rollovers by policy, alerts) is one serve's at a time.
  const bool scheduling = hold_scheduler_lease();
  out.set("scheduling", scheduling);
  out.set("crls", scheduling ? check_crls() : Poco::JSON::Array());
  out.set("broker", m_worker ? std::string("absent") : supervise_broker());
  if (!m_worker && !scheduling) {
    // The CRLs are re-signed by the serve that schedules, perhaps a worker's on another machine,
    // into the registry: the broker's CRL file is refreshed from there by the serve beside it.
    try {
      const std::string line = update_broker(m_ctx, engine::SystemClock().now());
      if (line.find("reloaded") != std::string::npos) log(line);
    } catch (const Error& e) {
      log("broker: the CRL file: " + std::string(e.what()));
    }
  }

  jobs::Scheduler::Tick t;
  if (scheduling) {
    // Fenced: a serve that loses the lease mid-tick (frozen, its connection cut) while another
    // takes the scheduling over creates nothing more (the tick's writes are refused).
    const engine::FenceScope fence(m_ctx.registry(),
                                   engine::LeaseFence{kSchedulerLeaseName, m_holder});
    try {
      t = m_scheduler.tick();
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kHomeBusy) throw;
      // Lost mid-tick (frozen, its connection cut, and another serve took it): step back.
      log("the scheduler's lease was lost during the tick: " + std::string(e.what()));
      m_scheduling = false;
      out.set("scheduling", false);
    }
  }
  Poco::JSON::Array created, alerts, problems;
  for (const auto& id : t.jobs_created) {
    log("scheduled job " + id);
    created.add(id);
  }
  for (const auto& a : t.alerts) {
    log("alert: " + jobs::alert_text(a));
    Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("group", a.group);
    o.set("days", a.days);
    o.set("count", a.count);
    Poco::JSON::Array devices;
    for (const auto& d : a.devices) devices.add(d);
    o.set("devices", devices);
    alerts.add(o);
  }
  for (const auto& p : t.problems) {
    log("scheduler: " + p);
    problems.add(p);
  }
  out.set("jobs_created", created);
  out.set("alerts", alerts);
  out.set("problems", problems);

  Poco::JSON::Array spawned;
  const std::int64_t now = m_ctx.registry().registry_time();  // runners' heartbeats use it too
  for (const auto& job : m_ctx.registry().list_jobs(engine::ListPage{})) {
    if (g_stop != 0 || m_children.token_failed()) break;
    // A job stopped (aborted, canceled) by a runner that died before it ended: its open tasks
    // still need a runner to settle them (a device half-way through a switch finishes it).
    const bool stopping = jobs::job_is_stopping(job);
    if (job.state != "running" && !stopping) continue;
    const bool ours = has_child("job " + job.id);
    const bool free =
        job.runner.empty() || job.heartbeat_at < now - kLeaseStale || holder_is_gone(job.runner);
    if (stopping && !free) continue;  // one with no open task is run too: it ends at once
    // A worker helps a job another worker runs while some of its tasks wait for a runner.
    const bool help =
        !free && m_worker && jobs::can_share_job(job) &&
        jobs::wants_helper(job, m_ctx.registry().job_share(job.id, now - kLeaseStale));
    if (ours || (!free && !help)) continue;
    spawn("job " + job.id, {"job", "resume", job.id, "--if-running", "--wait"});
    spawned.add(job.id);
  }
  out.set("jobs_spawned", spawned);
  // Shares of shared batches (issue --share) waiting: one child claims and runs them in turn.
  bool shares = false;
  if (g_stop == 0 && !m_children.token_failed() && !has_child("shares") &&
      m_ctx.registry().claimable_batch_shares(now) > 0) {
    spawn("shares", {"batch", "work", "--wait"});
    shares = true;
  }
  out.set("shares_spawned", shares);
  return out;
}

// --http HOST:PORT: the HTTP service (http_service.hpp), its certificate made first when the
// home has none (a child `http init`, which needs the token).
std::unique_ptr<HttpService> start_http(Context& ctx, const hsm::Pin& pin) {
  const auto spec = ctx.args().get("http");
  if (!spec) return nullptr;
  if (ctx.args().has("once")) throw Error(ErrorCode::kUsage, "--http does not go with --once");
  const auto colon = spec->rfind(':');
  int port = -1;
  try {
    std::size_t used = 0;
    if (colon != std::string::npos) port = std::stoi(spec->substr(colon + 1), &used);
    if (colon == std::string::npos || used != spec->size() - colon - 1) port = -1;
  } catch (const std::exception&) {
    port = -1;
  }
  std::string host = colon == std::string::npos ? "" : spec->substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (host.empty() || port < 0 || port > 65535) {
    throw Error(ErrorCode::kUsage, "--http '" + *spec + "': expected HOST:PORT (127.0.0.1:8443)");
  }
  const HttpFiles files = http_files(ctx.home_dir());
  const fs::path self = fs::read_symlink("/proc/self/exe");
  if (!fs::exists(files.cert) || !fs::exists(files.key)) {
    ChildSpec init;
    init.program = self;
    init.args = {"--home", ctx.home_dir().string(), "http", "init", "--wait", "--json"};
    // The name clients use, and loopback for the machine's own tools (a wildcard bind: its
    // host name).
    std::vector<std::string> names = {host, "localhost", "127.0.0.1"};
    if (host == "0.0.0.0" || host == "::") names[0] = host_name();
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (std::find(names.begin(), names.begin() + static_cast<long>(i), names[i]) ==
          names.begin() + static_cast<long>(i)) {
        init.args.push_back("--host=" + names[i]);
      }
    }
    init.env.push_back(std::string("FLEETSIGN_PIN=") + pin.c_str());
    const ChildResult r = run_child(std::move(init));
    if (r.exit_status != 0) {
      throw Error(
          ErrorCode::kInvalidArgument,
          "--http: making the service's certificate (fleetsign http init) failed: " + r.err);
    }
    log("made the HTTP service's certificate (" + files.cert.string() + ")");
  }
  const std::size_t trusted = write_http_trust(ctx.registry(), files);
  HttpOptions o;
  o.host = host;
  o.port = static_cast<std::uint16_t>(port);
  o.home = ctx.home_dir();
  o.data_dir = path_option(ctx.args(), "http-data")
                   .value_or(fs::path(ctx.home_dir().lexically_normal().string() + "-http"));
  refuse_protected(o.data_dir);
  o.program = self;
  o.cert_file = files.cert;
  o.key_file = files.key;
  o.clients_ca_file = files.clients_ca;
  o.pin = &pin;
  o.wake = [] { g_wake = true; };
  if (auto t = ctx.args().get_int("http-threads")) {
    if (*t < 1 || *t > 256) throw Error(ErrorCode::kUsage, "--http-threads must be 1..256");
    o.threads = *t;
  }
  // A client that goes away mid-answer (a closed event stream, a cut download) is a write error on
  // its own connection, not a signal that ends the service; children get SIGPIPE back (SpawnAttr).
  ::signal(SIGPIPE, SIG_IGN);
  auto service = std::make_unique<HttpService>(o);
  log("HTTP service listening on https://" +
      (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
      std::to_string(service->port()) + " (client certificates from " + std::to_string(trusted) +
      " CA(s); data in " + o.data_dir.string() + ")");
  return service;
}

int run_serve(Context& ctx) {
  const int tick_s = ctx.args().get_int("tick").value_or(kDefaultTick);
  if (tick_s < 1 || tick_s > kMaxTick) {
    throw Error(ErrorCode::kUsage, "--tick must be 1.." + std::to_string(kMaxTick) + " seconds");
  }
  const bool once = ctx.args().has("once");
  auto clock = test_hook_clock(ctx.args());
  // The PIN now, as every command gets it (file, environment, prompt): a service without one
  // fails at its start, not at its first job weeks later.
  hsm::Pin pin = hsm::Pin::from_sources(path_option(ctx.args(), "pin-file"), "FLEETSIGN_PIN",
                                        "user PIN for the home's token: ");
  ctx.policy();  // a policy file error stops serve here
  // The test clock is the scheduler's alone: the children (job runners, the CRL signer) keep the
  // system clock, so they must not inherit FLEETSIGN_TEST_NOW either.
  ::unsetenv("FLEETSIGN_TEST_NOW");
  Server server(ctx, std::move(pin), std::move(clock), ctx.args().has("worker"));

  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  log(std::string("started: home ") + ctx.home_dir().string() +
      (once ? ", one tick" : ", a tick every " + std::to_string(tick_s) + " s"));

  const std::unique_ptr<HttpService> http = start_http(ctx, server.pin());
  while (g_stop == 0) {
    Poco::JSON::Object summary;
    try {
      summary = server.tick();
    } catch (const Error& e) {
      // The registry unreachable or busy for a moment (a PostgreSQL restart, a worker frozen
      // inside a write): a serve outlives it, and the next tick tries again.
      const bool transient =
          e.code() == ErrorCode::kRegistryError || e.code() == ErrorCode::kRegistryBusy;
      if (once || !transient) throw;
      log("tick: " + std::string(e.what()) + " (the next tick tries again)");
    }
    if (once) {
      auto renew = std::chrono::steady_clock::now() + kLeaseRenew;
      while (server.children().any() && g_stop == 0) {
        server.children().reap(false);
        if (server.scheduling() && std::chrono::steady_clock::now() >= renew) {
          renew = std::chrono::steady_clock::now() + kLeaseRenew;
          server.hold_scheduler_lease();  // its connection must not sit idle while held
        }
        std::this_thread::sleep_for(kPoll);
      }
      if (g_stop == 0 && ctx.json()) ctx.print_json(summary);
      break;
    }
    const auto next = std::chrono::steady_clock::now() + std::chrono::seconds(tick_s);
    auto renew = std::chrono::steady_clock::now() + kLeaseRenew;
    while (g_stop == 0 && !g_wake.exchange(false) && std::chrono::steady_clock::now() < next) {
      server.children().reap(false);
      if (std::chrono::steady_clock::now() >= renew) {
        renew = std::chrono::steady_clock::now() + kLeaseRenew;
        // Renewed while held; taken when another serve's lease ended (it died): tick now.
        const bool before = server.scheduling();
        if (server.hold_scheduler_lease() && !before) g_wake = true;
      }
      if (http) http->refresh_trust();
      std::this_thread::sleep_for(kPoll);
    }
  }
  if (g_stop != 0) {
    log(ctx.args().has("worker") ? "stopping: no new jobs or shares"
                                 : "stopping: no new jobs; the broker keeps running");
  }
  server.children().stop_all();
  server.release_scheduler_lease();
  log("stopped");
  // A runner the token refused (a wrong or locked PIN) is serve's failure too: exit as it did.
  return server.children().token_failed() ? exit_status_for(ErrorCode::kPinIncorrect) : 0;
}

}  // namespace

void add_serve_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"serve"},
      "[--tick S] [--once] [--http HOST:PORT [--http-data DIR]] [--pin-file FILE] [--mosquitto "
      "PATH] [--json]",
      "run the fleet: keep the broker up, run the jobs, start rollovers and raise expiry alerts "
      "by policy (the policy's \"rollover\" section), keep every CA's CRL fresh (\"crl\")",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "tick", "S", "seconds between ticks (60)");
        add_flag(s, "once", "one tick, wait for the jobs it started, exit (cron, tests)");
        add_flag(s, "worker",
                 "one of several serves over one PostgreSQL registry (worker clone): no broker "
                 "here; jobs and batch shares are claimed with leases, and one serve at a time "
                 "schedules");
        add_option(s, "pin-file", "FILE", "user PIN file (else FLEETSIGN_PIN or a prompt)");
        add_option(s, "mosquitto", "PATH",
                   "mosquitto binary (default $FLEETSIGN_MOSQUITTO, else /usr/sbin/mosquitto)");
        add_option(s, "plugin", "PATH", "fleetsign-broker-plugin.so (when the broker starts)");
        add_option(s, "now", "UNIX",
                   "test hook: the scheduler's clock stands at this unix time (also "
                   "FLEETSIGN_TEST_NOW); leases and the runners keep the system clock");
        add_flag(s, "json", "--once: print the tick's summary as JSON");
        add_option(s, "http", "HOST:PORT",
                   "also serve the HTTP API, EST, metrics and public CRLs there (TLS; operators "
                   "authenticate with `fleetsign operator add` certificates)");
        add_option(s, "http-data", "DIR",
                   "the HTTP service's uploads and batch outputs (default HOME-http)");
        add_option(s, "http-threads", "N", "requests answered at once (16)");
      },
      run_serve});
}

}  // namespace fleetsign::cli
