// Guards the embedded SoftHSM2 token store against a kill while SoftHSM2 rewrites a token's
// metadata. SoftHSM2 2.6 rewrites tokens/<uuid>/token.object in place (open read-write,
// ftruncate(0), write) on every login; a process killed in that window leaves a 0-byte file,
// and the token — with every CA key in it — is gone. Key objects (<uuid>.object) are written
// once, at creation; SoftHSM2 skips a partial one and tolerates a damaged `generation` file, so
// token.object is the one file that needs a copy. A real HSM is not affected.
//
// The copy of each token's token.object lives beside the store, in BACKUP/<uuid>.token.object,
// written atomically (temporary file, fsync, rename, fsync of the directory), and only from a
// live file that parses as a complete SoftHSM2 token object.
//
// Not thread-safe, and meant to run with the home locked (HomeLock): restore before the module
// is loaded, refresh after a successful login.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace fleetsign::engine {

// True when `bytes` is a complete SoftHSM2 token.object: its generation, then attributes to the
// last byte, including the token label and both PIN blobs.
bool is_complete_token_object(std::span<const unsigned char> bytes);

class TokenStoreGuard final {
 public:
  // `token_dir`: SoftHSM2's directories.tokendir. `backup_dir`: where the copies live (created).
  TokenStoreGuard(std::filesystem::path token_dir, std::filesystem::path backup_dir);

  // Before the module loads: each token whose token.object is missing, truncated or unreadable
  // is restored from its copy. Returns one line per file restored ("restored token metadata
  // from backup: FILE"). Error(kTokenCorrupt) naming the file when no complete copy exists.
  std::vector<std::string> restore_damaged() const;

  // After a login (or any change to the token): copies each complete token.object that differs
  // from its copy. Error(kIo) naming the file when the copy cannot be written.
  void refresh_copies() const;

  std::filesystem::path copy_of(const std::filesystem::path& token_subdir) const;

 private:
  std::filesystem::path m_token_dir;
  std::filesystem::path m_backup_dir;
};

}  // namespace fleetsign::engine
