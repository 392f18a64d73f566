// Processes, the fleet home, batch arguments, and text helpers for the batch tests.
#include "batch_support.hpp"

#include <Poco/JSON/Parser.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "registry_backend.hpp"

extern char** environ;

namespace fleetsign::batchtest {

namespace {

// Variables the tests set explicitly; anything inherited under these names is dropped.
constexpr const char* kControlled[] = {"FLEETSIGN_PIN", "FLEETSIGN_SO_PIN", "FLEETSIGN_HOME",
                                       "FLEETSIGN_FAULT", "FLEETSIGN_PFX_PASSWORD"};

std::string var_name(const std::string& entry) { return entry.substr(0, entry.find('=')); }

std::vector<std::string> child_environment(const Env& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry(*e);
    const std::string name = var_name(entry);
    const bool controlled = std::any_of(std::begin(kControlled), std::end(kControlled),
                                        [&](const char* c) { return name == c; });
    const bool overridden = std::any_of(extra.begin(), extra.end(),
                                        [&](const std::string& x) { return var_name(x) == name; });
    if (!controlled && !overridden) env.push_back(entry);
  }
  env.push_back(std::string("FLEETSIGN_PIN=") + testing::kUserPin);
  env.push_back(std::string("FLEETSIGN_SO_PIN=") + testing::kSoPin);
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

// --- Outcome, Child

bool Outcome::exited() const { return WIFEXITED(wait_status); }
int Outcome::exit_code() const { return exited() ? WEXITSTATUS(wait_status) : -1; }
bool Outcome::killed_by(int signal) const {
  return WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == signal;
}
std::string Outcome::describe() const {
  const std::string how = exited() ? "exit " + std::to_string(exit_code())
                          : WIFSIGNALED(wait_status)
                              ? "killed by signal " + std::to_string(WTERMSIG(wait_status))
                              : "wait status " + std::to_string(wait_status);
  return how + "\n--- stdout:\n" + out.substr(0, 4000) + "\n--- stderr:\n" + err.substr(0, 4000);
}

Child::Child(const std::vector<std::string>& argv, const Env& env, fs::path out, fs::path err)
    : m_out(std::move(out)), m_err(std::move(err)) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, m_out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, m_err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> args = argv;
  std::vector<std::string> envs = child_environment(env);
  auto c_args = c_strings(args);
  auto c_env = c_strings(envs);
  const int rc = posix_spawn(&m_pid, c_args[0], &actions, nullptr, c_args.data(), c_env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    ADD_FAILURE() << "cannot start " << argv[0] << ": " << std::strerror(rc);
    m_pid = -1;
  }
}

Child::~Child() {
  if (m_pid > 0 && !m_reaped) {
    ::kill(m_pid, SIGKILL);
    int status = 0;
    waitpid(m_pid, &status, 0);
  }
}

void Child::kill(int signal) const {
  if (m_pid > 0 && !m_reaped) ::kill(m_pid, signal);
}

Outcome Child::wait() {
  Outcome o;
  if (m_pid <= 0) return o;
  while (!m_reaped) {
    if (waitpid(m_pid, &o.wait_status, 0) == m_pid) {
      m_reaped = true;
    } else if (errno != EINTR) {
      ADD_FAILURE() << "waitpid: " << std::strerror(errno);
      break;
    }
  }
  o.out = testing::read_file(m_out);
  o.err = testing::read_file(m_err);
  return o;
}

// --- Fleet

Fleet::Fleet()
    : m_home(m_dir.path() / "home"),
      m_registry(test::test_registry_location(m_home / "registry.db")) {}

std::unique_ptr<Child> Fleet::start(const std::vector<std::string>& args, const Env& env) {
  // A fault asked for runs the same program with its stores wrapped (faulty_main.cpp).
  const bool fault = std::any_of(env.begin(), env.end(), [](const std::string& kv) {
    return kv.rfind("FLEETSIGN_FAULT=", 0) == 0;
  });
  std::vector<std::string> argv{
      fault ? std::string(FLEETSIGN_FAULTY_BIN_PATH) : testing::fleetsign_bin(), "--home",
      m_home.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string stem = "run-" + std::to_string(++m_runs);
  return std::make_unique<Child>(argv, env, path(stem + ".out"), path(stem + ".err"));
}

Outcome Fleet::run(const std::vector<std::string>& args, const Env& env) {
  return start(args, env)->wait();
}

Outcome Fleet::ok(const std::vector<std::string>& args) {
  Outcome o = run(args);
  std::string line = "fleetsign";
  for (const auto& a : args) line += " " + a;
  EXPECT_EQ(o.exit_code(), 0) << line << "\n" << o.describe();
  return o;
}

void Fleet::make_hierarchy() {
  std::vector<std::string> init{"init"};
  for (const auto& a : test::init_registry_args(m_registry)) init.push_back(a);
  ok(init);
  ok({"ca", "create-root", "--name", "root", "--subject", "/CN=Batch Test Root/O=fleetsign tests"});
  ok({"ca", "create-intermediate", "--name", "int", "--issuer", "root", "--days", "3000",
      "--subject", "/CN=Batch Test Intermediate/O=fleetsign tests"});
}

std::unique_ptr<engine::Registry> Fleet::registry() const {
  return engine::Registry::open(m_registry);
}

Poco::JSON::Object::Ptr Fleet::batch_show(const std::string& batch_id) {
  const Outcome o = ok({"batch", "show", batch_id, "--json"});
  return parse_json(o.out);
}

// --- IssueArgs

std::vector<std::string> IssueArgs::args() const {
  std::vector<std::string> a{"issue", "--ca", ca, "--out", out.string()};
  if (!batch_id.empty()) a.insert(a.end(), {"--batch", batch_id});
  if (generate > 0)
    a.insert(a.end(), {"--generate", std::to_string(generate), "--id-pattern", id_pattern});
  if (!csr_file.empty()) a.insert(a.end(), {"--csr-file", csr_file.string()});
  if (!csr_dir.empty()) a.insert(a.end(), {"--csr-dir", csr_dir.string()});
  if (bundle) a.push_back("--bundle");
  if (pfx) a.insert(a.end(), {"--pfx", "--pfx-password-file", pfx_password_file.string()});
  if (reissue) a.push_back("--reissue");
  if (json) a.push_back("--json");
  // Kill points count chunks: pin their size so the tests do not depend on the default.
  a.insert(a.end(), {"--chunk", std::to_string(kChunk)});
  return a;
}

std::vector<std::string> IssueArgs::generated_ids() const {
  // Only the "prefix{0N}suffix" form the tests use.
  const auto open = id_pattern.find('{'), close = id_pattern.find('}');
  const int width = std::atoi(id_pattern.substr(open + 1, close - open - 1).c_str());
  std::vector<std::string> ids;
  ids.reserve(static_cast<std::size_t>(generate));
  for (std::int64_t n = 1; n <= generate; ++n) {
    std::string digits = std::to_string(n);
    if (static_cast<int>(digits.size()) < width) digits.insert(0, width - digits.size(), '0');
    ids.push_back(id_pattern.substr(0, open) + digits + id_pattern.substr(close + 1));
  }
  return ids;
}

std::vector<Input> generated_inputs(const IssueArgs& a) {
  std::vector<Input> inputs;
  for (auto& id : a.generated_ids()) inputs.push_back(Input{id, id});
  return inputs;
}

fs::path chunk_spool_file(const fs::path& spool_dir, std::int64_t first_seq) {
  const std::string prefix = std::to_string(first_seq) + ".";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(spool_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(prefix) && name.ends_with(".keys")) return e.path();
  }
  return spool_dir / (prefix + "NONE.keys");
}

std::vector<fs::path> spooled_key_files(const fs::path& out) {
  std::vector<fs::path> files;
  std::error_code ec;
  if (fs::is_directory(out / ".spool", ec)) {
    // One directory per batch below .spool.
    for (const auto& entry : fs::recursive_directory_iterator(out / ".spool")) {
      if (entry.is_regular_file()) files.push_back(entry.path());
    }
  }
  return files;
}

// --- text

std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      fields.back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      fields.emplace_back();
    } else {
      fields.back() += c;
    }
  }
  return fields;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

Poco::JSON::Object::Ptr parse_json(const std::string& text) {
  Poco::JSON::Parser parser;
  return parser.parse(text).extract<Poco::JSON::Object::Ptr>();
}

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

std::string snapshot_dir(const fs::path& dir) {
  std::vector<std::string> rows;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    struct stat st {};
    ::lstat(e.path().c_str(), &st);
    std::ostringstream row;
    row << fs::relative(e.path(), dir).string() << " mode=" << std::oct << (st.st_mode & 07777)
        << std::dec << " size=" << st.st_size << " mtime=" << st.st_mtim.tv_sec << "."
        << st.st_mtim.tv_nsec;
    if (e.is_regular_file()) row << " sha256=" << sha256_hex(testing::read_file(e.path()));
    rows.push_back(row.str());
  }
  std::sort(rows.begin(), rows.end());
  std::string out;
  for (const auto& r : rows) out += r + "\n";
  return out;
}

}  // namespace fleetsign::batchtest
