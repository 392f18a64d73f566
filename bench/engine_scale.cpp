// In-process engine figures that used to be wall-clock assertions in the tests (issue 7, 16): the
// registry's recording rate and the expiry report's aggregation over a million due certificates.
// Timings vary with the machine and its load, so they are printed here, never asserted.
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench.hpp"
#include "fleetsign/engine/expiry.hpp"
#include "fleetsign/engine/registry.hpp"

namespace fleetsign::bench {

namespace {

constexpr std::int64_t kDay = 86400;
constexpr std::int64_t kNow = 1'800'000'000;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

engine::CertIntent intent(std::size_t n) {
  char serial[32];
  std::snprintf(serial, sizeof serial, "7F%014zX", n);
  engine::CertIntent i;
  i.serial = serial;
  i.device_id = "rec-" + std::to_string(n);
  i.ca_name = "issuing";
  i.batch_id = "record-bench";
  i.seq = static_cast<std::int64_t>(n);
  i.subject = "CN=" + i.device_id;
  i.not_before = kNow;
  i.not_after = kNow + 365 * kDay;
  i.tbs_der.assign(300, 0x5A);  // about a real TBSCertificate's size
  i.lineage = {"lot-7", "line-2", "site-a", "bench"};
  return i;
}

engine::CaRecord ca(const std::string& name, const std::string& parent, std::int64_t not_after) {
  engine::CaRecord c;
  c.name = name;
  c.parent = parent;
  c.not_after = not_after;
  return c;
}

}  // namespace

double measure_registry_record(const std::filesystem::path& db_file, std::size_t total) {
  constexpr std::size_t kChunk = 500;  // the batch runner's chunk size
  auto registry = engine::Registry::open(db_file);
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t base = 0; base < total; base += kChunk) {
    std::vector<engine::CertIntent> intents;
    std::vector<engine::IssuedCert> certs;
    for (std::size_t n = base; n < base + kChunk && n < total; ++n) {
      intents.push_back(intent(n));
      certs.push_back(engine::IssuedCert{intents.back().serial,
                                         std::vector<std::uint8_t>(500, 0xA5),
                                         "AA" + std::to_string(n), "BB" + std::to_string(n)});
    }
    registry->record_intents(intents);
    registry->record_issued(certs);
  }
  const double took = seconds_since(start);
  if (registry->count_certs("record-bench", engine::CertState::kIssued) !=
      static_cast<std::int64_t>(total)) {
    throw std::runtime_error("registry recording: not every certificate was recorded");
  }
  return static_cast<double>(total) / took;
}

double measure_expiry_aggregate(std::size_t count) {
  engine::ExpiryInputs in;
  in.cas = {ca("root", "", kNow + 3000 * kDay), ca("int1", "root", kNow + 2000 * kDay),
            ca("int2", "root", kNow + 2000 * kDay)};
  engine::EnrollmentGroup g;
  g.name = "g1";
  g.primary_ca = "int1";
  in.groups = {g};
  in.due.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::string id = "dev-" + std::to_string(i);
    in.due.push_back(engine::ExpiringCert{id, "S" + id, i % 3 ? "int1" : "int2",
                                          "L" + std::to_string(i % 40), engine::Slot::kPrimary,
                                          kNow + static_cast<std::int64_t>(i % 30) * kDay});
  }
  engine::ExpiryOptions options;
  options.limit = 1000;
  const auto start = std::chrono::steady_clock::now();
  const auto report = engine::build_expiry_report(in, policy::Policy{}, kNow, options);
  const double took = seconds_since(start);
  if (report.total_due != static_cast<std::int64_t>(count)) {
    throw std::runtime_error("expiry aggregation: the report does not count every certificate");
  }
  return took;
}

}  // namespace fleetsign::bench
