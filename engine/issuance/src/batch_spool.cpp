// The key spool of generated keys (batch_io.hpp: spool_keys and the functions after it).
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <charconv>
#include <fstream>
#include <optional>

#include "batch_io.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine::batch {

namespace fs = std::filesystem;

std::string new_spool_writer() {
  unsigned char bytes[8];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    throw Error(ErrorCode::kInternal, "no random bytes for the key spool's file names");
  }
  return hex_upper(ByteView(bytes, sizeof bytes));
}

void spool_keys(const fs::path& spool_dir, const Chunk& chunk, const std::string& writer) {
  std::string text;
  for (const Item& item : chunk.items) {
    // A key recorded before (a resume re-emits it) is in an earlier run's file already.
    if (!item.ok() || item.key_pkcs8.empty() || item.committed_before) continue;
    text += std::to_string(item.seq) + " ";
    std::string b64(4 * ((item.key_pkcs8.size() + 2) / 3), '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()),
                                  item.key_pkcs8.data(), static_cast<int>(item.key_pkcs8.size()));
    text.append(b64.data(), static_cast<std::size_t>(n));
    OPENSSL_cleanse(b64.data(), b64.size());
    text += "\n";
  }
  if (text.empty()) return;
  std::error_code ec;
  fs::create_directories(spool_dir, ec);
  fs::permissions(spool_dir.parent_path(), fs::perms::owner_all, ec);
  fs::permissions(spool_dir, fs::perms::owner_all, ec);
  // Temporary file, fsync, rename, fsync the directory: a kill or a power cut leaves either the
  // old spool file or the new one, never a truncated one. The name is this run's own: a worker
  // that wakes after its share was taken over never replaces the new holder's keys.
  const fs::path final_path =
      spool_dir /
      (std::to_string(chunk.items.empty() ? 0 : chunk.items.front().seq) + "." + writer + ".keys");
  const fs::path tmp = final_path.string() + ".tmp";
  write_file(tmp, text, 0600, true);
  OPENSSL_cleanse(text.data(), text.size());
  if (std::rename(tmp.c_str(), final_path.c_str()) != 0) {
    throw Error(ErrorCode::kIo, final_path.string() + ": cannot be renamed into place");
  }
  sync_directory(spool_dir);
}

namespace {

// A spool line is "SEQ BASE64(PKCS#8)": under 8 KiB for any key fleetsign makes (RSA-4096 is about
// 3.2 KiB of base64). A longer line is a damaged or foreign file: refused, never read whole.
constexpr std::size_t kMaxSpoolLine = 16 * 1024;

// One spool line: its sequence number and key, or nullopt when it does not parse (skipped, as a
// line that does not decode always was).
std::optional<std::pair<std::int64_t, Der>> parse_spool_line(std::string_view line) {
  const std::size_t space = line.find(' ');
  std::int64_t seq = 0;
  if (space == std::string_view::npos ||
      std::from_chars(line.data(), line.data() + space, seq).ptr != line.data() + space) {
    return std::nullopt;
  }
  const std::string_view b64 = line.substr(space + 1);
  Der der(b64.size() / 4 * 3);
  const int n = EVP_DecodeBlock(der.data(), reinterpret_cast<const unsigned char*>(b64.data()),
                                static_cast<int>(b64.size()));
  if (n < 0) return std::nullopt;
  std::size_t pad = 0;
  if (!b64.empty() && b64.back() == '=') ++pad;
  if (b64.size() > 1 && b64[b64.size() - 2] == '=') ++pad;
  der.resize(static_cast<std::size_t>(n) - pad);
  return std::make_pair(seq, std::move(der));
}

// The keys of one spool file, line by line through a buffer of kMaxSpoolLine + 1 bytes (wiped).
void load_spool_file(const fs::path& file, SpooledKeys& keys) {
  std::ifstream in(file, std::ios::binary);
  std::string buf(kMaxSpoolLine + 1, '\0');
  for (std::int64_t line_no = 1;; ++line_no) {
    in.getline(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = static_cast<std::size_t>(in.gcount());
    if (in.fail() && !in.eof()) {
      OPENSSL_cleanse(buf.data(), buf.size());
      if (in.bad()) throw Error(ErrorCode::kIo, "key spool " + file.string() + ": cannot be read");
      throw Error(ErrorCode::kInputTooLarge, "key spool " + file.string() + ": line " +
                                                 std::to_string(line_no) + " is longer than " +
                                                 std::to_string(kMaxSpoolLine) + " bytes");
    }
    if (got == 0) break;
    const std::string_view line(buf.data(), in.eof() ? got : got - 1);
    if (auto key = parse_spool_line(line)) {
      auto& candidates = keys[key->first];
      if (std::find(candidates.begin(), candidates.end(), key->second) == candidates.end()) {
        candidates.push_back(std::move(key->second));
      }
    }
    if (in.eof()) break;
  }
  OPENSSL_cleanse(buf.data(), buf.size());
}

}  // namespace

namespace {

// OUT/.spool/BATCH when it and OUT/.spool are directories, not links to one: the spool is read
// and cleared only there (a link planted in their place is never followed).
bool real_spool_dir(const fs::path& spool_dir) {
  std::error_code ec;
  return fs::is_directory(fs::symlink_status(spool_dir, ec)) &&
         fs::is_directory(fs::symlink_status(spool_dir.parent_path(), ec));
}

}  // namespace

SpooledKeys load_spooled_keys(const fs::path& spool_dir) {
  SpooledKeys keys;
  if (!real_spool_dir(spool_dir)) return keys;
  for (const auto& e : fs::directory_iterator(spool_dir)) {
    if (e.path().extension() != ".keys") continue;  // a .tmp left by a kill is incomplete
    // Spool files are regular files fleetsign wrote: a link, FIFO or directory there is none of
    // its keys (a FIFO would block the resume for ever), and is left for clear_spool.
    std::error_code type_ec;
    if (!fs::is_regular_file(e.symlink_status(type_ec))) continue;
    load_spool_file(e.path(), keys);
  }
  return keys;
}

void clear_spool(const fs::path& spool_dir) {
  const fs::path& dir = spool_dir;
  std::error_code ec;
  if (!real_spool_dir(dir)) {
    // A link in the spool's place is removed, never followed into.
    for (const fs::path& p : {dir, dir.parent_path()}) {
      if (fs::is_symlink(fs::symlink_status(p, ec))) fs::remove(p, ec);
    }
    return;
  }
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    // Keys must not linger in freed blocks of a file we merely unlink. Only regular files are
    // overwritten: a link planted here is removed, never followed (nor a reason to fail).
    std::error_code type_ec;
    const auto size = fs::file_size(e.path(), ec);
    if (!ec && size > 0 && fs::is_regular_file(e.symlink_status(type_ec))) {
      write_file(e.path(), std::string(static_cast<std::size_t>(size), '\0'), 0600);
    }
    fs::remove(e.path(), ec);
  }
  fs::remove(dir, ec);
  fs::remove(dir.parent_path(), ec);  // .spool itself, once no batch has keys in it
}

void drop_spool(const fs::path& spool_dir, std::int64_t first_seq) {
  // Every run's file for the chunk (SEQ.WRITER.keys; SEQ.keys before 2026-11-28): its outputs
  // are on disk now, whoever wrote them.
  const std::string prefix = std::to_string(first_seq) + ".";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(spool_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(prefix) && name.ends_with(".keys")) fs::remove(e.path(), ec);
  }
}

Der key_for_cert(const std::vector<Der>& candidates, const Der& cert_der) {
  const unsigned char* c = cert_der.data();
  X509* cert = d2i_X509(nullptr, &c, static_cast<long>(cert_der.size()));
  if (cert == nullptr) return {};
  Der found;
  const EVP_PKEY* pub = X509_get0_pubkey(cert);
  for (const Der& k : candidates) {
    const unsigned char* p = k.data();
    EVP_PKEY* key = d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(k.size()));
    const bool match = key != nullptr && pub != nullptr && EVP_PKEY_eq(pub, key) == 1;
    EVP_PKEY_free(key);
    if (match) {
      found = k;
      break;
    }
  }
  X509_free(cert);
  return found;
}

}  // namespace fleetsign::engine::batch
