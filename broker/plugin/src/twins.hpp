// Device twins (PROTOCOL.md, "Twin"): GET and reported PATCH answered from a main-thread cache of
// the registry's twins, reported documents written back through the RegistryWriter, desired
// changes (found by the watcher in the audit log) pushed to connected devices.
//
// While the broker runs it is the only writer of reported properties, so the cache is the truth
// for them: a PATCH is answered at once with its new version and committed later. An entry leaves
// the cache only when its device is gone and its last write is committed. Main thread only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "fleetsign/engine/stores.hpp"
#include "transport.hpp"
#include "writer.hpp"

namespace fleetsign::broker {

class TwinService {
 public:
  // `reads`: a registry connection of the main thread's.
  TwinService(engine::FleetStateStore& reads, RegistryWriter& writer, Transport& transport)
      : m_reads(reads), m_writer(writer), m_transport(transport) {}

  void get(const std::string& device_id, std::string_view rid);
  void patch_reported(const std::string& device_id, std::string_view rid, std::string_view payload);
  // A desired change at `version` with its merge patch; pushed when `connected`.
  void desired_changed(const std::string& device_id, std::int64_t version, const std::string& patch,
                       bool connected);
  void device_left(const std::string& device_id);
  // Drops cache entries of departed devices whose writes are committed.
  void evict();
  std::size_t cached() const { return m_cache.size(); }

 private:
  struct Entry {
    engine::Twin twin;
    std::uint64_t write_seq = 0;  // the writer's seq of its last queued reported document
    bool present = true;
  };
  Entry& load(const std::string& device_id);  // throws Error when the registry cannot answer

  engine::FleetStateStore& m_reads;
  RegistryWriter& m_writer;
  Transport& m_transport;
  std::unordered_map<std::string, Entry> m_cache;
};

}  // namespace fleetsign::broker
