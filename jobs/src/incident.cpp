// Incident runs (incident.hpp): the plan, the job's phases before the rotation, and the close.
#include "fleetsign/jobs/incident.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <ctime>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/revocation.hpp"
#include "incident_records.hpp"

namespace fleetsign::jobs {

namespace {

using Poco::JSON::Object;
using namespace incident_records;

std::string stamp_day(const engine::Clock& clock) {
  const std::time_t t = static_cast<std::time_t>(clock.now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y%m%d", &tm);
  return buf;
}

// The policy's validity for a replacement CA, cut to what its issuer has left (less a day: the
// backdate and the clock). A replacement's issuer can be another replacement made a second
// earlier with the same validity, and a CA may not outlive its issuer.
int replacement_days(engine::Stores& stores, const policy::Policy& policy,
                     const engine::Clock& clock, const std::string& issuer) {
  const int days = policy.validity.intermediate_days;
  const auto rec = stores.find_ca(issuer);
  if (!rec) return days;
  const std::int64_t fits = (rec->not_after - clock.now()) / 86400 - 1;
  return fits >= 1 && fits < days ? static_cast<int>(fits) : days;
}

// The device's certificate in the scope (a slot's certificate of one of the CAs, of the lot or of
// the site).
std::optional<engine::CertRecord> scoped_cert(engine::Stores& stores, const engine::DeviceRecord& d,
                                              const std::string& kind, const std::string& scope,
                                              const std::set<std::string>& cas) {
  for (const auto* serial : {&d.primary_serial, &d.secondary_serial}) {
    if (serial->empty()) continue;
    auto c = stores.find_cert(*serial);
    if (!c || c->state != engine::CertState::kIssued) continue;
    if (kind == "ca" ? cas.count(c->ca_name) != 0
                     : (kind == "lot" ? c->lineage.lot : c->lineage.site) == scope) {
      return c;
    }
  }
  return std::nullopt;
}

// The pathLen of a CA certificate; nullopt when it has none (unlimited) or does not parse.
std::optional<int> path_len_of(const engine::CaRecord& ca) {
  const unsigned char* p = ca.cert_der.data();
  X509* cert = d2i_X509(nullptr, &p, static_cast<long>(ca.cert_der.size()));
  if (cert == nullptr) return std::nullopt;
  const long n = X509_get_pathlen(cert);
  X509_free(cert);
  return n >= 0 ? std::optional<int>(static_cast<int>(n)) : std::nullopt;
}

// The compromised CA and every CA of this registry below it that still works, parents first,
// each with its replacement's name and issuer. Replacements of the CAs below are named
// "{ca}-i{YYYYMMDD}"; one that exists must have the expected issuer.
std::vector<IncidentCa> plan_replacements(engine::Stores& stores, const engine::CaRecord& top,
                                          const std::string& top_replacement,
                                          const std::string& day) {
  const std::vector<engine::CaRecord> all = stores.list_cas();
  std::vector<const engine::CaRecord*> subtree{&top};
  std::vector<std::size_t> parent_of{0};  // index into subtree
  for (std::size_t i = 0; i < subtree.size(); ++i) {
    for (const auto& c : all) {
      if (c.parent == subtree[i]->name && c.name != top.name && c.revoked_at == 0 &&
          !engine::is_external(c)) {
        subtree.push_back(&c);
        parent_of.push_back(i);
      }
    }
  }
  std::vector<IncidentCa> out;
  for (std::size_t i = 0; i < subtree.size(); ++i) {
    const engine::CaRecord& c = *subtree[i];
    IncidentCa r;
    r.ca = c.name;
    r.replacement = i == 0 ? top_replacement : c.name + "-i" + day;
    r.issuer = i == 0 ? c.parent : out[parent_of[i]].replacement;
    r.path_len = path_len_of(c);
    if (!r.path_len) {
      // Unlimited: as many levels as the CAs below it use.
      int below = 0;
      for (std::size_t j = i + 1; j < subtree.size(); ++j) {
        int levels = 0;
        std::size_t k = j;
        while (k != 0 && k != i) {
          k = parent_of[k];
          ++levels;
        }
        if (k == i) below = std::max(below, levels);
      }
      r.path_len = below;
    }
    if (const auto existing = stores.find_ca(r.replacement)) {
      r.exists = true;
      if (existing->name == c.name) {
        throw Error(ErrorCode::kInvalidArgument, "the replacement cannot be the compromised CA");
      }
      if (i == 0) {
        r.issuer = existing->parent;  // named with --replacement-ca (or made by an earlier run)
      } else if (existing->parent != r.issuer) {
        throw Error(ErrorCode::kAlreadyExists,
                    "a CA named '" + r.replacement + "' exists with another issuer than '" +
                        r.issuer + "'; it cannot replace '" + c.name + "'");
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

IncidentPlan plan_incident(engine::Stores& stores, const policy::Policy& policy,
                           const engine::Clock& clock, const IncidentRequest& request) {
  (void)policy;
  if (request.scope_kind != "ca" && request.scope_kind != "lot" && request.scope_kind != "site") {
    throw Error(ErrorCode::kInvalidArgument,
                "an incident is for a CA, a lot or a site, not '" + request.scope_kind + "'");
  }
  if (request.scope.empty())
    throw Error(ErrorCode::kInvalidArgument, "the incident names no scope");
  // As `revoke` takes them (kReasons): "unspecified" says nothing to a relying party.
  if (std::find(std::begin(kReasons), std::end(kReasons), request.reason) == std::end(kReasons)) {
    throw Error(ErrorCode::kInvalidArgument,
                "--reason '" + request.reason +
                    "' is not one of keyCompromise, cACompromise, affiliationChanged, superseded, "
                    "cessationOfOperation");
  }
  IncidentPlan plan;
  plan.scope_kind = request.scope_kind;
  plan.scope = request.scope;
  plan.reason = request.reason;
  // Without a time from the operator: the end of this second. Certificates are recorded to the
  // second, so one recorded in this second, before the command ran, counts as recorded before the
  // compromise and is pinned (with `now`, a lot issued in the second of the incident was refused
  // as recorded after it, and its devices could never come back for their rotation).
  plan.compromised_at = request.compromised_at.value_or(clock.now() + 1);
  const engine::GroupIndex index = engine::GroupIndex::load(stores);
  engine::DeviceFilter filter;
  if (request.scope_kind == "ca") {
    if (request.reason == "keyCompromise") {
      throw Error(ErrorCode::kInvalidArgument,
                  "a CA's incident is cACompromise; keyCompromise is for devices' own keys "
                  "(--lot or --site)");
    }
    const auto ca = stores.find_ca(request.scope);
    if (!ca) throw Error(ErrorCode::kNotFound, "no CA '" + request.scope + "' in the registry");
    if (ca->parent.empty() || engine::is_external(*ca)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "CA '" + request.scope + "' is " + (ca->parent.empty() ? "a root" : "external") +
                      ": an incident replaces an intermediate of this registry");
    }
    plan.replacement_ca = request.replacement_ca.empty() ? request.scope + "-i" + stamp_day(clock)
                                                         : request.replacement_ca;
    if (const auto r = stores.find_ca(plan.replacement_ca)) {
      if (r->parent != ca->parent && request.replacement_ca.empty()) {
        throw Error(ErrorCode::kAlreadyExists, "a CA named '" + plan.replacement_ca +
                                                   "' exists with another issuer; name one with "
                                                   "--replacement-ca");
      }
      check_named_replacement(stores, *ca, *r);
    }
    plan.replacements = plan_replacements(stores, *ca, plan.replacement_ca, stamp_day(clock));
    plan.replacement_exists = plan.replacements.front().exists;
    for (const auto& g : stores.list_groups()) {
      for (const auto& r : plan.replacements) {
        for (const auto* held : {&g.primary_ca, &g.secondary_ca}) {
          if (*held != r.ca) continue;
          plan.slots.push_back(
              {g.name, held == &g.primary_ca ? "primary" : "secondary", r.ca, r.replacement});
        }
      }
    }
    for (const auto& s : plan.slots) {
      if (s.ca == ca->name) {
        plan.group = s.group;
        plan.slot = s.slot;
        break;
      }
    }
    for (const auto& r : plan.replacements) filter.ca_names.push_back(r.ca);
  } else if (request.scope_kind == "lot") {
    filter.lot = request.scope;
  }
  std::set<std::string> scope_cas;
  for (const auto& r : plan.replacements) scope_cas.insert(r.ca);
  // What the close will revoke: everything issued so far; with the incident already open, by the
  // close's own rule (the job that opened it, and the one that a start now continues).
  const auto open = open_incident_for(stores, request.scope_kind, request.scope);
  plan.continues = continuing_job(stores, request);
  const std::vector<std::string> jobs{open ? open->job_id : std::string(),
                                      open ? plan.continues : std::string()};
  const std::int64_t until = open ? open->opened_at : INT64_MAX;
  if (request.scope_kind == "ca") {
    for (const auto& c : scope_cas) {
      plan.certificates +=
          static_cast<std::int64_t>(revoked_at_close(stores, "ca", c, jobs, until).size());
    }
  } else {
    plan.certificates = static_cast<std::int64_t>(
        revoked_at_close(stores, request.scope_kind, request.scope, jobs, until).size());
  }

  std::unordered_set<std::string> connected;
  for (const auto& s : stores.connected_devices()) connected.insert(s.device_id);
  const auto busy = held_devices(stores);
  // The broker admits a certificate of the scope only when it was recorded before the compromise
  // (a lot's or site's replacements aside): a device whose certificate was recorded at or after
  // it can never connect for its rotation.
  const std::int64_t pin_from = open ? open->compromised_at : plan.compromised_at;
  const auto refused_by_pin = [&](const engine::CertRecord& c) {
    if (c.created_at < pin_from) return false;
    if (request.scope_kind == "ca") return true;
    const bool replacement = c.created_at > (open ? open->opened_at : clock.now()) ||
                             std::find(jobs.begin(), jobs.end(), c.batch_id) != jobs.end();
    return !replacement;
  };
  for (const auto& d : stores.list_devices(filter)) {
    const auto cert = scoped_cert(stores, d, request.scope_kind, request.scope, scope_cas);
    if (!cert) continue;
    IncidentDevice p;
    p.device_id = d.registration_id;
    p.lot = d.lot;
    p.serial = cert->serial;
    p.target_slot = cert->serial == d.primary_serial ? "secondary" : "primary";
    p.connected = connected.count(d.registration_id) != 0;
    if (const auto* g = index.group_of_ca(cert->ca_name)) p.group = g->name;
    p.action = "rotate";
    if (request.reason == "keyCompromise") {
      p.action = "factory";
      p.why =
          "factory re-provisioning: its own key is compromised (keyCompromise), so it cannot "
          "be rotated over the network";
    } else if (refused_by_pin(*cert)) {
      p.action = "factory";
      p.why = "factory re-provisioning: its certificate was recorded at " +
              engine::iso8601(cert->created_at) + ", not before the compromise at " +
              engine::iso8601(pin_from) +
              ", so the broker refuses it and it cannot be rotated over the network";
    } else if (d.status != "enabled") {
      p.action = "conflict";
      p.why = "the device is " + d.status;
    } else if (!d.primary_serial.empty() && !d.secondary_serial.empty()) {
      p.action = "conflict";
      p.why = "both slots hold certificates: retire one first";
    } else if (const auto b = busy.find(d.registration_id); b != busy.end()) {
      p.action = "conflict";
      p.why = "the device is in job " + b->second + ", which has not settled it yet";
    }
    (p.action == "rotate"    ? plan.rotate
     : p.action == "factory" ? plan.factory
                             : plan.conflicts) += 1;
    plan.connected += p.connected ? 1 : 0;
    ++plan.per_lot[p.lot.empty() ? "(none)" : p.lot];
    ++plan.per_group[p.group.empty() ? "(none)" : p.group];
    plan.devices.push_back(std::move(p));
  }
  return plan;
}

IncidentStart start_incident(engine::Stores& stores, engine::CaService& cas,
                             const policy::Policy& policy, const engine::Clock& clock,
                             const IncidentRequest& request) {
  IncidentStart out;
  for (const auto& job : stores.list_jobs(engine::ListPage{})) {
    if (job.kind == "incident" && job.state != "finished" && job.state != "canceled" &&
        (job.report_json.empty() || job.report_json == "{}")) {
      // A start killed between recording the job and its report: that job never opened
      // anything, and its tasks would hold the devices; it is canceled, this run records anew.
      stores.set_job_state(job.id, "canceled", clock.now());
    }
  }
  // An earlier run of the same request that recorded its job: continue that one.
  out.job_id = continuing_job(stores, request);
  out.resumed = !out.job_id.empty();
  if (out.job_id.empty()) {
    // An incident left open by a canceled or aborted job is taken over by the new job (its
    // devices stay pinned meanwhile); advance_incident finds it instead of opening another.
    out.plan = plan_incident(stores, policy, clock, request);
    RolloverParams params = request.params;
    params.kind = "incident";
    params.selection = Selection{};
    // A lot or site: each device's own CA. A CA: each device's CA's replacement.
    for (const auto& r : out.plan.replacements) params.ca_map[r.ca] = r.replacement;
    RolloverPlan tasks;
    Poco::JSON::Array factory;
    for (const auto& d : out.plan.devices) {
      PlannedDevice p;
      p.device_id = d.device_id;
      p.lot = d.lot;
      p.group = d.group;
      p.old_serial = d.serial;
      p.target_slot = d.target_slot;
      p.conflict = d.action == "rotate" ? "" : d.why;
      params.selection.devices.push_back(d.device_id);
      if (d.action == "factory") factory.add(d.device_id);
      tasks.devices.push_back(std::move(p));
    }
    std::stable_sort(tasks.devices.begin(), tasks.devices.end(), [](const auto& a, const auto& b) {
      return a.conflict.empty() && !b.conflict.empty();
    });
    out.job_id = create_job(stores, clock, params, tasks);
    Object::Ptr r = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
    r->set("scopeKind", request.scope_kind);
    r->set("scope", request.scope);
    r->set("reason", request.reason);
    r->set("compromisedAt", out.plan.compromised_at);
    r->set("group", out.plan.group);
    r->set("slot", out.plan.slot);
    r->set("replacementCa", out.plan.replacement_ca);
    Poco::JSON::Array replacements, slots;
    for (const auto& c : out.plan.replacements) {
      Object::Ptr o = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
      o->set("ca", c.ca);
      o->set("replacement", c.replacement);
      o->set("issuer", c.issuer);
      o->set("pathLen", c.path_len.value_or(-1));
      replacements.add(o);
    }
    for (const auto& s : out.plan.slots) {
      Object::Ptr o = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
      o->set("group", s.group);
      o->set("slot", s.slot);
      o->set("ca", s.ca);
      o->set("replacement", s.replacement);
      slots.add(o);
    }
    r->set("replacements", replacements);
    r->set("slots", slots);
    r->set("key", std::string(policy::key_algorithm_name(request.key)));
    r->set("factory", factory);
    set_phase(stores, out.job_id, r, "open");
  }
  advance_incident(stores, cas, policy, clock, out.job_id);
  const auto r = report_of(job_of(stores, out.job_id));
  out.incident_id = r->optValue<std::int64_t>("incident", 0);
  return out;
}

namespace {

// The report's subtree and slots; a report written before there were arrays holds one CA.
struct Recorded {
  std::vector<IncidentCa> cas;
  std::vector<IncidentSlot> slots;
};

Recorded recorded_of(const Object& r) {
  Recorded out;
  const std::string scope = r.getValue<std::string>("scope");
  if (const auto a = r.getArray("replacements")) {
    for (std::size_t i = 0; i < a->size(); ++i) {
      const auto o = a->getObject(i);
      IncidentCa c;
      c.ca = o->getValue<std::string>("ca");
      c.replacement = o->getValue<std::string>("replacement");
      c.issuer = o->getValue<std::string>("issuer");
      if (const int n = o->optValue<int>("pathLen", -1); n >= 0) c.path_len = n;
      out.cas.push_back(std::move(c));
    }
  } else {
    IncidentCa c;
    c.ca = scope;
    c.replacement = r.optValue<std::string>("replacementCa", "");
    out.cas.push_back(std::move(c));
  }
  if (const auto a = r.getArray("slots")) {
    for (std::size_t i = 0; i < a->size(); ++i) {
      const auto o = a->getObject(i);
      out.slots.push_back({o->getValue<std::string>("group"), o->getValue<std::string>("slot"),
                           o->getValue<std::string>("ca"),
                           o->getValue<std::string>("replacement")});
    }
  } else if (const std::string group = r.optValue<std::string>("group", ""); !group.empty()) {
    out.slots.push_back({group, r.optValue<std::string>("slot", ""), scope,
                         r.optValue<std::string>("replacementCa", "")});
  }
  return out;
}

// New CRLs from the CAs that signed `serials` (after they were revoked).
void refresh_crls_of(engine::Stores& stores, engine::CaService& cas, const policy::Policy& policy,
                     const engine::Clock& clock, const std::vector<std::string>& serials) {
  std::set<std::string> names;
  for (const auto& serial : serials) {
    if (auto cert = stores.find_cert(serial)) names.insert(cert->ca_name);
  }
  const std::vector<std::string> list(names.begin(), names.end());
  engine::refresh_crls(stores, cas, policy.crl, clock, list);
}

}  // namespace

void advance_incident(engine::Stores& stores, engine::CaService& cas, const policy::Policy& policy,
                      const engine::Clock& clock, const std::string& job_id) {
  const auto job = job_of(stores, job_id);
  auto r = report_of(job);
  const std::string kind = r->getValue<std::string>("scopeKind");
  const std::string scope = r->getValue<std::string>("scope");
  const std::string reason = r->getValue<std::string>("reason");
  const Recorded recorded = kind == "ca" ? recorded_of(*r) : Recorded{};
  std::string phase = r->optValue<std::string>("phase", "open");
  engine::EnrollmentService enrollments(stores, policy, clock);

  if (phase == "open") {
    // 1. Cut off: the incident opens (the broker re-checks every live session: those under the
    //    scope come back pinned, rotation only), the CA is revoked and leaves its slot.
    auto incident = open_incident_for(stores, kind, scope);
    std::int64_t id = incident ? incident->id : 0;
    if (!incident) {
      engine::Incident i;
      i.scope_kind = kind;
      i.scope = scope;
      i.reason = reason;
      i.compromised_at = r->getValue<std::int64_t>("compromisedAt");
      i.opened_at = clock.now();
      i.job_id = job_id;
      id = stores.open_incident(i);
    }
    r->set("incident", id);
    stores.set_job_report(job_id, report_text(*r));
    if (kind == "ca") {
      revoke_ca_record(stores, scope, reason, clock.now());
      // The issuer's CRL lists the compromised CA from now on.
      const std::string parent = cas.get(scope).parent;
      if (!parent.empty()) {
        engine::refresh_crls(stores, cas, policy.crl, clock, std::span(&parent, 1));
      }
      // It and the CAs below it leave their slots (their devices are pinned meanwhile).
      for (const auto& s : recorded.slots) {
        auto g = enrollments.group(s.group);
        std::string& held = s.slot == "primary" ? g.primary_ca : g.secondary_ca;
        if (held == s.ca) {
          held.clear();
          stores.save_group(g, "enrollment.group.incident", false);
        }
      }
    } else if (reason == "keyCompromise") {
      // The devices' own keys: their certificates of the scope are revoked at once.
      std::vector<std::string> serials;
      for (const auto& t : stores.job_tasks(job_id, "conflict")) {
        if (!t.old_serial.empty()) serials.push_back(t.old_serial);
      }
      if (!serials.empty()) {
        // As `revoke` does: a device left with no working certificate gets a disabled
        // individual enrollment (DPS reads no CRL: its group would still admit the key).
        revoke_serials(stores, clock, serials, "keyCompromise", "incident " + job_id);
        refresh_crls_of(stores, cas, policy, clock, serials);
      }
    }
    phase = "revoked";
    set_phase(stores, job_id, r, phase);
  }
  if (phase == "revoked") {
    // 2. The replacement, made in the token under the compromised CA's issuer (or the one
    //    named), into the slot the compromised CA left.
    if (kind == "ca") {
      // Parents first: each replacement's issuer exists when it is made.
      for (const auto& c : recorded.cas) {
        if (!stores.find_ca(c.replacement)) {
          const engine::CaRecord old = cas.get(c.ca);
          engine::CaSpec spec;
          spec.name = c.replacement;
          spec.issuer = c.issuer.empty() ? old.parent : c.issuer;
          // Not the old subject: the decision tells the two apart by the leaf's issuer name.
          spec.subject = old.subject + "/OU=incident " + stamp_day(clock);
          auto key = policy::parse_key_algorithm(r->optValue<std::string>("key", "ec-p256"));
          spec.key = key.value_or(policy::KeyAlgorithm::kEcP256);
          spec.path_len = c.path_len;
          spec.days = replacement_days(stores, policy, clock, spec.issuer);
          cas.create_intermediate(spec);
        }
        // Its first CRL before any device connects under it: the broker refuses a device whose
        // issuer has no CRL in its CRL file.
        if (!stores.latest_crl(c.replacement)) {
          engine::refresh_crls(stores, cas, policy.crl, clock, std::span(&c.replacement, 1));
        }
      }
      for (const auto& s : recorded.slots) {
        const auto g = enrollments.group(s.group);
        const engine::Slot slot =
            s.slot == "primary" ? engine::Slot::kPrimary : engine::Slot::kSecondary;
        if ((slot == engine::Slot::kPrimary ? g.primary_ca : g.secondary_ca) != s.replacement) {
          enrollments.set_group_slot(s.group, slot, s.replacement);
        }
      }
    }
    set_phase(stores, job_id, r, "rotating");
  }
}

void finish_incident(engine::Stores& stores, engine::CaService& cas, const policy::Policy& policy,
                     const engine::Clock& clock, const std::string& job_id) {
  const auto job = job_of(stores, job_id);
  auto r = report_of(job);
  if (r->optValue<std::string>("phase", "") == "closed") return;
  const std::string kind = r->getValue<std::string>("scopeKind");
  const std::string scope = r->getValue<std::string>("scope");
  const std::int64_t id = r->optValue<std::int64_t>("incident", 0);
  const auto incident = stores.find_incident(id);
  const std::int64_t opened = incident ? incident->opened_at : job.created_at;
  // Everything of the scope recorded until the incident opened that is still valid: revoked,
  // less the job's own replacements. Certificates are recorded to the second, so one recorded in
  // the second the incident opened is revoked too (by time alone it stayed valid), and the job's
  // batch, not the time, tells a replacement made in that second. A CA's scope is its subtree:
  // the CAs below it are revoked too (their issuer's key is the stolen one), each listed by its
  // issuer's CRL.
  const std::vector<std::string> jobs{incident ? incident->job_id : job_id, job_id};
  std::vector<std::string> serials;
  std::vector<std::string> crl_issuers;
  if (kind == "ca") {
    const Recorded recorded = recorded_of(*r);
    for (const auto& c : recorded.cas) {
      auto some = revoked_at_close(stores, "ca", c.ca, jobs, opened);
      serials.insert(serials.end(), some.begin(), some.end());
      if (c.ca == scope) continue;
      const auto rec = stores.find_ca(c.ca);
      if (rec && rec->revoked_at == 0) {
        stores.revoke_ca(c.ca, "cACompromise", clock.now());
        crl_issuers.push_back(rec->parent);
      }
    }
  } else {
    serials = revoked_at_close(stores, kind, scope, jobs, opened);
  }
  const std::string reason = r->getValue<std::string>("reason");
  const std::int64_t revoked =
      serials.empty()
          ? 0
          : revoke_serials(stores, clock, serials, kind == "ca" ? "cACompromise" : reason,
                           "incident " + job_id + " (close)")
                .certificates_revoked;
  // Every revocation is followed by a new CRL from the CAs that signed what was revoked.
  if (revoked > 0) refresh_crls_of(stores, cas, policy, clock, serials);
  if (!crl_issuers.empty()) engine::refresh_crls(stores, cas, policy.crl, clock, crl_issuers);
  if (id != 0) stores.close_incident(id, clock.now());
  r->set("revokedAtClose", revoked);
  set_phase(stores, job_id, r, "closed");
}

void revoke_ca_record(engine::Stores& stores, const std::string& ca, const std::string& reason,
                      std::int64_t at) {
  const auto incident = open_incident_for(stores, "ca", ca);
  if (!incident) {
    throw Error(ErrorCode::kNotFound, "no incident is open for CA '" + ca + "' to revoke it");
  }
  // The CA's own record (its issuer's CRL lists it from now on), then the incident's mark; both
  // are idempotent, so a run killed between them completes both when it runs again.
  stores.revoke_ca(ca, reason, at);
  stores.mark_incident_ca_revoked(incident->id, at);
}

}  // namespace fleetsign::jobs
