// WorkStore (stores.hpp): shares of a batch claimed by workers with leases, and named leases.
#include <cstdint>
#include <string>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

std::string str(sql::Stmt& st, int column) { return std::string(st.text(column)); }

constexpr const char* kShareColumns =
    "batch_id, share, first_seq, count, state, holder, lease_until, attempts, done_at, issued, "
    "rejected";

struct ShareRow {
  static BatchShare read(sql::Stmt& st) {
    BatchShare s;
    s.batch_id = str(st, 0);
    s.share = st.int64(1);
    s.first = st.int64(2);
    s.count = st.int64(3);
    s.state = str(st, 4);
    s.holder = str(st, 5);
    s.lease_until = st.int64(6);
    s.attempts = st.int64(7);
    s.done_at = st.int64(8);
    s.issued = st.int64(9);
    s.rejected = st.int64(10);
    return s;
  }
};

std::string share_name(const std::string& batch_id, std::int64_t share) {
  return "share " + std::to_string(share) + " of batch '" + batch_id + "'";
}

// The PostgreSQL advisory lock behind lease `name`: two int4 keys, 'fsl' and the name's FNV-1a
// hash (31 bits), which pg_locks shows as classid, objid and objsubid 2.
struct LeaseLock {
  std::string keys;  // "K1, K2", for pg_try_advisory_lock and pg_advisory_unlock
  std::string mine;  // SQL: whether this connection holds it
};

LeaseLock lease_lock(const std::string& name) {
  constexpr std::uint32_t kPrefix = 0x66736c;  // 'fsl'
  std::uint32_t hash = 2166136261u;
  for (const unsigned char c : name) hash = (hash ^ c) * 16777619u;
  const std::string k1 = std::to_string(kPrefix), k2 = std::to_string(hash & 0x7fffffffu);
  return {k1 + ", " + k2,
          "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = "
          "pg_backend_pid() AND classid = " +
              k1 + " AND objid = " + k2 + " AND objsubid = 2 AND granted)"};
}

// The session's settings while it holds a lease's lock: the server ends it when idle past
// kLeaseIdleLimit (PostgreSQL 14 and later; older servers lack the setting and skip it), and
// probes its TCP peer every 5 s (a machine that stopped answering is gone in about 20 s).
std::string lease_session_settings(bool holding) {
  const std::string idle = holding ? std::to_string(kLeaseIdleLimit) + "s" : "0";
  return "SELECT set_config(name, CASE name WHEN 'idle_session_timeout' THEN '" + idle +
         "' WHEN 'tcp_keepalives_count' THEN '3' ELSE '5' END, false) FROM pg_settings WHERE "
         "name IN ('idle_session_timeout', 'tcp_keepalives_idle', 'tcp_keepalives_interval', "
         "'tcp_keepalives_count')";
}

}  // namespace

void Registry::create_shared_batch(const BatchRecord& parent, std::span<const BatchShare> shares) {
  const std::string what = "creating shared batch '" + parent.id + "'";
  if (shares.empty()) throw Error(ErrorCode::kInvalidArgument, what + ": no share");
  m_impl->write(what, [&] {
    if (m_impl->count("SELECT COUNT(*) FROM batches WHERE id = ?", parent.id) != 0) {
      throw Error(ErrorCode::kAlreadyExists, what + ": the batch id is taken");
    }
    m_impl->change(
        "INSERT INTO batches (id, ca_name, params_json, state, created_at, finished_at, issued, "
        "rejected, watermark, offsets_json) VALUES (?, ?, ?, 'running', ?, 0, 0, 0, -1, '')",
        parent.id, parent.ca_name, parent.params_json, m_impl->stamp(parent.created_at));
    std::int64_t devices = 0;
    for (const auto& s : shares) {
      m_impl->change(
          "INSERT INTO batch_shares (batch_id, share, first_seq, count) VALUES (?, ?, ?, ?)",
          parent.id, s.share, s.first, s.count);
      devices += s.count;
    }
    registry_detail::audit_row(
        *m_impl, "batch.share", parent.id,
        json_object({{"shares", static_cast<std::int64_t>(shares.size())}, {"devices", devices}}));
  });
}

std::optional<BatchShare> Registry::claim_batch_share(const std::string& holder, std::int64_t now,
                                                      std::int64_t lease_s) {
  const std::string what = "claiming a batch share for '" + holder + "'";
  if (holder.empty() || lease_s <= 0) {
    throw Error(ErrorCode::kInvalidArgument, what + ": a holder and a positive lease are needed");
  }
  return m_impl->write(what, [&] {
    // The claim is one UPDATE of the row a sub-select picked: on PostgreSQL the sub-select skips
    // rows another transaction holds, so concurrent claimants never wait on, or win, one share.
    const std::string pick =
        std::string(
            "SELECT batch_id, share FROM batch_shares WHERE state = 'pending' AND "
            "(holder = '' OR lease_until < ?) ORDER BY batch_id, share LIMIT 1") +
        (m_impl->postgres() ? " FOR UPDATE SKIP LOCKED" : "");
    return m_impl->select_one<ShareRow>(
        "UPDATE batch_shares SET holder = ?, lease_until = ?, attempts = attempts + 1 "
        "WHERE (batch_id, share) IN (" +
            pick + ") RETURNING " + kShareColumns,
        holder, now + lease_s, now);
  });
}

void Registry::fence_writes(std::optional<ShareFence> fence) { m_impl->m_fence = std::move(fence); }

void Registry::Impl::check_fence() {
  const ShareFence& f = *m_fence;
  const auto holder = scalar<std::string>(
      "SELECT holder FROM batch_shares WHERE batch_id = ? AND share = ?", f.batch_id, f.share);
  if (!holder || *holder != f.holder) {
    throw Error(ErrorCode::kHomeBusy,
                share_name(f.batch_id, f.share) + " is held by '" + holder.value_or("nobody") +
                    "' now, not by this worker ('" + f.holder +
                    "'): its lease ended and another worker took it over, so this worker "
                    "writes nothing more for it");
  }
}

bool Registry::renew_batch_share(const std::string& batch_id, std::int64_t share,
                                 const std::string& holder, std::int64_t until) {
  return m_impl->write("renewing the lease of " + share_name(batch_id, share), [&] {
    return m_impl->change(
               "UPDATE batch_shares SET lease_until = ? WHERE batch_id = ? AND share = ? AND "
               "holder = ? AND state = 'pending'",
               until, batch_id, share, holder) == 1;
  });
}

bool Registry::finish_batch_share(const BatchShare& s, const std::string& holder,
                                  std::int64_t now) {
  const std::string what = "finishing " + share_name(s.batch_id, s.share);
  return m_impl->write(what, [&] {
    if (m_impl->change("UPDATE batch_shares SET state = 'done', done_at = ?, issued = ?, "
                       "rejected = ? WHERE batch_id = ? AND share = ? AND holder = ? AND "
                       "state = 'pending'",
                       now, s.issued, s.rejected, s.batch_id, s.share, holder) != 1) {
      throw Error(ErrorCode::kHomeBusy, what + ": '" + holder +
                                            "' no longer holds it (its lease ended and another "
                                            "worker took it over, or it is done)");
    }
    if (m_impl->count("SELECT COUNT(*) FROM batch_shares WHERE batch_id = ? AND state = "
                      "'pending'",
                      s.batch_id) != 0) {
      return false;
    }
    const std::int64_t issued =
        m_impl->count("SELECT SUM(issued) FROM batch_shares WHERE batch_id = ?", s.batch_id);
    const std::int64_t rejected =
        m_impl->count("SELECT SUM(rejected) FROM batch_shares WHERE batch_id = ?", s.batch_id);
    m_impl->change(
        "UPDATE batches SET state = 'finished', finished_at = ?, issued = ?, rejected = ? "
        "WHERE id = ?",
        now, issued, rejected, s.batch_id);
    return true;
  });
}

std::vector<BatchShare> Registry::batch_shares(const std::string& batch_id) {
  return m_impl->guarded("reading the shares of batch '" + batch_id + "'", [&] {
    return m_impl->select<ShareRow>(std::string("SELECT ") + kShareColumns +
                                        " FROM batch_shares WHERE batch_id = ? ORDER BY share",
                                    batch_id);
  });
}

std::int64_t Registry::claimable_batch_shares(std::int64_t now) {
  return m_impl->guarded("counting claimable batch shares", [&] {
    return m_impl->count(
        "SELECT COUNT(*) FROM batch_shares WHERE state = 'pending' AND (holder = '' OR "
        "lease_until < ?)",
        now);
  });
}

bool Registry::take_lease(const std::string& name, const std::string& holder, std::int64_t now,
                          std::int64_t lease_s, const std::string& stale_holder,
                          std::string* current) {
  const std::string what = "taking lease '" + name + "' for '" + holder + "'";
  if (holder.empty() || lease_s <= 0) {
    throw Error(ErrorCode::kInvalidArgument, what + ": a holder and a positive lease are needed");
  }
  bool taken_now = false;  // PostgreSQL: this connection took the lock just now
  if (m_impl->postgres()) {
    const LeaseLock lock = lease_lock(name);
    const std::int64_t state = m_impl->guarded(what, [&] {
      return m_impl->count("SELECT CASE WHEN " + lock.mine + " THEN 1 WHEN pg_try_advisory_lock(" +
                           lock.keys + ") THEN 2 ELSE 0 END");
    });
    if (state == 0) {  // another connection holds it: its row names the holder
      if (current != nullptr) {
        *current = m_impl->guarded(what, [&] {
          return m_impl->scalar<std::string>("SELECT holder FROM leases WHERE name = ?", name)
              .value_or("");
        });
      }
      return false;
    }
    taken_now = state == 2;
  }
  const auto write_row = [&] {
    return m_impl->write(what, [&] {
      if (taken_now) {
        // The lock was free: whoever the row names has lost its connection, so its lease.
        m_impl->change(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO "
            "UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
            name, holder, now + lease_s);
      } else {
        m_impl->change(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO "
            "UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at WHERE "
            "leases.holder = excluded.holder OR leases.expires_at < ? OR leases.holder = ?",
            name, holder, now + lease_s, now, stale_holder.empty() ? holder : stale_holder);
      }
      const std::string held =
          m_impl->scalar<std::string>("SELECT holder FROM leases WHERE name = ?", name)
              .value_or("");
      if (current != nullptr) *current = held;
      return held == holder;
    });
  };
  if (!taken_now) return write_row();
  try {
    m_impl->guarded(what, [&] { m_impl->exec(lease_session_settings(true)); });
    return write_row();
  } catch (const Error&) {
    // Not recorded: the lock goes back too, or no connection would ever take the lease again.
    try {
      m_impl->exec("SELECT pg_advisory_unlock(" + lease_lock(name).keys + ")");
    } catch (const sql::DbError&) {
      // The connection is gone, and the lock with it.
    }
    throw;
  }
}

void Registry::release_lease(const std::string& name, const std::string& holder) {
  const std::string what = "releasing lease '" + name + "' by '" + holder + "'";
  const bool released = m_impl->write(what, [&] {
    return m_impl->change("DELETE FROM leases WHERE name = ? AND holder = ?", name, holder) == 1;
  });
  if (!released || !m_impl->postgres()) return;
  const LeaseLock lock = lease_lock(name);
  m_impl->guarded(what, [&] {
    m_impl->count("SELECT CASE WHEN " + lock.mine + " THEN CAST(pg_advisory_unlock(" + lock.keys +
                  ") AS INTEGER) ELSE 0 END");
    m_impl->exec(lease_session_settings(false));
  });
}

void Registry::fence_lease_writes(std::optional<LeaseFence> fence) {
  m_impl->m_lease_fence = std::move(fence);
}

void Registry::Impl::check_lease_fence() {
  const LeaseFence& f = *m_lease_fence;
  if (f.job) {
    // The runner's membership row (registry_job_share.cpp), locked until this transaction ends
    // on PostgreSQL: a claim that takes this runner's tasks over waits for it.
    if (count(postgres() ? "SELECT COUNT(*) FROM (SELECT 1 FROM job_runners WHERE job_id = ? "
                           "AND runner = ? FOR SHARE) AS m"
                         : "SELECT COUNT(*) FROM job_runners WHERE job_id = ? AND runner = ?",
              f.name, f.holder) == 0) {
      const auto runner = scalar<std::string>("SELECT runner FROM jobs WHERE id = ?", f.name);
      throw Error(ErrorCode::kHomeBusy,
                  "runner '" + f.holder + "' is no longer one of the runners of job '" + f.name +
                      "' (its lease is held by '" + runner.value_or("nobody") +
                      "'): its heartbeat went stale and another runner took its tasks over, so "
                      "it records nothing more for the job");
    }
    return;
  }
  const auto holder = scalar<std::string>("SELECT holder FROM leases WHERE name = ?", f.name);
  const bool locked = !postgres() || count("SELECT CASE WHEN " + lease_lock(f.name).mine +
                                           " THEN 1 ELSE 0 END") == 1;
  if (!holder || *holder != f.holder || !locked) {
    throw Error(ErrorCode::kHomeBusy,
                "lease '" + f.name + "' no longer belongs to '" + f.holder + "' (" +
                    (locked ? "it is held by '" + holder.value_or("nobody") + "' now"
                            : "its connection ended, and the lease's lock with it") +
                    "): another process may hold it, so '" + f.holder +
                    "' writes nothing more under it");
  }
}

std::int64_t Registry::registry_time() {
  const char* const sql =
      m_impl->postgres() ? "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp())) AS BIGINT)"
                         : "SELECT CAST(strftime('%s', 'now') AS INTEGER)";
  // Guarded: a lost connection is an Error like any other read's (the lease loops log it and
  // go on; the next call reconnects), never a DbError that escapes them.
  return m_impl->guarded("reading the registry's clock", [&] { return m_impl->count(sql); });
}

}  // namespace fleetsign::engine
