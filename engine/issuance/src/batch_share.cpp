// A batch shared by several workers (batch.hpp: BatchRunner::share and run_share).
#include <cstdio>
#include <filesystem>

#include "batch_io.hpp"
#include "batch_params.hpp"
#include "fleetsign/engine/batch.hpp"
#include "fleetsign/engine/ca_constraints.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

constexpr std::int64_t kMaxShareSize = 10'000'000;
constexpr std::int64_t kMaxShares = 100'000;
constexpr const char* kCsrListName = ".fleetsign-csr-files";  // in the shared batch's directory

}  // namespace

bool is_share_batch_id(const std::string& id) {
  const auto dot = id.rfind(".s");
  if (dot == std::string::npos || id.size() - dot < 6) return false;
  for (std::size_t i = dot + 2; i < id.size(); ++i) {
    if (id[i] < '0' || id[i] > '9') return false;
  }
  return true;
}

std::string BatchRunner::share_batch_id(const std::string& batch_id, std::int64_t share) {
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, ".s%04lld", static_cast<long long>(share));
  return batch_id + suffix;
}

std::string BatchRunner::share(const BatchOptions& options, std::int64_t share_size) {
  if (share_size < 1 || share_size > kMaxShareSize) {
    throw Error(ErrorCode::kUsage,
                "--share: the share size must be 1.." + std::to_string(kMaxShareSize) + " inputs");
  }
  if (options.delivery != Delivery::kBatchDirectory) {
    throw Error(ErrorCode::kUsage, "a shared batch writes into a batch directory (--out)");
  }
  if (options.input.kind != BatchInput::Kind::kGenerate &&
      options.input.kind != BatchInput::Kind::kCsrDir) {
    // A bundle would be shared by the position of its PEM blocks in a file that can change under
    // the workers.
    throw Error(ErrorCode::kUsage,
                "--share takes --generate or --csr-dir: a CSR bundle is not shared between "
                "workers (issue it with one `issue --csr-file` run, or split it into a directory)");
  }
  if (options.input.kind == BatchInput::Kind::kCsrDir && options.reissue) {
    // Two files naming one device in two shares: without the registry's device check each share
    // would issue it.
    throw Error(ErrorCode::kUsage,
                "--share with --csr-dir does not go with --reissue: a device named by files in "
                "two shares would be issued twice");
  }
  if (options.pfx) {
    throw Error(ErrorCode::kUsage,
                "--share does not go with --pfx: the workers would need the PKCS#12 password");
  }
  batch::validate(options, nullptr);
  BatchOptions o = options;
  o.out_dir = std::filesystem::absolute(o.out_dir).string();
  if (!o.input.path.empty()) o.input.path = std::filesystem::absolute(o.input.path).string();
  if (o.batch_id.empty()) o.batch_id = new_batch_id(m_clock, m_random);
  if (m_registry.find_batch(o.batch_id)) {
    throw Error(ErrorCode::kAlreadyExists, "batch '" + o.batch_id + "' exists already");
  }
  m_cas.load_key(m_cas.get(o.ca_name));  // kNotFound, kKeyNotFound (an external CA)
  m_cas.require_can_sign(o.ca_name);
  batch::check_inputs(o.input, m_policy);
  std::int64_t total = o.input.count;
  std::vector<std::filesystem::path> csr_files;
  if (o.input.kind == BatchInput::Kind::kCsrDir) {
    if (o.input.count != 0 || o.input.first != 0) {
      throw Error(ErrorCode::kUsage, "--share takes a whole CSR directory");
    }
    csr_files = batch::list_csr_dir(o.input.path);
    total = static_cast<std::int64_t>(csr_files.size());
  }
  const std::int64_t last = (total + share_size - 1) / share_size - 1;
  if (const auto why = check_safe_name(share_batch_id(o.batch_id, last), "share batch ID")) {
    throw Error(ErrorCode::kInvalidArgument, "batch ID '" + o.batch_id + "': " + *why);
  }
  if ((total + share_size - 1) / share_size > kMaxShares) {
    throw Error(ErrorCode::kUsage, "--share " + std::to_string(share_size) + ": " +
                                       std::to_string(total) + " inputs make more than " +
                                       std::to_string(kMaxShares) + " shares; give larger ones");
  }
  batch::prepare_out_dir(o, m_registry, false);
  batch::claim_out_dir(o.out_dir, o.batch_id, false);
  if (o.input.kind == BatchInput::Kind::kCsrDir) {
    // The directory can change under the workers: each share reads its window of the list made
    // now, so that no file is read by two shares or by none. (A device named by files in two
    // shares is issued once: the registry refuses the second share's intent.)
    o.input.manifest = (std::filesystem::path(o.out_dir) / kCsrListName).string();
    o.input.manifest_sha256 =
        batch::write_csr_manifest(csr_files, o.input.manifest, o.input.manifest_bytes);
  }
  std::vector<BatchShare> shares;
  for (std::int64_t first = 0, n = 0; first < total; first += share_size, ++n) {
    BatchShare s;
    s.batch_id = o.batch_id;
    s.share = n;
    s.first = first;
    s.count = std::min(share_size, total - first);
    shares.push_back(s);
  }
  BatchRecord rec;
  rec.id = o.batch_id;
  rec.ca_name = o.ca_name;
  rec.params_json = params_to_json(o);
  rec.created_at = m_clock.now();
  m_registry.create_shared_batch(rec, shares);
  return o.batch_id;
}

BatchSummary BatchRunner::run_share(const BatchShare& share,
                                    std::function<void(const BatchProgress&)> progress,
                                    int threads) {
  const auto parent = m_registry.find_batch(share.batch_id);
  if (!parent) {
    throw Error(ErrorCode::kNotFound, "batch '" + share.batch_id + "' not found in the registry");
  }
  const std::string id = share_batch_id(share.batch_id, share.share);
  if (const auto existing = m_registry.find_batch(id)) {
    // Only the share's own batch answers for it.
    if (params_from_json(id, existing->params_json).share_of != share.batch_id) {
      throw Error(ErrorCode::kRegistryError, "batch '" + id + "' is not share " +
                                                 std::to_string(share.share) + " of batch '" +
                                                 share.batch_id + "': the share cannot be run");
    }
    return resume(id, nullptr, std::move(progress), threads);
  }
  BatchOptions o = params_from_json(parent->id, parent->params_json);
  o.batch_id = id;
  o.share_of = share.batch_id;
  o.input.first += share.first;
  o.input.count = share.count;
  char dir[32];
  std::snprintf(dir, sizeof dir, "s%04lld", static_cast<long long>(share.share));
  o.out_dir = (std::filesystem::path(o.out_dir) / dir).string();
  o.progress = std::move(progress);
  o.threads = threads;
  return run(o, nullptr);
}

}  // namespace fleetsign::engine
