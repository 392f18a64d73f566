// BatchRunner: the batch pipeline (see batch.hpp for the stages and invariants).
#include "fleetsign/engine/batch.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <tbb/global_control.h>
#include <tbb/info.h>
#include <tbb/parallel_pipeline.h>
#include <tbb/task_arena.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "batch_io.hpp"
#include "batch_params.hpp"
#include "batch_writer.hpp"
#include "device_keys.hpp"
#include "fleetsign/engine/ca_constraints.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

using batch::Chunk;
using batch::Item;

namespace {

// Per-stage busy time, returned in the summary (for tuning the pipeline: a serial stage's share
// of the run bounds the speed-up threads can give).
struct StageClock {
  std::array<std::atomic<std::int64_t>, 7> ns{};
  static constexpr const char* kNames[7] = {"read",   "prepare", "intents", "sign",
                                            "commit", "render",  "write"};
  template <typename F>
  auto time(int stage, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    struct Add {
      std::atomic<std::int64_t>& slot;
      std::chrono::steady_clock::time_point t0;
      ~Add() {
        slot += std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::steady_clock::now() - t0)
                    .count();
      }
    } add{ns[static_cast<std::size_t>(stage)], t0};
    return f();
  }
  std::vector<std::pair<std::string, double>> seconds() const {
    std::vector<std::pair<std::string, double>> out;
    for (std::size_t i = 0; i < ns.size(); ++i) {
      out.emplace_back(kNames[i], static_cast<double>(ns[i]) / 1e9);
    }
    return out;
  }
};

// Everything one execution of a batch shares between its stages.
struct Run {
  const BatchOptions& options;
  BatchRecord record;
  Stores& registry;
  const Issuer& issuer;
  const Clock& clock;
  batch::RenderContext render;
  batch::OutputStreams& streams;
  std::unique_ptr<batch::InputReader> reader;
  std::map<std::int64_t, CertRecord> committed;  // resume: recorded past the watermark
  batch::SpooledKeys spooled_keys;
  std::filesystem::path spool_dir;  // OUT/.spool/BATCH
  std::string spool_writer;         // this run's name in its spool files
  std::unordered_set<std::string> seen_ids;
  StageClock stages;
  std::int64_t issued_now = 0, reemitted_now = 0, rejected_now = 0;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  // Every chunk between the first stage and the last is owned here, so a cancelled pipeline
  // (an exception in any stage) frees them, and Item's destructor wipes their private keys.
  std::mutex chunks_mutex;
  std::unordered_map<const Chunk*, std::unique_ptr<Chunk>> chunks;
  // One-item batches (Delivery::kDeviceFiles, kReturned): what the caller gets back.
  std::vector<SignedCert> delivered;
  bool extensions_ignored = false;
  ErrorCode first_reject = ErrorCode::kOk;
  std::string first_reject_reason;
};

Chunk* own_chunk(Run& run, std::unique_ptr<Chunk> chunk) {
  Chunk* raw = chunk.get();
  std::lock_guard lock(run.chunks_mutex);
  run.chunks.emplace(raw, std::move(chunk));
  return raw;
}

void free_chunk(Run& run, const Chunk* chunk) {
  std::unique_ptr<Chunk> owned;
  {
    std::lock_guard lock(run.chunks_mutex);
    auto it = run.chunks.find(chunk);
    owned = std::move(it->second);
    run.chunks.erase(it);
  }
}  // destroyed outside the lock

Chunk* read_chunk(Run& run, tbb::flow_control& fc) {
  auto chunk = std::make_unique<Chunk>();
  chunk->items.reserve(static_cast<std::size_t>(run.options.chunk_size));
  while (chunk->items.size() < static_cast<std::size_t>(run.options.chunk_size)) {
    Item item;
    if (!run.reader->next(item)) break;
    if (item.seq <= run.record.watermark) continue;  // outputs already written
    if (auto it = run.committed.find(item.seq); it != run.committed.end()) {
      // Recorded by a crashed run: never sign again, only write its outputs.
      const CertRecord& r = it->second;
      item.committed_before = true;
      item.error = ErrorCode::kOk;
      item.device_id = r.device_id;
      item.cert =
          SignedCert{r.device_id, r.serial, r.der, r.sha1, r.sha256, r.not_before, r.not_after};
      const auto k = run.spooled_keys.find(item.seq);
      if (k != run.spooled_keys.end()) {
        // The certificate's own key: another run's keys for this position (a worker that lost
        // the share after spooling) are not.
        item.key_pkcs8 = batch::key_for_cert(k->second, r.der);
      }
      if (item.key_pkcs8.empty() && run.options.input.kind == BatchInput::Kind::kGenerate) {
        // Never deliver a generated device's certificate without its key.
        throw Error(ErrorCode::kIo,
                    "batch " + run.record.id + ": the key of device '" + r.device_id +
                        "' (serial " + r.serial + ", recorded) is " +
                        (k == run.spooled_keys.end() ? "missing from "
                                                     : "not among the keys spooled for it in ") +
                        run.spool_dir.string() +
                        "; revoke that serial and issue the device again with --reissue");
      }
    }
    chunk->items.push_back(std::move(item));
  }
  if (chunk->items.empty()) {
    fc.stop();
    return nullptr;
  }
  chunk->index = chunk->items.front().seq / run.options.chunk_size + 1;
  return own_chunk(run, std::move(chunk));
}

// Steps 1-2, in parallel: check the CSR (or make the key), policy, serial, TBS.
void prepare_item(const Run& run, Item& item) {
  if (!item.ok() || item.committed_before) return;
  if (run.options.input.kind == BatchInput::Kind::kGenerate) {
    // The same device-ID check as a CSR's CN, for every generated ID.
    auto id = DeviceId::check(run.issuer.policy(), item.device_id);
    if (!id) return item.reject(id.error().code, id.error().message);
    DeviceKey key = generate_device_key(run.options.input.key);
    auto prepared = run.issuer.prepare(*id, key.spki);
    if (!prepared) return item.reject(prepared.error().code, prepared.error().message);
    item.key_pkcs8 = std::move(key.pkcs8);
    item.prepared.emplace(std::move(*prepared));
    return;
  }
  auto checked = check_csr(item.input, run.issuer.policy());
  if (!checked) {
    item.device_id = csr_common_name(item.input);  // for rejects.csv; unchecked, never a path
    Der().swap(item.input);
    return item.reject(checked.error().code, checked.error().message);
  }
  Der().swap(item.input);  // the CSR is no longer needed: keep memory per chunk small
  item.device_id = checked->device_id.str();
  item.extensions_ignored = checked->extensions_ignored;
  auto prepared = run.issuer.prepare(*checked);
  if (!prepared) return item.reject(prepared.error().code, prepared.error().message);
  item.prepared.emplace(std::move(*prepared));
}

// Step 3, serial: duplicates, already-issued devices, then the intents in one transaction.
void record_intents(Run& run, Chunk& chunk) {
  for (Item& item : chunk.items) {
    if (!item.ok() || item.committed_before) continue;
    if (run.options.input.kind != BatchInput::Kind::kGenerate &&
        !run.seen_ids.insert(item.device_id).second) {
      item.reject(ErrorCode::kDuplicateInBatch,
                  "device ID '" + item.device_id + "' appears earlier in this batch");
    }
  }
  std::vector<CertIntent> intents;
  intents.reserve(chunk.items.size());
  for (const Item& item : chunk.items) {
    if (!item.ok() || item.committed_before) continue;
    const PreparedCert& p = *item.prepared;
    intents.push_back(CertIntent{p.serial(), p.device_id(), run.render.ca_name, run.record.id,
                                 item.seq, p.subject(), p.not_before(), p.not_after(), p.tbs(),
                                 run.options.lineage});
  }
  if (run.options.input.kind == BatchInput::Kind::kGenerate) {
    batch::spool_keys(run.spool_dir, chunk, run.spool_writer);  // before the intent
  }
  if (!intents.empty()) {
    try {
      if (run.options.reissue) {
        run.registry.record_intents(intents);
      } else {
        // Devices that already hold a valid certificate, or that another batch (another
        // worker's) is issuing, are refused in the transaction that records the rest.
        std::unordered_map<std::string, std::string> refused;
        for (auto& r : run.registry.record_new_device_intents(intents, run.clock.now())) {
          refused.emplace(std::move(r.device_id), std::move(r.open_batch));
        }
        for (Item& item : chunk.items) {
          if (!item.ok() || item.committed_before) continue;
          const auto it = refused.find(item.device_id);
          if (it == refused.end()) continue;
          item.reject(ErrorCode::kAlreadyIssued,
                      it->second.empty()
                          ? "device '" + item.device_id + "' already holds a valid certificate"
                          : "device '" + item.device_id + "' is being issued by batch " +
                                it->second +
                                (is_share_batch_id(it->second)
                                     ? " (its intent is open: the worker holding that share, "
                                       "or the next one once its lease ends, completes it)"
                                     : " (its intent is open: resume that batch)"));
        }
      }
    } catch (const Error& e) {
      throw e.with_context("batch " + run.record.id + ", recording " +
                           std::to_string(intents.size()) + " intents from input #" +
                           std::to_string(chunk.items.front().seq + 1));
    }
  }
}

// Step 4, parallel: the token signs; the signatures are verified (together, per chunk). A
// failure here is the token's, not the device's: it stops the batch (resumable) instead of
// rejecting devices.
void sign_items(const Run& run, Chunk& chunk) {
  std::vector<PreparedCert> prepared;
  std::vector<Item*> owners;
  prepared.reserve(chunk.items.size());
  owners.reserve(chunk.items.size());
  for (Item& item : chunk.items) {
    if (!item.ok() || item.committed_before) continue;
    prepared.push_back(std::move(*item.prepared));
    item.prepared.reset();
    owners.push_back(&item);
  }
  if (prepared.empty()) return;
  auto certs = run.issuer.sign(std::move(prepared));
  for (std::size_t i = 0; i < certs.size(); ++i) {
    if (!certs[i]) {
      throw Error(ErrorCode::kTokenError,
                  "batch " + run.record.id + ": " + certs[i].error().message +
                      "; the batch stopped, and once the token signs again `fleetsign issue "
                      "--resume " +
                      run.record.id + "` completes it");
    }
    owners[i]->cert.emplace(std::move(*certs[i]));
  }
}

// Step 5, serial: the certificates, in one transaction.
void record_certificates(Run& run, Chunk& chunk) {
  std::vector<IssuedCert> issued;
  issued.reserve(chunk.items.size());
  for (const Item& item : chunk.items) {
    if (!item.ok() || item.committed_before) continue;
    issued.push_back(IssuedCert{item.cert->serial, item.cert->der, item.cert->sha1,
                                item.cert->sha256, item.cert->key_sha256});
  }
  if (!issued.empty()) {
    run.registry.record_issued(issued);
  }
}

// Step 7, serial: the chunk leaves the process, then the watermark moves past it.
void write_outputs(Run& run, Chunk& chunk) {
  run.streams.append(chunk);
  if (run.options.delivery != Delivery::kReturned) {
    batch::sync_outputs(run.options.out_dir);  // the watermark must not run ahead of the disk
  }
  const bool one_item = run.options.delivery != Delivery::kBatchDirectory;
  for (Item& item : chunk.items) {
    if (!item.ok()) {
      ++run.rejected_now;
      if (one_item && run.first_reject == ErrorCode::kOk) {
        run.first_reject = item.error;
        run.first_reject_reason = item.reason;
      }
      continue;
    }
    ++(item.committed_before ? run.reemitted_now : run.issued_now);
    if (one_item) {
      run.extensions_ignored = run.extensions_ignored || item.extensions_ignored;
      run.delivered.push_back(std::move(*item.cert));
    }
  }
  run.registry.update_batch_progress(run.record.id, chunk.items.back().seq,
                                     run.streams.offsets_json(),
                                     run.record.issued + run.issued_now + run.reemitted_now,
                                     run.record.rejected + run.rejected_now);
  if (run.options.input.kind == BatchInput::Kind::kGenerate) {
    batch::drop_spool(run.spool_dir, chunk.items.front().seq);
  }
  if (run.options.progress) {
    BatchProgress p;
    p.done = chunk.items.back().seq + 1;
    p.total = run.reader->total();
    p.issued = run.record.issued + run.issued_now + run.reemitted_now;
    p.rejected = run.record.rejected + run.rejected_now;
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - run.start).count();
    run.options.progress(p);
  }
}

batch::RenderContext render_context(const BatchRecord& record, const BatchOptions& o,
                                    const CaRecord& ca, const std::vector<CaRecord>& chain,
                                    const hsm::Pin* pfx_password) {
  batch::RenderContext render;
  render.batch_id = record.id;
  render.ca_name = ca.name;
  render.issuer_subject = ca.subject;
  render.lineage = o.lineage;
  for (const auto& c : chain) {
    render.chain.push_back(c.cert_der);
    append_pem(render.chain_pem, c.cert_der, "CERTIFICATE");
  }
  render.out_dir = o.out_dir;
  render.bundle = o.bundle;
  render.pfx = o.pfx;
  render.pfx_password = pfx_password != nullptr ? pfx_password->c_str() : nullptr;
  render.write_files = o.delivery != Delivery::kReturned;
  return render;
}

// The stages, in a oneTBB pipeline with a few chunks in flight per thread. The serial stages hand
// their work to the writer (batch_writer.hpp), one job at a time in pipeline order: the registry
// sees one thread, and its commits never hold a worker thread.
void run_pipeline(Run& run) {
  const int threads =
      run.options.threads > 0 ? run.options.threads : tbb::info::default_concurrency();
  // TBB caps its workers at cores-1 unless told otherwise; an explicit thread count is honoured.
  tbb::global_control allow(tbb::global_control::max_allowed_parallelism,
                            static_cast<std::size_t>(threads));
  tbb::task_arena arena(threads);
  const std::size_t in_flight =
      static_cast<std::size_t>(threads) * batch::tokens_per_thread(run.options);
  // The serial stages' registry transactions, fsyncs and output appends run on the writer's
  // thread while `threads` workers check and sign; it is joined before the pipeline's chunks go.
  batch::Writer writer;
  // oneTBB's ordering, for ThreadSanitizer (batch::tsan_*; nothing in other builds): a serial
  // stage's calls follow each other, a chunk's stages follow each other, and every stage ends
  // before the pipeline returns (the edge is taken even when a stage throws).
  int serial_order[7] = {};
  const auto edges = [&](int stage, bool serial, const Chunk* chunk, auto&& body) {
    if (serial) batch::tsan_acquire(&serial_order[stage]);
    if (chunk != nullptr) batch::tsan_acquire(chunk);
    struct Release {
      const void* a;
      const void* b;
      const void* c;
      ~Release() {
        if (a != nullptr) batch::tsan_release(a);
        if (b != nullptr) batch::tsan_release(b);
        batch::tsan_release(c);
      }
    } release{serial ? &serial_order[stage] : nullptr, chunk, &serial_order};
    return body();
  };
  struct Join {
    const void* at;
    ~Join() { batch::tsan_acquire(at); }
  } join{&serial_order};
  arena.execute([&] {
    using tbb::filter_mode;
    tbb::parallel_pipeline(
        in_flight,
        tbb::make_filter<void, Chunk*>(filter_mode::serial_in_order, [&](tbb::flow_control& fc) {
          Chunk* c = edges(0, true, nullptr,
                           [&] { return run.stages.time(0, [&] { return read_chunk(run, fc); }); });
          if (c != nullptr) batch::tsan_release(c);
          return c;
        }) & tbb::make_filter<Chunk*, Chunk*>(filter_mode::parallel, [&](Chunk* c) {
          edges(1, false, c, [&] {
            run.stages.time(1, [&] {
              for (Item& i : c->items) prepare_item(run, i);
            });
          });
          return c;
        }) & tbb::make_filter<Chunk*, Chunk*>(filter_mode::serial_in_order, [&](Chunk* c) {
          edges(2, true, c,
                [&] { writer.run([&] { run.stages.time(2, [&] { record_intents(run, *c); }); }); });
          return c;
        }) & tbb::make_filter<Chunk*, Chunk*>(filter_mode::parallel, [&](Chunk* c) {
          edges(3, false, c, [&] { run.stages.time(3, [&] { sign_items(run, *c); }); });
          return c;
        }) & tbb::make_filter<Chunk*, Chunk*>(filter_mode::serial_in_order, [&](Chunk* c) {
          edges(4, true, c, [&] {
            writer.run([&] { run.stages.time(4, [&] { record_certificates(run, *c); }); });
          });
          return c;
        }) & tbb::make_filter<Chunk*, Chunk*>(filter_mode::parallel, [&](Chunk* c) {
          edges(5, false, c,
                [&] { run.stages.time(5, [&] { batch::render_chunk(run.render, *c); }); });
          return c;
        }) & tbb::make_filter<Chunk*, void>(filter_mode::serial_in_order, [&](Chunk* c) {
          edges(6, true, c, [&] {
            writer.run([&] { run.stages.time(6, [&] { write_outputs(run, *c); }); });
            free_chunk(run, c);
          });
        }));
  });
}

}  // namespace

using batch::check_inputs;
using batch::claim_out_dir;
using batch::prepare_out_dir;
using batch::validate;

BatchRunner::BatchRunner(Stores& registry, CaService& cas, const policy::Policy& policy,
                         const Clock& clock, RandomSource& random)
    : m_registry(registry), m_cas(cas), m_policy(policy), m_clock(clock), m_random(random) {}

namespace {

BatchSummary finished_summary(const BatchRecord& r, const std::string& out) {
  BatchSummary s;
  s.batch_id = r.id;
  s.out_dir = out;
  s.total_issued = r.issued;
  s.total_rejected = r.rejected;
  s.already_finished = true;
  return s;
}

}  // namespace

BatchSummary BatchRunner::run(const BatchOptions& options, const hsm::Pin* pfx_password) {
  if (!options.batch_id.empty()) {
    if (auto existing = m_registry.find_batch(options.batch_id)) {
      if (existing->state == "finished") {
        return finished_summary(*existing,
                                params_from_json(existing->id, existing->params_json).out_dir);
      }
      return resume(options.batch_id, pfx_password, options.progress, options.threads);
    }
  }
  validate(options, pfx_password);
  BatchOptions o = options;
  if (o.delivery != Delivery::kReturned) o.out_dir = std::filesystem::absolute(o.out_dir).string();
  if (!o.input.path.empty() && o.input.kind != BatchInput::Kind::kCsrDer) {
    o.input.path = std::filesystem::absolute(o.input.path).string();
  }
  if (o.batch_id.empty()) o.batch_id = new_batch_id(m_clock, m_random);
  // Nothing is written before every check that can fail on the inputs has passed.
  m_cas.load_key(m_cas.get(o.ca_name));  // kNotFound, kKeyNotFound (an external CA)
  m_cas.require_can_sign(o.ca_name);     // kCaConstraint: it or an issuer is revoked
  check_inputs(o.input, m_policy);
  if (o.delivery != Delivery::kReturned) prepare_out_dir(o, m_registry, false);
  if (o.delivery == Delivery::kBatchDirectory) claim_out_dir(o.out_dir, o.batch_id, false);
  BatchRecord rec;
  rec.id = o.batch_id;
  rec.ca_name = o.ca_name;
  rec.params_json = params_to_json(o);
  rec.state = "running";
  rec.created_at = m_clock.now();
  rec.offsets_json = "{}";
  m_registry.create_batch(rec);
  m_registry.audit("batch.start", rec.id, rec.params_json);
  return execute(rec, o, pfx_password, false, 0);
}

BatchSummary BatchRunner::resume(const std::string& batch_id, const hsm::Pin* pfx_password,
                                 std::function<void(const BatchProgress&)> progress, int threads) {
  auto rec = m_registry.find_batch(batch_id);
  if (!rec) throw Error(ErrorCode::kNotFound, "batch '" + batch_id + "' not found in the registry");
  BatchOptions o = params_from_json(rec->id, rec->params_json);
  if (rec->state == "finished") return finished_summary(*rec, o.out_dir);
  if (!m_registry.batch_shares(batch_id).empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "batch '" + batch_id +
                    "' is shared by workers: `fleetsign serve --worker` processes run its shares "
                    "(`batch show " +
                    batch_id + "` shows them); it is not resumed as one batch");
  }
  o.progress = std::move(progress);
  o.threads = threads;
  validate(o, pfx_password);
  if (o.delivery != Delivery::kReturned) prepare_out_dir(o, m_registry, true);
  if (o.delivery == Delivery::kBatchDirectory) claim_out_dir(o.out_dir, batch_id, true);
  // Serials of a crashed run that never became certificates: spent, never reused.
  const std::int64_t abandoned = m_registry.abandon_intents(batch_id);
  m_registry.audit("batch.resume", batch_id, json_object({{"abandoned_intents", abandoned}}));
  return execute(*rec, o, pfx_password, true, abandoned);
}

BatchSummary BatchRunner::execute(const BatchRecord& record, const BatchOptions& o,
                                  const hsm::Pin* pfx_password, bool resumed,
                                  std::int64_t abandoned) {
  // Start-up, on this thread, before any signing: key lookup and the key/certificate match.
  const CaRecord ca = m_cas.get(o.ca_name);
  m_cas.require_can_sign(ca.name);
  const hsm::SigningKey& key = m_cas.load_key(ca);
  // The compromised-key blocklist, read once per batch (a run of the CLI).
  const Issuer issuer(ca, key, m_policy, policy::device_days_for(m_policy, o.group), m_clock,
                      m_random, KeyBlocklist::load(m_registry));
  batch::RenderContext render = render_context(record, o, ca, m_cas.chain(ca.name), pfx_password);
  if (o.bundle && record.offsets_json == "{}") {
    batch::write_file(std::filesystem::path(o.out_dir) / "chain.pem", render.chain_pem, 0644);
  }
  batch::OutputStreams streams(o.out_dir, o.bundle, record.offsets_json,
                               o.delivery == Delivery::kBatchDirectory);
  Run run{o, record, m_registry, issuer, m_clock, render, streams, batch::open_input(o.input)};
  run.spool_dir = std::filesystem::path(o.out_dir) / ".spool" / record.id;
  run.spool_writer = batch::new_spool_writer();
  if (resumed) {
    for (auto& r : m_registry.batch_issued_after(record.id, record.watermark)) {
      run.committed.emplace(r.seq, std::move(r));
    }
    if (o.input.kind == BatchInput::Kind::kGenerate)
      run.spooled_keys = batch::load_spooled_keys(run.spool_dir);
    if (o.input.kind != BatchInput::Kind::kGenerate) {
      for (auto& id : m_registry.batch_device_ids(record.id)) run.seen_ids.insert(std::move(id));
    }
  }
  try {
    run_pipeline(run);
  } catch (const Error& e) {
    // Recorded certificates stay recorded and their serials spent; the watermark stays before
    // their outputs, so a resume writes those outputs and signs nothing twice.
    Poco::JSON::Object detail;
    detail.set("code", std::string(error_code_name(e.code())));
    detail.set("error", std::string(e.what()));
    std::ostringstream text;
    detail.stringify(text);
    try {
      m_registry.audit("batch.interrupt", record.id, text.str());
    } catch (const Error&) {
      // The registry itself may be what failed (its server gone): the first error is the one
      // to report.
    }
    throw;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run.start).count();
  if (o.input.kind == BatchInput::Kind::kGenerate) batch::clear_spool(run.spool_dir);
  m_registry.finish_batch(record.id, m_clock.now());
  BatchSummary s;
  s.batch_id = record.id;
  s.out_dir = o.out_dir;
  s.stage_seconds = run.stages.seconds();
  s.issued = run.issued_now;
  s.reemitted = run.reemitted_now;
  s.rejected = run.rejected_now;
  s.total_issued = record.issued + run.issued_now + run.reemitted_now;
  s.total_rejected = record.rejected + run.rejected_now;
  s.abandoned = abandoned;
  s.seconds = seconds;
  s.certs_per_second = seconds > 0 ? static_cast<double>(run.issued_now) / seconds : 0;
  s.resumed = resumed;
  s.clamped = issuer.clamped();
  s.delivered = std::move(run.delivered);
  s.extensions_ignored = run.extensions_ignored;
  s.first_reject = run.first_reject;
  s.first_reject_reason = std::move(run.first_reject_reason);
  Poco::JSON::Object detail;
  detail.set("issued", s.total_issued);
  detail.set("rejected", s.total_rejected);
  std::ostringstream text;
  detail.stringify(text);
  m_registry.audit("batch.finish", record.id, text.str());
  return s;
}

bool needs_pfx_password(Stores& registry, const std::string& batch_id) {
  auto rec = registry.find_batch(batch_id);
  if (!rec) throw Error(ErrorCode::kNotFound, "batch '" + batch_id + "' not found in the registry");
  return rec->state != "finished" && params_from_json(rec->id, rec->params_json).pfx;
}

}  // namespace fleetsign::engine
