#include "spin.h"

#include <algorithm>

namespace dchan::detail {
namespace {

// The floor of an adapted limit: enough for a partner on another CPU that
// answers within a few hundred nanoseconds.
constexpr int kMinSpins = 32;

// Parking to move (see spin.h): after this many waits in a row completed
// from the thread's own CPU at first, doubled after each park that did not
// move the thread, up to the maximum.
constexpr int kSharedWaitsBeforePark = 4;
constexpr int kMaxSharedWaitsBeforePark = 1024;

thread_local int t_spin_limit = -1;
thread_local int t_shared_cpu_waits = 0;
thread_local int t_shared_waits_before_park = kSharedWaitsBeforePark;

}  // namespace

bool thread_should_park_to_move() noexcept {
  return t_shared_cpu_waits >= t_shared_waits_before_park;
}

int& thread_spin_limit() noexcept {
  if (t_spin_limit < 0) t_spin_limit = spin_budget();
  return t_spin_limit;
}

void learn_after_wait(
    int completer_cpu,
    std::chrono::steady_clock::time_point parked_at) noexcept {
  const int budget = spin_budget();
  if (budget == 0) return;
  int& limit = thread_spin_limit();
  const bool parked = parked_at != std::chrono::steady_clock::time_point();
  if (completer_cpu >= 0 && completer_cpu == current_cpu()) {
    limit = std::max(kMinSpins, limit / 2);
    if (!parked) {
      ++t_shared_cpu_waits;
    } else if (t_shared_cpu_waits > 0) {  // a park to move that did not
      t_shared_cpu_waits = 0;
      t_shared_waits_before_park =
          std::min(kMaxSharedWaitsBeforePark, 2 * t_shared_waits_before_park);
    }
    return;
  }
  t_shared_cpu_waits = 0;
  t_shared_waits_before_park = kSharedWaitsBeforePark;
  if (!parked || std::chrono::steady_clock::now() - parked_at <
                     std::chrono::microseconds(50)) {
    limit = std::min(budget, limit * 2);
  }
}

}  // namespace dchan::detail
