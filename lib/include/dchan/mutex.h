// dchan/mutex.h — Go's sync.Mutex for C++.
//
//   dchan::Mutex mu;                        // usable at once (Go's zero value)
//   {
//     std::lock_guard<dchan::Mutex> hold(mu);
//     ++counter;
//   }
//
// A Mutex is a cheap, copyable handle to a mutual-exclusion lock: copies name
// the same lock (pass it by value to a thread as Go code passes a
// *sync.Mutex), and `==` tells whether two handles do. A default-constructed
// Mutex allocates a fresh unlocked lock. Copying a handle never copies the
// lock's state; moving a handle copies it, so a handle is never empty.
//
// It meets the standard TimedLockable requirements, so std::lock_guard,
// std::unique_lock, std::scoped_lock and std::try_lock work with it.
//
// Go's rules, which differ from std::mutex:
//   - It is not reentrant: a thread that locks a Mutex it already holds
//     deadlocks (as in Go).
//   - A locked Mutex is not tied to a thread: any thread may unlock it (Go's
//     "it is allowed for one goroutine to lock a Mutex and then arrange for
//     another goroutine to unlock it").
//   - unlock() of an unlocked Mutex throws dchan::Error "sync: unlock of
//     unlocked mutex" (Go makes it a fatal error) and leaves it unchanged.
//
// How it works (Go's design, src/sync/mutex.go): lock() first tries one
// compare-and-swap that takes a free lock with no system call; unlock() of a
// lock nobody waits for is one compare-and-swap too, and so is an unlock()
// while the waiter it would wake is awake already. A contended lock() queues
// at once in a FIFO queue of waiters (without spinning on the lock: on small
// VMs that cost throughput; see kMaxSpins in mutex.cc). When other CPUs
// exist, a waiter that is awake marks itself so (unlock() then wakes nobody)
// and looks at the lock twice, ~1 us apart; then it watches its own queue
// entry briefly and sleeps on a futex. unlock() makes a wake-up call only
// for a waiter that sleeps. In normal mode a woken
// waiter competes with newly arriving threads, which usually win (they are
// already on a CPU); a waiter that loses stays at the front of the queue. A
// waiter that has waited for more than 1 ms switches the Mutex to starvation
// mode: unlock() then hands the lock directly to the waiter at the head of the
// queue, and arriving threads neither spin nor take the lock but queue at the
// tail. The Mutex returns to normal mode when a waiter that gets the lock
// waited less than 1 ms or is the last one. So no waiter waits for ever while
// others keep taking the lock.
//
// Fencing tokens: every acquisition increments a per-Mutex counter; the
// holder reads it with token() (strictly increasing across acquisitions).
//
// Memory ordering: unlock() synchronises-with the lock() or try_lock*() that
// next acquires the Mutex (release/acquire), as for std::mutex.
//
// Remote Mutexes: dchan::Client::mutex(name) returns a Mutex hosted by a
// broker (see <dchan/client.h>), shared by every process that opens the name.
// It is held by the client's session (any thread of that process may unlock
// it), waiters queue FIFO on the broker, and token() is the broker's fencing
// token (strictly increasing per name over the broker's life, across all
// processes). lock() and try_lock*() return only after the broker applied
// them — except for a Mutex opened with MutexOptions::keep (see
// <dchan/client.h>), which the client keeps after unlock() and takes back
// locally until another request waits for it on the broker. unlock() of a
// lock this session holds does not wait for the broker
// (Go's Unlock never blocks): it records the release, queues the request
// and returns; the session's requests are applied in order, so every later
// operation of this client sees it, and the lock is handed on when the
// broker gets it; another session (another process, or another Client of
// this one) may briefly still find it held, so a try_lock() there right
// after can fail. Dropping the last handle of the lock waits for the
// answers of its unlocks. Unlike a local Mutex, its operations may throw
// dchan::Error:
//   - kUnavailable: the broker is lost (no hang: also a blocked lock()).
//   - kAborted: the lock was lost while held — the client suspected that its
//     session ended (nothing heard from the broker for the session TTL, or
//     the connection broke), so the broker has released or will release it
//     to the next waiter. hold_token() is requested at that moment; every
//     later operation on the lock throws kAborted naming it and its token.
//   - kFailedPrecondition "sync: unlock of unlocked mutex" from the broker,
//     at once: an unlock of a lock this client does not believe it holds
//     waits for the broker's answer (of a kept lock that no thread holds,
//     MutexOptions::keep: thrown by the client, which the broker holds it
//     for).
// An unlock whose answer never came (the session lost first) is a loss: the
// next operation on the lock throws kAborted; any other error answer to an
// unlock is thrown (once) by the next operation on the lock; with no handle
// left, either is logged to stderr. unlock() itself throws when the lock was
// lost before it was called. With std::lock_guard that throw happens in a
// noexcept destructor and terminates the process (fail-stop: a critical
// section whose lock was lost never continues silently). To handle the loss
// instead, use std::unique_lock and call unlock() yourself inside try/catch,
// or watch hold_token() (e.g. with a std::stop_callback) and fence writes
// with token().
//
// Thread safety: every member function may be called concurrently from any
// number of threads on copies of the same handle. A single Mutex object (the
// handle itself) follows the usual rules for std::shared_ptr.
#ifndef DCHAN_MUTEX_H_
#define DCHAN_MUTEX_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stop_token>

#include "dchan/detail/futex.h"
#include "dchan/detail/remote.h"

namespace dchan {

namespace detail {

// The lock itself, shared by the handles of one Mutex (and used as the
// writers' lock inside RWMutex). Fast paths are inline; everything that may
// block lives in mutex.cc.
class MutexCore {
 public:
  MutexCore() = default;
  MutexCore(const MutexCore&) = delete;
  MutexCore& operator=(const MutexCore&) = delete;
  ~MutexCore() = default;

  // Takes the lock if it is free (true): one CAS when nobody waits for it.
  // Otherwise (held, or being handed to a starving waiter, which keeps it
  // marked held) the caller blocks in lock_slow(). In normal mode arriving
  // threads compete with a woken waiter, so a woken or queued waiter does
  // not send this thread down the slow path: while a woken waiter gets a
  // CPU, the lock's holders keep taking and releasing it here.
  bool lock_fast() noexcept {
    uint32_t s = 0;  // the usual guess: free, nobody waiting
    while (!state_.compare_exchange_weak(
        s, s | kLocked, std::memory_order_acquire, std::memory_order_relaxed)) {
      if ((s & kLocked) != 0) return false;
    }
    bump_token();
    return true;
  }

  void lock() {
    if (!lock_fast()) lock_slow_and_bump();
  }

  void lock_slow_and_bump() {
    lock_slow(std::chrono::steady_clock::time_point::max());
    bump_token();
  }

  // Never blocks: the same as lock_fast().
  bool try_lock() noexcept { return lock_fast(); }

  // The slow part of a timed lock (after lock_fast() failed).
  bool try_lock_slow_until(std::chrono::steady_clock::time_point deadline) {
    if (!lock_slow(deadline)) return false;
    bump_token();
    return true;
  }

  // Releases the lock if that needs no wake-up or hand-off (true): nobody
  // waits, or a waiter is awake already (kWoken) and will compete for it.
  // Otherwise (a parked waiter to wake, starvation mode, or not held) leaves
  // the state it saw to unlock_slow(*state).
  bool unlock_fast(uint32_t* state) noexcept {
    uint32_t s = kLocked;  // the usual guess: held, nobody waiting
    while (!state_.compare_exchange_weak(s, s & ~kLocked,
                                         std::memory_order_release,
                                         std::memory_order_relaxed)) {
      if ((s & kLocked) == 0 || (s & kStarving) != 0 ||
          (s & (kHasWaiters | kWoken)) == kHasWaiters) {
        *state = s;
        return false;
      }
    }
    return true;
  }

  void unlock() {
    uint32_t s;
    if (!unlock_fast(&s)) unlock_slow(s);
  }

  // Throws dchan::Error if the lock is not held. Touches this core after
  // releasing the lock, so the caller must keep it alive for the call.
  void unlock_slow(uint32_t state);

  uint64_t token() const noexcept {
    return token_.load(std::memory_order_relaxed);
  }

  // State bits. kStarving and kHasWaiters change only under queue_mu_;
  // kLocked and kWoken also change without it (by CAS).
  static constexpr uint32_t kLocked = 1;      // held (always, in starvation)
  static constexpr uint32_t kWoken = 2;       // a waiter is awake: no wake-up
  static constexpr uint32_t kStarving = 4;    // unlock hands off to the head
  static constexpr uint32_t kHasWaiters = 8;  // the queue is not empty

 private:
  struct Waiter;

  // Only the holder writes token_; relaxed atomics keep a stray reader from
  // being a data race.
  void bump_token() noexcept {
    token_.store(token_.load(std::memory_order_relaxed) + 1,
                 std::memory_order_relaxed);
  }

  // Returns true once the lock is held, false at `deadline`.
  bool lock_slow(std::chrono::steady_clock::time_point deadline);
  // Lets a thread that owns the kWoken flag go without losing a wake-up:
  // takes the lock if it is free (true), otherwise clears kWoken (false).
  bool give_up_woken();
  // For a woken waiter that lost the race and re-armed its word: hands
  // kWoken back (and sets kStarving if `starving`) while the lock is held,
  // so that it can wait again (true); false if the lock is free.
  bool wait_again(bool starving);
  // Takes `me` out of the queue unless a hand-off did; returns its word as
  // of then (kHandOff: the lock is the caller's; kWakeUp: so is kWoken).
  uint32_t leave_queue(Waiter& me);
  // Takes `me`, whose lock_slow() has just taken the lock, out of the queue.
  // A wake-up published to it meanwhile goes to the next waiter.
  void leave_queue_holding(Waiter& me);
  void enqueue_locked(Waiter* w);
  Waiter* pop_front_locked();
  void remove_locked(Waiter* w);
  // Clears the given bits (with a CAS loop). kHasWaiters and kStarving only
  // under queue_mu_; kWoken by the thread that owns it. Inline here, not in
  // mutex.cc: the winner of a contended lock calls it while it holds
  // queue_mu_, and as an exported function of a -fPIC build it was not
  // inlined (see docs/BENCHMARKS.md, "Session 17").
  void clear_bits(uint32_t bits) noexcept {
    uint32_t s = state_.load(std::memory_order_relaxed);
    while (!state_.compare_exchange_weak(
        s, s & ~bits, std::memory_order_relaxed, std::memory_order_relaxed)) {
    }
  }

  std::atomic<uint32_t> state_{0};
  std::atomic<uint64_t> token_{0};

  // The FIFO queue of parked waiters (intrusive, nodes live on the waiters'
  // stacks).
  std::mutex queue_mu_;
  Waiter* head_ = nullptr;  // guarded by queue_mu_
  Waiter* tail_ = nullptr;  // guarded by queue_mu_
};

}  // namespace detail

class Mutex;

namespace detail {
// Used by the client library to hand out broker-hosted Mutexes.
Mutex make_remote_mutex(std::shared_ptr<RemoteLock> remote);
}  // namespace detail

class Mutex {
 public:
  // A new, unlocked local Mutex. Allocates its state; throws std::bad_alloc.
  Mutex() : core_(std::make_shared<detail::MutexCore>()) {}

  // Copies share the lock; "moving" copies too, so no handle is ever empty.
  Mutex(const Mutex&) = default;
  Mutex& operator=(const Mutex&) = default;
  ~Mutex() = default;

  // Blocks until the Mutex is free and takes it. Local: parks on a futex;
  // never throws (a lock held by this very thread deadlocks). Remote: waits
  // FIFO on the broker; throws dchan::Error kUnavailable or kAborted (see
  // the file comment).
  void lock() {
    detail::MutexCore* c = core_.get();
    if (c != nullptr && c->lock_fast()) [[likely]] {
      return;
    }
    lock_slow();
  }

  // Takes the Mutex if it is free at once, never blocks on it. As in Go, it
  // fails while the Mutex is being handed to a starving waiter. Local: never
  // throws. Remote: one round trip to the broker (none to take back a kept
  // lock, MutexOptions::keep); throws as lock().
  bool try_lock() {
    detail::MutexCore* c = core_.get();
    if (c != nullptr) [[likely]] {
      return c->try_lock();
    }
    return remote_->lock(false, detail::RemoteChan::kNonBlocking);
  }

  // As lock(), but gives up after `timeout` (or at `deadline`, any clock):
  // returns whether the Mutex is now held. Blocks at most until the deadline
  // (plus the time to leave the wait queue). Local: never throws. Remote:
  // the request is withdrawn on the broker at the deadline (true if the
  // broker granted it first); throws as lock().
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> timeout) {
    detail::MutexCore* c = core_.get();
    if (c != nullptr && c->lock_fast()) return true;
    return try_lock_slow_until(detail::deadline_after(timeout));
  }
  template <class Clock, class Duration>
  bool try_lock_until(std::chrono::time_point<Clock, Duration> deadline) {
    detail::MutexCore* c = core_.get();
    if (c != nullptr && c->lock_fast()) return true;
    return try_lock_slow_until(detail::to_steady(deadline));
  }

  // Releases the Mutex, which may have been locked by any thread. Throws
  // dchan::Error "sync: unlock of unlocked mutex" (kFailedPrecondition) if
  // the Mutex is not locked, and leaves it unchanged. Local: never blocks (it
  // may wake a parked waiter). Remote: returns once the release is queued
  // for the broker (see the file comment; a kept lock, MutexOptions::keep,
  // may stay with the client); also throws kAborted (lost while held) or
  // kUnavailable — see the file comment on std::lock_guard.
  void unlock() {
    detail::MutexCore* c = core_.get();
    uint32_t s = 0;
    if (c != nullptr && c->unlock_fast(&s)) [[likely]] {
      return;
    }
    unlock_slow(s);
  }

  // The fencing token of the current acquisition, strictly increasing with
  // every lock()/try_lock*() that succeeds (local: 1 for the first; remote:
  // the broker's token for this name, also increasing across processes).
  // Meant for the holder; never blocks, never throws.
  uint64_t token() const noexcept {
    detail::MutexCore* c = core_.get();
    if (c != nullptr) [[likely]] {
      return c->token();
    }
    return remote_->token();
  }

  // A token whose stop is requested as soon as this client suspects that it
  // lost the lock it holds (remote only: see the file comment). For a local
  // Mutex, or a remote one not held, a token that never stops
  // (stop_possible() == false). Never blocks, never throws. Stop
  // callbacks run on the thread that notices the loss (a client-internal
  // thread, or one calling into the lock): they must not block, and must
  // not drop the last handle of the Client (its threads cannot join
  // themselves).
  std::stop_token hold_token() const noexcept {
    // Tested on remote_ (a handle has exactly one of the two): tested on
    // core_, GCC saw a null remote_ called after a local Mutex's test was
    // inlined (-Wnonnull).
    if (remote_ != nullptr) [[unlikely]] {
      return remote_->hold_token();
    }
    return std::stop_token();
  }

  // True for a Mutex hosted by a broker.
  bool is_remote() const noexcept { return remote_ != nullptr; }

  // Same lock. Remote handles that one Client opened under the same name
  // compare equal.
  friend bool operator==(const Mutex& a, const Mutex& b) noexcept {
    return a.core_ == b.core_ && a.remote_ == b.remote_;
  }

 private:
  friend Mutex detail::make_remote_mutex(std::shared_ptr<detail::RemoteLock>);
  explicit Mutex(std::shared_ptr<detail::RemoteLock> remote)
      : remote_(std::move(remote)) {}

  void lock_slow() {
    if (core_ == nullptr) [[unlikely]] {
      // As below: the backend (and its session) outlive a blocked call.
      std::shared_ptr<detail::RemoteLock> keep = remote_;
      keep->lock(false, detail::RemoteChan::kNoDeadline);
      return;
    }
    // A blocked thread keeps the state alive: the process may exit (and
    // destroy a global handle) while it is parked.
    std::shared_ptr<detail::MutexCore> keep = core_;
    keep->lock_slow_and_bump();
  }

  bool try_lock_slow_until(std::chrono::steady_clock::time_point deadline) {
    if (core_ == nullptr) [[unlikely]] {
      std::shared_ptr<detail::RemoteLock> keep = remote_;  // as in lock()
      return keep->lock(false, deadline);
    }
    std::shared_ptr<detail::MutexCore> keep = core_;  // as in lock()
    return keep->try_lock_slow_until(deadline);
  }

  void unlock_slow(uint32_t state) {
    if (core_ == nullptr) [[unlikely]] {
      std::shared_ptr<detail::RemoteLock> keep = remote_;  // as in lock()
      keep->unlock(false);
      return;
    }
    // Waking a waiter touches the state after the lock is free; another
    // thread may by then have locked, unlocked and dropped its handle.
    std::shared_ptr<detail::MutexCore> keep = core_;
    keep->unlock_slow(state);
  }

  // Exactly one is set: the local lock state, or the broker-hosted lock.
  std::shared_ptr<detail::MutexCore> core_;
  std::shared_ptr<detail::RemoteLock> remote_;
};

namespace detail {
inline Mutex make_remote_mutex(std::shared_ptr<RemoteLock> remote) {
  return Mutex(std::move(remote));
}
}  // namespace detail

}  // namespace dchan

#endif  // DCHAN_MUTEX_H_
