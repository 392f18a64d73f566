// One descriptor per client, not three.
//
// libmosquitto 2.0's mosquitto_new() opens a socket pair per client for its threaded mode
// (mosquitto_loop_start), and writes a byte into it on every publish. The fleet never uses that
// mode: it drives every client from its own epoll loop. The pair costs two descriptors per device
// (30,000 for 10,000 devices, over this machine's hard limit of 20,000, which an unprivileged
// container cannot raise) and a write(2) per publish. libmosquitto runs without the pair when it
// cannot open it ("Unable to open socket pair" is a warning; every use checks for
// INVALID_SOCKET), so this file makes socketpair(2) fail, with EMFILE, exactly while the fleet's
// thread is inside mosquitto_new(). Every other call (other threads, other clients, the rest of
// the program) goes to the system call unchanged.
//
// How: the executable defines `socketpair`, which the dynamic linker binds libmosquitto's
// reference to (an executable's definitions come first in the global lookup scope).
#include <errno.h>
#include <mosquitto.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "client.hpp"

namespace {
thread_local bool t_refuse_socketpair = false;
}  // namespace

extern "C" int socketpair(int domain, int type, int protocol, int sv[2]) {
  if (t_refuse_socketpair) {
    errno = EMFILE;
    return -1;
  }
  return static_cast<int>(::syscall(SYS_socketpair, domain, type, protocol, sv));
}

namespace fleetsign::device {

mosquitto* new_mosquitto_client(const char* id, bool clean_session, void* userdata) {
  t_refuse_socketpair = true;
  mosquitto* mosq = mosquitto_new(id, clean_session, userdata);
  t_refuse_socketpair = false;
  return mosq;
}

}  // namespace fleetsign::device
