#include <Poco/JSON/Parser.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "cli.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/batch.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/issuance.hpp"
#include "fleetsign/error.hpp"
#include "paging.hpp"

namespace fleetsign::cli {

namespace {

// Lineage is printed in listings and manifests: no control characters (a newline forges lines).
std::string lineage_value(const Args& a, const std::string& name) {
  const std::string v = a.get(name).value_or("");
  if (v.size() > 128) {
    throw Error(ErrorCode::kInvalidArgument, "--" + name + " is longer than 128 characters");
  }
  for (const char c : v) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
      throw Error(ErrorCode::kInvalidArgument, "--" + name + " holds a control character");
    }
  }
  return v;
}

engine::Lineage lineage_options(const Args& a) {
  return engine::Lineage{lineage_value(a, "lot"), lineage_value(a, "line"),
                         lineage_value(a, "site"), lineage_value(a, "operator")};
}

// --group G: the policy group's intermediate (unless --ca names one) and device validity.
std::pair<std::string, std::string> ca_and_group(Context& ctx) {
  const Args& a = ctx.args();
  const std::string group = a.get("group").value_or("");
  if (group.empty()) {
    return {a.require("ca"), ""};
  }
  const auto it = ctx.policy().groups.find(group);
  if (it == ctx.policy().groups.end()) {
    throw Error(ErrorCode::kNotFound, "--group '" + group + "' is not a group of the policy file");
  }
  std::string ca = a.get("ca").value_or(it->second.intermediate);
  if (ca.empty()) {
    throw Error(ErrorCode::kUsage,
                "--group '" + group + "' names no intermediate in the policy: give --ca");
  }
  return {ca, group};
}

int run_issue_single(Context& ctx) {
  const Args& a = ctx.args();
  const std::string csr_file = a.require("csr");
  const std::string out_dir = a.require("out");
  ctx.home();  // protects the home's directory
  refuse_protected(out_dir);
  auto blobs = engine::parse_csr_text(read_bounded(csr_file, kCsrFileLimit, "CSR file"));
  if (blobs.size() != 1 || !blobs[0].problem.empty()) {
    throw Error(ErrorCode::kCsrMalformed,
                csr_file + ": " +
                    (blobs.size() != 1 ? "holds " + std::to_string(blobs.size()) +
                                             " CSRs; use --csr-file for a bundle"
                                       : blobs[0].problem));
  }
  const auto [ca, group] = ca_and_group(ctx);
  engine::SingleIssueRequest request{
      ca, std::move(blobs[0].der), lineage_options(a), a.has("reissue"), group, out_dir, csr_file};
  engine::CaService cas(ctx.registry(), ctx.token(), ctx.policy(), ctx.clock(), ctx.random());
  auto result =
      engine::issue_single(ctx.registry(), cas, ctx.policy(), ctx.clock(), ctx.random(), request);
  if (!result) {
    std::string advice;
    if (result.error().code == ErrorCode::kAlreadyIssued) {
      advice = " (use --reissue to issue another)";
    }
    throw Error(result.error().code, csr_file + ": " + result.error().message + advice);
  }
  const auto& files = result->files;
  if (ctx.json()) {
    Poco::JSON::Object o;
    o.set("device_id", result->cert.device_id);
    o.set("serial", result->cert.serial);
    o.set("sha1", result->cert.sha1);
    o.set("sha256", result->cert.sha256);
    o.set("not_before", engine::iso8601(result->cert.not_before));
    o.set("not_after", engine::iso8601(result->cert.not_after));
    o.set("cert", files[0]);
    o.set("fullchain", files[1]);
    o.set("batch", result->batch_id);
    o.set("reemitted", result->reemitted);
    o.set("extensions_ignored", result->extensions_ignored);
    o.set("clamped_to_ca", result->clamped);
    ctx.print_json(o);
  } else {
    std::printf("%s %s serial %s\n  SHA-256 %s\n  valid %s .. %s\n  %s\n  %s\n",
                result->reemitted ? "re-emitted (recorded by an interrupted run)" : "issued",
                result->cert.device_id.c_str(), result->cert.serial.c_str(),
                result->cert.sha256.c_str(), engine::iso8601(result->cert.not_before).c_str(),
                engine::iso8601(result->cert.not_after).c_str(), files[0].c_str(),
                files[1].c_str());
    if (result->extensions_ignored) {
      std::printf(
          "note: the CSR asked for extensions; they were ignored (the policy sets every "
          "extension)\n");
    }
    if (result->clamped) {
      std::printf("warning: validity clamped to the CA's expiry\n");
    }
  }
  return 0;
}

// Count, rate and ETA, rewritten in place — only on a terminal and never with --json.
std::function<void(const engine::BatchProgress&)> progress_printer(const Context& ctx) {
  if (ctx.json() || !isatty(STDERR_FILENO)) {
    return nullptr;
  }
  return [](const engine::BatchProgress& p) {
    const double rate = p.seconds > 0 ? static_cast<double>(p.issued + p.rejected) / p.seconds : 0;
    std::string eta = "?";
    if (p.total > 0 && rate > 0) {
      const auto left = static_cast<long long>(static_cast<double>(p.total - p.done) / rate);
      char buf[32];
      std::snprintf(buf, sizeof buf, "%lld:%02lld", left / 60, left % 60);
      eta = buf;
    }
    if (p.total > 0) {
      std::fprintf(
          stderr, "\r  %lld / %lld (%.1f%%)  issued %lld  rejected %lld  %.0f/s  ETA %s   ",
          static_cast<long long>(p.done), static_cast<long long>(p.total),
          100.0 * static_cast<double>(p.done) / static_cast<double>(p.total),
          static_cast<long long>(p.issued), static_cast<long long>(p.rejected), rate, eta.c_str());
    } else {
      std::fprintf(stderr, "\r  %lld done  issued %lld  rejected %lld  %.0f/s   ",
                   static_cast<long long>(p.done), static_cast<long long>(p.issued),
                   static_cast<long long>(p.rejected), rate);
    }
    std::fflush(stderr);
  };
}

// FLEETSIGN_STAGE_TIMES=1: per-stage busy time on stderr, for tuning the pipeline.
void print_stage_times(const engine::BatchSummary& s) {
  if (std::getenv("FLEETSIGN_STAGE_TIMES") == nullptr || s.seconds <= 0) {
    return;
  }
  for (const auto& [stage, busy] : s.stage_seconds) {
    std::fprintf(stderr, "stage %-8s %7.3f s busy (%5.1f%% of wall)\n", stage.c_str(), busy,
                 100.0 * busy / s.seconds);
  }
}

int print_summary(Context& ctx, const engine::BatchSummary& s) {
  print_stage_times(s);
  const bool progress_shown = !ctx.json() && isatty(STDERR_FILENO);
  if (progress_shown) {
    std::fprintf(stderr, "\n");
  }
  const std::int64_t total_rejected = s.total_rejected;
  if (ctx.json()) {
    Poco::JSON::Object o;
    o.set("batch", s.batch_id);
    o.set("out", s.out_dir);
    o.set("issued", s.issued);
    o.set("reemitted", s.reemitted);
    o.set("rejected", s.rejected);
    o.set("total_issued", s.total_issued);
    o.set("total_rejected", total_rejected);
    o.set("abandoned_serials", s.abandoned);
    o.set("seconds", s.seconds);
    o.set("certs_per_s", s.certs_per_second);
    o.set("resumed", s.resumed);
    o.set("already_finished", s.already_finished);
    o.set("clamped_to_ca", s.clamped);
    ctx.print_json(o);
  } else if (s.already_finished) {
    std::printf("batch %s had already finished (%lld issued); nothing new issued\n",
                s.batch_id.c_str(), static_cast<long long>(s.total_issued));
    if (total_rejected > 0) {
      std::printf("  rejected %lld; rejects  %s/rejects.csv\n",
                  static_cast<long long>(total_rejected), s.out_dir.c_str());
    }
  } else {
    std::printf("batch %s%s: issued %lld, rejected %lld in %.2f s (%.0f certs/s)\n  outputs  %s\n",
                s.batch_id.c_str(), s.resumed ? " (resumed)" : "", static_cast<long long>(s.issued),
                static_cast<long long>(s.rejected), s.seconds, s.certs_per_second,
                s.out_dir.c_str());
    if (s.reemitted > 0) {
      std::printf(
          "  re-emitted %lld certificates recorded by the interrupted run (not signed again)\n",
          static_cast<long long>(s.reemitted));
    }
    if (s.abandoned > 0) {
      std::printf("  %lld serials of the interrupted run were marked abandoned (never reused)\n",
                  static_cast<long long>(s.abandoned));
    }
    if (total_rejected > 0) {
      std::printf("  rejects  %s/rejects.csv\n", s.out_dir.c_str());
    }
    if (s.clamped) {
      std::printf("warning: device validity clamped to the CA's expiry\n");
    }
  }
  // Distinct status: the batch completed, but some inputs were rejected (also when it had
  // completed before: the same command answers the same way).
  return total_rejected > 0 ? 3 : 0;
}

// A device key made here and a certificate it signs itself: for individual enrollments and IoT
// Hub selfSigned devices. No registry CA, no token.
int run_issue_self_signed(Context& ctx) {
  const Args& a = ctx.args();
  const std::string key = a.get("key").value_or("ec-p256");
  const auto alg = policy::parse_key_algorithm(key);
  if (!alg) {
    throw Error(ErrorCode::kUsage,
                "--key '" + key + "' is not one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096");
  }
  ctx.home();  // protects the home's directory
  refuse_protected(a.require("out"));
  const auto device =
      engine::make_self_signed_device(ctx.registry(), ctx.policy(), ctx.clock(), ctx.random(),
                                      a.require("id"), *alg, a.get_int("days"));
  const auto files = engine::write_self_signed_files(a.require("out"), device);
  if (ctx.json()) {
    Poco::JSON::Object o;
    o.set("device_id", device.device_id);
    o.set("serial", device.serial);
    o.set("sha1", device.sha1);
    o.set("sha256", device.sha256);
    o.set("not_before", engine::iso8601(device.not_before));
    o.set("not_after", engine::iso8601(device.not_after));
    o.set("cert", files[0]);
    o.set("key", files[1]);
    ctx.print_json(o);
  } else {
    std::printf(
        "self-signed %s serial %s\n  SHA-256 %s\n  SHA-1   %s\n  valid %s .. %s\n  %s\n  %s\n",
        device.device_id.c_str(), device.serial.c_str(), device.sha256.c_str(), device.sha1.c_str(),
        engine::iso8601(device.not_before).c_str(), engine::iso8601(device.not_after).c_str(),
        files[0].c_str(), files[1].c_str());
  }
  return 0;
}

int run_issue(Context& ctx) {
  const Args& a = ctx.args();
  if (a.has("self-signed")) {
    return run_issue_self_signed(ctx);
  }
  const int sources =
      a.has("csr") + a.has("csr-dir") + a.has("csr-file") + a.has("generate") + a.has("resume");
  if (sources != 1) {
    throw Error(ErrorCode::kUsage,
                "give exactly one of --csr, --csr-dir, --csr-file, --generate, --resume");
  }
  if (a.has("share") && (a.has("csr") || a.has("resume"))) {
    throw Error(ErrorCode::kUsage, std::string("--share does not go with ") +
                                       (a.has("csr") ? "--csr (one device)" : "--resume") +
                                       ": it shares a new batch of --generate or --csr-dir");
  }
  if (a.has("csr")) {
    return run_issue_single(ctx);
  }
  const int threads = a.get_int("threads").value_or(0);
  if (threads < 0) {
    throw Error(ErrorCode::kUsage,
                "--threads " + std::to_string(threads) + " is negative (0 or absent: all cores)");
  }
  // A resume needs only the batch ID and the secrets: --pfx is recorded with the batch.
  const std::string existing = a.has("resume") ? a.require("resume") : a.get("batch").value_or("");
  if (engine::is_share_batch_id(existing)) {
    throw Error(ErrorCode::kInvalidArgument,
                "batch '" + existing +
                    "' is a share of a shared batch: the workers run it (fleetsign batch work / "
                    "serve --worker), under its lease");
  }
  const bool recorded_pfx = !existing.empty() && ctx.registry().find_batch(existing) &&
                            engine::needs_pfx_password(ctx.registry(), existing);
  const auto password = pfx_password(a, a.has("pfx") || recorded_pfx, "the batch's .pfx files");
  engine::CaService cas(ctx.registry(), ctx.token(), ctx.policy(), ctx.clock(), ctx.random());
  engine::BatchRunner runner(ctx.registry(), cas, ctx.policy(), ctx.clock(), ctx.random());
  if (a.has("resume")) {
    return print_summary(ctx, runner.resume(a.require("resume"), password ? &*password : nullptr,
                                            progress_printer(ctx), threads));
  }
  engine::BatchOptions o;
  o.batch_id = a.get("batch").value_or("");
  std::tie(o.ca_name, o.group) = ca_and_group(ctx);
  o.out_dir = a.require("out");
  ctx.home();  // protects the home's directory
  refuse_protected(o.out_dir);
  o.lineage = lineage_options(a);
  o.threads = threads;
  o.bundle = a.has("bundle");
  o.pfx = a.has("pfx");
  o.reissue = a.has("reissue");
  o.chunk_size = a.get_int("chunk").value_or(o.chunk_size);
  // A tuning knob for measurements (fleetsign-bench), not an option users need.
  if (const char* v = std::getenv("FLEETSIGN_TOKENS_PER_THREAD")) {
    o.chunks_per_thread = std::max(1, std::atoi(v));
  }
  o.progress = progress_printer(ctx);
  if (a.has("generate")) {
    o.input.kind = engine::BatchInput::Kind::kGenerate;
    o.input.count = a.get_int("generate").value_or(0);
    o.input.id_pattern = a.require("id-pattern");
    const std::string key = a.get("key").value_or("ec-p256");
    auto alg = policy::parse_key_algorithm(key);
    if (!alg) {
      throw Error(ErrorCode::kUsage,
                  "--key '" + key + "' is not one of ec-p256, ec-p384, rsa-2048");
    }
    if (auto why = policy::check_device_key(ctx.policy(), engine::describe_key_algorithm(*alg))) {
      throw Error(ErrorCode::kPolicyInvalid, "--key " + key + ": " + *why);
    }
    o.input.key = *alg;
    try {
      engine::validate_id_pattern(o.input.id_pattern, o.input.count, ctx.policy());
    } catch (const Error& e) {
      throw e.with_context("--id-pattern");
    }
  } else {
    o.input.kind =
        a.has("csr-dir") ? engine::BatchInput::Kind::kCsrDir : engine::BatchInput::Kind::kCsrFile;
    o.input.path = a.has("csr-dir") ? a.require("csr-dir") : a.require("csr-file");
  }
  if (a.has("share")) {
    const auto size = a.get_int("share").value_or(0);
    o.progress = nullptr;
    const std::string id = runner.share(o, size);
    const auto shares = ctx.registry().batch_shares(id);
    std::int64_t inputs = 0;
    for (const auto& sh : shares) inputs += sh.count;
    if (ctx.json()) {
      Poco::JSON::Object j(Poco::JSON_PRESERVE_KEY_ORDER);
      j.set("batch", id);
      j.set("shares", static_cast<std::int64_t>(shares.size()));
      j.set("inputs", inputs);
      j.set("out", std::filesystem::absolute(o.out_dir).string());
      ctx.print_json(j);
    } else {
      std::printf(
          "batch %s: %lld inputs in %zu shares of up to %d, waiting for workers "
          "(fleetsign serve --worker); nothing signed here\n  outputs  %s/sNNNN\n"
          "  progress fleetsign batch show %s\n",
          id.c_str(), static_cast<long long>(inputs), shares.size(), size,
          std::filesystem::absolute(o.out_dir).string().c_str(), id.c_str());
    }
    return 0;
  }
  return print_summary(ctx, runner.run(o, password ? &*password : nullptr));
}

int run_batch_list(Context& ctx) {
  const auto page = page_args(ctx.args(), 0);
  auto batches = ctx.registry().list_batches(one_more(page));
  const auto next = cut_page(batches, page, [](const auto& b) { return b.id; });
  if (ctx.json()) {
    Poco::JSON::Array arr;
    for (const auto& b : batches) {
      Poco::JSON::Object o;
      o.set("id", b.id);
      o.set("ca", b.ca_name);
      o.set("state", b.state);
      o.set("issued", b.issued);
      o.set("rejected", b.rejected);
      o.set("created_at", engine::iso8601(b.created_at));
      arr.add(o);
    }
    Poco::JSON::Object o;
    o.set("batches", arr);
    set_next(o, next);
    ctx.print_json(o);
    return 0;
  }
  std::printf("%-34s %-14s %-9s %10s %9s  %s\n", "BATCH", "CA", "STATE", "ISSUED", "REJECTED",
              "CREATED");
  for (const auto& b : batches) {
    std::printf("%-34s %-14s %-9s %10lld %9lld  %s\n", b.id.c_str(), b.ca_name.c_str(),
                b.state.c_str(), static_cast<long long>(b.issued),
                static_cast<long long>(b.rejected), engine::iso8601(b.created_at).c_str());
  }
  print_next_hint(next);
  return 0;
}

int run_batch_show(Context& ctx) {
  const std::string id = ctx.args().positional_at(0, "BATCH");
  auto b = ctx.registry().find_batch(id);
  if (!b) {
    throw Error(ErrorCode::kNotFound, "batch '" + id + "' not found in the registry");
  }
  // A shared batch (issue --share): its certificates are its shares' batches'.
  const auto shares = ctx.registry().batch_shares(id);
  std::vector<std::string> ids = {id};
  for (const auto& sh : shares) ids.push_back(engine::BatchRunner::share_batch_id(id, sh.share));
  const auto count = [&](engine::CertState state) {
    std::int64_t n = 0;
    for (const auto& one : ids) n += ctx.registry().count_certs(one, state);
    return n;
  };
  const auto abandoned = count(engine::CertState::kAbandoned);
  const auto open_intents = count(engine::CertState::kIntent);
  // What is recorded, not only what the watermark has passed: an interrupted run's certificates
  // count, and those without outputs yet are shown apart (a resume writes them).
  const auto recorded = count(engine::CertState::kIssued) + count(engine::CertState::kRevoked);
  std::int64_t written = b->issued;
  std::int64_t shares_done = 0;
  for (std::size_t i = 1; i < ids.size() && !shares.empty(); ++i) {
    shares_done += shares[i - 1].state == "done" ? 1 : 0;
    if (b->state == "finished") continue;  // the parent's totals are the shares' sum
    if (const auto sub = ctx.registry().find_batch(ids[i])) written += sub->issued;
  }
  const auto unwritten = std::max<std::int64_t>(0, recorded - written);
  const bool interrupted =
      shares.empty() && b->state != "finished" && (open_intents > 0 || unwritten > 0);
  if (ctx.json()) {
    Poco::JSON::Parser parser;
    Poco::JSON::Object o;
    o.set("id", b->id);
    o.set("ca", b->ca_name);
    o.set("state", b->state);
    o.set("issued", recorded);
    o.set("outputs_pending", unwritten);
    o.set("rejected", b->rejected);
    o.set("abandoned_serials", abandoned);
    o.set("open_intents", open_intents);
    o.set("watermark", b->watermark);
    o.set("created_at", engine::iso8601(b->created_at));
    o.set("finished_at", b->finished_at != 0 ? engine::iso8601(b->finished_at) : "");
    o.set("params", parser.parse(b->params_json));
    if (!shares.empty()) {
      Poco::JSON::Array arr;
      for (const auto& sh : shares) {
        Poco::JSON::Object j(Poco::JSON_PRESERVE_KEY_ORDER);
        j.set("share", sh.share);
        j.set("batch", engine::BatchRunner::share_batch_id(id, sh.share));
        j.set("first", sh.first);
        j.set("count", sh.count);
        j.set("state", sh.state);
        j.set("holder", sh.holder);
        j.set("attempts", sh.attempts);
        j.set("lease_until", sh.lease_until != 0 ? engine::iso8601(sh.lease_until) : "");
        j.set("issued", sh.issued);
        j.set("rejected", sh.rejected);
        arr.add(j);
      }
      o.set("shares", arr);
      o.set("shares_done", shares_done);
    }
    ctx.print_json(o);
    return 0;
  }
  std::printf(
      "batch %s\n  CA          %s\n  state       %s\n  issued      %lld (%lld without outputs "
      "yet)\n"
      "  rejected    %lld\n"
      "  abandoned   %lld serials (never reused)\n  open        %lld intents%s\n  created     %s\n"
      "  parameters  %s\n",
      b->id.c_str(), b->ca_name.c_str(), b->state.c_str(), static_cast<long long>(recorded),
      static_cast<long long>(unwritten), static_cast<long long>(b->rejected),
      static_cast<long long>(abandoned), static_cast<long long>(open_intents),
      (interrupted ? " (interrupted: fleetsign issue --resume " + b->id + ")" : std::string())
          .c_str(),
      engine::iso8601(b->created_at).c_str(), b->params_json.c_str());
  if (!shares.empty()) {
    std::printf("  shares      %lld of %zu done (workers: fleetsign serve --worker)\n",
                static_cast<long long>(shares_done), shares.size());
    for (const auto& sh : shares) {
      if (sh.state == "done") continue;
      std::printf("    share %lld (inputs %lld..%lld): %s, attempts %lld\n",
                  static_cast<long long>(sh.share), static_cast<long long>(sh.first),
                  static_cast<long long>(sh.first + sh.count - 1),
                  sh.holder.empty() ? "waiting" : ("last held by " + sh.holder).c_str(),
                  static_cast<long long>(sh.attempts));
    }
  }
  return 0;
}

}  // namespace

void add_issue_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"issue"},
      "(--ca NAME | --group G) (--csr FILE | --csr-dir DIR | --csr-file BUNDLE.pem | --generate N "
      "--id-pattern P "
      "[--key ALG]) --out DIR [--batch ID] [--lot L --line L --site S --operator O] [--threads N] "
      "[--pfx --pfx-password-file F] [--bundle] [--reissue] [--share N] [--json]\n       fleetsign "
      "issue "
      "--resume BATCH"
      "\n       fleetsign issue --self-signed --id ID --out DIR [--key ALG] [--days N] [--json]",
      "issue device certificates: one, or a batch in parallel (exactly once, resumable)",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "ca", "NAME", "issuing CA");
        add_option(s, "group", "G",
                   "policy group: its intermediate (unless --ca) and device validity");
        add_option(s, "csr", "FILE", "one device CSR (PEM or DER)");
        add_option(s, "csr-dir", "DIR", "a directory of CSR files, one device each");
        add_option(s, "csr-file", "BUNDLE", "a PEM file of many CSRs");
        add_option(s, "generate", "N", "make N device key pairs here and certify them");
        add_option(s, "id-pattern", "P", "device IDs for --generate, e.g. 'sensor-{06}' (from 1)");
        add_option(s, "key", "ALG",
                   "device key for --generate: ec-p256 (default), ec-p384, rsa-2048");
        add_option(s, "out", "DIR", "output directory");
        add_option(s, "batch", "ID",
                   "batch ID (default: generated); an existing ID resumes/reports it; not "
                   "'roll-…' (jobs' IDs)");
        add_option(s, "resume", "BATCH", "resume an interrupted batch from the registry");
        add_option(s, "threads", "N", "worker threads (default: all cores)");
        add_option(s, "chunk", "N", "devices per registry transaction (default 1024; tuning)");
        add_option(s, "share", "N",
                   "record the batch in shares of N inputs for `serve --worker` processes to "
                   "sign (--generate or --csr-dir; nothing is signed here)");
        add_flag(s, "pfx", "also write {id}.pfx (PKCS#12) for generated devices");
        add_option(s, "pfx-password-file", "F",
                   "file holding the .pfx password (else FLEETSIGN_PFX_PASSWORD)");
        add_flag(s, "bundle", "one PEM + one JSON-lines stream instead of files per device");
        add_flag(s, "reissue", "issue even if the device already holds a valid certificate");
        add_option(s, "lot", "L", "manufacturing lot (recorded with the certificate)");
        add_option(s, "line", "L", "production line");
        add_option(s, "site", "S", "site");
        add_option(s, "operator", "O", "operator");
        add_option(s, "pin-file", "FILE", "file holding the user PIN (else FLEETSIGN_PIN)");
        add_flag(s, "self-signed",
                 "a device key and a certificate it signs itself (no CA, no token)");
        add_option(s, "id", "ID", "device ID (CN) for --self-signed");
        add_option(s, "days", "N",
                   "validity of a --self-signed certificate (default from the policy)");
        add_flag(s, "json", "print the result as JSON");
      },
      run_issue});
  commands.push_back(Command{{"batch", "list"},
                             "[--limit N] [--after BATCH] [--json]",
                             "list batches, newest first",
                             [](Poco::Util::OptionSet& s) {
                               add_paging_options(s, "default: all", "BATCH");
                               add_flag(s, "json", "print as JSON");
                             },
                             run_batch_list});
  commands.push_back(Command{{"batch", "show"},
                             "BATCH [--json]",
                             "show a batch: state, counts, abandoned serials, parameters",
                             [](Poco::Util::OptionSet& s) { add_flag(s, "json", "print as JSON"); },
                             run_batch_show});
}

}  // namespace fleetsign::cli
