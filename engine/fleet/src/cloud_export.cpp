// Field names, as Azure's REST APIs define them (looked up in Microsoft's REST reference):
//
// DPS service API 2021-10-01
//   EnrollmentGroup
//   (learn.microsoft.com/rest/api/iot-dps/service/enrollment-group/create-or-update)
//     enrollmentGroupId, attestation: AttestationMechanism, provisioningStatus
//     "enabled"|"disabled", reprovisionPolicy: ReprovisionPolicy {updateHubAssignment,
//     migrateDeviceData}
//   IndividualEnrollment  (…/individual-enrollment/create-or-update)
//     registrationId, deviceId, attestation, provisioningStatus, reprovisionPolicy
//   AttestationMechanism {type "x509", x509: X509Attestation}
//   X509Attestation {clientCertificates | signingCertificates: X509Certificates,
//                    caReferences: X509CAReferences}
//   X509Certificates {primary, secondary: X509CertificateWithInfo {certificate}}
//   X509CAReferences {primary, secondary: names of CA certificates uploaded to the DPS instance}
//   BulkEnrollmentOperation  (…/individual-enrollment/run-bulk-operation)
//     {enrollments: IndividualEnrollment[], mode "create"|"update"|"updateIfMatchETag"|"delete"};
//     the service takes at most 10 enrollments per call, so a pusher splits `enrollments`.
//   `certificate` is the PEM text of the certificate: the provisioning service SDK documents
//   X509CertificateWithInfo.certificate as the content of a .pem file (azure-docs-sdk-java,
//   com.microsoft.azure.sdk.iot.provisioning.service.configs.X509CertificateWithInfo).
//
// IoT Hub bulk import (learn.microsoft.com/azure/iot-hub/iot-hub-bulk-identity-mgmt), one
// ExportImportDevice per line (azure-iot-hub protocol.models.ExportImportDevice):
//   id, importMode "create", status "enabled"|"disabled",
//   authentication: AuthenticationMechanism {type "selfSigned"|"certificateAuthority",
//                   x509Thumbprint: {primaryThumbprint, secondaryThumbprint}}
#include "fleetsign/engine/cloud_export.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <unordered_set>

#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

Object::Ptr object() { return new Object(Poco::JSON_PRESERVE_KEY_ORDER); }

Object::Ptr reprovision_policy() {
  // Re-provisioning moves the device to the hub DPS picks and keeps its twin: what a rollover
  // (new certificate, same device) needs.
  auto p = object();
  p->set("updateHubAssignment", true);
  p->set("migrateDeviceData", true);
  return p;
}

Object::Ptr x509_attestation(const Object::Ptr& x509) {
  auto a = object();
  a->set("type", "x509");
  a->set("x509", x509);
  return a;
}

Object::Ptr certificate_with_info(const Der& der) {
  auto c = object();
  c->set("certificate", pem(der, "CERTIFICATE"));
  return c;
}

// One group, or nullptr (with a warning) when it cannot be expressed.
Object::Ptr dps_group(const EnrollmentGroup& g, const GroupIndex& index, ExportSummary& summary) {
  const CaRecord* slots[2] = {index.find_ca(g.primary_ca), index.find_ca(g.secondary_ca)};
  if (slots[0] == nullptr && slots[1] == nullptr) {
    ++summary.skipped_empty;
    summary.warnings.push_back("enrollment group '" + g.name + "' skipped: no CA in either slot");
    return nullptr;
  }
  // DPS takes either the certificates themselves or references to CA certificates uploaded (and
  // verified) in the DPS instance. An external CA was uploaded by name, so one external slot means
  // references for both.
  const bool references = (slots[0] != nullptr && is_external(*slots[0])) ||
                          (slots[1] != nullptr && is_external(*slots[1]));
  auto x509 = object();
  auto set = object();
  for (int i = 0; i < 2; ++i) {
    if (slots[i] == nullptr) continue;
    const char* key = i == 0 ? "primary" : "secondary";
    if (references) {
      set->set(key, slots[i]->name);
    } else {
      set->set(key, certificate_with_info(slots[i]->cert_der));
    }
  }
  x509->set(references ? "caReferences" : "signingCertificates", set);
  auto o = object();
  o->set("enrollmentGroupId", g.name);
  o->set("attestation", x509_attestation(x509));
  o->set("provisioningStatus", g.enabled ? "enabled" : "disabled");
  o->set("reprovisionPolicy", reprovision_policy());
  return o;
}

Object::Ptr dps_individual(const IndividualEnrollment& ie, ExportSummary& summary) {
  const bool p = !ie.primary_sha256.empty(), s = !ie.secondary_sha256.empty();
  if (!p && !s) {
    ++summary.skipped_empty;
    summary.warnings.push_back("individual enrollment '" + ie.registration_id +
                               "' skipped: both slots are empty");
    return nullptr;
  }
  if ((p && ie.primary_cert.empty()) || (s && ie.secondary_cert.empty())) {
    ++summary.skipped_thumbprint_only;
    summary.warnings.push_back(
        "individual enrollment '" + ie.registration_id +
        "' skipped: DPS needs the certificate, the registry holds only a thumbprint");
    return nullptr;
  }
  auto certs = object();
  if (p) certs->set("primary", certificate_with_info(ie.primary_cert));
  if (s) certs->set("secondary", certificate_with_info(ie.secondary_cert));
  auto x509 = object();
  x509->set("clientCertificates", certs);
  auto o = object();
  o->set("registrationId", ie.registration_id);
  o->set("deviceId", ie.registration_id);
  o->set("attestation", x509_attestation(x509));
  o->set("provisioningStatus", ie.enabled ? "enabled" : "disabled");
  o->set("reprovisionPolicy", reprovision_policy());
  return o;
}

// One ExportImportDevice, on one line.
void write_hub_line(std::ostream& out, const std::string& id, bool enabled,
                    const Object::Ptr& authentication) {
  auto o = object();
  o->set("id", id);
  o->set("importMode", "create");
  o->set("status", enabled ? "enabled" : "disabled");
  o->set("authentication", authentication);
  o->stringify(out);
  out << '\n';
}

Object::Ptr self_signed_authentication(const IndividualEnrollment& ie) {
  auto thumbprints = object();
  if (!ie.primary_sha256.empty()) thumbprints->set("primaryThumbprint", ie.primary_sha256);
  if (!ie.secondary_sha256.empty()) thumbprints->set("secondaryThumbprint", ie.secondary_sha256);
  auto a = object();
  a->set("type", "selfSigned");
  a->set("x509Thumbprint", thumbprints);
  return a;
}

void check_stream(std::ostream& out) {
  if (!out) {
    throw Error(ErrorCode::kIo, "writing the export failed");
  }
}

}  // namespace

ExportSummary export_dps(Stores& registry, const std::string& group, std::ostream& out) {
  ExportSummary summary;
  const GroupIndex index = GroupIndex::load(registry);
  if (!group.empty()) index.cas_of_group(group);  // kNotFound for an unknown group
  Array::Ptr groups = new Array;
  for (const auto& g : index.groups()) {
    if (!group.empty() && g.name != group) continue;
    if (auto o = dps_group(g, index, summary)) {
      groups->add(o);
      ++summary.groups;
    }
  }
  Array::Ptr enrollments = new Array;
  if (group.empty()) {
    for (const auto& ie : registry.list_individuals()) {
      if (auto o = dps_individual(ie, summary)) {
        enrollments->add(o);
        ++summary.individuals;
      }
    }
  }
  auto bulk = object();
  bulk->set("mode", "create");
  bulk->set("enrollments", enrollments);
  auto doc = object();
  doc->set("enrollmentGroups", groups);
  doc->set("individualEnrollments", bulk);
  doc->stringify(out, 2);
  out << '\n';
  check_stream(out);
  return summary;
}

ExportSummary export_iothub(Stores& registry, const std::string& group, std::ostream& out) {
  ExportSummary summary;
  const GroupIndex index = GroupIndex::load(registry);
  std::unordered_set<std::string> individually;
  // 1. Individual enrollments: the device authenticates by its own certificate's thumbprint.
  if (group.empty()) {
    for (const auto& ie : registry.list_individuals()) {
      individually.insert(ie.registration_id);
      if (ie.primary_sha256.empty() && ie.secondary_sha256.empty()) {
        ++summary.skipped_empty;
        summary.warnings.push_back("individual enrollment '" + ie.registration_id +
                                   "' skipped: both slots are empty");
        continue;
      }
      write_hub_line(out, ie.registration_id, ie.enabled, self_signed_authentication(ie));
      ++summary.individuals;
    }
  }
  // 2. Devices under a group: the hub authenticates them by their chain to its verified CA.
  DeviceFilter filter;
  const EnrollmentGroup* only = nullptr;
  if (!group.empty()) {
    filter.ca_names = index.cas_of_group(group);
    if (filter.ca_names.empty()) filter.ca_names = {""};  // no CA: no device
    for (const auto& g : index.groups()) {
      if (g.name == group) only = &g;
    }
  }
  auto by_ca = object();
  by_ca->set("type", "certificateAuthority");
  for (const auto& d : registry.list_devices(filter)) {
    if (individually.count(d.registration_id) != 0) continue;  // the individual enrollment wins
    const EnrollmentGroup* g = only != nullptr ? only : index.group_of_ca(d.ca_name);
    if (g == nullptr) {
      ++summary.not_enrolled;
      continue;
    }
    const bool enabled = d.status == "enabled" && g->enabled;
    write_hub_line(out, d.registration_id, enabled, by_ca);
    ++summary.devices;
    check_stream(out);  // stop early when the output cannot be written
  }
  if (summary.not_enrolled > 0) {
    summary.warnings.push_back(
        std::to_string(summary.not_enrolled) +
        " devices are under no enrollment group and no individual enrollment; not exported");
  }
  out.flush();
  check_stream(out);
  return summary;
}

}  // namespace fleetsign::engine
