// A CSR directory's listing, and the file list a shared batch's shares read (batch_io.hpp:
// list_csr_dir, write_csr_manifest, read_csr_manifest).
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "batch_io.hpp"
#include "fleetsign/atomic_file.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine::batch {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kManifestHeader = "fleetsign csr-dir file list v1\n";

}  // namespace

std::vector<fs::path> list_csr_dir(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw Error(ErrorCode::kInvalidArgument, "--csr-dir " + dir.string() + ": not a directory");
  }
  // Every entry but a directory is a device's CSR: a device file, a FIFO or a dangling link is
  // read (bounded) and rejected naming it, never skipped without a word.
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::error_code entry_ec;
    if (!e.is_directory(entry_ec)) files.push_back(e.path());
  }
  // Sorted, so a resumed batch sees the same order.
  std::sort(files.begin(), files.end());
  return files;
}

// One name a line; a backslash and a newline in a name are escaped (a backslash, then the
// backslash or 'n').
std::string write_csr_manifest(const std::vector<fs::path>& files, const fs::path& manifest,
                               std::int64_t& bytes) {
  std::string text(kManifestHeader);
  for (const auto& f : files) {
    for (const char c : f.filename().string()) {
      if (c == '\\') {
        text += "\\\\";
      } else if (c == '\n') {
        text += "\\n";
      } else {
        text += c;
      }
    }
    text += '\n';
  }
  write_file_atomic(manifest, text, 0644);
  bytes = static_cast<std::int64_t>(text.size());
  return thumbprint_sha256(
      ByteView(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

namespace {

std::string unescape_name(const std::string& line) {
  std::string name;
  name.reserve(line.size());
  for (std::size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '\\' && i + 1 < line.size()) {
      ++i;
      name += line[i] == 'n' ? '\n' : line[i];
    } else {
      name += line[i];
    }
  }
  return name;
}

}  // namespace

std::vector<std::string> read_csr_manifest(const BatchInput& input) {
  const std::string& path = input.manifest;
  const auto changed = [&](const std::string& how) {
    return Error(ErrorCode::kIo, "CSR file list " + path +
                                     ": changed since the batch was shared (" + how +
                                     "): the shares' inputs are no longer known");
  };
  // Non-blocking, never through a link: a FIFO or a device planted there is refused below.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    throw Error(ErrorCode::kIo, "CSR file list " + path +
                                    ": cannot be opened: " + std::strerror(errno) +
                                    " (it is made when the batch is shared)");
  }
  const std::unique_ptr<int, void (*)(int*)> closer(new int(fd), [](int* f) {
    ::close(*f);
    delete f;
  });
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) throw changed("not a regular file now");
  if (input.manifest_bytes >= 0 && st.st_size != input.manifest_bytes) {
    throw changed(std::to_string(st.st_size) + " bytes, recorded " +
                  std::to_string(input.manifest_bytes));
  }
  // Read once, in blocks: the SHA-256 of the whole list, and the names of this window only.
  const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(),
                                                                   &EVP_MD_CTX_free);
  if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1) {
    throw Error(ErrorCode::kInternal, "SHA-256 is not available");
  }
  const std::int64_t end = input.count > 0 ? input.first + input.count : INT64_MAX;
  std::vector<std::string> names;
  std::string line;
  std::int64_t index = -1;  // -1: the header line
  std::int64_t read_bytes = 0;
  std::vector<char> buf(1 << 16);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(ErrorCode::kIo, "CSR file list " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    read_bytes += n;
    if (read_bytes > (input.manifest_bytes >= 0 ? input.manifest_bytes : st.st_size)) {
      throw changed("it grew while read");
    }
    EVP_DigestUpdate(md.get(), buf.data(), static_cast<std::size_t>(n));
    for (ssize_t i = 0; i < n; ++i) {
      const char c = buf[static_cast<std::size_t>(i)];
      const bool wanted = index < 0 || (index >= input.first && index < end);
      if (c != '\n') {
        if (wanted) line += c;
        continue;
      }
      if (index >= 0 && wanted) names.push_back(unescape_name(line));
      if (index < 0 && line + "\n" != kManifestHeader) throw changed("its header");
      line.clear();
      ++index;
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  EVP_DigestFinal_ex(md.get(), digest, &digest_len);
  const std::string got = hex_upper(ByteView(digest, digest_len));
  if (got != input.manifest_sha256) {
    throw changed("SHA-256 " + got + ", recorded " + input.manifest_sha256);
  }
  for (const auto& name : names) {  // written by write_csr_manifest: names in one directory
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
      throw Error(ErrorCode::kIo, "CSR file list " + path + ": '" + name + "' is not a file name");
    }
  }
  return names;
}

}  // namespace fleetsign::engine::batch
