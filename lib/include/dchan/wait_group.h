// dchan/wait_group.h — Go's sync.WaitGroup for C++.
//
//   dchan::WaitGroup wg;
//   for (Job& job : jobs) {
//     wg.add(1);
//     dchan::go([wg, &job]() mutable { process(job); wg.done(); });
//   }
//   wg.wait();                   // every job has been processed
//
// A WaitGroup waits for a collection of tasks to finish: a counter that
// add() raises and done() lowers, and wait(), which blocks until it is zero.
// It is a cheap, copyable handle (copies name the same WaitGroup, `==` tells
// whether two handles do); a default-constructed WaitGroup allocates a fresh
// one with counter zero (Go's zero value). Moving a handle copies it, so a
// handle is never empty.
//
// Go's rules:
//   - add() with a positive delta that starts a new round should happen
//     before the wait() that waits for it (typically before starting the
//     task), as in Go.
//   - A counter that would go below zero is a panic: dchan::Error "sync:
//     negative WaitGroup counter" (kFailedPrecondition), and the counter is
//     left unchanged.
//   - wait() at zero returns at once; when the counter reaches zero every
//     blocked waiter wakes. The WaitGroup can then be used for a new round
//     at once (the round a waiter waited for is over as soon as the counter
//     hit zero, even if the waiter has not run yet).
//
// Memory ordering: every done()/add() that lowers the counter
// synchronises-with the wait*() calls that return because it reached zero
// (as for Go: "a call to Done synchronizes before the return of any Wait
// call that it unblocks").
//
// Thread safety: every member function may be called concurrently from any
// number of threads on copies of the same handle. A single WaitGroup object
// (the handle itself) follows the usual rules for std::shared_ptr.
#ifndef DCHAN_WAIT_GROUP_H_
#define DCHAN_WAIT_GROUP_H_

#include <chrono>
#include <memory>

#include "dchan/detail/futex.h"

namespace dchan {

namespace detail {
class WaitGroupCore;
}  // namespace detail

class WaitGroup {
 public:
  // A new WaitGroup with counter zero. Throws std::bad_alloc.
  WaitGroup();

  // Copies share the WaitGroup; "moving" copies too.
  WaitGroup(const WaitGroup&) = default;
  WaitGroup& operator=(const WaitGroup&) = default;
  ~WaitGroup() = default;

  // Adds `delta` (which may be negative) to the counter; when it reaches
  // zero, wakes every waiter. Never blocks. Throws dchan::Error "sync:
  // negative WaitGroup counter" (kFailedPrecondition) if the counter would go
  // below zero, or kOutOfRange if it would exceed INT32_MAX; the counter is
  // then unchanged.
  void add(int delta);

  // add(-1). Throws as add().
  void done() { add(-1); }

  // Blocks until the counter is zero (returns at once if it is). Spins
  // briefly, then parks on a futex. Never throws.
  void wait();

  // As wait(), but gives up after `timeout` / at `deadline` (any clock).
  // Returns whether the counter reached zero. Never throws.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until_steady(detail::deadline_after(timeout));
  }
  template <class Clock, class Duration>
  bool wait_until(std::chrono::time_point<Clock, Duration> deadline) {
    return wait_until_steady(detail::to_steady(deadline));
  }

  // The counter now (for tests and diagnostics; it may change at once).
  int count() const noexcept;

  friend bool operator==(const WaitGroup& a, const WaitGroup& b) noexcept {
    return a.core_ == b.core_;
  }

 private:
  bool wait_until_steady(std::chrono::steady_clock::time_point deadline);

  // Local state. (A broker-hosted WaitGroup will add its backend beside this
  // pointer.)
  std::shared_ptr<detail::WaitGroupCore> core_;
};

}  // namespace dchan

#endif  // DCHAN_WAIT_GROUP_H_
