// server/src/lock.h — a broker-hosted lock: OBJECT_KIND_MUTEX (exclusive
// only) or OBJECT_KIND_RW_MUTEX (exclusive and shared).
//
// A lock is held by sessions, not threads. Requests are served FIFO: a
// request is granted at once only when nothing is queued and the holders
// allow it; otherwise it is queued, and every change (an unlock, a
// withdrawal, a session's end) grants from the head of the queue what the
// holders now allow — one exclusive request, or every consecutive shared
// request at the head. A shared request queued behind a waiting writer
// waits for it, so writers are not starved.
//
// A queued request is a record, never a parked thread: it holds the
// requester's session and a callback, and is claimed exactly once under the
// lock's mutex — granted (its callback then runs, after the mutex is
// dropped) or withdrawn (withdraw(), or the session's end), whichever comes
// first. At grant time a request whose session has ended is dropped, never
// granted (the bug of etcd-io/etcd#11456); so is an immediate request.
//
// Fencing token: every exclusive acquisition increments the lock's token
// (the first gets 1, or one more than the construction's `last_token`), so
// tokens are strictly increasing over the broker's life; a shared
// acquisition gets the token of the last exclusive one. An exclusive
// acquisition of a MUTEX may reserve a block of tokens (`token_block`): it
// gets the first, and the next acquisition gets one above the block (the
// holder's client uses the rest for relocks while it keeps the lock).
//
// Keeping: the holder of an exclusive hold may ask to be told when another
// request wants the lock (wanted()): its callback runs once, when a request
// is queued, or a non-blocking one refused, while the hold lasts (true; at
// once if one is queued already), or when the hold ends by unlock()
// (false). A client keeps a
// lock its user unlocked this way, and releases it when told. The registry
// makes a lock whose name may have been used by a lock it has forgotten with a
// `last_token` at least that lock's last token, so that a name's tokens never
// go back.
//
// Thread safety: every member may be called concurrently; callbacks run on
// the calling thread after the lock's mutex is released.
#ifndef DCHAN_SERVER_LOCK_H_
#define DCHAN_SERVER_LOCK_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "object.h"

namespace dchan::server {

class LockObject final : public Object {
 public:
  static bool is_kind(v1::ObjectKind kind) {
    return kind == v1::OBJECT_KIND_MUTEX || kind == v1::OBJECT_KIND_RW_MUTEX;
  }

  // Runs once when a queued request is granted, with its fencing token, on
  // the thread that granted it, with no lock held. Must not block.
  using OnGrant = absl::AnyInvocable<void(uint64_t token) &&>;
  // Runs at most once for a pending wanted(): `true` when another request
  // waits (or a non-blocking one was refused), `false` when the hold ended
  // by unlock(); on the thread that caused it, with no lock held. Must not
  // block.
  using OnWanted = absl::AnyInvocable<void(bool wanted) &&>;

  // The largest token block a request may reserve.
  static constexpr uint32_t kMaxTokenBlock = 1 << 20;

  // What lock() did.
  struct Request {
    bool granted = false;
    uint64_t token = 0;   // when granted
    uint64_t ticket = 0;  // when queued: for withdraw(); 0 when not queued
  };

  // `kind` is OBJECT_KIND_MUTEX or OBJECT_KIND_RW_MUTEX; the first
  // exclusive acquisition gets token `last_token` + 1.
  LockObject(std::string name, v1::ObjectKind kind, uint64_t last_token = 0);

  bool rw() const noexcept { return kind() == v1::OBJECT_KIND_RW_MUTEX; }

  // Takes the lock for `who` (`shared`: a read lock) if FIFO order allows it
  // now: granted, with its token. Otherwise, with `on_grant`, queues the
  // request (ticket set; `on_grant` runs when it is granted); without it
  // (a non-blocking request), returns not granted and queues nothing.
  // `token_block` > 1 (an exclusive request on a MUTEX only) reserves that
  // many tokens for the acquisition (see the file comment).
  // INVALID_ARGUMENT for a shared request on a MUTEX, or a token block on
  // an RW_MUTEX, with a shared request or above kMaxTokenBlock; UNAVAILABLE
  // when `who` has ended.
  absl::StatusOr<Request> lock(std::shared_ptr<const Participant> who,
                               bool shared, OnGrant on_grant = nullptr,
                               uint32_t token_block = 0);

  // Asks to be told when another request waits while `who` holds the lock
  // exclusively with acquisition token `token`. kNow: one waits already;
  // kNoHold: `who` holds no such hold; both leave `on_wanted` unused.
  // kPending: `on_wanted` runs later (see OnWanted), unless the hold ends
  // with the session (then it is destroyed unrun) or withdraw_wanted()
  // takes it; `*ticket` names it for that. ALREADY_EXISTS when that hold
  // has one pending.
  enum class Wanted { kNow, kNoHold, kPending };
  absl::StatusOr<Wanted> wanted(const Participant& who, uint64_t token,
                                OnWanted on_wanted, uint64_t* ticket);
  // Drops the pending wanted() `ticket`: true when it was pending (its
  // callback will never run).
  bool withdraw_wanted(uint64_t ticket);

  // Withdraws a queued request: true when it was still queued (its callback
  // will never run), false when it was granted or dropped already.
  bool withdraw(uint64_t ticket);

  // Releases `who`'s exclusive hold (`token` 0 skips the check; another
  // token than the hold's: ABORTED) or one of its read locks, and grants
  // what that allows before returning. FAILED_PRECONDITION with Go's
  // message when `who` does not hold the lock in that mode; the lock is
  // then unchanged.
  absl::Status unlock(const Participant& who, bool shared, uint64_t token);

  // Releases every hold of `who` and drops its queued requests.
  void session_ended(const Participant& who) override;

  // How many holds session `session_id` has (exclusive: 1; shared: one per
  // read lock).
  std::size_t holds_of(uint64_t session_id) const;
  // The last token handed out or reserved (0 before the first exclusive
  // acquisition): the last exclusive acquisition's, or the end of its
  // block.
  uint64_t token() const;
  std::size_t queued() const;

  // Unlocked and nothing queued (the token is not state a user can tell
  // apart: see the file comment).
  bool idle() const override;
  // Holds or queued requests of `session_id`.
  bool involves(uint64_t session_id) const override;

 private:
  struct Waiter {
    std::shared_ptr<const Participant> who;
    bool shared = false;
    OnGrant on_grant;
    uint32_t token_block = 1;
  };
  struct Grant {
    OnGrant on_grant;
    uint64_t token = 0;
  };

  void describe_kind(v1::ObjectInfo& info) const override;

  // Whether a request may take the lock given the holders alone.
  bool holders_allow_locked(bool shared) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Records `session_id` as a holder; returns the acquisition's token.
  uint64_t take_locked(uint64_t session_id, bool shared, uint32_t token_block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Grants from the head of the queue what the holders allow, dropping
  // requests of ended sessions. The grants' callbacks go to `grants`, the
  // dropped requests to `dropped` (destroyed by the caller, unlocked).
  void grant_locked(std::vector<Grant>& grants, std::vector<Waiter>& dropped)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs a grant pass and its callbacks. Call without the mutex.
  void grant_and_run();

  mutable absl::Mutex mu_;
  std::optional<uint64_t> writer_ ABSL_GUARDED_BY(mu_);  // exclusive holder
  // The exclusive hold's acquisition token, and its pending wanted() (and
  // that one's ticket).
  uint64_t writer_token_ ABSL_GUARDED_BY(mu_) = 0;
  OnWanted on_wanted_ ABSL_GUARDED_BY(mu_);
  uint64_t wanted_ticket_ ABSL_GUARDED_BY(mu_) = 0;
  // Read locks held, per session, and their total.
  absl::flat_hash_map<uint64_t, std::size_t> readers_ ABSL_GUARDED_BY(mu_);
  std::size_t reader_holds_ ABSL_GUARDED_BY(mu_) = 0;
  // The last token handed out or reserved.
  uint64_t token_ ABSL_GUARDED_BY(mu_) = 0;
  // Queued requests by ticket; tickets increase, so this is FIFO order.
  absl::btree_map<uint64_t, Waiter> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_LOCK_H_
