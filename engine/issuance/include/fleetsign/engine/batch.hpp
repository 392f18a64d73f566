// Batch issuance: a lot of devices through the issuance steps in a oneTBB parallel_pipeline,
// exactly once, resumable after kill -9 at any instruction.
//
//   read (serial, in order) → check + prepare (parallel) → record intents (serial, one
//   transaction per chunk) → sign + verify (parallel) → record certificates (serial, one
//   transaction per chunk) → render outputs (parallel) → append streams + advance the watermark
//   (serial, in order)
//
// Pipeline items are chunks of devices, so durability costs one commit per chunk, not per device.
// Invariants (asserted by the crash tests): a certificate leaves the process only after it is
// recorded; a serial is never used twice (intents left by a crash are marked abandoned on resume);
// every input ends with exactly one issued certificate or one reject; outputs match the registry.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/clock.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/hsm/pin.hpp"
#include "fleetsign/policy/policy.hpp"

namespace fleetsign::engine {

struct BatchInput {
  enum class Kind { kCsrDir, kCsrFile, kGenerate, kCsrDer };
  Kind kind = Kind::kGenerate;
  // kCsrDir: directory of *.csr/*.pem/*.der; kCsrFile: PEM bundle; kCsrDer: names the source
  std::string path;
  Der der;                 // kCsrDer: one CSR, DER (a one-item batch: `issue --csr`)
  std::int64_t count = 0;  // kGenerate: number of devices; kCsrDir: 0 (all) or a window's size
  // kGenerate and kCsrDir: the input position this batch starts at (a share of a shared batch:
  // generated IDs count from first + 1, a CSR directory's sorted files from the first-th).
  std::int64_t first = 0;
  // kCsrDir of a shared batch: the file list fixed when it was shared (the directory can change
  // under the workers), read instead of the directory, and its SHA-256 (upper-case hex).
  std::string manifest, manifest_sha256;
  std::int64_t manifest_bytes = 0;  // its size (-1: not recorded)
  // kGenerate: e.g. "sensor-{06}": one {NN} placeholder, NN = 01..20 digits (zero-padded, from
  // 1); every ID it makes must pass DeviceId::check before anything is recorded.
  std::string id_pattern;
  policy::KeyAlgorithm key = policy::KeyAlgorithm::kEcP256;  // kGenerate
};

struct BatchProgress {
  std::int64_t done = 0;    // inputs finished (issued + rejected)
  std::int64_t total = -1;  // -1 when unknown (a CSR bundle)
  std::int64_t issued = 0, rejected = 0;
  double seconds = 0;
};

// Where a batch's certificates go.
enum class Delivery {
  kBatchDirectory,  // per-device files (or a bundle), manifests, rejects: the directory is the
                    // batch's own (a marker file names it; a foreign non-empty one is refused)
  kDeviceFiles,     // only {id}_cert.pem and {id}_fullchain.pem (one-item batches: `issue --csr`)
  kReturned,        // nothing written; the certificates come back in BatchSummary::delivered
};

struct BatchOptions {
  std::string batch_id;  // empty: one is generated
  // Set by run_share only: the shared batch this one is a share of ("PARENT.sNNNN" IDs are
  // reserved for shares, so no batch of an operator's can stand in for one).
  std::string share_of;
  std::string ca_name;
  std::string group;  // policy group whose device validity applies (empty: the default)
  BatchInput input;
  std::string out_dir;  // unused with Delivery::kReturned
  Delivery delivery = Delivery::kBatchDirectory;
  Lineage lineage;
  int threads = 0;            // 0: all cores
  bool bundle = false;        // one PEM + one JSON-lines stream instead of files per device
  bool pfx = false;           // {id}.pfx per generated device
  bool reissue = false;       // issue even when the device holds a valid certificate
  int chunk_size = 1024;      // devices per registry transaction: amortises the commit's fsync
  int chunks_per_thread = 0;  // chunks in flight per thread (0: the default, 4); for tuning
  std::function<void(const BatchProgress&)> progress;  // called in order, from one thread
};

struct BatchSummary {
  std::string batch_id;
  std::string out_dir;
  std::int64_t issued = 0;          // signed and recorded by this run
  std::int64_t reemitted = 0;       // recorded by an earlier run; only their outputs written now
  std::int64_t rejected = 0;        // rejected by this run
  std::int64_t total_issued = 0;    // in the batch, over all runs
  std::int64_t total_rejected = 0;  // in the batch, over all runs
  std::int64_t abandoned = 0;       // intents of a crashed run marked abandoned on resume
  double seconds = 0;
  double certs_per_second = 0;
  bool resumed = false;
  bool already_finished = false;  // nothing to do: the batch had finished before
  bool clamped = false;           // validity clamped to the CA's expiry
  // Busy seconds per pipeline stage (read, prepare, intents, sign, commit, render, write).
  std::vector<std::pair<std::string, double>> stage_seconds;
  // Delivery::kDeviceFiles and kReturned only (one-item batches): what was delivered, and the
  // first reject with its reason.
  std::vector<SignedCert> delivered;
  bool extensions_ignored = false;
  ErrorCode first_reject = ErrorCode::kOk;
  std::string first_reject_reason;
};

class BatchRunner final {
 public:
  // The references must outlive the runner. `pfx_password` is needed only with pfx: it must be
  // non-empty and hold no NUL byte (kInvalidArgument), so no key leaves unprotected.
  BatchRunner(Stores& registry, CaService& cas, const policy::Policy& policy, const Clock& clock,
              RandomSource& random);

  // Starts a new batch (or, when options.batch_id names an existing batch, resumes it / reports
  // it finished). Errors: kAlreadyExists is never thrown for a known id; kNotFound (CA),
  // kInvalidArgument (inputs), token and registry errors.
  BatchSummary run(const BatchOptions& options, const hsm::Pin* pfx_password);
  // Resumes a batch from its recorded parameters: abandons its open intents, re-emits outputs of
  // committed certificates past the watermark, and processes the rest. Needs nothing but the ID
  // and, when the batch writes .pfx files (needs_pfx_password), the password. An output failure
  // (kIo) of an earlier run leaves its certificates recorded and the watermark before them: a
  // resume writes their outputs (re-emitted) and never signs them again.
  BatchSummary resume(const std::string& batch_id, const hsm::Pin* pfx_password,
                      std::function<void(const BatchProgress&)> progress, int threads);

  // A batch for several workers (batch_share.cpp; WorkStore in stores.hpp): checks `options` as
  // run() does (CA, inputs, output directory), then records the batch and its shares of
  // `share_size` inputs, signing nothing. Generated devices or a CSR directory only (a bundle is
  // a stream: it has no positions to share), never .pfx (no worker holds the password).
  // Returns the batch ID. kUsage / kInvalidArgument for what cannot be shared.
  std::string share(const BatchOptions& options, std::int64_t share_size);
  // Runs one claimed share as a batch of its own, "PARENT.sNNNN" with outputs in OUT/sNNNN; a
  // share an earlier holder started is resumed (its intents abandoned, its outputs re-emitted).
  BatchSummary run_share(const BatchShare& share,
                         std::function<void(const BatchProgress&)> progress, int threads);
  static std::string share_batch_id(const std::string& batch_id, std::int64_t share);

 private:
  BatchSummary execute(const BatchRecord& record, const BatchOptions& options,
                       const hsm::Pin* pfx_password, bool resumed, std::int64_t abandoned);
  Stores& m_registry;
  CaService& m_cas;
  const policy::Policy& m_policy;
  const Clock& m_clock;
  RandomSource& m_random;
};

// "ID.sNNNN" (four or more digits): the form of a share's batch ID, which only run_share uses.
bool is_share_batch_id(const std::string& batch_id);

// True when the recorded batch writes .pfx files, so a resume needs the PKCS#12 password.
// kNotFound when there is no such batch.
bool needs_pfx_password(Stores& registry, const std::string& batch_id);

// Expands an id pattern: "sensor-{06}" with n = 7 → "sensor-000007"; "{}" → "7".
// Throws Error(kInvalidArgument) when the pattern has not exactly one {..} placeholder or its
// width is over 20 (validate_id_pattern).
std::string expand_id_pattern(const std::string& pattern, std::int64_t n);
// Checks a pattern before anything is recorded: one placeholder of width 0..20, and the first and
// last IDs of 1..count pass DeviceId::check (the only varying part is digits, so every ID between
// passes too). kInvalidArgument for the pattern, kDeviceIdInvalid for the IDs.
void validate_id_pattern(const std::string& pattern, std::int64_t count,
                         const policy::Policy& policy);

}  // namespace fleetsign::engine
