#include "fault_env.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace fleetsign::faulttest {

namespace fs = std::filesystem;

FaultEnv::FaultEnv() {
  fs::create_directories(dir() / "tokens");
  testing::write_file(dir() / "softhsm2.conf",
                      "directories.tokendir = " + (dir() / "tokens").string() +
                          "\nobjectstore.backend = file\nlog.level = ERROR\n"
                          "slots.removable = false\n");
  setenv("SOFTHSM2_CONF", (dir() / "softhsm2.conf").c_str(), 1);
  setenv("FLEETSIGN_FAULT_FILE", (dir() / "schedule").c_str(), 1);
  setenv("FLEETSIGN_P11_FAULT_LOG", (dir() / "injected.log").c_str(), 1);
  unsetenv("FLEETSIGN_P11_FAULT");
  schedule("");
}

FaultEnv::~FaultEnv() {
  unsetenv("FLEETSIGN_FAULT_FILE");
  unsetenv("FLEETSIGN_P11_FAULT_LOG");
}

void FaultEnv::schedule(const std::string& text) const {
  // Written aside and renamed: a reader sees the old schedule or the new, never half of one.
  const fs::path tmp = dir() / "schedule.tmp";
  testing::write_file(tmp, text);
  fs::rename(tmp, dir() / "schedule");
}

std::vector<std::string> FaultEnv::injected() const {
  std::vector<std::string> lines;
  std::ifstream in(dir() / "injected.log");
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

void FaultEnv::clear_log() const { fs::remove(dir() / "injected.log"); }

std::size_t FaultEnv::injected_count(const std::string& what) const {
  std::size_t n = 0;
  for (const auto& line : injected()) n += line.find(what) != std::string::npos ? 1 : 0;
  return n;
}

}  // namespace fleetsign::faulttest
