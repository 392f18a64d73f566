// The broker's CRL file (HOME/broker/crl.pem, mosquitto's `crlfile`). mosquitto checks the CRL of
// a device certificate's issuer (X509_V_FLAG_CRL_CHECK): a device whose issuer has no CRL in the
// file is refused, and a file that does not load leaves the broker with *no* CRL at all
// (design.md). So a bundle is installed only when every CRL in it was checked, and only when it
// covers every issuer of client certificates; otherwise the file is removed and the config has no
// crlfile (the plugin's admission decision refuses revoked certificates either way). Not
// thread-safe; one process at a time (the CLI).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "fleetsign/broker/broker_home.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/engine/x509.hpp"

namespace fleetsign::broker {

// One CA's CRL offered for installation.
struct CrlCandidate {
  engine::CaRecord ca;  // the CA that signed it (its certificate checks the signature)
  engine::Der der;
};

struct CrlInstall {
  bool enabled = false;    // crl.pem is installed: the broker checks revocation through it
  bool changed = false;    // the file was written or removed
  std::size_t crls = 0;    // CRLs in the installed file
  std::string off_reason;  // when not enabled: why (a CA without a CRL, a self-signed device…)
};

// Checks every candidate (parse, signature with its CA's key, issuer = CA subject, AKI = CA's SKI,
// thisUpdate not in the future, nextUpdate after `now`) and refuses one whose CRL number is lower
// than the installed file's for the same issuer; then writes crl.pem atomically (temp + fsync +
// rename) when `complete`, or removes it otherwise (`off_reason` says why). Throws
// Error(kCrlInvalid) naming the CA and the cause, or kIo; the installed file is then untouched.
CrlInstall install_crl_bundle(const BrokerHome& home, const std::vector<CrlCandidate>& crls,
                              bool complete, const std::string& off_reason, std::int64_t now);

// The registry's bundle: the latest CRL of every CA. Complete when every CA's key is in the token
// and has a CRL, and no individual enrollment holds a self-signed certificate (nobody can sign a
// CRL for those). Then install_crl_bundle.
CrlInstall install_registry_crls(const BrokerHome& home, engine::Stores& stores, std::int64_t now);

// What the running mosquitto read: HOME/broker/crl.pem.loaded holds the SHA-256 of the CRL file it
// last read (written by Supervisor::start and after each reload), or kNoCrlFile when it was
// started with no crlfile in its config: mosquitto reads a crlfile named by a reload only at its
// next start, so then nothing but a restart makes it check revocation through the file.
inline constexpr std::string_view kNoCrlFile = "no-crlfile";
std::filesystem::path crl_loaded_path(const BrokerHome& home);
// The SHA-256 (hex) of the installed crl.pem, or kNoCrlFile when the config names none.
std::string installed_crl_marker(const BrokerHome& home);
// The marker as written (empty when missing: a broker started before markers existed).
std::string read_crl_marker(const BrokerHome& home);
void write_crl_marker(const BrokerHome& home, const std::string& marker);

}  // namespace fleetsign::broker
