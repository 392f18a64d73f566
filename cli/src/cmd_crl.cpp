// fleetsign crl show | export | sign: the CAs' revocation lists, signed in the token
// (engine/crl.hpp). show and export print the latest stored CRL; sign (and `serve`) make new
// ones. After signing, the broker's CRL file is re-installed (checked first) and mosquitto
// reloaded when it runs.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <cstdint>
#include <cstdio>
#include <iostream>
#include <optional>

#include "cli.hpp"
#include "fleetsign/atomic_file.hpp"
#include "fleetsign/bounded_read.hpp"
#include "fleetsign/broker/crl_install.hpp"
#include "fleetsign/engine/crl.hpp"
#include "fleetsign/engine/crl_check.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

namespace {

engine::CrlRecord latest_or_fail(Context& ctx, const std::string& ca) {
  // The registry alone: reading a CRL needs neither the token nor the home's lock, so relying
  // parties get it while a job or `serve` holds the home.
  if (!ctx.registry().find_ca(ca)) {
    throw Error(ErrorCode::kNotFound, "CA '" + ca + "' not found in the registry");
  }
  auto latest = ctx.registry().latest_crl(ca);
  if (!latest) {
    throw Error(ErrorCode::kNotFound,
                "CA '" + ca + "' has no CRL yet: run `fleetsign crl sign " + ca + "`");
  }
  return *latest;
}

int run_show(Context& ctx) {
  const std::string ca = ctx.args().positional_at(0, "CA");
  const engine::CrlRecord crl = latest_or_fail(ctx, ca);
  const engine::CrlInfo info = engine::read_crl(crl.der, "CRL of CA '" + ca + "'");
  const auto now = test_hook_clock(ctx.args())->now();
  const engine::CrlState state = engine::crl_state(crl, ctx.policy().crl, now);
  // Behind: the CA has revoked more than this CRL lists (a revoke killed before it re-signed).
  bool behind = false;
  std::int64_t revoked_now = static_cast<std::int64_t>(info.entries);
  for (const auto& st : engine::crl_statuses(ctx.registry(), ctx.policy().crl, now)) {
    if (st.ca_name != ca) continue;
    behind = st.revoked_since;
    revoked_now = st.revoked_now;
  }
  const std::string state_text =
      std::string(engine::crl_state_name(state)) +
      (behind ? ", behind: the CA has revoked " + std::to_string(revoked_now) +
                    " certificates (run `fleetsign crl sign " + ca + "`)"
              : "");
  if (ctx.json()) {
    Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("ca", ca);
    o.set("issuer", info.issuer);
    o.set("number", info.number);
    o.set("this_update", engine::iso8601(info.this_update));
    o.set("next_update", engine::iso8601(info.next_update));
    o.set("entries", static_cast<std::int64_t>(info.entries));
    o.set("state", std::string(engine::crl_state_name(state)));
    o.set("fresh", state == engine::CrlState::kFresh && !behind);
    o.set("behind", behind);
    o.set("revoked_now", revoked_now);
    o.set("authority_key_id", info.authority_key_id);
    o.set("sha256", engine::thumbprint_sha256(crl.der));
    ctx.print_json(o);
  } else {
    std::printf(
        "CRL of CA %s\n  issuer      %s\n  number      %lld\n  thisUpdate  %s\n  nextUpdate  %s\n"
        "  entries     %zu\n  state       %s\n",
        ca.c_str(), info.issuer.c_str(), static_cast<long long>(info.number),
        engine::iso8601(info.this_update).c_str(), engine::iso8601(info.next_update).c_str(),
        info.entries, state_text.c_str());
  }
  return 0;
}

int run_export(Context& ctx) {
  const std::string ca = ctx.args().positional_at(0, "CA");
  if (ctx.args().has("der") && ctx.args().has("pem")) {
    throw Error(ErrorCode::kUsage, "--der and --pem exclude each other");
  }
  const engine::CrlRecord crl = latest_or_fail(ctx, ca);
  const bool der = ctx.args().has("der");
  const std::string bytes =
      der ? std::string(crl.der.begin(), crl.der.end()) : engine::pem(crl.der, "X509 CRL");
  if (const auto out = path_option(ctx.args(), "out")) {
    write_text_file(*out, bytes, std::filesystem::perms(0644));
  } else {
    std::cout.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    std::cout.flush();
    if (!std::cout) throw Error(ErrorCode::kIo, "standard output: cannot be written");
  }
  return 0;
}

}  // namespace

std::string update_broker(Context& ctx, std::int64_t now) {
  const broker::BrokerHome home(ctx.home_dir());
  if (!home.hosts_broker()) return {};  // none here, or a worker's client side only
  const bool was_on = std::filesystem::exists(home.crl_path());
  const broker::CrlInstall inst = broker::install_registry_crls(home, ctx.registry(), now);
  if (!inst.enabled) return "broker: no CRL file (" + inst.off_reason + ")";
  broker::Supervisor sup(home, broker_binary(ctx.args()));
  // The file mosquitto was last told to read, by its hash (crl_install.hpp): a run killed between
  // installing the file and the reload leaves it behind, and the next run reloads although the
  // file is the same (else the broker would keep refusing every device under a CA whose first CRL
  // it never read). A mosquitto started with no crlfile reads none on a reload: it needs a restart.
  const std::string installed = broker::installed_crl_marker(home);
  const std::string told = broker::read_crl_marker(home);
  const std::string crls = std::to_string(inst.crls) + " CRLs";
  if (was_on && sup.status(home.load()).running) {
    if (told == broker::kNoCrlFile) {
      return "broker: CRL file installed (" + crls +
             "); the running mosquitto was started without it and reads it only at start: "
             "`fleetsign broker restart`";
    }
    if (inst.changed || told != installed) {
      sup.reload();
      broker::write_crl_marker(home, installed);
      return "broker: CRL file installed (" + crls + "), mosquitto reloaded";
    }
  }
  if (!was_on) {
    home.write_config(home.load());
    return "broker: CRL file installed (" + crls +
           "); mosquitto reads a new crlfile only at start: `fleetsign broker restart`";
  }
  return "broker: CRL file installed (" + crls + ")";
}

namespace {

int run_sign(Context& ctx) {
  const bool all = ctx.args().has("all"), due = ctx.args().has("due");
  const auto clock = test_hook_clock(ctx.args());
  std::vector<std::string> names;
  if (all || due) {
    if (!ctx.args().positional.empty() || (all && due)) {
      throw Error(ErrorCode::kUsage, "give one of CA, --all or --due");
    }
    for (const auto& st : engine::crl_statuses(ctx.registry(), ctx.policy().crl, clock->now())) {
      if (all || st.needs_signing()) names.push_back(st.ca_name);
    }
  } else {
    names.push_back(ctx.args().positional_at(0, "CA (or --all, --due)"));
    if (!engine::can_sign_crl(ctx.cas().get(names.front()))) {
      throw Error(ErrorCode::kKeyNotFound,
                  "CA '" + names.front() + "' is external: its key is not in this token");
    }
  }
  std::vector<engine::CrlRecord> signed_crls;
  // One CA that cannot be signed for (its key gone from the token) does not keep the others'
  // CRLs from staying fresh: each is signed on its own, and the first failure is thrown after.
  std::optional<Error> failure;
  Poco::JSON::Array failed;
  if (!names.empty()) {
    ctx.token();
    engine::CrlSigner signer(ctx.registry(), ctx.cas(), ctx.policy().crl, *clock);
    for (const auto& name : names) {
      try {
        signed_crls.push_back(signer.sign(name));
      } catch (const Error& e) {
        std::fprintf(stderr, "fleetsign: CA %s: %s\n", name.c_str(), e.what());
        Poco::JSON::Object item(Poco::JSON_PRESERVE_KEY_ORDER);
        item.set("ca", name);
        item.set("code", std::string(error_code_name(e.code())));
        item.set("message", std::string(e.what()));
        failed.add(item);
        if (!failure) failure = e;
      }
    }
  }
  // The broker checks a CRL against the real time: so does its install (a CRL signed with the
  // --now test hook at a future time is refused there, not installed to cut off every device).
  const std::string broker_line = update_broker(ctx, engine::SystemClock().now());
  if (ctx.json()) {
    Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    Poco::JSON::Array list;
    for (const auto& c : signed_crls) {
      Poco::JSON::Object item(Poco::JSON_PRESERVE_KEY_ORDER);
      item.set("ca", c.ca_name);
      item.set("number", c.number);
      item.set("entries", c.entries);
      item.set("next_update", engine::iso8601(c.next_update));
      list.add(item);
    }
    o.set("signed", list);
    o.set("failed", failed);
    o.set("broker", broker_line);
    ctx.print_json(o);
  } else {
    for (const auto& c : signed_crls) {
      std::printf("signed CRL number %lld of CA %s: %lld entries, nextUpdate %s\n",
                  static_cast<long long>(c.number), c.ca_name.c_str(),
                  static_cast<long long>(c.entries), engine::iso8601(c.next_update).c_str());
    }
    if (signed_crls.empty()) std::printf("no CRL needed signing\n");
    if (!broker_line.empty()) std::printf("%s\n", broker_line.c_str());
  }
  // The first failure's exit status (see the README's table); the others are on stderr.
  if (!failure) return 0;
  tell_parent(*failure);
  return exit_status_for(failure->code());
}

}  // namespace

std::string refresh_crls_and_broker(Context& ctx, const std::vector<std::string>& ca_names) {
  ctx.token();
  const auto crls =
      engine::refresh_crls(ctx.registry(), ctx.cas(), ctx.policy().crl, ctx.clock(), ca_names);
  std::string line;
  for (const auto& c : crls) {
    line += (line.empty() ? "" : "; ") + std::string("CRL number ") + std::to_string(c.number) +
            " of CA " + c.ca_name + " signed (" + std::to_string(c.entries) + " entries)";
  }
  std::string broker;
  try {
    broker = update_broker(ctx, ctx.clock().now());
  } catch (const Error& e) {
    throw Error(e.code(), (line.empty() ? std::string("no CRL needed signing") : line) +
                              "; the broker's CRL file was not installed: " + e.what());
  }
  return broker.empty() ? line : line + (line.empty() ? "" : "; ") + broker;
}

std::string refresh_behind_crls(Context& ctx) noexcept {
  std::string line;
  const auto add = [&line](const std::string& part) { line += (line.empty() ? "" : "; ") + part; };
  try {
    ctx.token();
    for (const auto& st :
         engine::crl_statuses(ctx.registry(), ctx.policy().crl, ctx.clock().now())) {
      if (!st.revoked_since) continue;
      // One CA at a time: a CA whose CRL cannot be signed (its key gone from the token) is
      // reported, and never stops the others or the job that asked.
      try {
        const std::string one[] = {st.ca_name};
        for (const auto& c :
             engine::refresh_crls(ctx.registry(), ctx.cas(), ctx.policy().crl, ctx.clock(), one)) {
          add("CRL number " + std::to_string(c.number) + " of CA " + c.ca_name + " signed (" +
              std::to_string(c.entries) + " entries)");
        }
      } catch (const Error& e) {
        add("the CRL of CA " + st.ca_name + " is behind a revocation and was not signed: " +
            e.what() + " (`fleetsign crl sign " + st.ca_name + "` when it can be)");
      }
    }
    const std::string broker = update_broker(ctx, ctx.clock().now());
    if (!broker.empty()) add(broker);
  } catch (const std::exception& e) {
    add(std::string("the CRLs behind a revocation were not all signed and installed: ") + e.what());
  }
  return line;
}

void add_crl_commands(std::vector<Command>& commands) {
  commands.push_back(
      Command{{"crl", "show"},
              "CA [--json]",
              "the CA's latest CRL: number, thisUpdate, nextUpdate, entries, issuer, freshness",
              [](Poco::Util::OptionSet& s) {
                add_option(s, "now", "UNIX", "test hook: judge freshness at this unix time");
                add_flag(s, "json", "print JSON");
              },
              run_show});
  commands.push_back(Command{{"crl", "export"},
                             "CA [--out FILE] [--der | --pem]",
                             "write the CA's latest CRL (PEM by default, to stdout unless --out)",
                             [](Poco::Util::OptionSet& s) {
                               add_option(s, "out", "FILE",
                                          "write here (atomically) instead of stdout");
                               add_flag(s, "der", "DER");
                               add_flag(s, "pem", "PEM (the default)");
                             },
                             run_export});
  commands.push_back(Command{
      {"crl", "sign"},
      "CA | --all | --due [--pin-file FILE] [--json]",
      "sign a new CRL in the token now (--due: those missing, near nextUpdate or behind a "
      "revocation), then install the broker's CRL file",
      [](Poco::Util::OptionSet& s) {
        add_flag(s, "all", "every CA whose key is in the token");
        add_flag(s, "due", "only the CRLs the policy's \"crl\" schedule says are due");
        add_option(s, "pin-file", "FILE", "user PIN file (else FLEETSIGN_PIN or a prompt)");
        add_option(s, "now", "UNIX", "test hook: sign at this unix time (also FLEETSIGN_TEST_NOW)");
        add_option(s, "mosquitto", "PATH",
                   "mosquitto binary (default $FLEETSIGN_MOSQUITTO, else /usr/sbin/mosquitto)");
        add_flag(s, "json", "print JSON");
      },
      run_sign});
}

}  // namespace fleetsign::cli
