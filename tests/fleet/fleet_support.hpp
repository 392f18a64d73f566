// What the fleet tests share: JSON output parsed into an object, and a free TCP port for a broker.
#pragma once

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "enrollment_support.hpp"
#include "registry_backend.hpp"

namespace fleetsign::testing {

inline Poco::JSON::Object::Ptr json(const std::string& text) {
  return Poco::JSON::Parser().parse(text).extract<Poco::JSON::Object::Ptr>();
}

// A loopback port nobody listens on right now.
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// A home with what a fleet test starts from: root "root" proven to the registry, intermediate
// "factory-1" under it, group "fleet" trusting the root, and the broker set up on `port` with
// fleetsign's plugin (not started). `init`: the init command (another PKCS#11 module, …).
inline void init_fleet_home(const Binary& bin, const std::filesystem::path& dir, int port,
                            const std::string& plugin, const std::string& init = "init") {
  const std::string pop = quoted((dir / "pop.pem").string());
  bin.ok(init + test::init_registry_suffix());
  bin.ok("ca create-root --name root --subject /CN=Fleet-Root");
  bin.ok(
      "ca create-intermediate --name factory-1 --issuer root --days 3650 "
      "--subject /CN=Factory-1");
  bin.ok("ca verification-cert --ca root --code POP --out " + pop);
  bin.ok("ca verify root --code POP --cert " + pop);
  bin.ok("enrollment group create fleet --ca root");
  bin.ok("broker init --port " + std::to_string(port) + " --plugin " + quoted(plugin) +
         " --host localhost");
}

}  // namespace fleetsign::testing
