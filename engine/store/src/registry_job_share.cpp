// Registry: the runners of a job and the tasks they claim (schema v15). See job_store.hpp
// (JobStore) for the contract.
//
// A job's lease (jobs.runner, jobs.heartbeat_at) names the runner that does the job-level steps;
// every runner, that one included, has a row in job_runners, and a task names the runner that
// claimed it (job_tasks.runner). A runner's writes are fenced by its row (check_lease_fence,
// registry_work.cpp), which on PostgreSQL it reads FOR SHARE: a claim that deletes a stale row
// waits for the transaction that checked it, so a task changes hands between two transactions,
// never inside one.
#include <string>
#include <vector>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

// A task not yet ended: pending, active, or offline with a retry to come.
constexpr const char* kOpenTask =
    "(state IN ('pending', 'active') OR (state = 'offline' AND next_at <> 0))";

std::string in_list(const std::vector<std::int64_t>& seqs) {
  std::string out;
  for (const auto seq : seqs) out += (out.empty() ? "" : ", ") + std::to_string(seq);
  return out;
}

void require_job(Registry::Impl& impl, const std::string& id, const std::string& what) {
  if (impl.count("SELECT COUNT(*) FROM jobs WHERE id = ?", id) == 0) {
    throw Error(ErrorCode::kNotFound, what + ": job not found");
  }
}

void add_member(Registry::Impl& impl, const std::string& id, const std::string& runner,
                std::int64_t now) {
  impl.change(
      "INSERT INTO job_runners (job_id, runner, heartbeat_at) VALUES (?, ?, ?) "
      "ON CONFLICT (job_id, runner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
      id, runner, now);
}

// The member leaves: its row goes, and its open tasks are free for the next claim.
void drop_member(Registry::Impl& impl, const std::string& id, const std::string& runner) {
  impl.change(std::string("UPDATE job_tasks SET runner = '' WHERE job_id = ? AND runner = ? AND ") +
                  kOpenTask,
              id, runner);
  impl.change("DELETE FROM job_runners WHERE job_id = ? AND runner = ?", id, runner);
}

}  // namespace

bool Registry::acquire_job(const std::string& id, const std::string& runner, std::int64_t now,
                           std::int64_t stale_before) {
  const std::string what = "taking the lease of job '" + id + "' for runner '" + runner + "'";
  if (runner.empty()) throw Error(ErrorCode::kInvalidArgument, what + ": no runner named");
  return m_impl->write(what, [&] {
    const auto before = m_impl->scalar<std::string>("SELECT runner FROM jobs WHERE id = ?", id);
    if (!before) throw Error(ErrorCode::kNotFound, what + ": job not found");
    // One conditional UPDATE: two runners racing for a free or stale lease cannot both win.
    if (m_impl->change("UPDATE jobs SET runner = ?, heartbeat_at = ? "
                       "WHERE id = ? AND (runner = '' OR runner = ? OR heartbeat_at < ?)",
                       runner, now, id, runner, stale_before) != 1) {
      return false;
    }
    // Taken over from a stale holder: it writes nothing more, and its tasks are free.
    if (!before->empty() && *before != runner) drop_member(*m_impl, id, *before);
    // A runner starts here: tasks an earlier run under its name held are free again.
    drop_member(*m_impl, id, runner);
    add_member(*m_impl, id, runner, now);
    return true;
  });
}

void Registry::join_job(const std::string& id, const std::string& runner, std::int64_t now) {
  const std::string what = "joining job '" + id + "' as runner '" + runner + "'";
  if (runner.empty()) throw Error(ErrorCode::kInvalidArgument, what + ": no runner named");
  m_impl->write(what, [&] {
    require_job(*m_impl, id, what);
    drop_member(*m_impl, id, runner);
    add_member(*m_impl, id, runner, now);
  });
}

void Registry::heartbeat_job(const std::string& id, const std::string& runner, std::int64_t now) {
  const std::string what = "heartbeat of job '" + id + "' by runner '" + runner + "'";
  m_impl->write(what, [&] {
    if (m_impl->change("UPDATE job_runners SET heartbeat_at = ? WHERE job_id = ? AND runner = ?",
                       now, id, runner) == 1) {
      m_impl->change("UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND runner = ?", now, id,
                     runner);
      return;
    }
    const auto holder = m_impl->scalar<std::string>("SELECT runner FROM jobs WHERE id = ?", id);
    if (!holder) throw Error(ErrorCode::kNotFound, what + ": job not found");
    throw Error(ErrorCode::kHomeBusy,
                what + ": runner '" + runner +
                    "' is no longer one of the job's runners (its heartbeat went stale, and "
                    "another process took its tasks over; the job's lease is held by " +
                    (holder->empty() ? std::string("no runner") : "'" + *holder + "'") + ")");
  });
}

void Registry::release_job(const std::string& id, const std::string& runner) {
  // Only the holder releases the lease: a runner that lost it leaves the new holder's alone.
  m_impl->write("releasing job '" + id + "' by runner '" + runner + "'", [&] {
    m_impl->change("UPDATE jobs SET runner = '' WHERE id = ? AND runner = ?", id, runner);
    drop_member(*m_impl, id, runner);
  });
}

std::vector<JobTask> Registry::claim_job_tasks(const std::string& id, const std::string& runner,
                                               std::int64_t stale_before, std::int64_t below_seq,
                                               std::int64_t limit) {
  const std::string what = "claiming tasks of job '" + id + "' for runner '" + runner + "'";
  return m_impl->write(what, [&] {
    if (m_impl->count("SELECT COUNT(*) FROM job_runners WHERE job_id = ? AND runner = ?", id,
                      runner) == 0) {
      throw Error(ErrorCode::kHomeBusy, what + ": '" + runner + "' is not one of its runners");
    }
    for (const auto& stale : m_impl->column<std::string>(
             "SELECT runner FROM job_runners WHERE job_id = ? AND heartbeat_at < ? AND runner <> ?",
             id, stale_before, runner)) {
      drop_member(*m_impl, id, stale);
    }
    std::string pick =
        std::string("SELECT seq FROM job_tasks WHERE job_id = ? AND runner = '' AND ") + kOpenTask +
        " AND seq < ? ORDER BY seq";
    if (limit > 0) pick += " LIMIT " + std::to_string(limit);
    if (m_impl->postgres()) pick += " FOR UPDATE SKIP LOCKED";
    const auto seqs = m_impl->column<std::int64_t>(pick, id, below_seq);
    if (seqs.empty()) return std::vector<JobTask>{};
    std::vector<JobTask> out;
    out.reserve(seqs.size());
    // Built SQL (integers only), in slices that keep each statement short.
    constexpr std::size_t kSlice = 500;
    for (std::size_t at = 0; at < seqs.size(); at += kSlice) {
      const std::vector<std::int64_t> slice(
          seqs.begin() + static_cast<std::ptrdiff_t>(at),
          seqs.begin() + static_cast<std::ptrdiff_t>(std::min(seqs.size(), at + kSlice)));
      const std::string in = in_list(slice);
      m_impl->change("UPDATE job_tasks SET runner = ? WHERE job_id = ? AND seq IN (" + in + ")",
                     runner, id);
      // Whoever held these tasks before signs nothing more for them.
      m_impl->change(
          "UPDATE certificates SET state = 'abandoned' WHERE batch_id = ? AND state = 'intent' "
          "AND seq IN (" +
              in + ")",
          id);
      auto st =
          m_impl->query(registry_detail::kSelectTasks + "AND seq IN (" + in + ") ORDER BY seq");
      st->bind(1, id);
      while (st->step()) out.push_back(registry_detail::read_task(*st));
    }
    return out;
  });
}

JobShare Registry::job_share(const std::string& id, std::int64_t stale_before) {
  return m_impl->guarded("reading how the tasks of job '" + id + "' are shared", [&] {
    JobShare share;
    auto st = m_impl->query(
        std::string("SELECT COALESCE(MIN(CASE WHEN state IN ('pending', 'active') THEN seq END), "
                    "-1), COUNT(*), COALESCE(SUM(CASE WHEN runner = '' THEN 1 ELSE 0 END), 0), "
                    "COALESCE(MIN(CASE WHEN runner = '' THEN seq END), -1) "
                    "FROM job_tasks WHERE job_id = ? AND ") +
        kOpenTask);
    st->bind(1, id);
    if (st->step()) {
      share.first_open_seq = st->int64(0);
      share.open = st->int64(1);
      share.unclaimed = st->int64(2);
      share.first_unclaimed_seq = st->int64(3);
    }
    // Tasks of runners whose heartbeat went stale (kill -9, a frozen machine) are free too.
    share.unclaimed += m_impl->count(
        std::string("SELECT COUNT(*) FROM job_tasks t JOIN job_runners r ON r.job_id = t.job_id "
                    "AND r.runner = t.runner WHERE t.job_id = ? AND r.heartbeat_at < ? AND ") +
            "(t.state IN ('pending', 'active') OR (t.state = 'offline' AND t.next_at <> 0))",
        id, stale_before);
    share.runners =
        m_impl->count("SELECT COUNT(*) FROM job_runners WHERE job_id = ? AND heartbeat_at >= ?", id,
                      stale_before);
    return share;
  });
}

}  // namespace fleetsign::engine
