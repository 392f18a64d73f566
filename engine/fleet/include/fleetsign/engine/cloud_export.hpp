// Export of the registry's enrollments in the shapes Azure's REST APIs take, so that a registry
// built here can be pushed to the cloud:
//
//   DPS      one JSON document: {"enrollmentGroups": [EnrollmentGroup…],
//            "individualEnrollments": {"mode": "create", "enrollments": [IndividualEnrollment…]}}
//            (the second member is DPS's BulkEnrollmentOperation request body).
//   IoT Hub  JSON lines, one ExportImportDevice per line, for a bulk import job: individual
//            enrollments as "selfSigned" with their thumbprints, devices under an enrollment group
//            as "certificateAuthority".
//
// Field names and where they come from are cited in cloud_export.cpp. Warnings (what was skipped
// and why) are returned, not printed. Not thread-safe (uses the Registry).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "fleetsign/engine/stores.hpp"

namespace fleetsign::engine {

struct ExportSummary {
  std::int64_t groups = 0;                   // enrollment groups written
  std::int64_t individuals = 0;              // individual enrollments written
  std::int64_t devices = 0;                  // IoT Hub: CA-authenticated device identities written
  std::int64_t skipped_thumbprint_only = 0;  // DPS: enrollments without a certificate in a slot
  std::int64_t skipped_empty = 0;            // enrollments with no filled slot
  std::int64_t not_enrolled = 0;  // IoT Hub: devices under no group and no individual enrollment
  std::vector<std::string> warnings;
};

// `group` empty = everything; else only that enrollment group (kNotFound when unknown) and no
// individual enrollments.
ExportSummary export_dps(Stores& registry, const std::string& group, std::ostream& out);
ExportSummary export_iothub(Stores& registry, const std::string& group, std::ostream& out);

}  // namespace fleetsign::engine
