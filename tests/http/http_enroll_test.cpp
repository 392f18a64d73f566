// `fleetsign serve --http` from outside: operators, EST enrollment, the auth check, refusals and
// uploads cut short (the fixture: http_fixture.hpp).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <ctime>
#include <thread>

#include "fleetsign/engine/registry.hpp"
#include "http_fixture.hpp"
#include "registry_backend.hpp"

namespace fleetsign::http_test {
namespace {

namespace fs = std::filesystem;
using Poco::JSON::Object;
using testing::json;
using testing::quoted;

TEST_F(Http, OperatorAddChecksItsInputAndWritesAProtectedPkcs12) {
  const std::string pw = " --pfx-password-file " + quoted(path("p12pass"));
  const auto bad = [&](const std::string& args, const std::string& code) {
    const auto r = bin->run("operator add " + args + " --json");
    EXPECT_NE(r.status, 0) << args;
    EXPECT_NE(r.out.find("\"" + code + "\""), std::string::npos) << args << ": " << r.out;
  };
  bad("'../evil' --role operator --out " + quoted(path("e.p12")) + pw, "invalid_argument");
  bad("erin --role factory --out " + quoted(path("e.p12")) + pw, "invalid_argument");
  bad("erin --role auditor --group fleet --out " + quoted(path("e.p12")) + pw, "invalid_argument");
  bad("erin --role factory --group nosuch --out " + quoted(path("e.p12")) + pw, "not_found");
  bad("erin --role root --out " + quoted(path("e.p12")) + pw, "usage");
  bad("alice --role operator --out " + quoted(path("e.p12")) + pw, "already_exists");
  bad("erin --role operator --out " + quoted((home / "e.p12").string()) + pw, "invalid_argument");
  std::ofstream(path("empty-pass")).flush();
  bad("erin --role operator --out " + quoted(path("e.p12")) + " --pfx-password-file " +
          quoted(path("empty-pass")),
      "invalid_argument");
  EXPECT_FALSE(fs::exists(path("e.p12")));

  // The credential: the key, the certificate (CN = name, clientAuth) and the chain, under the
  // password; the registry knows its SHA-256 and role.
  const auto added =
      json(bin->ok("operator add erin --role auditor --json --out " + quoted(path("erin.p12")) + pw)
               .out);
  EXPECT_EQ(fs::status(path("erin.p12")).permissions() & fs::perms::group_all, fs::perms::none);
  int rc = -1;
  const std::string dump =
      shell("openssl pkcs12 -in " + quoted(path("erin.p12")) + " -passin pass:" + kP12Password +
                " -nodes 2>/dev/null | openssl x509 -noout -subject -ext extendedKeyUsage",
            &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(dump.find("CN = erin"), std::string::npos) << dump;
  EXPECT_NE(dump.find("TLS Web Client Authentication"), std::string::npos) << dump;
  const std::string wrong = shell("openssl pkcs12 -in " + quoted(path("erin.p12")) +
                                      " -passin pass:wrong -nokeys 2>&1 >/dev/null",
                                  &rc);
  EXPECT_NE(rc, 0) << wrong;
  const auto listed = json(bin->ok("operator list --json").out)->getArray("operators");
  bool found = false;
  for (std::size_t i = 0; i < listed->size(); ++i) {
    const auto op = listed->getObject(i);
    if (op->getValue<std::string>("name") != "erin") continue;
    found = true;
    EXPECT_EQ(op->getValue<std::string>("role"), "auditor");
    EXPECT_EQ(op->getValue<std::string>("sha256"), added->getValue<std::string>("sha256"));
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(get("/api/v1/whoami", "erin").status, 200);
  // The operator CA's key is in the token like every CA's: not exportable.
  EXPECT_NE(bin->ok("ca show operators --json").out.find("pkcs11:"), std::string::npos);
}

TEST_F(Http, EstReenrollmentIssuesIntoTheFreeSlotForTheDeviceItself) {
  bin->ok(
      "issue --ca int1 --generate 2 --id-pattern 'est-{02}' --lot EST-L1 --pfx "
      "--pfx-password-file " +
      quoted(path("p12pass")) + " --out " + quoted(path("estout")));
  fs::copy_file(path("estout/est-01.pfx"), path("est1.p12"), fs::copy_options::overwrite_existing);
  // A CSR (new key) as RFC 7030 wants it: base64 DER PKCS#10.
  const auto csr = [&](const std::string& cn, const std::string& key) {
    const std::string b64 = path(cn + ".b64");
    shell("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " +
          quoted(key) + " -subj /CN=" + cn + " -outform DER 2>/dev/null | openssl base64 > " +
          quoted(b64));
    return "-H 'Content-Type: application/pkcs10' --data-binary @" + quoted(b64);
  };
  const std::string mine = csr("est-01", path("est1-new.key"));
  EXPECT_EQ(call("POST", "/.well-known/est/simplereenroll", "", mine).status, 401);
  EXPECT_EQ(call("POST", "/.well-known/est/simplereenroll", "alice", mine).status, 403);
  const Reply other =
      call("POST", "/.well-known/est/simplereenroll", "est1", csr("est-02", path("est2-new.key")));
  EXPECT_EQ(other.status, 400) << other.body;
  EXPECT_EQ(call("POST", "/.well-known/est/other/simplereenroll", "est1", mine).status, 403);
  EXPECT_EQ(call("POST", "/.well-known/est/simplereenroll", "est1",
                 "-H 'Content-Type: application/pkcs10' --data-binary 'not base64!'")
                .status,
            400);
  // Base64 of nothing, of bytes that are no CSR, and another media type: refused, named.
  for (const char* body : {"====", "AAAA"}) {
    const Reply bad =
        call("POST", "/.well-known/est/simplereenroll", "est1",
             std::string("-H 'Content-Type: application/pkcs10' --data-binary ") + body);
    EXPECT_EQ(bad.status, 400) << body << ": " << bad.body;
    EXPECT_EQ(error_code(bad), "csr_malformed") << bad.body;
  }
  const Reply text =
      call("POST", "/.well-known/est/simplereenroll", "est1",
           "-H 'Content-Type: text/plain' --data-binary @" + quoted(path("est-01.b64")));
  EXPECT_EQ(text.status, 415) << text.body;
  const std::string factory_serial = json(bin->ok("device show est-01 --json").out)
                                         ->getObject("primary")
                                         ->getValue<std::string>("serial");

  const Reply r = call("POST", "/.well-known/est/fleet/simplereenroll", "est1", mine);
  ASSERT_EQ(r.status, 200) << r.body;
  std::ofstream(path("new.b64")) << r.body;
  int rc = -1;
  shell("openssl base64 -d -in " + quoted(path("new.b64")) +
            " | openssl pkcs7 -inform DER -print_certs -out " + quoted(path("new.pem")),
        &rc);
  ASSERT_EQ(rc, 0);
  const std::string subject =
      shell("openssl x509 -in " + quoted(path("new.pem")) + " -noout -subject -issuer");
  EXPECT_NE(subject.find("CN = est-01"), std::string::npos) << subject;
  EXPECT_NE(subject.find("Http-Int1"), std::string::npos) << subject;
  // Recorded, in the device's free slot, beside the one it holds.
  const auto device = json(bin->ok("device show est-01 --json").out);
  ASSERT_TRUE(device->getObject("primary") && device->getObject("secondary"))
      << bin->ok("device show est-01 --json").out;
  EXPECT_NE(device->getObject("primary")->getValue<std::string>("serial"),
            device->getObject("secondary")->getValue<std::string>("serial"));
  EXPECT_EQ(device->getValue<std::string>("lot"), "EST-L1");  // a recall of the lot finds it
  const std::string first_new = device->getObject("secondary")->getValue<std::string>("serial");

  // The new certificate is a working credential: it re-enrolls in turn (with a new key).
  const std::string again = csr("est-01", path("est1-newer.key"));
  int crc = -1;
  const auto enroll_again = [&](const std::string& out) {
    return shell("curl -sS -o " + quoted(path(out)) + " -w '%{http_code}' --cacert " +
                     quoted(path("operators.pem")) + " --cert " + quoted(path("new.pem")) +
                     " --key " + quoted(path("est1-new.key")) + " " + again +
                     " https://localhost:" + std::to_string(port) + "/.well-known/est/simpleenroll",
                 &crc);
  };
  EXPECT_EQ(enroll_again("again.b64"), "200");
  // Both slots were held: the one the device did not present (the factory's) was retired and
  // revoked as superseded; the new certificate took it, beside the one the device used.
  const auto after = json(bin->ok("device show est-01 --json").out);
  EXPECT_EQ(after->getObject("secondary")->getValue<std::string>("serial"), first_new);
  const std::string second_new = after->getObject("primary")->getValue<std::string>("serial");
  EXPECT_NE(second_new, factory_serial);
  EXPECT_EQ(sql("SELECT state || ' ' || revocation_reason FROM certificates WHERE serial = '" +
                factory_serial + "'"),
            "revoked superseded\n");
  // The same request again is answered with the same certificate: nothing is issued twice.
  const std::string issued_before =
      sql("SELECT COUNT(*) FROM certificates WHERE device_id = 'est-01'");
  EXPECT_EQ(enroll_again("again2.b64"), "200");
  EXPECT_EQ(testing::read_file(path("again2.b64")), testing::read_file(path("again.b64")));
  EXPECT_EQ(sql("SELECT COUNT(*) FROM certificates WHERE device_id = 'est-01'"), issued_before);
  // EST's certificates are single issues in the metrics, not a batch's.
  const Reply m = get("/metrics", "bob");
  EXPECT_NE(m.body.find("fleetsign_certificates_issued_total{ca=\"int1\",mode=\"single\"}"),
            std::string::npos)
      << m.body;
  // Its own key again is refused (a rotation needs a new key pair).
  shell("openssl req -new -key " + quoted(path("est1-new.key")) +
        " -subj /CN=est-01 -outform DER 2>/dev/null | openssl base64 > " +
        quoted(path("same.b64")));
  const std::string same =
      shell("curl -sS -o /dev/null -w '%{http_code}' --cacert " + quoted(path("operators.pem")) +
            " --cert " + quoted(path("new.pem")) + " --key " + quoted(path("est1-new.key")) +
            " -H 'Content-Type: application/pkcs10' --data-binary @" + quoted(path("same.b64")) +
            " https://localhost:" + std::to_string(port) + "/.well-known/est/simpleenroll");
  EXPECT_EQ(same, "422");
}

// A device pinned by an incident (rotation methods only) may not rotate itself over EST: its
// incident job does that, and a certificate made outside the job would pass for a replacement.
TEST_F(Http, APinnedDeviceCannotReenrollOverEst) {
  bin->ok(
      "issue --ca int1 --generate 1 --id-pattern 'pin-{02}' --lot EST-PIN --pfx "
      "--pfx-password-file " +
      quoted(path("p12pass")) + " --out " + quoted(path("pinout")));
  fs::copy_file(path("pinout/pin-01.pfx"), path("pin1.p12"), fs::copy_options::overwrite_existing);
  {
    auto reg = engine::Registry::open(test::home_registry_location(home));
    engine::Incident i;
    i.scope_kind = "lot";
    i.scope = "EST-PIN";
    i.reason = "affiliationChanged";
    i.opened_at = std::time(nullptr);
    i.compromised_at = i.opened_at + 3600;
    reg->open_incident(i);
  }
  shell("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " +
        quoted(path("pin1-new.key")) + " -subj /CN=pin-01 -outform DER 2>/dev/null | " +
        "openssl base64 > " + quoted(path("pin1.b64")));
  const Reply r =
      call("POST", "/.well-known/est/simplereenroll", "pin1",
           "-H 'Content-Type: application/pkcs10' --data-binary @" + quoted(path("pin1.b64")));
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_NE(r.body.find("incident"), std::string::npos) << r.body;
  EXPECT_EQ(count_certs("device_id = 'pin-01'"), 1);
}

// A CA made while the service runs (a CA rollover's, an incident's replacement): its devices'
// certificates pass TLS without sending the chain, within a moment, without a restart.
TEST_F(Http, ClientCertificatesOfACaMadeAfterTheStartPassTls) {
  bin->ok("ca create-intermediate --name late-ca --issuer root --subject /CN=Http-Late");
  bin->ok("issue --ca late-ca --generate 1 --id-pattern 'late-{02}' --out " + quoted(path("late")));
  std::string code;
  for (int i = 0; i < 50 && code != "204"; ++i) {
    if (i > 0) ::usleep(100000);
    code =
        shell("curl -sS -o /dev/null -w '%{http_code}' --cacert " + quoted(path("operators.pem")) +
              " --cert " + quoted(path("late/late-01_cert.pem")) + " --key " +
              quoted(path("late/late-01_key.pem")) + " https://localhost:" + std::to_string(port) +
              "/.well-known/est/csrattrs 2>/dev/null");
  }
  EXPECT_EQ(code, "204") << "the leaf of a CA made after the start still fails TLS";
}

// Slow clients (slowloris) cannot freeze the service: one address holds at most half the
// threads, and a request head that trickles in is cut at its deadline (10 s). The attackers come
// from 127.0.0.2, the honest client from 127.0.0.1.
TEST_F(Http, TricklingConnectionsAreCutAndOneAddressHoldsHalfTheThreads) {
  std::vector<int> socks;
  for (int i = 0; i < 16; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in from{};
    from.sin_family = AF_INET;
    ::inet_pton(AF_INET, "127.0.0.2", &from.sin_addr);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from), 0);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to), 0);
    socks.push_back(fd);
  }
  // Closed by the server: recv sees the end (or a reset) without blocking.
  const auto closed = [](int fd) {
    char c = 0;
    const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
  };
  // A TLS record that announces a 512-byte ClientHello, then its body one byte at a time: every
  // byte is valid so far, so only the deadline can end it.
  bool head_sent = false;
  const auto trickle = [&] {
    static const unsigned char kHead[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC};
    static const unsigned char kBody = 0x03;
    for (int fd : socks) {
      if (head_sent) {
        (void)::send(fd, &kBody, 1, MSG_NOSIGNAL);
      } else {
        (void)::send(fd, kHead, sizeof kHead, MSG_NOSIGNAL);
      }
    }
    head_sent = true;
  };
  const auto started = std::chrono::steady_clock::now();
  trickle();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  int refused = 0;
  for (int fd : socks) refused += closed(fd) ? 1 : 0;
  EXPECT_GE(refused, 8) << "one address held more than half of the 16 threads";
  // The service answers others meanwhile.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(get("/healthz").status, 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  // Trickled bytes keep each read alive, but not the head's deadline.
  bool all_closed = false;
  while (!all_closed && std::chrono::steady_clock::now() - started < std::chrono::seconds(20)) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    trickle();
    all_closed = true;
    for (int fd : socks) all_closed = all_closed && closed(fd);
  }
  const auto took = std::chrono::steady_clock::now() - started;
  for (int fd : socks) ::close(fd);
  EXPECT_TRUE(all_closed) << "a trickling connection outlived 20 s";
  EXPECT_GE(took, std::chrono::seconds(9)) << "cut before its deadline";
}

TEST_F(Http, AuthCheckOverHttpGivesTheClisAnswer) {
  bin->ok("issue --ca int1 --generate 1 --id-pattern 'ac-{02}' --out " + quoted(path("acout")));
  const std::string chain = path("acout/ac-01_fullchain.pem");
  const auto compare = [&](const std::string& file, const std::string& at) {
    const auto cli =
        json(bin->run("auth check --chain " + quoted(file) + " --at " + at + " --json").out);
    const Reply http =
        call("POST", "/api/v1/auth/check?at=" + at, "bob", "--data-binary @" + quoted(file));
    ASSERT_EQ(http.status, 200) << http.body;
    const auto o = json(http.body);
    for (const char* field :
         {"rule", "reason", "registration_id", "enrollment", "slot", "serial", "sha256", "at"}) {
      EXPECT_EQ(o->getValue<std::string>(field), cli->getValue<std::string>(field)) << field;
    }
    EXPECT_EQ(o->getValue<bool>("allowed"), cli->getValue<bool>("allowed"));
  };
  compare(chain, "2027-01-01");
  EXPECT_TRUE(
      json(call("POST", "/api/v1/auth/check", "bob", "--data-binary @" + quoted(chain)).body)
          ->getValue<bool>("allowed"));
  compare(chain, "2040-01-01");  // expired by then: refused, for the same reason
  // The decision follows the registry: disabled groups refuse at once.
  bin->ok("enrollment group disable fleet");
  bin->ok("enrollment group disable other");
  EXPECT_FALSE(
      json(call("POST", "/api/v1/auth/check", "bob", "--data-binary @" + quoted(chain)).body)
          ->getValue<bool>("allowed"));
  bin->ok("enrollment group enable fleet");
  bin->ok("enrollment group enable other");
  EXPECT_TRUE(
      json(call("POST", "/api/v1/auth/check", "bob", "--data-binary @" + quoted(chain)).body)
          ->getValue<bool>("allowed"));
  std::ofstream(path("junk.pem"))
      << "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  const Reply junk =
      call("POST", "/api/v1/auth/check", "bob", "--data-binary @" + quoted(path("junk.pem")));
  EXPECT_EQ(junk.status, 422) << junk.body;
  EXPECT_EQ(error_code(junk), "certificate_malformed");
  EXPECT_EQ(
      call("POST", "/api/v1/auth/check?at=yesterday", "bob", "--data-binary @" + quoted(chain))
          .status,
      400);
  EXPECT_EQ(call("POST", "/api/v1/auth/check", "", "--data-binary @" + quoted(chain)).status, 401);
}

TEST_F(Http, ABatchKeyReusedWithAnotherRequestIsRefusedAndTheServerDecidesItsThreads) {
  std::ofstream(path("k1.pem")) << engine::pem(testing::csr_der("kb-1"), "CERTIFICATE REQUEST");
  std::ofstream(path("k2.pem")) << engine::pem(testing::csr_der("kb-2"), "CERTIFICATE REQUEST");
  const auto upload = [&](const std::string& file, const std::string& query) {
    return call("POST", "/api/v1/batches?" + query, "alice",
                "-H 'Idempotency-Key: kb' --data-binary @" + quoted(path(file)));
  };
  ASSERT_EQ(upload("k1.pem", "ca=int1&lot=KB").status, 201);
  const Reply other_body = upload("k2.pem", "ca=int1&lot=KB");
  EXPECT_EQ(other_body.status, 400) << other_body.body;
  EXPECT_EQ(upload("k1.pem", "ca=int1&lot=KB-2").status, 400);
  EXPECT_EQ(count_certs("device_id = 'kb-2'"), 0);
  const Reply same = upload("k1.pem", "ca=int1&lot=KB");
  EXPECT_EQ(same.status, 201) << same.body;
  EXPECT_EQ(count_certs("device_id = 'kb-1'"), 1);
  // Threads are the service's business, not a caller's.
  const Reply threads = call("POST", "/api/v1/batches?ca=int1&threads=2147483647", "alice",
                             "--data-binary @" + quoted(path("k2.pem")));
  EXPECT_EQ(threads.status, 400) << threads.body;
  // No upload is left behind by a refused or finished batch.
  std::size_t left = 0;
  std::error_code ec;
  for ([[maybe_unused]] const auto& f : fs::directory_iterator(data / "uploads", ec)) ++left;
  EXPECT_EQ(left, 0u);
}

TEST_F(Http, RefusedRequestsAreAuditedAndAnswerWithTheirReason) {
  const Reply bad = post_json("/api/v1/revocations", "alice", R"({"nosuch":"x"})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(sql("SELECT detail FROM audit WHERE action = 'http.request' AND subject = 'alice'")
                .find("\"status\":400"),
            std::string::npos);
  const Reply utf = get("/api/v1/devices?lot=%FF%FE", "alice");
  EXPECT_EQ(utf.status, 400) << utf.body;
  const std::string head = shell("curl -sS -i --cacert " + quoted(path("operators.pem")) +
                                 " https://localhost:" + std::to_string(port) + "/api/v1/cas");
  EXPECT_NE(head.find("401 Unauthorized"), std::string::npos) << head;
  // Anonymous refusals cannot grow the registry: at most one audit row a second for them.
  const auto anonymous_rows = [&] {
    return std::stoll(
        sql("SELECT COUNT(*) FROM audit WHERE action = 'http.request' AND detail "
            "LIKE '%\"cert_sha256\":\"\"%'"));
  };
  const long long rows_before = anonymous_rows();
  const auto started = std::chrono::steady_clock::now();
  std::string many;
  for (int i = 0; i < 30; ++i) {
    many += " https://localhost:" + std::to_string(port) + "/api/v1/revocations";
  }
  shell("curl -sS -o /dev/null -X POST --cacert " + quoted(path("operators.pem")) + many);
  const auto seconds =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started)
          .count();
  const long long added = anonymous_rows() - rows_before;
  EXPECT_GE(added, 0);
  EXPECT_LE(added, seconds + 2) << "30 anonymous requests in " << seconds << " s";
}

TEST_F(Http, OperatorCertificatesCanNeverBeDeviceIdentities) {
  const std::string pw = " --pfx-password-file " + quoted(path("p12pass"));
  // int1 sits in group fleet's slot: its certificates are devices, not operators.
  const auto r = bin->run("operator add mallory --role auditor --ca int1 --json --out " +
                          quoted(path("m.p12")) + pw);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("invalid_argument"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(path("m.p12")));
  // …and no group may trust the operators' chain.
  const auto g = bin->run("enrollment group create staff --ca operators --json");
  EXPECT_NE(g.status, 0);
  EXPECT_NE(g.out.find("invalid_argument"), std::string::npos) << g.out;
  EXPECT_NE(
      bin->run("operator add anonymous --role auditor --out " + quoted(path("a.p12")) + pw).status,
      0);
}

TEST_F(Http, ChildrenGetNoDescriptorBeyondTheirStandardStreams) {
  // A descriptor of ours without close-on-exec (as Poco's sockets are): the child must not see it.
  const int fd = ::dup(STDERR_FILENO);
  ASSERT_GT(fd, 2);
  cli::ChildSpec spec;
  spec.program = "/bin/sh";
  spec.args = {"-c", "ls /proc/self/fd"};
  const cli::ChildResult r = cli::run_child(spec);
  ::close(fd);
  EXPECT_EQ(r.exit_status, 0);
  std::istringstream in(r.out);
  std::set<std::string> fds;
  for (std::string line; std::getline(in, line);) fds.insert(line);
  // 0-2, and the directory `ls` itself opens.
  EXPECT_LE(fds.size(), 4u) << r.out;
  EXPECT_EQ(fds.count(std::to_string(fd)), fd > 3 ? 0u : fds.count(std::to_string(fd)));
}

TEST_F(Http, AnUploadCutShortIssuesNothingAndItsRetryIssuesOnce) {
  // alice's key and certificate as PEM, for openssl s_client.
  shell("openssl pkcs12 -in " + quoted(path("alice.p12")) + " -passin pass:" + kP12Password +
        " -nodes -out " + quoted(path("alice-all.pem")) + " 2>/dev/null");
  const std::string csr = engine::pem(testing::csr_der("cut-1"), "CERTIFICATE REQUEST");
  std::ofstream(path("cut-full.pem")) << csr;
  // Headers promise 100,000 bytes; the client sends part of one CSR and closes.
  std::ofstream(path("cut-request.txt"))
      << "POST /api/v1/batches?ca=int1 HTTP/1.1\r\nHost: localhost\r\nIdempotency-Key: cut\r\n"
      << "Content-Type: application/x-pem-file\r\nContent-Length: 100000\r\n\r\n"
      << csr.substr(0, csr.size() / 2);
  shell("timeout 30 openssl s_client -connect 127.0.0.1:" + std::to_string(port) + " -cert " +
        quoted(path("alice-all.pem")) + " -key " + quoted(path("alice-all.pem")) +
        " -no_ign_eof < " + quoted(path("cut-request.txt")) + " > /dev/null 2>&1");
  EXPECT_EQ(count_certs("device_id = 'cut-1'"), 0);
  std::size_t left = 0;
  std::error_code ec;
  for ([[maybe_unused]] const auto& f : fs::directory_iterator(data / "uploads", ec)) ++left;
  EXPECT_EQ(left, 0u);
  // The client's retry with the same key and the whole body is a new request, issued once.
  const Reply retry =
      call("POST", "/api/v1/batches?ca=int1", "alice",
           "-H 'Idempotency-Key: cut' --data-binary @" + quoted(path("cut-full.pem")));
  EXPECT_EQ(retry.status, 201) << retry.body;
  EXPECT_EQ(count_certs("device_id = 'cut-1'"), 1);
}

}  // namespace
}  // namespace fleetsign::http_test
