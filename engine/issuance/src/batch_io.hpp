// Batch inputs (CSR directory, CSR bundle, generated devices) and outputs (per-device files,
// manifest streams, bundle, IoT Hub import, rejects). Private to engine/.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "batch_item.hpp"
#include "fleetsign/engine/batch.hpp"

namespace fleetsign::engine::batch {

// Yields inputs in a stable order (a resumed batch sees the same sequence). Not thread-safe: the
// pipeline's first stage is serial.
class InputReader {
 public:
  virtual ~InputReader() = default;
  // Fills `item` (seq, source and input or device_id, or a reject). False at the end.
  virtual bool next(Item& item) = 0;
  virtual std::int64_t total() const = 0;  // -1 when unknown
};

std::unique_ptr<InputReader> open_input(const BatchInput& input);

// A CSR directory's entries that are not directories, sorted.
std::vector<std::filesystem::path> list_csr_dir(const std::filesystem::path& dir);
// The file list of a shared CSR directory (BatchRunner::share): the names of `files` (from
// list_csr_dir), in the order every share reads them, written atomically to `manifest`. Returns
// the list's SHA-256 (upper-case hex) and sets `bytes` to its size.
std::string write_csr_manifest(const std::vector<std::filesystem::path>& files,
                               const std::filesystem::path& manifest, std::int64_t& bytes);
// The names at positions [input.first, input.first + input.count) (count 0: to the end) of the
// file list input.manifest, read once in blocks (only the window's names are kept). The list must
// be a regular file of its recorded size and SHA-256: Error(kIo) when it changed.
std::vector<std::string> read_csr_manifest(const BatchInput& input);

struct RenderContext {
  std::string batch_id;
  std::string ca_name;
  std::string issuer_subject;
  Lineage lineage;
  std::vector<Der> chain;  // issuing CA first, root last
  std::string chain_pem;
  std::filesystem::path out_dir;
  bool bundle = false;
  bool pfx = false;
  const char* pfx_password = nullptr;
  bool write_files = true;  // false: Delivery::kReturned, nothing goes to disk
};

// Renders one chunk: writes per-device files (unless bundle) and fills chunk.text. Parallel-safe
// across chunks. Throws Error(kIo) when a file cannot be written.
void render_chunk(const RenderContext& ctx, Chunk& chunk);

// The append-only output streams of a batch directory. Opening truncates each to the size
// recorded at the watermark (a crashed run may have appended past it) and writes headers into
// new files. With `enabled` false (one-item batches) there are no streams and append does
// nothing. Not thread-safe: used by the last, serial stage.
class OutputStreams {
 public:
  OutputStreams(const std::filesystem::path& dir, bool bundle, const std::string& offsets_json,
                bool enabled);
  ~OutputStreams();
  OutputStreams(const OutputStreams&) = delete;  // owns file descriptors
  OutputStreams& operator=(const OutputStreams&) = delete;
  void append(const Chunk& chunk);
  std::string offsets_json() const;

 private:
  std::array<int, kStreamCount> m_fd{};
  std::array<std::int64_t, kStreamCount> m_size{};
  std::filesystem::path m_dir;
};

// Generated keys of a chunk, kept until the chunk's outputs are written, so a crash between the
// certificate commit and the outputs loses no key. Files are 0600, written durably (fsync +
// rename) in OUT/.spool/BATCH — one directory per batch, one file per chunk and run
// (SEQ.WRITER.keys: `writer` is the run's own random name).
void spool_keys(const std::filesystem::path& spool_dir, const Chunk& chunk,
                const std::string& writer);
// Writes a whole file (O_NOFOLLOW; fsync when `durable`); a failed write removes it.
void write_file(const std::filesystem::path& path, std::string_view data, mode_t mode,
                bool durable = false);
// fsync of a directory, best effort.
void sync_directory(const std::filesystem::path& dir);
// A run's random name for its spool files (16 hex digits).
std::string new_spool_writer();
// Every spooled key by input position: several when runs of a shared batch's share (a worker
// that lost it, and the one that took it over) each spooled keys for the same chunk.
using SpooledKeys = std::map<std::int64_t, std::vector<Der>>;
SpooledKeys load_spooled_keys(const std::filesystem::path& spool_dir);
// The candidate (PKCS#8 DER) whose public key is the certificate's; empty when none is.
Der key_for_cert(const std::vector<Der>& candidates, const Der& cert_der);
// Removes every run's spool file of the chunk that starts at `first_seq`.
void drop_spool(const std::filesystem::path& spool_dir, std::int64_t first_seq);
// At the end of a batch: overwrites and removes every spool file left (a kill between the
// watermark commit and a spool unlink leaves one behind) and the batch's spool directory.
void clear_spool(const std::filesystem::path& spool_dir);
// Flushes the output directory's file system (key files, per-device files, streams) to disk, so
// that the watermark never runs ahead of the outputs after a power cut.
void sync_outputs(const std::filesystem::path& out_dir);

}  // namespace fleetsign::engine::batch
