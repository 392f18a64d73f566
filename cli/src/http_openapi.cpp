// The OpenAPI 3.0 document (http_api.hpp), built from the route table: paths, parameters, the
// request bodies, each route's success answer (ApiRoute::returns) and the common error.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <cctype>
#include <sstream>

#include "http_api.hpp"

namespace fleetsign::cli {

namespace {

using K = ApiParam::Kind;
using Poco::JSON::Array;
using Poco::JSON::Object;

// The success response of a route from its `returns`: a JSON object schema (types, required keys,
// optional ones may be null), or the media types of an answer that is not JSON.
Object success_response(const ApiRoute& r) {
  Object ok(Poco::JSON_PRESERVE_KEY_ORDER);
  ok.set("description", "success");
  Object content(Poco::JSON_PRESERVE_KEY_ORDER);
  Object props(Poco::JSON_PRESERVE_KEY_ORDER);
  Array required;
  std::istringstream words(r.returns);
  for (std::string w; words >> w;) {
    const auto colon = w.find(':');
    const std::string key = w.substr(0, colon);
    std::string type = w.substr(colon + 1);
    if (key == "media") {
      if (type == "none") continue;
      Object schema;
      schema.set("type", "string");
      schema.set("format", "binary");
      Object media;
      media.set("schema", schema);
      content.set(type, media);
      continue;
    }
    Object p;
    if (!type.empty() && type.back() == '?') {
      type.pop_back();
      Array types;  // OpenAPI 3.1 (JSON Schema 2020-12): a key that may be null
      types.add(type);
      types.add("null");
      p.set("type", types);
    } else {
      required.add(key);
      p.set("type", type);
    }
    props.set(key, p);
  }
  if (props.size() != 0) {
    Object schema(Poco::JSON_PRESERVE_KEY_ORDER);
    schema.set("type", "object");
    if (required.size() != 0) schema.set("required", required);
    schema.set("properties", props);
    Object media;
    media.set("schema", schema);
    content.set("application/json", media);
  }
  if (content.size() != 0) ok.set("content", content);
  return ok;
}

}  // namespace

std::string openapi_json() {
  Object doc(Poco::JSON_PRESERVE_KEY_ORDER);
  doc.set("openapi", "3.1.0");  // 3.1: mutualTLS security schemes
  Object info(Poco::JSON_PRESERVE_KEY_ORDER);
  info.set("title", "fleetsign");
  info.set("version", "1");
  info.set("description",
           "The device PKI of an IoT fleet. Operators authenticate with a client certificate "
           "(`fleetsign operator add`); roles: auditor reads, factory issues batches for its "
           "groups, operator does everything. Errors are {\"error\":{\"code\",\"message\"}} with "
           "the CLI's codes. POSTs honour an Idempotency-Key header.");
  doc.set("info", info);
  Object schemes(Poco::JSON_PRESERVE_KEY_ORDER);
  Object mtls(Poco::JSON_PRESERVE_KEY_ORDER);
  mtls.set("type", "mutualTLS");
  mtls.set("description", "an operator certificate from `fleetsign operator add`");
  schemes.set("operatorCertificate", mtls);
  Object device_tls(Poco::JSON_PRESERVE_KEY_ORDER);
  device_tls.set("type", "mutualTLS");
  device_tls.set("description", "the device's current certificate, admitted by the fleet");
  schemes.set("deviceCertificate", device_tls);
  Object components(Poco::JSON_PRESERVE_KEY_ORDER);
  components.set("securitySchemes", schemes);
  Object error_schema(Poco::JSON_PRESERVE_KEY_ORDER);
  error_schema.set("type", "object");
  Array required;
  required.add("error");
  error_schema.set("required", required);
  Object schemas(Poco::JSON_PRESERVE_KEY_ORDER);
  schemas.set("Error", error_schema);
  components.set("schemas", schemas);
  doc.set("components", components);

  Object paths(Poco::JSON_PRESERVE_KEY_ORDER);
  for (const ApiRoute& r : api_routes()) {
    Object::Ptr item = paths.has(r.path) ? paths.getObject(r.path)
                                         : Object::Ptr(new Object(Poco::JSON_PRESERVE_KEY_ORDER));
    Object op(Poco::JSON_PRESERVE_KEY_ORDER);
    op.set("summary", r.summary);
    std::string op_id;
    for (const char c : r.method + r.path)
      op_id += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    op.set("operationId", op_id);
    op.set("x-fleetsign-role", r.access.is_public
                                   ? "public"
                                   : std::string(engine::operator_role_name(r.access.min_role)));
    if (!r.words.empty()) {
      std::string cli = "fleetsign";
      for (const auto& w : r.words) cli += " " + w;
      op.set("x-fleetsign-cli", cli);
    }
    Array security;
    if (!r.access.is_public || r.access.device) {
      Object s;
      s.set(r.access.device ? "deviceCertificate" : "operatorCertificate", Array());
      security.add(s);
    }
    op.set("security", security);
    Array params;
    for (const auto& seg : split_route_path(r.path)) {
      if (!is_path_placeholder(seg)) continue;
      Object p(Poco::JSON_PRESERVE_KEY_ORDER);
      p.set("name", seg.substr(1, seg.size() - 2));
      p.set("in", "path");
      p.set("required", true);
      Object schema;
      schema.set("type", "string");
      p.set("schema", schema);
      params.add(p);
    }
    const bool query = r.method == "GET" || r.body == ApiBody::kPem;
    Object body_props(Poco::JSON_PRESERVE_KEY_ORDER);
    for (const ApiParam& a : r.params) {
      Object schema(Poco::JSON_PRESERVE_KEY_ORDER);
      if (a.kind == K::kFlag) {
        schema.set("type", "boolean");
      } else if (a.kind == K::kList || a.kind == K::kPositional) {
        schema.set("type", "array");
        Object items;
        items.set("type", "string");
        schema.set("items", items);
      } else {
        schema.set("type", "string");
      }
      schema.set("description", a.help);
      if (query) {
        Object p(Poco::JSON_PRESERVE_KEY_ORDER);
        p.set("name", a.name);
        p.set("in", "query");
        p.set("required", false);
        p.set("schema", schema);
        params.add(p);
      } else {
        body_props.set(a.name, schema);
      }
    }
    if (r.changes || r.method == "POST") {
      Object p(Poco::JSON_PRESERVE_KEY_ORDER);
      p.set("name", "Idempotency-Key");
      p.set("in", "header");
      p.set("required", false);
      Object schema;
      schema.set("type", "string");
      p.set("schema", schema);
      params.add(p);
    }
    op.set("parameters", params);
    if (r.body == ApiBody::kPem) {
      Object content;
      Object media;
      Object schema;
      schema.set("type", "string");
      media.set("schema", schema);
      content.set(r.access.device ? "application/pkcs10" : "application/x-pem-file", media);
      Object rb;
      rb.set("required", true);
      rb.set("content", content);
      op.set("requestBody", rb);
    } else if (!query && body_props.size() != 0) {
      Object schema(Poco::JSON_PRESERVE_KEY_ORDER);
      schema.set("type", "object");
      schema.set("additionalProperties", false);
      schema.set("properties", body_props);
      Object media;
      media.set("schema", schema);
      Object content;
      content.set("application/json", media);
      Object rb;
      rb.set("required", false);
      rb.set("content", content);
      op.set("requestBody", rb);
    }
    Object responses(Poco::JSON_PRESERVE_KEY_ORDER);
    responses.set(std::to_string(r.success_status), success_response(r));
    if (r.may_continue) {
      auto again = success_response(r);
      again.set("description", "what existed continues (the answer says \"continued\": true)");
      responses.set("200", again);
    }
    Object err_media;
    Object ref;
    ref.set("$ref", "#/components/schemas/Error");
    err_media.set("schema", ref);
    Object err_content;
    err_content.set("application/json", err_media);
    Object err;
    err.set("description", "an error with the CLI's code (4xx: the request, 5xx: the service)");
    err.set("content", err_content);
    responses.set("default", err);
    op.set("responses", responses);
    std::string method = r.method;
    for (auto& c : method) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    item->set(method, op);
    paths.set(r.path, item);
  }
  doc.set("paths", paths);
  std::ostringstream out;
  doc.stringify(out);
  return out.str();
}

}  // namespace fleetsign::cli
