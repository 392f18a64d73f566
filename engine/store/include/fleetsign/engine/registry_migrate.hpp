// Moving a SQLite registry, with its whole history, into PostgreSQL (`registry migrate --to`).
//
// 1. The SQLite registry is opened (and brought to the current schema, as any command does), then
//    read through a read-only connection of its own.
// 2. The PostgreSQL database gets the registry's tables (Registry::open) and must hold no rows:
//    a migration never merges two registries.
// 3. Every table is copied row by row, parents before the tables that refer to them, in one
//    transaction: a failure (or a kill) leaves the target as empty as it was.
// 4. Each table is then read back from both sides: row counts, and a checksum over every row
//    (SHA-256 of each row's values, sorted, hashed again; independent of row order and of either
//    engine's collation). Any difference throws, naming the table.
//
// The caller holds the home lock, so that nothing writes the SQLite file meanwhile, and switches
// the home to the new URL only after this returned.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace fleetsign::engine {

struct MigratedTable {
  std::string name;
  std::int64_t rows = 0;
  std::string checksum;  // upper-case hex SHA-256, equal on both sides
};

struct MigrationReport {
  std::vector<MigratedTable> tables;  // in copy order
  std::int64_t rows = 0;              // all tables
  double seconds = 0;
};

// Throws Error: kRegistryError (either database; names it), kAlreadyExists (the target holds
// rows), kRegistryError "checksum differs" (never expected: the copy is rolled back... it was
// committed, so the target must be dropped by hand; the message says so). `progress`, when given,
// is called after each table with the rows copied so far.
MigrationReport migrate_registry(const std::filesystem::path& sqlite_file,
                                 const std::string& postgres_url,
                                 const std::function<void(const MigratedTable&)>& progress = {});

}  // namespace fleetsign::engine
