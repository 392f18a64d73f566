// The HTTP API's routes as data (http_routes.cpp): who may call each, and, for the routes that
// run a CLI command, which command and which of its options. The service (http_service.cpp)
// dispatches on this table and the OpenAPI document is built from it, so a route cannot exist
// without being documented.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "fleetsign/engine/operator_store.hpp"

namespace fleetsign::cli {

// Who may call a route: nobody needs a certificate for a public one; otherwise an operator whose
// role is at least this (auditor < factory < operator).
struct Access {
  bool is_public = false;  // no operator needed (device routes check the device themselves)
  bool device = false;     // EST enrollment: the device's own certificate
  engine::OperatorRole min_role = engine::OperatorRole::kAuditor;
};
bool role_allows(engine::OperatorRole have, engine::OperatorRole need) noexcept;

struct ApiParam {
  enum class Kind {
    kValue,      // --name VALUE
    kFlag,       // --name (JSON true; query "true"/"1")
    kList,       // --name V, repeated (JSON array; query: repeated)
    kPositional  // appended after the path's values (JSON array of strings)
  };
  std::string name;  // the CLI option's name, which the API uses as is
  Kind kind = Kind::kValue;
  std::string help;
};

enum class ApiBody {
  kNone,  // GET: parameters from the query string; POST/DELETE: from a JSON object (optional)
  kPem  // the body is a PEM file, given to the command as `file_option`; parameters from the query
};

struct ApiRoute {
  std::string method;  // GET, POST, DELETE
  std::string path;    // "/api/v1/jobs/{id}/pause": {x} matches one segment
  Access access;
  std::string summary;
  // The CLI command this route runs (empty: the service answers itself). The path's {values}
  // follow the words as positional arguments, in order, then kPositional parameters.
  std::vector<std::string> words;
  std::vector<ApiParam> params;
  std::vector<std::string> fixed_args;  // always added (e.g. "--no-run": serve runs the job)
  ApiBody body = ApiBody::kNone;
  std::string file_option;  // kPem: the option that names the uploaded file ("chain")
  bool changes = false;     // state-changing: audited, Idempotency-Key honoured
  int success_status = 200;
  bool may_continue = false;  // 201 creates; 200 when the answer says `"continued": true`
  // The success answer, as the OpenAPI document gives it: JSON keys and their JSON Schema types
  // ("cas:array count:integer next_before:integer?": '?' marks a key that may be absent or null),
  // or, for an answer that is not JSON, its media types ("media:application/pkix-cert …").
  std::string returns;
  bool paged = false;  // a list: limit (kApiPageDefault unless asked, kApiPageMax at most), after
};

constexpr int kApiPageDefault = 100;
constexpr int kApiPageMax = 1000;
constexpr int kApiPlanListDefault = 1000;

const std::vector<ApiRoute>& api_routes();

// Matches `method` and `path` (already percent-decoded, split on '/') against the table: the
// route and the values of its {segments}. A path that matches with another method gives the
// route too (`method_ok` false: 405).
struct RouteMatch {
  const ApiRoute* route = nullptr;
  std::vector<std::string> values;
  bool method_ok = false;
};
RouteMatch match_route(const std::string& method, const std::vector<std::string>& segments);

// The OpenAPI 3.0 document of every route (JSON text; http_openapi.cpp).
std::string openapi_json();

// A route's path split on '/' ("/a/{b}" → "a", "{b}"), and whether a segment is a {placeholder}.
std::vector<std::string> split_route_path(const std::string& path);
bool is_path_placeholder(const std::string& segment);

}  // namespace fleetsign::cli
