// The fixture of the live fleet tests (rollover, incident, revocation under a broker): a home set
// up by init_fleet_home, fleetsign's broker (Debian's mosquitto + the plugin, TLS client
// authentication) started on a free port, and fleets of the real device agent
// (fleetsign-device), one process per lot, keeping their slots in a flash directory.
// A test target that includes it defines FLEETSIGN_PLUGIN_PATH and links the device test support.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "device_fixture.hpp"
#include "enrollment_support.hpp"
#include "fleet_support.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "registry_backend.hpp"

namespace fleetsign::testing {

// The leaf's SHA-256 (upper-case hex) of a PEM chain file.
inline std::string leaf_sha256(const std::filesystem::path& chain) {
  const auto certs = engine::read_certificates(chain);
  return certs.empty() ? std::string() : engine::thumbprint_sha256(certs.front());
}

// The slot a device's flash runs ("primary" | "secondary").
inline std::string active_slot(const std::filesystem::path& flash, const std::string& id) {
  return json(read_file(flash / id / "slot.json"))->getValue<std::string>("active");
}

class LiveFleet : public ::testing::Test {
 protected:
  TempDir dir;
  std::filesystem::path home = dir.path() / "home";
  Binary bin{home};
  int port = free_port();
  std::vector<std::unique_ptr<Agent>> agents;

  // The command that makes the home (another PKCS#11 module: "init --module …").
  virtual std::string init_command() const { return "init"; }
  // Runs after the home is set up and before the broker starts (groups of the test's own).
  virtual void prepare() {}

  void SetUp() override {
    init_fleet_home(bin, dir.path(), port, FLEETSIGN_PLUGIN_PATH, init_command());
    prepare();
    bin.ok("broker start");
  }
  void TearDown() override {
    for (auto& a : agents) a->stop(SIGTERM);
    bin.run("broker stop");
  }

  std::string path(const std::string& name) const { return (dir.path() / name).string(); }

  std::string issue_extra;  // more `issue` options (e.g. "--site S"), separated by spaces

  // Issues `count` devices "{prefix}-NNNN" of lot `lot` under factory-1 into path(lot).
  void issue(const std::string& lot, const std::string& prefix, int count) {
    bin.ok("issue --ca factory-1 --generate " + std::to_string(count) + " --id-pattern '" + prefix +
           "-{04}' --lot " + lot + " " + issue_extra + " --out " + quoted(path(lot)));
  }

  // Issues them and runs them as one agent process with its flash in path(lot + "-flash");
  // `extra`: more agent options, separated by spaces.
  Agent& fleet(const std::string& lot, const std::string& prefix, int count,
               const std::string& extra = "") {
    issue(lot, prefix, count);
    std::vector<std::string> args = {"--broker", "localhost:" + std::to_string(port),
                                     "--trust",  (home / "broker" / "ca.pem").string(),
                                     "--dir",    path(lot),
                                     "--state",  path(lot + "-flash")};
    std::istringstream words(extra);
    for (std::string w; words >> w;) args.push_back(w);
    std::filesystem::create_directories(path(lot + "-agent"));
    agents.push_back(std::make_unique<Agent>(path(lot + "-agent"), args));
    return *agents.back();
  }

  // Connected device → the SHA-256 of the certificate the broker saw (`device list --connected`).
  std::map<std::string, std::string> connected() {
    std::map<std::string, std::string> out;
    const auto arr = json(bin.ok("device list --connected --json").out)->getArray("connected");
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const auto s = arr->getObject(i);
      out[s->getValue<std::string>("device_id")] = s->getValue<std::string>("cert_sha256");
    }
    return out;
  }

  // Waits until `want` devices of the prefix are connected (or, when want < 0, until the count
  // stops growing); returns the count.
  int wait_connected(const std::string& prefix, int want, int seconds = 90) {
    int last = -1, stable = 0;
    for (int i = 0; i < seconds * 5; ++i) {
      int n = 0;
      for (const auto& s : connected()) n += s.first.rfind(prefix + "-", 0) == 0 ? 1 : 0;
      if (n == want) return n;
      stable = n == last ? stable + 1 : 0;
      last = n;
      if (want < 0 && n > 0 && stable >= 15) return n;
      ::usleep(200000);
    }
    return last;
  }

  std::unique_ptr<engine::Registry> registry() {
    return engine::Registry::open(test::home_registry_location(home));
  }

  // Every done device of a job: its registry slots hold only the job's certificate, the job issued
  // it exactly one certificate, its flash runs that certificate, and the broker saw it connect
  // with it. Returns how many devices were done.
  int check_done_devices(const std::string& job, const std::string& lot, bool want_primary) {
    auto reg = registry();
    std::map<std::string, int> issued_by_job;
    for (const auto& c : reg->batch_issued_after(job, -1)) ++issued_by_job[c.device_id];
    const auto sessions = connected();
    int done = 0;
    for (const auto& t : reg->job_tasks(job, "done")) {
      ++done;
      SCOPED_TRACE(t.device_id);
      EXPECT_EQ(issued_by_job[t.device_id], 1);
      const auto d = reg->find_device(t.device_id);
      EXPECT_TRUE(d.has_value());
      if (!d) continue;
      EXPECT_EQ(want_primary ? d->primary_serial : d->secondary_serial, t.new_serial);
      EXPECT_EQ(want_primary ? d->secondary_serial : d->primary_serial, "");
      const std::filesystem::path flash = path(lot + "-flash");
      const std::string slot = active_slot(flash, t.device_id);
      EXPECT_EQ(leaf_sha256(flash / t.device_id / (slot + ".chain.pem")), t.new_sha256);
      const auto s = sessions.find(t.device_id);
      EXPECT_TRUE(s != sessions.end() && s->second == t.new_sha256);
    }
    for (const auto& [device, n] : issued_by_job) EXPECT_LE(n, 1) << device;
    return done;
  }
};

}  // namespace fleetsign::testing
