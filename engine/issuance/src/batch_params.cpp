// Batch parameters and names: the ID pattern of --generate, the parameters recorded with a batch
// (everything a resume needs, as JSON), new batch IDs, and the checks of a batch's options and
// inputs before anything is recorded.
#include "batch_params.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <sstream>

#include "batch_io.hpp"
#include "fleetsign/engine/ca_constraints.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/error.hpp"

namespace fleetsign::engine {

namespace {

constexpr int kMaxIdPatternWidth = 20;

struct IdPattern {
  std::string_view head, tail;
  int width = 0;
};

IdPattern parse_id_pattern(const std::string& pattern) {
  const auto open = pattern.find('{');
  const auto close = open == std::string::npos ? open : pattern.find('}', open);
  if (close == std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument, "ID pattern '" + pattern +
                                                 "' needs a {..} placeholder for the number, "
                                                 "e.g. sensor-{06}");
  }
  if (pattern.find_first_of("{}", close + 1) != std::string::npos || pattern.find('}') < open) {
    throw Error(ErrorCode::kInvalidArgument,
                "ID pattern '" + pattern + "' must have exactly one {..} placeholder");
  }
  const std::string spec = pattern.substr(open + 1, close - open - 1);
  IdPattern p{std::string_view(pattern).substr(0, open),
              std::string_view(pattern).substr(close + 1), 0};
  for (const char c : spec) {
    if (c < '0' || c > '9' || p.width > kMaxIdPatternWidth) {
      throw Error(ErrorCode::kInvalidArgument, "ID pattern '" + pattern + "': {" + spec +
                                                   "} is not a width of 0.." +
                                                   std::to_string(kMaxIdPatternWidth) + " digits");
    }
    p.width = p.width * 10 + (c - '0');
  }
  if (p.width > kMaxIdPatternWidth) {
    throw Error(ErrorCode::kInvalidArgument, "ID pattern '" + pattern + "': {" + spec +
                                                 "} is not a width of 0.." +
                                                 std::to_string(kMaxIdPatternWidth) + " digits");
  }
  return p;
}

}  // namespace

std::string expand_id_pattern(const std::string& pattern, std::int64_t n) {
  const IdPattern p = parse_id_pattern(pattern);
  std::string digits = std::to_string(n);
  if (static_cast<int>(digits.size()) < p.width) {
    digits.insert(0, static_cast<std::size_t>(p.width) - digits.size(), '0');
  }
  std::string id;
  id.reserve(p.head.size() + digits.size() + p.tail.size());
  id.append(p.head).append(digits).append(p.tail);
  return id;
}

void validate_id_pattern(const std::string& pattern, std::int64_t count,
                         const policy::Policy& policy) {
  for (const std::int64_t n : {std::int64_t{1}, std::max<std::int64_t>(count, 1)}) {
    const std::string id = expand_id_pattern(pattern, n);
    if (auto checked = DeviceId::check(policy, id); !checked) {
      throw Error(ErrorCode::kDeviceIdInvalid,
                  "ID pattern '" + pattern + "' makes '" + id + "': " + checked.error().message);
    }
  }
}

namespace {

Der from_hex(const std::string& hex) {
  Der out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<std::uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  }
  return out;
}

const char* input_kind_name(BatchInput::Kind k) {
  switch (k) {
    case BatchInput::Kind::kCsrDir:
      return "csr-dir";
    case BatchInput::Kind::kCsrFile:
      return "csr-file";
    case BatchInput::Kind::kGenerate:
      return "generate";
    case BatchInput::Kind::kCsrDer:
      return "csr";
  }
  return "?";
}

const char* delivery_name(Delivery d) {
  switch (d) {
    case Delivery::kBatchDirectory:
      return "directory";
    case Delivery::kDeviceFiles:
      return "device-files";
    case Delivery::kReturned:
      return "returned";
  }
  return "?";
}

}  // namespace

std::string params_to_json(const BatchOptions& o) {
  Poco::JSON::Object p;
  p.set("ca", o.ca_name);
  p.set("input", std::string(input_kind_name(o.input.kind)));
  p.set("path", o.input.path);
  p.set("count", o.input.count);
  if (o.input.first != 0) p.set("first", o.input.first);
  if (!o.input.manifest.empty()) {
    p.set("manifest", o.input.manifest);
    p.set("manifest_sha256", o.input.manifest_sha256);
    p.set("manifest_bytes", o.input.manifest_bytes);
  }
  if (!o.share_of.empty()) p.set("share_of", o.share_of);
  p.set("id_pattern", o.input.id_pattern);
  p.set("key", std::string(policy::key_algorithm_name(o.input.key)));
  p.set("out", o.out_dir);
  p.set("lot", o.lineage.lot);
  p.set("line", o.lineage.line);
  p.set("site", o.lineage.site);
  p.set("operator", o.lineage.operator_name);
  p.set("bundle", o.bundle);
  p.set("pfx", o.pfx);
  p.set("reissue", o.reissue);
  p.set("chunk", o.chunk_size);
  p.set("group", o.group);
  p.set("delivery", std::string(delivery_name(o.delivery)));
  if (o.input.kind == BatchInput::Kind::kCsrDer) p.set("der", hex_upper(o.input.der));
  std::ostringstream s;
  p.stringify(s);
  return s.str();
}

BatchOptions params_from_json(const std::string& id, const std::string& text) {
  Poco::JSON::Parser parser;
  auto p = parser.parse(text).extract<Poco::JSON::Object::Ptr>();
  BatchOptions o;
  o.batch_id = id;
  o.ca_name = p->getValue<std::string>("ca");
  const std::string kind = p->getValue<std::string>("input");
  o.input.kind = kind == "csr-dir"    ? BatchInput::Kind::kCsrDir
                 : kind == "csr-file" ? BatchInput::Kind::kCsrFile
                 : kind == "csr"      ? BatchInput::Kind::kCsrDer
                                      : BatchInput::Kind::kGenerate;
  if (o.input.kind == BatchInput::Kind::kCsrDer)
    o.input.der = from_hex(p->getValue<std::string>("der"));
  o.input.path = p->getValue<std::string>("path");
  o.input.count = p->getValue<std::int64_t>("count");
  o.input.first = p->has("first") ? p->getValue<std::int64_t>("first") : 0;
  if (p->has("manifest")) {
    o.input.manifest = p->getValue<std::string>("manifest");
    o.input.manifest_sha256 = p->getValue<std::string>("manifest_sha256");
    o.input.manifest_bytes =
        p->has("manifest_bytes") ? p->getValue<std::int64_t>("manifest_bytes") : -1;
  }
  o.share_of = p->has("share_of") ? p->getValue<std::string>("share_of") : "";
  o.input.id_pattern = p->getValue<std::string>("id_pattern");
  o.input.key = policy::parse_key_algorithm(p->getValue<std::string>("key"))
                    .value_or(policy::KeyAlgorithm::kEcP256);
  o.out_dir = p->getValue<std::string>("out");
  o.lineage = {p->getValue<std::string>("lot"), p->getValue<std::string>("line"),
               p->getValue<std::string>("site"), p->getValue<std::string>("operator")};
  o.bundle = p->getValue<bool>("bundle");
  o.pfx = p->getValue<bool>("pfx");
  o.reissue = p->getValue<bool>("reissue");
  o.chunk_size = p->getValue<int>("chunk");
  o.group = p->has("group") ? p->getValue<std::string>("group") : "";
  const std::string delivery = p->has("delivery") ? p->getValue<std::string>("delivery") : "";
  o.delivery = delivery == "device-files" ? Delivery::kDeviceFiles
               : delivery == "returned"   ? Delivery::kReturned
                                          : Delivery::kBatchDirectory;
  return o;
}

std::string new_batch_id(const Clock& clock, RandomSource& random) {
  const std::time_t t = static_cast<std::time_t>(clock.now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "batch-%Y%m%d-%H%M%S-", &tm);
  std::uint8_t suffix[4];
  random.fill(suffix);
  std::string id = std::string(buf) + hex_upper(suffix);
  for (char& c : id) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return id;
}

namespace batch {

// Chunks in flight per thread: enough that the serial stages' commits (fsync) overlap other
// chunks' signing. BatchOptions::chunks_per_thread overrides it for measurements.
std::size_t tokens_per_thread(const BatchOptions& o) {
  return o.chunks_per_thread > 0 ? static_cast<std::size_t>(o.chunks_per_thread) : 4;
}

void validate(const BatchOptions& o, const hsm::Pin* pfx_password) {
  // A batch ID names the spool directory and lines of `batch list`: never a path or a newline.
  if (auto why = o.batch_id.empty() ? std::nullopt : check_safe_name(o.batch_id, "batch ID")) {
    throw Error(ErrorCode::kInvalidArgument, *why);
  }
  // A job's certificates carry its ID as their batch (an incident tells its replacements by it):
  // a batch may not pose as one.
  if (o.batch_id.starts_with("roll-")) {
    throw Error(ErrorCode::kInvalidArgument,
                "batch ID '" + o.batch_id +
                    "': IDs beginning with 'roll-' are the IDs of rollover and incident jobs, "
                    "whose certificates carry them");
  }
  if (o.share_of.empty() && is_share_batch_id(o.batch_id)) {
    throw Error(ErrorCode::kInvalidArgument,
                "batch ID '" + o.batch_id +
                    "': IDs ending in .sNNNN are the shares of shared batches (issue --share)");
  }
  if (o.out_dir.empty() && o.delivery != Delivery::kReturned) {
    throw Error(ErrorCode::kUsage, "missing --out DIR");
  }
  if (o.threads < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "thread count " + std::to_string(o.threads) + " is negative (0 means all cores)");
  }
  if (o.pfx && o.input.kind != BatchInput::Kind::kGenerate) {
    throw Error(ErrorCode::kUsage,
                "--pfx needs --generate: a .pfx holds the device's private key, which a CSR does "
                "not give us");
  }
  if (o.pfx && pfx_password == nullptr) {
    throw Error(ErrorCode::kUsage,
                "--pfx needs a password: --pfx-password-file F or FLEETSIGN_PFX_PASSWORD");
  }
  if (o.pfx && pfx_password->size() == 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "the PKCS#12 password is empty: the .pfx files would not protect their keys");
  }
  if (o.pfx && std::strlen(pfx_password->c_str()) != pfx_password->size()) {
    throw Error(ErrorCode::kInvalidArgument,
                "the PKCS#12 password holds a NUL byte: it would be cut short there");
  }
  if (o.chunk_size < 1 || o.chunk_size > 100000)
    throw Error(ErrorCode::kUsage, "chunk size must be 1..100000");
}

// Refuses bad inputs before anything is recorded: a generated ID that fails the device-ID check,
// a key the policy forbids, an input that holds nothing.
void check_inputs(const BatchInput& input, const policy::Policy& policy) {
  if (input.kind == BatchInput::Kind::kGenerate) {
    if (input.count <= 0) {
      throw Error(ErrorCode::kInvalidArgument, "generating needs a positive device count");
    }
    validate_id_pattern(input.id_pattern, input.first + input.count, policy);
    if (auto why = policy::check_device_key(policy, describe_key_algorithm(input.key))) {
      throw Error(ErrorCode::kPolicyInvalid,
                  std::string(policy::key_algorithm_name(input.key)) + ": " + *why);
    }
  }
  // A share of a shared CSR directory: the directory was found non-empty when it was shared, and
  // the share's reader checks its file list (a probe would read the whole list once more).
  if (!input.manifest.empty()) return;
  auto probe = batch::open_input(input);  // kInvalidArgument / kIo for an unreadable input
  batch::Item first;
  if (!probe->next(first)) {
    throw Error(ErrorCode::kInvalidArgument,
                (input.path.empty() ? std::string("the input") : input.path) +
                    " holds no CSR: nothing to issue");
  }
}

}  // namespace batch

}  // namespace fleetsign::engine
