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
// Thread safety: every member function may be called concurrently from any
// number of threads on copies of the same handle. A single RWMutex object
// (the handle itself) follows the usual rules for std::shared_ptr.
#ifndef DCHAN_RW_MUTEX_H_
#define DCHAN_RW_MUTEX_H_

#include <cstdint>
#include <memory>

namespace dchan {

namespace detail {
class RWMutexCore;
}  // namespace detail

class RWMutex {
 public:
  // A new, unlocked RWMutex. Allocates its state; throws std::bad_alloc.
  RWMutex();

  // Copies share the lock; "moving" copies too, so no handle is ever empty.
  RWMutex(const RWMutex&) = default;
  RWMutex& operator=(const RWMutex&) = default;
  ~RWMutex() = default;

  // Takes the lock for writing: blocks first on other writers (a Mutex), then
  // until the readers inside have left; new readers wait meanwhile. Never
  // throws.
  void lock();

  // Takes the write lock if nobody holds the lock in any mode; never blocks,
  // never throws.
  bool try_lock() noexcept;

  // Releases the write lock and lets the readers that queued behind it in.
  // Never blocks. Throws dchan::Error "sync: Unlock of unlocked RWMutex" if
  // it is not write-locked.
  void unlock();

  // Takes the lock for reading: returns at once unless a writer holds the
  // lock or is waiting for it, in which case it blocks until that writer has
  // unlocked. Never throws.
  void lock_shared();

  // Takes a read lock unless a writer holds or waits for the lock; never
  // blocks, never throws.
  bool try_lock_shared() noexcept;

  // Releases one read lock; the last reader to leave lets a waiting writer
  // in. Never blocks. Throws dchan::Error "sync: RUnlock of unlocked
  // RWMutex" if no read lock is held.
  void unlock_shared();

  // The fencing token of the current write acquisition: strictly increasing
  // with every successful lock()/try_lock(). Meant for the writer; never
  // blocks, never throws.
  uint64_t token() const noexcept;

  friend bool operator==(const RWMutex& a, const RWMutex& b) noexcept {
    return a.core_ == b.core_;
  }

 private:
  // Local lock state. (A broker-hosted RWMutex will add its backend beside
  // this pointer.)
  std::shared_ptr<detail::RWMutexCore> core_;
};

}  // namespace dchan

#endif  // DCHAN_RW_MUTEX_H_
