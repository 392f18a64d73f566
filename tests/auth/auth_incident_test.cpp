// Issue 10 §4 in the authentication decision: an open incident pins the certificates the
// registry recorded (see auth_test.cpp for the rules without an incident).
#include "auth_fixture.hpp"

namespace fleetsign::engine {
namespace {

// Issue 10 §4: an incident pins what the registry recorded. The intermediate's key is stolen, so
// a certificate signed with it (here: in the token, as the attacker holding the key would) proves
// nothing; only the exact recorded certificate from before the compromise is admitted, and only
// for the rotation methods.
class IncidentDecisions : public AuthDecisions {
 protected:
  std::string record(const Der& der, const std::string& id, const std::string& batch = "",
                     const std::string& lot = "") {
    const CertSummary c = summarize_certificate(der);
    CertIntent intent;
    intent.serial = c.serial;
    intent.device_id = id;
    intent.ca_name = "int1";
    intent.batch_id = batch;
    intent.lineage.lot = lot;
    intent.subject = c.subject;
    intent.not_before = c.not_before;
    intent.not_after = c.not_after;
    intent.tbs_der = der;
    h.registry->record_intents(std::span<const CertIntent>(&intent, 1));
    const IssuedCert issued{c.serial, der, c.sha1, c.sha256, {}};
    h.registry->record_issued(std::span<const IssuedCert>(&issued, 1));
    return c.serial;
  }
  std::int64_t open(std::int64_t compromised_at, const std::string& ca = "int1",
                    const std::string& job = "") {
    Incident i;
    i.scope_kind = "ca";
    i.scope = ca;
    i.reason = "cACompromise";
    i.compromised_at = compromised_at;
    i.job_id = job;
    return h.registry->open_incident(i);
  }
  CaRecord intermediate(const std::string& name, const std::string& issuer, int path_len,
                        const std::string& subject, int days = 2000) {
    CaSpec spec;
    spec.name = name;
    spec.issuer = issuer;
    spec.subject = subject;
    spec.days = days;
    spec.path_len = path_len;
    return h.cas->create_intermediate(spec);
  }
};

TEST_F(IncidentDecisions, PinsTheRecordedCertificateAndRefusesForgeriesWithTheStolenKey) {
  verify_ca("root");
  group("fleet", "int1");
  const Der recorded = leaf("int1", "dev-40");
  record(recorded, "dev-40");
  const Der forged_same_id = leaf("int1", "dev-40");  // signed with int1's key, never recorded
  const Der forged_new_id = leaf("int1", "dev-41");
  EXPECT_TRUE(decide({forged_new_id}).allowed) << "before the incident the stolen key suffices";

  const std::int64_t id = open(now + 3600);
  const AuthDecision pinned = decide({recorded, ca("int1").cert_der});
  EXPECT_TRUE(pinned.allowed) << pinned.reason;
  EXPECT_EQ(pinned.rule, "incident-pinned");
  EXPECT_TRUE(pinned.rotation_only);
  for (const Der* forged : {&forged_same_id, &forged_new_id}) {
    const AuthDecision d = decide({*forged, ca("int1").cert_der});
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.rule, "incident-unrecorded") << d.reason;
  }
  // Recorded at or after the operator's compromise time: refused too.
  h.registry->close_incident(id, 0);
  const std::int64_t id2 = open(now - 3600);
  EXPECT_EQ(decide({recorded}).rule, "incident-after-compromise");
  // Closed with the CA marked revoked: nothing under it is admitted any more.
  h.registry->mark_incident_ca_revoked(id2, 0);
  h.registry->close_incident(id2, 0);
  EXPECT_EQ(decide({recorded}).rule, "ca-revoked");
  EXPECT_EQ(decide({forged_new_id}).rule, "ca-revoked");
  EXPECT_EQ(h.registry->list_incidents(true).size(), 0u);
  EXPECT_EQ(h.registry->list_incidents(false).size(), 2u);
  EXPECT_THROW(h.registry->mark_incident_ca_revoked(99, 0), Error);
}

// A lot's incident pins the lot's certificates but not its own replacements (the lot's CA is not
// compromised). Certificates are recorded to the second: one recorded in the second the incident
// opened may predate it, so it is pinned, and revoked when the incident closes; the job's own
// replacement from that second is neither (by time alone, the first passed with no pin at all,
// and stayed valid after the close).
TEST_F(IncidentDecisions, ALotIncidentTellsItsReplacementsByItsJobNotByTheSecond) {
  verify_ca("root");
  group("fleet", "int1");
  const Der other_lot = leaf("int1", "lot-0");
  const std::string other_serial = record(other_lot, "lot-0", "factory-7", "LOT-R");
  // The lot's certificate and the job's replacement, recorded in one second (tried again when a
  // second ends between them).
  Der old_cert, replacement;
  std::string old_serial, replacement_serial;
  std::int64_t recorded = 0;
  for (int n = 1; n <= 3; ++n) {
    const std::string id = "lot-" + std::to_string(n);
    old_cert = leaf("int1", id);
    old_serial = record(old_cert, id, "factory-7", "LOT-Q");
    replacement = leaf("int1", id);
    replacement_serial = record(replacement, id, "job-q", "LOT-Q");
    recorded = h.registry->find_cert(old_serial)->created_at;
    if (h.registry->find_cert(replacement_serial)->created_at == recorded) break;
    h.registry->revoke_certs(std::vector<std::string>{old_serial, replacement_serial}, "superseded",
                             0);
  }
  ASSERT_EQ(h.registry->find_cert(replacement_serial)->created_at, recorded);
  Incident i;
  i.scope_kind = "lot";
  i.scope = "LOT-Q";
  i.reason = "affiliationChanged";
  i.compromised_at = recorded + 1;
  i.opened_at = recorded;  // the same second
  i.job_id = "job-q";
  const std::int64_t id = h.registry->open_incident(i);

  const AuthDecision pinned = decide({old_cert});
  EXPECT_TRUE(pinned.allowed) << pinned.reason;
  EXPECT_EQ(pinned.rule, "incident-pinned") << pinned.reason;
  EXPECT_TRUE(pinned.rotation_only);
  for (const Der* usual : std::initializer_list<const Der*>{&replacement, &other_lot}) {
    const AuthDecision d = decide({*usual});
    EXPECT_TRUE(d.allowed) << d.reason;
    EXPECT_NE(d.rule, "incident-pinned") << d.reason;
    EXPECT_FALSE(d.rotation_only);
  }
  // What the close revokes: the lot's certificates until the second it opened, less the job's.
  EXPECT_EQ(h.registry->issued_serials_in_scope("lot", "LOT-Q", "job-q", recorded),
            std::vector<std::string>{old_serial});
  EXPECT_EQ(h.registry->issued_serials_in_scope("lot", "LOT-Q", "job-q", recorded - 1).size(), 0u);
  EXPECT_EQ(h.registry->issued_serials_in_scope("lot", "LOT-Q", "", INT64_MAX).size(), 2u);
  EXPECT_EQ(h.registry->issued_serials_in_scope("lot", "LOT-R", "job-q", recorded),
            std::vector<std::string>{other_serial});
  // Recorded after the second an incident opened (here one that opened a second earlier, for
  // another job): a replacement the operator made, admitted as usual.
  h.registry->close_incident(id, 0);
  i.opened_at = recorded - 1;
  i.compromised_at = recorded - 1;
  i.job_id = "job-q2";
  h.registry->open_incident(i);
  const AuthDecision later = decide({old_cert});
  EXPECT_TRUE(later.allowed) << later.reason;
  EXPECT_NE(later.rule, "incident-pinned") << later.reason;
}

// A pin admits the recorded certificate, but the operator's own word still counts: a revocation
// during the incident, a disabled individual enrollment, and a disabled group (here the one that
// took the replacement into the slot the compromised CA left) each refuse the device.
TEST_F(IncidentDecisions, APinDoesNotLiftTheOperatorsRefusals) {
  verify_ca("root");
  const Der a = leaf("int1", "dev-50");
  const Der b = leaf("int1", "dev-51");
  record(a, "dev-50");
  const std::string b_serial = record(b, "dev-51");
  intermediate("int1-r", "root", 0, "/CN=Test Intermediate/OU=incident");
  JobRecord job;
  job.id = "roll-20261129-120000-aaaaaa";
  job.kind = "incident";
  job.params_json = "{}";
  job.report_json = R"({"scope":"int1","replacements":[{"ca":"int1","replacement":"int1-r"}]})";
  h.registry->create_job(job, {});
  open(now + 3600, "int1", job.id);
  group("fleet", "int1-r");  // the compromised CA left the slot; its replacement holds it
  const auto set_enabled = [&](bool enabled) {
    h.registry->save_group(EnrollmentGroup{"fleet", enabled, "int1-r", "", 0, 0}, "test.group",
                           false);
  };

  EXPECT_EQ(decide({a}).rule, "incident-pinned");
  set_enabled(false);
  const AuthDecision disabled_group = decide({a});
  EXPECT_FALSE(disabled_group.allowed);
  EXPECT_EQ(disabled_group.rule, "group-disabled") << disabled_group.reason;
  // An individual enrollment wins over the groups, as without an incident: enabled, it admits
  // the pinned device in a disabled group; disabled, it refuses it in an enabled one.
  individual("dev-50", thumbprint_sha256(a), "");
  EXPECT_EQ(decide({a}).rule, "incident-pinned");
  set_enabled(true);
  EXPECT_EQ(decide({a}).rule, "incident-pinned");
  IndividualEnrollment ie = *h.registry->find_individual("dev-50");
  ie.enabled = false;
  h.registry->save_individual(ie, "test.individual", false);
  const AuthDecision disabled_individual = decide({a});
  EXPECT_FALSE(disabled_individual.allowed);
  EXPECT_EQ(disabled_individual.rule, "individual-disabled") << disabled_individual.reason;

  // `revoke --device dev-51 --reason cACompromise` while the incident is open: cut off.
  EXPECT_EQ(decide({b}).rule, "incident-pinned");
  h.registry->revoke_certs(std::vector<std::string>{b_serial}, "cACompromise", now + 1);
  const AuthDecision revoked = decide({b});
  EXPECT_FALSE(revoked.allowed);
  EXPECT_EQ(revoked.rule, "revoked") << revoked.reason;
}

// A CA with pathLen 1 is compromised: the attacker mints a sub-CA with its key and devices under
// that. A chain given whole (as `auth check` and the HTTP API take it) validates up to the trusted
// root, so the sub-CA must be recognised as one the registry never made.
TEST_F(IncidentDecisions, ASubCaMintedWithTheStolenKeyIsRefused) {
  verify_ca("root");
  group("fleet", "root");
  const CaRecord mid = intermediate("mid", "root", 1, "/CN=Test Mid CA");
  // Shorter-lived than "mid": made in a later second, the same --days would outlive its issuer.
  const CaRecord evil = intermediate("evil", "mid", 0, "/CN=Evil Sub CA", 1000);
  const Der forged = leaf("evil", "dev-60");
  // The attacker's sub-CA is no CA of the registry: made with the stolen key, never recorded.
  test::raw_query(h.registry_path_for_tests(), "DELETE FROM cas WHERE name = 'evil'");
  ASSERT_FALSE(h.registry->find_ca("evil"));
  const std::vector<Der> chain{forged, evil.cert_der, mid.cert_der};
  EXPECT_TRUE(decide(chain).allowed) << "before the incident the chain validates to the root";

  const std::int64_t id = open(now + 3600, "mid");
  const AuthDecision d = decide(chain);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "incident-unrecorded") << d.reason;
  EXPECT_NE(d.reason.find("certificate 2"), std::string::npos) << d.reason;

  h.registry->mark_incident_ca_revoked(id, 0);
  h.registry->close_incident(id, 0);
  EXPECT_EQ(decide(chain).rule, "ca-revoked");
}

TEST_F(IncidentDecisions, OneOpenIncidentPerScope) {
  open(now);
  EXPECT_THROW(open(now), Error);
}

}  // namespace
}  // namespace fleetsign::engine
