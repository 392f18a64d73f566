// Several workers over one PostgreSQL registry (issue 13):
//   worker clone DIR   a worker's home: the same registry, policy and token (a SoftHSM2 clone)
//   batch work         claims shares of shared batches (`issue --share N`) and runs each, with a
//                      lease renewed while it runs; `serve` spawns it when shares are waiting
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "cli.hpp"
#include "fleetsign/engine/batch.hpp"
#include "fleetsign/engine/home_lock.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

std::string host_name() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "localhost");
  return host;
}

std::string host_identity() {
  // The host name alone is not enough: two containers given one host name would share lease
  // names (their PIDs too, often 1), and each would take the other's dead-looking process for its
  // own. The kernel's boot and the PID namespace tell them apart, and stay the same for every
  // process that can see the others' PIDs.
  static const std::string identity = [] {
    std::string seed;
    if (std::FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "re")) {
      char buf[64] = {};
      seed.assign(buf, std::fread(buf, 1, sizeof buf, f));
      std::fclose(f);
    }
    char ns[128] = {};
    const ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
    if (n > 0) seed.append(ns, static_cast<std::size_t>(n));
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a: stable across builds and versions
    for (const unsigned char c : seed) h = (h ^ c) * 1099511628211ull;
    char tag[16];
    std::snprintf(tag, sizeof tag, "%08llx", static_cast<unsigned long long>(h & 0xffffffffu));
    return host_name() + "~" + tag;
  }();
  return identity;
}

std::string process_holder_name() { return host_identity() + ":" + std::to_string(::getpid()); }

bool holder_is_gone(const std::string& holder) {
  const auto colon = holder.rfind(':');
  if (colon == std::string::npos || holder.substr(0, colon) != host_identity()) return false;
  try {
    const pid_t pid = static_cast<pid_t>(std::stol(holder.substr(colon + 1)));
    return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH;
  } catch (const std::exception&) {
    return false;
  }
}

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

constexpr int kDefaultShareLease = 30;  // seconds a share stays a silent worker's

// Renews one share's lease every lease/3 seconds on a registry connection of its own, to the
// registry's clock (workers on other machines compare with that clock, not their own); how long
// it has gone without a renewal is timed here, on the monotonic clock. A lease found taken over
// means another worker runs the share now: this process stops at once, as a kill -9 would (the
// batch is built to survive that), rather than sign beside it.
class LeaseKeeper final {
 public:
  LeaseKeeper(engine::Home& home, const engine::BatchShare& share, std::string holder,
              std::int64_t lease_s)
      : m_registry(home.open_registry()),
        m_share(share),
        m_holder(std::move(holder)),
        m_lease(lease_s),
        m_thread([this] { loop(); }) {}
  ~LeaseKeeper() {
    {
      const std::lock_guard lock(m_mutex);
      m_stop = true;
    }
    m_wake.notify_all();
    m_thread.join();
  }
  LeaseKeeper(const LeaseKeeper&) = delete;  // owns a thread
  LeaseKeeper& operator=(const LeaseKeeper&) = delete;

 private:
  void loop() {
    std::unique_lock lock(m_mutex);
    std::int64_t attempted = m_renewed;
    while (!m_wake.wait_for(lock, std::chrono::seconds(1), [this] { return m_stop; })) {
      const std::int64_t now = monotonic_s();
      if (now - m_renewed >= m_lease - std::max<std::int64_t>(1, m_lease / 6)) {
        // No renewal for about a lease: another worker may claim the share any moment now.
        std::fprintf(stderr,
                     "fleetsign batch work: the lease of share %lld of batch %s could not be "
                     "renewed for %lld s: stopping at once, before it ends\n",
                     static_cast<long long>(m_share.share), m_share.batch_id.c_str(),
                     static_cast<long long>(now - m_renewed));
        std::_Exit(75);
      }
      if (now - attempted < m_lease / 3) continue;  // renewed every third of the lease
      attempted = now;
      try {
        if (m_registry->renew_batch_share(m_share.batch_id, m_share.share, m_holder,
                                          m_registry->registry_time() + m_lease)) {
          m_renewed = now;
        } else {
          std::fprintf(stderr,
                       "fleetsign batch work: the lease of share %lld of batch %s was taken over "
                       "by another worker: stopping at once\n",
                       static_cast<long long>(m_share.share), m_share.batch_id.c_str());
          std::_Exit(75);
        }
      } catch (const std::exception& e) {
        // The registry is unreachable for a moment: the lease runs on until it ends (nothing may
        // escape this thread: that would abort the process).
        std::fprintf(stderr, "fleetsign batch work: renewing the lease: %s\n", e.what());
      }
    }
  }

  static std::int64_t monotonic_s() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  std::unique_ptr<engine::Registry> m_registry;
  engine::BatchShare m_share;
  std::string m_holder;
  std::int64_t m_lease;
  std::int64_t m_renewed = monotonic_s();  // the claim counts as the first renewal
  std::mutex m_mutex;
  std::condition_variable m_wake;
  bool m_stop = false;
  std::thread m_thread;  // last: started once the members above exist
};

int run_batch_work(Context& ctx) {
  const int lease = ctx.args().get_int("lease").value_or(kDefaultShareLease);
  // Renewed every third of the lease in whole seconds, behind the batch's own writes: below 5 s
  // a busy worker lost its lease to itself (found by review with --lease 3).
  if (lease < 5 || lease > 3600) throw Error(ErrorCode::kUsage, "--lease must be 5..3600 seconds");
  // Spawned by `serve`: die with it (a serve killed with kill -9 must not leave its signer
  // claiming shares), and not start at all when it is already gone.
  if (const char* serve_pid = std::getenv("FLEETSIGN_SERVE_PID")) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (std::to_string(::getppid()) != serve_pid) {
      throw Error(ErrorCode::kUsage, "the serve that started this worker has exited");
    }
  }
  const int threads = ctx.args().get_int("threads").value_or(0);
  if (threads < 0) throw Error(ErrorCode::kUsage, "--threads must be 0 (all cores) or more");
  const int max_shares = ctx.args().get_int("max-shares").value_or(0);
  const bool drain = ctx.args().has("drain");
  if (max_shares < 0) throw Error(ErrorCode::kUsage, "--max-shares must be 0 (no limit) or more");
  // On a SQLite home its own serve runs the shares; on PostgreSQL every worker's serve does.
  engine::Home& home = ctx.home();
  engine::CaService& cas = ctx.cas();  // logs in (and takes the home lock) before any claim
  engine::BatchRunner runner(ctx.registry(), cas, ctx.policy(), ctx.clock(), ctx.random());
  const std::string holder = process_holder_name();
  Array done;
  int count = 0;
  while (max_shares == 0 || count < max_shares) {
    const auto share =
        ctx.registry().claim_batch_share(holder, ctx.registry().registry_time(), lease);
    if (!share) {
      // --drain: shares other workers hold are waited for; one whose holder died is claimable
      // once its lease ends, and this worker finishes it.
      if (!drain || ctx.registry().claimable_batch_shares(INT64_MAX) == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      continue;
    }
    ++count;
    std::fprintf(stderr,
                 "fleetsign batch work: %s runs share %lld of batch %s (inputs %lld..%lld, "
                 "attempt %lld)\n",
                 holder.c_str(), static_cast<long long>(share->share), share->batch_id.c_str(),
                 static_cast<long long>(share->first),
                 static_cast<long long>(share->first + share->count - 1),
                 static_cast<long long>(share->attempts));
    engine::BatchSummary s;
    try {
      const LeaseKeeper keeper(home, *share, holder, lease);
      // The fencing token: each of the share's write transactions checks that this worker still
      // holds it (a worker frozen past its lease writes nothing once another took over).
      const engine::FenceScope fence(ctx.registry(),
                                     engine::ShareFence{share->batch_id, share->share, holder});
      s = runner.run_share(*share, nullptr, threads);
    } catch (const Error& e) {
      // This worker cannot run the share (a CA key its token lacks, outputs it cannot write):
      // its lease ends soon, 10 s per attempt so far (at most 5 min), so another worker retries
      // it, and a share that fails everywhere does not keep the shares after it waiting (found
      // by review: a poisoned first share was claimed again on every tick).
      try {
        const std::int64_t back_off = std::min<std::int64_t>(300, 10 * share->attempts);
        ctx.registry().renew_batch_share(share->batch_id, share->share, holder,
                                         ctx.registry().registry_time() + back_off);
      } catch (const Error&) {
        // The lease then ends when it would have.
      }
      throw e.with_context("share " + std::to_string(share->share) + " of batch " +
                           share->batch_id);
    }
    engine::BatchShare finished = *share;
    finished.issued = s.total_issued;
    finished.rejected = s.total_rejected;
    const bool last =
        ctx.registry().finish_batch_share(finished, holder, ctx.registry().registry_time());
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("batch", share->batch_id);
    o.set("share", share->share);
    o.set("share_batch", s.batch_id);
    o.set("issued", s.total_issued);
    o.set("rejected", s.total_rejected);
    o.set("resumed", s.resumed);
    o.set("abandoned_serials", s.abandoned);
    o.set("reemitted", s.reemitted);
    o.set("seconds", s.seconds);
    o.set("batch_finished", last);
    done.add(o);
    if (!ctx.json()) {
      std::printf("share %lld of batch %s: issued %lld, rejected %lld in %.2f s%s%s\n",
                  static_cast<long long>(share->share), share->batch_id.c_str(),
                  static_cast<long long>(s.total_issued), static_cast<long long>(s.total_rejected),
                  s.seconds, s.resumed ? " (resumed after its last holder stopped)" : "",
                  last ? "; the batch is finished" : "");
      std::fflush(stdout);
    }
  }
  if (ctx.json()) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("worker", holder);
    o.set("shares", done);
    ctx.print_json(o);
  } else if (count == 0) {
    std::printf("no batch share is waiting\n");
  }
  return 0;
}

int run_worker_clone(Context& ctx) {
  const std::filesystem::path dir = ctx.args().positional_at(0, "DIR");
  engine::Home home = engine::Home::open(ctx.home_dir());
  // No process of this home changes the token while it is copied.
  const auto lock = engine::HomeLock::acquire(home.config().dir, ctx.args().has("wait"));
  const engine::Home worker = home.clone_worker(dir);
  home.open_registry()->audit(
      "worker.clone", worker.config().dir.string(),
      engine::json_object({{"from", home.config().dir.string()},
                           {"token", worker.embedded_token() ? "softhsm2 clone" : "same module"}}));
  if (ctx.json()) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("home", worker.config().dir.string());
    o.set("registry", engine::redacted_registry_url(worker.config().registry_url));
    o.set("token", worker.embedded_token() ? "clone" : "shared");
    ctx.print_json(o);
  } else {
    std::printf(
        "worker home %s: registry %s, %s\nstart it with: fleetsign --home %s serve "
        "--worker\n",
        worker.config().dir.string().c_str(),
        engine::redacted_registry_url(worker.config().registry_url).c_str(),
        worker.embedded_token()
            ? "a clone of the SoftHSM2 token (the same CA keys and PINs: keep it as you "
              "keep the original)"
            : "the same PKCS#11 token (module and label)",
        worker.config().dir.string().c_str());
  }
  return 0;
}

}  // namespace

void add_worker_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"worker", "clone"},
      "DIR [--wait] [--json]",
      "make a worker's home at DIR: the same PostgreSQL registry, policy and token (a SoftHSM2 "
      "token is cloned; a module's token is shared)",
      [](Poco::Util::OptionSet& s) { add_flag(s, "json", "print the result as JSON"); },
      run_worker_clone});
  commands.push_back(Command{
      {"batch", "work"},
      "[--lease S] [--threads N] [--max-shares N] [--drain] [--pin-file F] [--wait] [--json]",
      "run waiting shares of shared batches (issue --share), each under a lease; serve --worker "
      "runs this for you",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "lease", "S",
                   "seconds a share stays this worker's without a renewal (30; renewed every S/3)");
        add_option(s, "threads", "N", "signing threads (default: all cores)");
        add_option(s, "max-shares", "N", "stop after N shares (0: until none is waiting)");
        add_flag(s, "drain",
                 "also wait for the shares other workers hold, until every shared batch is done "
                 "(a share whose worker died is taken over when its lease ends)");
        add_option(s, "pin-file", "FILE", "file holding the user PIN (else FLEETSIGN_PIN)");
        add_flag(s, "json", "print the shares run as JSON");
      },
      run_batch_work});
}

}  // namespace fleetsign::cli
