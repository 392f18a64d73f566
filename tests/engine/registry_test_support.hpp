// What the registry tests share (registry_test.cpp, registry_issuance_test.cpp): a temporary
// registry (SQLite, or PostgreSQL on the pg.* run), a raw connection, and record builders.
#pragma once

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_backend.hpp"

namespace fleetsign::engine::regtest {

namespace fs = std::filesystem;

constexpr std::int64_t kNow = 1'700'000'000;
constexpr std::int64_t kYear = 365 * 24 * 3600;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "registry_test.XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    m_path = pattern;
  }
  TempDir(const TempDir&) = delete;  // owns the directory
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(m_path, ignored);
  }
  // The registry under test: this directory's SQLite file, or (FLEETSIGN_TEST_REGISTRY=postgresql)
  // one fresh PostgreSQL database per TempDir.
  fs::path db() const {
    if (m_location.empty()) m_location = test::test_registry_location(m_path / "registry.db");
    return m_location;
  }

 private:
  fs::path m_path;
  mutable std::string m_location;
};

// A second, independent connection: proves what is on disk, not what the Registry caches.
inline Poco::Data::Session raw_session(const fs::path& file) {
  Poco::Data::SQLite::Connector::registerConnector();
  return Poco::Data::Session("SQLite", file.string());
}

template <typename F>
ErrorCode code_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return ErrorCode::kOk;
}

inline std::string serial_of(int n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "7F%014X", n);
  return buf;
}

inline CertIntent intent(int n, const std::string& batch = "b1", const std::string& device = "") {
  CertIntent i;
  i.serial = serial_of(n);
  i.device_id = device.empty() ? "dev-" + std::to_string(n) : device;
  i.ca_name = "issuing";
  i.batch_id = batch;
  i.seq = n;
  i.subject = "CN=" + i.device_id;
  i.not_before = kNow;
  i.not_after = kNow + kYear;
  i.tbs_der = {0x30, 0x01, static_cast<std::uint8_t>(n)};
  i.lineage = {"lot-7", "line-2", "site-a", "alice"};
  return i;
}

inline IssuedCert issued(int n) {
  return {serial_of(n),
          {0x30, 0x82, static_cast<std::uint8_t>(n), 0xFF},
          "AA" + std::to_string(n),
          "BB" + std::to_string(n)};
}

inline CaRecord ca(const std::string& name, const std::string& parent, std::int64_t created_at) {
  CaRecord c;
  c.name = name;
  c.parent = parent;
  c.subject = "CN=" + name;
  c.key_uri = "pkcs11:token=fleet;object=" + name;
  c.key_type = "ec-p256";
  c.cert_der = {0x30, 0x03, 0x01, 0x02, 0x03};
  c.not_before = kNow;
  c.not_after = kNow + 10 * kYear;
  c.sha1 = "SHA1" + name;
  c.sha256 = "SHA256" + name;
  c.created_at = created_at;
  return c;
}

}  // namespace fleetsign::engine::regtest
