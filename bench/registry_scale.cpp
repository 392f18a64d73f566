// Registry scale (issue 4): 10^6 devices loaded as generated rows, then the whole expiry report
// and authentication decisions per second against that registry.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <stdexcept>
#include <thread>

#include "bench.hpp"
#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"

namespace fleetsign::bench {

namespace {

void exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    const std::string msg = err != nullptr ? err : "?";
    sqlite3_free(err);
    throw std::runtime_error(std::string(sql) + ": " + msg);
  }
}

sqlite3_stmt* prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) != SQLITE_OK) {
    throw std::runtime_error(std::string(sql) + ": " + sqlite3_errmsg(db));
  }
  return st;
}

}  // namespace

void load_synthetic_devices(const std::filesystem::path& db_file, const std::string& ca_name,
                            std::size_t count, std::int64_t now) {
  sqlite3* db = nullptr;
  if (sqlite3_open(db_file.c_str(), &db) != SQLITE_OK) {
    throw std::runtime_error(db_file.string() + ": cannot open");
  }
  exec(db, "PRAGMA journal_mode = WAL");
  exec(db, "BEGIN IMMEDIATE");
  sqlite3_stmt* cert = prepare(
      db,
      "INSERT INTO certificates (serial, device_id, ca_name, batch_id, seq, state, subject, "
      "not_before, "
      "not_after, lot, created_at) VALUES (?, ?, ?, 'synthetic', ?, 'issued', ?, ?, ?, ?, ?)");
  sqlite3_stmt* dev = prepare(db,
                              "INSERT INTO devices (registration_id, primary_serial, "
                              "primary_not_after, ca_name, lot, status, "
                              "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'enabled', ?, ?)");
  std::mt19937_64 rng(42);
  char id[32], serial[48], lot[32], subject[48];
  for (std::size_t i = 0; i < count; ++i) {
    std::snprintf(id, sizeof id, "syn-%07zu", i);
    std::snprintf(serial, sizeof serial, "7F%016llX%016llX", static_cast<unsigned long long>(rng()),
                  static_cast<unsigned long long>(rng()));
    std::snprintf(lot, sizeof lot, "SYN-%03zu", i / 10000);
    std::snprintf(subject, sizeof subject, "/CN=%s", id);
    // Expiries spread over the next 400 days: every alert bucket is populated.
    const std::int64_t not_after = now + static_cast<std::int64_t>(i % 400) * 86400 + 3600;
    const std::int64_t not_before = not_after - 365 * 86400;
    sqlite3_bind_text(cert, 1, serial, -1, SQLITE_STATIC);
    sqlite3_bind_text(cert, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(cert, 3, ca_name.c_str(), -1, SQLITE_STATIC);
    sqlite3_bind_int64(cert, 4, static_cast<sqlite3_int64>(i));
    sqlite3_bind_text(cert, 5, subject, -1, SQLITE_STATIC);
    sqlite3_bind_int64(cert, 6, not_before);
    sqlite3_bind_int64(cert, 7, not_after);
    sqlite3_bind_text(cert, 8, lot, -1, SQLITE_STATIC);
    sqlite3_bind_int64(cert, 9, now);
    sqlite3_bind_text(dev, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(dev, 2, serial, -1, SQLITE_STATIC);
    sqlite3_bind_int64(dev, 3, not_after);
    sqlite3_bind_text(dev, 4, ca_name.c_str(), -1, SQLITE_STATIC);
    sqlite3_bind_text(dev, 5, lot, -1, SQLITE_STATIC);
    sqlite3_bind_int64(dev, 6, now);
    sqlite3_bind_int64(dev, 7, now);
    if (sqlite3_step(cert) != SQLITE_DONE || sqlite3_step(dev) != SQLITE_DONE) {
      throw std::runtime_error(std::string("loading synthetic devices: ") + sqlite3_errmsg(db));
    }
    sqlite3_reset(cert);
    sqlite3_reset(dev);
  }
  sqlite3_finalize(cert);
  sqlite3_finalize(dev);
  exec(db, "COMMIT");
  exec(db, "ANALYZE");
  sqlite3_close(db);
}

double measure_auth_checks(const std::filesystem::path& db_file,
                           const std::filesystem::path& bundle_pem, std::size_t max_chains,
                           int threads, double seconds) {
  // The device certificates of a real batch (leaf only, as most devices present them).
  std::vector<engine::Der> leaves =
      engine::read_certificates(bundle_pem, "certificate bundle", std::size_t{1} << 32);
  if (leaves.size() > max_chains) leaves.resize(max_chains);
  std::atomic<long> checks{0}, refused{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto registry = engine::Registry::open(db_file);  // one connection per thread
      engine::Authenticator auth(*registry);
      const std::int64_t at = std::time(nullptr);
      long n = 0, bad = 0;
      for (std::size_t i = static_cast<std::size_t>(t); !stop.load(std::memory_order_relaxed);
           ++i) {
        const engine::Der& leaf = leaves[i % leaves.size()];
        if (!auth.check(std::span<const engine::Der>(&leaf, 1), at).allowed) ++bad;
        ++n;
      }
      checks += n;
      refused += bad;
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& w : workers) w.join();
  if (refused > 0) {
    throw std::runtime_error(std::to_string(refused.load()) +
                             " auth checks were refused; all should be allowed");
  }
  return static_cast<double>(checks.load()) / seconds;
}

}  // namespace fleetsign::bench
