// Output files of the CLI (exports, CA certificates, verification certificates): every write,
// flush, fsync and close is checked, and a failure leaves nothing half-written. See cli.hpp.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ostream>
#include <streambuf>

#include "cli.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

namespace fs = std::filesystem;

namespace {

// A std::streambuf over a file descriptor that keeps the first errno of a failed write, so the
// caller can say why ("No space left on device") instead of "cannot be written".
class FdBuf final : public std::streambuf {
 public:
  explicit FdBuf(int fd) : m_fd(fd) { setp(m_buf, m_buf + sizeof m_buf); }
  FdBuf(const FdBuf&) = delete;  // writes to one descriptor it does not own
  FdBuf& operator=(const FdBuf&) = delete;
  int error() const { return m_errno; }

 protected:
  int_type overflow(int_type ch) override {
    if (!drain()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }
  int sync() override { return drain() ? 0 : -1; }

 private:
  bool drain() {
    const char* p = pbase();
    while (p < pptr() && m_errno == 0) {
      const ssize_t n = ::write(m_fd, p, static_cast<std::size_t>(pptr() - p));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        m_errno = n < 0 ? errno : EIO;
        break;
      }
      p += n;
    }
    setp(m_buf, m_buf + sizeof m_buf);
    return m_errno == 0;
  }

  int m_fd;
  int m_errno = 0;
  char m_buf[64 * 1024];
};

Error write_error(const fs::path& path, const std::string& what, int err) {
  return Error(ErrorCode::kIo, path.string() + ": cannot be written (" + what +
                                   (err != 0 ? std::string(": ") + std::strerror(err) : "") + ")");
}

// Runs `produce` into `fd` and flushes; throws naming `path` when any write failed.
void produce_into(int fd, const fs::path& path, const OutputProducer& produce) {
  FdBuf buf(fd);
  std::ostream stream(&buf);
  try {
    produce(stream);
  } catch (const Error&) {
    // The producer saw the stream fail; the descriptor's errno says why, and this names the file.
    if (buf.error() != 0) throw write_error(path, "write", buf.error());
    throw;
  }
  stream.flush();
  if (!stream || buf.error() != 0) throw write_error(path, "write", buf.error());
}

// /dev/stdout, /dev/full, a FIFO, a terminal: written in place, never replaced by a rename. Under
// /dev and /proc a symlink counts too (/dev/stdout, /dev/fd/1 lead to a descriptor of this
// process); a regular file there (/dev/shm) is an ordinary output.
bool is_special(const fs::path& path) {
  std::error_code ec;
  const fs::file_status own = fs::symlink_status(path, ec);
  if (ec || !fs::exists(own)) return false;
  const std::string abs = fs::absolute(path).lexically_normal().string();
  const bool system_dir = abs.rfind("/dev/", 0) == 0 || abs.rfind("/proc/", 0) == 0;
  if (system_dir && !fs::is_regular_file(own)) return true;
  const fs::file_status target = fs::status(path, ec);
  return !ec && fs::exists(target) && !fs::is_regular_file(target);
}

// The descriptor of this process that `path` names (/dev/stdout, /dev/fd/N, /proc/self/fd/N), or
// -1. Writing through a duplicate shares its file offset, so what the CLI prints afterwards on
// stdout follows the output instead of overwriting it.
int own_descriptor(const fs::path& path) {
  const std::string p = fs::absolute(path).lexically_normal().string();
  if (p == "/dev/stdout") return 1;
  if (p == "/dev/stderr") return 2;
  for (const std::string prefix : {"/dev/fd/", "/proc/self/fd/"}) {
    if (p.rfind(prefix, 0) == 0 && p.size() > prefix.size() && p.size() - prefix.size() < 6 &&
        p.find_first_not_of("0123456789", prefix.size()) == std::string::npos) {
      return std::stoi(p.substr(prefix.size()));
    }
  }
  return -1;
}

void write_special(const fs::path& path, const OutputProducer& produce) {
  // Never created or truncated; O_APPEND keeps a `>>` redirection intact.
  const int own = own_descriptor(path);
  const int fd = own >= 0 ? ::fcntl(own, F_DUPFD_CLOEXEC, 0)
                          : ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) throw write_error(path, "open", errno);
  try {
    produce_into(fd, path, produce);
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) throw write_error(path, "close", errno);
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // the rename is done; durability of the entry is best effort here
  ::fsync(fd);
  ::close(fd);
}

// A temporary file beside the target, renamed over it only once it is complete and on disk.
void write_regular(fs::path path, fs::perms perms, const OutputProducer& produce) {
  std::error_code ec;
  if (fs::is_symlink(path, ec)) {
    // Replace the file the link points to and keep the link (a dangling link is replaced).
    const fs::path target = fs::canonical(path, ec);
    if (!ec) path = target;
  }
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  fs::create_directories(dir, ec);
  std::string tmp = (dir / ("." + path.filename().string() + ".tmp-XXXXXX")).string();
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) throw write_error(path, "creating a temporary file in " + dir.string(), errno);
  try {
    produce_into(fd, path, produce);
    if (::fchmod(fd, static_cast<mode_t>(perms)) != 0) throw write_error(path, "chmod", errno);
    if (::fsync(fd) != 0) throw write_error(path, "fsync", errno);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw write_error(path, "close", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw write_error(path, "rename", err);
  }
  fsync_dir(dir);
}

}  // namespace

namespace {
std::vector<fs::path>& protected_dirs() {
  static std::vector<fs::path> dirs;
  return dirs;
}
}  // namespace

void protect_directory(const fs::path& dir) {
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(fs::absolute(dir), ec);
  protected_dirs().push_back(ec ? fs::absolute(dir) : canonical);
}

void refuse_protected(const fs::path& path) {
  std::error_code ec;
  fs::path target = fs::weakly_canonical(fs::absolute(path), ec);
  if (ec) {
    target = fs::absolute(path).lexically_normal();
  }
  for (const fs::path& dir : protected_dirs()) {
    const fs::path rel = target.lexically_relative(dir);
    if (!rel.empty() && *rel.begin() != "..") {
      throw Error(ErrorCode::kInvalidArgument,
                  path.string() + ": is inside the fleetsign home " + dir.string() +
                      " (its registry, token and configuration); write outputs elsewhere");
    }
  }
}

void write_output_file(const fs::path& path, fs::perms perms, const OutputProducer& produce) {
  if (path.empty()) throw Error(ErrorCode::kUsage, "the output file name is empty");
  refuse_protected(path);
  if (is_special(path)) {
    write_special(path, produce);
  } else {
    write_regular(path, perms, produce);
  }
}

void write_text_file(const fs::path& path, const std::string& text, fs::perms perms) {
  write_output_file(path, perms, [&](std::ostream& out) { out.write(text.data(), text.size()); });
}

}  // namespace fleetsign::cli
