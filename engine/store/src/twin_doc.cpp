// Twin documents: see twin_doc.hpp.
#include "fleetsign/engine/twin_doc.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <sstream>

#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

using Poco::JSON::Object;

// Nesting beyond this is refused (Poco's parser recurses; a 32 KiB document could nest deeper).
constexpr std::size_t kMaxDepth = 32;

Object::Ptr parse_object(std::string_view text, std::string_view what, std::string_view role) {
  if (text.size() > kTwinDocLimit) {
    throw Error(ErrorCode::kInputTooLarge, std::string(what) + ": the " + std::string(role) +
                                               " is " + std::to_string(text.size()) +
                                               " bytes, over the limit of " +
                                               std::to_string(kTwinDocLimit));
  }
  try {
    Poco::JSON::Parser parser;
    parser.setDepth(kMaxDepth);
    const Poco::Dynamic::Var v = parser.parse(std::string(text));
    if (v.type() != typeid(Object::Ptr)) {
      throw Error(ErrorCode::kInvalidArgument,
                  std::string(what) + ": the " + std::string(role) + " is not a JSON object");
    }
    return v.extract<Object::Ptr>();
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string(what) + ": the " + std::string(role) +
                    " is not valid JSON: " + valid_utf8(e.displayText()));
  }
}

bool is_object(const Poco::Dynamic::Var& v) { return v.type() == typeid(Object::Ptr); }

void refuse_reserved_keys(const Object& patch, std::string_view what);

// Objects inside arrays are property documents too: their '$' names are reserved as well.
void refuse_reserved_keys_in(const Poco::Dynamic::Var& value, std::string_view what) {
  if (is_object(value)) {
    refuse_reserved_keys(*value.extract<Object::Ptr>(), what);
  } else if (value.type() == typeid(Poco::JSON::Array::Ptr)) {
    const auto array = value.extract<Poco::JSON::Array::Ptr>();
    for (std::size_t i = 0; i < array->size(); ++i) {
      refuse_reserved_keys_in(array->get(static_cast<unsigned>(i)), what);
    }
  }
}

void refuse_reserved_keys(const Object& patch, std::string_view what) {
  for (const auto& [key, value] : patch) {
    if (!key.empty() && key.front() == '$') {
      throw Error(ErrorCode::kInvalidArgument,
                  std::string(what) + ": '" + key + "' is reserved (names starting with '$')");
    }
    refuse_reserved_keys_in(value, what);
  }
}

// RFC 7386 MergePatch(target, patch) for an object patch, in place.
void merge(Object& target, const Object& patch) {
  for (const auto& [key, value] : patch) {
    if (value.isEmpty()) {
      target.remove(key);
    } else if (is_object(value)) {
      Object::Ptr sub = target.isObject(key) ? target.getObject(key) : Object::Ptr(new Object);
      merge(*sub, *value.extract<Object::Ptr>());
      target.set(key, sub);
    } else {
      target.set(key, value);
    }
  }
}

std::string compact(const Object& o) {
  std::ostringstream s;
  o.stringify(s);
  return s.str();
}

}  // namespace

std::string merge_patch(std::string_view doc, std::string_view patch, std::string_view what) {
  Object::Ptr p = parse_object(patch, what, "patch");
  refuse_reserved_keys(*p, what);
  Object::Ptr target = parse_object(doc, what, "document");
  merge(*target, *p);
  std::string out = compact(*target);
  if (out.size() > kTwinDocLimit) {
    throw Error(ErrorCode::kInputTooLarge, std::string(what) + ": the patched document would be " +
                                               std::to_string(out.size()) +
                                               " bytes, over the limit of " +
                                               std::to_string(kTwinDocLimit));
  }
  return out;
}

std::string normalized_patch(std::string_view patch, std::string_view what) {
  Object::Ptr p = parse_object(patch, what, "patch");
  refuse_reserved_keys(*p, what);
  return compact(*p);
}

std::string with_version(std::string_view doc, long long version) {
  Object::Ptr o = parse_object(doc, "twin document", "document");
  o->set("$version", static_cast<Poco::Int64>(version));
  return compact(*o);
}

}  // namespace fleetsign::engine
