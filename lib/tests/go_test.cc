#include "dchan/go.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "dchan/error.h"
#include "dchan/mutex.h"
#include "dchan/wait_group.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace dchan {
namespace {

using namespace std::chrono_literals;

using test_util::eventually;

int twice(int x) { return 2 * x; }

TEST(Go, RunsAFunctionWithItsArgumentsConcurrently) {
  std::promise<std::string> result;
  std::future<std::string> got = result.get_future();
  go([](std::promise<std::string> p, std::string s,
        int n) { p.set_value(s + std::to_string(n)); },
     std::move(result), std::string("n="), 42);  // move-only argument
  ASSERT_EQ(got.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(got.get(), "n=42");
}

TEST(Go, IgnoresTheResultAndAcceptsPlainFunctions) {
  WaitGroup wg;
  wg.add(2);
  go(twice, 21);
  go([wg]() mutable {
    wg.done();
    return 7;
  });
  go([](WaitGroup w) { w.done(); }, wg);
  EXPECT_TRUE(wg.wait_for(5s));
}

TEST(Go, CopiesArgumentsUnlessGivenAReference) {
  int by_value = 1;
  int by_ref = 1;
  WaitGroup start, finish;
  start.add(1);
  finish.add(1);
  std::atomic<int> seen_value{0}, seen_ref{0};
  go(
      [&](int v, std::reference_wrapper<int> r) {
        start.wait();
        seen_value = v;
        seen_ref = r.get();
        finish.done();
      },
      by_value, std::ref(by_ref));
  by_value = 2;
  by_ref = 2;
  start.done();  // publishes by_ref = 2 to the goroutine
  ASSERT_TRUE(finish.wait_for(5s));
  EXPECT_EQ(seen_value.load(), 1);
  EXPECT_EQ(seen_ref.load(), 2);
}

TEST(Go, ReusesIdleThreads) {
  auto run_one = [] {
    WaitGroup wg;
    wg.add(1);
    go([wg]() mutable { wg.done(); });
    ASSERT_TRUE(wg.wait_for(5s));
    // The thread parks itself right after the goroutine returns.
    ASSERT_TRUE(eventually([] { return detail::go_pool_stats().idle >= 1; }));
  };
  run_one();
  const std::size_t threads = detail::go_pool_stats().threads;
  for (int i = 0; i < 100; ++i) run_one();
  EXPECT_EQ(detail::go_pool_stats().threads, threads);
}

// Starts `n` goroutines that each count themselves done in `started` and
// then block until `release` is done.
void go_blocked(int n, WaitGroup release, WaitGroup started) {
  started.add(n);
  for (int i = 0; i < n; ++i) {
    go([release, started]() mutable {
      started.done();
      release.wait();
    });
  }
}

TEST(Go, BlockedGoroutinesDoNotStarveNewOnes) {
  constexpr int kBlocked = 8;
  WaitGroup release, blocked;
  release.add(1);
  go_blocked(kBlocked, release, blocked);
  ASSERT_TRUE(blocked.wait_for(5s));
  WaitGroup ran;
  ran.add(1);
  go([ran]() mutable { ran.done(); });
  EXPECT_TRUE(ran.wait_for(5s)) << "a new goroutine waited behind blocked ones";
  EXPECT_GE(detail::go_pool_stats().threads, std::size_t{kBlocked + 1});
  release.done();
}

// A burst of goroutines that all block until every one has started: each
// needs a thread of its own, none may wait behind the blocked ones (a guard
// for any pool that defers or passes on wake-ups).
TEST(Go, EveryGoroutineOfABurstThatAllBlockStarts) {
  constexpr int kBurst = 64;
  WaitGroup release, started;
  release.add(1);
  go_blocked(kBurst, release, started);
  EXPECT_TRUE(started.wait_for(10s))
      << started.count() << " goroutines never started";
  release.done();
}

void fan_out(WaitGroup wg, std::atomic<int>& count, int depth) {
  count.fetch_add(1);
  if (depth > 0) {
    wg.add(2);
    go(fan_out, wg, std::ref(count), depth - 1);
    go(fan_out, wg, std::ref(count), depth - 1);
  }
  wg.done();
}

TEST(Go, GoroutinesCanStartGoroutines) {
  WaitGroup wg;
  std::atomic<int> count{0};
  wg.add(1);
  go(fan_out, wg, std::ref(count), 8);
  ASSERT_TRUE(wg.wait_for(10s));
  EXPECT_EQ(count.load(), (1 << 9) - 1);
}

TEST(Go, IdleThreadsRetire) {
  detail::set_go_idle_timeout(50ms);
  constexpr int kBlocked = 4;
  WaitGroup release, started, finished;
  release.add(1);
  started.add(kBlocked);
  finished.add(kBlocked);
  for (int i = 0; i < kBlocked; ++i) {
    go([=]() mutable {
      started.done();
      release.wait();
      finished.done();
    });
  }
  ASSERT_TRUE(started.wait_for(5s));
  const std::size_t busy = detail::go_pool_stats().threads;
  ASSERT_GE(busy, std::size_t{kBlocked});
  release.done();
  ASSERT_TRUE(finished.wait_for(5s));
  // The four threads park with the short timeout and then exit.
  EXPECT_TRUE(eventually([&] {
    return detail::go_pool_stats().threads <= busy - kBlocked;
  })) << "threads: "
      << detail::go_pool_stats().threads << ", were " << busy;
  detail::set_go_idle_timeout(kGoIdleTimeout);
  // A retired pool still launches.
  WaitGroup again;
  again.add(1);
  go([again]() mutable { again.done(); });
  EXPECT_TRUE(again.wait_for(5s));
}

TEST(GoDeathTest, ExceptionEscapingAGoroutineEndsTheProcessLikeAPanic) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        go([] { throw std::runtime_error("boom in goroutine"); });
        std::this_thread::sleep_for(10s);
        std::exit(0);
      },
      testing::ExitedWithCode(2), "panic: boom in goroutine");
  EXPECT_EXIT(
      {
        go([] { detail::throw_panic("sync: negative WaitGroup counter"); });
        std::this_thread::sleep_for(10s);
        std::exit(0);
      },
      testing::ExitedWithCode(2), "panic: sync: negative WaitGroup counter");
}

Mutex g_held;
WaitGroup g_never_done;

TEST(GoDeathTest, ProcessMayExitWhileGoroutinesAreBlocked) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        g_held.lock();
        g_never_done.add(1);
        WaitGroup parked;
        parked.add(4);
        for (int i = 0; i < 2; ++i) {
          go([parked]() mutable {
            parked.done();
            g_held.lock();  // blocks for ever
          });
          go([parked]() mutable {
            parked.done();
            g_never_done.wait();  // blocks for ever
          });
        }
        parked.wait();
        std::this_thread::sleep_for(20ms);  // let them park
        std::exit(0);  // runs static destructors (g_held, g_never_done)
      },
      testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace dchan
