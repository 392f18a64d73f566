// fleet overview, audit: the registry read as the dashboard shows it (aligned tables, or --json,
// the shape /api/v1/fleet and /api/v1/audit answer with).
#include <cstdio>

#include "cli.hpp"
#include "fleetsign/engine/expiry.hpp"
#include "fleetsign/engine/overview.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "table.hpp"

namespace fleetsign::cli {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

constexpr int kDefaultWeeks = 52;
constexpr std::int64_t kMaxAuditPage = 1000;

std::string when(std::int64_t t) { return t > 0 ? engine::iso8601(t) : ""; }

Object overview_json(const engine::FleetOverview& f, const std::vector<int>& thresholds) {
  Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("as_of", engine::iso8601(f.now));
  o.set("weeks", f.weeks);
  Array th;
  for (const int d : thresholds) th.add(d);
  o.set("thresholds", th);
  o.set("devices", f.devices);
  o.set("connected", f.connected);
  Array groups;
  for (const auto& g : f.groups) {
    Object go(Poco::JSON_PRESERVE_KEY_ORDER);
    go.set("group", g.group);
    go.set("enabled", g.enabled);
    go.set("primary_ca", g.primary_ca);
    go.set("secondary_ca", g.secondary_ca);
    go.set("devices", g.devices);
    go.set("connected", g.connected);
    go.set("primary_certs", g.primary_certs);
    go.set("secondary_certs", g.secondary_certs);
    go.set("expired", g.expired);
    Array weeks;
    for (const auto n : g.weeks) weeks.add(n);
    go.set("weeks", weeks);
    groups.add(go);
  }
  o.set("groups", groups);
  Array cas;
  for (const auto& c : f.cas) {
    Object co(Poco::JSON_PRESERVE_KEY_ORDER);
    co.set("name", c.ca.name);
    co.set("parent", c.ca.parent);
    co.set("subject", c.ca.subject);
    co.set("key_type", c.ca.key_type);
    co.set("not_after", engine::iso8601(c.ca.not_after));
    co.set("verified", c.ca.verified);
    co.set("revoked", c.ca.revoked_at > 0);
    co.set("group", c.group);
    co.set("slot", c.slot);
    co.set("devices", c.devices);
    co.set("crl_number", c.crl_number);
    co.set("crl_next_update", when(c.crl_next_update));
    cas.add(co);
  }
  o.set("cas", cas);
  Array back;
  for (const auto& n : f.not_back) {
    Object no(Poco::JSON_PRESERVE_KEY_ORDER);
    no.set("job", n.job);
    no.set("kind", n.kind);
    no.set("device", n.device);
    no.set("state", n.state);
    no.set("step", n.step);
    back.add(no);
  }
  o.set("not_back", back);
  o.set("not_back_total", f.not_back_total);
  return o;
}

int run_overview(Context& ctx) {
  const int weeks = ctx.args().get_int("weeks").value_or(kDefaultWeeks);
  if (weeks < 1 || weeks > 520) throw Error(ErrorCode::kUsage, "--weeks must be 1..520");
  const auto f = engine::fleet_overview(ctx.registry(), ctx.clock().now(), weeks);
  if (ctx.json()) {
    ctx.print_json(overview_json(f, ctx.policy().alert_days));
    return 0;
  }
  std::printf("%lld devices, %lld connected, as of %s\n", static_cast<long long>(f.devices),
              static_cast<long long>(f.connected), engine::iso8601(f.now).c_str());
  Table groups({"GROUP", "DEVICES", "CONNECTED", "PRIMARY", "SECONDARY", "EXPIRED", "4 WEEKS"});
  for (const auto& g : f.groups) {
    std::int64_t soon = 0;
    for (std::size_t i = 0; i < g.weeks.size() && i < 4; ++i) soon += g.weeks[i];
    groups.add({g.group, std::to_string(g.devices), std::to_string(g.connected),
                std::to_string(g.primary_certs), std::to_string(g.secondary_certs),
                std::to_string(g.expired), std::to_string(soon)});
  }
  groups.print();
  Table cas({"CA", "PARENT", "GROUP", "SLOT", "NOT AFTER", "POP", "DEVICES", "CRL NEXT UPDATE"});
  for (const auto& c : f.cas) {
    cas.add({c.ca.name, c.ca.parent, c.group, c.slot, engine::iso8601(c.ca.not_after),
             c.ca.verified ? "yes" : "no", std::to_string(c.devices), when(c.crl_next_update)});
  }
  std::printf("\n");
  cas.print();
  if (f.not_back_total > 0) {
    std::printf("\n%lld devices not back from a rollover (first %zu):\n",
                static_cast<long long>(f.not_back_total), f.not_back.size());
    for (const auto& n : f.not_back) {
      std::printf("  %s  %s  %s\n", n.job.c_str(), n.device.c_str(), n.state.c_str());
    }
  }
  return 0;
}

int run_audit(Context& ctx) {
  const Args& a = ctx.args();
  engine::AuditQuery q;
  q.limit = a.get_int("limit").value_or(50);
  if (q.limit < 1 || q.limit > kMaxAuditPage) {
    throw Error(ErrorCode::kUsage, "--limit must be 1.." + std::to_string(kMaxAuditPage));
  }
  if (const auto b = a.get("before")) {
    q.before_id = a.get_int("before").value_or(0);
    if (q.before_id < 1) throw Error(ErrorCode::kUsage, "--before must be an audit id (1 or more)");
  }
  q.action_prefix = a.get("action").value_or("");
  q.actor = a.get("actor").value_or("");
  q.subject_prefix = a.get("subject").value_or("");
  if (const auto s = a.get("since")) {
    try {
      q.since = parse_auth_time(*s);
    } catch (const Error&) {
      throw Error(ErrorCode::kUsage,
                  "--since '" + *s + "': a time is RFC 3339, a date (2026-01-01) or unix seconds");
    }
  }
  const std::int64_t limit = q.limit;
  q.limit = limit + 1;  // one more: whether there is a next page
  auto entries = ctx.registry().audit_page(q);
  const bool more = static_cast<std::int64_t>(entries.size()) > limit;
  if (more) entries.resize(static_cast<std::size_t>(limit));
  if (ctx.json()) {
    Array arr;
    for (const auto& e : entries) {
      Object o(Poco::JSON_PRESERVE_KEY_ORDER);
      o.set("id", e.id);
      o.set("at", engine::iso8601(e.at));
      o.set("actor", e.actor);
      o.set("action", e.action);
      o.set("subject", e.subject);
      o.set("detail", e.detail);
      arr.add(o);
    }
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("audit", arr);
    // The next page: --before this id (null on the last page).
    if (more) {
      o.set("next_before", entries.back().id);
    } else {
      o.set("next_before", Poco::Dynamic::Var());
    }
    ctx.print_json(o);
    return 0;
  }
  for (const auto& e : entries) {
    std::printf("%6lld %s %-10s %-24s %-20s %s\n", static_cast<long long>(e.id),
                engine::iso8601(e.at).c_str(), e.actor.c_str(), e.action.c_str(), e.subject.c_str(),
                e.detail.c_str());
  }
  return 0;
}

}  // namespace

void add_overview_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"fleet", "overview"},
      "[--weeks N] [--json]",
      "devices per group (connected, certificates per slot), certificates expiring per week, the "
      "CA tree with slots and CRLs, devices rollovers left behind",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "weeks", "N", "weeks of the expiry horizon (default 52)");
        add_flag(s, "json", "print as JSON");
      },
      run_overview});
  commands.push_back(Command{
      {"audit"},
      "[--limit N] [--before ID] [--action PREFIX] [--actor A] [--subject PREFIX] [--since T] "
      "[--json]",
      "show the append-only audit log, newest first, a page at a time",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "limit", "N", "entries to show (default 50, at most 1000)");
        add_option(s, "before", "ID", "entries older than this id (the next page)");
        add_option(s, "action", "PREFIX", "actions starting with PREFIX (cert., job., http.)");
        add_option(s, "actor", "A", "one actor (alice, http:alice, http-service)");
        add_option(s, "subject", "PREFIX", "subjects starting with PREFIX");
        add_option(s, "since", "T", "at or after T (RFC 3339, a date or unix seconds)");
        add_flag(s, "json", "print as JSON");
      },
      run_audit});
}

}  // namespace fleetsign::cli
