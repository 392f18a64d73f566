// fleetsign-broker-plugin.so: mosquitto's plugin entry points (API v5) and the Transport on
// mosquitto's functions. Everything else is FleetBroker's (fleet_broker.hpp).
//
// Loaded with `plugin …/fleetsign-broker-plugin.so` and `plugin_opt_home HOME`; needs
// `require_certificate true` and `use_identity_as_username false` on the TLS listener (so the
// basic-auth event runs and can read the certificate) and `per_listener_settings false` (the tick
// event is not sent otherwise). No C++ exception ever crosses into mosquitto: each callback
// catches, logs and refuses.
#include <openssl/x509.h>

#include <cstring>
#include <memory>
#include <string>

extern "C" {
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
}

#include "config.hpp"
#include "fleet_broker.hpp"
#include "fleetsign/error.hpp"

namespace {

using fleetsign::broker::FleetBroker;
using fleetsign::broker::LogLevel;
using fleetsign::broker::Verdict;

class MosquittoTransport final : public fleetsign::broker::Transport {
 public:
  void publish(const std::string& client_id, const std::string& topic,
               std::string_view payload) override {
    const int rc = mosquitto_broker_publish_copy(client_id.c_str(), topic.c_str(),
                                                 static_cast<int>(payload.size()), payload.data(),
                                                 0, false, nullptr);
    if (rc != MOSQ_ERR_SUCCESS) {
      mosquitto_log_printf(MOSQ_LOG_WARNING, "fleetsign: publishing to %s failed: %s",
                           client_id.c_str(), mosquitto_strerror(rc));
    }
  }
  void kick(const std::string& client_id) override {
    mosquitto_kick_client_by_clientid(client_id.c_str(), false);
  }
  void log(LogLevel level, const std::string& message) override {
    static constexpr int kLevels[] = {MOSQ_LOG_INFO, MOSQ_LOG_NOTICE, MOSQ_LOG_WARNING,
                                      MOSQ_LOG_ERR, MOSQ_LOG_DEBUG};
    mosquitto_log_printf(kLevels[static_cast<int>(level)], "%s", message.c_str());
  }
};

struct Plugin {
  mosquitto_plugin_id_t* id = nullptr;
  MosquittoTransport transport;
  std::unique_ptr<FleetBroker> broker;
};

std::string str(const char* s) { return s != nullptr ? std::string(s) : std::string(); }

void log_failure(const char* where, const std::exception& e) {
  mosquitto_log_printf(MOSQ_LOG_ERR, "fleetsign: %s: %s", where, e.what());
}

// The client's certificate (a reference the caller owns; null when it presented none) and its DER.
struct ClientLeaf {
  std::unique_ptr<X509, decltype(&X509_free)> cert{nullptr, &X509_free};
  fleetsign::engine::Der der;
};

ClientLeaf client_leaf(struct mosquitto* client) {
  ClientLeaf leaf;
  leaf.cert.reset(static_cast<X509*>(mosquitto_client_certificate(client)));
  if (leaf.cert) {
    const int len = i2d_X509(leaf.cert.get(), nullptr);
    if (len > 0) {
      leaf.der.resize(static_cast<std::size_t>(len));
      unsigned char* p = leaf.der.data();
      i2d_X509(leaf.cert.get(), &p);
    }
  }
  return leaf;
}

int on_basic_auth(int, void* event_data, void* userdata) {
  auto* p = static_cast<Plugin*>(userdata);
  auto* ed = static_cast<mosquitto_evt_basic_auth*>(event_data);
  try {
    const ClientLeaf leaf = client_leaf(ed->client);
    const std::string client_id = str(mosquitto_client_id(ed->client));
    const std::string username = str(ed->username);
    fleetsign::broker::ConnectRequest req;
    req.client_id = client_id;
    req.username = username;
    req.leaf = leaf.der.empty() ? nullptr : &leaf.der;
    req.leaf_cert = req.leaf != nullptr ? leaf.cert.get() : nullptr;
    req.now = static_cast<std::int64_t>(time(nullptr));
    return p->broker->on_connect(ed->client, req, mosquitto_client_clean_session(ed->client))
               ? MOSQ_ERR_SUCCESS
               : MOSQ_ERR_AUTH;
  } catch (const std::exception& e) {
    log_failure("admission", e);
    return MOSQ_ERR_AUTH;
  }
}

int on_acl_check(int, void* event_data, void* userdata) {
  auto* p = static_cast<Plugin*>(userdata);
  auto* ed = static_cast<mosquitto_evt_acl_check*>(event_data);
  try {
    const std::string client_id = str(mosquitto_client_id(ed->client));
    const std::string_view topic = ed->topic != nullptr ? ed->topic : "";
    Verdict v = Verdict::kDeny;
    switch (ed->access) {
      case MOSQ_ACL_WRITE:
        v = p->broker->on_publish(
            ed->client, client_id, topic,
            std::string_view(static_cast<const char*>(ed->payload), ed->payloadlen));
        break;
      case MOSQ_ACL_SUBSCRIBE:
        v = p->broker->on_subscribe(ed->client, client_id, topic);
        break;
      case MOSQ_ACL_READ:
        v = p->broker->on_read(ed->client, client_id, topic);
        break;
      case MOSQ_ACL_UNSUBSCRIBE:
        v = Verdict::kAllow;
        break;
      default:
        break;
    }
    // kConsume: served by the plugin; refusing it keeps mosquitto from routing it anywhere.
    return v == Verdict::kAllow ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
  } catch (const std::exception& e) {
    log_failure("access check", e);
    return MOSQ_ERR_ACL_DENIED;
  }
}

int on_disconnect(int, void* event_data, void* userdata) {
  auto* p = static_cast<Plugin*>(userdata);
  auto* ed = static_cast<mosquitto_evt_disconnect*>(event_data);
  try {
    const char* id = mosquitto_client_id(ed->client);
    if (id != nullptr) {
      p->broker->on_disconnect(ed->client, id);
    }
  } catch (const std::exception& e) {
    log_failure("disconnect", e);
  }
  return MOSQ_ERR_SUCCESS;
}

int on_tick(int, void*, void* userdata) {
  try {
    static_cast<Plugin*>(userdata)->broker->on_tick();
  } catch (const std::exception& e) {
    log_failure("tick", e);
  }
  return MOSQ_ERR_SUCCESS;
}

int on_reload(int, void*, void* userdata) {
  try {
    static_cast<Plugin*>(userdata)->broker->on_reload();
  } catch (const std::exception& e) {
    log_failure("reload", e);
  }
  return MOSQ_ERR_SUCCESS;
}

struct Registration {
  int event;
  MOSQ_FUNC_generic_callback cb;
};
constexpr Registration kCallbacks[] = {{MOSQ_EVT_BASIC_AUTH, on_basic_auth},
                                       {MOSQ_EVT_ACL_CHECK, on_acl_check},
                                       {MOSQ_EVT_DISCONNECT, on_disconnect},
                                       {MOSQ_EVT_TICK, on_tick},
                                       {MOSQ_EVT_RELOAD, on_reload}};

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int mosquitto_plugin_version(int count,
                                                                    const int* versions) {
  for (int i = 0; i < count; ++i) {
    if (versions[i] == 5) {
      return 5;
    }
  }
  return -1;
}

__attribute__((visibility("default"))) int mosquitto_plugin_init(mosquitto_plugin_id_t* identifier,
                                                                 void** userdata,
                                                                 struct mosquitto_opt* options,
                                                                 int option_count) {
  std::string home;
  for (int i = 0; i < option_count; ++i) {
    if (std::strcmp(options[i].key, "home") == 0 && options[i].value != nullptr) {
      home = options[i].value;
    }
  }
  if (home.empty()) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "fleetsign: plugin_opt_home HOME is required");
    return MOSQ_ERR_INVAL;
  }
  auto plugin = std::make_unique<Plugin>();
  plugin->id = identifier;
  try {
    plugin->broker = std::make_unique<FleetBroker>(fleetsign::broker::load_broker_config(home),
                                                   plugin->transport);
  } catch (const std::exception& e) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "fleetsign: cannot start with home %s: %s", home.c_str(),
                         e.what());
    return MOSQ_ERR_UNKNOWN;
  }
  for (const auto& r : kCallbacks) {
    const int rc = mosquitto_callback_register(identifier, r.event, r.cb, nullptr, plugin.get());
    if (rc != MOSQ_ERR_SUCCESS) {
      mosquitto_log_printf(MOSQ_LOG_ERR, "fleetsign: registering callback %d: %s", r.event,
                           mosquitto_strerror(rc));
      for (const auto& u : kCallbacks) {
        mosquitto_callback_unregister(identifier, u.event, u.cb, nullptr);
      }
      return rc;
    }
  }
  *userdata = plugin.release();
  return MOSQ_ERR_SUCCESS;
}

__attribute__((visibility("default"))) int mosquitto_plugin_cleanup(void* userdata,
                                                                    struct mosquitto_opt*, int) {
  std::unique_ptr<Plugin> plugin(static_cast<Plugin*>(userdata));
  if (plugin) {
    for (const auto& r : kCallbacks) {
      mosquitto_callback_unregister(plugin->id, r.event, r.cb, nullptr);
    }
    try {
      plugin->broker.reset();
    } catch (const std::exception& e) {
      log_failure("cleanup", e);
    }
  }
  return MOSQ_ERR_SUCCESS;
}

}  // extern "C"
