// fleetsign revoke (the blast-radius preview and the run), blocklist add | list | remove.
#include <Poco/JSON/Array.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cstdio>
#include <iostream>
#include <set>
#include <vector>

#include "cli.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/revocation.hpp"
#include "paging.hpp"
#include "table.hpp"

namespace fleetsign::cli {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

constexpr const char* kSelectors[] = {
    "serial", "device", "ca", "lot", "batch", "site", "line", "issued-between", "key-sha256"};
constexpr std::size_t kBlocklistFileLimit = 64 * 1024 * 1024;  // ~800k hashes

jobs::RevocationSelector selector_of(Context& ctx) {
  const Args& a = ctx.args();
  std::string kind;
  for (const char* k : kSelectors) {
    if (!a.has(k)) continue;
    if (!kind.empty()) {
      throw Error(ErrorCode::kUsage, "give one selector, not --" + kind + " and --" + k);
    }
    kind = k;
  }
  if (kind.empty()) {
    throw Error(ErrorCode::kUsage,
                "name what to revoke: --serial, --device, --ca, --lot, --batch, --site, --line, "
                "--issued-between T1 T2 or --key-sha256");
  }
  std::vector<std::string> values = a.options.at(kind);
  if (kind == "issued-between") values.push_back(a.positional_at(0, "T2 (--issued-between T1 T2)"));
  if (kind != "issued-between" && !a.positional.empty()) {
    throw Error(ErrorCode::kUsage, "unexpected argument '" + a.positional[0] + "'");
  }
  return jobs::parse_selector(ctx.policy(), kind, values);
}

// At most `limit` items (0: all); the counts beside the lists stay whole.
Array::Ptr array_of(const std::vector<std::string>& items, std::size_t limit = 0) {
  Array::Ptr out = new Array;
  for (const auto& i : items) {
    if (limit != 0 && out->size() >= limit) break;
    out->add(i);
  }
  return out;
}

// `list_limit`: the device lists (replacement plan, sessions dropped) hold at most this many
// IDs (0: all), so the plan of a million devices stays a page; their counts are whole.
Object::Ptr plan_json(const jobs::RevocationPlan& p, std::size_t list_limit) {
  Object::Ptr o = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
  o->set("selector", p.selector.describe());
  o->set("reason", p.reason);
  o->set("certificates", static_cast<std::int64_t>(p.to_revoke.size()));
  o->set("already_revoked", p.already_revoked);
  o->set("reasons_raised", static_cast<std::int64_t>(p.reason_raised.size()));
  o->set("devices", static_cast<std::int64_t>(p.devices.size()));
  o->set("devices_by_group", counts_json(p.devices_by_group));
  o->set("devices_by_lot", counts_json(p.devices_by_lot));
  o->set("devices_by_site", counts_json(p.devices_by_site));
  o->set("connected_affected", p.connected_affected);
  o->set("connected_dropped", static_cast<std::int64_t>(p.connected_dropped.size()));
  o->set("cas_revoked", array_of(p.cas_revoked));
  o->set("cas_affected", array_of(p.cas_affected));
  Array::Ptr groups = new Array;
  for (const auto& g : p.group_changes) {
    Object::Ptr go = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
    go->set("group", g.group);
    go->set("leave_slots", array_of(g.leave_slots));
    go->set("disable", g.disable);
    groups->add(go);
  }
  o->set("group_changes", groups);
  o->set("groups_without_devices", array_of(p.groups_without_devices));
  o->set("enrollments_disabled", static_cast<std::int64_t>(p.disable_enrollments.size()));
  o->set("keys_blocked", static_cast<std::int64_t>(p.keys_to_block.size()));
  Object::Ptr repl = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
  repl->set("reprovision", array_of(p.reprovision, list_limit));
  repl->set("rotate_now", array_of(p.rotate_now, list_limit));
  repl->set("rotate_incident", array_of(p.rotate_incident, list_limit));
  repl->set("retire", array_of(p.retire, list_limit));
  Object::Ptr repl_counts = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
  repl_counts->set("reprovision", static_cast<std::int64_t>(p.reprovision.size()));
  repl_counts->set("rotate_now", static_cast<std::int64_t>(p.rotate_now.size()));
  repl_counts->set("rotate_incident", static_cast<std::int64_t>(p.rotate_incident.size()));
  repl_counts->set("retire", static_cast<std::int64_t>(p.retire.size()));
  o->set("replacement", repl);
  o->set("replacement_counts", repl_counts);
  o->set("connected_dropped_devices", array_of(p.connected_dropped, list_limit));
  o->set("list_limit", static_cast<std::int64_t>(list_limit));
  return o;
}

std::string counts(const std::map<std::string, std::int64_t>& m) {
  std::string out;
  for (const auto& [k, v] : m) out += (out.empty() ? "" : ", ") + k + " " + std::to_string(v);
  return out.empty() ? "-" : out;
}

std::string names(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out.empty() ? "-" : out;
}

void print_plan(const jobs::RevocationPlan& p, bool dry_run) {
  std::printf("%s %s, reason %s\n",
              dry_run ? "Dry run (nothing changed):" : "Revocation:", p.selector.describe().c_str(),
              p.reason.c_str());
  Table t({"", ""});
  t.add({"certificates",
         std::to_string(p.to_revoke.size()) +
             " (already revoked: " + std::to_string(p.already_revoked) +
             (p.reason_raised.empty() ? std::string()
                                      : ", " + std::to_string(p.reason_raised.size()) +
                                            " of them now keyCompromise in their CRL") +
             ")"});
  t.add({"devices", std::to_string(p.devices.size())});
  t.add({"  by group", counts(p.devices_by_group)});
  t.add({"  by lot", counts(p.devices_by_lot)});
  t.add({"  by site", counts(p.devices_by_site)});
  t.add({"connected now", std::to_string(p.connected_affected) +
                              " (dropped: " + std::to_string(p.connected_dropped.size()) + ")"});
  t.add({"CAs revoked", names(p.cas_revoked)});
  t.add({"CAs affected", names(p.cas_affected)});
  for (const auto& g : p.group_changes) {
    t.add({"group " + g.group,
           g.disable ? "disabled (no working CA left)" : "CA leaves " + names(g.leave_slots)});
  }
  t.add({"groups left without devices", names(p.groups_without_devices)});
  t.add({"enrollments disabled", std::to_string(p.disable_enrollments.size())});
  t.add({"keys blocked", std::to_string(p.keys_to_block.size())});
  t.add({"replacement: factory re-provisioning", std::to_string(p.reprovision.size())});
  t.add({"replacement: rotate now", std::to_string(p.rotate_now.size())});
  t.add({"replacement: rotate by incident run", std::to_string(p.rotate_incident.size())});
  t.add({"replacement: retired", std::to_string(p.retire.size())});
  t.print(stdout, "  ");
}

// More than one device, or any CA, needs --yes, or the count (or the word "revoke") typed on a
// terminal.
void confirm(Context& ctx, const jobs::RevocationPlan& p) {
  if ((p.devices.size() <= 1 && p.cas_revoked.empty()) || ctx.args().has("yes")) return;
  const std::string n = std::to_string(p.devices.size());
  if (isatty(STDIN_FILENO) == 0 || isatty(STDERR_FILENO) == 0) {
    throw Error(
        ErrorCode::kUsage,
        "refusing to revoke " +
            (p.cas_revoked.empty() ? std::string() : "CA(s) " + names(p.cas_revoked) + " and ") +
            "the certificates of " + n +
            " device(s) without --yes (run with --dry-run to see them)");
  }
  std::fprintf(stderr,
               "Revoke %zu certificate(s) of %s devices? Type %s or 'revoke': ", p.to_revoke.size(),
               n.c_str(), n.c_str());
  // One line from the terminal, bounded: a line longer than the buffer is no confirmation.
  std::array<char, 256> line{};
  std::cin.getline(line.data(), static_cast<std::streamsize>(line.size()));
  const std::string answer = std::cin ? std::string(line.data()) : std::string();
  if (answer != n && answer != "revoke") {
    throw Error(ErrorCode::kUsage, "not confirmed: nothing was revoked");
  }
}

int run_revoke(Context& ctx) {
  const auto selector = selector_of(ctx);
  const std::string reason = jobs::check_reason(ctx.args().get("reason").value_or(""), selector);
  const bool dry_run = ctx.args().has("dry-run");
  if (dry_run && ctx.args().has("yes"))
    throw Error(ErrorCode::kUsage, "--dry-run or --yes, not both");
  const int list_limit = ctx.args().get_int("list-limit").value_or(0);
  if (list_limit < 0) throw Error(ErrorCode::kUsage, "--list-limit must be 0 (all) or more");
  // A run takes the home (the token, for the CRLs that follow) before it plans: a second revoke
  // at the same time waits (--wait) or is refused before it records anything, and what was
  // planned and confirmed is what runs.
  if (!dry_run) ctx.token();
  engine::Stores& stores = ctx.registry();
  const auto plan = jobs::plan_revocation(stores, ctx.clock(), selector, reason);
  if (plan.to_revoke.empty() && plan.already_revoked == 0 && plan.cas_revoked.empty() &&
      plan.keys_to_block.empty()) {
    // A typo in a serial or a lot must not look like a revocation that went through.
    throw Error(ErrorCode::kNotFound, "nothing matches " + plan.selector.describe() +
                                          ": no certificate, CA or key to revoke");
  }
  if (!dry_run) confirm(ctx, plan);
  jobs::RevocationOutcome outcome;
  if (!dry_run) {
    const bool show = !ctx.json() && isatty(STDERR_FILENO) != 0;
    outcome = jobs::execute_revocation(stores, plan, [&](std::int64_t done, std::int64_t total) {
      if (show)
        std::fprintf(stderr, "\rrevoking: %lld/%lld", static_cast<long long>(done),
                     static_cast<long long>(total));
    });
    if (show && !plan.to_revoke.empty()) std::fprintf(stderr, "\n");
    // A new CRL follows every revocation (signed in the token), and the broker's CRL file with it.
    // A CRL still behind an earlier revocation is signed too: the same revoke run again after a
    // kill between its commit and its CRLs revokes nothing new, and must still finish them.
    std::set<std::string> due(outcome.crls_due.begin(), outcome.crls_due.end());
    for (const auto& st : engine::crl_statuses(stores, ctx.policy().crl, ctx.clock().now())) {
      if (st.revoked_since) due.insert(st.ca_name);
    }
    if (!due.empty()) {
      std::string line;
      try {
        line = refresh_crls_and_broker(ctx, std::vector<std::string>(due.begin(), due.end()));
      } catch (const Error& e) {
        throw Error(e.code(), std::string("the revocation is recorded, but its CRLs are not all "
                                          "signed and installed (run `fleetsign crl sign "
                                          "--due`): ") +
                                  e.what());
      }
      if (!ctx.json() && !line.empty()) std::fprintf(stderr, "%s\n", line.c_str());
    }
  }
  if (ctx.json()) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("dry_run", dry_run);
    o.set("plan", plan_json(plan, static_cast<std::size_t>(list_limit)));
    if (!dry_run) {
      Object::Ptr r = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
      r->set("certificates_revoked", outcome.certificates_revoked);
      r->set("reasons_raised", outcome.reasons_raised);
      r->set("enrollments_disabled", outcome.enrollments_disabled);
      r->set("keys_blocked", outcome.keys_blocked);
      r->set("cas_revoked", outcome.cas_revoked);
      r->set("groups_changed", outcome.groups_changed);
      o.set("outcome", r);
    }
    ctx.print_json(o);
  } else {
    print_plan(plan, dry_run);
    if (!dry_run) {
      std::printf(
          "revoked %lld certificate(s) (%lld more now keyCompromise); %lld enrollment(s) "
          "disabled, %lld key(s) blocked, %lld CA(s) revoked, %lld group(s) changed\n",
          static_cast<long long>(outcome.certificates_revoked),
          static_cast<long long>(outcome.reasons_raised),
          static_cast<long long>(outcome.enrollments_disabled),
          static_cast<long long>(outcome.keys_blocked), static_cast<long long>(outcome.cas_revoked),
          static_cast<long long>(outcome.groups_changed));
    }
  }
  return 0;
}

std::vector<engine::BlockedKey> keys_to_add(Context& ctx) {
  const Args& a = ctx.args();
  const std::string reason = jobs::check_name("reason", a.get("reason").value_or("keyCompromise"));
  const std::int64_t now = ctx.clock().now();
  std::vector<engine::BlockedKey> keys;
  const auto add = [&](const std::string& text, const std::string& source) {
    const auto sel = jobs::parse_selector(ctx.policy(), "key-sha256", {text});
    keys.push_back(engine::BlockedKey{sel.value, reason, source, now});
  };
  for (const auto& h : a.positional) add(h, "blocklist add");
  if (auto file = a.get("from-file")) {
    const std::string text = read_bounded(*file, kBlocklistFileLimit, "--from-file");
    std::size_t line_no = 0, pos = 0;
    while (pos < text.size()) {
      const std::size_t end = std::min(text.find('\n', pos), text.size());
      std::string line = text.substr(pos, end - pos);
      pos = end + 1;
      ++line_no;
      line.erase(0, line.find_first_not_of(" \t\r"));
      line.erase(line.find_last_not_of(" \t\r") + 1);
      if (line.empty() || line[0] == '#') continue;
      try {
        add(line, *file);
      } catch (const Error& e) {
        throw e.with_context(*file + ", line " + std::to_string(line_no));
      }
    }
  }
  if (keys.empty()) throw Error(ErrorCode::kUsage, "blocklist add: give HASH… or --from-file F");
  return keys;
}

int run_blocklist_add(Context& ctx) {
  const auto keys = keys_to_add(ctx);
  const std::int64_t added = ctx.registry().add_blocked_keys(keys);
  if (ctx.json()) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("given", static_cast<std::int64_t>(keys.size()));
    o.set("added", added);
    ctx.print_json(o);
  } else {
    std::printf("blocked %lld new key(s) of %zu given\n", static_cast<long long>(added),
                keys.size());
  }
  return 0;
}

int run_blocklist_list(Context& ctx) {
  auto page = page_args(ctx.args(), 0);
  for (auto& c : page.after) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto keys = ctx.registry().list_blocked_keys(one_more(page));
  const auto next = cut_page(keys, page, [](const auto& k) { return k.key_sha256; });
  if (ctx.json()) {
    Array::Ptr arr = new Array;
    for (const auto& k : keys) {
      Object::Ptr o = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
      o->set("key_sha256", k.key_sha256);
      o->set("reason", k.reason);
      o->set("source", k.source);
      o->set("added_at", engine::iso8601(k.added_at));
      arr->add(o);
    }
    Object o;
    o.set("keys", arr);
    set_next(o, next);
    ctx.print_json(o);
    return 0;
  }
  Table t({"KEY SHA-256", "ADDED", "REASON", "SOURCE"});
  for (const auto& k : keys) t.add({k.key_sha256, engine::iso8601(k.added_at), k.reason, k.source});
  t.print();
  print_next_hint(next);
  return 0;
}

int run_blocklist_remove(Context& ctx) {
  const auto sel =
      jobs::parse_selector(ctx.policy(), "key-sha256", {ctx.args().positional_at(0, "HASH")});
  ctx.registry().remove_blocked_key(sel.value);
  if (ctx.json()) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("removed", sel.value);
    ctx.print_json(o);
  } else {
    std::printf("unblocked %s\n", sel.value.c_str());
  }
  return 0;
}

}  // namespace

void add_revoke_commands(std::vector<Command>& commands) {
  commands.push_back(
      {{"revoke"},
       "(--serial S | --device ID | --ca NAME | --lot L | --batch B | --site S | --line L | "
       "--issued-between T1 T2 | --key-sha256 H) [--reason R] (--dry-run | --yes) [--json]",
       "revoke certificates; --dry-run shows the blast radius and changes nothing",
       [](Poco::Util::OptionSet& s) {
         add_option(s, "serial", "S", "one certificate (hex serial)");
         add_option(s, "device", "ID", "every certificate of a device");
         add_option(s, "ca", "NAME",
                    "everything under a CA: the CA, its child CAs, their certificates");
         add_option(s, "lot", "L", "the certificates of a manufacturing lot");
         add_option(s, "batch", "B", "the certificates of an issuance batch (or job)");
         add_option(s, "site", "S", "the certificates of a site");
         add_option(s, "line", "L", "the certificates of a production line");
         add_option(s, "issued-between", "T1",
                    "issued in [T1, T2) (RFC 3339, a date or unix seconds); T2 follows");
         add_option(s, "key-sha256", "H", "every certificate of a public key (SPKI SHA-256)");
         add_option(s, "reason", "R",
                    "keyCompromise | cACompromise | affiliationChanged | superseded | "
                    "cessationOfOperation (required, except keyCompromise for --key-sha256)");
         add_flag(s, "dry-run", "show the plan and change nothing");
         add_flag(s, "yes", "revoke more than one device without asking");
         add_option(s, "list-limit", "N",
                    "--json: device IDs listed per list of the plan (0: all, the default; the "
                    "counts are whole)");
         add_flag(s, "json", "one JSON object on stdout");
       },
       run_revoke});
  commands.push_back({{"blocklist", "add"},
                      "HASH… [--from-file F] [--reason R] [--json]",
                      "block public keys (SPKI SHA-256): a CSR with one is refused (key_blocked)",
                      [](Poco::Util::OptionSet& s) {
                        add_option(s, "from-file", "F", "one hash a line (# comments)");
                        add_option(s, "reason", "R", "why (default keyCompromise)");
                        add_flag(s, "json", "one JSON object on stdout");
                      },
                      run_blocklist_add});
  commands.push_back({{"blocklist", "list"},
                      "[--limit N] [--after HASH] [--json]",
                      "the blocked public keys, by hash",
                      [](Poco::Util::OptionSet& s) {
                        add_paging_options(s, "default: all", "HASH");
                        add_flag(s, "json", "JSON on stdout");
                      },
                      run_blocklist_list});
  commands.push_back({{"blocklist", "remove"},
                      "HASH",
                      "unblock a public key",
                      [](Poco::Util::OptionSet& s) { add_flag(s, "json", "JSON on stdout"); },
                      run_blocklist_remove});
}

}  // namespace fleetsign::cli
