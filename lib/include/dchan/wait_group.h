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
// Remote WaitGroups: dchan::Client::wait_group(name) returns a WaitGroup
// hosted by a broker (see <dchan/client.h>), shared by every process that
// opens the name: a coordinator add()s and wait()s, workers in other
// processes done(). add() and done() return once the broker has counted
// them (a worker that calls done() and exits at once has paid). The broker
// tracks what each process added minus the Dones it did; when a process's
// session ends still owing Dones, the counter drops by its debt and — unless
// the WaitGroup was opened with `forgive` — the WaitGroup fails: every wait
// blocked on it, and every later one until an add() starts a new round,
// throws dchan::Error kAborted naming the lost participant. Its operations
// may also throw kUnavailable when the broker is lost (no hang), and count()
// asks the broker.
//
// Thread safety: every member function may be called concurrently from any
// number of threads on copies of the same handle. A single WaitGroup object
// (the handle itself) follows the usual rules for std::shared_ptr.
#ifndef DCHAN_WAIT_GROUP_H_
#define DCHAN_WAIT_GROUP_H_

#include <chrono>
#include <memory>

#include "dchan/detail/futex.h"
#include "dchan/detail/remote.h"

namespace dchan {

class WaitGroup;

namespace detail {
class WaitGroupCore;
// Used by the client library to hand out broker-hosted WaitGroups.
WaitGroup make_remote_wait_group(std::shared_ptr<RemoteWaitGroup> remote);
}  // namespace detail

class WaitGroup {
 public:
  // A new local WaitGroup with counter zero. Throws std::bad_alloc.
  WaitGroup();

  // Copies share the WaitGroup; "moving" copies too.
  WaitGroup(const WaitGroup&) = default;
  WaitGroup& operator=(const WaitGroup&) = default;
  ~WaitGroup() = default;

  // Adds `delta` (which may be negative) to the counter; when it reaches
  // zero, wakes every waiter. Throws dchan::Error "sync: negative WaitGroup
  // counter" (kFailedPrecondition) if the counter would go below zero, or
  // kOutOfRange if it would exceed INT32_MAX; the counter is then unchanged.
  // Local: never blocks. Remote: returns once the broker has applied it;
  // also throws kUnavailable.
  void add(int delta);

  // add(-1). Throws as add().
  void done() { add(-1); }

  // Blocks until the counter is zero (returns at once if it is). Local:
  // spins and yields briefly as a blocked channel operation does (see
  // chan.h), then parks on a futex; never throws. Remote: throws
  // dchan::Error kAborted when a participant was lost owing Dones (the
  // message names it; not with `forgive`), kUnavailable when the broker is
  // lost.
  void wait();

  // As wait(), but gives up after `timeout` / at `deadline` (any clock).
  // Returns whether the counter reached zero. Local: never throws. Remote:
  // the wait is withdrawn on the broker at the deadline; throws as wait().
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until_steady(detail::deadline_after(timeout));
  }
  template <class Clock, class Duration>
  bool wait_until(std::chrono::time_point<Clock, Duration> deadline) {
    return wait_until_steady(detail::to_steady(deadline));
  }

  // The counter now (for tests and diagnostics; it may change at once).
  // Local: never throws. Remote: asks the broker; throws kUnavailable.
  int count() const;

  // True for a WaitGroup hosted by a broker.
  bool is_remote() const noexcept { return remote_ != nullptr; }

  // Same WaitGroup. Two handles to one broker WaitGroup obtained by separate
  // opens compare unequal.
  friend bool operator==(const WaitGroup& a, const WaitGroup& b) noexcept {
    return a.core_ == b.core_ && a.remote_ == b.remote_;
  }

 private:
  friend WaitGroup detail::make_remote_wait_group(
      std::shared_ptr<detail::RemoteWaitGroup>);
  explicit WaitGroup(std::shared_ptr<detail::RemoteWaitGroup> remote)
      : remote_(std::move(remote)) {}

  bool wait_until_steady(std::chrono::steady_clock::time_point deadline);

  // Exactly one is set: the local state, or the broker-hosted WaitGroup.
  std::shared_ptr<detail::WaitGroupCore> core_;
  std::shared_ptr<detail::RemoteWaitGroup> remote_;
};

namespace detail {
inline WaitGroup make_remote_wait_group(
    std::shared_ptr<RemoteWaitGroup> remote) {
  return WaitGroup(std::move(remote));
}
}  // namespace detail

}  // namespace dchan

#endif  // DCHAN_WAIT_GROUP_H_
