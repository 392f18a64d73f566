// The dashboard (http_internal.hpp): the single page and its assets, compiled into the program
// from cli/dashboard (dashboard_assets.hpp, generated); Chart.js read from Debian's libjs-chart.js;
// and /api/v1/events, the jobs' progress pushed as Server-Sent Events.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <chrono>
#include <cmath>
#include <map>
#include <sstream>
#include <thread>

#include "dashboard_assets.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "http_internal.hpp"

namespace fleetsign::cli {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;
using Clock = std::chrono::steady_clock;

// Debian's libjs-chart.js (3.x, UMD: the global `Chart`).
constexpr const char* kChartJs = "/usr/share/javascript/chart.js/chart.min.js";
constexpr std::size_t kMaxChartJs = 4u << 20;
constexpr auto kStreamLife = std::chrono::minutes(10);  // then the browser reconnects
constexpr auto kKeepAlive = std::chrono::seconds(15);
constexpr std::int64_t kStreamJobs = 20;

// The page may load only its own scripts and styles, and talk only to this origin.
constexpr const char* kPagePolicy =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void send_asset(Poco::Net::HTTPServerResponse& resp, const std::string& type,
                const std::string& body) {
  resp.set("Content-Security-Policy", kPagePolicy);
  resp.set("Cache-Control", "no-cache");
  resp.set("Referrer-Policy", "no-referrer");
  send_bytes(resp, 200, type, body);
}

// The newest jobs with counts per task state, rate and ETA: the stream's one event. `settled`
// keeps the counts of jobs that ended (they change only when a job is reopened, which changes its
// state), so a poll counts the tasks of running and paused jobs only.
std::string jobs_event(
    engine::Stores& s, std::int64_t now,
    std::map<std::string, std::vector<std::pair<std::string, std::int64_t>>>& settled) {
  Array jobs;
  for (const auto& j : s.list_jobs({.limit = kStreamJobs})) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("id", j.id);
    o.set("kind", j.kind);
    o.set("state", j.state);
    o.set("created_at", engine::iso8601(j.created_at));
    o.set("finished_at", j.finished_at > 0 ? engine::iso8601(j.finished_at) : "");
    const bool ended = j.state != "running" && j.state != "paused";
    const std::string key = j.id + "\n" + j.state + "\n" + std::to_string(j.finished_at);
    auto cached = settled.find(key);
    if (!ended || cached == settled.end()) {
      auto counts = s.count_job_tasks(j.id);
      cached = ended ? settled.emplace(key, std::move(counts)).first
                     : settled.insert_or_assign("\n" + j.id, std::move(counts)).first;
    }
    Object counts(Poco::JSON_PRESERVE_KEY_ORDER);
    std::int64_t total = 0, open = 0;
    for (const auto& [state, n] : cached->second) {
      counts.set(state, n);
      total += n;
      if (state == "pending" || state == "active") open += n;
    }
    o.set("tasks", counts);
    o.set("total", total);
    o.set("settled", total - open);
    // Devices settled per minute since the job began (to its end once it ended), and the time
    // the rest would take at that rate while it runs.
    const std::int64_t end = j.finished_at > 0 ? j.finished_at : now;
    const double minutes =
        static_cast<double>(std::max<std::int64_t>(end - j.created_at, 1)) / 60.0;
    const double rate = static_cast<double>(total - open) / minutes;
    o.set("rate_per_min", std::round(rate * 10.0) / 10.0);
    if (j.state == "running" && rate > 0 && open > 0) {
      o.set("eta_s", static_cast<std::int64_t>(static_cast<double>(open) / rate * 60.0));
    } else {
      o.set("eta_s", Poco::Dynamic::Var());
    }
    jobs.add(o);
  }
  if (settled.size() > 4 * static_cast<std::size_t>(kStreamJobs)) settled.clear();
  Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("jobs", jobs);
  std::ostringstream out;
  o.stringify(out);
  return out.str();
}

// GET /api/v1/events: "jobs" events, each the whole state of the newest jobs, sent when it
// changes (checked every second), a comment every 15 s to keep proxies open, for at most 10
// minutes (EventSource reconnects by itself). Each stream holds one of the server's threads: at
// most a third of them stream at once, and with fewer than 3 threads none does (503).
void stream_events(HttpService::Impl& impl, Request& r) {
  const int limit = impl.opt.threads / 3;
  if (++impl.event_streams > limit) {
    --impl.event_streams;
    send_error(r.resp, 503, "service_unavailable",
               "event streams open: " + std::to_string(limit) +
                   " at most (a third of --http-threads); try again later");
    return;
  }
  struct Release {
    std::atomic<int>& n;
    ~Release() { --n; }
  } release{impl.event_streams};
  auto& resp = r.resp;
  resp.setChunkedTransferEncoding(true);
  resp.setContentType("text/event-stream");
  resp.set("Cache-Control", "no-store");
  resp.set("X-Accel-Buffering", "no");
  resp.setKeepAlive(false);
  std::ostream& out = resp.send();
  out << "retry: 2000\n\n";
  out.flush();
  const auto started = Clock::now();
  auto last_write = started;
  std::string last;
  while (!impl.stopping && out.good() && Clock::now() - started < kStreamLife) {
    std::string event = impl.jobs_snapshot();
    if (event != last) {
      out << "event: jobs\ndata: " << event << "\n\n";
      out.flush();
      last = std::move(event);
      last_write = Clock::now();
    } else if (Clock::now() - last_write > kKeepAlive) {
      out << ": keep-alive\n\n";
      out.flush();
      last_write = Clock::now();
    }
    for (int i = 0; i < 10 && !impl.stopping; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

}  // namespace

std::string HttpService::Impl::jobs_snapshot() {
  std::lock_guard lock(snapshot_mutex);
  const auto now = Clock::now();
  if (snapshot.empty() || now - snapshot_at >= std::chrono::seconds(1)) {
    snapshot =
        with_reports([&](engine::Stores& s) { return jobs_event(s, unix_now(), snapshot_counts); });
    snapshot_at = now;
  }
  return snapshot;
}

bool answer_dashboard(HttpService::Impl& impl, Request& r) {
  const std::string& path = r.route.path;
  auto& resp = r.resp;
  if (path == "/" || path == "/ui") {
    resp.setStatusAndReason(Poco::Net::HTTPResponse::HTTP_FOUND);
    resp.set("Location", "/ui/");
    resp.setContentLength(0);
    resp.send();
  } else if (path == "/ui/") {
    const DashboardAsset* page = dashboard_asset("index.html");
    send_asset(resp, std::string(page->type), std::string(page->text));
  } else if (path == "/ui/{file}") {
    const std::string& file = r.values[0];
    if (file == "chart.js") {
      std::string js;
      try {
        js = read_bounded(kChartJs, kMaxChartJs, "Chart.js");
      } catch (const Error& e) {
        send_error(resp, 404, "not_found",
                   std::string("Chart.js is not installed (Debian's libjs-chart.js): ") + e.what());
        return true;
      }
      send_asset(resp, "text/javascript; charset=utf-8", js);
    } else if (const DashboardAsset* a = dashboard_asset(file)) {
      send_asset(resp, std::string(a->type), std::string(a->text));
    } else {
      send_error(resp, 404, "not_found", "no dashboard file '" + engine::valid_utf8(file) + "'");
    }
  } else if (path == "/api/v1/events") {
    stream_events(impl, r);
  } else {
    return false;
  }
  return true;
}

}  // namespace fleetsign::cli
