// `rollover plan|start|ca|breach`: device rollovers as persisted jobs (jobs/rollover.hpp); the
// `job …` commands and the closing report are in cmd_job.cpp.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "cli.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/revocation.hpp"
#include "fleetsign/jobs/rollover.hpp"
#include "job_report.hpp"
#include "table.hpp"

namespace fleetsign::cli {

namespace {

namespace fs = std::filesystem;

constexpr std::size_t kDeviceListLimit = 64 * 1024 * 1024;  // --devices FILE

void add_selection_options(Poco::Util::OptionSet& s) {
  add_option(s, "group", "G", "devices whose CA belongs to enrollment group G");
  add_option(s, "lot", "L", "devices of manufacturing lot L");
  add_option(s, "expiring-within", "D",
             "devices whose certificate expires within D (30d, 12h, 90m, 45s; a bare number is "
             "days)");
  add_option(s, "devices", "FILE", "device IDs, one per line ('#' comments)");
  add_option(s, "device", "ID", "one device (repeatable)", true);
  add_option(s, "ca", "NAME", "sign the new certificates with this CA (default: the device's)");
}

std::vector<std::string> read_device_list(const Context& ctx, const fs::path& file,
                                          const policy::Policy& policy) {
  const std::string text = read_bounded(file.string(), kDeviceListLimit, "device list");
  std::vector<std::string> ids;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
      line.pop_back();
    }
    const auto start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    line.erase(0, start);
    auto id = engine::DeviceId::check(policy, line);
    if (!id) {
      throw Error(ErrorCode::kInvalidArgument,
                  file.string() + ":" + std::to_string(n) + ": " + id.error().message);
    }
    ids.push_back(id.value().str());
  }
  (void)ctx;
  return ids;
}

}  // namespace

// The options of a job run (rollover start and ca): pace, thresholds, timeouts, the PIN, output.
void add_job_options(Poco::Util::OptionSet& s, const char* deadline_help) {
  add_option(s, "rate", "N[/min|/s]", "devices started per minute (or per second) at most");
  add_option(s, "exponential", "BASE,FACTOR,EVERY",
             "start at BASE/min, multiply by FACTOR after every EVERY devices done");
  add_option(s, "wave", "N", "devices per wave; a wave starts when the last one settled");
  add_option(s, "abort-if-failed", "PCT", "stop the job when this share of settled devices failed");
  add_option(s, "min-executed", "N", "… once at least N devices settled");
  add_option(s, "step-timeout", "S", "seconds per method call and reconnection (30)");
  add_option(s, "retries", "N", "further tries of a device that failed a step (1)");
  add_option(s, "offline-retry", "S", "retry offline devices every S seconds (30)");
  add_option(s, "deadline", "D", deadline_help);
  add_option(s, "in-flight", "N", "devices in progress at once (256)");
  add_option(s, "pin-file", "FILE", "user PIN file (else FLEETSIGN_PIN or a prompt)");
  add_option(s, "confirm", "session|method",
             "confirm a reconnection from the broker's session records (default with the broker) "
             "or by asking the device with getCertificate (always with IoT Hub)");
  add_flag(s, "no-run", "record the job only (run it with `job resume` or `serve`)");
  add_flag(s, "json", "print the closing report as JSON");
}

jobs::RolloverParams params_from(Context& ctx, bool selection) {
  const Args& a = ctx.args();
  if (auto how = a.get("confirm"); how && *how != "session" && *how != "method") {
    throw Error(ErrorCode::kUsage, "--confirm must be session or method, got '" + *how + "'");
  }
  jobs::RolloverParams p;
  if (!selection) {
    // A CA rollover selects the group's devices itself.
  } else {
    p.selection.group = a.get("group").value_or("");
    p.selection.lot = a.get("lot").value_or("");
    if (auto d = a.get("expiring-within")) {
      // A bare number is days, as in `expiry report --within DAYS`.
      const bool days = !d->empty() && d->find_first_not_of("0123456789") == std::string::npos;
      p.selection.expiring_within_s =
          jobs::parse_duration(days ? *d + "d" : *d, "--expiring-within");
    }
    if (auto f = path_option(a, "devices")) {
      p.selection.devices = read_device_list(ctx, *f, ctx.policy());
      if (p.selection.devices.empty()) {
        throw Error(ErrorCode::kInvalidArgument,
                    f->string() + ": lists no device (one ID per line; '#' starts a comment)");
      }
    }
    if (a.has("device")) {
      for (const auto& d : a.options.at("device")) {
        auto id = engine::DeviceId::check(ctx.policy(), d);
        if (!id) throw Error(ErrorCode::kInvalidArgument, "--device: " + id.error().message);
        p.selection.devices.push_back(id.value().str());
      }
    }
    p.ca = a.get("ca").value_or("");
  }
  auto bounded = [&](const char* name, int lo, int hi, int fallback) {
    const auto v = a.get_int(name);
    if (!v) return fallback;
    if (*v < lo || *v > hi) {
      throw Error(ErrorCode::kUsage, std::string("--") + name + " must be in " +
                                         std::to_string(lo) + ".." + std::to_string(hi));
    }
    return *v;
  };
  if (auto r = a.get("rate")) {
    // N or N/min (devices per minute), or N/s.
    std::string_view v = *r;
    long long scale = 1;
    if (v.ends_with("/min")) {
      v.remove_suffix(4);
    } else if (v.ends_with("/s")) {
      v.remove_suffix(2);
      scale = 60;
    }
    long long n = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc{} || end != v.data() + v.size() || v.empty() || n < 1 ||
        n > 10'000'000 / scale) {
      throw Error(ErrorCode::kUsage,
                  "--rate N[/min|/s]: devices per minute (or per second), 1 to 10,000,000 a "
                  "minute; got '" +
                      *r + "'");
    }
    p.rollout.per_minute = static_cast<int>(n * scale);
  }
  if (auto e = a.get("exponential")) {
    double base = 0, factor = 0;
    int every = 0;
    char tail = 0;
    // Written so that NaN fails too.
    if (std::sscanf(e->c_str(), "%lf,%lf,%d%c", &base, &factor, &every, &tail) != 3 ||
        !(base >= 1 && base <= 1e7) || !(factor >= 1 && factor <= 5) || every < 1) {
      throw Error(ErrorCode::kUsage,
                  "--exponential BASE,FACTOR,EVERY: BASE ≥ 1 per minute, FACTOR in 1..5, EVERY "
                  "≥ 1 devices; got '" +
                      *e + "'");
    }
    p.rollout.base_per_minute = static_cast<int>(base);
    p.rollout.factor = factor;
    p.rollout.every = every;
  }
  p.wave = bounded("wave", 1, 10'000'000, 0);
  if (auto pct = a.get("abort-if-failed")) {
    char* end = nullptr;
    p.abort_percent = std::strtod(pct->c_str(), &end);
    if (end == pct->c_str() || *end != '\0' || !(p.abort_percent > 0) || p.abort_percent > 100) {
      throw Error(ErrorCode::kUsage, "--abort-if-failed must be a percentage in (0, 100]");
    }
  }
  p.min_executed = bounded("min-executed", 1, 10'000'000, 0);
  p.step_timeout_s = bounded("step-timeout", 1, jobs::kMaxTimeoutSeconds, 30);
  p.retries = bounded("retries", 0, 100, 1);
  p.offline_retry_s = bounded("offline-retry", 1, 86400, 30);
  p.in_flight = bounded("in-flight", 1, 1000, 256);
  p.confirm = a.get("confirm").value_or("session");
  if (auto d = a.get("deadline")) {
    p.deadline = jobs::parse_deadline(*d, ctx.clock().now(), "--deadline");
  }
  if (a.has("rate") && a.has("exponential")) {
    throw Error(ErrorCode::kUsage, "--rate and --exponential are two rollouts: choose one");
  }
  return p;
}

namespace {

void print_plan(Context& ctx, const jobs::RolloverPlan& plan, const jobs::RolloverParams& params) {
  if (ctx.json()) {
    Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("devices", static_cast<std::int64_t>(plan.devices.size()) - plan.conflicts);
    o.set("conflicts", plan.conflicts);
    o.set("waves", plan.waves);
    o.set("perGroup", counts_json(plan.per_group));
    o.set("perLot", counts_json(plan.per_lot));
    o.set("perCa", counts_json(plan.per_ca));
    o.set("slots", counts_json(plan.per_slot));
    Poco::JSON::Array warnings;
    for (const auto& w : plan.warnings) warnings.add(w);
    o.set("warnings", warnings);
    Poco::JSON::Array conflicts;
    for (const auto& d : plan.devices) {
      if (d.conflict.empty()) continue;
      Poco::JSON::Object c(Poco::JSON_PRESERVE_KEY_ORDER);
      c.set("device", d.device_id);
      c.set("reason", d.conflict);
      conflicts.add(c);
    }
    o.set("conflictList", conflicts);
    ctx.print_json(o);
    return;
  }
  const std::int64_t runnable = static_cast<std::int64_t>(plan.devices.size()) - plan.conflicts;
  std::printf("%lld device(s) would be rolled in %lld wave(s); %lld conflict(s)\n",
              static_cast<long long>(runnable), static_cast<long long>(plan.waves),
              static_cast<long long>(plan.conflicts));
  auto table = [](const char* what, const std::map<std::string, std::int64_t>& m) {
    if (m.empty()) return;
    Table t({what, "devices"});
    for (const auto& [k, v] : m) t.add({k, std::to_string(v)});
    t.print(stdout, "  ");
  };
  table("group", plan.per_group);
  table("lot", plan.per_lot);
  table("signing CA", plan.per_ca);
  table("new slot", plan.per_slot);
  for (const auto& w : plan.warnings) std::printf("conflict: %s\n", w.c_str());
  int shown = 0;
  for (const auto& d : plan.devices) {
    if (d.conflict.empty()) continue;
    if (++shown > 20) {
      std::printf("  … %lld more (see --json)\n", static_cast<long long>(plan.conflicts - 20));
      break;
    }
    std::printf("  %s: %s\n", d.device_id.c_str(), d.conflict.c_str());
  }
  (void)params;
}

int run_plan(Context& ctx) {
  const auto params = params_from(ctx);
  print_plan(ctx, jobs::plan_rollover(ctx.registry(), ctx.policy(), ctx.clock(), params), params);
  return 0;
}

int run_start(Context& ctx) {
  const auto params = params_from(ctx);
  const auto plan = jobs::plan_rollover(ctx.registry(), ctx.policy(), ctx.clock(), params);
  if (plan.devices.size() == static_cast<std::size_t>(plan.conflicts)) {
    // The plan shows why (conflicts) on a terminal; with --json the error is the one document.
    if (!ctx.json()) print_plan(ctx, plan, params);
    throw Error(ErrorCode::kInvalidArgument,
                "no device to roll: the selection is empty or every "
                "device has a conflict");
  }
  const std::string id = jobs::create_job(ctx.registry(), ctx.clock(), params, plan);
  if (!ctx.json()) {
    std::fprintf(stderr, "job %s: %zu device(s)\n", id.c_str(),
                 plan.devices.size() - static_cast<std::size_t>(plan.conflicts));
  }
  if (ctx.args().has("no-run")) {
    if (ctx.json()) {
      Poco::JSON::Object o;
      o.set("id", id);
      ctx.print_json(o);
    } else {
      std::printf("%s\n", id.c_str());
    }
    return 0;
  }
  return run_job_in_foreground(ctx, id);
}

// A breach roll run again: the open job as it is, when this command is not to run it (--no-run,
// not running: paused stays paused, or held by a live runner such as serve's). True when printed.
bool continued_elsewhere(Context& ctx, const jobs::BreachRollStart& started) {
  const auto job = ctx.registry().find_job(started.job_id);
  const bool held = job && !job->runner.empty() &&
                    job->heartbeat_at >= ctx.registry().registry_time() - jobs::kJobHeartbeatStale;
  if (!ctx.args().has("no-run") && job && job->state == "running" && !held) return false;
  const std::string state = job ? job->state : std::string("unknown");
  if (ctx.json()) {
    Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("id", started.job_id);
    o.set("state", state);
    o.set("continued", true);
    o.set("serial", started.serial);
    if (!started.also_revoked.empty()) o.set("alsoRevoked", started.also_revoked);
    ctx.print_json(o);
  } else {
    std::printf("job %s: %s%s%s\n", started.job_id.c_str(), state.c_str(), held ? ", run by " : "",
                held ? job->runner.c_str() : "");
  }
  return true;
}

int run_breach(Context& ctx) {
  const Args& a = ctx.args();
  const std::string device = a.require("device");
  auto params = params_from(ctx, false);
  if (!a.has("deadline")) params.deadline = ctx.clock().now() + 300;
  // Hex, as `revoke --serial` takes it (0x and ':' allowed); anything else names the option.
  std::string serial;
  if (auto s = a.get("serial")) serial = jobs::parse_selector(ctx.policy(), "serial", {*s}).value;
  const auto started = jobs::start_breach_roll(ctx.registry(), ctx.clock(), device, serial, params);
  // The revocations go into their issuers' CRLs at once (and into the broker's CRL file).
  if (const std::string line = refresh_behind_crls(ctx); !ctx.json() && !line.empty()) {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  if (!ctx.json() && !started.also_revoked.empty()) {
    std::fprintf(stderr, "certificate 0x%s of %s revoked (keyCompromise) as well\n",
                 started.also_revoked.c_str(), device.c_str());
  }
  if (!ctx.json()) {
    std::fprintf(
        stderr,
        "certificate 0x%s of %s revoked (keyCompromise) and out of its %s slot: the "
        "broker drops a session using it within a second\n%s; job %s%s\n",
        started.serial.c_str(), device.c_str(), started.slot.c_str(),
        started.other_certificate
            ? "the device holds another valid certificate: it is rolled as soon as it "
              "connects with it"
            : "the device holds no other valid certificate: it cannot connect until it "
              "is re-provisioned",
        started.job_id.c_str(),
        started.continued ? " (the device's breach roll recorded before: it continues)" : "");
  }
  if (!ctx.json() && !started.held_by.empty()) {
    std::fprintf(stderr,
                 "%s is in job %s (%s), which rotates it onto a new key: this breach roll leaves "
                 "the rotation to that job%s\n",
                 device.c_str(), started.held_by.c_str(), started.held_by_state.c_str(),
                 started.held_by_state == "paused" ? " (paused: `job resume` it)" : "");
  }
  if (started.continued && continued_elsewhere(ctx, started)) return 0;
  if (a.has("no-run")) return print_state(ctx, started.job_id, "running");
  return run_job_in_foreground(ctx, started.job_id);
}

int run_ca_rollover(Context& ctx) {
  const Args& a = ctx.args();
  jobs::CaRolloverRequest request;
  request.group = a.require("group");
  request.new_name = a.get("name").value_or("");
  request.subject = a.get("subject").value_or("");
  if (auto d = a.get_int("days")) {
    if (*d < 1 || *d > 36500) throw Error(ErrorCode::kUsage, "--days must be in 1..36500");
    request.days = *d;
  }
  if (auto k = a.get("key")) {
    auto alg = policy::parse_key_algorithm(*k);
    if (!alg) throw Error(ErrorCode::kUsage, "--key: unknown key algorithm '" + *k + "'");
    request.key = *alg;
  }
  request.params = params_from(ctx, false);
  ctx.token();  // the new CA's key is made in the token
  const auto started =
      jobs::start_ca_rollover(ctx.registry(), ctx.cas(), ctx.policy(), ctx.clock(), request);
  if (!ctx.json()) {
    std::fprintf(stderr, "CA rollover of group %s: %s %s in the %s slot (both trusted); job %s\n",
                 request.group.c_str(), started.new_ca.c_str(),
                 started.ca_created ? "created" : "(an existing CA)", started.new_slot.c_str(),
                 started.job_id.c_str());
  }
  // The new CA's first CRL joins the broker's CRL file before any device moves onto it.
  const std::string crl_line = refresh_crls_and_broker(ctx, {});
  if (!ctx.json() && !crl_line.empty()) std::fprintf(stderr, "%s\n", crl_line.c_str());
  if (a.has("no-run")) return print_state(ctx, started.job_id, "running");
  return run_job_in_foreground(ctx, started.job_id);
}

}  // namespace

void add_rollover_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"rollover", "plan"},
      "[--group G] [--lot L] [--expiring-within D] [--devices FILE] [--device ID]… [--ca NAME] "
      "[--wave N] [--json]",
      "what a rollover would do: devices per group, lot and CA, waves, target slots, conflicts "
      "(changes nothing)",
      [](Poco::Util::OptionSet& s) {
        add_selection_options(s);
        add_option(s, "wave", "N", "devices per wave");
        add_flag(s, "json", "print the plan as JSON");
      },
      run_plan});
  commands.push_back(Command{
      {"rollover", "start"},
      "[selection as in plan] [--rate N | --exponential BASE,FACTOR,EVERY] [--wave N] "
      "[--abort-if-failed PCT --min-executed N] [--step-timeout S] [--retries N] [--deadline D] "
      "[--offline-retry S] [--in-flight N] [--no-run] [--json]",
      "start a device rollover job and run it here (new key on the device, sign, install, "
      "reprovision, confirm, retire); exit 13 when devices were left behind",
      [](Poco::Util::OptionSet& s) {
        add_selection_options(s);
        add_job_options(s, "stop retrying after D (2h, 7d, or an RFC 3339 time; default 24h)");
      },
      run_start});
  commands.push_back(Command{
      {"rollover", "breach"},
      "--device ID [--serial S] [--deadline D] [--offline-retry S] [--no-run] [--json]",
      "breach roll of one certificate: revoked and out of its slot at once (no overlap), then "
      "the device rolled onto a new one when it is reachable on another valid certificate",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "device", "ID", "the device whose certificate is compromised");
        add_option(s, "serial", "S", "the compromised certificate (default: the one in use)");
        add_option(s, "deadline", "D", "stop waiting for the device after D (default 5m)");
        add_option(s, "offline-retry", "S", "retry an offline device every S seconds (30)");
        add_option(s, "step-timeout", "S", "seconds per method call and reconnection (30)");
        add_option(s, "retries", "N", "further tries of a failed step (1)");
        add_option(s, "pin-file", "FILE", "user PIN file (else FLEETSIGN_PIN or a prompt)");
        add_flag(s, "no-run", "record the job only (run it with `job resume` or `serve`)");
        add_flag(s, "json", "print the closing report as JSON");
      },
      run_breach});
  commands.push_back(Command{
      {"rollover", "ca"},
      "--group G [--name NEW] [--subject DN] [--days D] [--key ALG] [job options as in start] "
      "[--no-run] [--json]",
      "CA rollover: a new intermediate (key made in the token) in the group's free slot, every "
      "device of the group rolled under it, then it becomes the primary and the old one leaves",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "group", "G", "the enrollment group whose intermediate is replaced");
        add_option(s, "name", "NEW", "the new CA's name (default {old}-r{YYYYMMDD})");
        add_option(s, "subject", "DN", "its subject (default: the old one's, CN dated)");
        add_option(s, "days", "D", "its validity in days (default: the policy's)");
        add_option(s, "key", "ALG", "its key (ec-p256, ec-p384, rsa-2048, …)");
        add_job_options(
            s,
            "the swap happens then at the latest (D from now, or an RFC 3339 time; default 24h)");
      },
      run_ca_rollover});
  add_job_commands(commands);
}

}  // namespace fleetsign::cli
