// How a blocked thread waits before it parks (lib/src/spin.h): the spin
// budget, and parking to move off a CPU shared with the completer.
// spin.h is private to lib (its directory is not on the include path: it
// holds a semaphore.h that would shadow the system one).
#include "../src/spin.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "dchan/detail/futex.h"
#include "gtest/gtest.h"

namespace dchan::detail {
namespace {

cpu_set_t allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  return set;
}

// Pins the calling thread to the first CPU it may use; returns that CPU.
int pin_to_first_allowed_cpu() {
  const cpu_set_t allowed = allowed_cpus();
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(0, sizeof(one), &one) != 0) return -1;
    return cpu;
  }
  return -1;
}

// A global whose constructor pins the main thread to one CPU, as a
// program's own globals may; only in the death test's child below (the
// variable is set for it), so the other tests run unpinned. Its priority
// (102) runs it before every global without one, in whichever file: the
// earliest a program's global can run, short of the reserved priorities.
constexpr char kPinInGlobalEnv[] = "DCHAN_SPIN_TEST_PIN_IN_A_GLOBAL";
struct PinInAGlobal {
  PinInAGlobal()
      : pinned(std::getenv(kPinInGlobalEnv) != nullptr &&
               pin_to_first_allowed_cpu() >= 0) {}
  bool pinned;
};
[[gnu::init_priority(102)]] const PinInAGlobal g_pin_in_a_global;

TEST(SpinDeathTest, AGlobalThatPinsTheMainThreadLeavesTheBudget) {
  // (The child runs this body too, pinned by then.)
  const cpu_set_t allowed = allowed_cpus();
  if (CPU_COUNT(&allowed) < 2 && !g_pin_in_a_global.pinned) {
    GTEST_SKIP() << "needs two CPUs";
  }
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  ASSERT_EQ(setenv(kPinInGlobalEnv, "1", 1), 0);
  EXPECT_EXIT(std::exit(g_pin_in_a_global.pinned && spin_budget() > 0 ? 0 : 1),
              testing::ExitedWithCode(0), "");
  unsetenv(kPinInGlobalEnv);
}

// Threads pinned one per CPU (a common layout for latency-sensitive
// workers) hand values to partners on other CPUs: their waits must spin
// before parking, even when a pinned thread is the first to wait. Run in a
// fresh process, where nothing has asked for the budget yet.
TEST(SpinDeathTest, AThreadPinnedToOneCpuStillSpinsForPartnersOnOthers) {
  const cpu_set_t allowed = allowed_cpus();
  if (CPU_COUNT(&allowed) < 2) GTEST_SKIP() << "needs two CPUs";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        if (pin_to_first_allowed_cpu() < 0) std::exit(2);
        std::exit(spin_budget() > 0 ? 0 : 1);
      },
      testing::ExitedWithCode(0), "");
}

// Runs `body(cpu)` on a fresh thread (fresh adaptive state) pinned to one
// CPU, so that current_cpu() is `cpu` throughout.
template <class Body>
void on_fresh_pinned_thread(Body body) {
  std::thread([&] {
    const int cpu = pin_to_first_allowed_cpu();
    ASSERT_GE(cpu, 0);
    ASSERT_EQ(current_cpu(), cpu);
    body(cpu);
  }).join();
}

// Feeds `n` waits completed from `cpu` while yielding (not parked).
void yielded_waits_completed_from(int cpu, int n) {
  for (int i = 0; i < n; ++i) learn_after_wait(cpu, {});
}

// How many yielded waits completed from the thread's own CPU it takes until
// the next wait parks at once (gives up at `limit`).
int waits_until_park_to_move(int cpu, int limit) {
  for (int n = 0; n < limit; ++n) {
    if (thread_should_park_to_move()) return n;
    learn_after_wait(cpu, {});
  }
  return -1;
}

// How often a wait that never completes polls before it must park.
int polls_before_parking() {
  int polls = 0;
  EXPECT_EQ(spin_then_yield([&polls] {
              ++polls;
              return false;
            }),
            SpinOutcome::kMustPark);
  return polls;
}

// A wait that should park to move: it skips its yields and parks (returns
// kMustPark), and is then completed from `completer_cpu`.
void park_to_move_completed_from(int completer_cpu) {
  ASSERT_TRUE(thread_should_park_to_move());
  ASSERT_EQ(spin_then_yield([] { return false; }), SpinOutcome::kMustPark);
  learn_after_wait(completer_cpu, std::chrono::steady_clock::now());
}

TEST(Spin, WaitsCompletedFromTheOwnCpuMakeTheNextWaitParkToMove) {
  if (spin_budget() == 0) GTEST_SKIP() << "the process runs on one CPU";
  on_fresh_pinned_thread([](int cpu) {
    EXPECT_EQ(waits_until_park_to_move(cpu, 100), 4);
    // A wait completed from another CPU: the threads are apart again.
    learn_after_wait(cpu + 1, {});
    EXPECT_FALSE(thread_should_park_to_move());
    // So is a spin that succeeds: the count starts over.
    yielded_waits_completed_from(cpu, 3);
    EXPECT_EQ(spin_then_yield([] { return true; }), SpinOutcome::kSpun);
    EXPECT_EQ(waits_until_park_to_move(cpu, 100), 4);
  });
}

TEST(Spin, AParkThatDidNotMoveTheThreadDoublesTheWaitsBeforeTheNext) {
  if (spin_budget() == 0) GTEST_SKIP() << "the process runs on one CPU";
  on_fresh_pinned_thread([](int cpu) {
    int expected = 4;
    for (int i = 0; i < 12; ++i) {
      ASSERT_EQ(waits_until_park_to_move(cpu, 5000), expected) << i;
      park_to_move_completed_from(cpu);  // still on the completer's CPU
      EXPECT_FALSE(thread_should_park_to_move());
      expected = std::min(2 * expected, 1024);
    }
    // Yielded waits completed elsewhere restart the count, not the back-off.
    learn_after_wait(cpu + 1, {});
    EXPECT_EQ(waits_until_park_to_move(cpu, 5000), 1024);
    // An ordinary park (after the yields) is no attempt to move.
    learn_after_wait(cpu, std::chrono::steady_clock::now());
    EXPECT_TRUE(thread_should_park_to_move());
    // A park that moved the thread (completed from another CPU) resets it.
    park_to_move_completed_from(cpu + 1);
    EXPECT_EQ(waits_until_park_to_move(cpu, 5000), 4);
  });
}

TEST(Spin, AWaitThatMustParkToMoveSkipsItsYields) {
  if (spin_budget() == 0) GTEST_SKIP() << "the process runs on one CPU";
  on_fresh_pinned_thread([](int cpu) {
    const int limit = thread_spin_limit();
    EXPECT_EQ(polls_before_parking(), limit + kYieldsBeforePark + 1);
    yielded_waits_completed_from(cpu, 4);
    ASSERT_TRUE(thread_should_park_to_move());
    const int shorter = thread_spin_limit();
    EXPECT_EQ(polls_before_parking(), shorter + 1);
  });
}

// Threads pinned to one CPU together: once parking did not move them,
// spinning only delays the partner, so the limit may fall to zero; a wait
// completed from another CPU brings the usual floor back.
TEST(Spin, ThreadsStuckOnOneCpuStopSpinning) {
  if (spin_budget() == 0) GTEST_SKIP() << "the process runs on one CPU";
  on_fresh_pinned_thread([](int cpu) {
    yielded_waits_completed_from(cpu, 64);
    const int floor = thread_spin_limit();
    EXPECT_GT(floor, 0);  // one CPU shared, but maybe not for long
    park_to_move_completed_from(cpu);
    yielded_waits_completed_from(cpu, 6);        // halving 32 (or less) to 0
    ASSERT_FALSE(thread_should_park_to_move());  // 6 of the 8 waits now due
    EXPECT_EQ(thread_spin_limit(), 0);
    EXPECT_EQ(polls_before_parking(), kYieldsBeforePark + 1);  // no spin
    learn_after_wait(cpu + 1, {});
    EXPECT_GE(thread_spin_limit(), floor);
  });
}

// A process confined to one CPU from its start (`taskset -c 0`) does not
// spin: its partners could only run once it stops. A death test's child
// starts with the mask of the thread that forks it.
TEST(SpinDeathTest, AProcessStartedOnOneCpuDoesNotSpin) {
  const cpu_set_t allowed = allowed_cpus();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  ASSERT_GE(pin_to_first_allowed_cpu(), 0);
  EXPECT_EXIT(std::exit(spin_budget() == 0 ? 0 : 1), testing::ExitedWithCode(0),
              "");
  ASSERT_EQ(sched_setaffinity(0, sizeof(allowed), &allowed), 0);
}

}  // namespace
}  // namespace dchan::detail
