// fleetsign: the program. Everything is in the fleetsign_cli library (run.cpp), so that tests can
// build the same program around a wrapped store (tests/batch/faulty_main.cpp).
#include "cli.hpp"

int main(int argc, char** argv) { return fleetsign::cli::run_main(argc, argv); }
