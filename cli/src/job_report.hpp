// What the rollover and job commands share (cmd_job.cpp): running a job here with a progress
// line, the closing report, and the one-line state answer. Private to cli/.
#pragma once

#include <string>
#include <vector>

#include "cli.hpp"
#include "fleetsign/jobs/rollover.hpp"

namespace fleetsign::cli {

// The job's closing report (human or --json): counts per state, rate, who is not back and why.
// Returns 13 when a settled job left devices behind, else 0.
int report(Context& ctx, const std::string& job_id, bool list_done);
// Runs the job in this process (logs in; a progress bar on a terminal), then report().
int run_job_in_foreground(Context& ctx, const std::string& job_id);
// {"id","state"} with --json, else "job ID: STATE".
int print_state(Context& ctx, const std::string& id, const std::string& state);
void add_job_commands(std::vector<Command>& commands);  // job list|show|pause|resume|…

// cmd_rollover.cpp: a job run's options (pace, thresholds, timeouts, deadline, PIN, --no-run,
// --json) and the parameters they give; `selection`: also the rollover's device selection.
void add_job_options(Poco::Util::OptionSet& s, const char* deadline_help);
jobs::RolloverParams params_from(Context& ctx, bool selection = true);

}  // namespace fleetsign::cli
