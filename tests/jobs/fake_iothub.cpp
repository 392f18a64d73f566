// See fake_iothub.hpp: IoT Hub's published contract for invoking a direct method, served locally.
#include "fake_iothub.hpp"

#include <Poco/Base64Encoder.h>
#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/SecureServerSocket.h>
#include <Poco/URI.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <chrono>
#include <ctime>
#include <regex>
#include <sstream>
#include <thread>

namespace fleetsign::testing {

namespace {

std::string base64(const std::string& raw) {
  std::ostringstream out;
  Poco::Base64Encoder enc(out);
  enc.rdbuf()->setLineLength(0);
  enc << raw;
  enc.close();
  return out.str();
}

std::string json(const Poco::JSON::Object& obj) {
  std::ostringstream out;
  obj.stringify(out);
  return out.str();
}

std::string hub_error(int code, const std::string& message) {
  Poco::JSON::Object o;
  o.set("errorCode", code);
  o.set("trackingId", "fake-tracking-id");
  o.set("message", message);
  o.set("timestampUtc", "2026-01-01T00:00:00Z");
  return json(o);
}

class Handler final : public Poco::Net::HTTPRequestHandler {
 public:
  explicit Handler(FakeIotHub& hub) : m_hub(hub) {}
  void handleRequest(Poco::Net::HTTPServerRequest& request,
                     Poco::Net::HTTPServerResponse& response) override {
    const int now = ++m_hub.m_concurrent;
    for (int seen = m_hub.m_max_concurrent.load(); now > seen;) {
      if (m_hub.m_max_concurrent.compare_exchange_weak(seen, now)) break;
    }
    FakeIotHub::Seen seen;
    seen.method = request.getMethod();
    seen.uri = request.getURI();
    seen.content_type = request.getContentType();
    seen.authorization = request.get("Authorization", "");
    std::string body(256 * 1024, '\0');
    request.stream().read(body.data(), static_cast<std::streamsize>(body.size()));
    body.resize(static_cast<std::size_t>(request.stream().gcount()));
    seen.body = body;
    const FakeIotHub::Answer answer = m_hub.handle(seen);
    seen.status = answer.status;
    m_hub.record(seen);
    response.setStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(answer.status));
    response.setContentType("application/json; charset=utf-8");
    if (answer.retry_after_s >= 0) {
      response.set("Retry-After", std::to_string(answer.retry_after_s));
    }
    response.setContentLength(static_cast<std::streamsize>(answer.body.size()));
    response.send().write(answer.body.data(), static_cast<std::streamsize>(answer.body.size()));
    --m_hub.m_concurrent;
  }

 private:
  FakeIotHub& m_hub;
};

class Factory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  explicit Factory(FakeIotHub& hub) : m_hub(hub) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(
      const Poco::Net::HTTPServerRequest&) override {
    return new Handler(m_hub);
  }

 private:
  FakeIotHub& m_hub;
};

std::atomic<bool> g_stopping{false};

}  // namespace

FakeIotHub::FakeIotHub(const TestPki& pki, std::string key_name, std::string raw_key)
    : m_key_name(std::move(key_name)), m_key(std::move(raw_key)) {
  g_stopping = false;
  Poco::Net::Context::Ptr context =
      new Poco::Net::Context(Poco::Net::Context::TLS_SERVER_USE, pki.file("server.key").string(),
                             pki.file("server.crt").string(), "", Poco::Net::Context::VERIFY_NONE);
  Poco::Net::SecureServerSocket socket(Poco::Net::SocketAddress("127.0.0.1", 0), 64, context);
  m_port = socket.address().port();
  auto* params = new Poco::Net::HTTPServerParams;
  params->setKeepAlive(true);
  params->setMaxKeepAliveRequests(10000);
  params->setKeepAliveTimeout(Poco::Timespan(30, 0));
  params->setMaxThreads(16);
  m_server = std::make_unique<Poco::Net::HTTPServer>(new Factory(*this), socket, params);
  m_server->start();
}

FakeIotHub::~FakeIotHub() {
  g_stopping = true;
  m_server->stopAll(true);
}

std::string FakeIotHub::connection_string() const {
  return "HostName=localhost:" + std::to_string(m_port) + ";SharedAccessKeyName=" + m_key_name +
         ";SharedAccessKey=" + base64(m_key);
}

void FakeIotHub::throttle(const std::string& device, int times, int retry_after_s) {
  const std::lock_guard lock(m_mutex);
  m_throttle[device] = {times, retry_after_s};
}

std::vector<FakeIotHub::Seen> FakeIotHub::seen() const {
  const std::lock_guard lock(m_mutex);
  return m_seen;
}

int FakeIotHub::requests_for(const std::string& device) const {
  const std::lock_guard lock(m_mutex);
  const auto it = m_requests.find(device);
  return it == m_requests.end() ? 0 : it->second;
}

int FakeIotHub::total_connections() const { return m_server->totalConnections(); }

void FakeIotHub::record(Seen seen) {
  const std::lock_guard lock(m_mutex);
  m_seen.push_back(std::move(seen));
}

std::string FakeIotHub::check_sas(const std::string& authorization) const {
  const std::string scheme = "SharedAccessSignature ";
  if (authorization.rfind(scheme, 0) != 0) return "no SharedAccessSignature";
  std::map<std::string, std::string> fields;
  std::istringstream in(authorization.substr(scheme.size()));
  for (std::string field; std::getline(in, field, '&');) {
    const auto eq = field.find('=');
    if (eq == std::string::npos ||
        !fields.emplace(field.substr(0, eq), field.substr(eq + 1)).second) {
      return "malformed or repeated field";
    }
  }
  if (fields.size() != 4 || !fields.count("sr") || !fields.count("sig") || !fields.count("se") ||
      !fields.count("skn")) {
    return "fields must be sr, sig, se, skn";
  }
  std::string resource;
  Poco::URI::decode(fields["sr"], resource);
  if (resource != "localhost:" + std::to_string(m_port)) return "sr names another resource";
  if (fields["se"].empty() || fields["se"].find_first_not_of("0123456789") != std::string::npos ||
      std::stoll(fields["se"]) <= static_cast<long long>(std::time(nullptr))) {
    return "token expired";
  }
  if (fields["skn"] != m_key_name) return "unknown policy";
  const std::string to_sign = fields["sr"] + "\n" + fields["se"];
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), m_key.data(), static_cast<int>(m_key.size()),
       reinterpret_cast<const unsigned char*>(to_sign.data()), to_sign.size(), mac, &mac_len);
  std::string sig;
  Poco::URI::decode(fields["sig"], sig);
  if (sig != base64(std::string(reinterpret_cast<char*>(mac), mac_len))) return "bad signature";
  return "";
}

FakeIotHub::Answer FakeIotHub::handle(const Seen& r) {
  if (r.method != "POST") return {405, hub_error(405000, "method not allowed")};
  static const std::regex path(R"(^/twins/([^/?]+)/methods\?(.*)$)");
  std::smatch m;
  if (!std::regex_match(r.uri, m, path)) return {404, hub_error(404000, "no such endpoint")};
  std::string device;
  Poco::URI::decode(m[1].str(), device);
  if (m[2].str() != "api-version=2021-04-12") {
    return {400, hub_error(400003, "api-version missing or not supported")};
  }
  if (const std::string why = check_sas(r.authorization); !why.empty()) {
    Poco::JSON::Object o;
    o.set("Message", "ErrorCode:IotHubUnauthorizedAccess;Unauthorized");
    o.set("ExceptionMessage", why);
    return {401, json(o)};
  }
  if (r.content_type.rfind("application/json", 0) != 0) {
    return {400, hub_error(400004, "Content-Type must be application/json")};
  }
  Poco::JSON::Object::Ptr body;
  try {
    body = Poco::JSON::Parser().parse(r.body).extract<Poco::JSON::Object::Ptr>();
  } catch (const std::exception&) {
    return {400, hub_error(400004, "body is not a JSON object")};
  }
  const auto name = body->get("methodName");
  const auto rt = body->get("responseTimeoutInSeconds");
  const auto ct = body->get("connectTimeoutInSeconds");
  if (!name.isString() || name.toString().empty() || !body->has("payload") || !rt.isInteger() ||
      rt.convert<int>() < 5 || rt.convert<int>() > 300 || !ct.isInteger() ||
      ct.convert<int>() < 0 || ct.convert<int>() > 300) {
    return {400, hub_error(400027, "invalid direct method request")};
  }
  {
    const std::lock_guard lock(m_mutex);
    ++m_requests[device];
    auto& t = m_throttle[device];
    if (t.first > 0) {
      --t.first;
      return {429, hub_error(429001, "throttled"), t.second};
    }
  }
  Poco::JSON::Object echo;
  echo.set("device", device);
  echo.set("method", name.toString());
  echo.set("payload", body->get("payload"));
  Poco::JSON::Object ok;
  ok.set("status", 200);
  ok.set("payload", echo);
  if (device.rfind("nomethod-", 0) == 0) {
    return {200, R"({"status":501,"payload":{"message":"not implemented"}})"};
  }
  if (device.rfind("offline-", 0) == 0) {
    return {404, hub_error(404103, "Timed out waiting for device to connect.")};
  }
  if (device.rfind("silent-", 0) == 0) {
    return {504, hub_error(504101, "Timed out waiting for the response from device.")};
  }
  if (device.rfind("big-", 0) == 0) {
    return {200, R"({"status":200,"payload":")" + std::string(200 * 1024, 'x') + "\"}"};
  }
  if (device.rfind("badjson-", 0) == 0) return {200, "<html>gateway</html>"};
  if (device.rfind("slow-", 0) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (device.rfind("hang-", 0) == 0) {
    for (int i = 0; i < 160 && !g_stopping; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return {200, json(ok)};
}

}  // namespace fleetsign::testing
