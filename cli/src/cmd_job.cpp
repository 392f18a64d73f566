// `job list|show|pause|resume|cancel|retry-failed`, and what they share with `rollover …`:
// running a job here and its closing report (job_report.hpp).
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "cli.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/jobs/rollover.hpp"
#include "job_report.hpp"
#include "paging.hpp"
#include "table.hpp"

namespace fleetsign::cli {

namespace {

constexpr int kJobIncomplete = 13;  // exit: the job ended with devices not rolled

std::string eta_text(std::int64_t s) {
  if (s < 0) return "?";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60),
                static_cast<long long>(s % 60));
  return buf;
}

std::function<void(const jobs::JobProgress&)> progress_line(const Context& ctx) {
  if (ctx.json() || !isatty(STDERR_FILENO)) return {};
  return [](const jobs::JobProgress& p) {
    const double share = p.total > 0 ? static_cast<double>(p.settled) / p.total : 1.0;
    const int filled = static_cast<int>(share * 30);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.append(static_cast<std::size_t>(30 - filled), '.');
    const auto get = [&](const char* s) {
      const auto it = p.states.find(s);
      return static_cast<long long>(it == p.states.end() ? 0 : it->second);
    };
    std::fprintf(stderr,
                 "\r[%s] %lld/%lld done, %lld active, %lld offline, %lld failed  %.0f/s  ETA %s ",
                 bar.c_str(), static_cast<long long>(p.done), static_cast<long long>(p.total),
                 get("active"), get("offline"), get("refused") + get("timed-out") + get("aborted"),
                 p.rate_per_s, eta_text(p.eta_s).c_str());
  };
}

Poco::JSON::Object progress_json(const jobs::JobProgress& p) {
  Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("id", p.job.id);
  o.set("kind", p.job.kind);
  o.set("state", p.job.state);
  o.set("total", p.total);
  o.set("done", p.done);
  o.set("failed", p.failed);
  Poco::JSON::Object states(Poco::JSON_PRESERVE_KEY_ORDER);
  for (const auto& [k, v] : p.states) states.set(k, v);
  o.set("states", states);
  o.set("ratePerSecond", std::round(p.rate_per_s * 10) / 10);
  o.set("etaSeconds", p.eta_s);
  o.set("createdAt", engine::iso8601(p.job.created_at));
  if (p.job.finished_at != 0) o.set("finishedAt", engine::iso8601(p.job.finished_at));
  if (!p.job.runner.empty()) o.set("runner", p.job.runner);
  // The job's own records, written by fleetsign: the rollout it was started with (rate, waves,
  // thresholds, deadline) and its job-level progress.
  for (const auto& [key, text] :
       {std::pair<const char*, const std::string&>{"params", p.job.params_json},
        {"report", p.job.report_json}}) {
    if (text.empty() || text == "{}") continue;
    try {
      Poco::JSON::Parser parser;
      o.set(key, parser.parse(text));
    } catch (const Poco::Exception&) {
    }
  }
  return o;
}

}  // namespace

// The closing report: who is back, who is not and why.
int report(Context& ctx, const std::string& job_id, bool list_done) {
  const auto p = jobs::job_progress(ctx.registry(), job_id, ctx.clock().now());
  const auto tasks = ctx.registry().job_tasks(job_id, "");
  const bool incomplete = p.done < p.total;
  // Devices rolled by each runner ("host:pid"; several when workers shared the job).
  std::map<std::string, std::int64_t> by_runner;
  for (const auto& t : tasks) {
    if (t.state == "done" && !t.runner.empty()) ++by_runner[t.runner];
  }
  if (ctx.json()) {
    Poco::JSON::Object o = progress_json(p);
    Poco::JSON::Object runners(Poco::JSON_PRESERVE_KEY_ORDER);
    for (const auto& [runner, n] : by_runner) runners.set(runner, n);
    o.set("doneByRunner", runners);
    Poco::JSON::Array not_back, back;
    for (const auto& t : tasks) {
      Poco::JSON::Object d(Poco::JSON_PRESERVE_KEY_ORDER);
      d.set("device", t.device_id);
      d.set("state", t.state);
      if (!t.runner.empty()) d.set("runner", t.runner);
      if (t.state == "done") {
        if (!list_done) continue;
        d.set("serial", t.new_serial);
        d.set("sha256", t.new_sha256);
        d.set("slot", t.target_slot);
        back.add(d);
        continue;
      }
      d.set("step", t.step);
      d.set("attempts", t.attempts);
      if (t.last_status != 0) d.set("status", t.last_status);
      d.set("reason", t.last_error);
      if (!t.error_code.empty()) d.set("code", t.error_code);
      not_back.add(d);
    }
    if (list_done) o.set("back", back);
    o.set("notBack", not_back);
    ctx.print_json(o);
  } else {
    std::printf("job %s (%s): %s\n", p.job.id.c_str(), p.job.kind.c_str(), p.job.state.c_str());
    std::printf("  %lld of %lld devices back on new certificates", static_cast<long long>(p.done),
                static_cast<long long>(p.total));
    if (p.rate_per_s > 0) std::printf(", %.1f devices/s", p.rate_per_s);
    if (p.job.finished_at == 0 && p.eta_s > 0) std::printf(", ETA %s", eta_text(p.eta_s).c_str());
    std::printf("\n");
    if (by_runner.size() > 1) {
      std::printf("  shared by %zu runners:", by_runner.size());
      for (const auto& [runner, n] : by_runner) {
        std::printf(" %s %lld", runner.c_str(), static_cast<long long>(n));
      }
      std::printf("\n");
    }
    for (const auto& [state, count] : p.states) {
      std::printf("  %-10s %lld\n", state.c_str(), static_cast<long long>(count));
    }
    int shown = 0;
    for (const auto& t : tasks) {
      if (t.state == "done" || t.state == "pending" || t.state == "active") continue;
      if (shown++ == 0) std::printf("not back:\n");
      if (shown > 50) {
        std::printf("  … (see --json)\n");
        break;
      }
      std::printf("  %s  %s: %s\n", t.device_id.c_str(), t.state.c_str(), t.last_error.c_str());
    }
  }
  const bool settled =
      p.job.state == "finished" || p.job.state == "aborted" || p.job.state == "canceled";
  return settled && incomplete ? kJobIncomplete : 0;
}

int run_job_in_foreground(Context& ctx, const std::string& job_id) {
  auto trigger = open_fleet_backend(ctx.home_dir());
  jobs::RunnerOptions options;
  options.runner = process_holder_name();
  options.progress = progress_line(ctx);
  options.crls_changed = [&ctx] {
    const std::string line = refresh_crls_and_broker(ctx, {});
    if (!ctx.json() && !line.empty()) std::fprintf(stderr, "%s\n", line.c_str());
  };
  // A breach roll's late revocation: every CRL behind a revocation, one CA at a time (a CA that
  // cannot sign is reported, never fatal), then the broker's CRL file.
  options.crls_behind = [&ctx] {
    const std::string line = refresh_behind_crls(ctx);
    if (!ctx.json() && !line.empty()) std::fprintf(stderr, "%s\n", line.c_str());
  };
  // --confirm on `rollover start` is kept with the job (params.confirm); nothing to pass here.
  ctx.token();  // logs in: the runner signs
  jobs::run_job(ctx.registry(), ctx.cas(), ctx.policy(), ctx.clock(), *trigger, job_id, options);
  if (options.progress) std::fprintf(stderr, "\n");
  return report(ctx, job_id, false);
}

int print_state(Context& ctx, const std::string& id, const std::string& state) {
  if (ctx.json()) {
    Poco::JSON::Object o;
    o.set("id", id);
    o.set("state", state);
    ctx.print_json(o);
  } else {
    std::printf("job %s: %s\n", id.c_str(), state.c_str());
  }
  return 0;
}

namespace {

int run_job_list(Context& ctx) {
  const auto page = page_args(ctx.args(), 50);
  auto jobs_list = ctx.registry().list_jobs(one_more(page));
  const auto next = cut_page(jobs_list, page, [](const auto& j) { return j.id; });
  if (ctx.json()) {
    Poco::JSON::Array arr;
    for (const auto& j : jobs_list) {
      arr.add(progress_json(jobs::job_progress(ctx.registry(), j.id, ctx.clock().now())));
    }
    Poco::JSON::Object o;
    o.set("jobs", arr);
    set_next(o, next);
    ctx.print_json(o);
    return 0;
  }
  Table t({"job", "kind", "state", "done", "total", "created"});
  for (const auto& j : jobs_list) {
    const auto p = jobs::job_progress(ctx.registry(), j.id, ctx.clock().now());
    t.add({j.id, j.kind, j.state, std::to_string(p.done), std::to_string(p.total),
           engine::iso8601(j.created_at)});
  }
  t.print();
  print_next_hint(next);
  return 0;
}

const std::string& job_arg(const Context& ctx) {
  static std::string id;
  id = ctx.args().positional_at(0, "JOB");
  return id;
}

// --watch: the progress bar on a terminal (a line per second when piped) until the job is
// settled or paused, then the report.
int run_job_show(Context& ctx) {
  const std::string id = job_arg(ctx);
  if (ctx.args().has("watch") && !ctx.json()) {
    const auto line = progress_line(ctx);
    const bool tty = static_cast<bool>(line);
    while (true) {
      const auto p = jobs::job_progress(ctx.registry(), id, ctx.clock().now());
      if (tty) {
        line(p);
      } else {
        std::printf("%lld/%lld done, %lld settled\n", static_cast<long long>(p.done),
                    static_cast<long long>(p.total), static_cast<long long>(p.settled));
        std::fflush(stdout);
      }
      if (p.job.state != "running") break;
      ::usleep(tty ? 500000 : 1000000);
    }
    if (tty) std::fprintf(stderr, "\n");
  }
  return report(ctx, id, ctx.args().has("all"));
}

int run_job_pause(Context& ctx) {
  const std::string id = job_arg(ctx);
  return print_state(ctx, id, jobs::pause_job(ctx.registry(), id));
}

int run_job_cancel(Context& ctx) {
  const std::string id = job_arg(ctx);
  const std::string state = jobs::cancel_job(ctx.registry(), id);
  // A breach roll canceled before its revocation revoked it just now: its CRL follows.
  if (const auto job = ctx.registry().find_job(id); job && job->kind == "breach-roll") {
    const std::string line = refresh_behind_crls(ctx);
    if (!ctx.json() && !line.empty()) std::fprintf(stderr, "%s\n", line.c_str());
  }
  return print_state(ctx, id, state);
}

int run_job_resume(Context& ctx) {
  const std::string id = job_arg(ctx);
  auto job = ctx.registry().find_job(id);
  if (!job) throw Error(ErrorCode::kNotFound, "no job '" + id + "'");
  // `serve` runs only running jobs, and stopped ones that did not end: a pause made after it
  // chose this one stands.
  if (ctx.args().has("if-running") && job->state != "running" && !jobs::job_is_stopping(*job))
    return print_state(ctx, id, job->state);
  if (job->state == "paused") jobs::reopen_job(ctx.registry(), id);
  if (ctx.args().has("no-run")) return print_state(ctx, id, ctx.registry().find_job(id)->state);
  return run_job_in_foreground(ctx, id);
}

int run_job_retry_failed(Context& ctx) {
  const std::string id = job_arg(ctx);
  std::int64_t deadline = 0;
  if (auto d = ctx.args().get("deadline")) {
    deadline = jobs::parse_deadline(*d, ctx.clock().now(), "--deadline");
  }
  const std::int64_t n = jobs::retry_failed(ctx.registry(), ctx.clock(), id, deadline);
  if (!ctx.json())
    std::fprintf(stderr, "job %s: %lld device(s) to try again\n", id.c_str(),
                 static_cast<long long>(n));
  if (ctx.args().has("no-run")) {
    if (!ctx.json()) return print_state(ctx, id, "running");
    Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("id", id);
    o.set("state", "running");
    o.set("retried", n);
    ctx.print_json(o);
    return 0;
  }
  return run_job_in_foreground(ctx, id);
}

}  // namespace

void add_job_commands(std::vector<Command>& commands) {
  commands.push_back(Command{{"job", "list"},
                             "[--limit N] [--after JOB] [--json]",
                             "the newest jobs",
                             [](Poco::Util::OptionSet& s) {
                               add_paging_options(s, "default 50", "JOB");
                               add_flag(s, "json", "print as JSON");
                             },
                             run_job_list});
  commands.push_back(Command{
      {"job", "show"},
      "JOB [--watch] [--all] [--json]",
      "counts per state, rate, ETA, and who is not back and why (exit 13 when a settled job left "
      "devices behind)",
      [](Poco::Util::OptionSet& s) {
        add_flag(s, "watch", "follow a running job with a progress bar until it stops");
        add_flag(s, "all", "--json: list the devices that are back too");
        add_flag(s, "json", "print as JSON");
      },
      run_job_show});
  commands.push_back(Command{{"job", "pause"},
                             "JOB [--json]",
                             "stop starting devices (those in progress finish)",
                             [](Poco::Util::OptionSet& s) { add_flag(s, "json", "print as JSON"); },
                             run_job_pause});
  commands.push_back(
      Command{{"job", "resume"},
              "JOB [--pin-file FILE] [--no-run] [--json]",
              "run a paused or interrupted job here, from where it stopped",
              [](Poco::Util::OptionSet& s) {
                add_option(s, "pin-file", "FILE", "user PIN file (else FLEETSIGN_PIN or a prompt)");
                add_flag(s, "no-run", "only reopen a paused job (`serve` runs it)");
                add_flag(s, "if-running",
                         "run it only if it is running or stopping (never reopen a pause)");
                add_flag(s, "json", "print as JSON");
              },
              run_job_resume});
  commands.push_back(Command{{"job", "cancel"},
                             "JOB [--json]",
                             "cancel devices not started; those switching finish",
                             [](Poco::Util::OptionSet& s) { add_flag(s, "json", "print as JSON"); },
                             run_job_cancel});
  commands.push_back(
      Command{{"job", "retry-failed"},
              "JOB [--deadline D] [--no-run] [--json]",
              "offline, refused, timed-out and aborted devices go again, and the job runs here",
              [](Poco::Util::OptionSet& s) {
                add_option(s, "deadline", "D",
                           "the job's new deadline: D from now (2h, 7d) or an RFC 3339 time "
                           "(default: 24h when it passed)");
                add_option(s, "pin-file", "FILE", "user PIN file (else FLEETSIGN_PIN or a prompt)");
                add_flag(s, "no-run", "only mark them (run with `job resume` or `serve`)");
                add_flag(s, "json", "print as JSON");
              },
              run_job_retry_failed});
}

}  // namespace fleetsign::cli
