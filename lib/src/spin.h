// spin.h — how a blocked dchan thread waits before it parks (private to lib).
//
// Waking a thread parked on another vCPU costs tens of microseconds on small
// VMs, so a waiter first spins, then yields its CPU a few times, and only
// then parks. Spinning pays only while the thread that will complete the
// wait runs on another CPU; when it shares the waiter's CPU, the spin only
// delays it. So each thread keeps one adaptive spin limit, shared by all its
// waits (channel operations, selects, WaitGroup::wait): it halves it when a
// wait turns out to have been completed from its own CPU and doubles it, up
// to spin_budget(), when a spin succeeds late or a wait that parked was
// completed from another CPU soon after.
//
// Two threads that hand values back and forth can end up sharing one CPU
// while another one idles (the kernel starts a new thread on its creator's
// CPU). Yields keep both runnable there, so only the load balancer, after
// milliseconds, would part them. A park lets the futex wake place the
// sleeper on an idle CPU at once. So after a few waits in a row completed
// from its own CPU, a thread skips the yields of its next wait and parks. If
// that park did not part them (no CPU was idle, or the threads were pinned
// to one CPU after the process started), it lets twice as many such waits
// pass before it tries again, and its spin limit may fall to zero (spinning
// then only delays the partner); a wait completed from another CPU brings
// back the usual floor.
//
// A process confined to one CPU from its start never spins (spin_budget()
// is 0) and goes straight to the yields.
//
// Thread-compatible: the limit and the counts are thread-local.
#ifndef DCHAN_LIB_SRC_SPIN_H_
#define DCHAN_LIB_SRC_SPIN_H_

#include <sched.h>

#include <algorithm>
#include <chrono>

#include "dchan/detail/futex.h"

namespace dchan::detail {

// How often a waiter yields before it parks: when the completing thread
// runs on the same CPU (always so in a process pinned to one CPU), a yield
// lets it run at the cost of one system call, where a park costs a futex
// wait plus a futex wake.
inline constexpr int kYieldsBeforePark = 8;

// Parking to move (see above): after this many waits in a row completed
// from the thread's own CPU at first; doubled after each park that did not
// move the thread (up to a maximum, see spin.cc), back to this once one did.
inline constexpr int kSharedWaitsBeforePark = 4;

// The calling thread's waiting state (see above and learn_after_wait).
struct ThreadSpinState {
  int limit = -1;  // spin iterations; -1: not initialised (spin_budget())
  // Waits in a row (yielded, not parked) completed from the thread's own
  // CPU, capped at waits_before_park; reset by a spin that succeeds.
  int shared_cpu_waits = 0;
  int waits_before_park = kSharedWaitsBeforePark;
  bool parking_to_move = false;   // the current wait skipped its yields
  bool stuck_on_one_cpu = false;  // such a park did not move the thread
};
inline thread_local ThreadSpinState t_spin_state;

// The calling thread's current spin limit (initialised to spin_budget()).
inline int& thread_spin_limit() noexcept {
  ThreadSpinState& t = t_spin_state;
  if (t.limit < 0) t.limit = spin_budget();
  return t.limit;
}

// True if the calling thread's next wait should park without yielding: too
// many of its waits in a row were completed from its own CPU (see above).
inline bool thread_should_park_to_move() noexcept {
  const ThreadSpinState& t = t_spin_state;
  return t.shared_cpu_waits >= t.waits_before_park;
}

enum class SpinOutcome { kSpun, kYielded, kMustPark };

// Polls `done()` while spinning up to the thread's limit, then while
// yielding kYieldsBeforePark times (none when the thread should park to
// move). kSpun / kYielded: done() became true in that phase; kMustPark: it
// is still false.
template <class Done>
SpinOutcome spin_then_yield(Done done) noexcept {
  int& limit = thread_spin_limit();
  for (int i = 0; i < limit; ++i) {
    if (done()) {
      if (i > limit / 2) limit = std::min(spin_budget(), limit * 2);
      t_spin_state.shared_cpu_waits = 0;  // the completer ran elsewhere
      return SpinOutcome::kSpun;
    }
    spin_pause();
  }
  if (thread_should_park_to_move()) {
    if (done()) return SpinOutcome::kYielded;
    t_spin_state.parking_to_move = true;
    return SpinOutcome::kMustPark;
  }
  for (int i = 0; i < kYieldsBeforePark; ++i) {
    if (done()) return SpinOutcome::kYielded;
    sched_yield();
  }
  return done() ? SpinOutcome::kYielded : SpinOutcome::kMustPark;
}

// Adapts the thread's limit after a wait that had to give up the CPU:
// `completer_cpu` is where the completing thread ran (-1: unknown),
// `parked_at` when the waiter parked (default-constructed: the wait
// completed while yielding).
void learn_after_wait(int completer_cpu,
                      std::chrono::steady_clock::time_point parked_at) noexcept;

}  // namespace dchan::detail

#endif  // DCHAN_LIB_SRC_SPIN_H_
