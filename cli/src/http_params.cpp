// The HTTP service's request data (http_internal.hpp): parameters into CLI arguments, bodies
// read with bounds, names checked.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "fleetsign/atomic_file.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/x509.hpp"
#include "fleetsign/error.hpp"
#include "http_internal.hpp"

namespace fleetsign::cli {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kMaxValue = 8192;

void check_value(const std::string& what, const std::string& v, bool positional) {
  if (v.size() > kMaxValue) {
    throw Error(ErrorCode::kInputTooLarge,
                what + ": more than " + std::to_string(kMaxValue) + " bytes");
  }
  if (v.find('\0') != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument, what + ": holds a NUL byte");
  }
  if (engine::valid_utf8(v) != v) {
    throw Error(ErrorCode::kInvalidArgument, what + ": is not valid UTF-8");
  }
  // A positional value must not read as an option.
  if (positional && (v.empty() || v.front() == '-')) {
    throw Error(ErrorCode::kInvalidArgument,
                what + ": '" + engine::valid_utf8(v) + "' is empty or starts with '-'");
  }
}

const ApiParam* find_param(const ApiRoute& route, const std::string& name) {
  for (const auto& p : route.params) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

[[noreturn]] void unknown_param(const ApiRoute& route, const std::string& name) {
  std::string known;
  for (const auto& p : route.params) known += (known.empty() ? "" : ", ") + p.name;
  throw Error(ErrorCode::kInvalidArgument,
              "parameter '" + engine::valid_utf8(name) + "' is not one of " + route.method + " " +
                  route.path + "'s" + (known.empty() ? " (it takes none)" : ": " + known));
}

bool truthy(const std::string& name, const std::string& v) {
  if (v.empty() || v == "true" || v == "1") return true;
  if (v == "false" || v == "0") return false;
  throw Error(ErrorCode::kInvalidArgument,
              "parameter '" + name + "': '" + engine::valid_utf8(v) + "' is not true or false");
}

// The command's arguments: path values, then options and positional parameters.
struct ArgBuilder {
  const ApiRoute& route;
  std::vector<std::string> positional, options;
  std::set<std::string> seen;

  void add(const std::string& name, const std::string& v) {
    const ApiParam* p = find_param(route, name);
    if (p == nullptr) unknown_param(route, name);
    check_value("parameter '" + name + "'", v, p->kind == ApiParam::Kind::kPositional);
    if ((p->kind == ApiParam::Kind::kValue || p->kind == ApiParam::Kind::kFlag) &&
        !seen.insert(name).second) {
      throw Error(ErrorCode::kInvalidArgument, "parameter '" + name + "' is given twice");
    }
    switch (p->kind) {
      case ApiParam::Kind::kFlag:
        if (truthy(name, v)) options.push_back("--" + name);
        break;
      case ApiParam::Kind::kValue:
      case ApiParam::Kind::kList:
        options.push_back("--" + name + "=" + v);
        break;
      case ApiParam::Kind::kPositional:
        positional.push_back(v);
        break;
    }
  }

  void add_json(const std::string& name, const Poco::Dynamic::Var& v) {
    const ApiParam* p = find_param(route, name);
    if (p == nullptr) unknown_param(route, name);
    const bool many = p->kind == ApiParam::Kind::kList || p->kind == ApiParam::Kind::kPositional;
    if (v.type() == typeid(Poco::JSON::Array::Ptr)) {
      if (!many) {
        throw Error(ErrorCode::kInvalidArgument, "parameter '" + name + "' takes one value");
      }
      const auto arr = v.extract<Poco::JSON::Array::Ptr>();
      for (std::size_t i = 0; i < arr->size(); ++i) {
        const auto item = arr->get(i);
        if (!item.isString()) {
          throw Error(ErrorCode::kInvalidArgument,
                      "parameter '" + name + "': every item must be a string");
        }
        add(name, item.toString());
      }
      return;
    }
    if (v.isBoolean()) {
      if (p->kind != ApiParam::Kind::kFlag) {
        throw Error(ErrorCode::kInvalidArgument, "parameter '" + name + "' is not a flag");
      }
      add(name, v.convert<bool>() ? "true" : "false");
      return;
    }
    if (v.isString() || v.isNumeric()) {
      if (p->kind == ApiParam::Kind::kFlag) {
        throw Error(ErrorCode::kInvalidArgument, "parameter '" + name + "' is true or false");
      }
      add(name, v.toString());
      return;
    }
    throw Error(ErrorCode::kInvalidArgument,
                "parameter '" + name + "': a string, number, boolean or array of strings");
  }
};

// A list's page through the API: limit 1..kApiPageMax, kApiPageDefault when not asked (a list of
// ten million devices is never answered whole).
void page_limit(std::vector<std::string>& options) {
  const std::string prefix = "--limit=";
  for (const auto& o : options) {
    if (!o.starts_with(prefix)) continue;
    const std::string v = o.substr(prefix.size());
    const bool digits =
        !v.empty() && v.size() <= 4 && v.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || std::stoi(v) < 1 || std::stoi(v) > kApiPageMax) {
      throw Error(ErrorCode::kInvalidArgument,
                  "parameter 'limit': a page of 1 to " + std::to_string(kApiPageMax) +
                      " items (then follow next_after), got '" + engine::valid_utf8(v) + "'");
    }
    return;
  }
  options.push_back(prefix + std::to_string(kApiPageDefault));
}

}  // namespace

// The route's arguments from the query string (GET, uploads) or a JSON object body.
std::vector<std::string> command_args(Request& r, const Poco::URI& uri,
                                      const std::string& json_body) {
  ArgBuilder b{r.route, {}, {}, {}};
  for (std::size_t i = 0; i < r.values.size(); ++i) {
    check_value("path segment " + std::to_string(i + 1), r.values[i], true);
  }
  const bool query = r.route.method == "GET" || r.route.body == ApiBody::kPem;
  if (query) {
    for (const auto& [k, v] : uri.getQueryParameters()) b.add(k, v);
  } else {
    if (!uri.getRawQuery().empty()) {
      throw Error(ErrorCode::kInvalidArgument, r.route.method + " " + r.route.path +
                                                   " takes its parameters as a JSON object "
                                                   "body, not a query string");
    }
    if (json_body.find_first_not_of(" \t\r\n") != std::string::npos) {
      Poco::Dynamic::Var parsed;
      try {
        parsed = Poco::JSON::Parser().parse(json_body);
      } catch (const Poco::Exception& e) {
        throw Error(ErrorCode::kInvalidArgument,
                    "request body: not JSON: " + engine::valid_utf8(e.displayText()));
      }
      if (parsed.type() != typeid(Poco::JSON::Object::Ptr)) {
        throw Error(ErrorCode::kInvalidArgument, "request body: not a JSON object");
      }
      const auto obj = parsed.extract<Poco::JSON::Object::Ptr>();
      for (const auto& [k, v] : *obj) b.add_json(k, v);
    }
  }
  if (r.route.paged) page_limit(b.options);
  if (find_param(r.route, "list-limit") != nullptr && b.seen.count("list-limit") == 0) {
    b.options.push_back("--list-limit=" + std::to_string(kApiPlanListDefault));
  }
  std::vector<std::string> args = r.values;
  args.insert(args.end(), b.positional.begin(), b.positional.end());
  args.insert(args.end(), b.options.begin(), b.options.end());
  return args;
}

// A body cut short (the client went away, a reset, the read timeout) is never taken for a whole
// one: Poco's stream ends quietly at a close and only sets badbit on an error.
// No Content-Length and not chunked: HTTP/1.1 says the body is empty (Poco would read to the
// connection's end, and hold the client until the idle timeout).
static bool has_body(const Poco::Net::HTTPServerRequest& req) {
  return req.hasContentLength() || req.getChunkedTransferEncoding();
}

void require_complete(Poco::Net::HTTPServerRequest& req, const std::istream& in,
                      std::uint64_t total) {
  if (in.bad() ||
      (req.hasContentLength() && total != static_cast<std::uint64_t>(req.getContentLength64()))) {
    throw Error(ErrorCode::kInvalidArgument,
                "request body: incomplete (" + std::to_string(total) +
                    " bytes read before the connection failed); nothing was done with it");
  }
}

std::string read_body(Poco::Net::HTTPServerRequest& req, std::size_t limit) {
  std::string body;
  if (!has_body(req)) return body;
  std::istream& in = req.stream();
  char buf[16384];
  while (in) {
    in.read(buf, sizeof buf);
    body.append(buf, static_cast<std::size_t>(in.gcount()));
    if (body.size() > limit) {
      throw Error(ErrorCode::kInputTooLarge,
                  "request body: more than " + std::to_string(limit) + " bytes");
    }
  }
  require_complete(req, in, body.size());
  return body;
}

std::string save_body(Poco::Net::HTTPServerRequest& req, const fs::path& file,
                      std::uint64_t limit) {
  fs::create_directories(file.parent_path());
  struct Partial {
    const fs::path& file;
    std::FILE* f = nullptr;
    bool done = false;
    ~Partial() {
      if (f != nullptr) std::fclose(f);
      std::error_code ec;
      if (!done) fs::remove(file, ec);
    }
  } partial{file};
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  partial.f = fd < 0 ? nullptr : ::fdopen(fd, "wb");
  if (fd >= 0 && partial.f == nullptr) ::close(fd);
  if (partial.f == nullptr) {
    throw Error(ErrorCode::kIo, "upload " + file.string() + ": cannot create it");
  }
  const std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
  std::uint64_t total = 0;
  char buf[65536];
  std::istream& in = req.stream();
  // No Content-Length and not chunked: an empty body (read_body says why).
  while (has_body(req) && in) {
    in.read(buf, sizeof buf);
    const auto got = static_cast<std::size_t>(in.gcount());
    total += got;
    if (total > limit) {
      throw Error(ErrorCode::kInputTooLarge,
                  "request body: more than " + std::to_string(limit) + " bytes");
    }
    if (std::fwrite(buf, 1, got, partial.f) != got) {
      throw Error(ErrorCode::kIo, "upload " + file.string() + ": cannot be written (disk full?)");
    }
    EVP_DigestUpdate(md.get(), buf, got);
  }
  require_complete(req, in, total);
  const bool flushed = std::fflush(partial.f) == 0;
  const bool closed = std::fclose(partial.f) == 0;
  partial.f = nullptr;
  if (!flushed || !closed) {
    throw Error(ErrorCode::kIo, "upload " + file.string() + ": cannot be written (disk full?)");
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(md.get(), digest, &len);
  partial.done = true;
  return engine::hex_upper(engine::ByteView(digest, len));
}

InFlight::InFlight(HttpService::Impl& impl, std::string what)
    : m_impl(impl), m_what(std::move(what)) {
  std::lock_guard lock(impl.idem_mutex);
  if (!impl.idem_in_flight.insert(m_what).second) {
    throw Error(ErrorCode::kAlreadyExists, m_what +
                                               " is being answered for another request; "
                                               "retry later");
  }
}

InFlight::~InFlight() {
  std::lock_guard lock(m_impl.idem_mutex);
  m_impl.idem_in_flight.erase(m_what);
}

bool is_safe_name(const std::string& s) {
  if (s.empty() || s.size() > 128 || s == "." || s == "..") return false;
  for (const char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-')
      return false;
  }
  return true;
}

std::string sha256_hex(const std::string& text) {
  return engine::thumbprint_sha256(
      engine::ByteView(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

Idempotency::Idempotency(HttpService::Impl& impl, const Caller& caller, const std::string& key,
                         const std::string& request_hash)
    : m_impl(impl), m_request(request_hash) {
  m_id = sha256_hex(caller.cert_sha256 + "\n" + key);
  m_file = impl.opt.data_dir / "idempotency" / (m_id + ".json");
  std::lock_guard lock(impl.idem_mutex);
  if (!impl.idem_in_flight.insert(m_id).second) {
    throw Error(ErrorCode::kAlreadyExists,
                "a request with this Idempotency-Key is being answered; retry later");
  }
}

Idempotency::~Idempotency() {
  std::lock_guard lock(m_impl.idem_mutex);
  m_impl.idem_in_flight.erase(m_id);
}

std::optional<std::pair<int, std::string>> Idempotency::replay() const {
  std::ifstream in(m_file);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  const auto obj = Poco::JSON::Parser().parse(text.str()).extract<Poco::JSON::Object::Ptr>();
  if (obj->getValue<std::string>("request") != m_request) {
    throw Error(ErrorCode::kInvalidArgument,
                "this Idempotency-Key was used for another request (method, path, parameters or "
                "body differ)");
  }
  return std::make_pair(obj->getValue<int>("status"), obj->getValue<std::string>("body"));
}

void Idempotency::keep(int status, const std::string& body) const {
  fs::create_directories(m_file.parent_path());
  write_file_atomic(
      m_file,
      engine::json_object(
          {{"request", m_request}, {"status", static_cast<std::int64_t>(status)}, {"body", body}}),
      0600);
}

}  // namespace fleetsign::cli
