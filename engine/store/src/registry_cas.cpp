// Registry: CA creation records — pending CAs and the intents of CA and verification
// certificates (schema v3). See registry.hpp for the contract.
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

struct PendingRow {
  static PendingCa read(sql::Stmt& st) {
    PendingCa rec;
    rec.name = std::string(st.text(0));
    rec.key_uri = std::string(st.text(1));
    rec.created_at = st.int64(2);
    return rec;
  }
};

struct CaCertRow {
  static CaCertRecord read(sql::Stmt& st) {
    CaCertRecord rec;
    rec.serial = std::string(st.text(0));
    rec.kind = std::string(st.text(1));
    rec.subject_name = std::string(st.text(2));
    rec.issuer_ca = std::string(st.text(3));
    rec.state = std::string(st.text(4));
    // tbs_der (5) and der (6): the certificate once issued, its TBS before (a NULL reads empty).
    rec.der = st.blob(rec.state == "issued" ? 6 : 5);
    rec.created_at = st.int64(7);
    return rec;
  }
};

const std::string kSelectCaCerts =
    "SELECT serial, kind, subject_name, issuer_ca, state, tbs_der, der, created_at "
    "FROM ca_certificates ";

}  // namespace

void Registry::add_pending_ca(const PendingCa& pending) {
  m_impl->write("recording pending CA '" + pending.name + "'", [&] {
    if (m_impl->count("SELECT COUNT(*) FROM cas WHERE name = ?", pending.name) != 0) {
      throw Error(ErrorCode::kAlreadyExists, "CA '" + pending.name + "' already exists");
    }
    m_impl->change("INSERT INTO pending_cas (name, key_uri, created_at) VALUES (?, ?, ?)",
                   pending.name, pending.key_uri, m_impl->stamp(pending.created_at));
  });
}

std::vector<PendingCa> Registry::list_pending_cas() {
  return m_impl->guarded("listing pending CAs", [&] {
    // SQLite keeps its order for equal times; PostgreSQL has none, so the name breaks ties there.
    return m_impl->select<PendingRow>(
        m_impl->postgres()
            ? "SELECT name, key_uri, created_at FROM pending_cas ORDER BY created_at, name"
            : "SELECT name, key_uri, created_at FROM pending_cas ORDER BY created_at");
  });
}

void Registry::drop_pending_ca(const std::string& name) {
  m_impl->write("dropping pending CA '" + name + "'", [&] {
    m_impl->change(
        "UPDATE ca_certificates SET state = 'abandoned' WHERE kind = 'ca' AND "
        "subject_name = ? AND state = 'intent'",
        name);
    m_impl->change("DELETE FROM pending_cas WHERE name = ?", name);
  });
}

void Registry::complete_ca(const CaRecord& ca, const std::string& serial) {
  m_impl->write("recording CA '" + ca.name + "'", [&] {
    m_impl->insert_ca(ca);
    if (m_impl->change("UPDATE ca_certificates SET state = 'issued', der = ? WHERE serial = ? AND "
                       "state = 'intent'",
                       ca.cert_der, serial) != 1) {
      throw Error(ErrorCode::kRegistryError,
                  "CA certificate 0x" + serial + " has no open intent; nothing recorded");
    }
    m_impl->change("DELETE FROM pending_cas WHERE name = ?", ca.name);
  });
}

void Registry::record_ca_cert_intent(const CaCertIntent& intent) {
  m_impl->write("recording the intent of " + intent.kind + " certificate 0x" + intent.serial, [&] {
    if (m_impl->count("SELECT COUNT(*) FROM certificates WHERE serial = ?", intent.serial) != 0) {
      throw Error(ErrorCode::kAlreadyExists, "serial 0x" + intent.serial + " is already used");
    }
    m_impl->change(
        "INSERT INTO ca_certificates (serial, kind, subject_name, issuer_ca, "
        "state, tbs_der, created_at) VALUES (?, ?, ?, ?, 'intent', ?, ?)",
        intent.serial, intent.kind, intent.subject_name, intent.issuer_ca, intent.tbs_der,
        m_impl->stamp(0));
  });
}

void Registry::record_ca_cert_issued(const std::string& serial,
                                     const std::vector<std::uint8_t>& der) {
  m_impl->write("recording certificate 0x" + serial, [&] {
    if (m_impl->change("UPDATE ca_certificates SET state = 'issued', der = ? WHERE serial = ? AND "
                       "state = 'intent'",
                       der, serial) != 1) {
      throw Error(ErrorCode::kRegistryError,
                  "certificate 0x" + serial + " has no open intent; nothing recorded");
    }
  });
}

void Registry::abandon_ca_cert_intent(const std::string& serial) {
  m_impl->write("abandoning certificate intent 0x" + serial, [&] {
    m_impl->change(
        "UPDATE ca_certificates SET state = 'abandoned' WHERE serial = ? AND "
        "state = 'intent'",
        serial);
  });
}

std::optional<CaCertRecord> Registry::find_ca_cert(const std::string& serial) {
  return m_impl->guarded("reading certificate 0x" + serial, [&] {
    return m_impl->select_one<CaCertRow>(kSelectCaCerts + "WHERE serial = ?", serial);
  });
}

std::vector<CaCertRecord> Registry::ca_certs_of(const std::string& subject_name) {
  return m_impl->guarded("listing certificates of '" + subject_name + "'", [&] {
    return m_impl->select<CaCertRow>(
        kSelectCaCerts + "WHERE subject_name = ? ORDER BY created_at, serial", subject_name);
  });
}

}  // namespace fleetsign::engine
