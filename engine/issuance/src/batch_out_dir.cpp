// A batch's output directory: which batch owns it (its marker), and where a new batch may write
// (batch_params.hpp).
#include <filesystem>
#include <fstream>

#include "batch_params.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/batch.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/new_path.hpp"

namespace fleetsign::engine::batch {

namespace {

// One output directory belongs to one batch: its streams are truncated to the batch's own
// watermark and its key spool is the batch's, so a second batch there would destroy the first's
// outputs. A marker file names the owner.
constexpr std::size_t kBatchMarkerLimit = 4096;  // OUT/.fleetsign-batch: one batch ID

// The batch that owns `dir` (its marker's one line), or "" for none. The marker is read like any
// input: the directory is the operator's, and a marker that is /dev/zero or a huge file must be
// refused, not read for ever (a batch ID is a short name).
std::string out_dir_owner(const std::filesystem::path& dir) {
  const std::filesystem::path marker = dir / ".fleetsign-batch";
  std::error_code ec;
  if (!std::filesystem::exists(marker, ec)) return {};
  std::string owner = read_bounded(marker.string(), kBatchMarkerLimit, "batch marker file");
  owner.erase(std::min(owner.find('\n'), owner.size()));
  return owner;
}

}  // namespace

void claim_out_dir(const std::string& out, const std::string& batch_id, bool resuming) {
  const std::filesystem::path marker = std::filesystem::path(out) / ".fleetsign-batch";
  const std::string owner = out_dir_owner(out);
  if (!owner.empty() && owner != batch_id) {
    throw Error(ErrorCode::kOutputDirInUse, "output directory " + out +
                                                " holds the outputs of batch '" + owner +
                                                "'; each batch needs its own directory");
  }
  if (owner.empty() && !resuming && !std::filesystem::is_empty(out)) {
    throw Error(ErrorCode::kOutputDirInUse,
                "output directory " + out +
                    " is not empty and is no batch's own; a batch writes into an empty "
                    "directory (or its own, to resume)");
  }
  if (owner.empty()) {
    std::ofstream m(marker);
    m << batch_id << "\n";
    m.close();
    if (!m) throw Error(ErrorCode::kIo, marker.string() + ": cannot be written");
  }
}

// A new batch's directory, refused before any directory is made when it is (or is inside) the
// directory of another batch the registry holds: a shared batch's shares write into its sNNNN
// subdirectories when a worker reaches them, and a batch (or a directory it made) there first
// would leave that share failing for ever. Only a share of the batch owning the directory above
// goes inside another batch's directory. Markers naming no recorded batch are not obeyed (any
// user could drop one into /tmp). The path is resolved as the kernel will create it (a ".." after
// a missing directory is refused), and the batch records the resolved path.
void prepare_out_dir(BatchOptions& o, BatchStore& batches, bool resuming) {
  if (!resuming) {
    const std::filesystem::path dir = resolve_new_path(o.out_dir, "output directory");
    for (auto p = dir;; p = p.parent_path()) {
      // Above the directory only a plain file is a batch's marker: a link to /dev/zero planted in
      // /tmp would otherwise fail every batch under it (found by review).
      std::error_code ec;
      if (p != dir && !std::filesystem::is_regular_file(
                          std::filesystem::symlink_status(p / ".fleetsign-batch", ec))) {
        if (p == p.root_path()) break;
        continue;
      }
      const std::string owner = out_dir_owner(p);
      const bool own = p == dir && owner == o.batch_id;
      const bool share_of_owner = p == dir.parent_path() && is_share_batch_id(o.batch_id) &&
                                  o.batch_id.starts_with(owner + ".s");
      if (!owner.empty() && !own && !share_of_owner && batches.find_batch(owner)) {
        throw Error(ErrorCode::kOutputDirInUse,
                    "output directory " + o.out_dir +
                        (p == dir ? std::string(" holds the outputs")
                                  : " is inside " + p.string() + ", the output directory") +
                        " of batch '" + owner +
                        "'; each batch needs its own directory, outside another batch's");
      }
      if (p == p.root_path()) break;
    }
    o.out_dir = dir.string();
  }
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec || !std::filesystem::is_directory(o.out_dir, ec)) {
    throw Error(ErrorCode::kIo, "output directory " + o.out_dir + ": " +
                                    (ec ? ec.message() : std::string("not a directory")));
  }
}

}  // namespace fleetsign::engine::batch
