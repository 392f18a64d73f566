// fuzz_chain: the input side of the authentication decision. What `fleetsign auth check` reads
// (a chain file through read_certificates), what the broker hands the decision (the leaf TLS
// presented, as DER, without the CLI's OpenSSL parse first) and the broker's admission of a
// CONNECT (client id, username, leaf). The decision runs against a small SQLite registry made in
// LLVMFuzzerInitialize, in a temporary directory:
//   root (P-256, verified) ─ int (P-256: the fast path's precomputed verifier) in enabled group g1
//                          ─ int384 (P-384: the generic verify) in enabled group g2, with an open
//                            cACompromise incident (its leaves go through the pinning rules)
//   individual enrollments dev-ind (enabled, a thumbprint nothing matches) and dev-off (disabled)
// CA keys are deterministic (fuzz_keys.hpp), so checked-in leaves signed by them verify in every
// run; FLEETSIGN_FUZZ_SEEDS_OUT writes such leaves as seeds.
//
// Input: mode (1 byte, mod 3), the decision time (8 bytes, big-endian unix seconds, taken modulo
// year 10000), then
//   0  a chain file's text (PEM, or one DER certificate), as auth check reads it
//   1  up to 4 DER certificates, each with a 2-byte big-endian length: the leaf first
//   2  a CONNECT: client id (1 length byte + bytes), username (same), then the leaf's DER
//
// Invariants: the fast path and OpenSSL's X509_verify_cert (force_openssl) agree on allowed, on
// rotation-only, and on the rule of an admission (auth.hpp: "two paths give the same answers"); an
// allowed decision names a leaf whose CN passes the device-ID check; an admitted hub device is the
// certificate's CN, the client id and the username's device at once. The decision never throws for
// hostile bytes.
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "admission.hpp"
#include "config.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "fuzz_file.hpp"
#include "fuzz_input.hpp"
#include "fuzz_keys.hpp"

namespace {

using namespace fleetsign;
using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;

constexpr std::int64_t kCaFrom = 1577836800;     // 2020-01-01
constexpr std::int64_t kCaUntil = 2208988800;    // 2040-01-01
constexpr std::int64_t kLeafFrom = 1704067200;   // 2024-01-01
constexpr std::int64_t kLeafUntil = 1893456000;  // 2030-01-01
constexpr std::int64_t kSeedAt = 1748736000;     // 2025-06-01
constexpr std::int64_t kYear10000 = 253402300800;

struct Spec {
  std::vector<std::string> cns;
  EVP_PKEY* key = nullptr;         // the subject's key
  X509* issuer = nullptr;          // null: self-signed
  EVP_PKEY* issuer_key = nullptr;  // null: `key`
  long serial = 1;
  std::int64_t from = kLeafFrom, until = kLeafUntil;
  std::vector<std::pair<int, std::string>> extensions;  // by NID, openssl's config syntax
  bool unknown_critical = false;
};

X509Ptr make_cert(const Spec& s) {
  X509Ptr cert(X509_new(), &X509_free);
  X509_NAME* name = X509_NAME_new();
  for (const auto& cn : s.cns) {
    X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  }
  bool ok = X509_set_version(cert.get(), 2) == 1 &&
            ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), s.serial) == 1 &&
            X509_set_subject_name(cert.get(), name) == 1 &&
            X509_set_issuer_name(
                cert.get(), s.issuer != nullptr ? X509_get_subject_name(s.issuer) : name) == 1 &&
            ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(s.from)) &&
            ASN1_TIME_set(X509_getm_notAfter(cert.get()), static_cast<time_t>(s.until)) &&
            X509_set_pubkey(cert.get(), s.key) == 1;
  X509_NAME_free(name);
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, s.issuer != nullptr ? s.issuer : cert.get(), cert.get(), nullptr, nullptr,
                 0);
  for (const auto& [nid, value] : s.extensions) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    ok = ok && ext != nullptr && X509_add_ext(cert.get(), ext, -1) == 1;
    X509_EXTENSION_free(ext);
  }
  if (s.unknown_critical) {
    ASN1_OBJECT* oid = OBJ_txt2obj("1.3.6.1.4.1.99999.1", 1);
    ASN1_OCTET_STRING* value = ASN1_OCTET_STRING_new();
    const unsigned char null_der[] = {0x05, 0x00};
    ok = ok && oid != nullptr && value != nullptr && ASN1_OCTET_STRING_set(value, null_der, 2);
    X509_EXTENSION* ext = X509_EXTENSION_create_by_OBJ(nullptr, oid, 1, value);
    ok = ok && ext != nullptr && X509_add_ext(cert.get(), ext, -1) == 1;
    X509_EXTENSION_free(ext);
    ASN1_OBJECT_free(oid);
    ASN1_OCTET_STRING_free(value);
  }
  EVP_PKEY* signer = s.issuer_key != nullptr ? s.issuer_key : s.key;
  const EVP_MD* md = EVP_PKEY_get_bits(signer) > 256 ? EVP_sha384() : EVP_sha256();
  if (!ok || X509_sign(cert.get(), signer, md) <= 0) fuzz::violated("cannot make a certificate");
  return cert;
}

engine::Der der_of(X509* cert) {
  unsigned char* buf = nullptr;
  const int len = i2d_X509(cert, &buf);
  engine::Der out(buf, buf + (len > 0 ? len : 0));
  OPENSSL_free(buf);
  return out;
}

const std::vector<std::pair<int, std::string>> kCaExtensions = {
    {NID_basic_constraints, "critical,CA:TRUE"},
    {NID_key_usage, "critical,keyCertSign,cRLSign"},
    {NID_subject_key_identifier, "hash"},
    // X509_STRICT (the Authenticator's check of each CA path) wants an AKI below the root.
    {NID_authority_key_identifier, "keyid:always"}};
const std::vector<std::pair<int, std::string>> kLeafExtensions = {
    {NID_basic_constraints, "critical,CA:FALSE"},
    {NID_key_usage, "critical,digitalSignature"},
    {NID_ext_key_usage, "clientAuth"},
    {NID_authority_key_identifier, "keyid"}};

struct World {
  std::filesystem::path dir;
  EVP_PKEY* root_key = fuzz::deterministic_pkey(NID_X9_62_prime256v1, "fleetsign fuzz root");
  EVP_PKEY* int_key = fuzz::deterministic_pkey(NID_X9_62_prime256v1, "fleetsign fuzz int");
  EVP_PKEY* int384_key = fuzz::deterministic_pkey(NID_secp384r1, "fleetsign fuzz int384");
  EVP_PKEY* leaf_key = fuzz::deterministic_pkey(NID_X9_62_prime256v1, "fleetsign fuzz leaf");
  X509Ptr root{nullptr, &X509_free}, inter{nullptr, &X509_free}, inter384{nullptr, &X509_free};
  std::unique_ptr<engine::Registry> registry;
  std::unique_ptr<engine::Authenticator> auth;
  broker::BrokerConfig config;

  World() {
    root =
        make_cert({{"Fuzz Root"}, root_key, nullptr, nullptr, 1, kCaFrom, kCaUntil, kCaExtensions});
    inter = make_cert(
        {{"Fuzz Int"}, int_key, root.get(), root_key, 2, kCaFrom, kCaUntil, kCaExtensions});
    inter384 = make_cert(
        {{"Fuzz Int 384"}, int384_key, root.get(), root_key, 3, kCaFrom, kCaUntil, kCaExtensions});
    dir = std::filesystem::temp_directory_path() /
          ("fleetsign-fuzz-chain-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    engine::RegistryOptions options;
    options.now = [] { return kCaFrom; };
    registry = engine::Registry::open(dir / "registry.db", options);
    add_ca("root", "", root.get(), "ec-p256", true);
    add_ca("int", "root", inter.get(), "ec-p256", false);
    add_ca("int384", "root", inter384.get(), "ec-p384", false);
    registry->save_group({"g1", true, "int", ""}, "create", true);
    registry->save_group({"g2", true, "int384", ""}, "create", true);
    registry->save_individual({"dev-ind", true, {}, {}, std::string(64, 'A'), ""}, "create", true);
    registry->save_individual({"dev-off", false, {}, {}, std::string(64, 'B'), ""}, "create", true);
    engine::Incident incident;
    incident.scope_kind = "ca";
    incident.scope = "int384";
    incident.reason = "cACompromise";
    incident.compromised_at = 1735689600;  // 2025-01-01
    incident.opened_at = 1738368000;       // 2025-02-01
    registry->open_incident(incident);
    auth = std::make_unique<engine::Authenticator>(*registry);
    config.hosts = {"hub.example"};
    config.id_scope = "0ne00FUZZ";
    config.service_sha256 = {std::string(64, 'C')};
  }
  ~World() {
    auth.reset();
    registry.reset();
    for (EVP_PKEY* k : {root_key, int_key, int384_key, leaf_key}) EVP_PKEY_free(k);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  void add_ca(const std::string& name, const std::string& parent, X509* cert,
              const std::string& key_type, bool verified) {
    engine::CaRecord rec;
    rec.name = name;
    rec.parent = parent;
    rec.subject = "/CN=" + name;
    rec.key_uri = "pkcs11:token=fuzz;object=" + name;
    rec.key_type = key_type;
    rec.cert_der = der_of(cert);
    rec.not_before = kCaFrom;
    rec.not_after = kCaUntil;
    rec.sha1 = engine::thumbprint_sha1(rec.cert_der);
    rec.sha256 = engine::thumbprint_sha256(rec.cert_der);
    rec.verified = verified;
    rec.created_at = kCaFrom;
    registry->add_ca(rec);
  }
};

World& world() {
  static World w;
  return w;
}

// --- seeds -----------------------------------------------------------------------------------

void put_time(engine::Der& out, std::int64_t t) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(t >> (8 * i)));
}

void put_field(engine::Der& out, const engine::Der& der) {
  out.push_back(static_cast<std::uint8_t>(der.size() >> 8));
  out.push_back(static_cast<std::uint8_t>(der.size()));
  out.insert(out.end(), der.begin(), der.end());
}

void write_seeds() {
  if (fuzz::seeds_out() == nullptr) return;
  World& w = world();
  const auto leaf_ext = kLeafExtensions;
  auto with = [&](std::vector<std::pair<int, std::string>> ext, int nid, std::string value) {
    for (auto& e : ext) {
      if (e.first == nid) e.second = std::move(value);
    }
    return ext;
  };
  struct Seed {
    std::string name;
    Spec spec;
  };
  EVP_PKEY* lk = w.leaf_key;
  const std::vector<Seed> seeds = {
      {"good", {{"dev-1"}, lk, w.inter.get(), w.int_key, 100, kLeafFrom, kLeafUntil, leaf_ext}},
      {"by-int384",
       {{"dev-2"}, lk, w.inter384.get(), w.int384_key, 101, kLeafFrom, kLeafUntil, leaf_ext}},
      {"leaf-is-ca",
       {{"dev-3"},
        lk,
        w.inter.get(),
        w.int_key,
        102,
        kLeafFrom,
        kLeafUntil,
        with(leaf_ext, NID_basic_constraints, "critical,CA:TRUE")}},
      {"server-eku",
       {{"dev-4"},
        lk,
        w.inter.get(),
        w.int_key,
        103,
        kLeafFrom,
        kLeafUntil,
        with(leaf_ext, NID_ext_key_usage, "serverAuth")}},
      {"unknown-critical",
       {{"dev-5"}, lk, w.inter.get(), w.int_key, 104, kLeafFrom, kLeafUntil, leaf_ext, true}},
      {"expired", {{"dev-6"}, lk, w.inter.get(), w.int_key, 105, kLeafFrom, kSeedAt - 1, leaf_ext}},
      {"individual",
       {{"dev-ind"}, lk, w.inter.get(), w.int_key, 106, kLeafFrom, kLeafUntil, leaf_ext}},
      {"individual-off",
       {{"dev-off"}, lk, w.inter.get(), w.int_key, 107, kLeafFrom, kLeafUntil, leaf_ext}},
      {"two-cn",
       {{"dev-7", "dev-8"}, lk, w.inter.get(), w.int_key, 108, kLeafFrom, kLeafUntil, leaf_ext}},
      {"self-signed", {{"dev-9"}, lk, nullptr, nullptr, 109, kLeafFrom, kLeafUntil, leaf_ext}},
      {"bad-id",
       {{"dev 10/../x"}, lk, w.inter.get(), w.int_key, 110, kLeafFrom, kLeafUntil, leaf_ext}},
  };
  const engine::Der inter = der_of(w.inter.get()), root = der_of(w.root.get());
  for (const auto& s : seeds) {
    const engine::Der leaf = der_of(make_cert(s.spec).get());
    engine::Der pem_seed{0};
    put_time(pem_seed, kSeedAt);
    std::string text = engine::pem(leaf, "CERTIFICATE") + engine::pem(inter, "CERTIFICATE");
    pem_seed.insert(pem_seed.end(), text.begin(), text.end());
    fuzz::write_seed("pem-" + s.name, pem_seed);
    engine::Der der_seed{1};
    put_time(der_seed, kSeedAt);
    put_field(der_seed, leaf);
    put_field(der_seed, inter);
    put_field(der_seed, root);
    fuzz::write_seed("der-" + s.name, der_seed);
    const std::string cn = s.spec.cns.front();
    for (const std::string& username :
         {"hub.example/" + cn + "/?api-version=2021-04-12",
          "0ne00FUZZ/registrations/" + cn + "/api-version=2019-03-31"}) {
      engine::Der connect{2};
      put_time(connect, kSeedAt);
      connect.push_back(static_cast<std::uint8_t>(cn.size()));
      connect.insert(connect.end(), cn.begin(), cn.end());
      connect.push_back(static_cast<std::uint8_t>(username.size()));
      connect.insert(connect.end(), username.begin(), username.end());
      connect.insert(connect.end(), leaf.begin(), leaf.end());
      fuzz::write_seed((username[0] == 'h' ? "hub-" : "dps-") + s.name, connect);
    }
  }
}

// --- the checks ------------------------------------------------------------------------------

void decide_both(std::span<const engine::Der> chain, std::int64_t at) {
  World& w = world();
  const auto fast = w.auth->check(chain, at);
  const auto reference = w.auth->check(chain, at, {}, true);
  if (std::getenv("FLEETSIGN_FUZZ_VERBOSE") != nullptr) {  // to read what a reproducer decides
    std::fprintf(stderr, "at %lld: fast path %s (%s); OpenSSL %s (%s)\n",
                 static_cast<long long>(at), fast.rule.c_str(), fast.reason.c_str(),
                 reference.rule.c_str(), reference.reason.c_str());
  }
  // A refusal may be explained differently (a garbled leaf: "chain-invalid" for its signature on
  // the fast path, "no-enrollment" or "chain-malformed" when OpenSSL finds no issuer or cannot
  // parse it); the verdict, and the rule of an admission, must agree.
  const bool same_rule = fast.rule == reference.rule || !fast.allowed;
  if (fast.allowed != reference.allowed || !same_rule ||
      fast.rotation_only != reference.rotation_only) {
    std::fprintf(stderr, "fast path: %s (%s)\nOpenSSL: %s (%s)\n", fast.rule.c_str(),
                 fast.reason.c_str(), reference.rule.c_str(), reference.reason.c_str());
    fuzz::violated("the fast path and OpenSSL's path disagree");
  }
  if (fast.allowed && policy::check_device_id({"._:", 128}, fast.registration_id)) {
    fuzz::violated("a device with an invalid ID was allowed");
  }
}

void chain_file(fuzz::Input& in, std::int64_t at) {
  static fuzz::MemFile file;
  const auto text = in.rest();
  if (text.size() > kChainFileLimit) return;
  std::vector<engine::Der> chain;
  try {
    chain = engine::read_certificates(file.write(text), "chain", kChainFileLimit);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kCertificateMalformed) fuzz::violated("chain: another code");
    return;
  }
  decide_both(chain, at);
}

void der_chain(fuzz::Input& in, std::int64_t at) {
  std::vector<engine::Der> chain;
  while (!in.empty() && chain.size() < 4) {
    const auto der = in.field();
    chain.emplace_back(der.begin(), der.end());
  }
  decide_both(chain, at);
}

void connect(fuzz::Input& in, std::int64_t at) {
  World& w = world();
  const std::string client_id(fuzz::as_text(in.short_field()));
  const std::string username(fuzz::as_text(in.short_field()));
  const auto rest = in.rest();
  const engine::Der leaf(rest.begin(), rest.end());
  // The plugin hands admit the certificate TLS decoded; without one, admit decodes the DER.
  const unsigned char* p = leaf.data();
  std::unique_ptr<X509, decltype(&X509_free)> decoded(
      d2i_X509(nullptr, &p, static_cast<long>(leaf.size())), &X509_free);
  if (decoded && p != leaf.data() + leaf.size()) decoded.reset();  // TLS takes whole DER only
  ERR_clear_error();
  for (const bool in_use : {false, true}) {
    broker::ConnectRequest request{client_id, username, &leaf, at, in_use};
    const broker::Admission a = broker::admit(w.config, *w.auth, request);
    if (decoded) {
      request.leaf_cert = decoded.get();
      const broker::Admission b = broker::admit(w.config, *w.auth, request);
      if (a.allowed != b.allowed || a.rule != b.rule || a.sha256 != b.sha256 ||
          a.device_id != b.device_id) {
        fuzz::violated("the decoded certificate and its DER are admitted differently");
      }
    }
    if (!a.allowed || a.kind == broker::ClientKind::kService) continue;
    if (a.device_id != client_id ||
        policy::check_device_id(w.config.policy.device_id, a.device_id)) {
      fuzz::violated("admitted a device whose CN is not its client id or not a device ID");
    }
    if (a.kind == broker::ClientKind::kHubDevice &&
        broker::hub_username_device(username) != std::optional<std::string_view>(a.device_id)) {
      fuzz::violated("admitted a hub device whose username names another device");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)world();
  write_seeds();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const std::uint8_t mode = in.byte() % 3;
  std::uint64_t t = 0;
  for (int i = 0; i < 8; ++i) t = (t << 8) | in.byte();
  const auto at = static_cast<std::int64_t>(t % static_cast<std::uint64_t>(kYear10000));
  try {
    if (mode == 0) {
      chain_file(in, at);
    } else if (mode == 1) {
      der_chain(in, at);
    } else {
      connect(in, at);
    }
  } catch (const Error& e) {
    fuzz::violated(std::string("the decision threw: ") + e.what());
  }
  return 0;
}
