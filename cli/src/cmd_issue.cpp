#include <cstdio>

#include "cli.hpp"
#include "fleetsign/engine/issuance.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

namespace {

engine::Lineage lineage_options(const Args& a) {
  return engine::Lineage{a.get("lot").value_or(""), a.get("line").value_or(""),
                         a.get("site").value_or(""), a.get("operator").value_or("")};
}

int run_issue_single(Context& ctx) {
  const Args& a = ctx.args();
  const std::string csr_file = a.require("csr");
  const std::string out_dir = a.require("out");
  auto blobs = engine::read_csrs(csr_file);
  if (blobs.size() != 1 || !blobs[0].problem.empty()) {
    throw Error(ErrorCode::kCsrMalformed,
                csr_file + ": " + (blobs.size() != 1 ? "holds " + std::to_string(blobs.size()) +
                                                           " CSRs; use --csr-file for a bundle"
                                                     : blobs[0].problem));
  }
  engine::SingleIssueRequest request{a.require("ca"), std::move(blobs[0].der), lineage_options(a),
                                     a.has("reissue")};
  engine::CaService cas(ctx.registry(), ctx.token(), ctx.policy(), ctx.clock(), ctx.random());
  auto result = engine::issue_single(ctx.registry(), cas, ctx.policy(), ctx.clock(), ctx.random(), request);
  if (!result) {
    throw Error(result.error().code, csr_file + ": " + result.error().message);
  }
  const auto files = engine::write_device_files(out_dir, result->cert, result->chain);
  if (ctx.json()) {
    Poco::JSON::Object o;
    o.set("device_id", result->cert.device_id);
    o.set("serial", result->cert.serial);
    o.set("sha1", result->cert.sha1);
    o.set("sha256", result->cert.sha256);
    o.set("not_before", engine::iso8601(result->cert.not_before));
    o.set("not_after", engine::iso8601(result->cert.not_after));
    o.set("cert", files[0]);
    o.set("fullchain", files[1]);
    o.set("extensions_ignored", result->extensions_ignored);
    o.set("clamped_to_ca", result->clamped);
    ctx.print_json(o);
  } else {
    std::printf("issued %s serial %s\n  SHA-256 %s\n  valid %s .. %s\n  %s\n  %s\n",
                result->cert.device_id.c_str(), result->cert.serial.c_str(), result->cert.sha256.c_str(),
                engine::iso8601(result->cert.not_before).c_str(),
                engine::iso8601(result->cert.not_after).c_str(), files[0].c_str(), files[1].c_str());
    if (result->extensions_ignored) {
      std::printf("note: the CSR asked for extensions; they were ignored (the policy sets every extension)\n");
    }
    if (result->clamped) {
      std::printf("warning: validity clamped to the CA's expiry\n");
    }
  }
  return 0;
}

}  // namespace

void add_issue_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"issue"},
      "--ca NAME --csr FILE --out DIR [--reissue] [--lot L --line L --site S --operator O] [--json]",
      "issue device certificates",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "ca", "NAME", "issuing CA");
        add_option(s, "csr", "FILE", "one device CSR (PEM or DER)");
        add_option(s, "out", "DIR", "output directory");
        add_flag(s, "reissue", "issue even if the device already holds a valid certificate");
        add_option(s, "lot", "L", "manufacturing lot (recorded with the certificate)");
        add_option(s, "line", "L", "production line");
        add_option(s, "site", "S", "site");
        add_option(s, "operator", "O", "operator");
        add_option(s, "pin-file", "FILE", "file holding the user PIN (else FLEETSIGN_PIN)");
        add_flag(s, "json", "print the result as JSON");
      },
      run_issue_single});
}

void add_misc_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"audit"}, "[--limit N] [--json]", "show the append-only audit log, newest first",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "limit", "N", "entries to show (default 50)");
        add_flag(s, "json", "print as JSON");
      },
      [](Context& ctx) {
        const auto entries = ctx.registry().audit_log(ctx.args().get_int("limit").value_or(50));
        if (ctx.json()) {
          Poco::JSON::Array arr;
          for (const auto& e : entries) {
            Poco::JSON::Object o;
            o.set("id", e.id);
            o.set("at", engine::iso8601(e.at));
            o.set("actor", e.actor);
            o.set("action", e.action);
            o.set("subject", e.subject);
            o.set("detail", e.detail);
            arr.add(o);
          }
          Poco::JSON::Object o;
          o.set("audit", arr);
          ctx.print_json(o);
        } else {
          for (const auto& e : entries) {
            std::printf("%6lld %s %-10s %-24s %-20s %s\n", static_cast<long long>(e.id),
                        engine::iso8601(e.at).c_str(), e.actor.c_str(), e.action.c_str(),
                        e.subject.c_str(), e.detail.c_str());
          }
        }
        return 0;
      }});
}

}  // namespace fleetsign::cli
