// check_batch(): the batch invariants of batch.hpp, read back from the registry (after the child
// exited) and from the output directory. OpenSSL parses every registry certificate once; each
// output certificate must be byte-equal to it, and its serial is read from its own bytes.
#include <Poco/Data/Session.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include "batch_support.hpp"
#include "registry_backend.hpp"

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
      ADD_FAILURE() << "batch " << m_batch << ": " << what << " (" << p.count
                    << "x), e.g.:" << p.examples;
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

// What the registry says about one issued device, as OpenSSL parsed it.
struct RegistryCert {
  std::string der, serial, public_bits;
};

// One check in progress.
struct Check {
  const Expected& e;
  Problems p;
  BatchFacts f;
  std::map<std::string, RegistryCert> certs;  // device ID -> its issued certificate
  std::set<std::string> output_serials;
};

bool mode_is(const fs::path& file, unsigned mode) {
  struct stat st {};
  return ::stat(file.c_str(), &st) == 0 && (st.st_mode & 0777) == mode;
}

std::string read(const fs::path& file) { return testing::read_file(file); }

// An output certificate for `device`: the registry's certificate, byte for byte, and its serial
// seen in no other output.
void expect_output_cert(Check& c, const std::string& device, const std::string& der,
                        const std::string& where) {
  auto it = c.certs.find(device);
  if (it == c.certs.end())
    return c.p.add("(d) output for a device with no issued certificate", where);
  const std::string serial = der_serial(der);
  c.p.expect(!serial.empty(), "(b) output certificate does not parse", where);
  c.p.expect(c.output_serials.insert(serial).second, "(b) serial twice in the outputs",
             where + " " + serial);
  c.p.expect(serial == it->second.serial, "(b) output serial differs from the registry's",
             where + " " + serial + " vs " + it->second.serial);
  c.p.expect(der == it->second.der, "(d) output certificate differs from the registry's DER",
             where);
}

void expect_key(Check& c, const std::string& device, const std::string& key_pem,
                const std::string& where) {
  auto it = c.certs.find(device);
  if (it == c.certs.end()) return;
  c.p.expect(key_matches(key_pem, it->second.public_bits),
             "(e) private key does not match the certificate", where);
}

// Per-device mode: {id}_cert.pem / _fullchain.pem / _key.pem / .pfx, and nothing else per device.
void check_device_files(Check& c) {
  const Expected& e = c.e;
  const std::set<std::string> streams{"manifest.csv", "manifest.jsonl", "iothub-import.jsonl",
                                      "rejects.csv"};
  for (const auto& entry : fs::directory_iterator(e.out)) {
    const std::string name = entry.path().filename().string();
    if (streams.count(name) != 0 || name == ".spool" || name == ".fleetsign-batch") continue;
    std::string device;
    for (const std::string suffix : {"_cert.pem", "_fullchain.pem", "_key.pem", ".pfx"}) {
      if (name.size() > suffix.size() &&
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        device = name.substr(0, name.size() - suffix.size());
      }
    }
    c.p.expect(!device.empty(), "(d) unexpected file in the output directory", name);
    c.p.expect(device.empty() || c.certs.count(device) != 0,
               "(d) output file for a device that is not issued", name);
  }
  for (const auto& [device, rec] : c.certs) {
    const std::string base = (e.out / device).string();
    const auto cert = pem_blocks(read(base + "_cert.pem"), "CERTIFICATE");
    if (cert.size() != 1) {
      c.p.add("(d) issued device without exactly one certificate in {id}_cert.pem", device);
      continue;
    }
    expect_output_cert(c, device, cert[0], device + "_cert.pem");
    const auto chain = pem_blocks(read(base + "_fullchain.pem"), "CERTIFICATE");
    c.p.expect(chain.size() == 3 && chain[0] == cert[0],
               "(d) {id}_fullchain.pem is not cert + int + root", device);
    const fs::path key = base + "_key.pem";
    if (e.generated_keys) {
      c.p.expect(mode_is(key, 0600), "(e) {id}_key.pem missing or not mode 0600", key.string());
      expect_key(c, device, read(key), key.string());
    } else {
      c.p.expect(!fs::exists(key), "(d) key file for a CSR input", key.string());
    }
    const fs::path pfx = base + ".pfx";
    c.p.expect(e.pfx ? mode_is(pfx, 0600) : !fs::exists(pfx),
               "(d) .pfx missing, not 0600, or unwanted", pfx.string());
  }
}

// Bundle mode: one bundle.jsonl line and one bundle.pem certificate per issued device.
void check_bundle(Check& c) {
  const Expected& e = c.e;
  const std::set<std::string> known{"bundle.pem",   "bundle.jsonl",   "chain.pem",
                                    "manifest.csv", "manifest.jsonl", "iothub-import.jsonl",
                                    "rejects.csv",  ".spool",         ".fleetsign-batch"};
  for (const auto& entry : fs::directory_iterator(e.out)) {
    const std::string name = entry.path().filename().string();
    c.p.expect(known.count(name) != 0, "(d) unexpected file in a --bundle output directory", name);
  }
  std::set<std::string> seen;
  for (const auto& line : lines_of(read(e.out / "bundle.jsonl"))) {
    const auto o = parse_json(line);
    const std::string device = o->getValue<std::string>("device_id");
    c.p.expect(seen.insert(device).second, "(d) device twice in bundle.jsonl", device);
    const auto cert = pem_blocks(o->getValue<std::string>("cert_pem"), "CERTIFICATE");
    if (cert.size() != 1) {
      c.p.add("(d) bundle.jsonl line without one certificate", device);
      continue;
    }
    expect_output_cert(c, device, cert[0], "bundle.jsonl " + device);
    c.p.expect(normalize_serial(o->getValue<std::string>("serial")) == der_serial(cert[0]),
               "(b) bundle.jsonl serial field differs from its certificate", device);
    if (e.generated_keys) {
      c.p.expect(o->has("key_pem"), "(e) bundle.jsonl line without key_pem", device);
      if (o->has("key_pem"))
        expect_key(c, device, o->getValue<std::string>("key_pem"), "bundle.jsonl " + device);
    }
  }
  c.p.expect(seen.size() == c.certs.size(), "(d) bundle.jsonl lines != issued devices",
             std::to_string(seen.size()) + " vs " + std::to_string(c.certs.size()));
  const std::string pem = read(e.out / "bundle.pem");
  const auto blocks = pem_blocks(pem, "CERTIFICATE");
  std::set<std::string> ders;
  for (const auto& [device, rec] : c.certs) ders.insert(rec.der);
  const std::set<std::string> pem_ders(blocks.begin(), blocks.end());
  c.p.expect(blocks.size() == ders.size() && pem_ders == ders,
             "(d) bundle.pem certificates != registry",
             std::to_string(blocks.size()) + " certificates for " + std::to_string(ders.size()) +
                 " issued");
  const std::size_t keys = pem_blocks(pem, "PRIVATE KEY").size();
  c.p.expect(keys == (e.generated_keys ? ders.size() : 0), "(e) bundle.pem private keys != issued",
             std::to_string(keys));
  c.p.expect(mode_is(e.out / "bundle.pem", 0600) && mode_is(e.out / "bundle.jsonl", 0600),
             "(e) bundle files are not mode 0600", e.out.string());
}

// manifest.csv, manifest.jsonl, iothub-import.jsonl: one line per issued device, registry values.
void check_manifests(Check& c) {
  const Expected& e = c.e;
  const auto& issued = c.f.issued_by_device;
  const auto csv = lines_of(read(e.out / "manifest.csv"));
  c.p.expect(!csv.empty() && csv[0].rfind("device_id,serial,sha1,sha256,", 0) == 0,
             "(d) manifest.csv header", csv.empty() ? "(empty)" : csv[0]);
  std::set<std::string> seen;
  for (std::size_t i = 1; i < csv.size(); ++i) {
    const auto v = csv_fields(csv[i]);
    auto it = v.size() >= 8 ? issued.find(v[0]) : issued.end();
    if (it == issued.end()) {
      c.p.add("(d) manifest.csv line for a device that is not issued", csv[i]);
      continue;
    }
    c.p.expect(seen.insert(v[0]).second, "(d) device twice in manifest.csv", v[0]);
    c.p.expect(v[1] == it->second.serial && v[3] == it->second.sha256 && v[7] == e.batch_id,
               "(d) manifest.csv serial/sha256/batch differ from the registry", csv[i]);
  }
  c.p.expect(seen.size() == issued.size() && csv.size() == seen.size() + 1,
             "(d) manifest.csv lines != issued", std::to_string(csv.size() - 1) + " lines");
  std::set<std::string> json_seen;
  for (const auto& line : lines_of(read(e.out / "manifest.jsonl"))) {
    const auto o = parse_json(line);
    const std::string device = o->getValue<std::string>("device_id");
    auto it = issued.find(device);
    c.p.expect(json_seen.insert(device).second && it != issued.end() &&
                   o->getValue<std::string>("serial") == it->second.serial &&
                   o->getValue<std::string>("sha256") == it->second.sha256,
               "(d) manifest.jsonl line duplicate or differs from the registry", line);
  }
  c.p.expect(json_seen.size() == issued.size(), "(d) manifest.jsonl lines != issued devices",
             std::to_string(json_seen.size()));
  std::set<std::string> hub_seen;
  std::size_t hub_lines = 0;
  for (const auto& line : lines_of(read(e.out / "iothub-import.jsonl"))) {
    ++hub_lines;
    const std::string device = parse_json(line)->getValue<std::string>("id");
    c.p.expect(issued.count(device) != 0 && hub_seen.insert(device).second,
               "(d) iothub-import.jsonl line duplicate or for a device not issued", line);
  }
  c.p.expect(hub_lines == issued.size(), "(d) iothub-import.jsonl lines != issued devices",
             std::to_string(hub_lines));
}

// (a): every input is issued once or rejected once, never both, never neither.
void check_inputs(Check& c) {
  const auto rejects = lines_of(read(c.e.out / "rejects.csv"));
  c.p.expect(!rejects.empty() && rejects[0] == "source,device_id,code,reason",
             "(a) rejects.csv header", rejects.empty() ? "(missing)" : rejects[0]);
  std::set<std::string> sources;
  for (const auto& in : c.e.inputs) sources.insert(in.source);
  for (std::size_t i = 1; i < rejects.size(); ++i) {
    const auto v = csv_fields(rejects[i]);
    c.p.expect(v.size() == 4 && sources.count(v[0]) != 0, "(a) reject line for no input",
               rejects[i]);
    c.p.expect(
        v.size() == 4 && c.f.reject_code_by_source.emplace(v[0], v.size() > 2 ? v[2] : "").second,
        "(a) input rejected twice", rejects[i]);
  }
  c.f.rejected = static_cast<std::int64_t>(rejects.empty() ? 0 : rejects.size() - 1);
  std::set<std::string> accounted;
  for (const auto& in : c.e.inputs) {
    if (c.f.reject_code_by_source.count(in.source) != 0) continue;
    c.p.expect(c.certs.count(in.device_id) != 0, "(a) input neither issued nor rejected",
               in.source);
    c.p.expect(accounted.insert(in.device_id).second, "(a) two inputs issued for one device",
               in.device_id);
  }
  for (const auto& [device, rec] : c.certs) {
    c.p.expect(accounted.count(device) != 0, "(a) issued certificate for no unrejected input",
               device);
  }
  c.p.expect(c.f.issued + c.f.rejected == static_cast<std::int64_t>(c.e.inputs.size()),
             "(a) issued + rejected != inputs",
             std::to_string(c.f.issued) + " + " + std::to_string(c.f.rejected) + " vs " +
                 std::to_string(c.e.inputs.size()));
}

// (a), (b) in the registry: one issued certificate per device; the DER's serial is the row's.
void read_registry(Check& c, engine::Registry& registry) {
  for (auto& rec : registry.batch_issued_after(c.e.batch_id, -1)) {
    const std::string der = to_string(rec.der);
    const X509Ptr cert = parse_cert_der(der);
    const std::string serial = cert ? serial_of(cert.get()) : "";
    c.p.expect(cert && serial == normalize_serial(rec.serial),
               "(b) registry DER does not parse or its serial differs from the serial column",
               rec.serial);
    const std::string device = rec.device_id;
    c.p.expect(
        c.certs.emplace(device, RegistryCert{der, serial, cert ? public_key_bits(cert.get()) : ""})
            .second,
        "(a) device with two issued certificates in the batch", device);
    c.f.issued_by_device.emplace(device, std::move(rec));
    ++c.f.issued;
  }
}

// (c) no intent survives a resume; abandoned serials stay out of every output.
void check_serials(Check& c, engine::Registry& registry, const std::string& db) {
  c.p.expect(registry.count_certs(c.e.batch_id, engine::CertState::kIntent) == 0,
             "(c) intents left", c.e.batch_id);
  std::vector<std::string> abandoned;
  // Batch IDs are checked names (letters, digits, '-', '_', '.'): safe inside quotes.
  for (const auto& row : test::raw_query(db, "SELECT serial FROM certificates WHERE batch_id = '" +
                                                 c.e.batch_id + "' AND state = 'abandoned'")) {
    abandoned.push_back(row.at(0));
  }
  const auto counts =
      test::raw_query(db, "SELECT COUNT(*), COUNT(DISTINCT serial) FROM certificates").at(0);
  const std::int64_t rows = std::stoll(counts.at(0)), distinct = std::stoll(counts.at(1));
  c.p.expect(rows == distinct, "(b) a serial in two certificate rows",
             std::to_string(rows - distinct));
  c.f.abandoned = static_cast<std::int64_t>(abandoned.size());
  for (const auto& s : abandoned) {
    c.p.expect(c.output_serials.count(normalize_serial(s)) == 0,
               "(c) abandoned serial in an output", s);
  }
}

// (f) `batch show --json` agrees with what is on disk.
void check_batch_show(Check& c, Fleet& fleet) {
  const auto show = fleet.batch_show(c.e.batch_id);
  const auto number = [&](const char* key) { return show->getValue<std::int64_t>(key); };
  c.p.expect(show->getValue<std::string>("state") == "finished", "(f) batch show: state",
             show->getValue<std::string>("state"));
  c.p.expect(number("issued") == c.f.issued, "(f) batch show: issued",
             std::to_string(number("issued")));
  c.p.expect(number("rejected") == c.f.rejected, "(f) batch show: rejected",
             std::to_string(number("rejected")));
  c.p.expect(number("open_intents") == 0, "(f) batch show: open intents",
             std::to_string(number("open_intents")));
  c.p.expect(number("abandoned_serials") == c.f.abandoned, "(f) batch show: abandoned serials",
             std::to_string(number("abandoned_serials")));
}

}  // namespace

std::vector<std::string> unverified_certs(engine::Registry& registry, const std::string& batch_id) {
  std::vector<std::string> bad;
  std::map<std::string, std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>> keys;
  for (const auto& rec : registry.batch_issued_after(batch_id, -1)) {
    auto it = keys.find(rec.ca_name);
    if (it == keys.end()) {
      EVP_PKEY* key = nullptr;
      if (const auto ca = registry.find_ca(rec.ca_name)) {
        const X509Ptr ca_cert = parse_cert_der(to_string(ca->cert_der));
        if (ca_cert) key = X509_get_pubkey(ca_cert.get());
      }
      it = keys.emplace(rec.ca_name,
                        std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>(key, EVP_PKEY_free))
               .first;
    }
    const X509Ptr cert = parse_cert_der(to_string(rec.der));
    if (!it->second) {
      bad.push_back(rec.serial + ": no certificate for its CA '" + rec.ca_name + "'");
    } else if (!cert || X509_verify(cert.get(), it->second.get()) != 1) {
      bad.push_back(rec.serial + ": does not verify under CA '" + rec.ca_name + "'");
    }
  }
  ERR_clear_error();
  return bad;
}

BatchFacts check_batch(Fleet& fleet, const Expected& e) {
  SCOPED_TRACE("check_batch " + e.batch_id + " in " + e.out.string());
  Check c{e, Problems(e.batch_id), {}, {}, {}};
  auto registry = fleet.registry();
  const auto batch = registry->find_batch(e.batch_id);
  if (!batch) {
    c.p.add("batch not in the registry", e.batch_id);
    return c.f;
  }
  read_registry(c, *registry);
  if (e.verify_signatures) {
    for (const auto& why : unverified_certs(*registry, e.batch_id)) {
      c.p.add("(g) an issued certificate does not verify under its CA", why);
    }
  }
  check_inputs(c);
  if (e.bundle) {
    check_bundle(c);
  } else {
    check_device_files(c);
  }
  check_manifests(c);
  check_serials(c, *registry, fleet.registry_location());
  c.p.expect(
      batch->state == "finished" && batch->issued == c.f.issued && batch->rejected == c.f.rejected,
      "(f) batch row state/counts",
      batch->state + " issued " + std::to_string(batch->issued) + " rejected " +
          std::to_string(batch->rejected));
  registry.reset();
  check_batch_show(c, fleet);
  return c.f;
}

}  // namespace fleetsign::batchtest
