#include "cli.hpp"

namespace fleetsign::cli {

void add_enrollment_commands(std::vector<Command>& commands) { (void)commands; }

}  // namespace fleetsign::cli
