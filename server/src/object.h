// server/src/object.h — what every broker object shares, and the broker
// channel.
//
// An Object is one named thing in the registry: a channel, a lock (MUTEX or
// RW_MUTEX), a wait group or an atomic value. Its name and kind never
// change. Objects that a session can hold something of — a lock it holds, a
// wait group debt it owes — are told when the session ends
// (session_ended()), so that they can release or settle it.
//
// Objects see sessions as Participants: an id, whether the session still
// lives, and how to name it in an error message. An object that records
// something on behalf of a session (a lock grant, a wait group debt) checks
// live() under its own lock first: a session ends by setting live() false
// and only then calling session_ended() on its objects (which takes that
// same lock), so nothing is ever recorded for a session after its
// session_ended() has run.
//
// Forgetting: the registry forgets an object that nobody refers to and that
// is idle() — in the state a fresh open would create — so that names used
// once do not fill the broker (see registry.h).
//
// Thread safety: every member of every object may be called concurrently.
// Objects never call out (callbacks, other objects, the outbox) while they
// hold their own lock. Lock order: the registry's mutex, then an object's
// locks (Registry::forget_if_idle calls idle() under it); nothing takes the
// registry's mutex while it holds an object's lock.
#ifndef DCHAN_SERVER_OBJECT_H_
#define DCHAN_SERVER_OBJECT_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "dchan/chan.h"
#include "dchan/v1/broker.pb.h"
#include "dchan/v1/inspect.pb.h"
#include "offer_book.h"

namespace dchan::server {

// A session, as the objects see it.
class Participant {
 public:
  virtual ~Participant() = default;
  virtual uint64_t id() const noexcept = 0;
  // False once the session has ended; never true again after that.
  virtual bool live() const noexcept = 0;
  // Names the session in an error message: `participant "worker-2"
  // (session 7, ipv4:127.0.0.1:4242)`.
  virtual std::string describe() const = 0;
};

class Object {
 public:
  Object(std::string name, v1::ObjectKind kind)
      : name_(std::move(name)), kind_(kind) {}
  virtual ~Object() = default;
  Object(const Object&) = delete;
  Object& operator=(const Object&) = delete;

  const std::string& name() const noexcept { return name_; }
  v1::ObjectKind kind() const noexcept { return kind_; }

  // Fills `info` for inspection: name, kind and the kind's own fields.
  void describe(v1::ObjectInfo& info) const;

  // `who` has ended (live() is already false): release or settle whatever
  // this object holds for it. Called once per session for every object it
  // opened; may hand things on to other sessions.
  virtual void session_ended(const Participant& who) { (void)who; }

  // Whether the object is in the state a fresh open would create: nothing
  // stored, held, queued or closed. Only meaningful while nobody else can
  // reach the object (the registry asks under its mutex once it holds the
  // only reference); false when in doubt.
  virtual bool idle() const { return false; }

  // Whether the object holds something for session `session_id` that
  // session_ended() would settle (a lock hold or queued request, a wait
  // group debt); true when in doubt.
  virtual bool involves(uint64_t session_id) const {
    (void)session_id;
    return true;
  }

  // How many session handles refer to the object (sessions count theirs in
  // and out). Only a hint for the registry's sweep of objects nobody holds
  // (Registry::sweep_lingering); whether an object may be forgotten is
  // decided by its reference count alone.
  void add_handle() noexcept {
    handles_.fetch_add(1, std::memory_order_relaxed);
  }
  void drop_handle() noexcept {
    handles_.fetch_sub(1, std::memory_order_relaxed);
  }
  int64_t handles() const noexcept {
    return handles_.load(std::memory_order_relaxed);
  }

 protected:
  virtual void describe_kind(v1::ObjectInfo& info) const = 0;

 private:
  const std::string name_;
  const v1::ObjectKind kind_;
  std::atomic<int64_t> handles_{0};
};

// The kind as dchan's users know it, with its article: "a channel",
// "a mutex", "an RWMutex", "a WaitGroup", "an AtomicValue".
absl::string_view kind_with_article(v1::ObjectKind kind);

// A broker-hosted channel: bytes, with the element type name it was made
// with. Immutable after creation apart from the channel's own state.
class ChannelObject final : public Object {
 public:
  static bool is_kind(v1::ObjectKind kind) {
    return kind == v1::OBJECT_KIND_CHANNEL;
  }

  ChannelObject(std::string name, std::string type_name, uint64_t capacity,
                std::chrono::milliseconds offer_claim_timeout =
                    std::chrono::milliseconds(5000))
      : Object(std::move(name), v1::OBJECT_KIND_CHANNEL),
        type_name(std::move(type_name)),
        capacity(capacity),
        chan(make_chan<std::string>(capacity)),
        offers(std::make_shared<OfferBook>(chan, offer_claim_timeout)) {}

  // Withdraws the values still parked by give_back() (see there).
  ~ChannelObject() override;

  const std::string type_name;
  const uint64_t capacity;
  Chan<std::string> chan;
  // Offers of spanning selects (unbuffered channels only).
  const std::shared_ptr<OfferBook> offers;

  // Sends a value that a session took but could not deliver (or handed
  // back, ReturnRequest) into `obj`'s channel again, at the back: at once
  // if there is room or a receiver, else parked as a sender until there
  // is. If the channel is closed (now or while the value waits), the
  // channel keeps it for its next receives (keep_after_close): a value is
  // never dropped while the channel exists. Never blocks.
  //
  // A parked value refers to the object only weakly, and the object
  // withdraws its parked values when it is destroyed (the broker exits;
  // the registry never forgets a channel that a sender waits on): a
  // parked send that held the object would keep it, its channel and the
  // value alive for good (object -> channel -> parked send -> object).
  static void give_back(const std::shared_ptr<ChannelObject>& obj,
                        std::string value);

  // Values a client handed back (ReturnRequest) that found the channel
  // closed: receives take them, oldest first, before they report the
  // channel closed and drained. Only ever filled once `chan` is closed.
  void keep_after_close(std::string value);
  // The oldest such value, if any.
  std::optional<std::string> take_after_close();
  std::size_t after_close_count() const;

  // Open, empty, and nobody waits on it: no parked sender or receiver, no
  // readiness watcher, no select offer.
  bool idle() const override;

 private:
  mutable absl::Mutex after_close_mu_;
  std::deque<std::string> after_close_ ABSL_GUARDED_BY(after_close_mu_);

  // give_back()'s values parked on `chan`, by key; each leaves when its
  // send completes (or fails on close), the rest go with the object. A
  // key whose entry is empty (no PendingOp yet) is being parked.
  absl::Mutex parked_mu_;
  absl::flat_hash_map<uint64_t, PendingOp> parked_ ABSL_GUARDED_BY(parked_mu_);
  uint64_t next_parked_ ABSL_GUARDED_BY(parked_mu_) = 1;

  void describe_kind(v1::ObjectInfo& info) const override;
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_OBJECT_H_
