// server/src/registry.h — the broker's named objects.
//
// The registry maps names to objects of every kind: one name space, so a
// name denotes one object of one kind. An object is created by its first
// open, with its kind and its settings (a channel's element type name and
// capacity, an atomic value's type name, a wait group's `forgive`); a later
// open must agree on all of them or is refused with INVALID_ARGUMENT naming
// both sides. Objects live as long as the broker.
//
// Thread safety: every member may be called concurrently.
#ifndef DCHAN_SERVER_REGISTRY_H_
#define DCHAN_SERVER_REGISTRY_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "dchan/v1/broker.pb.h"
#include "object.h"

namespace dchan::server {

struct RegistryLimits {
  std::size_t max_objects = 100000;
  std::size_t max_name_bytes = 512;
  std::size_t max_type_name_bytes = 512;
  // A channel's buffer is allocated up front, as in Go: bound it.
  uint64_t max_capacity = 1 << 20;
  // How long a channel's offer book waits for a client to answer a claim
  // (see offer_book.h) before it counts as a refusal.
  std::chrono::milliseconds offer_claim_timeout{5000};
};

class Registry {
 public:
  explicit Registry(RegistryLimits limits = {}) : limits_(limits) {}

  // Opens (creating on first open) the object `req.name()` of `req.kind()`.
  // INVALID_ARGUMENT for a bad name, kind, type name or capacity, or a
  // mismatch with the existing object (another kind, type name, capacity
  // or forgive setting); RESOURCE_EXHAUSTED past max_objects.
  absl::StatusOr<std::shared_ptr<Object>> open(const v1::OpenRequest& req);

  // Shorthand for open() of a channel.
  absl::StatusOr<std::shared_ptr<ChannelObject>> open_channel(
      const std::string& name, const std::string& type_name, uint64_t capacity);

  // Every object, in name order, for inspection.
  std::vector<std::shared_ptr<Object>> objects() const;

  std::size_t size() const;

 private:
  // Checks what a request says about an object of its kind, before the
  // registry is locked.
  absl::Status check_request(const v1::OpenRequest& req) const;
  // An existing object and a request for it must agree.
  static absl::Status check_match(const Object& existing,
                                  const v1::OpenRequest& req);
  static std::shared_ptr<Object> make(const v1::OpenRequest& req,
                                      const RegistryLimits& limits);

  const RegistryLimits limits_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Object>> objects_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_REGISTRY_H_
