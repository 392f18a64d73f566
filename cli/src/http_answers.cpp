// The HTTP service's answers (http_internal.hpp): JSON and bytes on the wire, the status for each
// error code, and a CLI command run as a child whose --json result becomes the answer.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPServerResponse.h>

#include <chrono>
#include <map>
#include <sstream>

#include "child.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/error.hpp"
#include "http_internal.hpp"

namespace fleetsign::cli {

void send_json(Poco::Net::HTTPServerResponse& resp, int status, const std::string& body) {
  send_bytes(resp, status, "application/json", body.empty() ? "{}\n" : body);
}

void send_error(Poco::Net::HTTPServerResponse& resp, int status, const std::string& code,
                const std::string& message) {
  const Answer a = error_answer(status, code, message);
  send_bytes(resp, status, "application/json", a.body);
}

void send_bytes(Poco::Net::HTTPServerResponse& resp, int status, const std::string& type,
                const std::string& body) {
  resp.setStatusAndReason(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(status));
  // A refusal may leave the request's body unread: the connection cannot carry another request.
  if (status >= 400) resp.setKeepAlive(false);
  resp.setContentType(type);
  resp.setContentLength64(static_cast<Poco::Int64>(body.size()));
  resp.set("Cache-Control", "no-store");
  resp.set("X-Content-Type-Options", "nosniff");
  resp.send().write(body.data(), static_cast<std::streamsize>(body.size()));
}

int http_status_for(const std::string& code) {
  static const std::map<std::string, int> kStatus = {
      {"usage", 400},
      {"invalid_argument", 400},
      {"policy_invalid", 400},
      {"invalid_subject", 400},
      {"device_id_invalid", 400},
      {"validity_beyond_issuer", 422},
      {"ca_constraint", 422},
      {"csr_malformed", 422},
      {"csr_signature_invalid", 422},
      {"key_rejected", 422},
      {"key_blocked", 422},
      {"certificate_malformed", 422},
      {"crl_invalid", 422},
      {"input_too_large", 413},
      {"not_found", 404},
      {"device_offline", 404},
      {"already_exists", 409},
      {"already_issued", 409},
      {"duplicate_in_batch", 409},
      {"output_dir_in_use", 409},
      {"home_busy", 503},
      {"registry_busy", 503},
      {"service_unavailable", 503},
      {"device_timeout", 504},
      {"method_failed", 502},
  };
  const auto it = kStatus.find(code);
  return it == kStatus.end() ? 500 : it->second;
}

Answer error_answer(int status, const std::string& code, const std::string& message) {
  Poco::JSON::Object err(Poco::JSON_PRESERVE_KEY_ORDER);
  err.set("code", code);
  err.set("message", engine::valid_utf8(message));
  Poco::JSON::Object obj;
  obj.set("error", err);
  std::ostringstream out;
  obj.stringify(out);
  return {status, out.str() + "\n"};
}

Answer run_command(HttpService::Impl& impl, const Request& r,
                   const std::vector<std::string>& args) {
  ChildSpec spec;
  spec.program = impl.opt.program;
  spec.args = {"--home", impl.opt.home.string()};
  spec.args.insert(spec.args.end(), r.route.words.begin(), r.route.words.end());
  spec.args.insert(spec.args.end(), args.begin(), args.end());
  spec.args.push_back("--wait");
  spec.args.push_back("--json");
  if (impl.opt.pin != nullptr) {
    spec.env.push_back(std::string("FLEETSIGN_PIN=") + impl.opt.pin->c_str());
  }
  spec.env.push_back("FLEETSIGN_ACTOR=http:" + r.caller.name());
  spec.unset = {"FLEETSIGN_SO_PIN",
                "FLEETSIGN_PFX_PASSWORD"};  // no command the API runs needs them
  const auto started = std::chrono::steady_clock::now();
  const ChildResult res = run_child(std::move(spec));
  impl.commands_run++;
  impl.command_ms_total +=
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::steady_clock::now() - started)
                                     .count());
  if (res.exit_status == exit_status_for(ErrorCode::kPinIncorrect)) {
    impl.token_failed_at = std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  }
  if (res.timed_out) return error_answer(504, "internal", "the command did not finish in time");
  if (res.truncated) {
    return error_answer(500, "input_too_large",
                        "the command's answer is too large for the API; use a limit parameter");
  }
  // The CLI's --json output: one object; on failure {"error":{code,message}}.
  std::string code;
  bool json = true;
  bool continued = false;  // a POST that continues what exists creates nothing: 200, not 201
  try {
    const auto obj = Poco::JSON::Parser()
                         .parse(res.out.empty() ? "{}" : res.out)
                         .extract<Poco::JSON::Object::Ptr>();
    if (obj->has("error"))
      code = obj->getObject("error")->optValue<std::string>("code", "internal");
    continued = obj->optValue<bool>("continued", false);
  } catch (const Poco::Exception&) {
    json = false;
  }
  if (res.exit_status == 0) {
    const int status = continued && r.route.may_continue ? 200 : r.route.success_status;
    return {status, res.out.empty() ? "{}\n" : res.out};
  }
  if (!code.empty()) return {http_status_for(code), res.out};
  // `method invoke` answers with a result and the exit status of its outcome: offline, no
  // answer, another status, the backend unavailable.
  for (const ErrorCode c : {ErrorCode::kDeviceOffline, ErrorCode::kDeviceTimeout,
                            ErrorCode::kMethodFailed, ErrorCode::kServiceUnavailable}) {
    if (json && res.exit_status == exit_status_for(c)) {
      return {http_status_for(std::string(error_code_name(c))), res.out};
    }
  }
  // A non-zero status with a result (`job show` of a job that left devices behind, a batch with
  // rejected CSRs): the result is the answer.
  if (json && !res.out.empty()) return {r.route.success_status, res.out};
  const std::size_t tail = res.err.size() > 2000 ? res.err.size() - 2000 : 0;
  return error_answer(500, "internal", "the command failed: " + res.err.substr(tail));
}

}  // namespace fleetsign::cli
