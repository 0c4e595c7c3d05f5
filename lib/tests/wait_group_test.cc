#include "dchan/wait_group.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "dchan/error.h"
#include "dchan/go.h"
#include "fake_remote.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace dchan {
namespace {

using namespace std::chrono_literals;

using test_util::eventually;

TEST(WaitGroup, WaitAtZeroReturnsAtOnce) {
  WaitGroup wg;
  wg.wait();
  EXPECT_TRUE(wg.wait_for(0ms));
  EXPECT_EQ(wg.count(), 0);
}

TEST(WaitGroup, WaitBlocksUntilTheCounterReachesZero) {
  WaitGroup wg;
  wg.add(2);
  std::atomic<bool> returned{false};
  std::thread waiter([&] {
    wg.wait();
    returned = true;
  });
  wg.done();
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(returned.load());  // one still to go
  wg.done();
  EXPECT_TRUE(eventually([&] { return returned.load(); }));
  waiter.join();
}

TEST(WaitGroup, ThousandGoroutinesAndTheirWritesAreVisibleAfterWait) {
  constexpr int kGoroutines = 1000;
  WaitGroup wg;
  std::vector<int> results(kGoroutines, 0);  // plain: wait() must publish
  wg.add(kGoroutines);
  for (int i = 0; i < kGoroutines; ++i) {
    go([wg, &results, i]() mutable {
      results[i] = i + 1;
      wg.done();
    });
  }
  wg.wait();
  for (int i = 0; i < kGoroutines; ++i) ASSERT_EQ(results[i], i + 1);
  EXPECT_EQ(wg.count(), 0);
}

TEST(WaitGroup, NegativeCounterThrowsAndLeavesTheCounterUnchanged) {
  WaitGroup wg;
  wg.add(1);
  try {
    wg.add(-2);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "sync: negative WaitGroup counter");
    EXPECT_EQ(e.code(), absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(wg.count(), 1);
  wg.done();
  EXPECT_THROW(wg.done(), Error);
  EXPECT_EQ(wg.count(), 0);
  wg.wait();
}

TEST(WaitGroup, CounterOverflowThrowsAndLeavesTheCounterUnchanged) {
  WaitGroup wg;
  wg.add(INT_MAX);
  try {
    wg.add(1);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kOutOfRange);
  }
  EXPECT_EQ(wg.count(), INT_MAX);
  wg.add(-INT_MAX);
  wg.wait();
}

TEST(WaitGroup, AllWaitersWake) {
  constexpr int kWaiters = 8;
  WaitGroup wg;
  wg.add(1);
  std::atomic<int> woke{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([wg, &woke]() mutable {
      wg.wait();
      woke.fetch_add(1);
    });
  }
  std::this_thread::sleep_for(20ms);  // let them park
  EXPECT_EQ(woke.load(), 0);
  wg.done();
  EXPECT_TRUE(eventually([&] { return woke.load() == kWaiters; }));
  for (auto& t : waiters) t.join();
}

TEST(WaitGroup, IsReusableForManyRounds) {
  WaitGroup wg;
  std::atomic<int> total{0};
  for (int round = 1; round <= 100; ++round) {
    wg.add(round % 7 + 1);
    std::thread waiter([wg]() mutable { wg.wait(); });
    for (int i = 0; i < round % 7 + 1; ++i) {
      go([wg, &total]() mutable {
        total.fetch_add(1);
        wg.done();
      });
    }
    wg.wait();
    waiter.join();
    EXPECT_EQ(wg.count(), 0);
  }
  int expected = 0;
  for (int round = 1; round <= 100; ++round) expected += round % 7 + 1;
  EXPECT_EQ(total.load(), expected);
}

// Two threads hand a turn back and forth through fresh WaitGroups, with
// every wait going through the spin / yield / park steps and the spin limit
// adapting to where the rounds end. `same_cpu`: both threads are bound to
// one CPU, so every wait that does not spin it out must yield or park for
// the other thread to run. Each side checks it sees the other's write of
// the previous round.
void HandTurnsThroughWaitGroups(bool same_cpu) {
  constexpr int kRounds = 2000;
  std::vector<WaitGroup> a(kRounds), b(kRounds);
  for (int i = 0; i < kRounds; ++i) {
    a[i].add(1);
    b[i].add(1);
  }
  int last_a = -1, last_b = -1;  // written before done(), read after wait()
  // With same_cpu, the driver binds itself to the CPU it runs on and the
  // partner to the same one.
  std::atomic<int> cpu{-1};
  auto bind_to = [](int c) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(c, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  };
  std::thread partner([&] {
    if (same_cpu) {
      while (cpu.load() < 0) std::this_thread::yield();
      ASSERT_EQ(bind_to(cpu.load()), 0);
    }
    for (int i = 0; i < kRounds; ++i) {
      if (i % 3 == 0) {
        ASSERT_TRUE(a[i].wait_for(std::chrono::seconds(60)));
      } else {
        a[i].wait();
      }
      ASSERT_EQ(last_a, i);
      last_b = i;
      b[i].done();
    }
  });
  cpu_set_t before;  // the test thread's affinity, restored at the end
  ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof before, &before), 0);
  if (same_cpu) {
    const int c = sched_getcpu();
    ASSERT_EQ(bind_to(c), 0);
    cpu.store(c);
  }
  for (int i = 0; i < kRounds; ++i) {
    last_a = i;
    a[i].done();
    b[i].wait();
    EXPECT_EQ(last_b, i);
  }
  partner.join();
  EXPECT_EQ(pthread_setaffinity_np(pthread_self(), sizeof before, &before), 0);
}

TEST(WaitGroup, HandsTurnsBackAndForthBetweenTwoThreads) {
  HandTurnsThroughWaitGroups(/*same_cpu=*/false);
}

TEST(WaitGroup, HandsTurnsBackAndForthBetweenTwoThreadsOnOneCpu) {
  HandTurnsThroughWaitGroups(/*same_cpu=*/true);
}

TEST(WaitGroup, WaitForTimesOutWhileTheCounterIsPositive) {
  WaitGroup wg;
  wg.add(1);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(wg.wait_for(30ms));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 30ms);
  EXPECT_FALSE(wg.wait_until(std::chrono::system_clock::now() + 5ms));
  wg.done();
  EXPECT_TRUE(wg.wait_for(0ms));
  EXPECT_TRUE(wg.wait_until(std::chrono::system_clock::now() + 1s));
}

TEST(WaitGroup, WaitForSucceedsWhenTheCounterReachesZeroInTime) {
  WaitGroup wg;
  wg.add(1);
  std::future<bool> reached = std::async(
      std::launch::async, [wg]() mutable { return wg.wait_for(10s); });
  std::this_thread::sleep_for(20ms);
  wg.done();
  ASSERT_EQ(reached.wait_for(5s), std::future_status::ready);
  EXPECT_TRUE(reached.get());
}

TEST(WaitGroup, TimedOutWaiterDoesNotDisturbLaterWaiters) {
  WaitGroup wg;
  wg.add(1);
  EXPECT_FALSE(wg.wait_for(5ms));
  std::atomic<bool> returned{false};
  std::thread waiter([&] {
    wg.wait();
    returned = true;
  });
  std::this_thread::sleep_for(20ms);
  wg.done();
  EXPECT_TRUE(eventually([&] { return returned.load(); }));
  waiter.join();
}

// The common C++ shape: the waiter owns the only handle and destroys it as
// soon as wait() returns, while the done() that released it may not have
// returned yet.
TEST(WaitGroup, MayBeDestroyedAsSoonAsWaitReturns) {
  for (int round = 0; round < 300; ++round) {
    auto wg = std::make_unique<WaitGroup>();
    wg->add(1);
    std::thread t([p = wg.get()] { p->done(); });
    wg->wait();
    wg.reset();
    t.join();
  }
}

TEST(WaitGroup, CopiesShareTheCounter) {
  WaitGroup a;
  WaitGroup b = a;
  WaitGroup moved = std::move(b);  // moving copies
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, moved);
  EXPECT_NE(a, WaitGroup());
  a.add(2);
  EXPECT_EQ(b.count(), 2);
  b.done();
  moved.done();
  EXPECT_TRUE(a.wait_for(0ms));
}

TEST(WaitGroup, LocalWaitGroupIsNotRemote) {
  EXPECT_FALSE(WaitGroup().is_remote());
}

TEST(WaitGroup, RemoteHandleRoutesEveryOperationToItsBackend) {
  auto backend = std::make_shared<test_util::FakeWaitGroup>();
  WaitGroup wg = detail::make_remote_wait_group(backend);
  EXPECT_TRUE(wg.is_remote());
  EXPECT_EQ(wg, WaitGroup(wg));
  EXPECT_NE(wg, WaitGroup());
  wg.add(2);
  EXPECT_EQ(wg.count(), 2);
  EXPECT_FALSE(wg.wait_for(5ms));
  EXPECT_FALSE(wg.wait_until(std::chrono::system_clock::now() + 5ms));
  std::thread worker([wg]() mutable {
    wg.done();
    wg.done();
  });
  wg.wait();
  worker.join();
  EXPECT_EQ(wg.count(), 0);
  EXPECT_THROW(wg.done(), Error);
  wg.add(1);
  backend->fail();
  try {
    wg.wait();
    ADD_FAILURE() << "wait on a failed remote WaitGroup returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kAborted);
  }
}

}  // namespace
}  // namespace dchan
