// dchan/go.h — Go's `go` statement for C++.
//
//   dchan::go(worker, jobs, wg);            // go worker(jobs, wg)
//   dchan::go([ch]() mutable { ch.send(compute()); });
//
// go(fn, args...) runs fn(args...) concurrently and returns at once,
// ignoring fn's result. Like std::thread, it stores decayed copies of fn and
// the arguments (pass std::ref to share an object) and invokes them as
// rvalues.
//
// Goroutines here are OS threads taken from a process-wide pool: go() hands
// fn to a parked idle thread when there is one (no thread creation, usually
// no system call if the thread has only just become idle), and starts a new
// thread only when every pooled thread is busy. So a goroutine that blocks
// never holds up others: there is no run queue to wait in. A thread idle for
// kGoIdleTimeout (10 s) exits.
//
// Go's rules:
//   - An exception that escapes fn is an unrecovered panic: the process
//     prints "panic: <what()>" (and the goroutine's kind of exception) to
//     stderr and exits with status 2, as Go does. Catch inside fn to recover.
//   - The process may exit (return from main, std::exit) while goroutines
//     are still running or blocked; they are not joined, and the pool is
//     never destroyed, so static destructors do not wait for or crash on
//     them. As in Go, whatever those goroutines would have done is lost.
//
// Thread safety: go() may be called from any thread, including goroutines.
#ifndef DCHAN_GO_H_
#define DCHAN_GO_H_

#include <chrono>
#include <cstddef>
#include <functional>
#include <type_traits>
#include <utility>

#include "absl/functional/any_invocable.h"

namespace dchan {

// How long a pooled thread stays parked without work before it exits.
inline constexpr std::chrono::seconds kGoIdleTimeout{10};

namespace detail {

// Runs `task` on a pooled thread (see go()). Throws std::system_error if a
// thread is needed and cannot be created, std::bad_alloc.
void go_task(absl::AnyInvocable<void() &&> task);

// The pool's threads, for tests and diagnostics.
struct GoPoolStats {
  std::size_t threads = 0;  // alive: running a goroutine or idle
  std::size_t idle = 0;     // parked, waiting for a goroutine
};
GoPoolStats go_pool_stats();

// Changes the idle timeout (tests use a short one). Affects threads that
// park after the call.
void set_go_idle_timeout(std::chrono::steady_clock::duration timeout);

}  // namespace detail

// Starts fn(args...) on another thread and returns without waiting (Go's
// `go fn(args...)`). Blocks only briefly on the pool's internal lock.
// Throws std::system_error if a new thread is needed and cannot be created,
// std::bad_alloc, or what copying fn and args throws; fn has then not run.
template <class F, class... Args>
requires std::is_invocable_v<std::decay_t<F>, std::decay_t<Args>...>
void go(F&& fn, Args&&... args) {
  detail::go_task(
      [fn = std::decay_t<F>(std::forward<F>(fn)),
       ... args = std::decay_t<Args>(std::forward<Args>(args))]() mutable {
        std::invoke(std::move(fn), std::move(args)...);
      });
}

}  // namespace dchan

#endif  // DCHAN_GO_H_
