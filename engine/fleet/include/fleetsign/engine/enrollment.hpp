// Enrollments as Azure DPS models them: groups (trust a CA in the primary or secondary slot) and
// individual enrollments (trust one certificate, or its SHA-256 thumbprint, per slot); external
// CA certificates (`ca import`); self-signed device certificates for individual enrollments.
//
// Every change goes through Registry::save_group / save_individual, which write the audit row in
// the same transaction ("enrollment.group.set-slot", …). Input problems throw Error naming the
// input: kInvalidArgument (names, thumbprints, slots, CN ≠ registration ID), kNotFound (unknown
// CA, group or enrollment), kAlreadyExists, kDeviceIdInvalid, kCertificateMalformed.
//
// Not thread-safe: one EnrollmentService per Registry (which is one connection).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {

// "primary" | "secondary"; kUsage otherwise.
Slot parse_slot(std::string_view name);

// A SHA-256 thumbprint as 64 upper-case hex characters. Accepts either case and colon separators
// ("ab:cd:…"); anything else is kInvalidArgument naming the input.
std::string normalize_thumbprint(std::string_view hex);

// What goes into an individual enrollment's slot: a certificate (its thumbprint computed here), or
// only a thumbprint (cert empty).
struct SlotCredential {
  Der cert;
  std::string sha256;
};
// The certificate must be an end-entity certificate whose CN is `registration_id` (Azure refuses
// any other; kInvalidArgument otherwise).
SlotCredential credential_from_cert(const std::string& registration_id, const Der& cert);
SlotCredential credential_from_thumbprint(std::string_view hex);

// Registers a CA certificate whose key is not in our token ("external"): key_uri is empty and
// key_type says "external-ec-p256" etc. Its parent is the registry CA whose subject is its issuer
// and whose key verifies its signature, else none. It starts unverified (`ca verify` works for it).
// kInvalidArgument unless it is a CA certificate (basicConstraints CA:TRUE); kAlreadyExists when
// the name is taken. Audited as "ca.import".
CaRecord import_external_ca(Stores& registry, const Clock& clock, const std::string& name,
                            const Der& cert);
inline bool is_external(const CaRecord& ca) noexcept { return ca.key_uri.empty(); }

// Which enrollment group each CA belongs to, computed in memory from the CA hierarchy: a CA
// belongs to the group whose slot holds the CA itself or its nearest ancestor (the first group by
// name when several share a slot CA). Immutable after construction; thread-safe to read.
class GroupIndex final {
 public:
  GroupIndex(const std::vector<CaRecord>& cas, const std::vector<EnrollmentGroup>& groups);
  static GroupIndex load(Stores& registry);

  // The group of a CA; nullptr when its chain reaches no group's slot CA.
  const EnrollmentGroup* group_of_ca(const std::string& ca_name) const;
  // Every CA whose chain leads to a slot CA of `group` (the slot CAs included), in registry
  // order. kNotFound for an unknown group.
  std::vector<std::string> cas_of_group(const std::string& group) const;
  const std::vector<EnrollmentGroup>& groups() const { return m_groups; }
  const std::vector<CaRecord>& cas() const { return m_cas; }
  const CaRecord* find_ca(const std::string& name) const;

 private:
  std::vector<CaRecord> m_cas;
  std::vector<EnrollmentGroup> m_groups;
  std::unordered_map<std::string, std::size_t> m_ca_index;
  std::unordered_map<std::string, std::ptrdiff_t> m_group_of_ca;  // -1 = none
};

class EnrollmentService final {
 public:
  EnrollmentService(Stores& registry, const policy::Policy& policy, const Clock& clock);

  // --- groups. Names: letters, digits, '-', '.', '_' (1..128), as DPS's enrollmentGroupId.
  EnrollmentGroup create_group(const std::string& name, const std::string& primary_ca,
                               const std::string& secondary_ca);
  EnrollmentGroup set_group_slot(const std::string& name, Slot slot, const std::string& ca_name);
  // Imports `ca_cert` as an external CA (or reuses a registry CA with the same SHA-256) and puts
  // it in the slot. The imported CA is named "{group}-{slot}-{first 8 hex of its SHA-256}".
  EnrollmentGroup set_group_slot_cert(const std::string& name, Slot slot, const Der& ca_cert);
  // Refuses to clear the last filled slot (disable the group instead).
  EnrollmentGroup clear_group_slot(const std::string& name, Slot slot);
  EnrollmentGroup set_group_enabled(const std::string& name, bool enabled);
  EnrollmentGroup group(const std::string& name);  // kNotFound

  // --- individual enrollments: the ID is a device ID under the policy's rule.
  IndividualEnrollment create_individual(const std::string& id, const SlotCredential& primary,
                                         const std::optional<SlotCredential>& secondary);
  IndividualEnrollment set_individual_slot(const std::string& id, Slot slot,
                                           const SlotCredential& credential);
  IndividualEnrollment clear_individual_slot(const std::string& id, Slot slot);
  IndividualEnrollment set_individual_enabled(const std::string& id, bool enabled);
  IndividualEnrollment individual(const std::string& id);  // kNotFound

 private:
  CaRecord slot_ca(const std::string& ca_name) const;
  void check_id(const std::string& id) const;
  Stores& m_registry;
  const policy::Policy& m_policy;
  const Clock& m_clock;
};

// A device certificate signed by its own key (`issue --self-signed`), for individual enrollments
// and IoT Hub selfSigned devices: CN = ID, CA:FALSE, digitalSignature, clientAuth, SKI. The key
// is generated here (software key, never in the token). Not recorded as an issued certificate (no
// registry CA issued it); audited as "cert.self-signed".
struct SelfSignedDevice {
  std::string device_id;
  Der cert;
  std::string key_pem;  // PKCS#8, unencrypted
  std::string serial, sha1, sha256;
  std::int64_t not_before = 0, not_after = 0;

  SelfSignedDevice() = default;
  SelfSignedDevice(SelfSignedDevice&&) = default;
  SelfSignedDevice& operator=(SelfSignedDevice&&) = default;
  SelfSignedDevice(const SelfSignedDevice&) = delete;  // holds a private key: one copy only
  ~SelfSignedDevice();                                 // wipes key_pem
};
// kDeviceIdInvalid for a bad ID, kPolicyInvalid for a key the policy does not allow,
// kInvalidArgument for days <= 0.
SelfSignedDevice make_self_signed_device(Stores& registry, const policy::Policy& policy,
                                         const Clock& clock, RandomSource& random,
                                         const std::string& device_id, policy::KeyAlgorithm key,
                                         std::optional<int> days);
// Writes DIR/{id}_cert.pem (0644) and DIR/{id}_key.pem (0600); returns both paths.
std::vector<std::string> write_self_signed_files(const std::filesystem::path& dir,
                                                 const SelfSignedDevice& device);

}  // namespace fleetsign::engine
