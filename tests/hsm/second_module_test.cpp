// The token and CA layers against a second PKCS#11 implementation, so that "any PKCS#11 module"
// stays true (issue 7, hole 15). CI points these tests at Debian's opencryptoki soft token
// (ci/opencryptoki.sh) through three variables; without them every test here is skipped:
//   FLEETSIGN_TEST_MODULE       the module (.so)
//   FLEETSIGN_TEST_TOKEN_LABEL  an existing, initialised token that these tests may add keys to
//   FLEETSIGN_TEST_PIN_FILE     its user PIN
// The tests adopt the token (never initialise it), make only the key types it offers, and destroy
// every key they made. `openssl verify -x509_strict` checks the chains.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "fleetsign/engine/home.hpp"
#include "fleetsign/error.hpp"
#include "fleetsign/hsm/pin.hpp"
#include "fleetsign/hsm/token.hpp"
#include "test_home.hpp"

namespace fleetsign {
namespace {

namespace fs = std::filesystem;
using testing::error_from;

constexpr unsigned long kCkrAttributeSensitive = 0x11;

struct SecondModule {
  std::string module;
  std::string label;
  std::string pin_file;
};

std::optional<SecondModule> second_module() {
  const char* module = std::getenv("FLEETSIGN_TEST_MODULE");
  const char* label = std::getenv("FLEETSIGN_TEST_TOKEN_LABEL");
  const char* pin = std::getenv("FLEETSIGN_TEST_PIN_FILE");
  if (module == nullptr || label == nullptr || pin == nullptr) {
    return std::nullopt;
  }
  return SecondModule{module, label, pin};
}

std::string shell_quoted(const std::string& s) { return "'" + s + "'"; }

class OnSecondModule : public ::testing::Test {
 protected:
  testing::TempDir dir;
  fs::path home = dir.path() / "home";
  SecondModule m;

  void SetUp() override {
    auto found = second_module();
    if (!found) {
      GTEST_SKIP() << "FLEETSIGN_TEST_MODULE, FLEETSIGN_TEST_TOKEN_LABEL, FLEETSIGN_TEST_PIN_FILE "
                      "not set (ci/opencryptoki.sh sets them up)";
    }
    m = *found;
  }

  // Every CA key these tests made in the shared token goes again.
  void TearDown() override {
    if (!fs::exists(home / "fleetsign.json")) {
      return;
    }
    auto registry = engine::Home::open(home).open_registry();
    for (const auto& ca : registry->list_cas()) {
      if (!ca.key_uri.empty()) {
        token().destroy_key(hsm::KeyRef::parse_uri(ca.key_uri));
      }
    }
  }

  int fleetsign(const std::string& args, std::string* out = nullptr) const {
    return testing::run("env -u FLEETSIGN_SO_PIN FLEETSIGN_PIN=\"$(head -n1 " +
                            shell_quoted(m.pin_file) + ")\" " +
                            shell_quoted(testing::fleetsign_bin()) + " --home " +
                            shell_quoted(home.string()) + " " + args + " </dev/null",
                        out);
  }
  std::string path(const std::string& name) const { return (dir.path() / name).string(); }
  void adopt() {
    std::string out;
    ASSERT_EQ(fleetsign("init --json --module " + shell_quoted(m.module) + " --token-label " +
                            shell_quoted(m.label),
                        &out),
              0)
        << out;
    ASSERT_NE(out.find("\"adopted_token\":true"), std::string::npos) << out;
  }
  // One Token for the whole test process: opencryptoki 3.8 crashes (in its TPM token library)
  // when a process initialises the module a second time after finalising it. fleetsign itself
  // opens the module once per process.
  hsm::Token& token() const {
    static std::unique_ptr<hsm::Token> shared =
        hsm::Token::open({m.module, m.label}, hsm::Pin::from_file(m.pin_file));
    return *shared;
  }
};

// The strongest RSA type the token offers (opencryptoki's soft token has no EC).
hsm::KeyType rsa_type(const hsm::Token& token) {
  for (const auto t : token.key_types()) {
    if (t == hsm::KeyType::kRsa2048) {
      return t;
    }
  }
  return token.key_types().at(0);
}

TEST_F(OnSecondModule, GeneratedKeysAreSensitiveNeverExtractableAndSignFromEightThreads) {
  hsm::Token* token = &this->token();
  ASSERT_FALSE(token->key_types().empty());
  const hsm::KeyRef ref = token->generate_key(rsa_type(*token), "fleetsign second-module test");
  EXPECT_TRUE(token->protection(ref).protected_ok());
  EXPECT_EQ(token->try_read_private_value(ref), kCkrAttributeSensitive);
  const hsm::SigningKey& key = token->key(ref);
  std::atomic<int> verified{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        std::vector<std::uint8_t> digest(32, static_cast<std::uint8_t>(t * 16 + i)), sig;
        std::string error;
        if (!key.sign_digest(digest, NID_sha256, sig, error)) {
          return;
        }
        const unsigned char* p = key.spki_der().data();
        EVP_PKEY* pub = d2i_PUBKEY(nullptr, &p, static_cast<long>(key.spki_der().size()));
        EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(pub, nullptr);
        if (EVP_PKEY_verify_init(ctx) == 1 &&
            EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1 &&
            EVP_PKEY_verify(ctx, sig.data(), sig.size(), digest.data(), digest.size()) == 1) {
          ++verified;
        }
        EVP_PKEY_CTX_free(ctx);
        EVP_PKEY_free(pub);
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  EXPECT_EQ(verified.load(), 40);
  token->destroy_key(ref);
  EXPECT_EQ(error_from([&] { token->protection(ref); }).code(), ErrorCode::kKeyNotFound);
}

TEST_F(OnSecondModule, AKeyTypeTheTokenLacksIsMechanismUnsupportedNamingWhatItOffers) {
  hsm::Token* token = &this->token();
  for (const auto type : {hsm::KeyType::kEcP256, hsm::KeyType::kEcP384, hsm::KeyType::kRsa2048,
                          hsm::KeyType::kRsa3072, hsm::KeyType::kRsa4096}) {
    const auto& offered = token->key_types();
    if (std::find(offered.begin(), offered.end(), type) != offered.end()) {
      continue;
    }
    SCOPED_TRACE(std::string(hsm::key_type_name(type)));
    const Error e = error_from([&] { token->generate_key(type, "must not exist"); });
    EXPECT_EQ(e.code(), ErrorCode::kMechanismUnsupported) << e.what();
    EXPECT_NE(std::string(e.what()).find(std::string(hsm::key_type_name(offered.at(0)))),
              std::string::npos)
        << e.what();
  }
}

TEST_F(OnSecondModule, UnknownLabelIsTokenNotFoundListingTheTokenThere) {
  std::string out;
  EXPECT_EQ(
      fleetsign("init --json --module " + shell_quoted(m.module) + " --token-label 'no such token'",
                &out),
      4)
      << out;
  EXPECT_NE(out.find("token_not_found"), std::string::npos) << out;
  EXPECT_NE(out.find("'" + m.label + "'"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(home / "fleetsign.json"));
}

TEST_F(OnSecondModule, AdoptedTokenMakesAnRsaHierarchyWhoseLeavesOpensslVerifies) {
  adopt();
  std::string out;
  const std::string key = std::string(hsm::key_type_name(rsa_type(token())));
  ASSERT_EQ(fleetsign("ca create-root --name root --key " + key + " --subject " +
                          shell_quoted("/CN=Second Module Root/O=fleetsign tests"),
                      &out),
            0)
      << out;
  ASSERT_EQ(fleetsign("ca create-intermediate --name int --issuer root --key " + key +
                          " --days 3000 --subject " +
                          shell_quoted("/CN=Second Module Intermediate/O=fleetsign tests"),
                      &out),
            0)
      << out;
  // The intermediate has pathLen 0: a CA under it is refused before a key is made.
  EXPECT_EQ(fleetsign("ca create-intermediate --json --name sub --issuer int --key " + key +
                          " --days 2000 --subject /CN=Sub",
                      &out),
            2)
      << out;
  EXPECT_NE(out.find("ca_constraint"), std::string::npos) << out;
  // A key type the token lacks is refused naming what it offers.
  const auto& offered = token().key_types();
  if (std::find(offered.begin(), offered.end(), hsm::KeyType::kEcP256) == offered.end()) {
    EXPECT_EQ(fleetsign("ca create-root --json --name ec --key ec-p256 --subject /CN=EC", &out), 4)
        << out;
    EXPECT_NE(out.find("mechanism_unsupported"), std::string::npos) << out;
    EXPECT_NE(out.find(key), std::string::npos) << out;
  }
  ASSERT_TRUE(testing::make_csrs(dir.path() / "csrs"));
  ASSERT_EQ(
      fleetsign("issue --ca int --csr " + path("csrs/good_p256.csr") + " --out " + path("out"),
                &out),
      0)
      << out;
  ASSERT_EQ(fleetsign("ca export root --out " + path("root.pem"), &out), 0) << out;
  EXPECT_EQ(
      testing::run("openssl verify -x509_strict -purpose sslclient -CAfile " + path("root.pem") +
                       " -untrusted " + path("out/good-p256_fullchain.pem") + " " +
                       path("out/good-p256_cert.pem"),
                   &out),
      0)
      << out;
}

}  // namespace
}  // namespace fleetsign
