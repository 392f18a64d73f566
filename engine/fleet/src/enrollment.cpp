#include "fleetsign/engine/enrollment.hpp"

#include <openssl/err.h>

#include <algorithm>
#include <cctype>
#include <set>

#include "fleetsign/engine/ca_constraints.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/operators.hpp"
#include "fleetsign/error.hpp"
#include "ossl.hpp"

namespace fleetsign::engine {

namespace {

// Group names follow DPS's enrollmentGroupId alphabet, which is also ours for device IDs plus
// '.' and '_'.
const policy::DeviceIdRule kGroupNameRule{"._", 128};
constexpr std::size_t kMaxChainDepth = 16;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// "external-ec-p256", "external-rsa-2048", … from the certificate's public key.
std::string external_key_type(X509* cert) {
  unsigned char* spki = nullptr;
  const int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &spki);
  const policy::KeyDescription key =
      len > 0 ? describe_spki(ByteView(spki, static_cast<std::size_t>(len)))
              : policy::KeyDescription{};
  OPENSSL_free(spki);
  switch (key.kind) {
    case policy::KeyDescription::Kind::kEc: {
      std::string curve = lower(key.curve);
      curve.erase(std::remove(curve.begin(), curve.end(), '-'), curve.end());
      return "external-ec-" + curve;
    }
    case policy::KeyDescription::Kind::kRsa:
      return "external-rsa-" + std::to_string(key.bits);
    case policy::KeyDescription::Kind::kOther:
      break;
  }
  return "external-other";
}

bool is_ca_certificate(X509* cert) {
  const std::uint32_t flags = X509_get_extension_flags(cert);
  return (flags & EXFLAG_BCONS) != 0 && (flags & EXFLAG_CA) != 0;
}

// The registry CA that issued `cert`: its subject is cert's issuer and its key verifies cert.
std::string find_parent(const std::vector<CaRecord>& cas, X509* cert,
                        const std::string& own_sha256) {
  for (const auto& ca : cas) {
    if (ca.sha256 == own_sha256) {
      continue;
    }
    auto ca_cert = ossl::from_der(ca.cert_der);
    if (ca_cert &&
        X509_NAME_cmp(X509_get_subject_name(ca_cert.get()), X509_get_issuer_name(cert)) == 0 &&
        X509_verify(cert, X509_get0_pubkey(ca_cert.get())) == 1) {
      return ca.name;
    }
    ERR_clear_error();
  }
  return "";
}

std::string& slot_ref(EnrollmentGroup& g, Slot slot) {
  return slot == Slot::kPrimary ? g.primary_ca : g.secondary_ca;
}

const std::string& other_slot_ref(const EnrollmentGroup& g, Slot slot) {
  return slot == Slot::kPrimary ? g.secondary_ca : g.primary_ca;
}

void put(IndividualEnrollment& ie, Slot slot, const SlotCredential& c) {
  (slot == Slot::kPrimary ? ie.primary_cert : ie.secondary_cert) = c.cert;
  (slot == Slot::kPrimary ? ie.primary_sha256 : ie.secondary_sha256) = c.sha256;
}

}  // namespace

Slot parse_slot(std::string_view name) {
  if (name == "primary") return Slot::kPrimary;
  if (name == "secondary") return Slot::kSecondary;
  throw Error(ErrorCode::kUsage, "slot '" + std::string(name) + "' is not primary or secondary");
}

std::string normalize_thumbprint(std::string_view hex) {
  std::string out;
  for (const char c : hex) {
    if (c == ':') {
      continue;
    }
    if (!std::isxdigit(static_cast<unsigned char>(c))) {
      throw Error(ErrorCode::kInvalidArgument, "thumbprint '" + std::string(hex) + "': '" +
                                                   std::string(1, c) + "' is not a hex digit");
    }
    out.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  if (out.size() != 64) {
    throw Error(ErrorCode::kInvalidArgument, "thumbprint '" + std::string(hex) + "' has " +
                                                 std::to_string(out.size()) +
                                                 " hex digits; a SHA-256 thumbprint has 64");
  }
  return out;
}

SlotCredential credential_from_cert(const std::string& registration_id, const Der& cert) {
  const CertSummary s = summarize_certificate(cert);
  if (s.is_ca) {
    throw Error(ErrorCode::kInvalidArgument,
                "certificate " + s.subject +
                    " is a CA certificate; an individual enrollment trusts a device certificate");
  }
  if (s.common_name != registration_id) {
    throw Error(ErrorCode::kInvalidArgument,
                "certificate CN '" + s.common_name + "' does not match registration ID '" +
                    registration_id + "' (Azure requires them to be equal)");
  }
  return SlotCredential{cert, s.sha256};
}

SlotCredential credential_from_thumbprint(std::string_view hex) {
  return SlotCredential{{}, normalize_thumbprint(hex)};
}

CaRecord import_external_ca(Stores& registry, const Clock& clock, const std::string& name,
                            const Der& der) {
  if (auto why = check_ca_name(name)) {
    throw Error(ErrorCode::kInvalidArgument, "an imported CA: " + *why);
  }
  auto cert = ossl::from_der(der);
  if (!cert) {
    throw Error(ErrorCode::kCertificateMalformed,
                "CA '" + name + "': not a valid X.509 certificate");
  }
  if (!is_ca_certificate(cert.get())) {
    throw Error(ErrorCode::kInvalidArgument,
                "CA '" + name + "': certificate " +
                    ossl::subject_line(X509_get_subject_name(cert.get())) +
                    " is not a CA certificate (basicConstraints CA:TRUE is missing)");
  }
  if (registry.find_ca(name)) {
    throw Error(ErrorCode::kAlreadyExists, "CA '" + name + "' already exists");
  }
  const auto cas = registry.list_cas();
  CaRecord rec;
  rec.sha256 = thumbprint_sha256(der);
  for (const auto& ca : cas) {
    if (ca.sha256 == rec.sha256) {
      throw Error(
          ErrorCode::kAlreadyExists,
          "CA '" + name + "': this certificate is already in the registry as CA '" + ca.name + "'");
    }
  }
  rec.name = name;
  rec.parent = find_parent(cas, cert.get(), rec.sha256);
  rec.subject = ossl::subject_line(X509_get_subject_name(cert.get()));
  rec.key_uri = "";  // not ours: no key in the token
  rec.key_type = external_key_type(cert.get());
  rec.cert_der = der;
  rec.not_before = ossl::to_unix(X509_get0_notBefore(cert.get()));
  rec.not_after = ossl::to_unix(X509_get0_notAfter(cert.get()));
  rec.sha1 = thumbprint_sha1(der);
  rec.created_at = clock.now();
  registry.add_ca(rec);
  registry.audit(
      "ca.import", name,
      json_object({{"subject", rec.subject}, {"parent", rec.parent}, {"sha256", rec.sha256}}));
  return rec;
}

// --- GroupIndex ------------------------------------------------------------------------------

GroupIndex::GroupIndex(const std::vector<CaRecord>& cas, const std::vector<EnrollmentGroup>& groups)
    : m_cas(cas), m_groups(groups) {
  for (std::size_t i = 0; i < m_cas.size(); ++i) m_ca_index.emplace(m_cas[i].name, i);
  std::unordered_map<std::string, std::ptrdiff_t> slot_owner;  // first group by name wins
  for (std::size_t g = 0; g < m_groups.size(); ++g) {
    for (const auto* ca : {&m_groups[g].primary_ca, &m_groups[g].secondary_ca}) {
      if (!ca->empty()) slot_owner.emplace(*ca, static_cast<std::ptrdiff_t>(g));
    }
  }
  for (const auto& ca : m_cas) {
    std::ptrdiff_t owner = -1;
    const CaRecord* at = &ca;
    for (std::size_t depth = 0; at != nullptr && depth < kMaxChainDepth; ++depth) {
      if (auto it = slot_owner.find(at->name); it != slot_owner.end()) {
        owner = it->second;
        break;
      }
      at = at->parent.empty() ? nullptr : find_ca(at->parent);
    }
    m_group_of_ca.emplace(ca.name, owner);
  }
}

GroupIndex GroupIndex::load(Stores& registry) {
  return GroupIndex(registry.list_cas(), registry.list_groups());
}

const CaRecord* GroupIndex::find_ca(const std::string& name) const {
  auto it = m_ca_index.find(name);
  return it == m_ca_index.end() ? nullptr : &m_cas[it->second];
}

const EnrollmentGroup* GroupIndex::group_of_ca(const std::string& ca_name) const {
  auto it = m_group_of_ca.find(ca_name);
  return it == m_group_of_ca.end() || it->second < 0
             ? nullptr
             : &m_groups[static_cast<std::size_t>(it->second)];
}

std::vector<std::string> GroupIndex::cas_of_group(const std::string& group) const {
  auto g = std::find_if(m_groups.begin(), m_groups.end(),
                        [&](const auto& x) { return x.name == group; });
  if (g == m_groups.end()) {
    throw Error(ErrorCode::kNotFound, "enrollment group '" + group + "' not found in the registry");
  }
  std::vector<std::string> out;
  for (const auto& ca : m_cas) {
    const CaRecord* at = &ca;
    for (std::size_t depth = 0; at != nullptr && depth < kMaxChainDepth; ++depth) {
      if (at->name == g->primary_ca || at->name == g->secondary_ca) {
        out.push_back(ca.name);
        break;
      }
      at = at->parent.empty() ? nullptr : find_ca(at->parent);
    }
  }
  return out;
}

// --- EnrollmentService -----------------------------------------------------------------------

EnrollmentService::EnrollmentService(Stores& registry, const policy::Policy& policy,
                                     const Clock& clock)
    : m_registry(registry), m_policy(policy), m_clock(clock) {}

CaRecord EnrollmentService::slot_ca(const std::string& ca_name) const {
  auto ca = m_registry.find_ca(ca_name);
  if (!ca) {
    throw Error(ErrorCode::kNotFound, "CA '" + ca_name + "' not found in the registry");
  }
  if (!summarize_certificate(ca->cert_der).is_ca) {
    throw Error(ErrorCode::kInvalidArgument, "CA '" + ca_name + "' does not hold a CA certificate");
  }
  // A group trusting the chain of an operator CA would make every operator's certificate a
  // device identity (operators.hpp): refused.
  std::set<std::string> operator_cas = {kDefaultOperatorCa};  // it also signs http init's
  for (const auto& op : m_registry.list_operators()) operator_cas.insert(op.ca_name);
  for (const auto& name : operator_cas) {
    int depth = 0;
    for (auto at = m_registry.find_ca(name); at && depth < 16;
         at = at->parent.empty() ? std::nullopt : m_registry.find_ca(at->parent), ++depth) {
      if (at->name == ca_name) {
        throw Error(ErrorCode::kInvalidArgument,
                    "CA '" + ca_name + "' is in the chain of operator CA '" + name +
                        "': a group trusting it would admit operators' certificates as devices");
      }
    }
  }
  return *ca;
}

EnrollmentGroup EnrollmentService::group(const std::string& name) {
  auto g = m_registry.find_group(name);
  if (!g) {
    throw Error(ErrorCode::kNotFound, "enrollment group '" + name + "' not found in the registry");
  }
  return *g;
}

EnrollmentGroup EnrollmentService::create_group(const std::string& name,
                                                const std::string& primary_ca,
                                                const std::string& secondary_ca) {
  if (auto why = policy::check_device_id(kGroupNameRule, name)) {
    throw Error(ErrorCode::kInvalidArgument, "enrollment group name: " + *why);
  }
  if (primary_ca.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "enrollment group '" + name + "' needs a primary CA");
  }
  if (primary_ca == secondary_ca) {
    throw Error(
        ErrorCode::kInvalidArgument,
        "enrollment group '" + name + "': primary and secondary CA are both '" + primary_ca + "'");
  }
  slot_ca(primary_ca);
  if (!secondary_ca.empty()) slot_ca(secondary_ca);
  if (m_registry.find_group(name)) {
    throw Error(ErrorCode::kAlreadyExists, "enrollment group '" + name + "' already exists");
  }
  EnrollmentGroup g;
  g.name = name;
  g.primary_ca = primary_ca;
  g.secondary_ca = secondary_ca;
  m_registry.save_group(g, "enrollment.group.create", true);
  return group(name);
}

EnrollmentGroup EnrollmentService::set_group_slot(const std::string& name, Slot slot,
                                                  const std::string& ca_name) {
  EnrollmentGroup g = group(name);
  slot_ca(ca_name);
  if (other_slot_ref(g, slot) == ca_name) {
    throw Error(ErrorCode::kInvalidArgument, "enrollment group '" + name + "': CA '" + ca_name +
                                                 "' is already in the other slot");
  }
  slot_ref(g, slot) = ca_name;
  m_registry.save_group(g, "enrollment.group.set-slot", false);
  return group(name);
}

EnrollmentGroup EnrollmentService::set_group_slot_cert(const std::string& name, Slot slot,
                                                       const Der& ca_cert) {
  group(name);  // fail on an unknown group before importing anything
  const std::string sha256 = thumbprint_sha256(ca_cert);
  std::string ca_name;
  for (const auto& ca : m_registry.list_cas()) {
    if (ca.sha256 == sha256) ca_name = ca.name;
  }
  if (ca_name.empty()) {
    ca_name = name + "-" + std::string(slot_name(slot)) + "-" + lower(sha256.substr(0, 8));
    import_external_ca(m_registry, m_clock, ca_name, ca_cert);
  }
  return set_group_slot(name, slot, ca_name);
}

EnrollmentGroup EnrollmentService::clear_group_slot(const std::string& name, Slot slot) {
  EnrollmentGroup g = group(name);
  if (other_slot_ref(g, slot).empty()) {
    throw Error(ErrorCode::kInvalidArgument, "enrollment group '" + name + "': the " +
                                                 std::string(slot_name(slot)) +
                                                 " slot is its last CA; disable the group instead");
  }
  slot_ref(g, slot).clear();
  m_registry.save_group(g, "enrollment.group.clear-slot", false);
  return group(name);
}

EnrollmentGroup EnrollmentService::set_group_enabled(const std::string& name, bool enabled) {
  EnrollmentGroup g = group(name);
  g.enabled = enabled;
  m_registry.save_group(g, enabled ? "enrollment.group.enable" : "enrollment.group.disable", false);
  return group(name);
}

void EnrollmentService::check_id(const std::string& id) const {
  if (auto why = policy::check_device_id(m_policy.device_id, id)) {
    throw Error(ErrorCode::kDeviceIdInvalid, "individual enrollment: " + *why);
  }
}

IndividualEnrollment EnrollmentService::individual(const std::string& id) {
  auto ie = m_registry.find_individual(id);
  if (!ie) {
    throw Error(ErrorCode::kNotFound,
                "individual enrollment '" + id + "' not found in the registry");
  }
  return *ie;
}

IndividualEnrollment EnrollmentService::create_individual(
    const std::string& id, const SlotCredential& primary,
    const std::optional<SlotCredential>& secondary) {
  check_id(id);
  for (const auto* c : {&primary, secondary ? &*secondary : nullptr}) {
    if (c != nullptr && !c->cert.empty()) credential_from_cert(id, c->cert);
  }
  if (secondary && secondary->sha256 == primary.sha256) {
    throw Error(
        ErrorCode::kInvalidArgument,
        "individual enrollment '" + id + "': primary and secondary are the same certificate");
  }
  if (m_registry.find_individual(id)) {
    throw Error(ErrorCode::kAlreadyExists, "individual enrollment '" + id + "' already exists");
  }
  IndividualEnrollment ie;
  ie.registration_id = id;
  put(ie, Slot::kPrimary, primary);
  if (secondary) put(ie, Slot::kSecondary, *secondary);
  m_registry.save_individual(ie, "enrollment.individual.create", true);
  return individual(id);
}

IndividualEnrollment EnrollmentService::set_individual_slot(const std::string& id, Slot slot,
                                                            const SlotCredential& credential) {
  IndividualEnrollment ie = individual(id);
  if (!credential.cert.empty()) credential_from_cert(id, credential.cert);
  const std::string& other = slot == Slot::kPrimary ? ie.secondary_sha256 : ie.primary_sha256;
  if (other == credential.sha256) {
    throw Error(ErrorCode::kInvalidArgument, "individual enrollment '" + id + "': thumbprint " +
                                                 credential.sha256 +
                                                 " is already in the other slot");
  }
  put(ie, slot, credential);
  m_registry.save_individual(ie, "enrollment.individual.set-slot", false);
  return individual(id);
}

IndividualEnrollment EnrollmentService::clear_individual_slot(const std::string& id, Slot slot) {
  IndividualEnrollment ie = individual(id);
  if ((slot == Slot::kPrimary ? ie.secondary_sha256 : ie.primary_sha256).empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "individual enrollment '" + id + "': the " + std::string(slot_name(slot)) +
                    " slot is its last credential; disable the enrollment instead");
  }
  put(ie, slot, SlotCredential{});
  m_registry.save_individual(ie, "enrollment.individual.clear-slot", false);
  return individual(id);
}

IndividualEnrollment EnrollmentService::set_individual_enabled(const std::string& id,
                                                               bool enabled) {
  IndividualEnrollment ie = individual(id);
  ie.enabled = enabled;
  m_registry.save_individual(
      ie, enabled ? "enrollment.individual.enable" : "enrollment.individual.disable", false);
  return individual(id);
}

}  // namespace fleetsign::engine
