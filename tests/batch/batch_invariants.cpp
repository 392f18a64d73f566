// check_batch(): the batch invariants of batch.hpp, read back from the registry (after the child
// exited) and from the output directory, with openssl parsing every certificate and key.
#include <Poco/Data/Session.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "batch_support.hpp"

namespace fleetsign::batchtest {

namespace {

using Poco::Data::Keywords::bind;
using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;

// Collects violations per invariant and reports each kind once, with a count and a few examples:
// a broken batch of 20,000 devices should print a readable failure, not 20,000 of them.
class Problems {
 public:
  explicit Problems(std::string batch) : m_batch(std::move(batch)) {}
  ~Problems() {
    for (const auto& [what, p] : m_found) {
      ADD_FAILURE() << "batch " << m_batch << ": " << what << " (" << p.count << "x), e.g.:" << p.examples;
    }
  }
  void add(const std::string& what, const std::string& example) {
    Found& f = m_found[what];
    if (++f.count <= 5) f.examples += "\n    " + example;
  }
  void expect(bool ok, const std::string& what, const std::string& example) {
    if (!ok) add(what, example);
  }

 private:
  struct Found {
    std::int64_t count = 0;
    std::string examples;
  };
  std::string m_batch;
  std::map<std::string, Found> m_found;
};

bool mode_is(const fs::path& file, unsigned mode) {
  struct stat st {};
  return ::stat(file.c_str(), &st) == 0 && (st.st_mode & 0777) == mode;
}

std::string read(const fs::path& file) { return testing::read_file(file); }

// The serial and the certificate an output names must be the registry's for that device.
void expect_output_cert(Problems& p, const BatchFacts& f, const std::string& device,
                        const std::string& der, const std::string& where,
                        std::set<std::string>& output_serials) {
  auto it = f.issued_by_device.find(device);
  if (it == f.issued_by_device.end()) {
    return p.add("(d) output for a device with no issued certificate", where);
  }
  const X509Ptr cert = parse_cert_der(der);
  if (!cert) return p.add("(b) output certificate does not parse", where);
  const std::string serial = serial_of(cert.get());
  p.expect(output_serials.insert(serial).second, "(b) serial twice in the outputs", where + " " + serial);
  p.expect(serial == normalize_serial(it->second.serial), "(b) output serial differs from the registry's",
           where + " " + serial + " vs " + it->second.serial);
  p.expect(der == to_string(it->second.der), "(d) output certificate differs from the registry's DER", where);
}

void expect_key(Problems& p, const BatchFacts& f, const std::string& device, const std::string& key_pem,
                const std::string& where) {
  auto it = f.issued_by_device.find(device);
  if (it == f.issued_by_device.end()) return;
  const X509Ptr cert = parse_cert_der(to_string(it->second.der));
  p.expect(cert && key_matches_cert(key_pem, cert.get()), "(e) private key does not match the certificate",
           where);
}

// Per-device mode: {id}_cert.pem / _fullchain.pem / _key.pem / .pfx, and nothing else per device.
void check_device_files(Problems& p, const BatchFacts& f, const Expected& e, std::set<std::string>& serials) {
  const std::set<std::string> streams{"manifest.csv", "manifest.jsonl", "iothub-import.jsonl", "rejects.csv"};
  for (const auto& entry : fs::directory_iterator(e.out)) {
    const std::string name = entry.path().filename().string();
    if (streams.count(name) != 0 || name == ".spool") continue;
    std::string device;
    for (const char* suffix : {"_cert.pem", "_fullchain.pem", "_key.pem", ".pfx"}) {
      const std::string s(suffix);
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
        device = name.substr(0, name.size() - s.size());
      }
    }
    p.expect(!device.empty(), "(d) unexpected file in the output directory", name);
    p.expect(device.empty() || f.issued_by_device.count(device) != 0,
             "(d) output file for a device that is not issued", name);
  }
  for (const auto& [device, rec] : f.issued_by_device) {
    const fs::path base = e.out / device;
    const auto cert = pem_blocks(read(base.string() + "_cert.pem"), "CERTIFICATE");
    if (cert.size() != 1) {
      p.add("(d) issued device without exactly one certificate in {id}_cert.pem", device);
      continue;
    }
    expect_output_cert(p, f, device, cert[0], device + "_cert.pem", serials);
    const auto chain = pem_blocks(read(base.string() + "_fullchain.pem"), "CERTIFICATE");
    p.expect(chain.size() == 3 && chain[0] == cert[0], "(d) {id}_fullchain.pem is not cert + int + root",
             device);
    const fs::path key = base.string() + "_key.pem";
    if (e.generated_keys) {
      p.expect(mode_is(key, 0600), "(e) {id}_key.pem missing or not mode 0600", key.string());
      expect_key(p, f, device, read(key), key.string());
    } else {
      p.expect(!fs::exists(key), "(d) key file for a CSR input", key.string());
    }
    const fs::path pfx = base.string() + ".pfx";
    p.expect(e.pfx ? mode_is(pfx, 0600) : !fs::exists(pfx), "(d) .pfx missing, not 0600, or unwanted",
             pfx.string());
  }
}

// Bundle mode: one bundle.jsonl line and one bundle.pem certificate per issued device.
void check_bundle(Problems& p, const BatchFacts& f, const Expected& e, std::set<std::string>& serials) {
  for (const auto& entry : fs::directory_iterator(e.out)) {
    const std::string name = entry.path().filename().string();
    const bool known = name == "bundle.pem" || name == "bundle.jsonl" || name == "chain.pem" ||
                       name == "manifest.csv" || name == "manifest.jsonl" || name == "iothub-import.jsonl" ||
                       name == "rejects.csv" || name == ".spool";
    p.expect(known, "(d) unexpected file in a --bundle output directory", name);
  }
  std::set<std::string> seen;
  for (const auto& line : lines_of(read(e.out / "bundle.jsonl"))) {
    const auto o = parse_json(line);
    const std::string device = o->getValue<std::string>("device_id");
    p.expect(seen.insert(device).second, "(d) device twice in bundle.jsonl", device);
    const auto cert = pem_blocks(o->getValue<std::string>("cert_pem"), "CERTIFICATE");
    if (cert.size() != 1) {
      p.add("(d) bundle.jsonl line without one certificate", device);
      continue;
    }
    expect_output_cert(p, f, device, cert[0], "bundle.jsonl " + device, serials);
    p.expect(normalize_serial(o->getValue<std::string>("serial")) == serial_of(parse_cert_der(cert[0]).get()),
             "(b) bundle.jsonl serial field differs from its certificate", device);
    if (e.generated_keys) {
      p.expect(o->has("key_pem"), "(e) bundle.jsonl line without key_pem", device);
      if (o->has("key_pem")) expect_key(p, f, device, o->getValue<std::string>("key_pem"), "bundle.jsonl " + device);
    }
  }
  p.expect(seen.size() == f.issued_by_device.size(), "(d) bundle.jsonl lines != issued devices",
           std::to_string(seen.size()) + " vs " + std::to_string(f.issued_by_device.size()));
  const std::string pem = read(e.out / "bundle.pem");
  const auto certs = pem_blocks(pem, "CERTIFICATE");
  std::set<std::string> ders;
  for (const auto& [device, rec] : f.issued_by_device) ders.insert(to_string(rec.der));
  std::set<std::string> pem_ders(certs.begin(), certs.end());
  p.expect(certs.size() == ders.size() && pem_ders == ders, "(d) bundle.pem certificates != registry",
           std::to_string(certs.size()) + " certificates for " + std::to_string(ders.size()) + " issued");
  const std::size_t keys = pem_blocks(pem, "PRIVATE KEY").size();
  p.expect(keys == (e.generated_keys ? ders.size() : 0), "(e) bundle.pem private keys != issued",
           std::to_string(keys));
  p.expect(mode_is(e.out / "bundle.pem", 0600) && mode_is(e.out / "bundle.jsonl", 0600),
           "(e) bundle files are not mode 0600", e.out.string());
}

// manifest.csv, manifest.jsonl, iothub-import.jsonl: one line per issued device, registry values.
void check_manifests(Problems& p, const BatchFacts& f, const Expected& e) {
  const auto csv = lines_of(read(e.out / "manifest.csv"));
  p.expect(!csv.empty() && csv[0].rfind("device_id,serial,sha1,sha256,", 0) == 0, "(d) manifest.csv header",
           csv.empty() ? "(empty)" : csv[0]);
  std::set<std::string> seen;
  for (std::size_t i = 1; i < csv.size(); ++i) {
    const auto v = csv_fields(csv[i]);
    auto it = v.size() >= 8 ? f.issued_by_device.find(v[0]) : f.issued_by_device.end();
    if (it == f.issued_by_device.end()) {
      p.add("(d) manifest.csv line for a device that is not issued", csv[i]);
      continue;
    }
    p.expect(seen.insert(v[0]).second, "(d) device twice in manifest.csv", v[0]);
    p.expect(v[1] == it->second.serial && v[3] == it->second.sha256 && v[7] == e.batch_id,
             "(d) manifest.csv serial/sha256/batch differ from the registry", csv[i]);
  }
  p.expect(seen.size() == f.issued_by_device.size() && csv.size() == seen.size() + 1,
           "(d) manifest.csv lines != issued devices", std::to_string(csv.size() - 1) + " lines");
  std::set<std::string> json_seen;
  for (const auto& line : lines_of(read(e.out / "manifest.jsonl"))) {
    const auto o = parse_json(line);
    const std::string device = o->getValue<std::string>("device_id");
    auto it = f.issued_by_device.find(device);
    p.expect(json_seen.insert(device).second && it != f.issued_by_device.end() &&
                 o->getValue<std::string>("serial") == it->second.serial &&
                 o->getValue<std::string>("sha256") == it->second.sha256,
             "(d) manifest.jsonl line duplicate or differs from the registry", line);
  }
  p.expect(json_seen.size() == f.issued_by_device.size(), "(d) manifest.jsonl lines != issued devices",
           std::to_string(json_seen.size()));
  std::set<std::string> hub_seen;
  std::size_t hub_lines = 0;
  for (const auto& line : lines_of(read(e.out / "iothub-import.jsonl"))) {
    ++hub_lines;
    const std::string device = parse_json(line)->getValue<std::string>("id");
    p.expect(f.issued_by_device.count(device) != 0 && hub_seen.insert(device).second,
             "(d) iothub-import.jsonl line duplicate or for a device not issued", line);
  }
  p.expect(hub_lines == f.issued_by_device.size(), "(d) iothub-import.jsonl lines != issued devices",
           std::to_string(hub_lines));
}

// (a): every input is issued once or rejected once, never both, never neither.
void check_inputs(Problems& p, BatchFacts& f, const Expected& e) {
  const auto rejects = lines_of(read(e.out / "rejects.csv"));
  p.expect(!rejects.empty() && rejects[0] == "source,device_id,code,reason", "(a) rejects.csv header",
           rejects.empty() ? "(missing)" : rejects[0]);
  std::set<std::string> sources;
  for (const auto& in : e.inputs) sources.insert(in.source);
  for (std::size_t i = 1; i < rejects.size(); ++i) {
    const auto v = csv_fields(rejects[i]);
    p.expect(v.size() == 4 && sources.count(v[0]) != 0, "(a) reject line for no input", rejects[i]);
    p.expect(v.size() == 4 && f.reject_code_by_source.emplace(v[0], v.size() > 2 ? v[2] : "").second,
             "(a) input rejected twice", rejects[i]);
  }
  f.rejected = static_cast<std::int64_t>(rejects.empty() ? 0 : rejects.size() - 1);
  std::set<std::string> accounted;
  for (const auto& in : e.inputs) {
    if (f.reject_code_by_source.count(in.source) != 0) continue;
    p.expect(f.issued_by_device.count(in.device_id) != 0, "(a) input neither issued nor rejected", in.source);
    p.expect(accounted.insert(in.device_id).second, "(a) two inputs issued for one device", in.device_id);
  }
  for (const auto& [device, rec] : f.issued_by_device) {
    p.expect(accounted.count(device) != 0, "(a) issued certificate for no unrejected input", device);
  }
  p.expect(f.issued + f.rejected == static_cast<std::int64_t>(e.inputs.size()),
           "(a) issued + rejected != inputs",
           std::to_string(f.issued) + " + " + std::to_string(f.rejected) + " vs " + std::to_string(e.inputs.size()));
}

}  // namespace

BatchFacts check_batch(Fleet& fleet, const Expected& e) {
  SCOPED_TRACE("check_batch " + e.batch_id + " in " + e.out.string());
  BatchFacts f;
  Problems p(e.batch_id);
  auto registry = fleet.registry();
  const auto batch = registry->find_batch(e.batch_id);
  if (!batch) {
    ADD_FAILURE() << "batch " << e.batch_id << " is not in the registry";
    return f;
  }
  // (a), (b) in the registry: one issued certificate per device; the DER's serial is the row's.
  for (auto& rec : registry->batch_issued_after(e.batch_id, -1)) {
    const X509Ptr cert = parse_cert_der(to_string(rec.der));
    p.expect(cert && serial_of(cert.get()) == normalize_serial(rec.serial),
             "(b) registry DER serial differs from its serial column", rec.serial);
    const std::string device = rec.device_id;
    p.expect(f.issued_by_device.emplace(device, std::move(rec)).second,
             "(a) device with two issued certificates in the batch", device);
    ++f.issued;
  }
  check_inputs(p, f, e);
  // (c) no intent survives a resume; abandoned serials stay out of every certificate.
  p.expect(registry->count_certs(e.batch_id, engine::CertState::kIntent) == 0, "(c) intents left", e.batch_id);
  std::vector<std::string> abandoned;
  std::int64_t rows = 0, distinct = 0;
  {
    Poco::Data::Session sql("SQLite", (fleet.home() / "registry.db").string());
    sql << "SELECT serial FROM certificates WHERE batch_id = ? AND state = 'abandoned'", into(abandoned),
        bind(e.batch_id), now;
    sql << "SELECT COUNT(*), COUNT(DISTINCT serial) FROM certificates", into(rows), into(distinct), now;
  }
  p.expect(rows == distinct, "(b) a serial in two certificate rows", std::to_string(rows - distinct));
  f.abandoned = static_cast<std::int64_t>(abandoned.size());
  // (d), (e): the outputs, every certificate parsed.
  std::set<std::string> output_serials;
  if (e.bundle) {
    check_bundle(p, f, e, output_serials);
  } else {
    check_device_files(p, f, e, output_serials);
  }
  check_manifests(p, f, e);
  for (const auto& s : abandoned) {
    p.expect(output_serials.count(normalize_serial(s)) == 0, "(c) abandoned serial in an output", s);
  }
  // (f) the registry's batch row and `batch show --json` agree with what is on disk.
  p.expect(batch->state == "finished" && batch->issued == f.issued && batch->rejected == f.rejected,
           "(f) batch row state/counts", batch->state + " issued " + std::to_string(batch->issued) +
                                             " rejected " + std::to_string(batch->rejected));
  registry.reset();
  const auto show = fleet.batch_show(e.batch_id);
  p.expect(show->getValue<std::string>("state") == "finished", "(f) batch show: state", "not finished");
  p.expect(show->getValue<std::int64_t>("issued") == f.issued, "(f) batch show: issued",
           std::to_string(show->getValue<std::int64_t>("issued")));
  p.expect(show->getValue<std::int64_t>("rejected") == f.rejected, "(f) batch show: rejected",
           std::to_string(show->getValue<std::int64_t>("rejected")));
  p.expect(show->getValue<std::int64_t>("open_intents") == 0, "(f) batch show: open intents", "");
  p.expect(show->getValue<std::int64_t>("abandoned_serials") == f.abandoned, "(f) batch show: abandoned",
           std::to_string(show->getValue<std::int64_t>("abandoned_serials")));
  return f;
}

}  // namespace fleetsign::batchtest
