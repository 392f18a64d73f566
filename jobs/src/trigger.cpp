#include "fleetsign/jobs/trigger.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <future>
#include <sstream>

#include "fleetsign/jobs/json_value.hpp"

namespace fleetsign::jobs {

namespace {

bool is_method_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

}  // namespace

std::optional<Failure> check_request(const MethodRequest& request) {
  const std::string& device = request.device.str();
  const std::string& name = request.method;
  if (name.empty() || name.size() > kMaxMethodNameLength) {
    return fail(ErrorCode::kInvalidArgument, "method name for device " + device + " must have 1.." +
                                                 std::to_string(kMaxMethodNameLength) +
                                                 " characters, got " + std::to_string(name.size()));
  }
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (!is_method_char(name[i])) {
      return fail(ErrorCode::kInvalidArgument, "method name for device " + device +
                                                   " has a character outside [A-Za-z0-9_.-] "
                                                   "at position " +
                                                   std::to_string(i));
    }
  }
  if (request.response_timeout_s < 1 || request.response_timeout_s > kMaxTimeoutSeconds) {
    return fail(ErrorCode::kInvalidArgument,
                "response timeout must be 1.." + std::to_string(kMaxTimeoutSeconds) +
                    " seconds, got " + std::to_string(request.response_timeout_s));
  }
  if (request.connect_timeout_s < 0 || request.connect_timeout_s > kMaxTimeoutSeconds) {
    return fail(ErrorCode::kInvalidArgument,
                "connect timeout must be 0.." + std::to_string(kMaxTimeoutSeconds) +
                    " seconds, got " + std::to_string(request.connect_timeout_s));
  }
  if (request.payload.size() > kMaxMethodPayload) {
    return fail(ErrorCode::kInputTooLarge, "method payload for device " + device + " is " +
                                               std::to_string(request.payload.size()) +
                                               " bytes; the limit is " +
                                               std::to_string(kMaxMethodPayload));
  }
  try {
    parse_json_value(request.payload);
  } catch (const Error& e) {
    return fail(ErrorCode::kInvalidArgument,
                "method payload for device " + device + " is " + e.what());
  }
  return std::nullopt;
}

std::string service_error_payload(int error_code, std::string_view message) {
  Poco::JSON::Object obj;
  obj.set("errorCode", error_code);
  obj.set("message", std::string(message));
  std::ostringstream out;
  obj.stringify(out);
  return out.str();
}

Completion CompletionQueue::sink() {
  return [this](CallId id, MethodOutcome outcome) {
    {
      const std::lock_guard lock(m_mutex);
      m_items.push_back(Item{id, std::move(outcome)});
    }
    m_ready.notify_one();
  };
}

std::optional<CompletionQueue::Item> CompletionQueue::pop(std::chrono::milliseconds timeout) {
  std::unique_lock lock(m_mutex);
  if (!m_ready.wait_for(lock, timeout, [this] { return !m_items.empty(); })) {
    return std::nullopt;
  }
  Item item = std::move(m_items.front());
  m_items.pop_front();
  return item;
}

std::size_t CompletionQueue::size() const {
  const std::lock_guard lock(m_mutex);
  return m_items.size();
}

MethodOutcome invoke_and_wait(Trigger& trigger, MethodRequest request) {
  std::promise<MethodOutcome> promise;
  auto future = promise.get_future();
  trigger.invoke(std::move(request), [&promise](CallId, MethodOutcome outcome) {
    promise.set_value(std::move(outcome));
  });
  return future.get();
}

}  // namespace fleetsign::jobs
