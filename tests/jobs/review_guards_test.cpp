// What an outside review of the rollover jobs and incident runs found holed, over a real registry
// and token: each test fails on the code before its fix.
// - a device that two jobs, planned at the same time, would both rotate;
// - a rotation CSR with a key the device was certified for before (A → B → A);
// - an incident's replacement CA that cannot take the compromised CA's place, and the reason
//   "unspecified";
// - a keyCompromise incident that left the devices' group admitting them at DPS (no disabled
//   individual enrollment, as `revoke` makes);
// - `revoke --key-sha256` of a CA's own key, which blocked the key and left the CA signing;
// - a certificate revoked "superseded", then found compromised: its CRL entry says keyCompromise.
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "enrollment_support.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/issuer.hpp"
#include "fleetsign/engine/job_issue.hpp"
#include "fleetsign/jobs/incident.hpp"
#include "fleetsign/jobs/revocation.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::jobs {
namespace {

// A P-256 CSR for `cn` signed with `key` (DER).
engine::Der csr_with(EVP_PKEY* key, const std::string& cn) {
  X509_REQ* req = X509_REQ_new();
  X509_NAME* name = X509_NAME_new();
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_REQ_set_subject_name(req, name);
  X509_NAME_free(name);
  X509_REQ_set_pubkey(req, key);
  X509_REQ_sign(req, key, EVP_sha256());
  unsigned char* out = nullptr;
  const int n = i2d_X509_REQ(req, &out);
  engine::Der der(out, out + std::max(n, 0));
  OPENSSL_free(out);
  X509_REQ_free(req);
  return der;
}

class ReviewGuards : public ::testing::Test {
 protected:
  testing::TestHome th;

  void SetUp() override {
    th.make_hierarchy();
    engine::EnrollmentService(*th.registry, th.policy, th.clock).create_group("line", "int1", "");
  }
  IncidentRequest incident(const std::string& replacement, const std::string& scope = "int1") {
    IncidentRequest r;
    r.scope_kind = "ca";
    r.scope = scope;
    r.reason = "cACompromise";
    r.replacement_ca = replacement;
    return r;
  }
  std::string plan_error(const IncidentRequest& r) {
    const Error e =
        testing::error_from([&] { plan_incident(*th.registry, th.policy, th.clock, r); });
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    return e.what();
  }
  engine::CaSpec ca(const std::string& name, const std::string& issuer) {
    engine::CaSpec s;
    s.name = name;
    s.issuer = issuer;
    s.subject = "/CN=" + name + "/O=fleetsign tests";
    s.days = 3000;
    return s;
  }
};

TEST_F(ReviewGuards, TwoJobsPlannedAtOnceNeverBothRotateADevice) {
  testing::issue_device(th, "int1", "rg-0001", "LOT-R");
  testing::issue_device(th, "int1", "rg-0002", "LOT-R");
  RolloverParams params;
  params.selection.lot = "LOT-R";
  // Two `rollover start` at the same time: both plans see the devices free.
  const RolloverPlan first = plan_rollover(*th.registry, th.policy, th.clock, params);
  const RolloverPlan second = plan_rollover(*th.registry, th.policy, th.clock, params);
  ASSERT_EQ(second.conflicts, 0);
  const std::string job = create_job(*th.registry, th.clock, params, first);
  const Error e = testing::error_from([&] { create_job(*th.registry, th.clock, params, second); });
  EXPECT_EQ(e.code(), ErrorCode::kAlreadyExists) << e.what();
  EXPECT_NE(std::string(e.what()).find("is in job " + job), std::string::npos) << e.what();
  EXPECT_EQ(th.registry->list_jobs({}).size(), 1u) << "nothing of the second job is recorded";
  // Once the first job has settled them, a new job takes them.
  th.registry->set_job_state(job, "canceled", th.clock.now());
  EXPECT_FALSE(create_job(*th.registry, th.clock, params, second).empty());
}

// `job retry-failed` of a job whose failed device another job took since: not sent again there.
TEST_F(ReviewGuards, RetryFailedLeavesADeviceThatAnotherJobHoldsNow) {
  testing::issue_device(th, "int1", "rt-0001", "LOT-T");
  RolloverParams params;
  params.selection.lot = "LOT-T";
  const std::string first = create_job(*th.registry, th.clock, params,
                                       plan_rollover(*th.registry, th.policy, th.clock, params));
  auto tasks = th.registry->job_tasks(first, "");
  ASSERT_EQ(tasks.size(), 1u);
  tasks[0].state = "timed-out";
  tasks[0].finished_at = th.clock.now();
  th.registry->save_job_tasks(tasks, {});
  th.registry->set_job_state(first, "finished", th.clock.now());
  const std::string second = create_job(*th.registry, th.clock, params,
                                        plan_rollover(*th.registry, th.policy, th.clock, params));
  EXPECT_EQ(retry_failed(*th.registry, th.clock, first, 0), 0);
  const auto after = th.registry->job_tasks(first, "");
  EXPECT_EQ(after[0].state, "timed-out");
  EXPECT_NE(after[0].last_error.find("is in job " + second), std::string::npos)
      << after[0].last_error;
  EXPECT_EQ(th.registry->job_tasks(second, "pending").size(), 1u);
}

TEST_F(ReviewGuards, ARotationCsrWithAKeyTheDeviceHeldBeforeIsRefused) {
  const engine::CaRecord rec = th.cas->get("int1");
  engine::Issuer issuer(rec, th.cas->load_key(rec), th.policy, 365, th.clock, th.random);
  const testing::Pkey a = testing::ec_key(), b = testing::ec_key();
  const std::string dev = "rk-0001";
  const auto sign = [&](const std::string& job, EVP_PKEY* key, const engine::Der& replaced) {
    engine::JobCsr csr{dev, 0, csr_with(key, dev), engine::Lineage{"LOT-K", "", "", ""}, replaced};
    return engine::JobIssuer(*th.registry, job).issue(issuer, std::span(&csr, 1)).front();
  };
  const auto first = sign("job-1", a.get(), {});
  ASSERT_TRUE(first) << first.error().message;
  const auto second = sign("job-2", b.get(), first.value().der);  // A → B
  ASSERT_TRUE(second) << second.error().message;
  const auto back = sign("job-3", a.get(), second.value().der);  // B → A again
  ASSERT_FALSE(back);
  EXPECT_EQ(back.error().code, ErrorCode::kKeyRejected);
  EXPECT_NE(back.error().message.find(first.value().serial), std::string::npos)
      << back.error().message;
}

TEST_F(ReviewGuards, AnIncidentsReplacementMustBeAbleToTakeTheCompromisedCasPlace) {
  engine::CaSpec mid = ca("mid", "root");
  mid.path_len = 1;
  th.cas->create_intermediate(mid);
  engine::CaSpec under = ca("under", "mid");
  under.days = 1000;  // inside mid's 3000 days, made a moment later
  th.cas->create_intermediate(under);
  th.cas->create_intermediate(ca("gone", "root"));
  th.registry->revoke_ca("gone", "superseded", th.clock.now());
  engine::CaSpec other;
  other.name = "other-root";
  other.subject = "/CN=Other Root/O=fleetsign tests";
  th.cas->create_root(other);
  th.cas->create_intermediate(ca("elsewhere", "other-root"));
  th.cas->create_intermediate(ca("sibling", "root"));

  EXPECT_NE(plan_error(incident("under", "mid")).find("under the compromised CA"),
            std::string::npos);
  EXPECT_NE(plan_error(incident("gone")).find("is revoked"), std::string::npos);
  EXPECT_NE(plan_error(incident("other-root")).find("not by 'root'"), std::string::npos);
  EXPECT_NE(plan_error(incident("elsewhere")).find("not by 'root'"), std::string::npos);
  IncidentRequest vague = incident("");
  vague.reason = "unspecified";
  EXPECT_NE(plan_error(vague).find("'unspecified'"), std::string::npos);
  // A working CA of the same issuer is a replacement; nothing above changed the registry.
  const IncidentPlan ok = plan_incident(*th.registry, th.policy, th.clock, incident("sibling"));
  EXPECT_TRUE(ok.replacement_exists);
  EXPECT_EQ(th.registry->list_incidents(false).size(), 0u);
  EXPECT_EQ(th.registry->find_group("line")->primary_ca, "int1");
}

TEST_F(ReviewGuards, AKeyCompromiseIncidentDisablesTheDevicesAtDps) {
  testing::issue_device(th, "int1", "rc-0001", "LOT-K");
  testing::issue_device(th, "int1", "rc-0002", "LOT-K");
  IncidentRequest r;
  r.scope_kind = "lot";
  r.scope = "LOT-K";
  r.reason = "keyCompromise";
  const auto started = start_incident(*th.registry, *th.cas, th.policy, th.clock, r);
  advance_incident(*th.registry, *th.cas, th.policy, th.clock, started.job_id);
  for (const char* id : {"rc-0001", "rc-0002"}) {
    const auto ie = th.registry->find_individual_slots(id);
    ASSERT_TRUE(ie.has_value()) << id << ": the group would still admit its compromised key";
    EXPECT_FALSE(ie->enabled) << id;
  }
}

TEST_F(ReviewGuards, RevokingACasKeyByItsHashNamesTheCaInstead) {
  const std::string key = engine::key_sha256_of_cert(th.cas->get("int1").cert_der);
  RevocationSelector s;
  s.kind = "key-sha256";
  s.value = key;
  const Error e =
      testing::error_from([&] { plan_revocation(*th.registry, th.clock, s, "keyCompromise"); });
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(std::string(e.what()).find("revoke --ca int1"), std::string::npos) << e.what();
  EXPECT_TRUE(th.registry->blocked_key_hashes().empty()) << "nothing blocked";
}

TEST_F(ReviewGuards, ASupersededCertificateFoundCompromisedSaysKeyCompromiseInItsCrl) {
  const std::string serial = testing::issue_device(th, "int1", "rs-0001", "LOT-S");
  const std::string one[] = {serial};
  th.registry->revoke_certs(one, "superseded", th.clock.now());
  const std::string int1 = "int1";
  engine::refresh_crls(*th.registry, *th.cas, th.policy.crl, th.clock, std::span(&int1, 1));
  const auto behind = [&] {
    for (const auto& st : engine::crl_statuses(*th.registry, th.policy.crl, th.clock.now())) {
      if (st.ca_name == "int1") return st.revoked_since;
    }
    return false;
  };
  EXPECT_FALSE(behind());
  RevocationSelector s;
  s.kind = "serial";
  s.value = serial;
  const auto plan = plan_revocation(*th.registry, th.clock, s, "keyCompromise");
  EXPECT_EQ(plan.reason_raised.size(), 1u);
  const auto out = execute_revocation(*th.registry, plan);
  EXPECT_EQ(out.certificates_revoked, 0);
  EXPECT_EQ(out.reasons_raised, 1);
  EXPECT_EQ(out.crls_due, std::vector<std::string>{"int1"});
  for (const auto& r : th.registry->revoked_certs_of("int1")) {
    if (r.serial == serial) EXPECT_EQ(r.reason, "keyCompromise");
  }
  EXPECT_TRUE(behind()) << "the CRL still says superseded: it is behind";
  EXPECT_EQ(th.registry->blocked_key_hashes().size(), 1u);
}

}  // namespace
}  // namespace fleetsign::jobs
