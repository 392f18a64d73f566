#include "fleetsign/device/state.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::device {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kSlotFileLimit = 4096;
constexpr std::size_t kPendingFileLimit = 16 * 1024;

Error io_error(const fs::path& path, const std::string& what, int err) {
  return Error(ErrorCode::kIo, path.string() + ": " + what + ": " + std::strerror(err));
}

void sync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw io_error(dir, "cannot be opened to sync", errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw io_error(dir, "cannot be synced", err);
}

// A directory that is ours: created 0700, or an existing directory (not a symlink).
void ensure_dir(const fs::path& dir) {
  if (::mkdir(dir.c_str(), 0700) == 0) return;
  if (errno != EEXIST) throw io_error(dir, "cannot be created", errno);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) throw io_error(dir, "cannot be inspected", errno);
  if (!S_ISDIR(st.st_mode)) {
    throw Error(ErrorCode::kIo, dir.string() + ": exists and is not a directory");
  }
}

}  // namespace

void write_file_atomic(const fs::path& path, std::string_view data, unsigned mode, bool sync) {
  const fs::path tmp = path.string() + ".tmp";
  ::unlink(tmp.c_str());  // left by a crash: ours, and incomplete
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                        static_cast<mode_t>(mode));
  if (fd < 0) throw io_error(tmp, "cannot be created", errno);
  ::fchmod(fd, static_cast<mode_t>(mode));  // the umask must not widen or narrow it
  std::size_t done = 0;
  int err = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  if (err == 0 && sync && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    throw io_error(path, "cannot be written", err);
  }
  if (sync) sync_dir(path.parent_path());
}

void write_file_in_place(const fs::path& path, std::string_view data, unsigned mode) {
  const int fd =
      ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, static_cast<mode_t>(mode));
  if (fd < 0) throw io_error(path, "cannot be opened for writing", errno);
  struct stat st {};
  int err = ::fstat(fd, &st) == 0 ? 0 : errno;
  if (err == 0 && !S_ISREG(st.st_mode)) err = EINVAL;
  std::string padded;
  std::string_view out = data;
  if (err == 0 && static_cast<std::size_t>(st.st_size) > data.size()) {
    // Never shorter than before: the new text padded with newlines (which every reader skips),
    // so one pwrite replaces it and no truncate can leave half of it.
    padded.reserve(static_cast<std::size_t>(st.st_size));
    padded.append(data).append(static_cast<std::size_t>(st.st_size) - data.size(), '\n');
    out = padded;
  }
  if (err == 0) ::fchmod(fd, static_cast<mode_t>(mode));
  std::size_t done = 0;
  while (err == 0 && done < out.size()) {
    const ssize_t n = ::pwrite(fd, out.data() + done, out.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  if (!padded.empty()) OPENSSL_cleanse(padded.data(), padded.size());
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) throw io_error(path, "cannot be written", err);
}

void sync_state_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw io_error(dir, "cannot be opened to sync", errno);
  const int rc = ::syncfs(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw io_error(dir, "cannot be synced to disk", err);
}

std::string_view slot_name(Slot slot) noexcept {
  return slot == Slot::kPrimary ? "primary" : "secondary";
}

SlotStore::SlotStore(const fs::path& root, DeviceId id, policy::DeviceIdRule rule)
    : m_dir(root / id.str()), m_id(std::move(id)), m_rule(std::move(rule)) {}

fs::path SlotStore::file(Slot slot, std::string_view what) const {
  return m_dir / (std::string(slot_name(slot)) + "." + std::string(what) + ".pem");
}

bool SlotStore::exists() const {
  std::error_code ec;
  return fs::exists(m_dir / "slot.json", ec);
}

bool SlotStore::has(Slot slot) const {
  std::error_code ec;
  return fs::exists(file(slot, "chain"), ec) && fs::exists(file(slot, "key"), ec);
}

Slot SlotStore::active() const { return active_state().slot; }

SlotStore::ActiveSlot SlotStore::active_state() const {
  const fs::path path = m_dir / "slot.json";
  const std::string text = read_bounded(path.string(), kSlotFileLimit, "slot file");
  std::string name;
  ActiveSlot out;
  try {
    Poco::JSON::Parser parser;
    const auto doc = parser.parse(text).extract<Poco::JSON::Object::Ptr>();
    name = doc->getValue<std::string>("active");
    // Only a JSON true: anything else (a string, null) is no trial, as an unknown field is.
    const Poco::Dynamic::Var trial = doc->get("trial");
    out.trial = trial.type() == typeid(bool) && trial.extract<bool>();
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kCertificateMalformed,
                path.string() + ": not a slot file ({\"active\":\"primary\"}): " + e.displayText());
  }
  if (name == "primary") {
    out.slot = Slot::kPrimary;
  } else if (name == "secondary") {
    out.slot = Slot::kSecondary;
  } else {
    throw Error(ErrorCode::kCertificateMalformed,
                path.string() + ": active slot '" + name + "' is neither primary nor secondary");
  }
  return out;
}

namespace {

// A file as written in place (write_file_in_place) may end in '\n' padding: the text without it.
std::string_view unpadded(std::string_view text) {
  const auto end = text.find_last_not_of('\n');
  return end == std::string_view::npos ? std::string_view() : text.substr(0, end + 1);
}

std::string text_digest(std::string_view pem) {
  const std::string_view text = unpadded(pem);
  return engine::thumbprint_sha256(
      engine::ByteView(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

}  // namespace

void SlotStore::remember(Slot slot, const Credential& c) const {
  m_known = Known{slot, text_digest(c.chain_pem()), text_digest(c.key_pem()), c.cert(), c.parsed()};
}

Credential SlotStore::read(Slot slot) const {
  const fs::path chain = file(slot, "chain"), key = file(slot, "key");
  std::string chain_pem = read_device_file(chain, kDeviceChainFileLimit, "slot chain", false);
  std::string key_pem = read_device_file(key, kKeyFileLimit, "slot key", true);
  std::string source = chain.string() + " + " + key.string();
  if (m_known && m_known->slot == slot && text_digest(chain_pem) == m_known->chain_sha256 &&
      text_digest(key_pem) == m_known->key_sha256) {
    return Credential(m_id, std::move(chain_pem), std::move(key_pem), m_known->cert,
                      std::move(source), m_known->parsed);
  }
  Credential c = make_credential(std::move(chain_pem), std::move(key_pem), source, m_rule);
  if (c.id() != m_id) {
    throw Error(ErrorCode::kDeviceIdInvalid, chain.string() + ": the certificate is for " +
                                                 c.id().str() + ", not for " + m_id.str());
  }
  remember(slot, c);
  return c;
}

void SlotStore::write(Slot slot, const std::string& chain_pem, const std::string& key_pem) {
  // Checked before it is written: a slot on disk is always a usable credential of this device.
  const Credential c =
      make_credential(chain_pem, key_pem,
                      m_dir.string() + " (new " + std::string(slot_name(slot)) + " slot)", m_rule);
  if (c.id() != m_id) {
    throw Error(ErrorCode::kDeviceIdInvalid, m_dir.string() + ": a certificate for " +
                                                 c.id().str() + " cannot go into " + m_id.str() +
                                                 "'s " + std::string(slot_name(slot)) + " slot");
  }
  write_files(slot, chain_pem, key_pem, m_sync);
  remember(slot, c);
}

void SlotStore::put(const fs::path& path, std::string_view data, unsigned mode, bool sync) {
  if (m_sync) {
    write_file_atomic(path, data, mode, sync);
  } else {
    // --sync never: a replace by rename frees the old file's blocks, and on a file system
    // mounted with `discard` (this machine's) that is a synchronous ~1.5 ms per file.
    write_file_in_place(path, data, mode);
  }
}

void SlotStore::write(Slot slot, const Credential& c) {
  if (c.id() != m_id) {
    throw Error(ErrorCode::kDeviceIdInvalid, m_dir.string() + ": a certificate for " +
                                                 c.id().str() + " cannot go into " + m_id.str() +
                                                 "'s " + std::string(slot_name(slot)) + " slot");
  }
  write_files(slot, c.chain_pem(), c.key_pem(), m_sync);
  remember(slot, c);
}

std::optional<std::string> SlotStore::leaf_sha256(Slot slot) const {
  const fs::path path = file(slot, "chain");
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  const std::string text = read_device_file(path, kDeviceChainFileLimit, "slot chain", false);
  BIO* bio = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* der = nullptr;
  long len = 0;
  std::optional<std::string> sha;
  if (bio != nullptr && PEM_read_bio(bio, &name, &header, &der, &len) == 1 &&
      std::string_view(name) == "CERTIFICATE") {
    sha = engine::thumbprint_sha256(engine::ByteView(der, static_cast<std::size_t>(len)));
  }
  ERR_clear_error();
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_free(der);
  BIO_free(bio);
  return sha;
}

void SlotStore::write_files(Slot slot, const std::string& chain_pem, const std::string& key_pem,
                            bool sync) {
  ensure_dir(m_dir.parent_path());
  ensure_dir(m_dir);
  put(file(slot, "key"), key_pem, 0600, sync);
  put(file(slot, "chain"), chain_pem, 0644, sync);
}

void SlotStore::set_active(Slot slot, bool trial) { write_active(slot, trial, m_sync); }

void SlotStore::write_active(Slot slot, bool trial, bool sync) {
  Poco::JSON::Object doc;
  doc.set("active", std::string(slot_name(slot)));
  if (trial) doc.set("trial", true);
  std::ostringstream text;
  doc.stringify(text);
  text << '\n';
  put(m_dir / "slot.json", text.str(), 0644, sync);
}

std::pair<Credential, Slot> SlotStore::load_or_create(Credential initial, bool sync) {
  if (!exists()) {
    if (initial.id() != m_id) {
      throw Error(ErrorCode::kDeviceIdInvalid,
                  m_dir.string() + ": cannot hold " + initial.id().str() + "'s credential");
    }
    write_files(Slot::kPrimary, initial.chain_pem(), initial.key_pem(), sync);
    write_active(Slot::kPrimary, false, sync);  // last: slot.json marks a complete provisioning
    return {std::move(initial), Slot::kPrimary};
  }
  const Slot slot = active();
  return {read(slot), slot};
}

PendingKey::~PendingKey() {
  if (!key_pem.empty()) OPENSSL_cleanse(key_pem.data(), key_pem.size());
}

fs::path SlotStore::pending_file(Slot slot) const {
  return m_dir / (std::string(slot_name(slot)) + ".pending.json");
}

std::optional<PendingKey> SlotStore::pending(Slot slot) const {
  const fs::path path = pending_file(slot);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  std::string text = read_device_file(path, kPendingFileLimit, "pending key file", true);
  if (text.find_first_not_of(" \n") == std::string::npos) return std::nullopt;  // blanked
  PendingKey key;
  try {
    Poco::JSON::Parser parser;
    const auto doc = parser.parse(text).extract<Poco::JSON::Object::Ptr>();
    key.job_id = doc->getValue<std::string>("jobId");
    key.key_type = doc->getValue<std::string>("keyType");
    key.key_pem = doc->getValue<std::string>("key");
  } catch (const Poco::Exception& e) {
    OPENSSL_cleanse(text.data(), text.size());
    throw Error(ErrorCode::kCertificateMalformed,
                path.string() + ": not a pending key file ({\"jobId\",\"keyType\",\"key\"}): " +
                    e.displayText());
  }
  OPENSSL_cleanse(text.data(), text.size());
  if (key.job_id.empty() || key.key_type.empty() || key.key_pem.empty()) {
    throw Error(ErrorCode::kCertificateMalformed,
                path.string() + ": a pending key file needs a jobId, a keyType and a key");
  }
  return key;
}

void SlotStore::write_pending(Slot slot, const PendingKey& key) {
  Poco::JSON::Object doc(Poco::JSON_PRESERVE_KEY_ORDER);
  doc.set("jobId", key.job_id);
  doc.set("keyType", key.key_type);
  doc.set("key", key.key_pem);
  std::ostringstream out;
  doc.stringify(out);
  std::string text = out.str();
  ensure_dir(m_dir.parent_path());
  ensure_dir(m_dir);
  try {
    put(pending_file(slot), text, 0600, m_sync);
  } catch (...) {
    OPENSSL_cleanse(text.data(), text.size());
    throw;
  }
  OPENSSL_cleanse(text.data(), text.size());
}

void SlotStore::remove_pending(Slot slot) {
  const fs::path path = pending_file(slot);
  if (!m_sync) {
    // In place: blanked, not unlinked (an unlink costs what a replace does; see put()).
    std::error_code ec;
    if (fs::exists(path, ec)) write_file_in_place(path, "", 0600);
    return;
  }
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return;
    throw io_error(path, "cannot be removed", errno);
  }
  if (m_sync) sync_dir(m_dir);
}

}  // namespace fleetsign::device
