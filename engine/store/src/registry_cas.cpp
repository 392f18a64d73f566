// Registry: CA creation records — pending CAs and the intents of CA and verification
// certificates (schema v3). See registry.hpp for the contract.
#include <Poco/Data/LOB.h>

#include "fleetsign/engine/registry.hpp"
#include "fleetsign/error.hpp"
#include "registry_impl.hpp"

namespace fleetsign::engine {

namespace {

using registry_detail::to_bytes;

struct PendingRow {
  PendingCa rec;
  void bind_into(Statement& st) {
    st, kw::into(rec.name), kw::into(rec.key_uri), kw::into(rec.created_at);
  }
  PendingCa take() { return rec; }
};

struct CaCertRow {
  CaCertRecord rec;
  BLOB tbs, der;
  void bind_into(Statement& st) {
    st, kw::into(rec.serial), kw::into(rec.kind), kw::into(rec.subject_name),
        kw::into(rec.issuer_ca), kw::into(rec.state), kw::into(tbs), kw::into(der),
        kw::into(rec.created_at);
  }
  CaCertRecord take() {
    rec.der = to_bytes(rec.state == "issued" ? der : tbs);
    return rec;
  }
};

const std::string kSelectCaCerts =
    "SELECT serial, kind, subject_name, issuer_ca, state, tbs_der, der, created_at "
    "FROM ca_certificates ";

std::int64_t count(Session& session, const std::string& sql, const std::string& key) {
  std::int64_t n = 0;
  std::string k = key;
  session << sql, kw::into(n), kw::use(k), kw::now;
  return n;
}

}  // namespace

void Registry::add_pending_ca(const PendingCa& pending) {
  m_impl->write("recording pending CA '" + pending.name + "'", [&] {
    if (count(m_impl->m_session, "SELECT COUNT(*) FROM cas WHERE name = ?", pending.name) != 0) {
      throw Error(ErrorCode::kAlreadyExists, "CA '" + pending.name + "' already exists");
    }
    const std::int64_t at = m_impl->stamp(pending.created_at);
    m_impl->m_session << "INSERT INTO pending_cas (name, key_uri, created_at) VALUES (?, ?, ?)",
        kw::bind(pending.name), kw::bind(pending.key_uri), kw::bind(at), kw::now;
  });
}

std::vector<PendingCa> Registry::list_pending_cas() {
  return m_impl->guarded("listing pending CAs", [&] {
    return m_impl->select<PendingRow>(
        "SELECT name, key_uri, created_at FROM pending_cas ORDER BY created_at");
  });
}

void Registry::drop_pending_ca(const std::string& name) {
  m_impl->write("dropping pending CA '" + name + "'", [&] {
    m_impl->m_session << "UPDATE ca_certificates SET state = 'abandoned' WHERE kind = 'ca' AND "
                         "subject_name = ? AND state = 'intent'",
        kw::bind(name), kw::now;
    m_impl->m_session << "DELETE FROM pending_cas WHERE name = ?", kw::bind(name), kw::now;
  });
}

void Registry::complete_ca(const CaRecord& ca, const std::string& serial) {
  m_impl->write("recording CA '" + ca.name + "'", [&] {
    m_impl->insert_ca(ca);
    const BLOB der(ca.cert_der);
    Statement st(m_impl->m_session);
    st << "UPDATE ca_certificates SET state = 'issued', der = ? WHERE serial = ? AND "
          "state = 'intent'",
        kw::bind(der), kw::bind(serial);
    if (st.execute() != 1) {
      throw Error(ErrorCode::kRegistryError,
                  "CA certificate 0x" + serial + " has no open intent; nothing recorded");
    }
    m_impl->m_session << "DELETE FROM pending_cas WHERE name = ?", kw::bind(ca.name), kw::now;
  });
}

void Registry::record_ca_cert_intent(const CaCertIntent& intent) {
  m_impl->write("recording the intent of " + intent.kind + " certificate 0x" + intent.serial, [&] {
    if (count(m_impl->m_session, "SELECT COUNT(*) FROM certificates WHERE serial = ?",
              intent.serial) != 0) {
      throw Error(ErrorCode::kAlreadyExists, "serial 0x" + intent.serial + " is already used");
    }
    const BLOB tbs(intent.tbs_der);
    const std::int64_t at = m_impl->stamp(0);
    m_impl->m_session << "INSERT INTO ca_certificates (serial, kind, subject_name, issuer_ca, "
                         "state, tbs_der, created_at) VALUES (?, ?, ?, ?, 'intent', ?, ?)",
        kw::bind(intent.serial), kw::bind(intent.kind), kw::bind(intent.subject_name),
        kw::bind(intent.issuer_ca), kw::bind(tbs), kw::bind(at), kw::now;
  });
}

void Registry::record_ca_cert_issued(const std::string& serial,
                                     const std::vector<std::uint8_t>& der) {
  m_impl->write("recording certificate 0x" + serial, [&] {
    const BLOB blob(der);
    Statement st(m_impl->m_session);
    st << "UPDATE ca_certificates SET state = 'issued', der = ? WHERE serial = ? AND "
          "state = 'intent'",
        kw::bind(blob), kw::bind(serial);
    if (st.execute() != 1) {
      throw Error(ErrorCode::kRegistryError,
                  "certificate 0x" + serial + " has no open intent; nothing recorded");
    }
  });
}

void Registry::abandon_ca_cert_intent(const std::string& serial) {
  m_impl->write("abandoning certificate intent 0x" + serial, [&] {
    m_impl->m_session << "UPDATE ca_certificates SET state = 'abandoned' WHERE serial = ? AND "
                         "state = 'intent'",
        kw::bind(serial), kw::now;
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
