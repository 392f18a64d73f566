#include "cli.hpp"

namespace fleetsign::cli {

void add_auth_commands(std::vector<Command>& commands) { (void)commands; }

}  // namespace fleetsign::cli
