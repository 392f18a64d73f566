#include "cli.hpp"

namespace fleetsign::cli {

void add_report_commands(std::vector<Command>& commands) { (void)commands; }

}  // namespace fleetsign::cli
