// fuzz_twin_payload: the JSON payloads of twins and DPS registrations. The first byte picks:
//   0  engine::merge_patch (RFC 7386) of a patch (after the first NUL) into a document (before
//      it): what the broker runs on every reported PATCH and the registry on a desired change;
//      then normalized_patch and with_version on what came out
//   1  the broker's DPS register request (DpsService::register_device): the registrationId
//      inside a hostile JSON payload decides whether the decision is asked at all
//
// Invariants: merge_patch gives a JSON object of at most kTwinDocLimit bytes, or throws
// fleetsign::Error (kInvalidArgument, kInputTooLarge) and nothing else; a merge patch is
// idempotent (applying the same patch to its own result changes nothing), and the normalized
// patch merges to the same document; an error's message makes a JSON answer (it is UTF-8). A DPS
// request is answered exactly once.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "config.hpp"
#include "dps.hpp"
#include "fleetsign/engine/auth.hpp"
#include "fleetsign/engine/json.hpp"
#include "fleetsign/engine/registry.hpp"
#include "fleetsign/engine/stores.hpp"
#include "fleetsign/engine/twin_doc.hpp"
#include "fleetsign/error.hpp"
#include "fuzz_input.hpp"
#include "sessions.hpp"

namespace {

using namespace fleetsign;

// The broker answers a refused PATCH with {"message": what()}: it must be JSON (UTF-8).
void expect_twin_error(const Error& e) {
  if (e.code() != ErrorCode::kInvalidArgument && e.code() != ErrorCode::kInputTooLarge) {
    fuzz::violated("merge_patch threw another error code");
  }
  try {
    Poco::JSON::Parser parser;
    (void)parser.parse(engine::json_object({{"message", std::string(e.what())}}));
  } catch (const Poco::Exception&) {
    fuzz::violated("merge_patch's message does not make a JSON answer (not UTF-8)");
  }
}

void merge(fuzz::Input& in) {
  const std::string_view doc = in.text_until_nul();
  const std::string_view patch = in.rest_text();
  std::string merged;
  try {
    merged = engine::merge_patch(doc, patch, "fuzz twin");
  } catch (const Error& e) {
    expect_twin_error(e);
    return;
  }
  if (merged.size() > engine::kTwinDocLimit) fuzz::violated("merged document over the limit");
  try {
    Poco::JSON::Parser parser;
    if (parser.parse(merged).type() != typeid(Poco::JSON::Object::Ptr)) {
      fuzz::violated("merge_patch returned something other than an object");
    }
    if (engine::merge_patch(merged, patch, "fuzz twin") != merged) {
      fuzz::violated("a merge patch applied twice changed the document again");
    }
    const std::string normal = engine::normalized_patch(patch, "fuzz twin");
    if (engine::merge_patch(doc, normal, "fuzz twin") != merged) {
      fuzz::violated("the normalized patch merges to another document");
    }
    (void)engine::with_version(merged, 7);
  } catch (const Error& e) {
    fuzz::violated(std::string("a document merge_patch returned is refused: ") + e.what());
  } catch (const Poco::Exception& e) {
    fuzz::violated("merge_patch returned text that is not JSON");
  }
}

class CountingTransport final : public broker::Transport {
 public:
  int published = 0;
  void publish(const std::string&, const std::string&, std::string_view) override { ++published; }
  void kick(const std::string&) override {}
  void log(broker::LogLevel, const std::string&) override {}
};

class FixedRandom final : public engine::RandomSource {
 public:
  void fill(std::span<std::uint8_t> out) override {
    for (auto& b : out) b = 0x5A;
  }
};

// A registry with nothing in it: the decision refuses every device ("chain-malformed" for the
// session's leaf, which is not a certificate).
struct Dps {
  std::filesystem::path dir;
  std::unique_ptr<engine::Registry> registry;
  std::unique_ptr<engine::Authenticator> auth;
  broker::BrokerConfig config;
  Dps() {
    dir = std::filesystem::temp_directory_path() /
          ("fleetsign-fuzz-dps-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    registry = engine::Registry::open(dir / "registry.db");
    auth = std::make_unique<engine::Authenticator>(*registry);
    config.hosts = {"hub.example"};
    config.id_scope = "0ne00FUZZ";
  }
  ~Dps() {
    auth.reset();
    registry.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

void dps_register(fuzz::Input& in) {
  static Dps dps;
  CountingTransport transport;
  FixedRandom random;
  broker::DpsService service(dps.config, transport, random);
  broker::Session session;
  session.kind = broker::ClientKind::kDpsDevice;
  session.client_id = "dev-1";
  session.leaf = std::make_shared<const engine::Der>(engine::Der{0x30, 0x00});
  service.register_device(session, "1", in.rest_text(), *dps.auth, 1'800'000'000);
  if (transport.published != 1) fuzz::violated("a DPS request was not answered exactly once");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  if (in.byte() % 2 == 0) {
    merge(in);
  } else {
    dps_register(in);
  }
  return 0;
}
