// Time and randomness are injected (Boulder's fake clock, step-ca's `var now`): nothing deep in the
// engine reads the wall clock or the RNG directly, so tests can pin both.
#pragma once

#include <cstdint>
#include <span>

namespace fleetsign::engine {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::int64_t now() const = 0;  // unix seconds, UTC
};

class SystemClock final : public Clock {
 public:
  std::int64_t now() const override;
};

class FixedClock final : public Clock {
 public:
  explicit FixedClock(std::int64_t t) : m_t(t) {}
  std::int64_t now() const override { return m_t; }
  void set(std::int64_t t) { m_t = t; }

 private:
  std::int64_t m_t;
};

// Source of serial-number randomness. Must be a CSPRNG in production. Thread-safe.
class RandomSource {
 public:
  virtual ~RandomSource() = default;
  virtual void fill(std::span<std::uint8_t> out) = 0;
};

// OpenSSL's DRBG (RAND_bytes): per-thread instances in OpenSSL 3, safe from any thread.
class CsprngSource final : public RandomSource {
 public:
  void fill(std::span<std::uint8_t> out) override;
};

}  // namespace fleetsign::engine
