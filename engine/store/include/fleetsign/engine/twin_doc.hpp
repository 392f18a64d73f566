// Twin documents: JSON objects of at most kTwinDocLimit bytes, changed by JSON merge patches
// (RFC 7386: a member set to null is removed, an object merges recursively, anything else
// replaces). Keys starting with '$' are reserved for the service ("$version", "$metadata") and are
// refused in a patch, as IoT Hub does. Pure and thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace fleetsign::engine {

// Applies `patch` to `doc` and returns the resulting document as compact JSON text. `what` names
// the input in errors ("reported properties of device 'd-1'"). Throws Error(kInvalidArgument)
// when either text is not a JSON object or the patch names a '$' key, Error(kInputTooLarge)
// when the patch or the result is over kTwinDocLimit bytes.
std::string merge_patch(std::string_view doc, std::string_view patch, std::string_view what);

// Checks that `patch` is a JSON object a twin accepts (as merge_patch would) and returns it in
// compact form; the same errors.
std::string normalized_patch(std::string_view patch, std::string_view what);

// `doc` (a JSON object) with "$version": version added: what a device reads.
std::string with_version(std::string_view doc, long long version);

}  // namespace fleetsign::engine
