// Test support: which registry backend a test runs on. FLEETSIGN_TEST_REGISTRY=postgresql puts
// each test's registry into a fresh database of the process's PostgreSQL server
// (postgres_server.hpp); unset (or anything else), into the SQLite file the test names. CTest runs
// the registry's test programs once per backend (label postgres for the second run).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace fleetsign::test {

bool test_registry_is_postgres();
// `sqlite_file`, or a fresh PostgreSQL database's URL (a new one on every call).
std::string test_registry_location(const std::filesystem::path& sqlite_file);

// Runs SQL on a registry through a connection of its own (a SQLite file, or a postgresql:// URL):
// what is stored, not what a Registry says. Rows as text (NULL reads ""). Throws
// std::runtime_error with the engine's message. Tests only: the SQL is not parameterised.
std::vector<std::vector<std::string>> raw_query(const std::string& location,
                                                const std::string& sql);
// Where the registry of the home `home` is: the "registry" URL of its fleetsign.json, else
// HOME/registry.db.
std::string home_registry_location(const std::filesystem::path& home);
// " --registry 'URL'" for a fresh database on the postgres run, else "": appended to a test's
// `init` command line.
std::string init_registry_suffix();

// The SQL that `init --registry` needs for `location`: {"--registry", URL} on PostgreSQL, else {}.
std::vector<std::string> init_registry_args(const std::string& location);

// A temporary directory (removed with the object) and the registry a store test opens there: its
// SQLite file, or one fresh PostgreSQL database per object on the postgres run.
class RegistryDir {
 public:
  explicit RegistryDir(const std::string& prefix);
  RegistryDir(const RegistryDir&) = delete;  // owns the directory
  RegistryDir& operator=(const RegistryDir&) = delete;
  ~RegistryDir();
  const std::filesystem::path& path() const { return m_path; }
  std::string db() const;

 private:
  std::filesystem::path m_path;
  mutable std::string m_location;
};

}  // namespace fleetsign::test

// Skips a test that inspects the SQLite file itself (its pages, its journal, a second raw
// connection) when the registry under test is PostgreSQL.
#define FLEETSIGN_SQLITE_ONLY()                                                \
  do {                                                                         \
    if (::fleetsign::test::test_registry_is_postgres()) {                      \
      GTEST_SKIP() << "inspects the SQLite file; the PostgreSQL run skips it"; \
    }                                                                          \
  } while (false)
