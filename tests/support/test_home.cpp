#include "test_home.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include "registry_backend.hpp"

namespace fleetsign::testing {

namespace fs = std::filesystem;

TempDir::TempDir() {
  std::random_device rd;
  const fs::path base = fs::temp_directory_path();
  for (int i = 0; i < 100; ++i) {
    fs::path p = base / ("fleetsign-test-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
    if (fs::create_directory(p)) {
      m_path = p;
      return;
    }
  }
  std::abort();
}

TempDir::~TempDir() {
  const char* keep = std::getenv("FLEETSIGN_KEEP_TEST_DIRS");
  if (keep == nullptr || std::string(keep) != "1") {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
}

TestHome::TestHome() {
  home_dir = dir.path() / "home";
  // FLEETSIGN_TEST_REGISTRY=postgresql: the registry in a fresh PostgreSQL database.
  const std::string registry_url =
      test::test_registry_is_postgres() ? test::test_registry_location(home_dir) : "";
  home = std::make_unique<engine::Home>(engine::Home::init(
      home_dir, std::nullopt, std::nullopt, hsm::Pin(kSoPin), hsm::Pin(kUserPin), registry_url));
  policy = home->load_policy();
  registry = home->open_registry();
  token = home->open_token(hsm::Pin(kUserPin));
  cas = std::make_unique<engine::CaService>(*registry, *token, policy, clock, random);
}

void TestHome::make_hierarchy() {
  engine::CaSpec root;
  root.name = "root";
  root.subject = "/CN=Test Root CA/O=fleetsign tests";
  cas->create_root(root);
  engine::CaSpec inter;
  inter.name = "int1";
  inter.issuer = "root";
  inter.subject = "/CN=Test Intermediate/O=fleetsign tests";
  inter.days = 3000;
  cas->create_intermediate(inter);
}

int run(const std::string& command, std::string* output) {
  std::FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) {
    return -1;
  }
  std::array<char, 4096> buf{};
  std::string out;
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) {
    out.append(buf.data(), n);
  }
  const int status = pclose(pipe);
  if (output != nullptr) {
    *output = out;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string mosquitto_bin() {
  const char* env = std::getenv("FLEETSIGN_MOSQUITTO");
  return env != nullptr && *env != '\0' ? env : "/usr/sbin/mosquitto";
}

std::string fleetsign_bin() {
  const char* bin = std::getenv("FLEETSIGN_BIN");
  return bin != nullptr ? bin : FLEETSIGN_BIN_PATH;
}

std::string data_dir() {
  const char* d = std::getenv("FLEETSIGN_TEST_DATA");
  return d != nullptr ? d : FLEETSIGN_TEST_DATA_DIR;
}

bool make_csrs(const fs::path& out, std::string* output) {
  return run("bash '" + data_dir() + "/make_csrs.sh' '" + out.string() + "'", output) == 0;
}

X509Ptr parse_der_certificate(const std::vector<std::uint8_t>& der) {
  const unsigned char* p = der.data();
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert || p != der.data() + der.size()) {
    throw std::runtime_error("not exactly one DER certificate (" + std::to_string(der.size()) +
                             " bytes)");
  }
  return cert;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

}  // namespace fleetsign::testing
