// A path that a command will create (an output directory, a worker's home), resolved as the kernel
// will resolve it: the part that exists through its symlinks, the rest appended. Checks made on
// the resolved path hold for the directory that is then created, and cleanup removes what was
// created there, not what a symlink or ".." leads to.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "fleetsign/error.hpp"

namespace fleetsign {

// kInvalidArgument for a ".." after a component that does not exist yet: std::filesystem would
// drop both by text (weakly_canonical), while creating the directories walks them, through any
// symlink in between, to another place (found by review: `nx/../L/../s0002`, L a symlink).
inline std::filesystem::path resolve_new_path(const std::filesystem::path& path,
                                              std::string_view what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path abs = fs::absolute(path, ec);
  if (ec)
    throw Error(ErrorCode::kInvalidArgument,
                std::string(what) + " " + path.string() + ": " + ec.message());
  fs::path out = abs.root_path();
  bool missing = false;
  for (const auto& part : abs.relative_path()) {
    if (part.empty() || part == ".") continue;
    if (!missing) {
      const fs::path next = out / part;
      if (fs::exists(next, ec)) {
        out = fs::canonical(next, ec);
        if (ec) {
          throw Error(ErrorCode::kInvalidArgument,
                      std::string(what) + " " + path.string() + ": " + ec.message());
        }
        continue;
      }
      missing = true;
    }
    if (part == "..") {
      throw Error(ErrorCode::kInvalidArgument,
                  std::string(what) + " " + path.string() +
                      ": '..' after a directory that does not exist yet; give the path "
                      "without it");
    }
    out /= part;
  }
  return out;
}

}  // namespace fleetsign
