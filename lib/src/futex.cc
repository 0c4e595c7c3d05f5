#include "dchan/detail/futex.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace dchan::detail {
namespace {

long futex(std::atomic<uint32_t>* word, int op, uint32_t val,
           const struct timespec* timeout, uint32_t val3) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, val, timeout,
                 nullptr, val3);
}

}  // namespace

void futex_wait(std::atomic<uint32_t>& word, uint32_t expected) noexcept {
  futex(&word, FUTEX_WAIT_PRIVATE, expected, nullptr, 0);
}

bool futex_wait_until(std::atomic<uint32_t>& word, uint32_t expected,
                      std::chrono::steady_clock::time_point deadline) noexcept {
  using namespace std::chrono;
  if (deadline == steady_clock::time_point::max()) {
    futex_wait(word, expected);
    return true;
  }
  const auto since_epoch = deadline.time_since_epoch();
  if (since_epoch <= steady_clock::duration::zero()) return false;
  const auto secs = duration_cast<seconds>(since_epoch);
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(secs.count());
  ts.tv_nsec =
      static_cast<long>(duration_cast<nanoseconds>(since_epoch - secs).count());
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, which is
  // what std::chrono::steady_clock reads on Linux.
  long rc = futex(&word, FUTEX_WAIT_BITSET_PRIVATE, expected, &ts,
                  FUTEX_BITSET_MATCH_ANY);
  if (rc == -1 && errno == ETIMEDOUT) return false;
  return steady_clock::now() < deadline;
}

void futex_wake(std::atomic<uint32_t>& word, int count) noexcept {
  futex(&word, FUTEX_WAKE_PRIVATE, static_cast<uint32_t>(count), nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>& word) noexcept {
  futex(&word, FUTEX_WAKE_PRIVATE, static_cast<uint32_t>(INT_MAX), nullptr, 0);
}

int current_cpu() noexcept { return sched_getcpu(); }

namespace {

// Whether the process may run on more than one CPU, sampled once, when the
// library loads (sample_cpus_at_load below, at the latest): before main() or
// a global's constructor can pin any thread. A thread that later pins itself to
// one CPU still has partners on the others to spin for; only a process confined
// to one CPU from the start (`taskset -c 0`) has none. (A mask narrowed later
// is left to each thread's adaptive limit, see lib/src/spin.h.)
bool started_on_several_cpus() noexcept {
  static const bool several = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    return sched_getaffinity(0, sizeof(set), &set) != 0 || CPU_COUNT(&set) >= 2;
  }();
  return several;
}
// Priority 101 (the first one not reserved): before the constructors of
// globals without a priority, in whichever file. A library loaded with
// dlopen() from a thread pinned to one CPU samples that thread's mask.
[[gnu::constructor(101)]] void sample_cpus_at_load() {
  started_on_several_cpus();
}

}  // namespace

int spin_budget() noexcept {
  static const int budget = [] {
    if (!started_on_several_cpus()) return 0;
    // Calibrate: `pause` takes ~10 cycles on some x86 cores and ~140 on
    // others, so count how many fit in kSpinFor.
    constexpr auto kSpinFor = std::chrono::microseconds(10);
    constexpr int kProbe = 2000;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kProbe; ++i) spin_pause();
    const auto took = std::chrono::steady_clock::now() - start;
    const double per_pause =
        std::chrono::duration<double, std::nano>(took).count() / kProbe;
    const double n =
        std::chrono::duration<double, std::nano>(kSpinFor).count() /
        (per_pause > 0.5 ? per_pause : 0.5);
    return static_cast<int>(n < 100 ? 100 : (n > 200000 ? 200000 : n));
  }();
  return budget;
}

}  // namespace dchan::detail
