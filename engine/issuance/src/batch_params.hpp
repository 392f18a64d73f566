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

}  // namespace fleetsign::engine
