#include "dchan/group.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dchan/error.h"
#include "dchan/wait_group.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace dchan {
namespace {

using namespace std::chrono_literals;

using test_util::eventually;

TEST(Group, WaitWithNoTasksReturns) {
  Group g;
  g.wait();
}

TEST(Group, WaitWaitsForEveryTaskAndPublishesItsWrites) {
  constexpr int kTasks = 200;
  Group g;
  std::vector<int> results(kTasks, 0);
  for (int i = 0; i < kTasks; ++i) {
    g.go([&results, i] {
      std::this_thread::sleep_for(std::chrono::microseconds(i % 5 * 100));
      results[i] = i + 1;
    });
  }
  g.wait();
  for (int i = 0; i < kTasks; ++i) ASSERT_EQ(results[i], i + 1);
}

TEST(Group, WaitRethrowsTheFirstExceptionAfterAllTasksFinish) {
  Group g(1);  // one at a time: the order of the tasks is the order of go()
  std::atomic<int> ran{0};
  g.go([&] {
    ran.fetch_add(1);
    throw std::runtime_error("first");
  });
  g.go([&] {
    ran.fetch_add(1);
    throw Error(absl::StatusCode::kInternal, "second");
  });
  for (int i = 0; i < 5; ++i) g.go([&] { ran.fetch_add(1); });
  try {
    g.wait();
    FAIL() << "wait() did not rethrow";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "first");
  }
  EXPECT_EQ(ran.load(), 7);  // the tasks after the failure still ran
  // Go's errgroup keeps reporting the first error.
  EXPECT_THROW(g.wait(), std::runtime_error);
}

TEST(Group, ExceptionsFromConcurrentTasksAreReportedOnce) {
  Group g;
  std::atomic<int> ran{0};
  for (int i = 0; i < 50; ++i) {
    g.go([&, i] {
      ran.fetch_add(1);
      if (i % 2 == 0) throw std::runtime_error("task " + std::to_string(i));
    });
  }
  EXPECT_THROW(g.wait(), std::runtime_error);
  EXPECT_EQ(ran.load(), 50);
}

TEST(Group, LimitBoundsConcurrency) {
  constexpr int kLimit = 3;
  Group g(kLimit);
  std::atomic<int> running{0}, peak{0};
  for (int i = 0; i < 40; ++i) {
    g.go([&] {
      const int now = running.fetch_add(1) + 1;
      int p = peak.load();
      while (now > p && !peak.compare_exchange_weak(p, now)) {
      }
      std::this_thread::sleep_for(1ms);
      running.fetch_sub(1);
    });
  }
  g.wait();
  EXPECT_LE(peak.load(), kLimit);
  EXPECT_GE(peak.load(), 1);
}

TEST(Group, GoBlocksWhileLimitTasksRun) {
  Group g(2);
  WaitGroup release;
  release.add(1);
  g.go([release]() mutable { release.wait(); });
  g.go([release]() mutable { release.wait(); });
  std::atomic<bool> third_started{false};
  std::thread starter([&] {
    g.go([] {});
    third_started = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(third_started.load()) << "go() did not wait for a free slot";
  release.done();
  EXPECT_TRUE(eventually([&] { return third_started.load(); }));
  starter.join();
  g.wait();
}

TEST(Group, TryGoFailsAtTheLimitWithoutBlocking) {
  Group g(1);
  WaitGroup release;
  release.add(1);
  ASSERT_TRUE(g.try_go([release]() mutable { release.wait(); }));
  std::atomic<bool> ran{false};
  EXPECT_FALSE(g.try_go([&] { ran = true; }));
  release.done();
  g.wait();
  EXPECT_FALSE(ran.load());
  EXPECT_TRUE(g.try_go([&] { ran = true; }));
  g.wait();
  EXPECT_TRUE(ran.load());
}

TEST(Group, LimitBelowOneIsInvalid) {
  try {
    Group g(0);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_THROW(Group(-1), Error);
}

TEST(Group, TasksCanStartTasksInTheirOwnGroup) {
  Group g;
  std::atomic<int> count{0};
  for (int i = 0; i < 4; ++i) {
    g.go([g, &count]() mutable {
      count.fetch_add(1);
      for (int j = 0; j < 4; ++j) {
        g.go([g, &count]() mutable {
          count.fetch_add(1);
          g.go([&count] { count.fetch_add(1); });
        });
      }
    });
  }
  g.wait();
  EXPECT_EQ(count.load(), 4 + 16 + 16);
}

TEST(Group, CopiesShareTheGroupAndItIsReusable) {
  Group a;
  Group b = a;
  EXPECT_EQ(a, b);
  EXPECT_NE(a, Group());
  std::atomic<int> n{0};
  b.go([&] { n.fetch_add(1); });
  a.wait();
  EXPECT_EQ(n.load(), 1);
  a.go([&] { n.fetch_add(1); });
  b.wait();
  EXPECT_EQ(n.load(), 2);
}

}  // namespace
}  // namespace dchan
