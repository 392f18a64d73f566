// Revocation runs: the plan and its execution (revocation.hpp).
#include "fleetsign/jobs/revocation.hpp"

#include <algorithm>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::jobs {

namespace {

constexpr std::size_t kChunkCertificates = 1000;  // certificates per transaction

// The CA and every CA below it, in registry order.
std::vector<std::string> ca_subtree(const std::vector<engine::CaRecord>& cas,
                                    const std::string& root) {
  std::unordered_set<std::string> in{root};
  std::vector<std::string> out{root};
  for (bool grew = true; grew;) {  // registry order lists parents first, but imports may not
    grew = false;
    for (const auto& ca : cas) {
      if (!ca.parent.empty() && in.count(ca.parent) != 0 && in.insert(ca.name).second) {
        out.push_back(ca.name);
        grew = true;
      }
    }
  }
  return out;
}

engine::CertQuery query_for(const RevocationSelector& s, const std::vector<std::string>& cas) {
  engine::CertQuery q;
  if (s.kind == "serial") q.serial = s.value;
  if (s.kind == "device") q.device_id = s.value;
  if (s.kind == "ca") q.ca_names = cas;
  if (s.kind == "lot") q.lot = s.value;
  if (s.kind == "batch") q.batch_id = s.value;
  if (s.kind == "site") q.site = s.value;
  if (s.kind == "line") q.line = s.value;
  if (s.kind == "key-sha256") q.key_sha256 = s.value;
  if (s.kind == "issued-between") {
    q.issued_from = s.from;
    q.issued_to = s.to;
  }
  return q;
}

// A CA works for a group when neither it nor an ancestor is revoked (or about to be) and it has
// not expired.
bool ca_works(const engine::GroupIndex& index, const std::string& name,
              const std::unordered_set<std::string>& revoked, std::int64_t now) {
  for (const engine::CaRecord* ca = index.find_ca(name); ca != nullptr;
       ca = ca->parent.empty() ? nullptr : index.find_ca(ca->parent)) {
    if (revoked.count(ca->name) != 0 || ca->not_after <= now) return false;
  }
  return index.find_ca(name) != nullptr;
}

void plan_groups(engine::Stores& stores, const engine::GroupIndex& index, RevocationPlan& plan) {
  std::unordered_set<std::string> revoked(plan.cas_revoked.begin(), plan.cas_revoked.end());
  for (const auto& name : stores.revoked_ca_names()) revoked.insert(name);
  const std::unordered_set<std::string> now_revoked(plan.cas_revoked.begin(),
                                                    plan.cas_revoked.end());
  for (const auto& g : index.groups()) {
    GroupChange change;
    change.group = g.name;
    bool working = false;
    const std::pair<const char*, std::string> slots[] = {{"primary", g.primary_ca},
                                                         {"secondary", g.secondary_ca}};
    for (const auto& [slot, ca] : slots) {
      if (ca.empty()) continue;
      if (now_revoked.count(ca) != 0) change.leave_slots.push_back(slot);
      working = working || ca_works(index, ca, revoked, plan.at);
    }
    if (change.leave_slots.empty()) continue;  // only groups that trusted a CA revoked now
    if (!working) {
      if (!g.enabled) continue;  // already disabled: nothing to tell the cloud
      change.disable = true;     // its slots stay: the export tells the cloud to disable it
      change.leave_slots.clear();
    }
    if (!change.leave_slots.empty() || change.disable) plan.group_changes.push_back(change);
  }
}

// Per device: what is left after the plan, the enrollment to disable, the replacement.
void plan_devices(engine::Stores& stores, const engine::GroupIndex& index, RevocationPlan& plan) {
  std::unordered_map<std::string, std::vector<const engine::RevocableCert*>> by_device;
  std::unordered_set<std::string> serials;
  for (const auto& c : plan.to_revoke) {
    by_device[c.device_id].push_back(&c);
    serials.insert(c.serial);
  }
  std::unordered_map<std::string, std::string> session_serial;
  for (const auto& s : stores.connected_devices()) session_serial[s.device_id] = s.cert_serial;
  for (const auto& id : plan.devices) {
    const auto& certs = by_device[id];
    const engine::RevocableCert& newest = *certs.back();
    const engine::EnrollmentGroup* group = index.group_of_ca(newest.ca_name);
    ++plan.devices_by_group[group ? group->name : "(no group)"];
    ++plan.devices_by_lot[newest.lot.empty() ? "(no lot)" : newest.lot];
    ++plan.devices_by_site[newest.site.empty() ? "(no site)" : newest.site];
    if (auto s = session_serial.find(id); s != session_serial.end()) {
      ++plan.connected_affected;
      if (serials.count(s->second) != 0) plan.connected_dropped.push_back(id);
    }
    bool working = false;
    if (const auto dev = stores.find_device(id)) {
      const std::pair<std::string, std::int64_t> slots[] = {
          {dev->primary_serial, dev->primary_not_after},
          {dev->secondary_serial, dev->secondary_not_after}};
      for (const auto& [serial, not_after] : slots) {
        working = working || (!serial.empty() && serials.count(serial) == 0 && not_after > plan.at);
      }
    }
    if (!working) {
      const auto ie = stores.find_individual_slots(id);
      if (group != nullptr || (ie && ie->enabled)) {
        engine::IndividualEnrollment disabled;
        disabled.registration_id = id;
        disabled.enabled = false;
        if (const auto rec = stores.find_cert(newest.serial)) disabled.primary_cert = rec->der;
        disabled.primary_sha256 = newest.sha256;
        plan.disable_enrollments.push_back(std::move(disabled));
      }
    }
    if (plan.reason == "keyCompromise") {
      plan.reprovision.push_back(id);
    } else if (plan.reason == "cessationOfOperation") {
      plan.retire.push_back(id);
    } else {
      (working ? plan.rotate_now : plan.rotate_incident).push_back(id);
    }
  }
}

// Groups whose every device certificate is in the plan.
void plan_empty_groups(engine::Stores& stores, const engine::GroupIndex& index,
                       RevocationPlan& plan) {
  std::unordered_set<std::string> serials;
  for (const auto& c : plan.to_revoke) serials.insert(c.serial);
  for (const auto& [group, count] : plan.devices_by_group) {
    if (group == "(no group)") continue;
    engine::DeviceFilter filter;
    filter.ca_names = index.cas_of_group(group);
    bool left = false;
    for (const auto& d : stores.list_devices(filter)) {
      for (const std::string* s : {&d.primary_serial, &d.secondary_serial}) {
        left = left || (!s->empty() && serials.count(*s) == 0);
      }
      if (left) break;
    }
    if (!left) plan.groups_without_devices.push_back(group);
  }
}

// A device's certificates together (one chunk each), oldest first; the plan's devices and the
// CAs that issued what it revokes.
void order_to_revoke(RevocationPlan& plan, const std::set<std::string>& devices,
                     const std::set<std::string>& issuers) {
  std::stable_sort(plan.to_revoke.begin(), plan.to_revoke.end(), [](const auto& a, const auto& b) {
    return a.device_id != b.device_id ? a.device_id < b.device_id : a.created_at < b.created_at;
  });
  plan.devices.assign(devices.begin(), devices.end());
  plan.cas_affected.assign(issuers.begin(), issuers.end());
}

}  // namespace

RevocationPlan plan_revocation(engine::Stores& stores, const engine::Clock& clock,
                               const RevocationSelector& selector, const std::string& reason) {
  RevocationPlan plan;
  plan.selector = selector;
  plan.reason = reason;
  plan.at = clock.now();
  const auto cas = stores.list_cas();
  std::vector<std::string> ca_names;
  if (selector.kind == "ca") {
    if (!stores.find_ca(selector.value)) {
      throw Error(ErrorCode::kNotFound,
                  "--ca '" + selector.value + "': no such CA in the registry");
    }
    ca_names = ca_subtree(cas, selector.value);
    const auto already = stores.revoked_ca_names();
    for (const auto& n : ca_names) {
      if (std::find(already.begin(), already.end(), n) == already.end()) {
        plan.cas_revoked.push_back(n);
      }
    }
  }
  if (selector.kind == "key-sha256") {
    // A CA's own key: revoking the CA is `revoke --ca`, which covers everything under it and
    // tells the groups; a key-hash run would block the key and leave the CA signing with it.
    for (const auto& ca : cas) {
      if (ca.revoked_at != 0 || engine::key_sha256_of_cert(ca.cert_der) != selector.value) {
        continue;
      }
      throw Error(ErrorCode::kInvalidArgument,
                  "--key-sha256 " + selector.value + " is the key of CA '" + ca.name +
                      "': revoke the CA and everything under it with `fleetsign revoke --ca " +
                      ca.name +
                      " --reason cACompromise` (or run an incident: `fleetsign incident "
                      "start --ca " +
                      ca.name + " --reason cACompromise`)");
    }
  }
  std::set<std::string> devices, issuers, revoked_keys;
  for (auto& c : stores.select_certs(query_for(selector, ca_names))) {
    if (c.state == engine::CertState::kRevoked) {
      ++plan.already_revoked;
      // Revoked before for another reason, its key now known compromised: the key is blocked,
      // and its CRL entry says keyCompromise from now on (relying parties treat it apart).
      if (!c.key_sha256.empty()) revoked_keys.insert(c.key_sha256);
      if (reason == "keyCompromise" && c.revocation_reason != reason) {
        plan.reason_raised.push_back(std::move(c));
      }
      continue;
    }
    devices.insert(c.device_id);
    issuers.insert(c.ca_name);
    plan.to_revoke.push_back(std::move(c));
  }
  order_to_revoke(plan, devices, issuers);

  const auto index = engine::GroupIndex::load(stores);
  plan_devices(stores, index, plan);
  plan_groups(stores, index, plan);
  plan_empty_groups(stores, index, plan);
  if (reason == "keyCompromise") {
    const auto blocked = stores.blocked_key_hashes();
    std::set<std::string> keys(blocked.begin(), blocked.end()), fresh;
    for (const auto& c : plan.to_revoke) {
      if (!c.key_sha256.empty() && keys.count(c.key_sha256) == 0) fresh.insert(c.key_sha256);
    }
    for (const auto& k : revoked_keys) {
      if (keys.count(k) == 0) fresh.insert(k);
    }
    if (selector.kind == "key-sha256" && keys.count(selector.value) == 0) {
      fresh.insert(selector.value);
    }
    plan.keys_to_block.assign(fresh.begin(), fresh.end());
  }
  return plan;
}

RevocationOutcome execute_revocation(
    engine::Stores& stores, const RevocationPlan& plan,
    const std::function<void(std::int64_t, std::int64_t)>& progress) {
  RevocationOutcome out;
  std::unordered_map<std::string, const engine::IndividualEnrollment*> disable;
  for (const auto& ie : plan.disable_enrollments) disable[ie.registration_id] = &ie;
  const bool block = plan.reason == "keyCompromise";
  const std::int64_t total = static_cast<std::int64_t>(plan.to_revoke.size());
  // 1. Device certificates, a device's certificates in one chunk.
  for (std::size_t begin = 0; begin < plan.to_revoke.size();) {
    engine::RevocationChunk chunk;
    chunk.reason = plan.reason;
    chunk.at = plan.at;
    chunk.block_keys = block;
    std::size_t end = begin;
    while (end < plan.to_revoke.size() &&
           (end - begin < kChunkCertificates ||
            plan.to_revoke[end].device_id == plan.to_revoke[end - 1].device_id)) {
      const auto& c = plan.to_revoke[end];
      chunk.serials.push_back(c.serial);
      if (end + 1 == plan.to_revoke.size() || plan.to_revoke[end + 1].device_id != c.device_id) {
        if (auto d = disable.find(c.device_id); d != disable.end()) {
          chunk.disable.push_back(*d->second);
        }
      }
      ++end;
    }
    out.certificates_revoked += stores.apply_revocation(chunk);
    out.enrollments_disabled += static_cast<std::int64_t>(chunk.disable.size());
    begin = end;
    if (progress) progress(static_cast<std::int64_t>(end), total);
  }
  // 1b. Revoked before for another reason: the reason raised to keyCompromise, their keys blocked.
  for (std::size_t begin = 0; begin < plan.reason_raised.size(); begin += kChunkCertificates) {
    engine::RevocationChunk chunk;
    chunk.reason = plan.reason;
    chunk.at = plan.at;
    chunk.block_keys = block;
    const std::size_t end = std::min(plan.reason_raised.size(), begin + kChunkCertificates);
    for (std::size_t i = begin; i < end; ++i) chunk.serials.push_back(plan.reason_raised[i].serial);
    stores.apply_revocation(chunk);
  }
  out.reasons_raised = static_cast<std::int64_t>(plan.reason_raised.size());
  // 2. Keys named by the operator that no certificate carried (key-sha256 with no match).
  std::vector<engine::BlockedKey> keys;
  for (const auto& k : plan.keys_to_block) {
    keys.push_back(
        engine::BlockedKey{k, plan.reason, "revoke " + plan.selector.describe(), plan.at});
  }
  if (block && !keys.empty()) stores.add_blocked_keys(keys);  // those blocked by chunks are kept
  out.keys_blocked = static_cast<std::int64_t>(plan.keys_to_block.size());
  // 3. CAs, then the groups that trusted them.
  for (const auto& ca : plan.cas_revoked) {
    out.cas_revoked += stores.revoke_ca(ca, plan.reason, plan.at) ? 1 : 0;
  }
  for (const auto& change : plan.group_changes) {
    auto g = stores.find_group(change.group);
    if (!g) continue;
    for (const auto& slot : change.leave_slots) {
      (slot == std::string("primary") ? g->primary_ca : g->secondary_ca).clear();
    }
    if (change.disable) g->enabled = false;
    stores.save_group(
        *g, change.disable ? "enrollment.group.disable" : "enrollment.group.clear-slot", false);
    ++out.groups_changed;
  }
  // 4. One audit row for the run: what was asked and what it did.
  stores.audit("revoke.run", plan.selector.describe(),
               engine::json_object({{"reason", plan.reason},
                                    {"certificates", out.certificates_revoked},
                                    {"reasons_raised", out.reasons_raised},
                                    {"devices", static_cast<std::int64_t>(plan.devices.size())},
                                    {"enrollments_disabled", out.enrollments_disabled},
                                    {"keys_blocked", out.keys_blocked},
                                    {"cas_revoked", out.cas_revoked},
                                    {"groups_changed", out.groups_changed}}));
  // 5. The CRLs that list something new.
  std::set<std::string> crls(plan.cas_affected.begin(), plan.cas_affected.end());
  for (const auto& c : plan.reason_raised) crls.insert(c.ca_name);
  for (const auto& ca : plan.cas_revoked) {
    if (const auto rec = stores.find_ca(ca); rec && !rec->parent.empty()) crls.insert(rec->parent);
  }
  out.crls_due.assign(crls.begin(), crls.end());
  return out;
}

RevocationOutcome revoke_serials(engine::Stores& stores, const engine::Clock& clock,
                                 std::span<const std::string> serials, const std::string& reason,
                                 const std::string& what) {
  RevocationPlan plan;
  plan.selector.kind = "run";  // describe(): `what` as it stands
  plan.selector.value = what;
  plan.reason = reason;
  plan.at = clock.now();
  std::set<std::string> devices, issuers;
  for (const auto& serial : serials) {
    engine::CertQuery q;
    q.serial = serial;
    for (auto& c : stores.select_certs(q)) {
      if (c.state != engine::CertState::kIssued) continue;
      devices.insert(c.device_id);
      issuers.insert(c.ca_name);
      plan.to_revoke.push_back(std::move(c));
    }
  }
  order_to_revoke(plan, devices, issuers);
  if (plan.to_revoke.empty()) return {};
  plan_devices(stores, engine::GroupIndex::load(stores), plan);
  if (reason == "keyCompromise") {  // counted in the run's audit row (the chunks block them)
    const auto blocked = stores.blocked_key_hashes();
    std::set<std::string> keys(blocked.begin(), blocked.end()), fresh;
    for (const auto& c : plan.to_revoke) {
      if (!c.key_sha256.empty() && keys.count(c.key_sha256) == 0) fresh.insert(c.key_sha256);
    }
    plan.keys_to_block.assign(fresh.begin(), fresh.end());
  }
  return execute_revocation(stores, plan);
}

}  // namespace fleetsign::jobs
