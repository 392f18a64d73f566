// Reading policy JSON (internal to fleetsign_policy): a Where names the origin and the dotted
// path, so each message says where it is; a Section refuses unknown fields. Shared by policy.cpp
// and rollover_policy.cpp.
#pragma once

#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <string_view>

#include "fleetsign/error.hpp"
#include "fleetsign/policy/rollover_schedule.hpp"

namespace fleetsign::policy::detail {

using Poco::Dynamic::Var;
using Poco::JSON::Array;
using Poco::JSON::Object;

// Joins the items with ", ", each rendered by `show`.
template <typename Range, typename Show>
std::string join(const Range& items, Show show) {
  std::string out;
  for (const auto& item : items) {
    out += (out.empty() ? "" : ", ") + std::string(show(item));
  }
  return out;
}

// Messages end up in terminals and JSON logs, so control and non-ASCII bytes are shown as \xNN
// rather than written raw.
inline std::string escape(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '\'' || c == '\\') {
      out += '\\';
      out += c;
    } else if (byte < 0x20 || byte >= 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", byte);
      out += hex;
    } else {
      out += c;
    }
  }
  return out;
}

inline std::string quote(std::string_view text) { return "'" + escape(text) + "'"; }

// --- Reading JSON. A Where names the origin and dotted path so each message says where it is.

struct Where {
  std::string_view origin;
  std::string path;

  Where field(std::string_view name) const {
    return {origin, path.empty() ? std::string(name) : path + "." + std::string(name)};
  }
  Where item(std::size_t index) const { return {origin, path + "[" + std::to_string(index) + "]"}; }
  [[noreturn]] void fail(std::string_view problem) const {
    std::string message(origin);
    message += ": ";
    if (!path.empty()) {
      message += path + ": ";
    }
    message += problem;
    throw Error(ErrorCode::kPolicyInvalid, message);
  }
};

inline std::string type_name(const Var& value) {
  if (value.isEmpty()) {
    return "null";
  }
  if (value.isBoolean()) {  // checked first: Poco also reports booleans as integers
    return "boolean";
  }
  if (value.isNumeric()) {
    return "number";
  }
  if (value.isString()) {
    return "string";
  }
  if (value.type() == typeid(Array::Ptr)) {
    return "array";
  }
  return value.type() == typeid(Object::Ptr) ? "object" : "unknown";
}

inline Object::Ptr as_object(const Var& value, const Where& where) {
  if (value.type() != typeid(Object::Ptr)) {
    where.fail("must be an object, got " + type_name(value));
  }
  return value.extract<Object::Ptr>();
}

inline Array::Ptr as_array(const Var& value, const Where& where) {
  if (value.type() != typeid(Array::Ptr)) {
    where.fail("must be an array, got " + type_name(value));
  }
  return value.extract<Array::Ptr>();
}

inline std::string as_string(const Var& value, const Where& where) {
  if (!value.isString()) {
    where.fail("must be a string, got " + type_name(value));
  }
  return value.extract<std::string>();
}

inline int as_int_in(const Var& value, const Where& where, int low, int high) {
  if (value.isBoolean() || !value.isInteger()) {
    // A fraction or exponent is shown as written, so "365.0" is not reported as a type error.
    where.fail("must be an integer, got " +
               (value.isNumeric() && !value.isBoolean() ? value.toString() : type_name(value)));
  }
  const std::string range = std::to_string(low) + ".." + std::to_string(high);
  // Parse Poco's own rendering: it may hold int64 or uint64, and from_chars reports overflow.
  const std::string text = value.toString();
  long long number = 0;
  const auto parsed = std::from_chars(text.data(), text.data() + text.size(), number);
  if (parsed.ec != std::errc() || number < low || number > high) {
    where.fail("must be an integer in " + range + ", got " + text);
  }
  return static_cast<int>(number);
}

// One JSON object being read. Every field is optional, and an unknown one is refused: a typo must
// fail loudly rather than leave the default silently in force.
class Section final {
 public:
  Section(const Var& value, Where where, std::initializer_list<std::string_view> known)
      : m_object(as_object(value, where)), m_where(std::move(where)) {
    for (const auto& name : m_object->getNames()) {
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        const auto same = [](std::string_view known_name) { return known_name; };
        m_where.field(name).fail("unknown field; expected one of: " + join(known, same));
      }
    }
  }

  // target = read(value, where) when the field is present.
  template <typename T, typename Read>
  void read(std::string_view name, T& target, Read read) const {
    const std::string key(name);
    if (m_object->has(key)) {
      target = read(m_object->get(key), m_where.field(name));
    }
  }

  template <typename T>
  void read_int(std::string_view name, T& target, int low, int high) const {
    read(name, target, [&](const Var& v, const Where& w) { return as_int_in(v, w, low, high); });
  }

 private:
  Object::Ptr m_object;
  Where m_where;
};

// true or false; anything else names its type.
inline bool as_bool(const Var& value, const Where& where) {
  if (!value.isBoolean()) {
    where.fail("must be true or false, got " + type_name(value));
  }
  return value.extract<bool>();
}

// The "rollover" section (rollover_policy.cpp): the top level's, and a group's overrides.
RolloverSchedule read_rollover(const Var& value, const Where& where);
RolloverOverrides read_rollover_overrides(const Var& value, const Where& where);
Object::Ptr rollover_json(const RolloverSchedule& schedule);

}  // namespace fleetsign::policy::detail
