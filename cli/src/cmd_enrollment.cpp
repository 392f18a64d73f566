// enrollment group …, enrollment individual …, device list/show: parse, call the enrollment
// service, print (aligned tables, or --json).
#include <cstdio>
#include <tuple>

#include "cli.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "paging.hpp"
#include "table.hpp"

namespace fleetsign::cli {

namespace {

using Poco::JSON::Object;

engine::EnrollmentService service(Context& ctx) {
  return engine::EnrollmentService(ctx.registry(), ctx.policy(), ctx.clock());
}

std::string when(std::int64_t t) { return t == 0 ? "" : engine::iso8601(t); }
std::string status(bool enabled) { return enabled ? "enabled" : "disabled"; }
std::string abbrev(const std::string& hex) {
  return hex.size() > 16 ? hex.substr(0, 16) + "..." : hex;
}

// JSON null for a free slot, else what `make` builds.
template <typename F>
Poco::Dynamic::Var slot_or_null(bool free, F make) {
  return free ? Poco::Dynamic::Var() : Poco::Dynamic::Var(make());
}

// {"KEY": [to_json(item)…], "count": N, "next_after": cursor|null} on stdout.
template <typename T, typename F>
void print_json_list(Context& ctx, const std::string& key, const std::vector<T>& items, F to_json,
                     const Poco::Dynamic::Var& next = {}) {
  Poco::JSON::Array arr;
  for (const auto& item : items) arr.add(to_json(item));
  Object o;
  o.set(key, arr);
  o.set("count", items.size());
  set_next(o, next);
  ctx.print_json(o);
}

std::string name_arg(Context& ctx) { return ctx.args().positional_at(0, "group NAME"); }
std::string id_arg(Context& ctx) { return ctx.args().positional_at(0, "registration ID"); }
engine::Slot slot_arg(Context& ctx) {
  return engine::parse_slot(ctx.args().positional_at(1, "SLOT (primary|secondary)"));
}

// The first certificate in FILE (read_certificates names the file in its errors).
engine::Der certificate_file(const std::string& file) {
  return engine::read_certificates(file).front();
}

// --- groups ------------------------------------------------------------------------------------

Object slot_ca_json(Context& ctx, const std::string& name) {
  Object o;
  o.set("ca", name);
  if (auto ca = ctx.registry().find_ca(name)) {
    o.set("subject", ca->subject);
    o.set("not_after", engine::iso8601(ca->not_after));
    o.set("verified", ca->verified);
    o.set("external", engine::is_external(*ca));
    o.set("sha256", ca->sha256);
  }
  return o;
}

Object group_json(Context& ctx, const engine::EnrollmentGroup& g) {
  Object o;
  o.set("name", g.name);
  o.set("status", status(g.enabled));
  o.set("primary",
        slot_or_null(g.primary_ca.empty(), [&] { return slot_ca_json(ctx, g.primary_ca); }));
  o.set("secondary",
        slot_or_null(g.secondary_ca.empty(), [&] { return slot_ca_json(ctx, g.secondary_ca); }));
  o.set("created_at", when(g.created_at));
  o.set("updated_at", when(g.updated_at));
  return o;
}

void print_group(Context& ctx, const engine::EnrollmentGroup& g) {
  std::printf("enrollment group %s (%s)\n", g.name.c_str(), status(g.enabled).c_str());
  Table t({"SLOT", "CA", "VERIFIED", "NOT AFTER", "SUBJECT"});
  for (const auto& [slot, name] :
       {std::pair{"primary", g.primary_ca}, std::pair{"secondary", g.secondary_ca}}) {
    const auto ca = name.empty() ? std::nullopt : ctx.registry().find_ca(name);
    t.add({slot, name.empty() ? "(free)" : name, ca ? (ca->verified ? "yes" : "no") : "",
           ca ? engine::iso8601(ca->not_after) : "",
           ca ? ca->subject + (engine::is_external(*ca) ? " (external)" : "") : ""});
  }
  t.print(stdout, "  ");
  std::printf("  created %s, updated %s\n", when(g.created_at).c_str(), when(g.updated_at).c_str());
}

// True when the CA, or a CA above it in the registry, has proved possession of its key: the cloud
// admits devices of an intermediate signed by a verified CA (auth.hpp).
bool verified_or_below_verified(Context& ctx, std::optional<engine::CaRecord> ca) {
  for (int depth = 0; ca && depth < 16; ++depth) {
    if (ca->verified) return true;
    ca = ca->parent.empty() ? std::nullopt : ctx.registry().find_ca(ca->parent);
  }
  return false;
}

// A CA with no proof of possession (its own or above it) is refused by the cloud; say so where
// the slot is set.
void note_unverified(Context& ctx, const engine::EnrollmentGroup& g) {
  for (const auto* name : {&g.primary_ca, &g.secondary_ca}) {
    auto ca = name->empty() ? std::nullopt : ctx.registry().find_ca(*name);
    if (ca && !verified_or_below_verified(ctx, ca)) {
      std::fprintf(stderr,
                   "note: CA '%s' is not verified; the cloud refuses its devices until `fleetsign "
                   "ca verify %s --code C --cert F`\n",
                   name->c_str(), name->c_str());
    }
  }
}

int show_group(Context& ctx, const engine::EnrollmentGroup& g) {
  if (ctx.json()) {
    ctx.print_json(group_json(ctx, g));
  } else {
    print_group(ctx, g);
  }
  return 0;
}

int changed_group(Context& ctx, const engine::EnrollmentGroup& g) {
  note_unverified(ctx, g);
  return show_group(ctx, g);
}

int run_group_create(Context& ctx) {
  const Args& a = ctx.args();
  return changed_group(ctx, service(ctx).create_group(name_arg(ctx), a.require("ca"),
                                                      a.get("secondary-ca").value_or("")));
}

int run_group_set_slot(Context& ctx) {
  const Args& a = ctx.args();
  const std::string name = name_arg(ctx);
  const engine::Slot slot = slot_arg(ctx);
  if (a.has("ca") == a.has("cert")) {
    throw Error(ErrorCode::kUsage, "give exactly one of --ca CA or --cert FILE");
  }
  auto svc = service(ctx);
  return changed_group(
      ctx, a.has("ca") ? svc.set_group_slot(name, slot, a.require("ca"))
                       : svc.set_group_slot_cert(name, slot, certificate_file(a.require("cert"))));
}

int run_group_clear_slot(Context& ctx) {
  return show_group(ctx, service(ctx).clear_group_slot(name_arg(ctx), slot_arg(ctx)));
}

int run_group_list(Context& ctx) {
  const auto page = page_args(ctx.args(), 0);
  auto groups = page_in_memory(
      ctx.registry().list_groups(), page, [](const auto& g) { return g.name; }, "group");
  const auto next = cut_page(groups, page, [](const auto& g) { return g.name; });
  if (ctx.json()) {
    print_json_list(
        ctx, "groups", groups, [&](const auto& g) { return group_json(ctx, g); }, next);
    return 0;
  }
  Table t({"NAME", "STATUS", "PRIMARY CA", "SECONDARY CA", "UPDATED"});
  for (const auto& g : groups) {
    t.add({g.name, status(g.enabled), g.primary_ca.empty() ? "-" : g.primary_ca,
           g.secondary_ca.empty() ? "-" : g.secondary_ca, when(g.updated_at)});
  }
  t.print();
  print_next_hint(next);
  return 0;
}

// --- individual enrollments ------------------------------------------------------------------

Object credential_json(const engine::Der& cert, const std::string& sha256) {
  Object o;
  o.set("sha256", sha256);
  o.set("certificate", !cert.empty());
  if (!cert.empty()) {
    const auto s = engine::summarize_certificate(cert);
    o.set("subject", s.subject);
    o.set("issuer", s.issuer);
    o.set("serial", s.serial);
    o.set("not_after", engine::iso8601(s.not_after));
  }
  return o;
}

Object individual_json(const engine::IndividualEnrollment& ie) {
  Object o;
  o.set("registration_id", ie.registration_id);
  o.set("status", status(ie.enabled));
  o.set("primary", slot_or_null(ie.primary_sha256.empty(), [&] {
          return credential_json(ie.primary_cert, ie.primary_sha256);
        }));
  o.set("secondary", slot_or_null(ie.secondary_sha256.empty(), [&] {
          return credential_json(ie.secondary_cert, ie.secondary_sha256);
        }));
  o.set("created_at", when(ie.created_at));
  o.set("updated_at", when(ie.updated_at));
  return o;
}

int show_individual(Context& ctx, const engine::IndividualEnrollment& ie) {
  if (ctx.json()) {
    ctx.print_json(individual_json(ie));
    return 0;
  }
  std::printf("individual enrollment %s (%s)\n", ie.registration_id.c_str(),
              status(ie.enabled).c_str());
  Table t({"SLOT", "SHA-256", "CERTIFICATE"});
  auto row = [&](const char* slot, const engine::Der& cert, const std::string& sha) {
    const std::string what =
        !cert.empty() ? "not after " + when(engine::summarize_certificate(cert).not_after)
                      : (sha.empty() ? "" : "thumbprint only");
    t.add({slot, sha.empty() ? "(free)" : sha, what});
  };
  row("primary", ie.primary_cert, ie.primary_sha256);
  row("secondary", ie.secondary_cert, ie.secondary_sha256);
  t.print(stdout, "  ");
  std::printf("  created %s, updated %s\n", when(ie.created_at).c_str(),
              when(ie.updated_at).c_str());
  return 0;
}

// --cert FILE or --thumbprint HEX (with a prefix: "secondary-").
std::optional<engine::SlotCredential> credential_option(const Args& a, const std::string& id,
                                                        const std::string& prefix) {
  const bool cert = a.has(prefix + "cert"), thumb = a.has(prefix + "thumbprint");
  if (cert && thumb) {
    throw Error(ErrorCode::kUsage,
                "give --" + prefix + "cert or --" + prefix + "thumbprint, not both");
  }
  if (cert) {
    const std::string file = a.require(prefix + "cert");
    try {
      return engine::credential_from_cert(id, certificate_file(file));
    } catch (const Error& e) {
      throw e.code() == ErrorCode::kInvalidArgument ? e.with_context(file) : e;
    }
  }
  if (thumb) return engine::credential_from_thumbprint(a.require(prefix + "thumbprint"));
  return std::nullopt;
}

int run_individual_create(Context& ctx) {
  const Args& a = ctx.args();
  const std::string id = id_arg(ctx);
  auto primary = credential_option(a, id, "");
  if (!primary) {
    throw Error(ErrorCode::kUsage, "give --cert FILE or --thumbprint HEX for the primary slot");
  }
  return show_individual(
      ctx, service(ctx).create_individual(id, *primary, credential_option(a, id, "secondary-")));
}

int run_individual_set_slot(Context& ctx) {
  const Args& a = ctx.args();
  const std::string id = id_arg(ctx);
  const engine::Slot slot = slot_arg(ctx);
  auto credential = credential_option(a, id, "");
  if (!credential) {
    throw Error(ErrorCode::kUsage, "give --cert FILE or --thumbprint HEX");
  }
  return show_individual(ctx, service(ctx).set_individual_slot(id, slot, *credential));
}

int run_individual_list(Context& ctx) {
  const auto page = page_args(ctx.args(), 0);
  const auto key = [](const engine::IndividualEnrollment& ie) { return ie.registration_id; };
  auto all = page_in_memory(ctx.registry().list_individuals(), page, key, "individual enrollment");
  const auto next = cut_page(all, page, key);
  if (ctx.json()) {
    print_json_list(ctx, "individual_enrollments", all, individual_json, next);
    return 0;
  }
  auto slot = [](const engine::Der& cert, const std::string& sha) {
    return sha.empty() ? std::string("-")
                       : abbrev(sha) + (cert.empty() ? " (thumbprint)" : " (cert)");
  };
  Table t({"REGISTRATION ID", "STATUS", "PRIMARY SHA-256", "SECONDARY SHA-256", "UPDATED"});
  for (const auto& ie : all) {
    t.add({ie.registration_id, status(ie.enabled), slot(ie.primary_cert, ie.primary_sha256),
           slot(ie.secondary_cert, ie.secondary_sha256), when(ie.updated_at)});
  }
  t.print();
  print_next_hint(next);
  return 0;
}

// --- devices -------------------------------------------------------------------------------------

Object device_slot_json(Context& ctx, const std::string& serial, std::int64_t not_after,
                        bool with_state) {
  Object o;
  o.set("serial", serial);
  o.set("not_after", when(not_after));
  if (with_state) {
    const auto cert = ctx.registry().find_cert(serial);
    o.set("state", cert ? std::string(engine::cert_state_name(cert->state)) : "unknown");
    if (cert) o.set("sha256", cert->sha256);
  }
  return o;
}

Object device_json(Context& ctx, const engine::DeviceRecord& d, const engine::GroupIndex& index,
                   bool detail) {
  const engine::EnrollmentGroup* g = index.group_of_ca(d.ca_name);
  Object o;
  o.set("registration_id", d.registration_id);
  o.set("status", d.status);
  o.set("ca", d.ca_name);
  o.set("group", g != nullptr ? g->name : "");
  o.set("lot", d.lot);
  o.set("primary", slot_or_null(d.primary_serial.empty(), [&] {
          return device_slot_json(ctx, d.primary_serial, d.primary_not_after, detail);
        }));
  o.set("secondary", slot_or_null(d.secondary_serial.empty(), [&] {
          return device_slot_json(ctx, d.secondary_serial, d.secondary_not_after, detail);
        }));
  return o;
}

int run_device_list(Context& ctx) {
  const Args& a = ctx.args();
  if (a.has("connected")) {
    if (a.has("group") || a.has("lot")) {
      throw Error(ErrorCode::kUsage, "--connected lists sessions; it takes no --group or --lot");
    }
    return run_device_list_connected(ctx);
  }
  const auto index = engine::GroupIndex::load(ctx.registry());
  engine::DeviceFilter filter;
  filter.lot = a.get("lot").value_or("");
  const auto page = page_args(a, 0);
  filter.limit = one_more(page).limit;
  filter.after = page.after;
  if (auto group = a.get("group")) {
    filter.ca_names = index.cas_of_group(*group);
    if (filter.ca_names.empty()) filter.ca_names = {""};  // both slots free: no device matches
  }
  auto devices = ctx.registry().list_devices(filter);
  const auto next = cut_page(devices, page, [](const auto& d) { return d.registration_id; });
  if (ctx.json()) {
    print_json_list(
        ctx, "devices", devices, [&](const auto& d) { return device_json(ctx, d, index, false); },
        next);
    return 0;
  }
  Table t({"REGISTRATION ID", "STATUS", "CA", "GROUP", "LOT", "PRIMARY NOT AFTER",
           "SECONDARY NOT AFTER"});
  for (const auto& d : devices) {
    const auto* g = index.group_of_ca(d.ca_name);
    t.add({d.registration_id, d.status, d.ca_name, g != nullptr ? g->name : "-",
           d.lot.empty() ? "-" : d.lot, d.primary_serial.empty() ? "-" : when(d.primary_not_after),
           d.secondary_serial.empty() ? "-" : when(d.secondary_not_after)});
  }
  t.print();
  print_next_hint(next);
  return 0;
}

int run_device_show(Context& ctx) {
  const std::string id = id_arg(ctx);
  const auto d = ctx.registry().find_device(id);
  if (!d) throw Error(ErrorCode::kNotFound, "device '" + id + "' not found in the registry");
  const auto index = engine::GroupIndex::load(ctx.registry());
  const auto ie = ctx.registry().find_individual(id);
  Object o = device_json(ctx, *d, index, true);
  o.set("individual_enrollment", ie ? status(ie->enabled) : "");
  if (ctx.json()) {
    ctx.print_json(o);
    return 0;
  }
  const auto* g = index.group_of_ca(d->ca_name);
  std::printf(
      "device %s (%s)\n  CA          %s\n  group       %s\n  individual  %s\n  lot         %s\n",
      id.c_str(), d->status.c_str(), d->ca_name.c_str(),
      g != nullptr ? (g->name + " (" + status(g->enabled) + ")").c_str() : "-",
      ie ? status(ie->enabled).c_str() : "-", d->lot.empty() ? "-" : d->lot.c_str());
  Table t({"SLOT", "SERIAL", "NOT AFTER", "STATE"});
  for (const auto& [slot, serial, not_after] :
       {std::tuple{"primary", d->primary_serial, d->primary_not_after},
        std::tuple{"secondary", d->secondary_serial, d->secondary_not_after}}) {
    const auto cert = serial.empty() ? std::nullopt : ctx.registry().find_cert(serial);
    t.add({slot, serial.empty() ? "(free)" : serial, when(not_after),
           cert ? std::string(engine::cert_state_name(cert->state)) : ""});
  }
  t.print(stdout, "  ");
  return 0;
}

// --- registration ----------------------------------------------------------------------------

void json_flag(Poco::Util::OptionSet& s) { add_flag(s, "json", "print as JSON"); }

Command simple(std::vector<std::string> words, std::string usage, std::string summary,
               std::function<int(Context&)> run) {
  return Command{std::move(words), std::move(usage), std::move(summary), json_flag, std::move(run)};
}

void add_group_commands(std::vector<Command>& c) {
  c.push_back(Command{{"enrollment", "group", "create"},
                      "NAME --ca CA [--secondary-ca CA] [--json]",
                      "create an enrollment group trusting devices whose chain leads to CA",
                      [](Poco::Util::OptionSet& s) {
                        add_option(s, "ca", "CA", "CA in the primary slot (a registry CA)");
                        add_option(s, "secondary-ca", "CA", "CA in the secondary slot");
                        json_flag(s);
                      },
                      run_group_create});
  c.push_back(Command{{"enrollment", "group", "set-slot"},
                      "NAME primary|secondary (--ca CA | --cert FILE) [--json]",
                      "put a CA in a slot; --cert imports an external CA certificate first",
                      [](Poco::Util::OptionSet& s) {
                        add_option(s, "ca", "CA", "a registry CA");
                        add_option(s, "cert", "FILE",
                                   "a CA certificate (PEM/DER) to import as an external CA");
                        json_flag(s);
                      },
                      run_group_set_slot});
  c.push_back(simple({"enrollment", "group", "clear-slot"}, "NAME primary|secondary [--json]",
                     "empty a slot (not the last one: disable the group instead)",
                     run_group_clear_slot));
  c.push_back(simple(
      {"enrollment", "group", "disable"}, "NAME [--json]", "refuse the group's devices",
      [](Context& x) { return show_group(x, service(x).set_group_enabled(name_arg(x), false)); }));
  c.push_back(simple(
      {"enrollment", "group", "enable"}, "NAME [--json]", "accept the group's devices again",
      [](Context& x) { return show_group(x, service(x).set_group_enabled(name_arg(x), true)); }));
  c.push_back(simple({"enrollment", "group", "show"}, "NAME [--json]",
                     "show an enrollment group and its slots",
                     [](Context& x) { return show_group(x, service(x).group(name_arg(x))); }));
  c.push_back(Command{{"enrollment", "group", "list"},
                      "[--limit N] [--after NAME] [--json]",
                      "list enrollment groups, by name",
                      [](Poco::Util::OptionSet& s) {
                        add_paging_options(s, "default: all", "NAME");
                        json_flag(s);
                      },
                      run_group_list});
}

void credential_options(Poco::Util::OptionSet& s, bool secondary) {
  add_option(s, "cert", "FILE", "device certificate (PEM/DER) whose CN is the registration ID");
  add_option(s, "thumbprint", "HEX", "SHA-256 thumbprint (64 hex digits, ':' allowed)");
  if (secondary) {
    add_option(s, "secondary-cert", "FILE", "certificate for the secondary slot");
    add_option(s, "secondary-thumbprint", "HEX", "thumbprint for the secondary slot");
  }
  json_flag(s);
}

void add_individual_commands(std::vector<Command>& c) {
  c.push_back(Command{{"enrollment", "individual", "create"},
                      "ID (--cert FILE | --thumbprint HEX) [--secondary-cert FILE | "
                      "--secondary-thumbprint HEX] [--json]",
                      "create an individual enrollment trusting one device certificate",
                      [](Poco::Util::OptionSet& s) { credential_options(s, true); },
                      run_individual_create});
  c.push_back(Command{{"enrollment", "individual", "set-slot"},
                      "ID primary|secondary (--cert FILE | --thumbprint HEX) [--json]",
                      "put a certificate or thumbprint in a slot",
                      [](Poco::Util::OptionSet& s) { credential_options(s, false); },
                      run_individual_set_slot});
  c.push_back(
      simple({"enrollment", "individual", "clear-slot"}, "ID primary|secondary [--json]",
             "empty a slot (not the last one: disable the enrollment instead)", [](Context& x) {
               return show_individual(x, service(x).clear_individual_slot(id_arg(x), slot_arg(x)));
             }));
  c.push_back(
      simple({"enrollment", "individual", "disable"}, "ID [--json]",
             "refuse the device, even when an enabled group would accept it", [](Context& x) {
               return show_individual(x, service(x).set_individual_enabled(id_arg(x), false));
             }));
  c.push_back(simple({"enrollment", "individual", "enable"}, "ID [--json]",
                     "accept the device again", [](Context& x) {
                       return show_individual(x,
                                              service(x).set_individual_enabled(id_arg(x), true));
                     }));
  c.push_back(
      simple({"enrollment", "individual", "show"}, "ID [--json]", "show an individual enrollment",
             [](Context& x) { return show_individual(x, service(x).individual(id_arg(x))); }));
  c.push_back(Command{{"enrollment", "individual", "list"},
                      "[--limit N] [--after ID] [--json]",
                      "list individual enrollments, by registration ID",
                      [](Poco::Util::OptionSet& s) {
                        add_paging_options(s, "default: all", "ID");
                        json_flag(s);
                      },
                      run_individual_list});
}

}  // namespace

void add_enrollment_commands(std::vector<Command>& commands) {
  add_group_commands(commands);
  add_individual_commands(commands);
  commands.push_back(
      Command{{"device", "list"},
              "[--group G] [--lot L] [--limit N] [--after ID] [--connected] [--json]",
              "list devices and the certificate in each slot, or (--connected) "
              "the devices connected to the broker now",
              [](Poco::Util::OptionSet& s) {
                add_option(s, "group", "G", "devices whose chain leads to the group's slot CAs");
                add_option(s, "lot", "L", "devices of one manufacturing lot");
                add_paging_options(s, "default: all", "ID");
                add_flag(s, "connected",
                         "the devices connected to the broker now, with the "
                         "certificate each presented");
                json_flag(s);
              },
              run_device_list});
  commands.push_back(simple({"device", "show"}, "ID [--json]",
                            "show a device: slots with serial, expiry and state", run_device_show));
}

}  // namespace fleetsign::cli
