#include "registry_backend.hpp"

#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string_view>

#include "postgres_server.hpp"

namespace fleetsign::test {

bool test_registry_is_postgres() {
  const char* v = std::getenv("FLEETSIGN_TEST_REGISTRY");
  return v != nullptr && std::string_view(v) == "postgresql";
}

std::string test_registry_location(const std::filesystem::path& sqlite_file) {
  return test_registry_is_postgres() ? PostgresServer::shared().create_database()
                                     : sqlite_file.string();
}

namespace {

bool is_url(const std::string& location) {
  return location.rfind("postgresql://", 0) == 0 || location.rfind("postgres://", 0) == 0;
}

std::vector<std::vector<std::string>> pg_query(const std::string& url, const std::string& sql) {
  std::unique_ptr<PGconn, void (*)(PGconn*)> conn(PQconnectdb(url.c_str()), PQfinish);
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    throw std::runtime_error("connecting to " + url + ": " + PQerrorMessage(conn.get()));
  }
  std::unique_ptr<PGresult, void (*)(PGresult*)> r(PQexec(conn.get(), sql.c_str()), PQclear);
  const auto status = PQresultStatus(r.get());
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    throw std::runtime_error(sql + ": " + PQresultErrorMessage(r.get()));
  }
  std::vector<std::vector<std::string>> rows;
  for (int i = 0; i < PQntuples(r.get()); ++i) {
    auto& row = rows.emplace_back();
    for (int j = 0; j < PQnfields(r.get()); ++j) row.emplace_back(PQgetvalue(r.get(), i, j));
  }
  return rows;
}

std::vector<std::vector<std::string>> sqlite_query(const std::string& file,
                                                   const std::string& sql) {
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(file.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr);
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> db(raw, sqlite3_close);
  if (rc != SQLITE_OK) {
    throw std::runtime_error("opening " + file + ": " + sqlite3_errstr(rc));
  }
  sqlite3_busy_timeout(db.get(), 10000);
  std::vector<std::vector<std::string>> rows;
  char* error = nullptr;
  const auto on_row = [](void* out, int n, char** values, char**) {
    auto& all = *static_cast<std::vector<std::vector<std::string>>*>(out);
    auto& row = all.emplace_back();
    for (int i = 0; i < n; ++i) row.emplace_back(values[i] != nullptr ? values[i] : "");
    return 0;
  };
  if (sqlite3_exec(db.get(), sql.c_str(), on_row, &rows, &error) != SQLITE_OK) {
    const std::string message = error != nullptr ? error : "unknown error";
    sqlite3_free(error);
    throw std::runtime_error(sql + ": " + message);
  }
  return rows;
}

}  // namespace

std::vector<std::vector<std::string>> raw_query(const std::string& location,
                                                const std::string& sql) {
  return is_url(location) ? pg_query(location, sql) : sqlite_query(location, sql);
}

std::string home_registry_location(const std::filesystem::path& home) {
  std::ifstream in(home / "fleetsign.json");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Test homes only: the URL holds no quote or escape.
  const std::string key = "\"registry\": \"";
  const auto at = text.find(key);
  if (at == std::string::npos) return (home / "registry.db").string();
  const auto begin = at + key.size();
  return text.substr(begin, text.find('"', begin) - begin);
}

std::string init_registry_suffix() {
  return test_registry_is_postgres()
             ? " --registry '" + PostgresServer::shared().create_database() + "'"
             : std::string();
}

std::vector<std::string> init_registry_args(const std::string& location) {
  if (is_url(location)) return {"--registry", location};
  return {};
}

RegistryDir::RegistryDir(const std::string& prefix) {
  std::string pattern = (std::filesystem::temp_directory_path() / (prefix + ".XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  m_path = pattern;
}

RegistryDir::~RegistryDir() {
  std::error_code ignored;
  std::filesystem::remove_all(m_path, ignored);
}

std::string RegistryDir::db() const {
  if (m_location.empty()) m_location = test_registry_location(m_path / "registry.db");
  return m_location;
}

}  // namespace fleetsign::test
