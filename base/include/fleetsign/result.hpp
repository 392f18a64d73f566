// Result<T>: a value or a per-item failure (code + message). Member names follow std::expected so
// that it can become an alias when the toolchain has it. Cheap to move; no exceptions inside.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

#include "fleetsign/error.hpp"

namespace fleetsign {

struct Failure {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
};

template <typename T>
class Result {
 public:
  Result(T value) : m_v(std::move(value)) {}            // NOLINT(google-explicit-constructor)
  Result(Failure failure) : m_v(std::move(failure)) {}  // NOLINT(google-explicit-constructor)

  bool has_value() const noexcept { return m_v.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }
  T& value() & {
    assert(has_value());
    return std::get<0>(m_v);
  }
  const T& value() const& {
    assert(has_value());
    return std::get<0>(m_v);
  }
  T&& value() && {
    assert(has_value());
    return std::get<0>(std::move(m_v));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const Failure& error() const {
    assert(!has_value());
    return std::get<1>(m_v);
  }

 private:
  std::variant<T, Failure> m_v;
};

inline Failure fail(ErrorCode code, std::string message) {
  return Failure{code, std::move(message)};
}

}  // namespace fleetsign
