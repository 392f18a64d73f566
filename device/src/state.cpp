#include "fleetsign/device/state.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::device {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kSlotFileLimit = 4096;

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

Slot SlotStore::active() const {
  const fs::path path = m_dir / "slot.json";
  const std::string text = read_bounded(path.string(), kSlotFileLimit, "slot file");
  std::string name;
  try {
    Poco::JSON::Parser parser;
    const auto doc = parser.parse(text).extract<Poco::JSON::Object::Ptr>();
    name = doc->getValue<std::string>("active");
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kCertificateMalformed,
                path.string() + ": not a slot file ({\"active\":\"primary\"}): " + e.displayText());
  }
  if (name == "primary") return Slot::kPrimary;
  if (name == "secondary") return Slot::kSecondary;
  throw Error(ErrorCode::kCertificateMalformed,
              path.string() + ": active slot '" + name + "' is neither primary nor secondary");
}

Credential SlotStore::read(Slot slot) const {
  const fs::path chain = file(slot, "chain"), key = file(slot, "key");
  Credential c =
      make_credential(read_device_file(chain, kDeviceChainFileLimit, "slot chain", false),
                      read_device_file(key, kKeyFileLimit, "slot key", true),
                      chain.string() + " + " + key.string(), m_rule);
  if (c.id() != m_id) {
    throw Error(ErrorCode::kDeviceIdInvalid, chain.string() + ": the certificate is for " +
                                                 c.id().str() + ", not for " + m_id.str());
  }
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
  write_files(slot, chain_pem, key_pem, true);
}

void SlotStore::write_files(Slot slot, const std::string& chain_pem, const std::string& key_pem,
                            bool sync) {
  ensure_dir(m_dir.parent_path());
  ensure_dir(m_dir);
  write_file_atomic(file(slot, "key"), key_pem, 0600, sync);
  write_file_atomic(file(slot, "chain"), chain_pem, 0644, sync);
}

void SlotStore::set_active(Slot slot, bool sync) {
  Poco::JSON::Object doc;
  doc.set("active", std::string(slot_name(slot)));
  std::ostringstream text;
  doc.stringify(text);
  text << '\n';
  write_file_atomic(m_dir / "slot.json", text.str(), 0644, sync);
}

std::pair<Credential, Slot> SlotStore::load_or_create(Credential initial, bool sync) {
  if (!exists()) {
    if (initial.id() != m_id) {
      throw Error(ErrorCode::kDeviceIdInvalid,
                  m_dir.string() + ": cannot hold " + initial.id().str() + "'s credential");
    }
    write_files(Slot::kPrimary, initial.chain_pem(), initial.key_pem(), sync);
    set_active(Slot::kPrimary, sync);  // last: slot.json marks a complete provisioning
    return {std::move(initial), Slot::kPrimary};
  }
  const Slot slot = active();
  return {read(slot), slot};
}

}  // namespace fleetsign::device
