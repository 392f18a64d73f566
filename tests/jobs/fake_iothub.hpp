// A local HTTPS server that checks what Azure IoT Hub's service endpoint checks for
// `POST /twins/{deviceId}/methods?api-version=2021-04-12` and answers as IoT Hub's published
// contract says it does. It tests fleetsign against that contract, not against the cloud (this
// machine cannot reach Azure).
//
// Checks, in order: method POST (405); path and api-version (404/400); the SAS token in
// Authorization — `SharedAccessSignature` with exactly sr, sig, se, skn; sr the url-encoded
// lower-case host; se in the future; skn the policy; sig the base64 HMAC-SHA256 of "{sr}\n{se}"
// under the shared key, recomputed here (401); Content-Type application/json (400); the body — a
// JSON object with a non-empty string methodName, a payload, responseTimeoutInSeconds an integer
// in 5..300 and connectTimeoutInSeconds in 0..300 (400).
//
// Then it answers by the device ID's prefix:
//   ok-…        200 {"status":200,"payload":{"device":…,"method":…,"payload":…}}
//   nomethod-…  200 {"status":501,"payload":{"message":"not implemented"}}
//   offline-…   404 {"errorCode":404103,…}        silent-…  504 {"errorCode":504101,…}
//   throttled-… 429 with Retry-After (see throttle()), then like ok-
//   slow-…      like ok- after 100 ms             hang-…    nothing for 8 s, then like ok-
//   big-…       200 with a body of 200 KiB        badjson-… 200 with a body that is not JSON
#pragma once

#include <Poco/Net/HTTPServer.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "jobs_support.hpp"

namespace fleetsign::testing {

class FakeIotHub {
 public:
  struct Seen {
    std::string method, uri, content_type, authorization, body;
    int status = 0;  // what the fake answered
  };

  FakeIotHub(const TestPki& pki, std::string key_name, std::string raw_key);
  ~FakeIotHub();
  FakeIotHub(const FakeIotHub&) = delete;
  FakeIotHub& operator=(const FakeIotHub&) = delete;

  int port() const { return m_port; }
  // HostName=localhost:PORT;SharedAccessKeyName=…;SharedAccessKey=base64(raw key)
  std::string connection_string() const;
  // The next `times` calls for `device` get 429 with `Retry-After: retry_after_s`.
  void throttle(const std::string& device, int times, int retry_after_s);

  std::vector<Seen> seen() const;
  int requests_for(const std::string& device) const;
  int total_connections() const;
  int max_concurrent() const { return m_max_concurrent.load(); }

  // Used by the request handler.
  struct Answer {
    int status;
    std::string body;
    int retry_after_s = -1;
  };
  Answer handle(const Seen& request);
  void record(Seen seen);
  std::atomic<int> m_concurrent{0};
  std::atomic<int> m_max_concurrent{0};

 private:
  std::string check_sas(const std::string& authorization) const;  // empty when valid
  std::string m_key_name;
  std::string m_key;
  int m_port = 0;
  mutable std::mutex m_mutex;
  std::vector<Seen> m_seen;
  std::map<std::string, int> m_requests;
  std::map<std::string, std::pair<int, int>> m_throttle;  // device → (times left, retry-after)
  std::unique_ptr<Poco::Net::HTTPServer> m_server;
};

}  // namespace fleetsign::testing
