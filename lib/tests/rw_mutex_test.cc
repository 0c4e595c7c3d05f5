#include "dchan/rw_mutex.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "dchan/error.h"
#include "fake_remote.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace dchan {
namespace {

using namespace std::chrono_literals;

using test_util::eventually;

TEST(RWMutex, DefaultConstructedIsUnlockedAndCopiesShareIt) {
  RWMutex a;
  RWMutex b = a;
  EXPECT_EQ(a, b);
  EXPECT_NE(a, RWMutex());
  ASSERT_TRUE(a.try_lock());
  EXPECT_FALSE(b.try_lock());
  EXPECT_FALSE(b.try_lock_shared());
  b.unlock();
  EXPECT_TRUE(b.try_lock_shared());
  a.unlock_shared();
}

TEST(RWMutex, ReadersHoldTheLockTogether) {
  constexpr int kReaders = 4;
  RWMutex mu;
  std::atomic<int> inside{0};
  std::atomic<bool> all_met{true};
  std::vector<std::thread> readers;
  for (int i = 0; i < kReaders; ++i) {
    readers.emplace_back([&] {
      std::shared_lock<RWMutex> hold(mu);
      inside.fetch_add(1);
      // Every reader must see all the others inside at once.
      if (!eventually([&] { return inside.load() == kReaders; })) {
        all_met = false;
      }
    });
  }
  for (auto& t : readers) t.join();
  EXPECT_TRUE(all_met.load());
}

TEST(RWMutex, WriterExcludesReadersAndWriters) {
  RWMutex mu;
  mu.lock();
  bool got_read = true, got_write = true;
  std::thread([&] {
    got_read = mu.try_lock_shared();
    got_write = mu.try_lock();
  }).join();
  EXPECT_FALSE(got_read);
  EXPECT_FALSE(got_write);
  mu.unlock();
}

TEST(RWMutex, ReaderBlocksAWriterUntilItLeaves) {
  RWMutex mu;
  mu.lock_shared();
  EXPECT_FALSE(mu.try_lock());
  std::atomic<bool> wrote{false};
  std::thread writer([&] {
    mu.lock();
    wrote = true;
    mu.unlock();
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(wrote.load());
  mu.unlock_shared();
  EXPECT_TRUE(eventually([&] { return wrote.load(); }));
  writer.join();
}

// Go's rule: a blocked writer stops new readers, so writers are not starved.
TEST(RWMutex, BlockedWriterGoesBeforeReadersThatArriveAfterIt) {
  RWMutex mu;
  std::mutex order_mu;
  std::vector<std::string> order;
  auto note = [&](const char* who) {
    std::lock_guard<std::mutex> hold(order_mu);
    order.push_back(who);
  };

  mu.lock_shared();  // reader 1 holds the lock
  std::thread writer([&] {
    mu.lock();
    note("writer");
    mu.unlock();
  });
  // Once the writer is waiting, new read locks are refused.
  ASSERT_TRUE(eventually([&] {
    if (mu.try_lock_shared()) {
      mu.unlock_shared();
      return false;
    }
    return true;
  }));
  std::thread reader2([&] {
    mu.lock_shared();
    note("reader2");
    mu.unlock_shared();
  });
  std::this_thread::sleep_for(20ms);  // reader2 is blocked, not inside
  {
    std::lock_guard<std::mutex> hold(order_mu);
    EXPECT_TRUE(order.empty());
  }
  mu.unlock_shared();  // reader 1 leaves: the writer first, then reader2
  writer.join();
  reader2.join();
  EXPECT_EQ(order, (std::vector<std::string>{"writer", "reader2"}));
}

TEST(RWMutex, WriterIsNotStarvedByOverlappingReaders) {
  RWMutex mu;
  std::atomic<bool> stop{false};
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) {
    readers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        std::shared_lock<RWMutex> hold(mu);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
  }
  std::this_thread::sleep_for(10ms);
  std::atomic<int> writes{0};
  std::thread writer([&] {
    for (int i = 0; i < 50; ++i) {
      std::lock_guard<RWMutex> hold(mu);
      writes.fetch_add(1);
    }
  });
  const bool done = eventually([&] { return writes.load() == 50; });
  stop = true;
  writer.join();
  for (auto& t : readers) t.join();
  EXPECT_TRUE(done) << "only " << writes.load() << " writes in 5 s";
}

TEST(RWMutex, ReadersSeeConsistentStateUnderConcurrentWriters) {
  RWMutex mu;
  int64_t a = 0, b = 0;  // invariant under the lock: a == b
  std::atomic<bool> stop{false};
  std::atomic<int64_t> bad{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20'000; ++i) {
        std::lock_guard<RWMutex> hold(mu);
        ++a;
        ++b;
      }
    });
  }
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        std::shared_lock<RWMutex> hold(mu);
        if (a != b) bad.fetch_add(1);
      }
    });
  }
  threads[0].join();
  threads[1].join();
  stop = true;
  threads[2].join();
  threads[3].join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(a, 40'000);
  EXPECT_EQ(b, 40'000);
}

TEST(RWMutex, UnlockOfUnlockedThrowsAndLeavesItUsable) {
  RWMutex mu;
  try {
    mu.unlock();
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "sync: Unlock of unlocked RWMutex");
    EXPECT_EQ(e.code(), absl::StatusCode::kFailedPrecondition);
  }
  mu.lock_shared();
  EXPECT_THROW(mu.unlock(), Error);  // read-locked, not write-locked
  mu.unlock_shared();
  EXPECT_TRUE(mu.try_lock());
  mu.unlock();
}

TEST(RWMutex, RUnlockOfUnlockedThrowsAndLeavesItUsable) {
  RWMutex mu;
  try {
    mu.unlock_shared();
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "sync: RUnlock of unlocked RWMutex");
    EXPECT_EQ(e.code(), absl::StatusCode::kFailedPrecondition);
  }
  mu.lock();
  EXPECT_THROW(mu.unlock_shared(), Error);  // write-locked: no reader
  mu.unlock();
  EXPECT_TRUE(mu.try_lock());
  mu.unlock();
  EXPECT_TRUE(mu.try_lock_shared());
  mu.unlock_shared();
}

TEST(RWMutex, WorksWithStandardLockTypes) {
  RWMutex mu;
  { std::lock_guard<RWMutex> hold(mu); }
  { std::unique_lock<RWMutex> hold(mu); }
  {
    std::shared_lock<RWMutex> r1(mu);
    std::shared_lock<RWMutex> r2(mu, std::try_to_lock);
    EXPECT_TRUE(r2.owns_lock());
    std::unique_lock<RWMutex> w(mu, std::try_to_lock);
    EXPECT_FALSE(w.owns_lock());
  }
  RWMutex other;
  std::scoped_lock both(mu, other);
}

TEST(RWMutex, TokenIncreasesWithEveryWriteAcquisitionOnly) {
  RWMutex mu;
  mu.lock();
  const uint64_t t1 = mu.token();
  mu.unlock();
  mu.lock_shared();
  mu.unlock_shared();
  ASSERT_TRUE(mu.try_lock());
  const uint64_t t2 = mu.token();
  mu.unlock();
  EXPECT_LT(t1, t2);
  mu.lock_shared();
  EXPECT_EQ(mu.token(), t2);  // readers do not fence
  mu.unlock_shared();

  std::vector<uint64_t> seen;
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2'000; ++i) {
        std::lock_guard<RWMutex> hold(mu);
        seen.push_back(mu.token());
      }
    });
  }
  for (auto& t : threads) t.join();
  for (std::size_t i = 1; i < seen.size(); ++i) {
    ASSERT_LT(seen[i - 1], seen[i]) << "at " << i;
  }
}

TEST(RWMutex, LocalRWMutexIsNotRemoteAndItsHoldTokenNeverStops) {
  RWMutex mu;
  EXPECT_FALSE(mu.is_remote());
  EXPECT_FALSE(mu.hold_token().stop_possible());
  std::shared_lock<RWMutex> read(mu);
  EXPECT_FALSE(mu.hold_token().stop_possible());
}

TEST(RWMutex, RemoteHandleRoutesEveryOperationToItsBackend) {
  auto backend = std::make_shared<test_util::FakeLock>();
  RWMutex mu = detail::make_remote_rw_mutex(backend);
  EXPECT_TRUE(mu.is_remote());
  EXPECT_EQ(mu, RWMutex(mu));
  EXPECT_NE(mu, RWMutex());
  {
    std::shared_lock<RWMutex> r1(mu);
    std::shared_lock<RWMutex> r2(mu, std::try_to_lock);
    EXPECT_TRUE(r2.owns_lock());
    EXPECT_FALSE(mu.try_lock());
    EXPECT_TRUE(mu.hold_token().stop_possible());
    EXPECT_EQ(mu.token(), 0u);  // read locks do not count
  }
  {
    std::lock_guard<RWMutex> w(mu);
    EXPECT_EQ(mu.token(), 1u);
    EXPECT_FALSE(mu.try_lock_shared());
  }
  try {
    mu.unlock_shared();
    ADD_FAILURE() << "unlock_shared of an unlocked remote RWMutex";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kFailedPrecondition);
  }
  mu.lock_shared();
  backend->lose();
  EXPECT_TRUE(mu.hold_token().stop_requested());
  EXPECT_THROW(mu.unlock_shared(), Error);
}

}  // namespace
}  // namespace dchan
