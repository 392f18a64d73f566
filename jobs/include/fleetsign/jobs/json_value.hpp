// Any JSON value as text (a method payload may be an object, an array, a string, a number, true,
// false or null). Poco 1.11's parser accepts only an object or an array at the top, so the text is
// parsed as the one element of an array.
#pragma once

#include <Poco/Dynamic/Var.h>

#include <string_view>

namespace fleetsign::jobs {

// The value; Error(kInvalidArgument) "not JSON: …" when `text` is not exactly one JSON value
// (surrounding whitespace allowed).
Poco::Dynamic::Var parse_json_value(std::string_view text);

}  // namespace fleetsign::jobs
