// The fleetsign program (cli::run_main; main.cpp calls it): parse the command words, then the
// command's options, run it, map errors to exit statuses (fleetsign::exit_status_for). Global
// options: --home DIR (or FLEETSIGN_HOME).
#include <Poco/Util/HelpFormatter.h>
#include <Poco/Util/OptionException.h>
#include <Poco/Util/OptionProcessor.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>

#include "cli.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/error.hpp"

namespace fs = std::filesystem;
using fleetsign::cli::Args;
using fleetsign::cli::Command;

namespace {

std::vector<Command> all_commands() {
  std::vector<Command> commands;
  fleetsign::cli::add_init_commands(commands);
  fleetsign::cli::add_registry_commands(commands);
  fleetsign::cli::add_ca_commands(commands);
  fleetsign::cli::add_issue_commands(commands);
  fleetsign::cli::add_enrollment_commands(commands);
  fleetsign::cli::add_auth_commands(commands);
  fleetsign::cli::add_report_commands(commands);
  fleetsign::cli::add_broker_commands(commands);
  fleetsign::cli::add_twin_commands(commands);
  fleetsign::cli::add_method_commands(commands);
  fleetsign::cli::add_rollover_commands(commands);
  fleetsign::cli::add_incident_commands(commands);
  fleetsign::cli::add_serve_commands(commands);
  fleetsign::cli::add_worker_commands(commands);
  fleetsign::cli::add_crl_commands(commands);
  fleetsign::cli::add_revoke_commands(commands);
  fleetsign::cli::add_operator_commands(commands);
  fleetsign::cli::add_overview_commands(commands);
  return commands;
}

std::string joined(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) {
    out += out.empty() ? "" : " ";
    out += w;
  }
  return out;
}

void print_overview(const std::vector<Command>& commands, std::FILE* to) {
  std::fprintf(to,
               "fleetsign — device PKI for IoT fleets: CA keys in a PKCS#11 token, device "
               "certificates in bulk.\n\nusage: fleetsign [--home DIR] COMMAND [OPTIONS]\n"
               "  --home DIR   the fleetsign home (default: $FLEETSIGN_HOME, else ~/.fleetsign)\n\n"
               "commands:\n");
  for (const auto& c : commands) {
    std::fprintf(to, "  %-36s %s\n", joined(c.words).c_str(), c.summary.c_str());
  }
  std::fprintf(to,
               "\nPINs: FLEETSIGN_PIN or --pin-file FILE (user), FLEETSIGN_SO_PIN or "
               "--so-pin-file FILE (init), else a prompt on a terminal; never on the command "
               "line.\nRun `fleetsign COMMAND --help` for a command's options.\n");
}

void print_command_help(const Command& c, Poco::Util::OptionSet& set) {
  Poco::Util::HelpFormatter help(set);
  help.setUnixStyle(true);
  help.setCommand("fleetsign " + joined(c.words));
  help.setUsage(c.usage);
  help.setHeader(c.summary);
  help.setIndent(4);
  help.setWidth(100);
  help.format(std::cout);
}

Args parse_options(const Command& c, Poco::Util::OptionSet& set,
                   const std::vector<std::string>& rest) {
  Poco::Util::OptionProcessor processor(set);
  processor.setUnixStyle(true);
  Args args;
  try {
    for (const auto& arg : rest) {
      std::string name, value;
      if (processor.process(arg, name, value)) {
        if (!name.empty()) {
          args.options[name].push_back(value);
        }
      } else {
        args.positional.push_back(arg);
      }
    }
    processor.checkRequired();
  } catch (const Poco::Util::OptionException& e) {
    throw fleetsign::Error(fleetsign::ErrorCode::kUsage, "fleetsign " + joined(c.words) + ": " +
                                                             e.displayText() + " (see --help)");
  }
  return args;
}

// A child of `serve` (FLEETSIGN_STATUS_FD, set by serve only) tells it which error ended it, in a
// word: serve stops running jobs for a PIN the token refuses, not for every token error.
int g_status_fd = -1;

// Taken once at start: the variable is removed, and the descriptor closes on exec, so a process
// this one starts never writes into whatever its own descriptor 3 is.
void take_status_channel() {
  const char* fd = std::getenv("FLEETSIGN_STATUS_FD");
  if (fd == nullptr) return;
  struct stat st {};
  if (std::strcmp(fd, "3") == 0 && ::fstat(3, &st) == 0 && S_ISFIFO(st.st_mode) &&
      ::fcntl(3, F_SETFD, FD_CLOEXEC) == 0) {
    g_status_fd = 3;
  }
  ::unsetenv("FLEETSIGN_STATUS_FD");
}

int report(const fleetsign::Error& e, bool json) {
  fleetsign::cli::tell_parent(e);
  if (json) {
    Poco::JSON::Object err;
    err.set("code", std::string(fleetsign::error_code_name(e.code())));
    // A message may quote an input's bytes (a JSON parser names the byte it refused): --json
    // output stays JSON, which is UTF-8.
    err.set("message", fleetsign::engine::valid_utf8(e.what()));
    Poco::JSON::Object obj;
    obj.set("error", err);
    std::ostringstream s;
    obj.stringify(s);
    std::cout << s.str() << std::endl;
  }
  std::fprintf(stderr, "fleetsign: error [%s]: %s\n",
               std::string(fleetsign::error_code_name(e.code())).c_str(), e.what());
  return fleetsign::exit_status_for(e.code());
}

// Global options come before the command words: `--home DIR` or `--home=DIR`, DIR not empty.
// Removes them from `args`; kUsage when the directory is missing or empty.
std::optional<fs::path> take_home_option(std::vector<std::string>& args) {
  std::optional<fs::path> home;
  while (!args.empty()) {
    std::size_t used = 1;
    std::string value;
    if (args[0].rfind("--home=", 0) == 0) {
      value = args[0].substr(7);
    } else if (args[0] == "--home" && args.size() >= 2) {
      value = args[1];
      used = 2;
    } else if (args[0] == "--home") {
      throw fleetsign::Error(fleetsign::ErrorCode::kUsage, "--home needs a directory");
    } else {
      break;
    }
    if (value.empty()) {
      throw fleetsign::Error(fleetsign::ErrorCode::kUsage,
                             "--home needs a directory, got an empty value");
    }
    home = value;
    args.erase(args.begin(), args.begin() + static_cast<long>(used));
  }
  return home;
}

}  // namespace

void fleetsign::cli::tell_parent(const fleetsign::Error& e) {
  if (g_status_fd < 0) return;
  const std::string_view name = fleetsign::error_code_name(e.code());
  if (::write(g_status_fd, name.data(), name.size()) < 0) {
    // serve then acts on the exit status alone, as for a child that died
  }
}

int fleetsign::cli::run_main(int argc, char** argv) {
  take_status_channel();
  std::vector<std::string> argv_rest(argv + 1, argv + argc);
  std::optional<fs::path> home;
  try {
    home = take_home_option(argv_rest);
  } catch (const fleetsign::Error& e) {
    return report(e, std::find(argv_rest.begin(), argv_rest.end(), "--json") != argv_rest.end());
  }
  const auto commands = all_commands();
  if (argv_rest.empty() || argv_rest[0] == "--help" || argv_rest[0] == "-h" ||
      argv_rest[0] == "help") {
    print_overview(commands, stdout);
    return argv_rest.empty() ? 2 : 0;
  }
  // Longest match of command words.
  const Command* found = nullptr;
  for (const auto& c : commands) {
    if (c.words.size() <= argv_rest.size() &&
        std::equal(c.words.begin(), c.words.end(), argv_rest.begin()) &&
        (found == nullptr || c.words.size() > found->words.size())) {
      found = &c;
    }
  }
  const bool wants_json =
      std::find(argv_rest.begin(), argv_rest.end(), "--json") != argv_rest.end();
  if (found == nullptr) {
    // A group's words alone (`fleetsign crl`, `fleetsign enrollment group --help`): its commands.
    std::vector<std::string> words;
    for (const auto& w : argv_rest) {
      if (w.empty() || w[0] == '-') break;
      words.push_back(w);
    }
    for (std::size_t k = words.size(); k > 0; --k) {
      const std::vector<std::string> prefix(words.begin(), words.begin() + static_cast<long>(k));
      std::string group;
      for (const auto& c : commands) {
        if (c.words.size() > k && std::equal(prefix.begin(), prefix.end(), c.words.begin())) {
          group += "  " + joined(c.words) + " " + c.usage + "\n      " + c.summary + "\n";
        }
      }
      if (group.empty()) continue;
      const bool help =
          argv_rest.size() == k + 1 && (argv_rest[k] == "--help" || argv_rest[k] == "-h");
      if (!help) {
        if (words.size() > k) {
          std::fprintf(stderr, "fleetsign: error [usage]: unknown command '%s %s'\n\n",
                       joined(prefix).c_str(), words[k].substr(0, 100).c_str());
        } else {
          std::fprintf(stderr, "fleetsign: error [usage]: '%s' needs one of its commands\n\n",
                       joined(prefix).c_str());
        }
      }
      std::fprintf(help ? stdout : stderr,
                   "fleetsign %s: its commands (`fleetsign %s COMMAND --help` for one's "
                   "options)\n%s",
                   joined(prefix).c_str(), joined(prefix).c_str(), group.c_str());
      return help ? 0 : 2;
    }
    std::fprintf(stderr, "fleetsign: error [usage]: unknown command '%s'\n\n",
                 argv_rest[0].c_str());
    print_overview(commands, stderr);
    return 2;
  }
  const std::vector<std::string> rest(argv_rest.begin() + static_cast<long>(found->words.size()),
                                      argv_rest.end());
  Poco::Util::OptionSet set;
  found->options(set);
  set.addOption(Poco::Util::Option("help", "h", "show this help"));
  set.addOption(Poco::Util::Option(
      "wait", "", "when another fleetsign process holds the home, wait for it instead of failing"));
  if (std::find(rest.begin(), rest.end(), "--help") != rest.end() ||
      std::find(rest.begin(), rest.end(), "-h") != rest.end()) {
    print_command_help(*found, set);
    return 0;
  }
  try {
    Args args = parse_options(*found, set, rest);
    fleetsign::cli::Context ctx(home, std::move(args));
    const int status = found->run(ctx);
    // What a command printed is its output: a full disk or a closed pipe is an error, not 0.
    std::cout.flush();
    if (!std::cout || std::fflush(stdout) != 0 || std::ferror(stdout) != 0) {
      throw fleetsign::Error(
          fleetsign::ErrorCode::kIo,
          "standard output: cannot be written (" + std::string(std::strerror(errno)) + ")");
    }
    return status;
  } catch (const fleetsign::Error& e) {
    return report(e, wants_json);
  } catch (const Poco::Exception& e) {
    return report(fleetsign::Error(fleetsign::ErrorCode::kInternal, e.displayText()), wants_json);
  } catch (const std::exception& e) {
    return report(fleetsign::Error(fleetsign::ErrorCode::kInternal, e.what()), wants_json);
  }
}
