// Registry: persisted jobs and their tasks (schema v6). See stores.hpp (JobStore) for the contract.
//
// The runner flushes task rows every ~100 ms (up to ~1,000 a flush), so the task statements are
// prepared once per connection (Impl's PreparedQuery members) and stepped per row inside one
// transaction; the job rows themselves (a handful of writes per job) go through Impl's cached
// queries. The SQL is valid on SQLite and PostgreSQL alike.
//
// No audit row is written for task rows or device slots: the broker plugin re-checks every live
// session on any audit row but a desired-property change, and neither changes admission (the
// decision reads individual enrollments and certificate states, not the devices table). An
// individual enrollment's slot does change admission, so that change is audited.
#include <algorithm>
#include <array>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

using registry_detail::audit_row;
using registry_detail::individual_detail;
using registry_detail::read_task;

namespace {

constexpr std::array<std::string_view, 5> kJobStates = {"running", "paused", "canceled", "aborted",
                                                        "finished"};
constexpr std::array<std::string_view, 9> kTaskStates = {"pending", "active",   "done",
                                                         "offline", "refused",  "timed-out",
                                                         "aborted", "canceled", "conflict"};
constexpr std::array<std::string_view, 7> kSteps = {
    "", "csr", "sign", "install", "reprovision", "confirm", "retire"};
constexpr std::array<std::string_view, 3> kTargetSlots = {"", "primary", "secondary"};

constexpr const char* kJobColumns =
    "id, kind, state, params_json, report_json, runner, heartbeat_at, created_at, updated_at, "
    "finished_at";

// The task's columns in the order bind_task binds them (?1…?14); read_task reads job_id, seq and
// device_id before them. The statements bind the keys after them, from kTaskKey on.
const std::string kTaskFields =
    "state, step, attempts, target_slot, old_serial, new_serial, new_sha256, next_at, last_status, "
    "last_error, started_at, updated_at, finished_at, error_code";
constexpr int kTaskKey = 15;
const std::string kInsertTask = "INSERT INTO job_tasks (" + kTaskFields +
                                ", job_id, device_id, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
                                "?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";
// seq stays as created: it is the task's position in the job (waves, certificate seq follow it).
const std::string kUpdateTask =
    "UPDATE job_tasks SET state = ?1, step = ?2, attempts = ?3, target_slot = ?4, "
    "old_serial = ?5, new_serial = ?6, new_sha256 = ?7, next_at = ?8, last_status = ?9, "
    "last_error = ?10, started_at = ?11, updated_at = ?12, finished_at = ?13, error_code = ?14, "
    "runner = CASE WHEN ?17 = 1 THEN runner ELSE '' END "
    "WHERE job_id = ?15 AND device_id = ?16";

template <std::size_t N>
std::string one_of(const std::array<std::string_view, N>& names) {
  std::string out;
  for (const auto name : names) {
    out += (out.empty() ? "'" : ", '") + std::string(name) + "'";
  }
  return out;
}

// kInvalidArgument naming the field and the values it may take (the CHECK constraints' sets).
template <std::size_t N>
void check_value(const std::array<std::string_view, N>& names, const std::string& value,
                 const std::string& field, const std::string& what) {
  if (std::find(names.begin(), names.end(), value) == names.end()) {
    throw Error(ErrorCode::kInvalidArgument,
                what + ": " + field + " '" + value + "' is not one of " + one_of(names));
  }
}

void check_task(const JobTask& t, const std::string& what) {
  if (t.device_id.empty()) {
    throw Error(ErrorCode::kInvalidArgument, what + ": a task has no device ID");
  }
  const std::string of = what + ": task of device '" + t.device_id + "'";
  check_value(kTaskStates, t.state, "state", of);
  check_value(kSteps, t.step, "step", of);
  check_value(kTargetSlots, t.target_slot, "target slot", of);
}

// Bound text is not copied: `t` must outlive the statement's execution (its reset).
void bind_task(sql::Stmt& st, const JobTask& t, std::int64_t now) {
  st.bind(1, t.state);
  st.bind(2, t.step);
  st.bind(3, t.attempts);
  st.bind(4, t.target_slot);
  st.bind(5, t.old_serial);
  st.bind(6, t.new_serial);
  st.bind(7, t.new_sha256);
  st.bind(8, t.next_at);
  st.bind(9, std::int64_t{t.last_status});
  st.bind(10, t.last_error);
  st.bind(11, t.started_at);
  st.bind(12, t.updated_at != 0 ? t.updated_at : now);
  st.bind(13, t.finished_at);
  st.bind(14, t.error_code);
}

// A NULL text reads "", a NULL number 0.
std::string str(sql::Stmt& st, int column) { return std::string(st.text(column)); }

}  // namespace

const std::string registry_detail::kSelectTasks =
    "SELECT job_id, seq, device_id, " + kTaskFields + ", runner FROM job_tasks WHERE job_id = ?1 ";

namespace {
// After kSelectTasks: a TU's globals are initialised in the order they are defined.
const std::string kSelectAllTasks = registry_detail::kSelectTasks + "ORDER BY seq";
const std::string kSelectTasksInState =
    registry_detail::kSelectTasks + "AND state = ?2 ORDER BY seq";
}  // namespace

JobTask registry_detail::read_task(sql::Stmt& st) {
  JobTask t;
  t.job_id = str(st, 0);
  t.seq = st.int64(1);
  t.device_id = str(st, 2);
  t.state = str(st, 3);
  t.step = str(st, 4);
  t.attempts = st.int64(5);
  t.target_slot = str(st, 6);
  t.old_serial = str(st, 7);
  t.new_serial = str(st, 8);
  t.new_sha256 = str(st, 9);
  t.next_at = st.int64(10);
  t.last_status = static_cast<int>(st.int64(11));
  t.last_error = str(st, 12);
  t.started_at = st.int64(13);
  t.updated_at = st.int64(14);
  t.finished_at = st.int64(15);
  t.error_code = str(st, 16);
  t.runner = str(st, 17);
  return t;
}

namespace {

// The statement of `query`, prepared from `text` on first use (no std::string built per call on
// the hot path).
sql::Stmt& prepared(PreparedQuery& query, sql::Db& db, const char* text) {
  if (sql::Stmt* ready = query.prepared()) return *ready;
  return query.get(db, text);
}

// Resets a prepared statement however its use ends (a thrown error included).
struct StmtReset {
  sql::Stmt& st;
  explicit StmtReset(sql::Stmt& statement) : st(statement) {}
  StmtReset(const StmtReset&) = delete;
  StmtReset& operator=(const StmtReset&) = delete;
  ~StmtReset() { st.reset(); }
};

// In kJobColumns' order.
struct JobRow {
  static JobRecord read(sql::Stmt& st) {
    JobRecord rec;
    rec.id = str(st, 0);
    rec.kind = str(st, 1);
    rec.state = str(st, 2);
    rec.params_json = str(st, 3);
    rec.report_json = str(st, 4);
    rec.runner = str(st, 5);
    rec.heartbeat_at = st.int64(6);
    rec.created_at = st.int64(7);
    rec.updated_at = st.int64(8);
    rec.finished_at = st.int64(9);
    return rec;
  }
};

// count_job_tasks: (state, COUNT(*)).
struct StateCountRow {
  static std::pair<std::string, std::int64_t> read(sql::Stmt& st) {
    return {str(st, 0), st.int64(1)};
  }
};

std::optional<JobRecord> select_job(Registry::Impl& impl, const std::string& id) {
  return impl.select_one<JobRow>(std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = ?",
                                 id);
}

std::string describe_tasks(std::string_view verb, std::span<const JobTask> tasks,
                           const std::string& job_id) {
  std::string out =
      std::string(verb) + " " + std::to_string(tasks.size()) + " tasks of job '" + job_id + "'";
  if (!tasks.empty()) out += " (first device '" + tasks.front().device_id + "')";
  return out;
}

// A device listed twice in one span of new tasks (the primary key would refuse it anyway; this
// names it).
void refuse_duplicates(std::span<const JobTask> tasks, const std::string& what) {
  std::unordered_set<std::string_view> devices;
  std::unordered_set<std::int64_t> seqs;
  for (const auto& t : tasks) {
    if (!devices.insert(t.device_id).second) {
      throw Error(ErrorCode::kAlreadyExists, what + ": device '" + t.device_id + "' appears twice");
    }
    if (!seqs.insert(t.seq).second) {
      throw Error(ErrorCode::kAlreadyExists,
                  what + ": seq " + std::to_string(t.seq) + " appears twice");
    }
  }
}

}  // namespace

int Registry::job_store_version() {
  return m_impl->guarded("reading the job store version",
                         [&] { return m_impl->stored_version() >= 6 ? 1 : 0; });
}

// Inserts task rows inside the caller's transaction, under `job_id`.
static void insert_tasks(Registry::Impl& impl, const std::string& job_id,
                         std::span<const JobTask> tasks, const std::string& what) {
  const std::int64_t now = impl.stamp(0);
  sql::Stmt& st = impl.m_insert_task.get(impl.db(), kInsertTask);
  for (const auto& t : tasks) {
    bind_task(st, t, now);
    st.bind(kTaskKey, job_id);
    st.bind(kTaskKey + 1, t.device_id);
    st.bind(kTaskKey + 2, t.seq);
    impl.step(st, what);
  }
}

namespace {

// A device that another job has not settled yet (a pending or active task, or one offline with a
// retry to come, in a job that has not ended) is that job's: a second job that would roll it too
// is refused. The planners leave such devices out as conflicts; this check, inside the write
// transaction that creates the job, closes the race of two plans made at the same time (two
// `rollover start` at once rotated every device twice).
void refuse_held_devices(Registry::Impl& impl, std::span<const JobTask> tasks,
                         const std::string& what) {
  std::unordered_set<std::string_view> rolled;
  for (const auto& t : tasks) {
    if (t.state == "pending" || t.state == "active") rolled.insert(t.device_id);
  }
  if (rolled.empty()) return;
  const auto held = impl.query(
      "SELECT t.device_id, t.job_id FROM job_tasks t JOIN jobs j ON j.id = t.job_id "
      "WHERE (j.state IN ('running', 'paused') OR "
      "(j.state IN ('aborted', 'canceled') AND j.finished_at = 0)) "
      "AND (t.state IN ('pending', 'active') OR (t.state = 'offline' AND t.next_at <> 0))");
  while (held->step()) {
    const std::string_view device = held->text(0);
    if (rolled.count(device) == 0) continue;
    throw Error(ErrorCode::kAlreadyExists,
                what + ": device '" + std::string(device) + "' is in job " +
                    std::string(held->text(1)) +
                    ", which has not settled it yet (another job was created meanwhile: plan "
                    "again)");
  }
}

}  // namespace

void Registry::create_job(const JobRecord& job, std::span<const JobTask> tasks) {
  const std::string what = describe_tasks("creating job '" + job.id + "' with", tasks, job.id);
  if (job.id.empty() || job.kind.empty()) {
    throw Error(ErrorCode::kInvalidArgument, what + ": a job needs an id and a kind");
  }
  const std::string state = job.state.empty() ? "running" : job.state;
  check_value(kJobStates, state, "state", what);
  for (const auto& t : tasks) {
    check_task(t, what);
    if (!t.job_id.empty() && t.job_id != job.id) {
      throw Error(ErrorCode::kInvalidArgument,
                  what + ": the task of device '" + t.device_id + "' names job '" + t.job_id + "'");
    }
  }
  refuse_duplicates(tasks, what);
  m_impl->write(what, [&] {
    if (select_job(*m_impl, job.id)) {
      throw Error(ErrorCode::kAlreadyExists, what + ": job '" + job.id + "' already exists");
    }
    refuse_held_devices(*m_impl, tasks, what);
    const std::int64_t created = m_impl->stamp(job.created_at);
    const std::int64_t updated = job.updated_at != 0 ? job.updated_at : created;
    const std::string report = job.report_json.empty() ? "{}" : job.report_json;
    m_impl->change(
        std::string("INSERT INTO jobs (") + kJobColumns + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        job.id, job.kind, state, job.params_json, report, job.runner, job.heartbeat_at, created,
        updated, job.finished_at);
    insert_tasks(*m_impl, job.id, tasks, what);
    audit_row(
        *m_impl, "job.create", job.id,
        json_object({{"kind", job.kind}, {"tasks", static_cast<std::int64_t>(tasks.size())}}));
  });
}

std::optional<JobRecord> Registry::find_job(const std::string& id) {
  return m_impl->guarded("reading job '" + id + "'", [&] { return select_job(*m_impl, id); });
}

std::vector<JobRecord> Registry::list_jobs(const ListPage& page) {
  return m_impl->guarded("listing jobs", [&] {
    std::string sql = std::string("SELECT ") + kJobColumns + " FROM jobs";
    if (!page.after.empty()) {
      if (!select_job(*m_impl, page.after)) {
        throw Error(ErrorCode::kNotFound, "no job '" + page.after + "' to list the jobs after");
      }
      sql += " WHERE (created_at, id) < (SELECT created_at, id FROM jobs WHERE id = ?)";
    }
    sql += " ORDER BY created_at DESC, id DESC";
    if (page.limit > 0) sql += " LIMIT " + std::to_string(page.limit);
    return page.after.empty() ? m_impl->select<JobRow>(sql)
                              : m_impl->select<JobRow>(sql, page.after);
  });
}

void Registry::set_job_state(const std::string& id, const std::string& state,
                             std::int64_t finished_at) {
  const std::string what = "setting job '" + id + "' " + state;
  check_value(kJobStates, state, "state", what);
  m_impl->write(what, [&] {
    const auto job = select_job(*m_impl, id);
    if (!job) throw Error(ErrorCode::kNotFound, what + ": job not found");
    const std::int64_t now = m_impl->stamp(0);
    // A job running again (resumed, retry-failed) has not ended: its earlier end is cleared.
    const std::int64_t finished = state == "running" || state == "paused" ? 0
                                  : finished_at != 0                      ? finished_at
                                                                          : job->finished_at;
    m_impl->change("UPDATE jobs SET state = ?, updated_at = ?, finished_at = ? WHERE id = ?", state,
                   now, finished, id);
    audit_row(*m_impl, "job." + state, id,
              json_object({{"kind", job->kind}, {"from", job->state}, {"finished_at", finished}}));
  });
}

void Registry::set_job_report(const std::string& id, const std::string& report_json) {
  const std::string what = "recording the report of job '" + id + "'";
  m_impl->write(what, [&] {
    const std::int64_t now = m_impl->stamp(0);
    Impl::expect_row(m_impl->change("UPDATE jobs SET report_json = ?, updated_at = ? WHERE id = ?",
                                    report_json, now, id),
                     what + ": job '" + id + "'");
  });
}

void Registry::set_job_params(const std::string& id, const std::string& params_json) {
  const std::string what = "recording the parameters of job '" + id + "'";
  m_impl->write(what, [&] {
    const std::int64_t now = m_impl->stamp(0);
    Impl::expect_row(m_impl->change("UPDATE jobs SET params_json = ?, updated_at = ? WHERE id = ?",
                                    params_json, now, id),
                     what + ": job '" + id + "'");
    audit_row(*m_impl, "job.params", id, params_json);
  });
}

std::vector<JobTask> Registry::job_tasks(const std::string& id, const std::string& state) {
  const std::string what =
      "reading the " + (state.empty() ? std::string() : state + " ") + "tasks of job '" + id + "'";
  return m_impl->guarded(what, [&] {
    sql::Db& db = m_impl->db();
    sql::Stmt& st = state.empty() ? m_impl->m_tasks_all.get(db, kSelectAllTasks)
                                  : m_impl->m_tasks_in_state.get(db, kSelectTasksInState);
    StmtReset reset{st};
    st.bind(1, id);
    if (!state.empty()) st.bind(2, state);
    std::vector<JobTask> out;
    while (st.step()) out.push_back(read_task(st));
    return out;
  });
}

std::vector<std::pair<std::string, std::int64_t>> Registry::count_job_tasks(const std::string& id) {
  return m_impl->guarded("counting the tasks of job '" + id + "'", [&] {
    // job_tasks_state (job_id, state, seq) answers this from the index alone.
    return m_impl->select<StateCountRow>(
        "SELECT state, COUNT(*) FROM job_tasks WHERE job_id = ? GROUP BY state ORDER BY state", id);
  });
}

// kRetireDevice: the device's slot that does not hold `serial` becomes free. No audit row: device
// slots are bookkeeping (expiry, the next issuance's slot), not admission.
static void retire_other_slot(Registry::Impl& impl, const SlotChange& c, std::int64_t now,
                              const std::string& what) {
  sql::Db& db = impl.db();
  sql::Stmt& q =
      prepared(impl.m_device_serials, db,
               "SELECT primary_serial, secondary_serial FROM devices WHERE registration_id = ?1");
  std::string primary, secondary;
  {
    StmtReset reset{q};
    q.bind(1, c.device_id);
    // A database error propagates as sql::DbError; the caller's write() names `what`.
    if (!q.step()) {
      throw Error(ErrorCode::kNotFound, what + ": device '" + c.device_id + "' is not registered");
    }
    primary = str(q, 0);
    secondary = str(q, 1);
  }
  if (c.kind == SlotChange::Kind::kReleaseDevice) {
    // A certificate signed for a job but never switched to: revoked, so a copy the device may
    // have stored (an install whose answer was lost) can never log in.
    sql::Stmt& revoke = prepared(
        impl.m_revoke_released, db,
        "UPDATE certificates SET state = 'revoked', revoked_at = ?1, "
        "revocation_reason = 'cessationOfOperation' WHERE serial = ?2 AND state = 'issued'");
    revoke.bind(1, now);
    revoke.bind(2, c.serial);
    if (impl.step(revoke, what) > 0) {
      // In the audit log like any revocation; and the broker re-checks its sessions at once.
      audit_row(impl, "cert.revoke", c.serial,
                json_object({{"count", std::int64_t{1}},
                             {"reason", "cessationOfOperation"},
                             {"first", c.serial},
                             {"device", c.device_id}}));
    }
    if (primary != c.serial && secondary != c.serial) return;  // not (or no longer) in a slot
  } else if (primary != c.serial && secondary != c.serial) {
    throw Error(ErrorCode::kRegistryError,
                what + ": device '" + c.device_id + "' holds certificate 0x" + c.serial +
                    " in neither slot (primary '" + primary + "', secondary '" + secondary + "')");
  }
  // kReleaseDevice frees the slot holding the serial: it "keeps" the other one.
  const bool keep_primary = (primary == c.serial) != (c.kind == SlotChange::Kind::kReleaseDevice);
  if ((keep_primary ? secondary : primary).empty()) return;  // the other slot is free already
  sql::Stmt& clear = keep_primary ? prepared(impl.m_clear_secondary, db,
                                             "UPDATE devices SET secondary_serial = '', "
                                             "secondary_not_after = 0, updated_at = ?1 "
                                             "WHERE registration_id = ?2")
                                  : prepared(impl.m_clear_primary, db,
                                             "UPDATE devices SET primary_serial = '', "
                                             "primary_not_after = 0, updated_at = ?1 "
                                             "WHERE registration_id = ?2");
  clear.bind(1, now);
  clear.bind(2, c.device_id);
  impl.step(clear, what);
  if (c.kind == SlotChange::Kind::kRetireDevice) {
    // The retired certificate is superseded: revoked, so it cannot log in again. No audit row:
    // no live session uses it (the device was confirmed on its successor), and a new
    // connection with it is refused at its admission check.
    sql::Stmt& revoke =
        prepared(impl.m_revoke_superseded, db,
                 "UPDATE certificates SET state = 'revoked', revoked_at = ?1, "
                 "revocation_reason = 'superseded' WHERE serial = ?2 AND state = 'issued'");
    revoke.bind(1, now);
    revoke.bind(2, keep_primary ? secondary : primary);
    impl.step(revoke, what);
  }
}

void Registry::save_job_tasks(std::span<const JobTask> tasks, std::span<const SlotChange> changes) {
  if (tasks.empty() && changes.empty()) return;
  const std::string what =
      describe_tasks("saving", tasks, tasks.empty() ? std::string() : tasks.front().job_id) +
      " and " + std::to_string(changes.size()) + " slot changes";
  for (const auto& t : tasks) check_task(t, what);
  for (const auto& c : changes) {
    if (c.device_id.empty()) {
      throw Error(ErrorCode::kInvalidArgument, what + ": a slot change names no device");
    }
    if (c.kind != SlotChange::Kind::kIndividualSlot && c.serial.empty()) {
      throw Error(ErrorCode::kInvalidArgument, what + ": retiring a slot of device '" +
                                                   c.device_id + "' names no serial to keep");
    }
  }
  m_impl->write(what, [&] {
    const std::int64_t now = m_impl->stamp(0);
    sql::Stmt& update = m_impl->m_update_task.get(m_impl->db(), kUpdateTask);
    // A job's runner keeps its claim; anyone else (retry-failed, cancel) frees the task.
    const bool runner_writes = m_impl->m_lease_fence && m_impl->m_lease_fence->job;
    for (const auto& t : tasks) {
      bind_task(update, t, now);
      update.bind(kTaskKey, t.job_id);
      update.bind(kTaskKey + 1, t.device_id);
      update.bind(kTaskKey + 2, std::int64_t{runner_writes});
      if (m_impl->step(update, what) == 0) {
        throw Error(ErrorCode::kNotFound,
                    what + ": job '" + t.job_id + "' has no task for device '" + t.device_id + "'");
      }
    }
    for (const auto& c : changes) {
      if (c.kind == SlotChange::Kind::kRetireDevice || c.kind == SlotChange::Kind::kReleaseDevice) {
        retire_other_slot(*m_impl, c, now, what);
        continue;
      }
      auto ie = find_individual_slots(c.device_id);
      if (!ie) {
        throw Error(ErrorCode::kNotFound,
                    what + ": individual enrollment '" + c.device_id + "' not found");
      }
      const std::string sha256 = c.cert_der.empty() ? std::string() : thumbprint_sha256(c.cert_der);
      const bool primary = c.slot == Slot::kPrimary;
      (primary ? ie->primary_sha256 : ie->secondary_sha256) = sha256;
      sql::Stmt& set =
          primary ? prepared(
                        m_impl->m_set_ie_primary, m_impl->db(),
                        "UPDATE individual_enrollments SET primary_cert = ?1, primary_sha256 = ?2, "
                        "updated_at = ?3 WHERE registration_id = ?4")
                  : prepared(m_impl->m_set_ie_secondary, m_impl->db(),
                             "UPDATE individual_enrollments SET secondary_cert = ?1, "
                             "secondary_sha256 = ?2, updated_at = ?3 WHERE registration_id = ?4");
      // An empty BLOB, not NULL, for a free slot: what save_individual stores (bind_blob binds an
      // empty span as a zero-length BLOB / bytea).
      set.bind_blob(1, c.cert_der);
      set.bind(2, sha256);
      set.bind(3, now);
      set.bind(4, c.device_id);
      m_impl->step(set, what);
      audit_row(*m_impl, "enrollment.individual.set-slot", c.device_id, individual_detail(*ie));
    }
  });
}

void Registry::add_job_tasks(std::span<const JobTask> tasks) {
  if (tasks.empty()) return;
  const std::string& job_id = tasks.front().job_id;
  const std::string what = describe_tasks("adding", tasks, job_id);
  for (const auto& t : tasks) {
    check_task(t, what);
    if (t.job_id != job_id) {
      throw Error(ErrorCode::kInvalidArgument,
                  what + ": the task of device '" + t.device_id + "' names job '" + t.job_id + "'");
    }
  }
  refuse_duplicates(tasks, what);
  try {
    m_impl->write(what, [&] {
      if (!select_job(*m_impl, job_id)) {
        throw Error(ErrorCode::kNotFound, what + ": job '" + job_id + "' not found");
      }
      insert_tasks(*m_impl, job_id, tasks, what);
    });
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kAlreadyExists) throw;
    // Rolled back by now: name the device (or seq) the job already has.
    std::unordered_map<std::string, std::int64_t> seq_of;
    std::unordered_map<std::int64_t, std::string> device_at;
    for (auto& have : job_tasks(job_id, "")) {
      seq_of.emplace(have.device_id, have.seq);
      device_at.emplace(have.seq, std::move(have.device_id));
    }
    for (const auto& t : tasks) {
      if (seq_of.count(t.device_id) != 0) {
        throw Error(ErrorCode::kAlreadyExists,
                    what + ": device '" + t.device_id + "' is already in the job");
      }
      if (const auto it = device_at.find(t.seq); it != device_at.end()) {
        throw Error(ErrorCode::kAlreadyExists, what + ": seq " + std::to_string(t.seq) +
                                                   " is taken by device '" + it->second + "'");
      }
    }
    throw;
  }
}

}  // namespace fleetsign::engine
