// dchan/rw_mutex.h — Go's sync.RWMutex for C++.
//
//   dchan::RWMutex mu;
//   { std::shared_lock<dchan::RWMutex> r(mu); read(table); }   // many readers
//   { std::lock_guard<dchan::RWMutex> w(mu); write(table); }   // one writer
//
// An RWMutex is a reader/writer lock: held by any number of readers or by one
// writer. Like Mutex it is a cheap, copyable handle (copies name the same
// lock, `==` tells whether two handles do; a default-constructed RWMutex
// allocates a fresh unlocked lock; moving copies, so a handle is never
// empty). It meets the standard Lockable and SharedLockable requirements
// (std::lock_guard, std::unique_lock, std::scoped_lock, std::shared_lock).
//
// Go's rules:
//   - Writers are not starved: once a writer is blocked in lock(), new
//     readers block in lock_shared() (and try_lock_shared() fails) until that
//     writer has had the lock. Consequently a thread must not take a read
//     lock it already holds again (recursive read locking): a writer queued
//     in between deadlocks both.
//   - Writers queue on a dchan::Mutex, so they inherit its fairness
//     (starvation mode after 1 ms).
//   - Not reentrant; a lock may be released by any thread, not only the one
//     that took it.
//   - unlock() of an RWMutex not locked for writing throws dchan::Error
//     "sync: Unlock of unlocked RWMutex"; unlock_shared() without a reader
//     throws "sync: RUnlock of unlocked RWMutex" (both kFailedPrecondition;
//     Go makes them fatal). The lock is left as it was, provided no other
//     thread uses it at the same moment.
//
// How it works (Go's src/sync/rwmutex.go): a reader count that a writer
// drives negative to announce itself, so an uncontended lock_shared() /
// unlock_shared() is one atomic add each; blocked readers and the writer
// waiting for departing readers park on futex semaphores.
//
// Fencing tokens: every write acquisition increments a per-RWMutex counter,
// which the writer reads with token(). Read locks do not change it.
//
// Memory ordering: unlock() synchronises-with every later acquisition;
// unlock_shared() synchronises-with the next write acquisition.
//
// Remote RWMutexes: dchan::Client::rw_mutex(name) returns an RWMutex hosted
// by a broker (see <dchan/client.h>). Locks are held by the client's session
// (any thread of the process may release them); requests queue FIFO on the
// broker, consecutive read requests at the head are granted together, and a
// read request waits while a writer holds or waits for the lock. token() is
// the broker's fencing token of the last write acquisition (strictly
// increasing per name, across processes). Unlocks of holds this session has
// return without waiting for the broker, as for Mutex (an error they meet
// is thrown by the next operation on the lock); every other operation
// returns once the broker applied it. Operations may throw dchan::Error: kUnavailable (broker lost),
// kAborted (the lock was lost while held: hold_token() was requested and every
// later operation on it throws kAborted), and the broker's
// kFailedPrecondition for unlocks of a lock not held in that mode. As for
// Mutex, a throwing unlock() inside std::lock_guard / std::shared_lock
// destructors terminates the process (fail-stop); unlock explicitly inside
// try/catch, or watch hold_token(), to handle a loss.
//
// Thread safety: every member function may be called concurrently from any
// number of threads on copies of the same handle. A single RWMutex object
// (the handle itself) follows the usual rules for std::shared_ptr.
#ifndef DCHAN_RW_MUTEX_H_
#define DCHAN_RW_MUTEX_H_

#include <cstdint>
#include <memory>
#include <stop_token>

#include "dchan/detail/remote.h"

namespace dchan {

class RWMutex;

namespace detail {
class RWMutexCore;
// Used by the client library to hand out broker-hosted RWMutexes.
RWMutex make_remote_rw_mutex(std::shared_ptr<RemoteLock> remote);
}  // namespace detail

class RWMutex {
 public:
  // A new, unlocked local RWMutex. Allocates its state; throws
  // std::bad_alloc.
  RWMutex();

  // Copies share the lock; "moving" copies too, so no handle is ever empty.
  RWMutex(const RWMutex&) = default;
  RWMutex& operator=(const RWMutex&) = default;
  ~RWMutex() = default;

  // Takes the lock for writing: blocks first on other writers (a Mutex), then
  // until the readers inside have left; new readers wait meanwhile. Local:
  // never throws. Remote: waits FIFO on the broker; throws dchan::Error
  // kUnavailable or kAborted (see the file comment).
  void lock();

  // Takes the write lock if nobody holds the lock in any mode; never blocks
  // on it. Local: never throws. Remote: one round trip; throws as lock().
  bool try_lock();

  // Releases the write lock and lets the readers that queued behind it in.
  // Throws dchan::Error "sync: Unlock of unlocked RWMutex" if it is not
  // write-locked. Local: never blocks. Remote: returns once the broker has
  // released it; also throws kAborted (lost while held) or kUnavailable.
  void unlock();

  // Takes the lock for reading: returns at once unless a writer holds the
  // lock or is waiting for it, in which case it blocks until that writer has
  // unlocked. Local: never throws. Remote: throws as lock().
  void lock_shared();

  // Takes a read lock unless a writer holds or waits for the lock; never
  // blocks on it. Local: never throws. Remote: throws as lock().
  bool try_lock_shared();

  // Releases one read lock; the last reader to leave lets a waiting writer
  // in. Throws dchan::Error "sync: RUnlock of unlocked RWMutex" if no read
  // lock is held. Local: never blocks. Remote: returns once the broker has
  // released it; also throws kAborted or kUnavailable.
  void unlock_shared();

  // The fencing token of the current write acquisition: strictly increasing
  // with every successful write lock (remote: the broker's token for this
  // name, across processes). Read locks do not change it. Meant for the
  // writer; never blocks, never throws.
  uint64_t token() const noexcept;

  // A token whose stop is requested as soon as this client suspects that it
  // lost the lock it holds (remote only, in either mode). For a local
  // RWMutex, or a remote one not held, a token that never stops
  // (stop_possible() == false). Never blocks, never throws. Stop
  // callbacks run on the thread that notices the loss (a client-internal
  // thread, or one calling into the lock): they must not block, and must
  // not drop the last handle of the Client (its threads cannot join
  // themselves).
  std::stop_token hold_token() const noexcept {
    if (core_ != nullptr) [[likely]] {
      return std::stop_token();
    }
    return remote_->hold_token();
  }

  // True for an RWMutex hosted by a broker.
  bool is_remote() const noexcept { return remote_ != nullptr; }

  // Same lock. Remote handles that one Client opened under the same name
  // compare equal.
  friend bool operator==(const RWMutex& a, const RWMutex& b) noexcept {
    return a.core_ == b.core_ && a.remote_ == b.remote_;
  }

 private:
  friend RWMutex detail::make_remote_rw_mutex(
      std::shared_ptr<detail::RemoteLock>);
  explicit RWMutex(std::shared_ptr<detail::RemoteLock> remote)
      : remote_(std::move(remote)) {}

  // Exactly one is set: the local lock state, or the broker-hosted lock.
  std::shared_ptr<detail::RWMutexCore> core_;
  std::shared_ptr<detail::RemoteLock> remote_;
};

namespace detail {
inline RWMutex make_remote_rw_mutex(std::shared_ptr<RemoteLock> remote) {
  return RWMutex(std::move(remote));
}
}  // namespace detail

}  // namespace dchan

#endif  // DCHAN_RW_MUTEX_H_
