// server/src/wait_group.h — a broker-hosted wait group
// (OBJECT_KIND_WAIT_GROUP).
//
// The counter, and per session its debt: what it added minus the Dones it
// did. Dones beyond a session's own debt pay other sessions' debts, oldest
// session first, so the debts always add up to the counter: every unit of
// the counter is owed by exactly one session that is still live.
//
// When a session ends owing a debt, the counter drops by the debt. Unless
// the wait group was made with `forgive`, it then fails: every queued wait,
// and every later wait until an add raises the counter from zero (a new
// round), is answered ABORTED with a message that names the lost
// participant. With `forgive` the debt simply counts as done (a log line
// says so); a counter that reaches zero either way releases the waits.
//
// A queued wait is a record (a callback), never a parked thread: claimed
// exactly once under the mutex — answered, or withdrawn by withdraw().
//
// Thread safety: every member may be called concurrently; callbacks run on
// the calling thread after the mutex is released.
#ifndef DCHAN_SERVER_WAIT_GROUP_H_
#define DCHAN_SERVER_WAIT_GROUP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "object.h"

namespace dchan::server {

class WaitGroupObject final : public Object {
 public:
  static bool is_kind(v1::ObjectKind kind) {
    return kind == v1::OBJECT_KIND_WAIT_GROUP;
  }

  // Runs once when a queued wait is answered: OK (the counter reached zero)
  // or ABORTED (the wait group failed; the message names the participant).
  // Runs on the thread that answered it, with no lock held; must not block.
  using OnDone = absl::AnyInvocable<void(absl::Status) &&>;

  // What wait() did.
  struct Wait {
    enum class Result { kZero, kWouldBlock, kQueued };
    Result result = Result::kZero;
    int64_t count = 0;    // the counter when answered
    uint64_t ticket = 0;  // kQueued: for withdraw()
  };

  WaitGroupObject(std::string name, bool forgive);

  bool forgive() const noexcept { return forgive_; }

  // Adds `delta` (Done is -1) for `who`; returns the counter after it.
  // FAILED_PRECONDITION "sync: negative WaitGroup counter" below zero,
  // OUT_OF_RANGE above INT32_MAX (the counter is then unchanged),
  // UNAVAILABLE when `who` has ended. Answers the queued waits before
  // returning when the counter reaches zero.
  absl::StatusOr<int64_t> add(const Participant& who, int64_t delta);

  // Answers at once when the counter is zero (kZero), when `on_done` is
  // null (kWouldBlock) or when the wait group has failed (ABORTED);
  // otherwise queues the wait (kQueued, `on_done` runs later).
  absl::StatusOr<Wait> wait(OnDone on_done = nullptr);

  // Withdraws a queued wait: true when it was still queued (its callback
  // will never run), false when it was answered already.
  bool withdraw(uint64_t ticket);

  // Settles `who`'s debt (see the file comment).
  void session_ended(const Participant& who) override;

  int64_t count() const;
  // The failure message, empty while the wait group has not failed.
  std::string failure() const;

  // Counter zero, not failed, no queued wait.
  bool idle() const override;
  // A debt of `session_id`.
  bool involves(uint64_t session_id) const override;

 private:
  void describe_kind(v1::ObjectInfo& info) const override;

  // When the counter is zero or the wait group has failed, takes every
  // queued wait to be answered with `status`.
  std::vector<OnDone> take_waiters_locked(absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const bool forgive_;
  mutable absl::Mutex mu_;
  int64_t count_ ABSL_GUARDED_BY(mu_) = 0;
  // Session id → debt (> 0 only); in id order, the order debts are paid.
  absl::btree_map<uint64_t, int64_t> debts_ ABSL_GUARDED_BY(mu_);
  std::string failure_ ABSL_GUARDED_BY(mu_);
  absl::btree_map<uint64_t, OnDone> waiters_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_WAIT_GROUP_H_
