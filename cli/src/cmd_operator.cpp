// `fleetsign operator add|list|remove`: the people and systems that use the HTTP service
// (engine/operators.hpp). `add` writes their credential, a PKCS#12, and records their role.
#include <Poco/JSON/Array.h>

#include <cstdio>

#include "cli.hpp"
#include "fleetsign/atomic_file.hpp"
#include "fleetsign/broker/broker_home.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/operators.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "paging.hpp"
#include "table.hpp"

namespace fleetsign::cli {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ",") + i;
  return out;
}

Object::Ptr operator_json(const engine::OperatorRecord& op) {
  Object::Ptr o = new Object(Poco::JSON_PRESERVE_KEY_ORDER);
  o->set("name", op.name);
  o->set("role", std::string(engine::operator_role_name(op.role)));
  Array::Ptr groups = new Array;
  for (const auto& g : op.groups) groups->add(g);
  o->set("groups", groups);
  o->set("ca", op.ca_name);
  o->set("serial", op.serial);
  o->set("sha256", op.sha256);
  o->set("not_after", engine::iso8601(op.not_after));
  o->set("created_at", engine::iso8601(op.created_at));
  o->set("active", op.removed_at == 0);
  if (op.removed_at != 0) o->set("removed_at", engine::iso8601(op.removed_at));
  return o;
}

int run_operator_add(Context& ctx) {
  const Args& a = ctx.args();
  engine::OperatorSpec spec;
  spec.name = a.positional_at(0, "NAME");
  const std::string role = a.require("role");
  const auto parsed = engine::parse_operator_role(role);
  if (!parsed) {
    throw Error(ErrorCode::kUsage, "--role '" + role + "': expected operator, auditor or factory");
  }
  spec.role = *parsed;
  if (a.has("group")) spec.groups = a.options.at("group");
  if (auto ca = a.get("ca")) spec.ca = *ca;
  if (auto days = a.get_int("days")) spec.days = *days;
  const auto out = path_option(a, "out");
  if (!out) throw Error(ErrorCode::kUsage, "--out F.p12 is required: the operator's credential");
  refuse_protected(*out);
  const auto password = pfx_password(a, true, "the operator's .p12");
  bool written = false;
  const auto write = [&](const engine::OperatorCredential& c) {
    write_output_file(*out, std::filesystem::perms(0600), [&](std::ostream& os) {
      os.write(reinterpret_cast<const char*>(c.pfx.data()),
               static_cast<std::streamsize>(c.pfx.size()));
    });
    written = true;
  };
  const engine::OperatorCredential cred = [&] {
    try {
      return engine::add_operator(ctx.cas(), ctx.registry(), ctx.policy(), spec, password->c_str(),
                                  write);
    } catch (...) {
      std::error_code ec;
      // The role was not recorded: no credential either (a device or a FIFO is left alone).
      if (written && std::filesystem::is_regular_file(std::filesystem::symlink_status(*out, ec))) {
        std::filesystem::remove(*out, ec);
      }
      throw;
    }
  }();
  if (ctx.json()) {
    Object::Ptr o = operator_json(cred.record);
    o->set("out", out->string());
    o->set("created_ca", cred.created_ca);
    ctx.print_json(*o);
  } else {
    if (cred.created_ca) {
      std::printf("created the operator CA '%s' (key in the token)\n", spec.ca.c_str());
    }
    std::printf(
        "operator %s (%s%s): certificate %s, SHA-256 %s, until %s\n  credential %s "
        "(PKCS#12: import it into the browser, or curl --cert-type P12 --cert %s:PASSWORD)\n",
        spec.name.c_str(), role.c_str(),
        spec.groups.empty() ? "" : (", groups " + join(spec.groups)).c_str(),
        cred.record.serial.c_str(), cred.record.sha256.c_str(),
        engine::iso8601(cred.record.not_after).c_str(), out->string().c_str(),
        out->string().c_str());
  }
  return 0;
}

int run_operator_list(Context& ctx) {
  const auto page = page_args(ctx.args(), 0);
  const auto key = [](const engine::OperatorRecord& op) { return op.name; };
  auto ops = page_in_memory(ctx.registry().list_operators(), page, key, "operator");
  const auto next = cut_page(ops, page, key);
  if (ctx.json()) {
    Array::Ptr arr = new Array;
    for (const auto& op : ops) arr->add(operator_json(op));
    Object o;
    o.set("operators", arr);
    set_next(o, next);
    ctx.print_json(o);
    return 0;
  }
  Table t({"NAME", "ROLE", "GROUPS", "UNTIL", "STATE", "SHA-256"});
  for (const auto& op : ops) {
    t.add({op.name, std::string(engine::operator_role_name(op.role)), join(op.groups),
           engine::iso8601(op.not_after), op.removed_at == 0 ? "active" : "removed", op.sha256});
  }
  t.print();
  print_next_hint(next);
  return 0;
}

int run_operator_remove(Context& ctx) {
  const std::string name = ctx.args().positional_at(0, "NAME");
  ctx.registry().remove_operator(name, ctx.clock().now());
  if (ctx.json()) {
    Object o;
    o.set("removed", name);
    ctx.print_json(o);
  } else {
    std::printf("removed operator %s: its certificate is refused from now on\n", name.c_str());
  }
  return 0;
}

// `http init`: the HTTP service's server certificate, from the operator CA (made when missing).
int run_http_init(Context& ctx) {
  const Args& a = ctx.args();
  std::vector<std::string> hosts =
      a.has("host") ? a.options.at("host") : std::vector<std::string>{"localhost", "127.0.0.1"};
  const std::string ca = a.get("ca").value_or(engine::kDefaultOperatorCa);
  bool created = false;
  engine::ensure_operator_ca(ctx.cas(), ctx.registry(), ca, &created);
  engine::TlsCertSpec spec;
  spec.common_name = hosts.front();
  for (const auto& h : hosts) {
    (broker::is_ip_address(h) ? spec.ip_addresses : spec.dns_names).push_back(h);
  }
  if (auto days = a.get_int("days")) spec.days = *days;
  const HttpFiles files = http_files(ctx.home_dir());
  std::filesystem::create_directories(files.dir);
  const std::string sha = issue_endpoint(ctx, ca, spec, files.cert, files.key);
  write_http_trust(ctx.registry(), files);
  ctx.registry().audit("http.init", hosts.front(),
                       engine::json_object({{"ca", ca}, {"server_sha256", sha}}));
  if (ctx.json()) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("ca", ca);
    o.set("created_ca", created);
    o.set("cert", files.cert.string());
    o.set("server_sha256", sha);
    Array::Ptr h = new Array;
    for (const auto& x : hosts) h->add(x);
    o.set("hosts", h);
    ctx.print_json(o);
  } else {
    std::printf(
        "HTTP service certificate for %s from CA %s (SHA-256 %s)\n  %s\n"
        "clients check it with the CA certificate: fleetsign ca export %s\n"
        "next: fleetsign operator add NAME --role operator --out NAME.p12; "
        "fleetsign serve --http HOST:PORT\n",
        hosts.front().c_str(), ca.c_str(), sha.c_str(), files.cert.string().c_str(), ca.c_str());
  }
  return 0;
}

}  // namespace

HttpFiles http_files(const std::filesystem::path& home) {
  const auto dir = home / "http";
  return {dir, dir / "server.crt", dir / "server.key", dir / "clients-ca.pem"};
}

std::size_t write_http_trust(engine::Stores& stores, const HttpFiles& files) {
  std::string pem;
  std::size_t n = 0;
  for (const auto& ca : stores.list_cas()) {
    if (ca.cert_der.empty() || ca.revoked_at != 0) continue;
    engine::append_pem(pem, ca.cert_der, "CERTIFICATE");
    ++n;
  }
  if (n == 0) throw Error(ErrorCode::kNotFound, "the registry has no CA for the HTTP service");
  write_file_atomic(files.clients_ca, pem, 0644);
  return n;
}

void add_operator_commands(std::vector<Command>& commands) {
  commands.push_back(
      {{"operator", "add"},
       "NAME --role operator|auditor|factory [--group G]… --out F.p12 [--ca NAME] [--days N] "
       "[--json]",
       "make a client certificate for a person or system that uses the HTTP service",
       [](Poco::Util::OptionSet& s) {
         add_option(s, "role", "R",
                    "auditor reads; factory issues batches for its --group(s); operator does all");
         add_option(s, "group", "G", "an enrollment group a factory issues for (repeat)", true);
         add_option(s, "out", "F.p12", "where the credential (key, certificate, chain) goes");
         add_option(s, "ca", "NAME",
                    "the operator CA (default 'operators', made in the token on first use)");
         add_option(s, "days", "N", "validity (default 397)");
         add_option(s, "pfx-password-file", "F",
                    "the .p12's password (else FLEETSIGN_PFX_PASSWORD or a prompt)");
         add_option(s, "pin-file", "FILE", "file holding the user PIN (else FLEETSIGN_PIN)");
         add_flag(s, "json", "one JSON object on stdout");
       },
       run_operator_add});
  commands.push_back({{"operator", "list"},
                      "[--limit N] [--after NAME] [--json]",
                      "the operators, removed ones included, oldest first",
                      [](Poco::Util::OptionSet& s) {
                        add_paging_options(s, "default: all", "NAME");
                        add_flag(s, "json", "JSON on stdout");
                      },
                      run_operator_list});
  commands.push_back({{"operator", "remove"},
                      "NAME [--json]",
                      "remove an operator: the HTTP service refuses its certificate at once",
                      [](Poco::Util::OptionSet& s) { add_flag(s, "json", "JSON on stdout"); },
                      run_operator_remove});
  commands.push_back(
      {{"http", "init"},
       "[--host H]… [--ca NAME] [--days N] [--json]",
       "the HTTP service's TLS certificate (HOME/http), from the operator CA",
       [](Poco::Util::OptionSet& s) {
         add_option(s, "host", "H",
                    "a DNS name or IP address clients use (repeat; default localhost, 127.0.0.1)",
                    true);
         add_option(s, "ca", "NAME", "the CA that signs it (default 'operators', made if missing)");
         add_option(s, "days", "N", "validity (default 397)");
         add_option(s, "pin-file", "FILE", "file holding the user PIN (else FLEETSIGN_PIN)");
         add_flag(s, "json", "one JSON object on stdout");
       },
       run_http_init});
}

}  // namespace fleetsign::cli
