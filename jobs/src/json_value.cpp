#include "fleetsign/jobs/json_value.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>

#include <string>

#include "fleetsign/error.hpp"

namespace fleetsign::jobs {

Poco::Dynamic::Var parse_json_value(std::string_view text) {
  std::string wrapped;
  wrapped.reserve(text.size() + 2);
  wrapped += '[';
  wrapped += text;
  wrapped += ']';
  Poco::JSON::Array::Ptr array;
  try {
    Poco::JSON::Parser parser;
    array = parser.parse(wrapped).extract<Poco::JSON::Array::Ptr>();
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument, "not JSON: " + e.message());
  }
  // "[" + text + "]" is one array exactly when text is one value ("1,2" makes two).
  if (array->size() != 1) {
    throw Error(ErrorCode::kInvalidArgument, array->size() == 0 ? std::string("not JSON: empty")
                                                                : "not JSON: more than one value");
  }
  return array->get(0);
}

}  // namespace fleetsign::jobs
