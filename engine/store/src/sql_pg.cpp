// The PostgreSQL driver of sql.hpp, on libpq: statements prepared on the server once per
// parameter-type signature, parameters sent in binary (no copy of a text or blob, no NUL needed),
// results read in text form (one parse for every integer type, booleans and bytea's hex).
#include <arpa/inet.h>
#include <libpq-fe.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <map>
#include <utility>

#include "sql.hpp"

namespace fleetsign::engine::sql {

namespace {

constexpr Oid kInt8 = 20, kText = 25, kBytea = 17;
// The registry's write lock (pg_advisory_xact_lock): 'fsreg' as a number.
constexpr long long kWriteLockKey = 0x6673726567;

struct ResultDeleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

ErrorCode code_of(const PGresult* r) {
  const char* state = r != nullptr ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  if (state == nullptr) return ErrorCode::kRegistryError;
  const std::string_view s(state);
  if (s == "23505") return ErrorCode::kAlreadyExists;  // unique_violation
  if (s == "40001" || s == "40P01" || s == "55P03") return ErrorCode::kRegistryBusy;
  return ErrorCode::kRegistryError;
}

std::string message_of(PGconn* conn, const PGresult* r) {
  std::string m = r != nullptr ? PQresultErrorMessage(r) : PQerrorMessage(conn);
  if (m.empty()) m = PQerrorMessage(conn);
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
  return m;
}

// Checks a result; throws DbError when it is not a success.
Result checked(PGconn* conn, PGresult* raw) {
  Result r(raw);
  const auto status = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    throw DbError(code_of(r.get()), message_of(conn, r.get()));
  }
  return r;
}

// `?` and `?NNN` to `$N`, outside quotes and comments. Returns the highest parameter number.
int translate_placeholders(const std::string& in, std::string& out) {
  out.clear();
  out.reserve(in.size() + 16);
  int highest = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (c == '\'' || c == '"') {
      const std::size_t end = in.find(c, i + 1);
      const std::size_t stop = end == std::string::npos ? in.size() : end + 1;
      out.append(in, i, stop - i);
      i = stop - 1;
    } else if (c == '-' && i + 1 < in.size() && in[i + 1] == '-') {
      const std::size_t end = in.find('\n', i);
      const std::size_t stop = end == std::string::npos ? in.size() : end;
      out.append(in, i, stop - i);
      i = stop - 1;
    } else if (c == '?') {
      std::size_t j = i + 1;
      while (j < in.size() && in[j] >= '0' && in[j] <= '9') ++j;
      int n = highest + 1;
      if (j > i + 1) std::from_chars(in.data() + i + 1, in.data() + j, n);
      highest = std::max(highest, n);
      out += '$';
      out += std::to_string(n);
      i = j - 1;
    } else {
      out += c;
    }
  }
  return highest;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class PgStmt final : public Stmt {
 public:
  PgStmt(PGconn* conn, std::string sql, int params, int* counter)
      : m_conn(conn), m_sql(std::move(sql)), m_counter(counter) {
    const auto n = static_cast<std::size_t>(params);
    m_types.assign(n, 0);
    m_values.assign(n, nullptr);
    m_lengths.assign(n, 0);
    m_formats.assign(n, 1);
    m_ints.assign(n, 0);
  }
  PgStmt(const PgStmt&) = delete;  // its prepared names live on the connection
  PgStmt& operator=(const PgStmt&) = delete;
  ~PgStmt() override {
    for (const auto& [types, name] : m_prepared) {
      PQclear(PQexec(m_conn, ("DEALLOCATE " + name).c_str()));
    }
  }

  void bind(int index, std::int64_t value) override {
    const auto i = slot(index);
    m_ints[i] = static_cast<std::uint64_t>(value);
    // Network order, in place: the buffer outlives the execution.
    const std::uint32_t hi = htonl(static_cast<std::uint32_t>(m_ints[i] >> 32));
    const std::uint32_t lo = htonl(static_cast<std::uint32_t>(m_ints[i] & 0xFFFFFFFFu));
    char* p = reinterpret_cast<char*>(&m_ints[i]);
    std::memcpy(p, &hi, 4);
    std::memcpy(p + 4, &lo, 4);
    set(i, kInt8, p, 8);
  }
  void bind(int index, std::string_view value) override {
    set(slot(index), kText, value.empty() ? "" : value.data(), value.size());
  }
  void bind_blob(int index, std::span<const std::uint8_t> value) override {
    set(slot(index), kBytea, value.empty() ? "" : reinterpret_cast<const char*>(value.data()),
        value.size());
  }
  void bind_null(int index) override { set(slot(index), 0, nullptr, 0); }

  bool step() override {
    if (!m_result) {
      execute();
      m_row = 0;
    } else {
      ++m_row;
    }
    return m_row < PQntuples(m_result.get());
  }
  bool is_null(int column) override { return PQgetisnull(m_result.get(), m_row, column) != 0; }
  std::int64_t int64(int column) override {
    const std::string_view v = text(column);
    if (v == "t") return 1;
    if (v == "f" || v.empty()) return 0;
    std::int64_t out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || (end != v.data() + v.size() && *end != '.')) {
      throw DbError(ErrorCode::kRegistryError, "column " + std::to_string(column) + " holds '" +
                                                   std::string(v) + "', not an integer");
    }
    return out;
  }
  std::string_view text(int column) override {
    return {PQgetvalue(m_result.get(), m_row, column),
            static_cast<std::size_t>(PQgetlength(m_result.get(), m_row, column))};
  }
  std::vector<std::uint8_t> blob(int column) override {
    const std::string_view v = text(column);
    std::vector<std::uint8_t> out;
    if (v.size() < 2 || v[0] != '\\' || v[1] != 'x') return out;  // NULL, or no hex form
    out.reserve((v.size() - 2) / 2);
    for (std::size_t i = 2; i + 1 < v.size(); i += 2) {
      out.push_back(static_cast<std::uint8_t>(hex_value(v[i]) << 4 | hex_value(v[i + 1])));
    }
    return out;
  }
  std::int64_t changes() const override { return m_changes; }
  void reset() override {
    m_result.reset();
    std::fill(m_types.begin(), m_types.end(), 0);
    std::fill(m_values.begin(), m_values.end(), nullptr);
    std::fill(m_lengths.begin(), m_lengths.end(), 0);
  }

 private:
  std::size_t slot(int index) const {
    if (index < 1 || static_cast<std::size_t>(index) > m_types.size()) {
      throw DbError(ErrorCode::kRegistryError,
                    "parameter " + std::to_string(index) + " out of range in '" + m_sql + "'");
    }
    return static_cast<std::size_t>(index - 1);
  }
  void set(std::size_t i, Oid type, const char* value, std::size_t length) {
    m_types[i] = type;
    m_values[i] = value;
    m_lengths[i] = static_cast<int>(length);
  }

  // The server-side statement for this execution's parameter types, prepared on first use.
  const std::string& prepared_name() {
    const std::string key(reinterpret_cast<const char*>(m_types.data()),
                          m_types.size() * sizeof(Oid));
    auto it = m_prepared.find(key);
    if (it != m_prepared.end()) return it->second;
    std::string name = "fs" + std::to_string(++*m_counter);
    checked(m_conn, PQprepare(m_conn, name.c_str(), m_sql.c_str(), static_cast<int>(m_types.size()),
                              m_types.data()));
    return m_prepared.emplace(key, std::move(name)).first->second;
  }

  void execute() {
    const std::string& name = prepared_name();
    m_result =
        checked(m_conn, PQexecPrepared(m_conn, name.c_str(), static_cast<int>(m_types.size()),
                                       m_values.data(), m_lengths.data(), m_formats.data(), 0));
    const char* tuples = PQcmdTuples(m_result.get());
    m_changes = 0;
    std::from_chars(tuples, tuples + std::strlen(tuples), m_changes);
  }

  PGconn* m_conn;
  std::string m_sql;
  int* m_counter;  // the connection's statement-name counter
  std::vector<Oid> m_types;
  std::vector<const char*> m_values;
  std::vector<int> m_lengths, m_formats;
  std::vector<std::uint64_t> m_ints;              // the int8 parameters, in network order
  std::map<std::string, std::string> m_prepared;  // parameter types -> statement name
  Result m_result;
  int m_row = 0;
  std::int64_t m_changes = 0;
};

class PgDb final : public Db {
 public:
  PgDb(PGconn* conn, std::string name) : m_conn(conn), m_name(std::move(name)) {}
  PgDb(const PgDb&) = delete;  // owns the connection
  PgDb& operator=(const PgDb&) = delete;
  ~PgDb() override { PQfinish(m_conn); }

  Dialect dialect() const override { return Dialect::kPostgres; }
  std::unique_ptr<Stmt> prepare(const std::string& sql) override {
    std::string translated;
    const int params = translate_placeholders(sql, translated);
    return std::make_unique<PgStmt>(m_conn, std::move(translated), params, &m_counter);
  }
  void exec(const std::string& sql) override { checked(m_conn, PQexec(m_conn, sql.c_str())); }
  void begin_write() override {
    exec("BEGIN");
    exec("SELECT pg_advisory_xact_lock(" + std::to_string(kWriteLockKey) + ")");
  }
  const std::string& name() const override { return m_name; }

 private:
  PGconn* m_conn;
  std::string m_name;
  int m_counter = 0;
};

void ignore_notice(void*, const char*) {}

}  // namespace

std::string redact_url(const std::string& url) {
  std::string out = url;
  const auto scheme = out.find("://");
  const auto at = out.find('@', scheme == std::string::npos ? 0 : scheme + 3);
  if (scheme != std::string::npos && at != std::string::npos) {
    const auto colon = out.find(':', scheme + 3);
    if (colon != std::string::npos && colon < at) {
      out.replace(colon + 1, at - colon - 1, "***");
    }
  }
  const auto pw = out.find("password=");
  if (pw != std::string::npos) {
    const auto end = out.find('&', pw);
    out.replace(pw + 9, (end == std::string::npos ? out.size() : end) - pw - 9, "***");
  }
  return out;
}

bool is_postgres_url(std::string_view text) {
  return text.starts_with("postgresql://") || text.starts_with("postgres://");
}

std::unique_ptr<Db> postgres_db(const std::string& url) {
  PGconn* conn = PQconnectdb(url.c_str());
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    std::string why = conn != nullptr ? PQerrorMessage(conn) : "out of memory";
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    PQfinish(conn);
    throw DbError(ErrorCode::kRegistryError,
                  "cannot connect to PostgreSQL at " + redact_url(url) + ": " + why);
  }
  PQsetNoticeProcessor(conn, ignore_notice, nullptr);
  auto db = std::make_unique<PgDb>(conn, redact_url(url));
  db->exec("SET client_min_messages = warning");
  return db;
}

}  // namespace fleetsign::engine::sql
