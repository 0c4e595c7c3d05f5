#include "spin.h"

#include <algorithm>
#include <utility>

namespace dchan::detail {
namespace {

// The floor of an adapted limit: enough for a partner on another CPU that
// answers within a few hundred nanoseconds. Zero while a park to move did
// not move the thread (see spin.h).
constexpr int kMinSpins = 32;

// The most waits a thread lets pass between two parks to move (see
// kSharedWaitsBeforePark in spin.h).
constexpr int kMaxSharedWaitsBeforePark = 1024;

}  // namespace

void learn_after_wait(
    int completer_cpu,
    std::chrono::steady_clock::time_point parked_at) noexcept {
  const int budget = spin_budget();
  if (budget == 0) return;
  ThreadSpinState& t = t_spin_state;
  int& limit = thread_spin_limit();
  const bool parked = parked_at != std::chrono::steady_clock::time_point();
  const bool parked_to_move = std::exchange(t.parking_to_move, false) && parked;
  if (completer_cpu >= 0 && completer_cpu == current_cpu()) {
    if (parked_to_move) {  // and still sharing the completer's CPU
      t.stuck_on_one_cpu = true;
      t.shared_cpu_waits = 0;
      t.waits_before_park =
          std::min(kMaxSharedWaitsBeforePark, 2 * t.waits_before_park);
    } else if (!parked) {
      t.shared_cpu_waits =
          std::min(t.shared_cpu_waits + 1, t.waits_before_park);
    }
    limit = std::max(t.stuck_on_one_cpu ? 0 : kMinSpins, limit / 2);
    return;
  }
  t.shared_cpu_waits = 0;
  t.stuck_on_one_cpu = false;
  if (parked_to_move) t.waits_before_park = kSharedWaitsBeforePark;  // moved
  if (!parked || std::chrono::steady_clock::now() - parked_at <
                     std::chrono::microseconds(50)) {
    limit = std::min(budget, std::max(kMinSpins, limit * 2));
  }
}

}  // namespace dchan::detail
