// The HTTP service's connections, guarded (http_guard.cpp): a client that trickles its request
// (slowloris) or never finishes its TLS handshake holds a thread for at most a deadline, and one
// peer address holds at most a share of the threads, so a handful of anonymous connections
// cannot freeze the service.
#pragma once

#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/TCPServerConnectionFactory.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace fleetsign::cli {

class ConnectionGuard {
 public:
  // `deadline`: from a connection's start (or the end of its last answer) to a whole request
  // head; `per_peer`: connections one address may hold at once.
  ConnectionGuard(std::chrono::milliseconds deadline, int per_peer);
  ~ConnectionGuard();  // stops the watchdog
  ConnectionGuard(const ConnectionGuard&) = delete;
  ConnectionGuard& operator=(const ConnectionGuard&) = delete;

  // A connection, known by its socket's implementation (alive while its thread runs it) and cut
  // through a duplicate of its descriptor (so a descriptor Poco closed and the system reused is
  // never touched). open: false when the peer holds its share already.
  bool open(const void* conn, int fd, const std::string& peer);
  void close(const void* conn, const std::string& peer);
  void busy(const void* conn);  // a request's head is in: no deadline while it is answered
  void idle(const void* conn);  // answered: the next head is due within the deadline
  void shut_all();              // the service stops: every idle connection ends now
  // Waits until no connection is left (their requests answered), at most `limit`.
  void drain(std::chrono::milliseconds limit);

 private:
  struct Entry {
    std::chrono::steady_clock::time_point due;
    int fd = -1;  // the duplicate
    bool armed = true, shut = false;
  };
  void watch();
  std::chrono::milliseconds m_deadline;
  int m_per_peer;
  std::mutex m_mutex;
  std::condition_variable m_wake;
  bool m_stop = false;
  std::map<const void*, Entry> m_conns;
  std::map<std::string, int> m_peers;
  std::thread m_watchdog;
};

// Poco's HTTP connections, each registered with the guard for its life.
class GuardedConnectionFactory final : public Poco::Net::TCPServerConnectionFactory {
 public:
  GuardedConnectionFactory(ConnectionGuard& guard, Poco::Net::HTTPServerParams::Ptr params,
                           Poco::Net::HTTPRequestHandlerFactory::Ptr handlers)
      : m_guard(guard), m_params(std::move(params)), m_handlers(std::move(handlers)) {}
  Poco::Net::TCPServerConnection* createConnection(const Poco::Net::StreamSocket& socket) override;

 private:
  ConnectionGuard& m_guard;
  Poco::Net::HTTPServerParams::Ptr m_params;
  Poco::Net::HTTPRequestHandlerFactory::Ptr m_handlers;
};

}  // namespace fleetsign::cli
