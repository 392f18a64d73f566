// The HTTP service's connections, guarded (http_guard.hpp).
#include "http_guard.hpp"

#include <Poco/Net/HTTPServerConnection.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/TCPServerConnection.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace fleetsign::cli {

ConnectionGuard::ConnectionGuard(std::chrono::milliseconds deadline, int per_peer)
    : m_deadline(deadline), m_per_peer(per_peer), m_watchdog([this] { watch(); }) {}

ConnectionGuard::~ConnectionGuard() {
  {
    std::lock_guard lock(m_mutex);
    m_stop = true;
  }
  m_wake.notify_all();
  m_watchdog.join();
}

bool ConnectionGuard::open(const void* conn, int fd, const std::string& peer) {
  std::lock_guard lock(m_mutex);
  int& held = m_peers[peer];
  if (held >= m_per_peer) return false;
  const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return false;  // out of descriptors: refused like a full share
  ++held;
  m_conns[conn] = Entry{std::chrono::steady_clock::now() + m_deadline, dup, true, false};
  return true;
}

void ConnectionGuard::close(const void* conn, const std::string& peer) {
  std::lock_guard lock(m_mutex);
  if (auto it = m_conns.find(conn); it != m_conns.end()) {
    ::close(it->second.fd);
    m_conns.erase(it);
  }
  if (auto it = m_peers.find(peer); it != m_peers.end() && --it->second <= 0) m_peers.erase(it);
}

void ConnectionGuard::busy(const void* conn) {
  std::lock_guard lock(m_mutex);
  if (auto it = m_conns.find(conn); it != m_conns.end()) it->second.armed = false;
}

void ConnectionGuard::idle(const void* conn) {
  std::lock_guard lock(m_mutex);
  if (auto it = m_conns.find(conn); it != m_conns.end()) {
    it->second.armed = true;
    it->second.due = std::chrono::steady_clock::now() + m_deadline;
  }
}

void ConnectionGuard::shut_all() {
  std::lock_guard lock(m_mutex);
  for (auto& [conn, e] : m_conns) {
    if (!e.armed || e.shut) continue;  // a request in progress finishes
    ::shutdown(e.fd, SHUT_RDWR);
    e.shut = true;
  }
}

void ConnectionGuard::drain(std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  std::unique_lock lock(m_mutex);
  while (!m_conns.empty() && std::chrono::steady_clock::now() < until) {
    lock.unlock();
    shut_all();  // a request answered meanwhile leaves its connection idle
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    lock.lock();
  }
}

// A connection past its deadline is shut down (not closed: its thread still owns the
// descriptor), so the read it blocks in ends and its thread is free.
void ConnectionGuard::watch() {
  std::unique_lock lock(m_mutex);
  while (!m_stop) {
    m_wake.wait_for(lock, std::chrono::milliseconds(250));
    const auto now = std::chrono::steady_clock::now();
    for (auto& [conn, e] : m_conns) {
      if (e.armed && !e.shut && now > e.due) {
        ::shutdown(e.fd, SHUT_RDWR);
        e.shut = true;
      }
    }
  }
}

namespace {

class GuardedConnection final : public Poco::Net::TCPServerConnection {
 public:
  GuardedConnection(const Poco::Net::StreamSocket& socket, ConnectionGuard& guard,
                    Poco::Net::HTTPServerParams::Ptr params,
                    Poco::Net::HTTPRequestHandlerFactory::Ptr handlers)
      : TCPServerConnection(socket), m_guard(guard), m_params(params), m_handlers(handlers) {}

  void run() override {
    const void* conn = socket().impl();
    const int fd = socket().impl()->sockfd();
    std::string peer;
    try {
      peer = socket().peerAddress().host().toString();
    } catch (const Poco::Exception&) {
      return;  // gone already
    }
    if (!m_guard.open(conn, fd, peer)) return;  // closed: the address holds its share of threads
    struct Release {
      ConnectionGuard& guard;
      const void* conn;
      const std::string& peer;
      ~Release() { guard.close(conn, peer); }
    } release{m_guard, conn, peer};
    Poco::Net::HTTPServerConnection http(socket(), m_params, m_handlers);
    http.run();
  }

 private:
  ConnectionGuard& m_guard;
  Poco::Net::HTTPServerParams::Ptr m_params;
  Poco::Net::HTTPRequestHandlerFactory::Ptr m_handlers;
};

}  // namespace

Poco::Net::TCPServerConnection* GuardedConnectionFactory::createConnection(
    const Poco::Net::StreamSocket& socket) {
  return new GuardedConnection(socket, m_guard, m_params, m_handlers);
}

}  // namespace fleetsign::cli
