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

constexpr Oid kInt8 = 20, kText = 25, kBytea = 17, kInt4 = 23, kInt2 = 21, kBool = 16;
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
  // serialization, deadlock, lock_not_available (lock_timeout), query_canceled (statement_timeout)
  if (s == "40001" || s == "40P01" || s == "55P03" || s == "57014") return ErrorCode::kRegistryBusy;
  // character_not_in_repertoire, untranslatable_character: text that is no UTF-8 (or holds NUL)
  if (s == "22021" || s == "22P05") return ErrorCode::kInvalidArgument;
  return ErrorCode::kRegistryError;
}

std::string message_of(PGconn* conn, const PGresult* r) {
  // The primary message alone: not the multi-line LINE/CONTEXT text with the statement in it.
  const char* primary = r != nullptr ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
  std::string m = primary != nullptr ? primary
                  : r != nullptr     ? PQresultErrorMessage(r)
                                     : PQerrorMessage(conn);
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
      if (j > i + 1) {
        const auto [end, ec] = std::from_chars(in.data() + i + 1, in.data() + j, n);
        if (ec != std::errc() || end != in.data() + j || n < 1 || n > 32766) {
          throw DbError(ErrorCode::kRegistryError, "bad parameter number in '" + in + "'");
        }
      }
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

// Settings every session of the registry runs with, whatever the role's or database's defaults:
// a commit is durable when it returns (a reserved CRL number or an issued certificate is never
// lost to a server crash), bytea reads back in the hex form blob() decodes, text is UTF-8. The
// idle limit of a transaction is set per write transaction instead (begin_write).
constexpr const char* kSessionSettings =
    "SET client_min_messages = warning; SET synchronous_commit = on; SET bytea_output = hex; "
    "SET client_encoding = 'UTF8'";

// The connection and what its statements share: the statement-name counter, and a generation
// that moves on at every reconnection (server-side statements die with their connection).
struct Conn {
  PGconn* pg = nullptr;
  int counter = 0;
  int generation = 0;
  bool in_txn = false;

  // A connection lost outside a transaction is re-established (libpq's PQreset, same
  // parameters); inside one, the transaction is gone and so is the caller's work: that throws.
  void ensure() {
    if (PQstatus(pg) == CONNECTION_OK) return;
    if (in_txn) {
      throw DbError(ErrorCode::kRegistryError,
                    "the connection to PostgreSQL was lost inside a transaction (rolled back)");
    }
    PQreset(pg);
    if (PQstatus(pg) != CONNECTION_OK) {
      throw DbError(ErrorCode::kRegistryError,
                    "the connection to PostgreSQL was lost and could not be re-established: " +
                        message_of(pg, nullptr));
    }
    ++generation;
    checked(pg, PQexec(pg, kSessionSettings));
  }
};

class PgStmt final : public Stmt {
 public:
  PgStmt(Conn* conn, std::string sql, int params)
      : m_conn(conn), m_sql(std::move(sql)), m_generation(conn->generation) {
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
    // Not inside a failed transaction (refused there) nor on another connection than its own.
    if (m_generation != m_conn->generation || PQstatus(m_conn->pg) != CONNECTION_OK ||
        PQtransactionStatus(m_conn->pg) != PQTRANS_IDLE) {
      return;
    }
    for (const auto& [types, name] : m_prepared) {
      PQclear(PQexec(m_conn->pg, ("DEALLOCATE " + name).c_str()));
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
  Kind kind(int column) override {
    if (is_null(column)) return Kind::kNull;
    const Oid type = PQftype(m_result.get(), column);
    if (type == kBytea) return Kind::kBlob;
    if (type == kInt8 || type == kInt4 || type == kInt2 || type == kBool) return Kind::kInteger;
    return Kind::kText;
  }
  bool is_null(int column) override { return PQgetisnull(m_result.get(), m_row, column) != 0; }
  std::int64_t int64(int column) override {
    const std::string_view v = text(column);
    if (v == "t") return 1;
    if (v == "f" || v.empty()) return 0;
    std::int64_t out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || end != v.data() + v.size()) {
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
    if (is_null(column)) return out;
    // bytea_output is set to hex for every connection (postgres_db): anything else is refused
    // rather than read as other bytes.
    if (v.size() < 2 || v[0] != '\\' || v[1] != 'x' || v.size() % 2 != 0) {
      throw DbError(ErrorCode::kRegistryError,
                    "column " + std::to_string(column) + " is not bytea in hex form");
    }
    out.reserve((v.size() - 2) / 2);
    for (std::size_t i = 2; i < v.size(); i += 2) {
      const int hi = hex_value(v[i]), lo = hex_value(v[i + 1]);
      if (hi < 0 || lo < 0) {
        throw DbError(ErrorCode::kRegistryError,
                      "column " + std::to_string(column) + " holds a bad hex digit");
      }
      out.push_back(static_cast<std::uint8_t>(hi << 4 | lo));
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
    std::string name = "fs" + std::to_string(++m_conn->counter);
    checked(m_conn->pg, PQprepare(m_conn->pg, name.c_str(), m_sql.c_str(),
                                  static_cast<int>(m_types.size()), m_types.data()));
    return m_prepared.emplace(key, std::move(name)).first->second;
  }

  void execute() {
    m_conn->ensure();
    if (m_generation != m_conn->generation) {
      m_prepared.clear();  // prepared on a connection that is gone
      m_generation = m_conn->generation;
    }
    const std::string& name = prepared_name();
    m_result = checked(m_conn->pg,
                       PQexecPrepared(m_conn->pg, name.c_str(), static_cast<int>(m_types.size()),
                                      m_values.data(), m_lengths.data(), m_formats.data(), 0));
    const char* tuples = PQcmdTuples(m_result.get());
    m_changes = 0;
    std::from_chars(tuples, tuples + std::strlen(tuples), m_changes);
  }

  Conn* m_conn;
  std::string m_sql;
  int m_generation;  // the connection's generation m_prepared belongs to
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
  PgDb(PGconn* conn, std::string name) : m_conn(std::make_unique<Conn>()), m_name(std::move(name)) {
    m_conn->pg = conn;
  }
  PgDb(const PgDb&) = delete;  // owns the connection
  PgDb& operator=(const PgDb&) = delete;
  ~PgDb() override { PQfinish(m_conn->pg); }

  Dialect dialect() const override { return Dialect::kPostgres; }
  std::unique_ptr<Stmt> prepare(const std::string& sql) override {
    std::string translated;
    const int params = translate_placeholders(sql, translated);
    return std::make_unique<PgStmt>(m_conn.get(), std::move(translated), params);
  }
  void exec(const std::string& sql) override {
    PGconn* pg = m_conn->pg;
    if (sql == "ROLLBACK") {
      // On a lost connection the server has rolled back already: nothing left to undo.
      m_conn->in_txn = false;
      if (PQstatus(pg) == CONNECTION_OK) checked(pg, PQexec(pg, "ROLLBACK"));
      return;
    }
    m_conn->ensure();
    const Result r = checked(pg, PQexec(pg, sql.c_str()));
    if (sql == "COMMIT") {
      m_conn->in_txn = false;
      // COMMIT of a transaction that failed earlier answers ROLLBACK, not an error.
      if (std::string_view(PQcmdStatus(r.get())) != "COMMIT") {
        throw DbError(ErrorCode::kRegistryError,
                      "the transaction was rolled back by the server, not committed");
      }
    }
  }
  void begin_write() override {
    exec("BEGIN");
    m_conn->in_txn = true;
    try {
      // A writer that goes silent inside its transaction (a process frozen by SIGSTOP or a
      // paused VM) loses its connection, and with it the lock and its uncommitted writes, after
      // kWriteIdleLimit; a writer waits for the lock longer than that (kWriteLockWait), so the
      // other workers go on after it instead of failing busy until it wakes.
      exec(std::string("SET LOCAL lock_timeout = '") + kWriteLockWait +
           "'; SET LOCAL idle_in_transaction_session_timeout = '" + kWriteIdleLimit + "'");
      exec("SELECT pg_advisory_xact_lock(" + std::to_string(kWriteLockKey) + ")");
    } catch (...) {
      try {
        exec("ROLLBACK");
      } catch (const DbError&) {
        // The connection is gone; so is the transaction.
      }
      throw;
    }
  }
  const std::string& name() const override { return m_name; }

 private:
  std::unique_ptr<Conn> m_conn;
  std::string m_name;
};

void ignore_notice(void*, const char*) {}

}  // namespace

namespace {

std::string percent_decoded(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && hex_value(text[i + 1]) >= 0 &&
        hex_value(text[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(text[i + 1]) << 4 | hex_value(text[i + 2]));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

// A URL as libpq reads it: scheme://[user[:password]@]hosts[/db][?key=value&…]. Where the
// secrets are: the password of the user part, and the password / sslpassword parameters (their
// keys percent-decoded, as libpq decodes them).
struct UrlParts {
  std::size_t authority = 0, authority_end = 0;                    // [authority, authority_end)
  std::size_t at = std::string::npos;                              // the '@' ending the user part
  std::vector<std::pair<std::size_t, std::size_t>> secret_values;  // [begin, end) in the URL
};

UrlParts parse_url(const std::string& url) {
  UrlParts p;
  const auto scheme = url.find("://");
  p.authority = scheme == std::string::npos ? 0 : scheme + 3;
  p.authority_end = url.find_first_of("/?", p.authority);
  if (p.authority_end == std::string::npos) p.authority_end = url.size();
  const auto at = url.rfind('@', p.authority_end == 0 ? 0 : p.authority_end - 1);
  if (at != std::string::npos && at >= p.authority && at < p.authority_end) p.at = at;
  const auto query = url.find('?', p.authority);
  if (query == std::string::npos) return p;
  for (std::size_t begin = query + 1; begin <= url.size();) {
    std::size_t end = url.find('&', begin);
    if (end == std::string::npos) end = url.size();
    const auto eq = url.find('=', begin);
    if (eq != std::string::npos && eq < end) {
      const std::string key = percent_decoded(std::string_view(url).substr(begin, eq - begin));
      if (key == "password" || key == "sslpassword") p.secret_values.emplace_back(eq + 1, end);
    }
    begin = end + 1;
  }
  return p;
}

}  // namespace

std::string redact_url(const std::string& url) {
  const UrlParts p = parse_url(url);
  std::string out = url;
  // From the end, so that the earlier offsets stay right.
  for (auto it = p.secret_values.rbegin(); it != p.secret_values.rend(); ++it) {
    out.replace(it->first, it->second - it->first, "***");
  }
  if (p.at != std::string::npos) {
    const auto colon = out.find(':', p.authority);
    if (colon != std::string::npos && colon < p.at) out.replace(colon + 1, p.at - colon - 1, "***");
  }
  return out;
}

bool url_holds_password(const std::string& url) {
  const UrlParts p = parse_url(url);
  if (!p.secret_values.empty()) return true;
  if (p.at == std::string::npos) return false;
  const auto colon = url.find(':', p.authority);
  return colon != std::string::npos && colon < p.at;
}

bool url_names_database(const std::string& url) {
  const UrlParts p = parse_url(url);
  if (p.authority_end < url.size() && url[p.authority_end] == '/') {
    const auto end = url.find('?', p.authority_end);
    if ((end == std::string::npos ? url.size() : end) > p.authority_end + 1) return true;
  }
  const auto query = url.find('?', p.authority);
  return query != std::string::npos &&
         (url.find("?dbname=", query) == query || url.find("&dbname=", query) != std::string::npos);
}

bool is_postgres_url(std::string_view text) {
  return text.starts_with("postgresql://") || text.starts_with("postgres://");
}

std::unique_ptr<Db> postgres_db(const std::string& url) {
  // Defaults the URL may override (its values come later): fail a dead host in 10 s, and notice a
  // half-open connection within a minute instead of TCP's two hours.
  const char* const keys[] = {"connect_timeout",  "keepalives_idle", "keepalives_interval",
                              "keepalives_count", "dbname",          nullptr};
  const char* const values[] = {"10", "30", "10", "3", url.c_str(), nullptr};
  PGconn* conn = PQconnectdbParams(keys, values, 1);
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    std::string why = conn != nullptr ? PQerrorMessage(conn) : "out of memory";
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    PQfinish(conn);
    throw DbError(ErrorCode::kRegistryError,
                  "cannot connect to PostgreSQL at " + redact_url(url) + ": " + why);
  }
  PQsetNoticeProcessor(conn, ignore_notice, nullptr);
  auto db = std::make_unique<PgDb>(conn, redact_url(url));
  db->exec(kSessionSettings);
  return db;
}

}  // namespace fleetsign::engine::sql
