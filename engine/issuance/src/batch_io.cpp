#include "batch_io.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>
#include <optional>

#include "device_keys.hpp"
#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine::batch {

namespace fs = std::filesystem;

Item::~Item() {
  if (!key_pkcs8.empty()) {
    OPENSSL_cleanse(key_pkcs8.data(), key_pkcs8.size());
  }
}

// ---------------------------------------------------------------------------------------------
// Inputs

namespace {

class CsrDirReader final : public InputReader {
 public:
  explicit CsrDirReader(const BatchInput& input) {
    const fs::path dir = input.path;
    if (input.manifest.empty()) {
      m_files = list_csr_dir(dir);
      window(input.first, input.count);
      return;
    }
    // A shared directory: this share's window of the list made when it was shared. The directory
    // must be there (a worker without the mount fails the share, which stays to be retried,
    // rather than rejecting every file).
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--csr-dir " + dir.string() +
                      ": not a directory here (every worker reads a shared batch's CSR "
                      "directory at the same path)");
    }
    bool any = false;
    for (auto& name : read_csr_manifest(input)) {
      m_files.push_back(dir / name);
      any = any || fs::exists(fs::symlink_status(m_files.back(), ec));
    }
    // An empty mount point is a directory too: when none of the share's files is there, the
    // share fails whole rather than rejecting each.
    if (!m_files.empty() && !any) {
      throw Error(ErrorCode::kIo, "--csr-dir " + dir.string() + ": none of this share's " +
                                      std::to_string(m_files.size()) +
                                      " files is there (is the directory mounted on this worker?)");
    }
  }
  // The files [first, first + count) of the whole listing (count 0: to the end).
  void window(std::int64_t first, std::int64_t count) {
    if (first > 0 || count > 0) {  // a share: its window of the files
      const auto size = static_cast<std::int64_t>(m_files.size());
      const auto begin = std::min(std::max<std::int64_t>(first, 0), size);
      const auto end = count > 0 ? std::min(begin + count, size) : size;
      m_files = std::vector<fs::path>(m_files.begin() + begin, m_files.begin() + end);
    }
  }
  bool next(Item& item) override {
    if (m_pos >= m_files.size()) return false;
    item.seq = static_cast<std::int64_t>(m_pos);
    const fs::path& file = m_files[m_pos++];
    item.source = file.string();
    try {
      auto blobs = parse_csr_text(read_bounded(file.string(), kCsrFileLimit, "CSR file"));
      if (blobs.size() != 1) {
        item.reject(ErrorCode::kCsrMalformed,
                    "holds " + std::to_string(blobs.size()) + " CSRs, expected one");
      } else if (!blobs[0].problem.empty()) {
        item.reject(ErrorCode::kCsrMalformed, blobs[0].problem);
      } else {
        item.input = std::move(blobs[0].der);
      }
    } catch (const Error& e) {
      item.reject(e.code(), e.what());
    }
    return true;
  }
  std::int64_t total() const override { return static_cast<std::int64_t>(m_files.size()); }

 private:
  std::vector<fs::path> m_files;
  std::size_t m_pos = 0;
};

// Streams a PEM bundle block by block: a bundle of 10^6 CSRs is never held in memory. Each line
// and each PEM block is bounded: a line over kMaxLine is no PEM (the input is refused,
// kInputTooLarge: /dev/zero has no lines), a block over kCsrFileLimit is one reject and reading
// goes on after it.
class CsrBundleReader final : public InputReader {
 public:
  static constexpr std::size_t kMaxLine = 64 * 1024;

  explicit CsrBundleReader(const fs::path& file) : m_name(file.string()), m_in(file) {
    struct stat st {};
    if (::stat(file.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      throw Error(ErrorCode::kIo, "CSR bundle " + m_name + ": is a directory, not a file");
    }
    if (!m_in) {
      throw Error(ErrorCode::kIo, "CSR bundle " + m_name + ": cannot be read");
    }
  }
  bool next(Item& item) override {
    std::string line, block;
    std::int64_t start = 0;
    bool too_large = false;
    while (read_line(line)) {
      if (start == 0) {
        if (line.rfind("-----BEGIN ", 0) == 0) {
          start = m_line;
          block = line + "\n";
        }
        continue;
      }
      if (block.size() + line.size() + 1 > kCsrFileLimit) {
        too_large = true;
        block.clear();
      }
      if (!too_large) {
        block += line;
        block += '\n';
      }
      if (line.rfind("-----END ", 0) == 0) break;
    }
    if (start == 0) return false;
    item.seq = m_seq++;
    item.source = m_name + ":" + std::to_string(start);
    if (too_large) {
      item.reject(ErrorCode::kInputTooLarge, "PEM block starting on line " + std::to_string(start) +
                                                 " is larger than " +
                                                 std::to_string(kCsrFileLimit) + " bytes");
      return true;
    }
    auto blobs = parse_csr_text(block);
    if (blobs.size() != 1 || !blobs[0].problem.empty()) {
      item.reject(ErrorCode::kCsrMalformed, blobs.empty()              ? "empty PEM block"
                                            : blobs[0].problem.empty() ? "not a CSR block"
                                                                       : in_file(blobs[0], start));
    } else {
      item.input = std::move(blobs[0].der);
    }
    return true;
  }
  std::int64_t total() const override { return -1; }

 private:
  // One line without its '\n', at most kMaxLine bytes; false at the end of the file. One bounded
  // istream::getline into a buffer made once (the read stage is serial: no per-char calls).
  bool read_line(std::string& line) {
    if (m_buf.empty()) m_buf.resize(kMaxLine + 1);
    m_in.getline(m_buf.data(), static_cast<std::streamsize>(m_buf.size()));
    const auto extracted = static_cast<std::size_t>(m_in.gcount());
    if (m_in.fail() && !m_in.eof()) {
      if (m_in.bad()) throw Error(ErrorCode::kIo, "CSR bundle " + m_name + ": cannot be read");
      throw Error(ErrorCode::kInputTooLarge,
                  "CSR bundle " + m_name + ": line " + std::to_string(m_line + 1) +
                      " is longer than " + std::to_string(kMaxLine) + " bytes: not a PEM file");
    }
    if (extracted == 0) return false;
    // gcount counts the '\n' when it was found (not at the end of the file).
    const std::size_t length = m_in.eof() ? extracted : extracted - 1;
    line.assign(m_buf.data(), length);
    ++m_line;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
  }
  // The block's problem with the line numbers of the file, not of the block.
  static std::string in_file(const CsrBlob& blob, std::int64_t start) {
    const std::string relative = "line " + std::to_string(blob.line);
    std::string problem = blob.problem;
    if (const auto at = problem.find(relative); at != std::string::npos) {
      problem.replace(at, relative.size(), "line " + std::to_string(start + blob.line - 1));
    }
    return problem;
  }

  std::string m_name;
  std::ifstream m_in;
  std::string m_buf;
  std::int64_t m_line = 0;
  std::int64_t m_seq = 0;
};

// One CSR given as DER: the one-item batch of `issue --csr`.
class CsrDerReader final : public InputReader {
 public:
  CsrDerReader(std::string source, const Der& der) : m_source(std::move(source)), m_der(der) {}
  bool next(Item& item) override {
    if (m_done) return false;
    m_done = true;
    item.seq = 0;
    item.source = m_source;
    item.input = m_der;
    return true;
  }
  std::int64_t total() const override { return 1; }

 private:
  std::string m_source;
  const Der& m_der;
  bool m_done = false;
};

class GenerateReader final : public InputReader {
 public:
  GenerateReader(std::string pattern, std::int64_t first, std::int64_t count)
      : m_pattern(std::move(pattern)), m_first(first), m_count(count) {
    if (count <= 0) {
      throw Error(ErrorCode::kInvalidArgument, "--generate needs a positive count");
    }
    expand_id_pattern(m_pattern, 1);  // validates the pattern (the IDs: validate_id_pattern)
  }
  bool next(Item& item) override {
    if (m_seq >= m_count) return false;
    item.seq = m_seq;
    item.device_id = expand_id_pattern(m_pattern, m_first + ++m_seq);
    item.source = item.device_id;
    return true;
  }
  std::int64_t total() const override { return m_count; }

 private:
  std::string m_pattern;
  std::int64_t m_first;
  std::int64_t m_count;
  std::int64_t m_seq = 0;
};

}  // namespace

std::unique_ptr<InputReader> open_input(const BatchInput& input) {
  switch (input.kind) {
    case BatchInput::Kind::kCsrDir:
      return std::make_unique<CsrDirReader>(input);
    case BatchInput::Kind::kCsrFile:
      return std::make_unique<CsrBundleReader>(input.path);
    case BatchInput::Kind::kGenerate:
      return std::make_unique<GenerateReader>(input.id_pattern, input.first, input.count);
    case BatchInput::Kind::kCsrDer:
      return std::make_unique<CsrDerReader>(input.path, input.der);
  }
  return nullptr;
}

void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// O_NOFOLLOW: a symlink planted where a device's file goes is refused, never followed. A failed
// write removes the file, so no empty or half-written file is left (a resume writes it again).
void write_file(const fs::path& path, std::string_view data, mode_t mode, bool durable) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) {
    throw Error(ErrorCode::kIo, path.string() + ": cannot be created: " + std::strerror(errno));
  }
  // A file left from a crashed run may have another mode: keys must end up 0600.
  ::fchmod(fd, mode);
  const bool ok = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()) &&
                  (!durable || ::fsync(fd) == 0);
  int err = ok ? 0 : (errno != 0 ? errno : EIO);
  if (::close(fd) != 0 && err == 0) {
    err = errno;
  }
  if (err != 0) {
    ::unlink(path.c_str());
    throw Error(ErrorCode::kIo, path.string() + ": cannot be written: " + std::strerror(err));
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs

namespace {

constexpr const char* kStreamNames[kStreamCount] = {"manifest.csv",        "manifest.jsonl",
                                                    "iothub-import.jsonl", "rejects.csv",
                                                    "bundle.pem",          "bundle.jsonl"};
constexpr const char* kHeaders[kStreamCount] = {
    "device_id,serial,sha1,sha256,not_before,not_after,issuer,batch,lot,line,site,operator\n",
    "",
    "",
    "source,device_id,code,reason\n",
    "",
    ""};

void csv_field(std::string& out, std::string_view v) {
  if (v.find_first_of(",\"\n\r") == std::string_view::npos) {
    out += v;
    return;
  }
  out.push_back('"');
  for (const char c : v) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
}

void render_issued(const RenderContext& ctx, const Item& item, Chunk& chunk) {
  const SignedCert& c = *item.cert;
  const std::string nb = iso8601(c.not_before), na = iso8601(c.not_after);
  // manifest.csv
  std::string& csv = chunk.text[kManifestCsv];
  for (std::string_view v :
       {std::string_view(c.device_id), std::string_view(c.serial), std::string_view(c.sha1),
        std::string_view(c.sha256), std::string_view(nb), std::string_view(na),
        std::string_view(ctx.issuer_subject), std::string_view(ctx.batch_id),
        std::string_view(ctx.lineage.lot), std::string_view(ctx.lineage.line),
        std::string_view(ctx.lineage.site)}) {
    csv_field(csv, v);
    csv.push_back(',');
  }
  csv_field(csv, ctx.lineage.operator_name);
  csv.push_back('\n');
  // manifest.jsonl
  std::string& js = chunk.text[kManifestJsonl];
  js += "{\"device_id\":";
  append_json_string(js, c.device_id);
  js += ",\"serial\":\"" + c.serial + "\",\"sha1\":\"" + c.sha1 + "\",\"sha256\":\"" + c.sha256 +
        "\",\"not_before\":\"" + nb + "\",\"not_after\":\"" + na + "\",\"issuer\":";
  append_json_string(js, ctx.issuer_subject);
  js += ",\"ca\":";
  append_json_string(js, ctx.ca_name);
  js += ",\"batch\":";
  append_json_string(js, ctx.batch_id);
  js += ",\"lot\":";
  append_json_string(js, ctx.lineage.lot);
  js += ",\"line\":";
  append_json_string(js, ctx.lineage.line);
  js += ",\"site\":";
  append_json_string(js, ctx.lineage.site);
  js += ",\"operator\":";
  append_json_string(js, ctx.lineage.operator_name);
  js += "}\n";
  // IoT Hub bulk import (ExportImportDevice): CA-signed devices authenticate by chain.
  std::string& hub = chunk.text[kIotHubImport];
  hub += "{\"id\":";
  append_json_string(hub, c.device_id);
  hub +=
      ",\"importMode\":\"create\",\"status\":\"enabled\",\"authentication\":{\"type\":"
      "\"certificateAuthority\"}}\n";

  const std::string cert_pem = pem(c.der, "CERTIFICATE");
  std::string key_pem;
  if (!item.key_pkcs8.empty()) {
    key_pem = pem(item.key_pkcs8, "PRIVATE KEY");
  }
  if (ctx.bundle) {
    chunk.text[kBundlePem] += cert_pem;
    chunk.text[kBundlePem] += key_pem;
    std::string& bj = chunk.text[kBundleJsonl];
    bj += "{\"device_id\":";
    append_json_string(bj, c.device_id);
    bj += ",\"serial\":\"" + c.serial + "\",\"cert_pem\":";
    append_json_string(bj, cert_pem);
    if (!key_pem.empty()) {
      bj += ",\"key_pem\":";
      append_json_string(bj, key_pem);
    }
    bj += "}\n";
  } else if (ctx.write_files) {
    write_file(ctx.out_dir / (c.device_id + "_cert.pem"), cert_pem, 0644);
    write_file(ctx.out_dir / (c.device_id + "_fullchain.pem"), cert_pem + ctx.chain_pem, 0644);
    if (!key_pem.empty()) {
      write_file(ctx.out_dir / (c.device_id + "_key.pem"), key_pem, 0600);
    }
  }
  if (ctx.pfx && ctx.write_files && !item.key_pkcs8.empty()) {
    const Der p12 = make_pfx(c.der, item.key_pkcs8, ctx.chain, c.device_id, ctx.pfx_password);
    write_file(ctx.out_dir / (c.device_id + ".pfx"),
               std::string_view(reinterpret_cast<const char*>(p12.data()), p12.size()), 0600);
  }
  if (!key_pem.empty()) {
    OPENSSL_cleanse(key_pem.data(), key_pem.size());
  }
}

void render_reject(const Item& item, Chunk& chunk) {
  std::string& r = chunk.text[kRejects];
  csv_field(r, item.source);
  r.push_back(',');
  csv_field(r, item.device_id);
  r.push_back(',');
  r += error_code_name(item.error);
  r.push_back(',');
  csv_field(r, item.reason);
  r.push_back('\n');
}

}  // namespace

void render_chunk(const RenderContext& ctx, Chunk& chunk) {
  for (const Item& item : chunk.items) {
    if (item.ok()) {
      render_issued(ctx, item, chunk);
    } else {
      render_reject(item, chunk);
    }
  }
}

OutputStreams::OutputStreams(const fs::path& dir, bool bundle, const std::string& offsets_json,
                             bool enabled)
    : m_dir(dir) {
  m_fd.fill(-1);
  for (int s = 0; enabled && s < kStreamCount; ++s) {
    if (!bundle && (s == kBundlePem || s == kBundleJsonl)) continue;
    const fs::path path = dir / kStreamNames[s];
    // Offsets are recorded as "name":size pairs; absent means a new batch.
    const std::string key = std::string("\"") + kStreamNames[s] + "\":";
    const auto at = offsets_json.find(key);
    const bool resuming = at != std::string::npos;
    std::int64_t size = resuming ? std::stoll(offsets_json.substr(at + key.size())) : 0;
    const mode_t mode = s == kBundlePem || s == kBundleJsonl ? 0600 : 0644;  // bundles hold keys
    m_fd[s] = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode);
    if (m_fd[s] < 0) {
      throw Error(ErrorCode::kIo, path.string() + ": cannot be opened: " + std::strerror(errno));
    }
    if (m_fd[s] >= 0) ::fchmod(m_fd[s], mode);  // an existing file keeps its mode otherwise
    // Cut what a crashed run appended past the watermark: it will be written again.
    if (::ftruncate(m_fd[s], size) != 0 || ::lseek(m_fd[s], size, SEEK_SET) != size) {
      throw Error(ErrorCode::kIo,
                  path.string() + ": cannot be truncated to " + std::to_string(size));
    }
    m_size[s] = size;
    if (!resuming && kHeaders[s][0] != '\0') {
      Chunk header;
      header.text[s] = kHeaders[s];
      const auto n = ::write(m_fd[s], header.text[s].data(), header.text[s].size());
      if (n != static_cast<ssize_t>(header.text[s].size())) {
        throw Error(ErrorCode::kIo, path.string() + ": write failed: " + std::strerror(errno));
      }
      m_size[s] += n;
    }
  }
}

OutputStreams::~OutputStreams() {
  for (const int fd : m_fd) {
    if (fd >= 0) ::close(fd);
  }
}

void OutputStreams::append(const Chunk& chunk) {
  for (int s = 0; s < kStreamCount; ++s) {
    const std::string& t = chunk.text[s];
    if (t.empty() || m_fd[s] < 0) continue;
    if (::write(m_fd[s], t.data(), t.size()) != static_cast<ssize_t>(t.size())) {
      throw Error(ErrorCode::kIo,
                  (m_dir / kStreamNames[s]).string() + ": write failed: " + std::strerror(errno));
    }
    m_size[s] += static_cast<std::int64_t>(t.size());
  }
}

std::string OutputStreams::offsets_json() const {
  std::string out = "{";
  for (int s = 0; s < kStreamCount; ++s) {
    if (m_fd[s] < 0) continue;
    if (out.size() > 1) out += ",";
    out += std::string("\"") + kStreamNames[s] + "\":" + std::to_string(m_size[s]);
  }
  return out + "}";
}

void sync_outputs(const fs::path& out_dir) {
  const int fd = ::open(out_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || ::syncfs(fd) != 0) {
    if (fd >= 0) ::close(fd);
    throw Error(ErrorCode::kIo,
                out_dir.string() + ": cannot be synced to disk: " + std::strerror(errno));
  }
  ::close(fd);
}

}  // namespace fleetsign::engine::batch
