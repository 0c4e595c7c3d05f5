// server/src/registry.h — the broker's named objects.
//
// The registry maps names to objects. An object is created by its first
// open, with its kind and (for a channel) element type name and capacity;
// a later open must agree on all three or is refused with INVALID_ARGUMENT
// naming both sides. Objects live as long as the broker.
//
// Thread safety: every member may be called concurrently.
#ifndef DCHAN_SERVER_REGISTRY_H_
#define DCHAN_SERVER_REGISTRY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "dchan/chan.h"
#include "dchan/v1/broker.pb.h"

namespace dchan::server {

// A broker-hosted channel: bytes, with the element type name it was made
// with. Immutable after creation apart from the channel's own state.
struct ChannelObject {
  std::string name;
  std::string type_name;
  uint64_t capacity = 0;
  Chan<std::string> chan;
};

struct RegistryLimits {
  std::size_t max_objects = 100000;
  std::size_t max_name_bytes = 512;
  std::size_t max_type_name_bytes = 512;
  // A channel's buffer is allocated up front, as in Go: bound it.
  uint64_t max_capacity = 1 << 20;
};

class Registry {
 public:
  explicit Registry(RegistryLimits limits = {}) : limits_(limits) {}

  // Opens (creating on first open) the channel `name`. INVALID_ARGUMENT for
  // a bad name, type name or capacity, or a mismatch with the existing
  // object; RESOURCE_EXHAUSTED past max_objects.
  absl::StatusOr<std::shared_ptr<ChannelObject>> open_channel(
      const std::string& name, const std::string& type_name, uint64_t capacity);

  // Every object, in name order, for inspection.
  std::vector<std::shared_ptr<ChannelObject>> channels() const;

  std::size_t size() const;

 private:
  const RegistryLimits limits_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<ChannelObject>> channels_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_REGISTRY_H_
