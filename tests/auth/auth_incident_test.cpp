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
  void record(const Der& der, const std::string& id) {
    const CertSummary c = summarize_certificate(der);
    CertIntent intent;
    intent.serial = c.serial;
    intent.device_id = id;
    intent.ca_name = "int1";
    intent.subject = c.subject;
    intent.not_before = c.not_before;
    intent.not_after = c.not_after;
    intent.tbs_der = der;
    h.registry->record_intents(std::span<const CertIntent>(&intent, 1));
    const IssuedCert issued{c.serial, der, c.sha1, c.sha256};
    h.registry->record_issued(std::span<const IssuedCert>(&issued, 1));
  }
  std::int64_t open(std::int64_t compromised_at) {
    Incident i;
    i.scope_kind = "ca";
    i.scope = "int1";
    i.reason = "cACompromise";
    i.compromised_at = compromised_at;
    return h.registry->open_incident(i);
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

TEST_F(IncidentDecisions, OneOpenIncidentPerScope) {
  open(now);
  EXPECT_THROW(open(now), Error);
}

}  // namespace
}  // namespace fleetsign::engine
