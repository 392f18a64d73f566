// `incident start`: an incident run as a job (jobs/incident.hpp); `incident list`.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <cstdio>
#include <ctime>

#include "cli.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/incident.hpp"
#include "fleetsign/jobs/revocation.hpp"
#include "job_report.hpp"
#include "paging.hpp"
#include "table.hpp"

namespace fleetsign::cli {

namespace {

jobs::IncidentRequest request_from(Context& ctx) {
  const Args& a = ctx.args();
  jobs::IncidentRequest r;
  int scopes = 0;
  for (const char* kind : {"ca", "lot", "site"}) {
    if (auto v = a.get(kind)) {
      r.scope_kind = kind;
      r.scope = *v;
      ++scopes;
    }
  }
  if (scopes != 1) throw Error(ErrorCode::kUsage, "name exactly one of --ca, --lot, --site");
  r.reason = a.require("reason");
  r.replacement_ca = a.get("replacement-ca").value_or("");
  if (!r.replacement_ca.empty() && r.scope_kind != "ca") {
    throw Error(ErrorCode::kUsage, "--replacement-ca goes with --ca");
  }
  if (auto t = a.get("compromised-at")) r.compromised_at = jobs::parse_time(*t, "--compromised-at");
  if (auto k = a.get("key")) {
    auto alg = policy::parse_key_algorithm(*k);
    if (!alg) throw Error(ErrorCode::kUsage, "--key: unknown key algorithm '" + *k + "'");
    r.key = *alg;
  }
  r.params = params_from(ctx, false);
  return r;
}

void print_plan(Context& ctx, const jobs::IncidentPlan& plan) {
  if (ctx.json()) {
    Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("scopeKind", plan.scope_kind);
    o.set("scope", plan.scope);
    o.set("reason", plan.reason);
    o.set("compromisedAt", plan.compromised_at);
    o.set("group", plan.group);
    o.set("slot", plan.slot);
    o.set("replacementCa", plan.replacement_ca);
    o.set("replacementExists", plan.replacement_exists);
    Poco::JSON::Array replacements;
    for (const auto& c : plan.replacements) {
      Poco::JSON::Object r(Poco::JSON_PRESERVE_KEY_ORDER);
      r.set("ca", c.ca);
      r.set("replacement", c.replacement);
      r.set("issuer", c.issuer);
      r.set("exists", c.exists);
      Poco::JSON::Array held;
      for (const auto& s : plan.slots) {
        if (s.ca == c.ca) held.add(s.group + "/" + s.slot);
      }
      r.set("slots", held);
      replacements.add(r);
    }
    o.set("replacements", replacements);
    o.set("devices", static_cast<std::int64_t>(plan.devices.size()));
    o.set("rotate", plan.rotate);
    o.set("factory", plan.factory);
    o.set("conflicts", plan.conflicts);
    o.set("connected", plan.connected);
    o.set("certificates", plan.certificates);
    o.set("continues", plan.continues);
    o.set("perLot", counts_json(plan.per_lot));
    o.set("perGroup", counts_json(plan.per_group));
    Poco::JSON::Array list;
    for (const auto& d : plan.devices) {
      if (d.action == "rotate") continue;
      Poco::JSON::Object c(Poco::JSON_PRESERVE_KEY_ORDER);
      c.set("device", d.device_id);
      c.set("action", d.action);
      c.set("reason", d.why);
      list.add(c);
    }
    o.set("notRotated", list);
    ctx.print_json(o);
    return;
  }
  std::printf("incident for %s '%s' (%s), compromised at %s\n", plan.scope_kind.c_str(),
              plan.scope.c_str(), plan.reason.c_str(),
              engine::iso8601(plan.compromised_at).c_str());
  if (plan.scope_kind == "ca") {
    std::printf(
        "  CA '%s' is revoked%s; replacement '%s' (%s)\n", plan.scope.c_str(),
        plan.group.empty()
            ? " (it sits in no group slot)"
            : (" and leaves the " + plan.slot + " slot of group '" + plan.group + "'").c_str(),
        plan.replacement_ca.c_str(), plan.replacement_exists ? "exists" : "made in the token");
    for (std::size_t i = 1; i < plan.replacements.size(); ++i) {
      const auto& c = plan.replacements[i];
      std::string held;
      for (const auto& s : plan.slots) {
        if (s.ca == c.ca) held += ", takes the " + s.slot + " slot of group '" + s.group + "'";
      }
      std::printf(
          "  CA '%s' below it is revoked at the close; replacement '%s' under '%s' (%s)%s\n",
          c.ca.c_str(), c.replacement.c_str(), c.issuer.c_str(),
          c.exists ? "exists" : "made in the token", held.c_str());
    }
  }
  std::printf(
      "  %zu device(s), %lld connected now: %lld rotated, %lld to factory re-provisioning, %lld "
      "conflict(s); %lld certificate(s) end revoked\n",
      plan.devices.size(), static_cast<long long>(plan.connected),
      static_cast<long long>(plan.rotate), static_cast<long long>(plan.factory),
      static_cast<long long>(plan.conflicts), static_cast<long long>(plan.certificates));
  if (!plan.continues.empty()) {
    std::printf(
        "  job %s, unfinished, continues this incident with its own tasks (fleetsign job show "
        "%s); the devices above are what a new job would take\n",
        plan.continues.c_str(), plan.continues.c_str());
  }
  Table t({"lot", "devices"});
  for (const auto& [k, v] : plan.per_lot) t.add({k, std::to_string(v)});
  t.print(stdout, "  ");
  int shown = 0;
  for (const auto& d : plan.devices) {
    if (d.action == "rotate") continue;
    if (++shown > 20) {
      std::printf("  … (see --json)\n");
      break;
    }
    std::printf("  %s: %s\n", d.device_id.c_str(), d.why.c_str());
  }
}

int run_incident_start(Context& ctx) {
  const Args& a = ctx.args();
  const auto request = request_from(ctx);
  if (a.has("dry-run")) {
    print_plan(ctx, jobs::plan_incident(ctx.registry(), ctx.policy(), ctx.clock(), request));
    return 0;
  }
  if (!a.has("yes")) {
    throw Error(ErrorCode::kUsage,
                "an incident revokes and cuts off at once: see it with --dry-run, then run it "
                "with --yes");
  }
  ctx.token();  // a replacement's key is made in the token
  const auto started =
      jobs::start_incident(ctx.registry(), ctx.cas(), ctx.policy(), ctx.clock(), request);
  if (!ctx.json()) {
    std::fprintf(stderr, "incident %lld %s for %s '%s'; job %s\n",
                 static_cast<long long>(started.incident_id),
                 started.resumed ? "continued" : "opened", request.scope_kind.c_str(),
                 request.scope.c_str(), started.job_id.c_str());
  }
  if (a.has("no-run")) return print_state(ctx, started.job_id, "running");
  return run_job_in_foreground(ctx, started.job_id);
}

int run_incident_list(Context& ctx) {
  const auto page = page_args(ctx.args(), 0);
  const auto key = [](const engine::Incident& i) { return std::to_string(i.id); };
  auto incidents = page_in_memory(ctx.registry().list_incidents(false), page, key, "incident");
  const auto next = cut_page(incidents, page, key);
  if (ctx.json()) {
    Poco::JSON::Array arr;
    for (const auto& i : incidents) {
      Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
      o.set("id", i.id);
      o.set("scopeKind", i.scope_kind);
      o.set("scope", i.scope);
      o.set("reason", i.reason);
      o.set("compromisedAt", i.compromised_at);
      o.set("openedAt", i.opened_at);
      o.set("closedAt", i.closed_at);
      o.set("caRevokedAt", i.ca_revoked_at);
      o.set("job", i.job_id);
      arr.add(o);
    }
    Poco::JSON::Object o;
    o.set("incidents", arr);
    set_next(o, next);
    ctx.print_json(o);
    return 0;
  }
  Table t({"id", "scope", "reason", "compromised", "opened", "closed", "job"});
  for (const auto& i : incidents) {
    t.add({std::to_string(i.id), i.scope_kind + " " + i.scope, i.reason,
           engine::iso8601(i.compromised_at), engine::iso8601(i.opened_at),
           i.closed_at == 0 ? "open" : engine::iso8601(i.closed_at), i.job_id});
  }
  t.print(stdout, "");
  print_next_hint(next);
  return 0;
}

}  // namespace

void add_incident_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"incident", "start"},
      "(--ca NAME | --lot L | --site S) --reason cACompromise|keyCompromise|… "
      "[--replacement-ca NEW] [--compromised-at T] --dry-run | --yes [job options as in rollover "
      "start] [--no-run] [--json]",
      "incident run: revoke and cut off at once (devices under the scope come back pinned, "
      "rotation only), a replacement intermediate, every good device rotated onto it, then the "
      "rest revoked and a report of who is back; --dry-run shows the plan and changes nothing",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "ca", "NAME", "the intermediate whose key is compromised");
        add_option(s, "lot", "L", "a lot whose device certificates are suspect");
        add_option(s, "site", "S", "a site whose device certificates are suspect");
        add_option(s, "reason", "R",
                   "cACompromise (a CA), keyCompromise (the devices' own keys: factory "
                   "re-provisioning), affiliationChanged, superseded, …");
        add_option(s, "replacement-ca", "NEW", "use this CA instead of making one");
        add_option(s, "compromised-at", "T",
                   "when the compromise began (RFC 3339, a date or unix seconds; default: the "
                   "end of this second, so every certificate recorded so far is pinned)");
        add_option(s, "key", "ALG", "the replacement's key (ec-p256, ec-p384, …)");
        add_flag(s, "dry-run", "print the plan and change nothing");
        add_flag(s, "yes", "run it (it revokes at once)");
        add_job_options(
            s, "stop retrying offline devices after D (2h, 7d, or an RFC 3339 time; default 24h)");
      },
      run_incident_start});
  commands.push_back(Command{{"incident", "list"},
                             "[--limit N] [--after ID] [--json]",
                             "incidents, open and closed, oldest first",
                             [](Poco::Util::OptionSet& s) {
                               add_paging_options(s, "default: all", "ID");
                               add_flag(s, "json", "print them as JSON");
                             },
                             run_incident_list});
}

}  // namespace fleetsign::cli
