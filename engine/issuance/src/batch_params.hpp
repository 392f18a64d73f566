// Batch parameters and names, private to the issuance room (batch_params.cpp).
#pragma once

#include <string>

#include "fleetsign/engine/batch.hpp"

namespace fleetsign::engine {

// Everything a resume needs, as the JSON recorded with the batch, and back (kRegistryError when
// the recorded text is malformed).
std::string params_to_json(const BatchOptions& o);
BatchOptions params_from_json(const std::string& id, const std::string& text);
// batch-YYYYMMDD-HHMMSS-xxxxxxxx, from the injected clock and random source.
std::string new_batch_id(const Clock& clock, RandomSource& random);

namespace batch {
// batch.cpp's checks, shared with batch_share.cpp: options (kUsage, kInvalidArgument), inputs
// (before anything is recorded), the output directory (made; kIo) and its owner (a marker file
// naming the batch; kOutputDirInUse for another batch's or a foreign non-empty directory).
void validate(const BatchOptions& o, const hsm::Pin* pfx_password);
void check_inputs(const BatchInput& input, const policy::Policy& policy);
void prepare_out_dir(BatchOptions& o, BatchStore& batches, bool resuming);
void claim_out_dir(const std::string& out, const std::string& batch_id, bool resuming);
std::size_t tokens_per_thread(const BatchOptions& o);
}  // namespace batch

}  // namespace fleetsign::engine
