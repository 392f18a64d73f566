// The registry's schema, as its migrations. Private to engine/.
#pragma once

#include <array>
#include <string_view>

#include "fleetsign/engine/registry.hpp"

namespace fleetsign::engine {

// Migration N takes the schema from version N to N+1. Append only: a shipped script never changes.
// Types stay portable to PostgreSQL (TEXT, BIGINT, BLOB as bytea); the triggers are per dialect.
inline constexpr std::array<std::string_view, Registry::kSchemaVersion> kMigrations = {
    R"sql(
CREATE TABLE cas (
  name TEXT PRIMARY KEY,
  parent TEXT NULL REFERENCES cas(name),
  subject TEXT NOT NULL, key_uri TEXT NOT NULL, key_type TEXT NOT NULL, cert_der BLOB,
  not_before BIGINT NOT NULL, not_after BIGINT NOT NULL,
  sha1 TEXT NOT NULL, sha256 TEXT NOT NULL,
  verified BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL
);
CREATE TABLE certificates (
  serial TEXT PRIMARY KEY,
  device_id TEXT NOT NULL, ca_name TEXT NOT NULL,
  batch_id TEXT NOT NULL DEFAULT '', seq BIGINT NOT NULL DEFAULT 0,
  state TEXT NOT NULL CHECK (state IN ('intent', 'issued', 'abandoned', 'revoked')),
  subject TEXT, not_before BIGINT, not_after BIGINT, sha1 TEXT, sha256 TEXT, der BLOB,
  lot TEXT, line TEXT, site TEXT, operator TEXT,
  created_at BIGINT NOT NULL
);
-- device_id alone: the intent -> issued state change then rewrites no index entry.
CREATE INDEX certificates_device ON certificates (device_id);
CREATE INDEX certificates_batch_seq ON certificates (batch_id, seq);
-- No index on sha256: a random key would cost one page write per certificate on the
-- issuance hot path; thumbprint lookups go through enrollments (issue 4), serials through the PK.
CREATE INDEX certificates_lot ON certificates (lot);
CREATE TABLE batches (
  id TEXT PRIMARY KEY,
  ca_name TEXT NOT NULL, params_json TEXT NOT NULL, state TEXT NOT NULL,
  created_at BIGINT NOT NULL, finished_at BIGINT NOT NULL DEFAULT 0,
  issued BIGINT NOT NULL DEFAULT 0, rejected BIGINT NOT NULL DEFAULT 0,
  watermark BIGINT NOT NULL DEFAULT -1, offsets_json TEXT NOT NULL DEFAULT ''
);
CREATE TABLE audit (
  id INTEGER PRIMARY KEY,
  at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  subject TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
)sql",
    // 2: enrollments and devices (issue 4). Devices carry their slots' not_after so the expiry
    // report reads one indexed table instead of joining 10^6 certificates.
    R"sql(
CREATE TABLE enrollment_groups (
  name TEXT PRIMARY KEY,
  enabled BIGINT NOT NULL DEFAULT 1,
  primary_ca TEXT NULL REFERENCES cas(name),
  secondary_ca TEXT NULL REFERENCES cas(name),
  created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL
);
CREATE TABLE individual_enrollments (
  registration_id TEXT PRIMARY KEY,
  enabled BIGINT NOT NULL DEFAULT 1,
  primary_cert BLOB, primary_sha256 TEXT NOT NULL DEFAULT '',
  secondary_cert BLOB, secondary_sha256 TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL
);
CREATE TABLE devices (
  registration_id TEXT PRIMARY KEY,
  primary_serial TEXT NOT NULL DEFAULT '', primary_not_after BIGINT NOT NULL DEFAULT 0,
  secondary_serial TEXT NOT NULL DEFAULT '', secondary_not_after BIGINT NOT NULL DEFAULT 0,
  ca_name TEXT NOT NULL DEFAULT '', lot TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL DEFAULT 'enabled',
  created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL
);
-- Covering: the expiry scan reads only these indexes, never the table rows at random.
CREATE INDEX devices_primary_expiry ON devices (primary_not_after, primary_serial, registration_id, ca_name, lot);
-- Partial: a device with an empty secondary slot (most, between rollovers) costs it nothing.
CREATE INDEX devices_secondary_expiry ON devices (secondary_not_after, secondary_serial, registration_id, ca_name, lot)
  WHERE secondary_not_after > 0;
CREATE INDEX devices_ca ON devices (ca_name, primary_not_after);
CREATE INDEX devices_lot ON devices (lot);
INSERT INTO devices (registration_id, primary_serial, primary_not_after, ca_name, lot, created_at, updated_at)
  SELECT device_id, serial, not_after, ca_name, COALESCE(lot, ''), created_at, created_at
  FROM certificates c WHERE state = 'issued' AND serial = (
    SELECT serial FROM certificates c2 WHERE c2.device_id = c.device_id AND c2.state = 'issued'
    ORDER BY not_after DESC LIMIT 1);
)sql",
    // 3 (issue 7): a CA is recorded as pending, with the token key it is about to make, before
    // the key exists; CA and verification certificates get intents like device certificates, in
    // a sibling table (they are not devices: the device queries never see them).
    R"sql(
CREATE TABLE pending_cas (
  name TEXT PRIMARY KEY,
  key_uri TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE ca_certificates (
  serial TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('ca', 'verification', 'self-signed')),
  subject_name TEXT NOT NULL,
  issuer_ca TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('intent', 'issued', 'abandoned')),
  tbs_der BLOB, der BLOB,
  created_at BIGINT NOT NULL
);
CREATE INDEX ca_certificates_subject ON ca_certificates (subject_name, kind);
)sql",
    // v4: the TLS certificates of fleetsign's own endpoints (the broker's server certificate, its
    // service clients') join the CA-signed certificates that are not devices. SQLite cannot widen a
    // CHECK in place: the table is rebuilt in the migration's transaction.
    R"sql(
CREATE TABLE ca_certificates_v4 (
  serial TEXT PRIMARY KEY,
  kind TEXT NOT NULL
    CHECK (kind IN ('ca', 'verification', 'self-signed', 'tls-server', 'tls-client')),
  subject_name TEXT NOT NULL,
  issuer_ca TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('intent', 'issued', 'abandoned')),
  tbs_der BLOB, der BLOB,
  created_at BIGINT NOT NULL
);
INSERT INTO ca_certificates_v4 SELECT serial, kind, subject_name, issuer_ca, state, tbs_der, der,
  created_at FROM ca_certificates;
DROP TABLE ca_certificates;
ALTER TABLE ca_certificates_v4 RENAME TO ca_certificates;
CREATE INDEX ca_certificates_subject ON ca_certificates (subject_name, kind);
)sql",
    // 5 (issue 8): the fleet plane. The broker records which certificate each device connects
    // with, and serves device twins from here.
    R"sql(
CREATE TABLE device_sessions (
  device_id TEXT PRIMARY KEY,
  connected BIGINT NOT NULL DEFAULT 0,
  mode TEXT NOT NULL DEFAULT '',
  cert_sha256 TEXT NOT NULL DEFAULT '', cert_serial TEXT NOT NULL DEFAULT '',
  connected_at BIGINT NOT NULL DEFAULT 0, disconnected_at BIGINT NOT NULL DEFAULT 0
);
-- Partial: `device list --connected` and the start-up reset read only the connected rows.
CREATE INDEX device_sessions_connected ON device_sessions (device_id) WHERE connected = 1;
CREATE TABLE twins (
  device_id TEXT PRIMARY KEY,
  desired TEXT NOT NULL DEFAULT '{}', desired_version BIGINT NOT NULL DEFAULT 1,
  reported TEXT NOT NULL DEFAULT '{}', reported_version BIGINT NOT NULL DEFAULT 1,
  updated_at BIGINT NOT NULL
);
)sql",
    // 6 (issue 9): persisted jobs. A job keeps its parameters, state and lease; its tasks, one per
    // device, record the step each reached. job_tasks_state serves job_tasks(id, state) and
    // count_job_tasks; a flush updates rows through the primary key.
    R"sql(
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  state TEXT NOT NULL
    CHECK (state IN ('running', 'paused', 'canceled', 'aborted', 'finished')),
  params_json TEXT NOT NULL DEFAULT '{}', report_json TEXT NOT NULL DEFAULT '{}',
  runner TEXT NOT NULL DEFAULT '', heartbeat_at BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, finished_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
CREATE TABLE job_tasks (
  job_id TEXT NOT NULL REFERENCES jobs(id),
  seq BIGINT NOT NULL,
  device_id TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'done', 'offline', 'refused',
    'timed-out', 'aborted', 'canceled', 'conflict')),
  step TEXT NOT NULL DEFAULT ''
    CHECK (step IN ('', 'csr', 'sign', 'install', 'reprovision', 'confirm', 'retire')),
  attempts BIGINT NOT NULL DEFAULT 0,
  target_slot TEXT NOT NULL DEFAULT '',
  old_serial TEXT NOT NULL DEFAULT '', new_serial TEXT NOT NULL DEFAULT '',
  new_sha256 TEXT NOT NULL DEFAULT '',
  next_at BIGINT NOT NULL DEFAULT 0, last_status BIGINT NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  started_at BIGINT NOT NULL DEFAULT 0, updated_at BIGINT NOT NULL DEFAULT 0,
  finished_at BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (job_id, device_id),
  UNIQUE (job_id, seq)
);
CREATE INDEX job_tasks_state ON job_tasks (job_id, state, seq);
)sql",
    // 7 (issue 9's breach roll, issue 10's revocation runs): when and why a certificate was
    // revoked, for the CRL and the reports.
    R"sql(
ALTER TABLE certificates ADD COLUMN revoked_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE certificates ADD COLUMN revocation_reason TEXT NOT NULL DEFAULT '';
)sql",
    // 8 (issue 10): CRLs signed in the token. A revoked intermediate is listed by its issuer's CRL;
    // a CRL number is reserved (crl_numbers) before the token signs and never reused. The partial
    // index makes a CA's revoked certificates one range read, whatever the table's size.
    R"sql(
ALTER TABLE cas ADD COLUMN revoked_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cas ADD COLUMN revocation_reason TEXT NOT NULL DEFAULT '';
CREATE TABLE crl_numbers (
  ca_name TEXT PRIMARY KEY REFERENCES cas(name),
  last_number BIGINT NOT NULL
);
CREATE TABLE crls (
  ca_name TEXT NOT NULL REFERENCES cas(name),
  number BIGINT NOT NULL,
  this_update BIGINT NOT NULL, next_update BIGINT NOT NULL,
  entries BIGINT NOT NULL,
  der BLOB NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (ca_name, number)
);
CREATE INDEX certificates_revoked ON certificates (ca_name, serial) WHERE state = 'revoked';
)sql",
    // 9 (issue 10 §4): incidents. At most one open incident per scope; the decision loads them
    // all when its Authenticator is built (a handful of rows).
    R"sql(
CREATE TABLE incidents (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  scope_kind TEXT NOT NULL CHECK (scope_kind IN ('ca', 'lot', 'site')),
  scope TEXT NOT NULL,
  reason TEXT NOT NULL,
  compromised_at BIGINT NOT NULL,
  opened_at BIGINT NOT NULL,
  closed_at BIGINT NOT NULL DEFAULT 0,
  job_id TEXT NOT NULL DEFAULT '',
  ca_revoked_at BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX incidents_open ON incidents (scope_kind, scope) WHERE closed_at = 0;
)sql",
    // 10 (issue 10's revocation runs): each certificate's public key hash (SPKI SHA-256), written
    // with the certificate and computed here for the ones recorded before (fleetsign_key_sha256
    // is a function the registry registers on its connection), and the compromised-key blocklist.
    R"sql(
ALTER TABLE certificates ADD COLUMN key_sha256 TEXT NOT NULL DEFAULT '';
UPDATE certificates SET key_sha256 = fleetsign_key_sha256(der)
  WHERE state IN ('issued', 'revoked') AND der IS NOT NULL;
CREATE TABLE blocked_keys (
  key_sha256 TEXT PRIMARY KEY,
  reason TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '',
  added_at BIGINT NOT NULL
);
)sql",
    // 11: the key hash became the key's identity, not its bytes (an EC point sent compressed is
    // hashed uncompressed, so a blocked key cannot come back compressed): recomputed for the
    // certificates recorded before. Blocked hashes were given by the operator and stay as given.
    R"sql(
UPDATE certificates SET key_sha256 = fleetsign_key_sha256(der)
  WHERE state IN ('issued', 'revoked') AND der IS NOT NULL;
)sql",
    // 12: a task that failed with one of the CLI's error codes keeps it ("key_blocked" when the
    // device's new key is on the blocklist), for `job show --json` and scripts.
    R"sql(
ALTER TABLE job_tasks ADD COLUMN error_code TEXT NOT NULL DEFAULT '';
)sql",
    // 13 (issue 12's HTTP service): who holds which operator certificate, and in which role.
    // A name is reused only after its operator was removed; a certificate is looked up by SHA-256.
    R"sql(
CREATE TABLE operators (
  sha256 TEXT PRIMARY KEY,
  name TEXT NOT NULL, role TEXT NOT NULL, groups_json TEXT NOT NULL DEFAULT '[]',
  ca_name TEXT NOT NULL, serial TEXT NOT NULL, not_after BIGINT NOT NULL,
  created_at BIGINT NOT NULL, removed_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX operators_name ON operators (name, removed_at);
)sql",
    // 14 (issue 13's workers): a batch shared by `serve --worker` processes is split into shares
    // (input ranges), each claimed with a lease; named leases (the scheduler's) elect one worker.
    R"sql(
CREATE TABLE batch_shares (
  batch_id TEXT NOT NULL REFERENCES batches(id),
  share BIGINT NOT NULL,
  first_seq BIGINT NOT NULL, count BIGINT NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
  holder TEXT NOT NULL DEFAULT '', lease_until BIGINT NOT NULL DEFAULT 0,
  attempts BIGINT NOT NULL DEFAULT 0, done_at BIGINT NOT NULL DEFAULT 0,
  issued BIGINT NOT NULL DEFAULT 0, rejected BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (batch_id, share)
);
CREATE INDEX batch_shares_pending ON batch_shares (lease_until) WHERE state = 'pending';
CREATE TABLE leases (
  name TEXT PRIMARY KEY,
  holder TEXT NOT NULL, expires_at BIGINT NOT NULL
);
)sql",
    // 15 (issue 13's workers): a job's tasks are shared by its runners. Each runner has a
    // membership row renewed by its heartbeat; a task names the runner that claimed it.
    R"sql(
ALTER TABLE job_tasks ADD COLUMN runner TEXT NOT NULL DEFAULT '';
CREATE TABLE job_runners (
  job_id TEXT NOT NULL REFERENCES jobs(id),
  runner TEXT NOT NULL,
  heartbeat_at BIGINT NOT NULL,
  PRIMARY KEY (job_id, runner)
);
)sql",
    // 16: how many of a CRL's entries say keyCompromise, so that a revocation whose reason became
    // keyCompromise (the same entries) still makes the CRL behind. -1: signed before, not known.
    R"sql(
ALTER TABLE crls ADD COLUMN key_compromise_entries BIGINT NOT NULL DEFAULT -1;
)sql",
};

}  // namespace fleetsign::engine
