// registry migrate --to URL: the home's SQLite registry moved into PostgreSQL, checked, and the
// home switched to it (engine/registry_migrate.hpp does the copy and the checks).
#include <unistd.h>

#include <cstdio>

#include "cli.hpp"
#include "fleetsign/engine/home_lock.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry_migrate.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::cli {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

int run_migrate(Context& ctx) {
  const auto to = ctx.args().get("to");
  if (!to || to->empty()) {
    throw Error(ErrorCode::kUsage, "registry migrate needs --to postgresql://USER@HOST/DB");
  }
  engine::check_registry_url(*to);
  engine::Home home = engine::Home::open(ctx.home_dir());
  if (!home.sqlite_registry()) {
    throw Error(ErrorCode::kInvalidArgument,
                "the registry of " + home.config().dir.string() +
                    " is in PostgreSQL already; registry migrate moves a SQLite registry");
  }
  // 1. No fleetsign process of this home meanwhile (serve, issue, rollovers hold this lock).
  const auto lock = engine::HomeLock::acquire(home.config().dir, ctx.args().has("wait"));
  const bool terminal = !ctx.json() && ::isatty(STDERR_FILENO) != 0;
  // 2. Copy and check.
  const auto report =
      engine::migrate_registry(home.registry_path(), *to, [&](const engine::MigratedTable& t) {
        if (terminal) {
          std::fprintf(stderr, "  %-26s %10lld rows  checked\n", t.name.c_str(),
                       static_cast<long long>(t.rows));
        }
      });
  // 3. From now on the home's commands use PostgreSQL.
  const std::string from = home.registry_path().string();
  home.switch_registry(*to);
  home.open_registry()->audit(
      "registry.migrate", *to,
      engine::json_object({{"from", from}, {"rows", std::to_string(report.rows)}}));
  if (ctx.json()) {
    Object o(Poco::JSON_PRESERVE_KEY_ORDER);
    o.set("from", from);
    o.set("to", *to);
    o.set("rows", report.rows);
    o.set("seconds", report.seconds);
    Array tables;
    for (const auto& t : report.tables) {
      Object to_json(Poco::JSON_PRESERVE_KEY_ORDER);
      to_json.set("table", t.name);
      to_json.set("rows", t.rows);
      to_json.set("checksum", t.checksum);
      tables.add(to_json);
    }
    o.set("tables", tables);
    ctx.print_json(o);
  } else {
    std::printf(
        "migrated %lld rows in %zu tables from %s to %s in %.1f s; every table's rows and "
        "checksum equal on both sides\n"
        "the home now uses the PostgreSQL registry; %s is left as it was (keep it as a backup, "
        "or remove it)\n",
        static_cast<long long>(report.rows), report.tables.size(), from.c_str(), to->c_str(),
        report.seconds, from.c_str());
  }
  return 0;
}

}  // namespace

void add_registry_commands(std::vector<Command>& commands) {
  commands.push_back(Command{
      {"registry", "migrate"},
      "--to postgresql://USER@HOST[:PORT]/DB [--wait] [--json]",
      "move the home's SQLite registry, with its whole history, into an empty PostgreSQL "
      "database, check every table (rows and checksum) and switch the home to it",
      [](Poco::Util::OptionSet& s) {
        add_option(s, "to", "URL",
                   "the PostgreSQL database (empty; C collation advised; the password through "
                   "PGPASSWORD or ~/.pgpass, never in the URL)");
        add_flag(s, "json", "print the result as JSON");
      },
      run_migrate});
}

}  // namespace fleetsign::cli
