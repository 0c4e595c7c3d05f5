#include "spin.h"

#include <algorithm>

namespace dchan::detail {
namespace {

// The floor of an adapted limit: enough for a partner on another CPU that
// answers within a few hundred nanoseconds.
constexpr int kMinSpins = 32;

thread_local int t_spin_limit = -1;

}  // namespace

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
  if (completer_cpu >= 0 && completer_cpu == current_cpu()) {
    limit = std::max(kMinSpins, limit / 2);
  } else if (parked_at == std::chrono::steady_clock::time_point() ||
             std::chrono::steady_clock::now() - parked_at <
                 std::chrono::microseconds(50)) {
    limit = std::min(budget, limit * 2);
  }
}

}  // namespace dchan::detail
