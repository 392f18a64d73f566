// expiry report, export dps|iothub: parse, call the engine, print (aligned tables, or --json).
#include <cstdio>
#include <set>

#include "cli.hpp"
#include "fleetsign/engine/cloud_export.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/expiry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "table.hpp"

namespace fleetsign::cli {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

constexpr std::size_t kHumanDueRows = 50;

Object buckets_json(const engine::BucketCounts& counts) {
  Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  for (const auto& [key, n] : counts) o.set(engine::bucket_label(key), n);
  return o;
}

Array thresholds_json(const std::vector<int>& days) {
  Array a;
  for (const int d : days) a.add(d);
  return a;
}

Object report_json(const engine::ExpiryReport& r) {
  Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("as_of", engine::iso8601(r.now));
  o.set("until", engine::iso8601(r.until));
  o.set("within_days", r.within_days);
  o.set("thresholds", thresholds_json(r.thresholds));
  o.set("status", r.exit_status());
  Object summary(Poco::JSON_PRESERVE_KEY_ORDER);
  summary.set("total", r.total_due);
  summary.set("buckets", buckets_json(r.buckets));
  summary.set("cas_due", r.cas.size());
  summary.set("findings", r.findings.size());
  o.set("summary", summary);
  Array groups;
  for (const auto& g : r.groups) {
    Object go(Poco::JSON_PRESERVE_KEY_ORDER);
    go.set("group", g.group);
    go.set("thresholds", thresholds_json(g.thresholds));
    go.set("total", g.total);
    go.set("level", static_cast<int>(g.level));
    go.set("buckets", buckets_json(g.buckets));
    Array lots;
    for (const auto& l : g.lots) {
      Object lo(Poco::JSON_PRESERVE_KEY_ORDER);
      lo.set("lot", l.lot);
      lo.set("total", l.total);
      lo.set("buckets", buckets_json(l.buckets));
      lots.add(lo);
    }
    go.set("lots", lots);
    groups.add(go);
  }
  o.set("groups", groups);
  Array cas;
  for (const auto& c : r.cas) {
    Object co(Poco::JSON_PRESERVE_KEY_ORDER);
    co.set("name", c.name);
    co.set("not_after", engine::iso8601(c.not_after));
    co.set("bucket", engine::bucket_label(c.bucket));
    cas.add(co);
  }
  o.set("cas", cas);
  Array findings;
  for (const auto& f : r.findings) {
    Object fo(Poco::JSON_PRESERVE_KEY_ORDER);
    fo.set("kind", f.kind);
    fo.set("ca", f.ca);
    fo.set("ca_not_after", engine::iso8601(f.ca_not_after));
    fo.set("latest", engine::iso8601(f.latest));
    fo.set("count", f.count);
    fo.set("message", f.message);
    findings.add(fo);
  }
  o.set("findings", findings);
  Array due;
  for (const auto& d : r.due) {
    Object dobj(Poco::JSON_PRESERVE_KEY_ORDER);
    dobj.set("registration_id", d.cert.registration_id);
    dobj.set("slot", std::string(engine::slot_name(d.cert.slot)));
    dobj.set("serial", d.cert.serial);
    dobj.set("ca", d.cert.ca_name);
    dobj.set("group", d.group);
    dobj.set("lot", d.cert.lot);
    dobj.set("not_after", engine::iso8601(d.cert.not_after));
    dobj.set("bucket", engine::bucket_label(d.bucket));
    due.add(dobj);
  }
  o.set("due", due);
  o.set("due_listed", r.due.size());
  return o;
}

void print_report(const engine::ExpiryReport& r, std::size_t rows) {
  std::string t;
  for (const int d : r.thresholds) t += (t.empty() ? "" : "/") + std::to_string(d);
  std::printf("expiry report as of %s: window %d days (until %s), alert thresholds %s days\n",
              engine::iso8601(r.now).c_str(), r.within_days, engine::iso8601(r.until).c_str(),
              t.c_str());
  std::set<engine::BucketKey> keys;
  for (const auto& [k, n] : r.buckets) keys.insert(k);
  std::vector<std::string> header{"GROUP", "LOT", "TOTAL"};
  for (const auto k : keys) header.push_back(engine::bucket_label(k));
  Table table(header);
  auto row = [&](const std::string& group, const std::string& lot, std::int64_t total,
                 const engine::BucketCounts& b) {
    std::vector<std::string> cells{group, lot, std::to_string(total)};
    for (const auto k : keys) {
      auto it = std::find_if(b.begin(), b.end(), [&](const auto& p) { return p.first == k; });
      cells.push_back(it == b.end() ? "-" : std::to_string(it->second));
    }
    table.add(cells);
  };
  for (const auto& g : r.groups) {
    for (const auto& l : g.lots)
      row(g.group, l.lot.empty() ? "(no lot)" : l.lot, l.total, l.buckets);
  }
  row("all", "", r.total_due, r.buckets);
  std::printf("\ndevice certificates due: %lld\n", static_cast<long long>(r.total_due));
  table.print(stdout, "  ");
  if (!r.cas.empty()) {
    std::printf("\nCA certificates due: %zu\n", r.cas.size());
    Table cas({"CA", "NOT AFTER", "BUCKET"});
    for (const auto& c : r.cas)
      cas.add({c.name, engine::iso8601(c.not_after), engine::bucket_label(c.bucket)});
    cas.print(stdout, "  ");
  }
  if (!r.findings.empty()) {
    std::printf("\nCA findings:\n");
    for (const auto& f : r.findings) std::printf("  %s\n", f.message.c_str());
  }
  if (!r.due.empty()) {
    const std::size_t n = std::min(rows, r.due.size());
    std::printf("\nsoonest %zu of %lld:\n", n, static_cast<long long>(r.total_due));
    Table due({"REGISTRATION ID", "SLOT", "NOT AFTER", "BUCKET", "GROUP", "LOT", "CA", "SERIAL"});
    for (std::size_t i = 0; i < n; ++i) {
      const auto& d = r.due[i];
      due.add({d.cert.registration_id, std::string(engine::slot_name(d.cert.slot)),
               engine::iso8601(d.cert.not_after), engine::bucket_label(d.bucket), d.group,
               d.cert.lot.empty() ? "-" : d.cert.lot, d.cert.ca_name, d.cert.serial});
    }
    due.print(stdout, "  ");
  }
  static const char* kMeaning[] = {"nothing due within the first threshold",
                                   "something due within the first threshold",
                                   "something within the last threshold, expired, or a CA finding"};
  std::printf("\nstatus %d: %s\n", r.exit_status(), kMeaning[r.exit_status()]);
}

Array crls_json(const std::vector<engine::CrlStatus>& crls) {
  Array out;
  for (const auto& c : crls) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("ca", c.ca_name);
    o.set("state", std::string(engine::crl_state_name(c.state)));
    o.set("number", c.latest ? c.latest->number : 0);
    o.set("next_update", c.latest ? engine::iso8601(c.latest->next_update) : std::string());
    o.set("revoked_since", c.revoked_since);
    out.add(o);
  }
  return out;
}

void print_crls(const std::vector<engine::CrlStatus>& crls, int status) {
  if (crls.empty()) return;
  std::printf("\nCRLs (serve re-signs those due, near or stale; `fleetsign crl sign --due`):\n");
  Table t({"CA", "STATE", "NUMBER", "NEXT UPDATE", "BEHIND A REVOCATION"});
  for (const auto& c : crls) {
    t.add({c.ca_name, std::string(engine::crl_state_name(c.state)),
           c.latest ? std::to_string(c.latest->number) : "-",
           c.latest ? engine::iso8601(c.latest->next_update) : "-",
           c.revoked_since ? "yes" : "no"});
  }
  t.print(stdout, "  ");
  std::printf("status %d including the CRLs (near or past nextUpdate: 2)\n", status);
}

int run_expiry_report(Context& ctx) {
  const Args& a = ctx.args();
  engine::ExpiryOptions options;
  options.within_days = a.get_int("within");
  if (options.within_days && *options.within_days < 0) {
    throw Error(ErrorCode::kUsage,
                "--within must be 0 or more days, got " + std::to_string(*options.within_days));
  }
  options.group = a.get("group").value_or("");
  const auto limit = a.get_int("limit");
  if (limit && *limit < 0) throw Error(ErrorCode::kUsage, "--limit must be 0 or more");
  options.limit = limit ? static_cast<std::size_t>(*limit) : (ctx.json() ? 1000 : kHumanDueRows);
  const auto report = engine::expiry_report(ctx.registry(), ctx.policy(), ctx.clock(), options);
  // CRL freshness is an availability duty: one past nextUpdate refuses every device of its CA.
  const auto crls = engine::crl_statuses(ctx.registry(), ctx.policy().crl, ctx.clock().now());
  int status = report.exit_status();
  for (const auto& c : crls) {
    if (c.state == engine::CrlState::kNear || c.state == engine::CrlState::kStale) status = 2;
  }
  if (ctx.json()) {
    Object o = report_json(report);
    o.set("crls", crls_json(crls));
    o.set("status", status);
    ctx.print_json(o);
  } else {
    print_report(report, options.limit);
    print_crls(crls, status);
  }
  return status;
}

int run_export(Context& ctx, bool dps) {
  const Args& a = ctx.args();
  const std::filesystem::path out = a.require("out");
  const std::string group = a.get("group").value_or("");
  engine::ExportSummary s;
  write_output_file(out,
                    std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
                        std::filesystem::perms::group_read | std::filesystem::perms::others_read,
                    [&](std::ostream& file) {
                      s = dps ? engine::export_dps(ctx.registry(), group, file)
                              : engine::export_iothub(ctx.registry(), group, file);
                    });
  // At most a screenful of warnings: the counts say the rest.
  for (std::size_t i = 0; i < s.warnings.size() && i < 20; ++i)
    std::fprintf(stderr, "warning: %s\n", s.warnings[i].c_str());
  if (s.warnings.size() > 20)
    std::fprintf(stderr, "warning: ... and %zu more\n", s.warnings.size() - 20);
  if (s.skipped_thumbprint_only > 0) {
    std::fprintf(stderr,
                 "hint: give such a slot its certificate with `fleetsign enrollment individual "
                 "set-slot ID SLOT --cert FILE`\n");
  }
  if (ctx.json()) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("format", dps ? "dps" : "iothub");
    o.set("out", out.string());
    o.set("group", group);
    o.set("enrollment_groups", s.groups);
    o.set("individual_enrollments", s.individuals);
    o.set("devices", s.devices);
    o.set("skipped_thumbprint_only", s.skipped_thumbprint_only);
    o.set("skipped_empty", s.skipped_empty);
    o.set("not_enrolled", s.not_enrolled);
    Array w;
    for (const auto& line : s.warnings) w.add(line);
    o.set("warnings", w);
    ctx.print_json(o);
  } else if (dps) {
    std::printf(
        "wrote %s: %lld enrollment groups, %lld individual enrollments (%lld skipped: thumbprint "
        "only)\n",
        out.c_str(), static_cast<long long>(s.groups), static_cast<long long>(s.individuals),
        static_cast<long long>(s.skipped_thumbprint_only));
  } else {
    std::printf(
        "wrote %s: %lld selfSigned (individual enrollments), %lld certificateAuthority devices\n",
        out.c_str(), static_cast<long long>(s.individuals), static_cast<long long>(s.devices));
  }
  return 0;
}

void export_options(Poco::Util::OptionSet& s) {
  add_option(s, "group", "G", "only this enrollment group (and no individual enrollments)");
  add_option(s, "out", "FILE", "output file");
  add_flag(s, "json", "print the summary as JSON");
}

}  // namespace

void add_report_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"expiry", "report"},
      "[--within DAYS] [--group G] [--limit N] [--json]. Exit status: 0 = nothing due within the "
      "first (largest) alert threshold; 1 = something due within the first threshold; 2 = "
      "something "
      "within the last (smallest) threshold, expired, or a CA that expires before certificates it "
      "issued (usage errors also exit 2)",
      "device and CA certificates due, by alert threshold, group and lot; CA findings",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "within", "DAYS",
                   "window (default: the largest alert threshold of the policy)");
        add_option(s, "group", "G", "only devices whose chain leads to this enrollment group");
        add_option(s, "limit", "N", "due certificates listed (default 1000 with --json, else 50)");
        add_flag(s, "json", "print as JSON");
      },
      run_expiry_report});
  commands.push_back(
      Command{{"export", "dps"},
              "[--group G] --out FILE [--json]",
              "Azure DPS enrollment groups and a bulk individual-enrollment operation (JSON)",
              export_options,
              [](Context& c) { return run_export(c, true); }});
  commands.push_back(Command{{"export", "iothub"},
                             "[--group G] --out FILE [--json]",
                             "Azure IoT Hub device identities for a bulk import job (JSON lines)",
                             export_options,
                             [](Context& c) { return run_export(c, false); }});
}

}  // namespace fleetsign::cli
