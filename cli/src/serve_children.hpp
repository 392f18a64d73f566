// `serve`'s children (cmd_serve.cpp): each a `fleetsign --home HOME ...` process known by a
// label ("job ID", "crl", "shares"), started with the PIN in its environment (never in argv) and a
// status channel on its descriptor 3, on which it names the error that ended it (run.cpp). A PIN
// the token refuses (or a token gone) stops all further children; any other failure is the
// child's own.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "fleetsign/hsm/pin.hpp"

namespace fleetsign::cli {

class ServeChildren final {
 public:
  ServeChildren(std::filesystem::path self, std::filesystem::path home,
                std::function<void(const std::string&)> log)
      : m_self(std::move(self)), m_home(std::move(home)), m_log(std::move(log)) {}
  ServeChildren(const ServeChildren&) = delete;  // owns its children
  ServeChildren& operator=(const ServeChildren&) = delete;

  // Runs `fleetsign --home HOME ARGS` as a child known by `label`; a failure to start is logged.
  void spawn(const std::string& label, const std::vector<std::string>& args, const hsm::Pin& pin);
  // Reaps children that exited; blocks until all have when `all`.
  void reap(bool all);
  void stop_all();  // SIGTERM to each, then waits for them
  bool has(const std::string& label) const;
  bool any() const { return !m_children.empty(); }
  bool token_failed() const { return m_token_failed; }

 private:
  std::string take_status(pid_t pid);  // the error a child reported, "" when none

  std::filesystem::path m_self, m_home;
  std::function<void(const std::string&)> m_log;
  std::map<pid_t, std::string> m_children;  // pid → label
  std::map<pid_t, int> m_status;            // pid → the read end of its status channel
  bool m_token_failed = false;
};

}  // namespace fleetsign::cli
