// The home's token signing latency (sign_metrics.hpp). The file is one line of text:
//   "fleetsign-sign-latency 1 N c0 … cN sum_ns" — N buckets with the bounds of this build.
#include "fleetsign/engine/sign_metrics.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace fs = std::filesystem;

namespace {

constexpr const char* kMagic = "fleetsign-sign-latency";
constexpr std::size_t kMaxFile = 4096;

fs::path file_of(const fs::path& home) { return home / "metrics" / "token-sign.txt"; }

std::optional<hsm::SignLatency> parse(const std::string& text) {
  std::istringstream in(text);
  std::string magic;
  int version = 0;
  std::size_t n = 0;
  if (!(in >> magic >> version >> n) || magic != kMagic || version != 1 ||
      n != hsm::SignLatency{}.counts.size()) {
    return std::nullopt;  // another format or other bounds: start again
  }
  hsm::SignLatency s;
  for (auto& c : s.counts) {
    if (!(in >> c)) return std::nullopt;
  }
  if (!(in >> s.sum_ns)) return std::nullopt;
  return s;
}

std::optional<hsm::SignLatency> read_file(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;
  try {
    return parse(read_bounded(file.string(), kMaxFile, "the sign latency file"));
  } catch (const Error&) {
    return std::nullopt;
  }
}

}  // namespace

void save_sign_latency(const fs::path& home_dir) {
  const hsm::SignLatency mine = hsm::take_sign_latency();
  if (mine.total() == 0) return;
  const fs::path dir = home_dir / "metrics";
  std::error_code ec;
  fs::create_directory(dir, ec);
  const fs::path lock_path = dir / ".lock";
  const int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (lock < 0 || ::flock(lock, LOCK_EX) != 0) {
    const std::string why = std::strerror(errno);
    if (lock >= 0) ::close(lock);
    throw Error(ErrorCode::kIo, lock_path.string() + ": cannot be locked: " + why);
  }
  hsm::SignLatency sum = read_file(file_of(home_dir)).value_or(hsm::SignLatency{});
  for (std::size_t i = 0; i < sum.counts.size(); ++i) sum.counts[i] += mine.counts[i];
  sum.sum_ns += mine.sum_ns;
  std::ostringstream out;
  out << kMagic << " 1 " << sum.counts.size();
  for (const auto c : sum.counts) out << ' ' << c;
  out << ' ' << sum.sum_ns << '\n';
  try {
    write_file_atomic(file_of(home_dir), out.str(), 0600);
  } catch (...) {
    ::close(lock);
    throw;
  }
  ::close(lock);
}

std::optional<hsm::SignLatency> load_sign_latency(const fs::path& home_dir) {
  return read_file(file_of(home_dir));
}

namespace {

void save_or_warn(const fs::path& home) {
  try {
    save_sign_latency(home);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fleetsign: warning: the signing latency was not recorded: %s\n",
                 e.what());
  }
}

}  // namespace

SignLatencyFlusher::SignLatencyFlusher(fs::path home_dir, std::chrono::seconds every)
    : m_home(std::move(home_dir)), m_every(every) {
  m_thread = std::thread([this] {
    std::unique_lock lock(m_mutex);
    while (!m_wake.wait_for(lock, m_every, [this] { return m_stop; })) {
      lock.unlock();
      save_or_warn(m_home);
      lock.lock();
    }
  });
}

SignLatencyFlusher::~SignLatencyFlusher() {
  {
    std::lock_guard lock(m_mutex);
    m_stop = true;
  }
  m_wake.notify_all();
  m_thread.join();
  save_or_warn(m_home);
}

}  // namespace fleetsign::engine
