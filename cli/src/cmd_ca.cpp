#include <cstdio>

#include "cli.hpp"
#include "fleetsign/engine/ca.hpp"
#include "fleetsign/engine/ca_recovery.hpp"
#include "fleetsign/engine/enrollment.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "paging.hpp"

namespace fleetsign::cli {

namespace fs = std::filesystem;

namespace {

engine::CaService ca_service(Context& ctx) {
  return engine::CaService(ctx.registry(), ctx.token(), ctx.policy(), ctx.clock(), ctx.random());
}

policy::KeyAlgorithm key_option(const Args& a) {
  const std::string name = a.get("key").value_or("ec-p256");
  auto alg = policy::parse_key_algorithm(name);
  if (!alg) {
    throw Error(
        ErrorCode::kUsage,
        "--key '" + name + "' is not one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096");
  }
  return *alg;
}

Poco::JSON::Object ca_json(const engine::CaRecord& ca) {
  const auto s = engine::summarize_certificate(ca.cert_der);
  Poco::JSON::Object o;
  o.set("name", ca.name);
  o.set("parent", ca.parent);
  o.set("subject", ca.subject);
  o.set("issuer", s.issuer);
  o.set("serial", s.serial);
  o.set("key_uri", ca.key_uri);
  o.set("key_type", ca.key_type);
  o.set("not_before", engine::iso8601(ca.not_before));
  o.set("not_after", engine::iso8601(ca.not_after));
  o.set("sha1", ca.sha1);
  o.set("sha256", ca.sha256);
  o.set("verified", ca.verified);
  o.set("revoked", ca.revoked_at != 0);
  if (ca.revoked_at != 0) {
    o.set("revoked_at", engine::iso8601(ca.revoked_at));
    o.set("revocation_reason", ca.revocation_reason);
  }
  return o;
}

void print_ca(const engine::CaRecord& ca) {
  const auto s = engine::summarize_certificate(ca.cert_der);
  std::printf(
      "%s%s\n  subject      %s\n  issuer       %s\n  serial       %s\n  valid        %s .. %s\n"
      "  key          %s (%s)\n  SHA-1        %s\n  SHA-256      %s\n  verified     %s\n",
      ca.name.c_str(), ca.parent.empty() ? " (root)" : (" (issued by " + ca.parent + ")").c_str(),
      ca.subject.c_str(), s.issuer.c_str(), s.serial.c_str(),
      engine::iso8601(ca.not_before).c_str(), engine::iso8601(ca.not_after).c_str(),
      (ca.key_uri.empty() ? std::string("external, not in the token") : ca.key_uri).c_str(),
      ca.key_type.c_str(), ca.sha1.c_str(), ca.sha256.c_str(), ca.verified ? "yes" : "no");
  if (ca.revoked_at != 0) {
    std::printf("  REVOKED      %s (%s): nothing is signed or admitted under it\n",
                engine::iso8601(ca.revoked_at).c_str(), ca.revocation_reason.c_str());
  }
}

int run_create(Context& ctx, bool root) {
  const Args& a = ctx.args();
  engine::CaSpec spec;
  spec.name = a.require("name");
  spec.subject = a.require("subject");
  spec.key = key_option(a);
  spec.days = a.get_int("days");
  spec.path_len = a.get_int("path-len");
  if (!root) {
    spec.issuer = a.require("issuer");
  }
  auto service = ca_service(ctx);
  const engine::CaRecord ca = root ? service.create_root(spec) : service.create_intermediate(spec);
  // Every CA has a CRL from its first day: mosquitto refuses a device whose issuer has none in the
  // broker's CRL file, and relying parties may ask for it.
  const std::string crl_line = refresh_crls_and_broker(ctx, {ca.name});
  if (!ctx.json()) std::fprintf(stderr, "%s\n", crl_line.c_str());
  if (ctx.json()) {
    ctx.print_json(ca_json(ca));
  } else {
    std::printf("created CA ");
    print_ca(ca);
  }
  return 0;
}

int run_list(Context& ctx) {
  const auto page = page_args(ctx.args(), 0);
  const auto key = [](const engine::CaRecord& ca) { return ca.name; };
  auto cas = page_in_memory(ctx.registry().list_cas(), page, key, "CA");
  const auto next = cut_page(cas, page, key);
  if (ctx.json()) {
    Poco::JSON::Array arr;
    for (const auto& ca : cas) arr.add(ca_json(ca));
    Poco::JSON::Object o;
    o.set("cas", arr);
    set_next(o, next);
    ctx.print_json(o);
    return 0;
  }
  std::printf("%-20s %-20s %-8s %-20s %-9s %-8s %s\n", "NAME", "ISSUER", "KEY", "NOT AFTER",
              "VERIFIED", "STATE", "SUBJECT");
  for (const auto& ca : cas) {
    std::printf("%-20s %-20s %-8s %-20s %-9s %-8s %s\n", ca.name.c_str(),
                ca.parent.empty() ? "(root)" : ca.parent.c_str(), ca.key_type.c_str(),
                engine::iso8601(ca.not_after).c_str(), ca.verified ? "yes" : "no",
                ca.revoked_at != 0 ? "REVOKED" : "active", ca.subject.c_str());
  }
  print_next_hint(next);
  return 0;
}

engine::CaRecord find(Context& ctx, const std::string& name) {
  auto ca = ctx.registry().find_ca(name);
  if (!ca) throw Error(ErrorCode::kNotFound, "CA '" + name + "' not found in the registry");
  return *ca;
}

int run_show(Context& ctx) {
  const auto ca = find(ctx, ctx.args().positional_at(0, "CA NAME"));
  if (ctx.json()) {
    ctx.print_json(ca_json(ca));
  } else {
    print_ca(ca);
  }
  return 0;
}

int run_export(Context& ctx) {
  const Args& a = ctx.args();
  const std::string name = a.positional_at(0, "CA NAME");
  const fs::path out = a.require("out");
  std::string text;
  if (a.has("chain")) {
    // Needs no token: the chain is in the registry.
    std::string next = name;
    while (!next.empty()) {
      const auto ca = find(ctx, next);
      engine::append_pem(text, ca.cert_der, "CERTIFICATE");
      next = ca.parent;
    }
  } else {
    engine::append_pem(text, find(ctx, name).cert_der, "CERTIFICATE");
  }
  write_text_file(out, text,
                  fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                      fs::perms::others_read);
  if (ctx.json()) {
    Poco::JSON::Object o;
    o.set("ca", name);
    o.set("out", out.string());
    o.set("chain", a.has("chain"));
    ctx.print_json(o);
  } else {
    std::printf("wrote %s%s to %s\n", name.c_str(), a.has("chain") ? " and its issuers" : "",
                out.c_str());
  }
  return 0;
}

int run_verification_cert(Context& ctx) {
  const Args& a = ctx.args();
  const std::string ca = a.require("ca");
  const std::string code = a.require("code");
  const fs::path out = a.require("out");
  const engine::Der der = ca_service(ctx).make_verification_cert(ca, code);
  write_text_file(out, engine::pem(der, "CERTIFICATE"),
                  fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                      fs::perms::others_read);
  if (ctx.json()) {
    Poco::JSON::Object o;
    o.set("ca", ca);
    o.set("code", code);
    o.set("out", out.string());
    o.set("sha256", engine::thumbprint_sha256(der));
    ctx.print_json(o);
  } else {
    std::printf("wrote verification certificate (CN=%s, signed by CA '%s' in the token) to %s\n",
                code.c_str(), ca.c_str(), out.c_str());
  }
  return 0;
}

int run_verify(Context& ctx) {
  const Args& a = ctx.args();
  const std::string name = a.positional_at(0, "CA NAME");
  const std::string code = a.require("code");
  const auto certs = engine::read_certificates(a.require("cert"));
  // Needs only the CA certificate, not the token key.
  engine::verify_possession(ctx.registry(), ctx.clock(), name, code, certs.front());
  if (ctx.json()) {
    Poco::JSON::Object o;
    o.set("ca", name);
    o.set("verified", true);
    ctx.print_json(o);
  } else {
    std::printf("CA '%s' verified: the certificate proves possession of its key (CN=%s)\n",
                name.c_str(), code.c_str());
  }
  return 0;
}

// An external CA: its certificate only (e.g. a supplier's intermediate); no token needed.
int run_import(Context& ctx) {
  const Args& a = ctx.args();
  const std::string file = a.require("cert");
  const auto certs = engine::read_certificates(file);
  engine::CaRecord ca;
  try {
    ca = engine::import_external_ca(ctx.registry(), ctx.clock(), a.positional_at(0, "CA NAME"),
                                    certs.front());
  } catch (const Error& e) {
    throw e.code() == ErrorCode::kAlreadyExists ? e : e.with_context(file);
  }
  if (ctx.json()) {
    ctx.print_json(ca_json(ca));
  } else {
    std::printf("imported external CA ");
    print_ca(ca);
    std::printf(
        "note: unverified; prove possession with `fleetsign ca verify %s --code C --cert F`\n",
        ca.name.c_str());
  }
  return 0;
}

// Token keys and CA rows that do not match (after a lost registry or an interrupted creation).
// Exit 0 when everything matches, 1 when something does not.
int run_orphans(Context& ctx) {
  const auto inv = engine::take_inventory(ctx.registry(), ctx.token_for_inspection());
  if (ctx.json()) {
    Poco::JSON::Array keys, cas;
    for (const auto& k : inv.orphan_keys) {
      Poco::JSON::Object o;
      o.set("label", k.label);
      o.set("key_uri", k.uri());
      keys.add(o);
    }
    for (const auto& ca : inv.cas_without_key) {
      Poco::JSON::Object o;
      o.set("name", ca.name);
      o.set("key_uri", ca.key_uri);
      cas.add(o);
    }
    Poco::JSON::Object o;
    o.set("token_keys_without_ca", keys);
    o.set("cas_without_token_key", cas);
    ctx.print_json(o);
  } else {
    std::printf("token keys with no CA row: %zu\n", inv.orphan_keys.size());
    for (const auto& k : inv.orphan_keys) {
      std::printf("  %-20s %s\n", k.label.c_str(), k.uri().c_str());
    }
    std::printf("CA rows whose key is not in the token: %zu\n", inv.cas_without_key.size());
    for (const auto& ca : inv.cas_without_key) {
      std::printf("  %-20s %s\n", ca.name.c_str(), ca.key_uri.c_str());
    }
  }
  return inv.orphan_keys.empty() && inv.cas_without_key.empty() ? 0 : 1;
}

void name_subject_key_days(Poco::Util::OptionSet& s) {
  add_option(s, "name", "NAME", "name of the new CA (also its token key label)");
  add_option(s, "subject", "DN", "subject, openssl -subj form: /CN=IoT Root CA/O=MyOrg/C=US");
  add_option(s, "key", "ALG", "ec-p256 (default), ec-p384, rsa-2048, rsa-3072, rsa-4096");
  add_option(s, "days", "N", "validity in days (default from the policy)");
  add_option(s, "path-len", "N", "basicConstraints pathLen (intermediates default to 0)");
  add_option(s, "pin-file", "FILE", "file holding the user PIN (else FLEETSIGN_PIN)");
  add_flag(s, "json", "print the result as JSON");
}

}  // namespace

void add_ca_commands(std::vector<Command>& commands) {
  commands.push_back(Command{{"ca", "create-root"},
                             "--name NAME --subject DN [--key ALG] [--days N] [--path-len N]",
                             "create a self-signed root CA whose key is made in the token",
                             name_subject_key_days,
                             [](Context& c) { return run_create(c, true); }});
  commands.push_back(
      Command{{"ca", "create-intermediate"},
              "--name NAME --issuer NAME --subject DN [--key ALG] [--days N] [--path-len N]",
              "create an intermediate CA signed by another CA's token key",
              [](Poco::Util::OptionSet& s) {
                name_subject_key_days(s);
                add_option(s, "issuer", "NAME", "the CA that signs it");
              },
              [](Context& c) { return run_create(c, false); }});
  commands.push_back(Command{{"ca", "list"},
                             "[--limit N] [--after NAME] [--json]",
                             "list CAs, oldest first",
                             [](Poco::Util::OptionSet& s) {
                               add_paging_options(s, "default: all", "NAME");
                               add_flag(s, "json", "print as JSON");
                             },
                             run_list});
  commands.push_back(Command{{"ca", "show"},
                             "NAME [--json]",
                             "show a CA: subject, issuer, validity, key URI, thumbprints, verified",
                             [](Poco::Util::OptionSet& s) { add_flag(s, "json", "print as JSON"); },
                             run_show});
  commands.push_back(Command{{"ca", "export"},
                             "NAME [--chain] --out FILE",
                             "write a CA certificate (with --chain: and its issuers) as PEM",
                             [](Poco::Util::OptionSet& s) {
                               add_flag(s, "chain", "append the issuers up to the root");
                               add_option(s, "out", "FILE", "output PEM file");
                               add_flag(s, "json", "print the result as JSON");
                             },
                             run_export});
  commands.push_back(Command{{"ca", "verification-cert"},
                             "--ca NAME --code CODE --out FILE",
                             "make a proof-of-possession certificate (CN = the cloud's code)",
                             [](Poco::Util::OptionSet& s) {
                               add_option(s, "ca", "NAME", "the CA to prove");
                               add_option(s, "code", "CODE", "verification code from the cloud");
                               add_option(s, "out", "FILE", "output PEM file");
                               add_option(s, "pin-file", "FILE", "file holding the user PIN");
                               add_flag(s, "json", "print the result as JSON");
                             },
                             run_verification_cert});
  commands.push_back(Command{{"ca", "orphans"},
                             "[--json]",
                             "list token keys with no CA row, and CA rows whose key is not in the "
                             "token (exit 1 if any)",
                             [](Poco::Util::OptionSet& s) {
                               add_option(s, "pin-file", "FILE", "file holding the user PIN");
                               add_flag(s, "json", "print as JSON");
                             },
                             run_orphans});
  commands.push_back(Command{{"ca", "import"},
                             "NAME --cert FILE [--json]",
                             "register an external CA certificate (its key is not in the token)",
                             [](Poco::Util::OptionSet& s) {
                               add_option(s, "cert", "FILE", "the CA certificate (PEM/DER)");
                               add_flag(s, "json", "print the result as JSON");
                             },
                             run_import});
  commands.push_back(Command{{"ca", "verify"},
                             "NAME --code CODE --cert FILE",
                             "check a verification certificate and mark the CA verified",
                             [](Poco::Util::OptionSet& s) {
                               add_option(s, "code", "CODE", "the verification code");
                               add_option(s, "cert", "FILE", "verification certificate (PEM/DER)");
                               add_flag(s, "json", "print the result as JSON");
                             },
                             run_verify});
}

}  // namespace fleetsign::cli
