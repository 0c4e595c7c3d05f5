// server/src/registry.h — the broker's named objects.
//
// The registry maps names to objects of every kind: one name space, so a
// name denotes one object of one kind. An object is created by its first
// open, with its kind and its settings (a channel's element type name and
// capacity, an atomic value's type name, a wait group's `forgive`); a later
// open must agree on all of them or is refused with INVALID_ARGUMENT naming
// both sides.
//
// Forgetting: an object that no session holds a handle to and that is in the
// state a fresh open would create (Object::idle(): a channel open, empty and
// waited on by nobody; a lock unlocked with nothing queued; a wait group at
// zero, not failed, with no waiter; an atomic value never stored) is
// forgotten when its last handle goes (forget_if_idle(), which sessions call
// when they drop a handle). Reopening the name then creates an identical
// object — except that it may be made with other settings (kind, type name,
// capacity, forgive), and that a lock's fencing tokens continue above those
// of the locks forgotten before it (tokens per name never go back). Every
// other object lives as long as the broker and counts against max_objects.
//
// "Nobody holds it" is exact: every reference to an object is a shared_ptr
// copied, ultimately, from the registry's own, which is only read under
// mu_. So when, under mu_, the registry's reference is the only one
// (use_count() == 1), nobody else can reach the object — no handle, no
// pending operation's callback, no answer queued with a value to return to
// it, no inspection in progress — and nobody can until mu_ is released.
// Anything that still refers to it (a pending operation's callback, an
// answer in flight with a value to return to it) only makes the registry
// keep it for now: if no session holds a handle to it either, the name is
// noted, and sweep_lingering() — which the broker's reaper thread calls
// every period — checks it again until that reference is gone (as does a
// later drop of a handle to it).
//
// Thread safety: every member may be called concurrently. Lock order: mu_,
// then an object's own locks (idle()); see object.h.
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
#include "absl/container/flat_hash_set.h"
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

  // Forgets the object named `name` if nobody else refers to it and it is
  // idle (see the file comment); returns whether it did. Callers drop their
  // own references first. Call with no object's lock held.
  bool forget_if_idle(const std::string& name);

  // Checks again the objects forget_if_idle() could not forget only because
  // something still referred to them while no session held a handle to
  // them, and forgets those now idle and referred to by nobody; returns how
  // many. A name stays noted while such a reference remains. Cheap when
  // nothing is noted. Call with no object's lock held.
  std::size_t sweep_lingering();

  // Every object, in name order (for tests: the references returned keep
  // the objects from being forgotten while they are held).
  std::vector<std::shared_ptr<Object>> objects() const;

  // Every object described (Object::describe), in name order, for
  // inspection. Described under mu_, so that an inspection never holds a
  // reference that would keep an object from being forgotten.
  std::vector<v1::ObjectInfo> describe_all() const;

  std::size_t size() const;

 private:
  // Checks what a request says about an object of its kind, before the
  // registry is locked.
  absl::Status check_request(const v1::OpenRequest& req) const;
  // An existing object and a request for it must agree.
  static absl::Status check_match(const Object& existing,
                                  const v1::OpenRequest& req);
  std::shared_ptr<Object> make_locked(const v1::OpenRequest& req)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes the object at `it` (the caller checked it may go; it stays in
  // lingering_ if noted there) and returns the registry's reference, to be
  // dropped once mu_ is released.
  std::shared_ptr<Object> forget_locked(
      absl::flat_hash_map<std::string, std::shared_ptr<Object>>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RegistryLimits limits_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Object>> objects_
      ABSL_GUARDED_BY(mu_);
  // The highest fencing token of any lock forgotten so far: a new lock's
  // tokens start above it, in case its name was that lock's.
  uint64_t forgotten_token_ ABSL_GUARDED_BY(mu_) = 0;
  // Names for sweep_lingering() to check again.
  absl::flat_hash_set<std::string> lingering_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_REGISTRY_H_
