// Support for the batch-issuance tests: the real `fleetsign` binary run as a child process (with
// exact wait statuses, so a SIGKILL is told apart from an exit), a home with a CA hierarchy in a
// temporary directory, CSRs made in-process, certificate parsing, and the one checker of the batch
// invariants (batch.hpp) that every crash test runs after its resume.
//
// The registry is only ever opened by a test AFTER the child that wrote it has exited.
#pragma once

#include <Poco/JSON/Object.h>
#include <openssl/x509.h>
#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "fleetsign/engine/registry.hpp"
#include "test_home.hpp"

namespace fleetsign::batchtest {

namespace fs = std::filesystem;

// "NAME=value" entries added to (or replacing) a child's environment.
using Env = std::vector<std::string>;

// How a child process ended, with what it printed.
struct Outcome {
  int wait_status = 0;  // as from waitpid
  std::string out, err;

  bool exited() const;
  int exit_code() const;  // -1 unless exited()
  bool killed_by(int signal) const;
  // "exit 3" or "killed by signal 9", then stdout and stderr, for assertion messages.
  std::string describe() const;
};

// A child started with posix_spawn: stdin /dev/null, stdout and stderr to files. The destructor
// kills (SIGKILL) and reaps a child still running, so a failed assertion leaves no process behind.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const Env& env, fs::path out, fs::path err);
  ~Child();
  Child(const Child&) = delete;  // owns a process
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return m_pid; }
  void kill(int signal) const;
  Outcome wait();  // blocks until the child ends

 private:
  pid_t m_pid = -1;
  bool m_reaped = false;
  fs::path m_out, m_err;
};

// A fleetsign home in a temporary directory, driven only through the binary. PINs reach the
// child through FLEETSIGN_PIN / FLEETSIGN_SO_PIN; FLEETSIGN_FAULT only when a test passes it.
class Fleet {
 public:
  Fleet();
  const fs::path& home() const { return m_home; }
  fs::path path(const std::string& name) const { return m_dir.path() / name; }

  // `fleetsign --home HOME ARGS...`, waited for.
  Outcome run(const std::vector<std::string>& args, const Env& env = {});
  // Same, but the child is returned running.
  std::unique_ptr<Child> start(const std::vector<std::string>& args, const Env& env = {});
  // run() that must exit 0 (a gtest failure otherwise).
  Outcome ok(const std::vector<std::string>& args);

  // init, then root CA "root" and intermediate "int" (ec-p256) under it.
  void make_hierarchy();
  // A connection of our own to the home's registry (HOME/registry.db, or the PostgreSQL database
  // of the postgres run). Call only while no child runs.
  std::unique_ptr<engine::Registry> registry() const;
  // Where the registry is: the SQLite file or the PostgreSQL URL (for test::raw_query).
  const std::string& registry_location() const { return m_registry; }
  // `fleetsign batch show ID --json`, parsed.
  Poco::JSON::Object::Ptr batch_show(const std::string& batch_id);

 private:
  testing::TempDir m_dir;
  fs::path m_home;
  std::string m_registry;
  int m_runs = 0;
};

// One `fleetsign issue` invocation. Exactly one input: generate > 0, csr_file or csr_dir.
// Devices per chunk in every batch the tests run (passed as --chunk): kill points count chunks.
constexpr std::int64_t kChunk = 256;

struct IssueArgs {
  std::string batch_id;
  std::string ca = "int";
  std::int64_t generate = 0;
  std::string id_pattern;  // with generate, e.g. "dev-{05}"
  fs::path csr_file, csr_dir;
  fs::path out;
  bool bundle = false, pfx = false, reissue = false, json = false;
  fs::path pfx_password_file;

  std::vector<std::string> args() const;  // "issue", "--ca", ...
  // The device IDs --generate will make, in input order.
  std::vector<std::string> generated_ids() const;
};

// One input of a batch as the tests know it: the device ID its CSR names (empty when it names
// none) and the `source` column fleetsign writes in rejects.csv for it.
struct Input {
  std::string device_id;
  std::string source;
};
std::vector<Input> generated_inputs(const IssueArgs& a);

// What a batch directory should hold, for check_batch().
struct Expected {
  std::string batch_id;
  fs::path out;
  std::vector<Input> inputs;  // every input, in input order
  bool bundle = false;
  bool generated_keys = false;  // --generate: keys in the outputs
  bool pfx = false;
  bool verify_signatures = false;  // (g) too: one signature verification per certificate
};

// What check_batch() found, for test-specific assertions on top of the invariants.
struct BatchFacts {
  std::int64_t issued = 0, rejected = 0, abandoned = 0;
  std::map<std::string, engine::CertRecord> issued_by_device;  // device ID -> its certificate
  std::map<std::string, std::string> reject_code_by_source;    // rejects.csv: source -> code
};

// Asserts the batch invariants (gtest failures, with the batch ID and what differs):
//  (a) every input ends with exactly one 'issued' certificate of the batch or one rejects.csv line;
//  (b) no serial twice: in the registry, and over every certificate in the outputs, whose serials
//      equal the registry's (and the serial inside each registry DER equals its serial column);
//  (c) no intent left; abandoned serials appear in no output and no issued certificate;
//  (d) outputs match the registry: per-device files (DER equal), manifest.csv/.jsonl and
//      iothub-import.jsonl one line per issued device, or bundle.jsonl/.pem without duplicates;
//      nothing for a device that is not issued;
//  (e) generated keys: {id}_key.pem mode 0600 and its public key is the certificate's;
//  (f) `batch show --json`: state finished, counts equal to the above;
//  (g) with verify_signatures: every issued certificate verifies under its CA (unverified_certs).
BatchFacts check_batch(Fleet& fleet, const Expected& e);

// The issued certificates of a batch (or job: its ID is their batch_id) whose signature does not
// verify under the certificate of the CA their row names, as "SERIAL: why". Empty when all do.
std::vector<std::string> unverified_certs(engine::Registry& registry, const std::string& batch_id);

// Files in OUT/.spool, where --generate keeps a chunk's private keys until its outputs are
// written (batch_io.hpp). A finished batch should have none. Not part of check_batch(): see
// DISABLED_NoSpooledPrivateKeyOutlivesAFinishedBatch.
std::vector<fs::path> spooled_key_files(const fs::path& out);
// The spool file of the chunk starting at input `first_seq` (SEQ.WRITER.keys): the first found,
// or a path that does not exist.
fs::path chunk_spool_file(const fs::path& spool_dir, std::int64_t first_seq);

// --- certificates, keys, CSRs, files

struct X509Deleter {
  void operator()(X509* x) const noexcept { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

// Every PEM block named `name` in `text`, as DER bytes exactly as encoded.
std::vector<std::string> pem_blocks(const std::string& text, const std::string& name);
X509Ptr parse_cert_der(const std::string& der);
// Serial as upper-case hex without leading zeros; normalize_serial() brings a registry serial to
// the same form.
std::string serial_of(const X509* cert);
std::string normalize_serial(const std::string& hex);
// The serial INTEGER of a DER certificate, read by a minimal DER walk (no OpenSSL: the checker
// reads 20,000 output certificates and compares their bytes with OpenSSL-parsed registry DER), in
// the form of serial_of(); empty when the DER is not a certificate.
std::string der_serial(const std::string& cert_der);
// The subjectPublicKey BIT STRING contents of a certificate.
std::string public_key_bits(const X509* cert);
// True when the PEM private key's public key is `public_bits` (as public_key_bits()). EC keys:
// the point is computed from the private scalar (OpenSSL 3's generic key decoder costs ~0.3 ms a
// key); other keys go through the generic decoder.
bool key_matches(const std::string& key_pem, const std::string& public_bits);
std::string der_to_pem(const std::vector<std::uint8_t>& der, const std::string& name);
std::string to_string(const std::vector<std::uint8_t>& bytes);

// A P-256 key and a PEM CSR with subject CN=`cn`, made in-process (openssl CLI is too slow for
// hundreds of CSRs).
std::string make_csr_pem(const std::string& cn);
// Writes one PEM bundle of CSRs, CN = each of `ids`; returns the inputs with the source
// ("FILE:LINE") fleetsign reports for each.
std::vector<Input> write_csr_bundle(const fs::path& file, const std::vector<std::string>& ids);

// CSV fields of one line (RFC 4180 quoting), and the lines of a file.
std::vector<std::string> csv_fields(const std::string& line);
std::vector<std::string> lines_of(const std::string& text);
Poco::JSON::Object::Ptr parse_json(const std::string& text);
std::string sha256_hex(const std::string& data);

// Names, modes, sizes, mtimes and content digests of every file under `dir`, as one text: equal
// snapshots mean nothing was written.
std::string snapshot_dir(const fs::path& dir);

}  // namespace fleetsign::batchtest
