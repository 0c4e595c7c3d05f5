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
// lock nobody waits for is one compare-and-swap too. A contended lock() parks
// on a futex (without spinning first: on small VMs spinning cost throughput;
// see kMaxSpins in mutex.cc) in a FIFO queue of waiters. In normal mode a woken
// waiter competes with newly arriving threads, which usually win (they are
// already on a CPU); a waiter that loses goes back to the front of the queue. A
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

#include "dchan/detail/futex.h"

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

  // Takes a free lock with one CAS (true); otherwise the caller blocks in
  // lock_slow().
  bool lock_fast() noexcept {
    uint32_t expected = 0;
    if (!state_.compare_exchange_strong(expected, kLocked,
                                        std::memory_order_acquire,
                                        std::memory_order_relaxed)) {
      return false;
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

  bool try_lock() noexcept {
    uint32_t s = state_.load(std::memory_order_relaxed);
    while ((s & kLocked) == 0) {
      if (state_.compare_exchange_weak(s, s | kLocked,
                                       std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
        bump_token();
        return true;
      }
    }
    return false;
  }

  // The slow part of a timed lock (after lock_fast() failed).
  bool try_lock_slow_until(std::chrono::steady_clock::time_point deadline) {
    if (!lock_slow(deadline)) return false;
    bump_token();
    return true;
  }

  // Releases the lock if nobody waits for it and it is not in starvation
  // mode (true); otherwise leaves the state to unlock_slow(*state).
  bool unlock_fast(uint32_t* state) {
    *state = kLocked;
    return state_.compare_exchange_strong(*state, 0, std::memory_order_release,
                                          std::memory_order_relaxed);
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
  void enqueue_locked(Waiter* w, bool at_front);
  Waiter* pop_front_locked();
  void remove_locked(Waiter* w);
  // Clears the given bits (with a CAS loop); caller holds queue_mu_.
  void clear_bits_locked(uint32_t bits);

  std::atomic<uint32_t> state_{0};
  std::atomic<uint64_t> token_{0};

  // The FIFO queue of parked waiters (intrusive, nodes live on the waiters'
  // stacks).
  std::mutex queue_mu_;
  Waiter* head_ = nullptr;  // guarded by queue_mu_
  Waiter* tail_ = nullptr;  // guarded by queue_mu_
};

}  // namespace detail

class Mutex {
 public:
  // A new, unlocked Mutex. Allocates its state; throws std::bad_alloc.
  Mutex() : core_(std::make_shared<detail::MutexCore>()) {}

  // Copies share the lock; "moving" copies too, so no handle is ever empty.
  Mutex(const Mutex&) = default;
  Mutex& operator=(const Mutex&) = default;
  ~Mutex() = default;

  // Blocks until the Mutex is free and takes it. Spins briefly, then parks on
  // a futex. Never throws (a lock held by this very thread deadlocks).
  void lock() {
    if (!core_->lock_fast()) {
      // A blocked thread keeps the state alive: the process may exit (and
      // destroy a global handle) while it is parked.
      std::shared_ptr<detail::MutexCore> keep = core_;
      keep->lock_slow_and_bump();
    }
  }

  // Takes the Mutex if it is free at once; never blocks, never throws. As in
  // Go, it fails while the Mutex is being handed to a starving waiter.
  bool try_lock() noexcept { return core_->try_lock(); }

  // As lock(), but gives up after `timeout` (or at `deadline`, any clock):
  // returns whether the Mutex is now held. Blocks at most until the deadline
  // (plus the time to leave the wait queue); never throws.
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> timeout) {
    return core_->lock_fast() ||
           try_lock_slow_until(detail::deadline_after(timeout));
  }
  template <class Clock, class Duration>
  bool try_lock_until(std::chrono::time_point<Clock, Duration> deadline) {
    return core_->lock_fast() ||
           try_lock_slow_until(detail::to_steady(deadline));
  }

  // Releases the Mutex, which may have been locked by any thread. Never
  // blocks (it may wake a parked waiter). Throws dchan::Error "sync: unlock
  // of unlocked mutex" (kFailedPrecondition) if the Mutex is not locked, and
  // leaves it unchanged.
  void unlock() {
    uint32_t s;
    if (!core_->unlock_fast(&s)) {
      // Waking a waiter touches the state after the lock is free; another
      // thread may by then have locked, unlocked and dropped its handle.
      std::shared_ptr<detail::MutexCore> keep = core_;
      keep->unlock_slow(s);
    }
  }

  // The fencing token of the current acquisition: 1 for the first, and
  // strictly increasing with every lock()/try_lock*() that succeeds. Meant
  // for the holder; never blocks, never throws.
  uint64_t token() const noexcept { return core_->token(); }

  friend bool operator==(const Mutex& a, const Mutex& b) noexcept {
    return a.core_ == b.core_;
  }

 private:
  bool try_lock_slow_until(std::chrono::steady_clock::time_point deadline) {
    std::shared_ptr<detail::MutexCore> keep = core_;  // as in lock()
    return keep->try_lock_slow_until(deadline);
  }

  // Local lock state. (A broker-hosted Mutex will add its backend beside
  // this pointer.)
  std::shared_ptr<detail::MutexCore> core_;
};

}  // namespace dchan

#endif  // DCHAN_MUTEX_H_
