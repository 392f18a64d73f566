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
  if (options.input.kind != BatchInput::Kind::kGenerate) {
    // A CSR directory would be shared by position in its listing, which can change under the
    // workers, and a device named by two files in two shares would be signed twice: it needs a
    // manifest of the files and a device check across shares first.
    throw Error(ErrorCode::kUsage,
                "--share takes --generate: CSR inputs are not shared between workers yet (issue "
                "them with one `issue --csr-dir`/`--csr-file` run)");
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
  const std::int64_t total = o.input.kind == BatchInput::Kind::kGenerate
                                 ? o.input.count
                                 : batch::open_input(o.input)->total();
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
