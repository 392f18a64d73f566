// A device's flash: what one device keeps across restarts, under `STATE/{deviceId}/`:
//
//   slot.json            {"active":"primary"}: the slot the device connects with; "trial":true
//                        while the hub has not admitted a slot switched to by a rotation (the
//                        device falls back to the other slot when it keeps being refused)
//   primary.chain.pem    certificate chain of the primary slot (leaf first)
//   primary.key.pem      its private key (0600)
//   secondary.*          the other slot, once a rotation has written it
//   {slot}.pending.json  a rotation's new key for the free slot, not yet certified (0600):
//                        {"jobId","keyType","key"} in one file, so key and job change together
//
// Two slots, so a rotation can write the new key and certificate beside the running ones and
// switch only when the new certificate is installed. Every write is atomic (temporary file, fsync,
// rename, fsync of the directory): a power cut leaves the old file or the new one. The directory
// is 0700, keys 0600; files are opened with O_NOFOLLOW. What is read back is checked like any
// input (bounded, decoded strictly, CN = the device's ID, key matches). Errors: fleetsign::Error
// naming the file. Not thread-safe: one device's store is used from one thread.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "fleetsign/device/identity.hpp"

namespace fleetsign::device {

enum class Slot { kPrimary, kSecondary };
std::string_view slot_name(Slot slot) noexcept;  // "primary" | "secondary"
inline Slot other_slot(Slot slot) noexcept {
  return slot == Slot::kPrimary ? Slot::kSecondary : Slot::kPrimary;
}

// A key made for a slot by a rotation (createCsr) and kept until its certificate is installed.
struct PendingKey {
  std::string job_id;
  std::string key_type;  // "ec-p256" | "ec-p384"
  std::string key_pem;   // PKCS#8 PEM; wiped when the object dies
  PendingKey() = default;
  PendingKey(std::string job, std::string type, std::string pem)
      : job_id(std::move(job)), key_type(std::move(type)), key_pem(std::move(pem)) {}
  ~PendingKey();
  PendingKey(PendingKey&&) noexcept = default;
  PendingKey& operator=(PendingKey&&) noexcept = default;
  PendingKey(const PendingKey&) = delete;
};

class SlotStore final {
 public:
  // `root` is the --state directory; the device's directory is root/{id} (the ID is checked, so
  // it is one path component).
  SlotStore(const std::filesystem::path& root, DeviceId id, policy::DeviceIdRule rule);

  const std::filesystem::path& dir() const noexcept { return m_dir; }
  bool exists() const;  // slot.json is there: the device has been provisioned

  // First run: writes `initial` (checked already: it is a Credential of this device) as the
  // primary slot and makes it active, and returns it. Later runs: reads the active slot back (the
  // device's flash wins over the batch it was first provisioned from). With `sync` false the
  // first-run files are not fsynced one by one: the caller syncs the file system once for a whole
  // fleet (sync_state_dir), 60,000 fsyncs fewer for 10,000 devices.
  std::pair<Credential, Slot> load_or_create(Credential initial, bool sync = true);

  Slot active() const;  // kIo/kCertificateMalformed when slot.json is missing/bad
  struct ActiveSlot {
    Slot slot = Slot::kPrimary;
    bool trial = false;  // switched to by a rotation, not admitted by the hub yet
  };
  ActiveSlot active_state() const;  // the same errors as active()
  // The slot's chain and key, checked. The files are read every time; when they hold exactly what
  // this store last wrote or read for that slot, the credential decoded then is used again (a
  // rotation reads the new slot twice: OpenSSL 3.0 decodes a certificate in ~0.3 ms).
  Credential read(Slot slot) const;
  bool has(Slot slot) const;
  // Writes a slot's chain and key (atomically, key 0600). The key must match the chain's leaf and
  // the leaf's CN must be this device: checked before anything is written.
  void write(Slot slot, const std::string& chain_pem, const std::string& key_pem);
  // The same for a credential checked already (make_credential): only its device is checked.
  void write(Slot slot, const Credential& credential);
  void set_active(Slot slot, bool trial = false);
  // SHA-256 (upper-case hex) of the slot's leaf certificate DER, from its first PEM block and
  // without decoding the certificate (cheap; read() checks it all); nullopt when the slot has no
  // chain file or its first block is not a CERTIFICATE.
  std::optional<std::string> leaf_sha256(Slot slot) const;

  // Whether write(), set_active() and the pending-key calls fsync (default true). false
  // (`--sync never`) is for simulation only: files are then rewritten in place without fsync
  // (write_file_in_place), so a power cut may lose or tear what was written, and a killed
  // process may (rarely) tear a file longer than a page.
  void set_sync(bool sync) noexcept { m_sync = sync; }
  bool sync() const noexcept { return m_sync; }

  // The slot's pending key: nullopt when there is none; kCertificateMalformed naming the file when
  // it is there but is not a pending-key file (bounded read, strict JSON, the fields checked).
  std::optional<PendingKey> pending(Slot slot) const;
  void write_pending(Slot slot, const PendingKey& key);  // atomically, 0600, replaces
  // No error when there is none. Without sync the file is blanked in place, which pending()
  // reads as none.
  void remove_pending(Slot slot);

 private:
  void write_files(Slot slot, const std::string& chain_pem, const std::string& key_pem, bool sync);
  void write_active(Slot slot, bool trial, bool sync);
  void put(const std::filesystem::path& path, std::string_view data, unsigned mode, bool sync);
  std::filesystem::path file(Slot slot, std::string_view what) const;
  std::filesystem::path pending_file(Slot slot) const;

  // The last credential written or read, by the SHA-256 of its files' text.
  struct Known {
    Slot slot = Slot::kPrimary;
    std::string chain_sha256, key_sha256;
    CertInfo cert;
    std::shared_ptr<const ParsedCredential> parsed;
  };
  void remember(Slot slot, const Credential& c) const;

  std::filesystem::path m_dir;
  DeviceId m_id;
  policy::DeviceIdRule m_rule;
  bool m_sync = true;
  mutable std::optional<Known> m_known;
};

// Writes `data` to `path` atomically with `mode` (temporary file with O_NOFOLLOW|O_EXCL, fsync,
// rename, fsync of the directory; without `sync`, no fsyncs). Throws Error(kIo) naming the file.
void write_file_atomic(const std::filesystem::path& path, std::string_view data, unsigned mode,
                       bool sync = true);
// Overwrites `path` in place with one pwrite (created with `mode` if absent; O_NOFOLLOW), padding
// with '\n' to its old length rather than truncating; no fsync. Not atomic against a power cut.
// Throws Error(kIo) naming the file.
void write_file_in_place(const std::filesystem::path& path, std::string_view data, unsigned mode);
// Flushes the file system holding `dir` to disk (syncfs). Throws Error(kIo).
void sync_state_dir(const std::filesystem::path& dir);

}  // namespace fleetsign::device
