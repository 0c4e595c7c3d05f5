// The waiter mechanism itself: the channel lock, and the callback form of a
// waiter as event-driven callers (the broker) use it through
// Chan::recv_async / send_async.
#include "dchan/detail/waiter.h"

#include <atomic>
#include <cstdint>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "dchan/chan.h"
#include "gtest/gtest.h"

namespace dchan {
namespace {

using namespace std::chrono_literals;

int thread_count() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

TEST(Lock, ExcludesConcurrentHolders) {
  detail::Lock lock;
  long counter = 0;  // plain: TSan flags any overlap
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50000; ++i) {
        lock.lock();
        ++counter;
        lock.unlock();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, 200000);
}

// ChanCore lays a channel out in cache lines: its state must start at a
// line boundary (CacheLineAllocator), whatever the element type and
// capacity, and go back to operator delete from where it came (ASan checks
// the pairing).
TEST(ChanCore, AChannelsStateStartsAtACacheLine) {
  const auto line_offset = [](const void* p) {
    return reinterpret_cast<std::uintptr_t>(p) % detail::kCacheLine;
  };
  std::vector<Chan<int>> ints;
  std::vector<Chan<std::string>> strings;
  for (std::size_t cap : {0, 1, 7, 64, 1000}) {
    for (int i = 0; i < 16; ++i) {
      ints.push_back(make_chan<int>(cap));
      strings.push_back(make_chan<std::string>(cap));
      EXPECT_EQ(line_offset(detail::state_of(ints.back())), 0u) << cap;
      EXPECT_EQ(line_offset(detail::state_of(strings.back())), 0u) << cap;
    }
  }
  // What a hand-off reads and writes shares the lock's line (see ChanCore).
  const auto* s = detail::state_of(ints.front());
  const auto* line = reinterpret_cast<const char*>(&s->lock_);
  for (const void* field : {static_cast<const void*>(&s->recvq_),
                            static_cast<const void*>(&s->sendq_),
                            static_cast<const void*>(&s->lone_ + 1),
                            static_cast<const void*>(&s->lone_gen_ + 1)}) {
    EXPECT_LE(static_cast<const char*>(field) - line,
              static_cast<std::ptrdiff_t>(detail::kCacheLine));
  }
}

TEST(Waiter, FiresExactlyOnceUnderRacingClaims) {
  for (int round = 0; round < 200; ++round) {
    detail::Waiter w;
    std::atomic<int> winners{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        if (w.try_claim()) {
          ++winners;
          w.complete(static_cast<uint32_t>(t), true);
        }
      });
    }
    w.wait();
    for (auto& t : threads) t.join();
    EXPECT_EQ(winners.load(), 1);
    EXPECT_TRUE(w.done());
    EXPECT_LT(w.fired_case(), 4u);
  }
}

TEST(Waiter, WaitUntilTimesOutWhenNobodyClaims) {
  detail::Waiter w;
  EXPECT_FALSE(w.wait_until(std::chrono::steady_clock::now() + 10ms));
  EXPECT_TRUE(w.try_claim());  // the owner withdraws it
}

TEST(AsyncRecv, CompletesInlineWhenAValueIsReady) {
  auto ch = make_chan<int>(1);
  ch.send(5);
  std::optional<int> got;
  PendingOp op = ch.recv_async([&](std::optional<int> v) { got = v; });
  EXPECT_FALSE(op.pending());
  EXPECT_EQ(got, 5);
}

TEST(AsyncRecv, FiresOnTheSendersThreadWithNoThreadWaiting) {
  auto ch = make_chan<int>();
  std::thread::id fired_on;
  std::optional<int> got;
  PendingOp op = ch.recv_async([&](std::optional<int> v) {
    got = v;
    fired_on = std::this_thread::get_id();
  });
  EXPECT_TRUE(op.pending());
  std::thread::id sender_id;
  std::thread sender([&] {
    sender_id = std::this_thread::get_id();
    ch.send(8);  // unbuffered: returns once the async receiver has it
  });
  sender.join();
  EXPECT_FALSE(op.pending());
  EXPECT_EQ(got, 8);
  EXPECT_EQ(fired_on, sender_id);
}

TEST(AsyncRecv, TenThousandPendingReceiversCostNoThreads) {
  constexpr int kWaiters = 10000;
  auto ch = make_chan<int>();
  const int threads_before = thread_count();
  std::vector<std::optional<int>> got(kWaiters);
  std::atomic<int> fired{0};
  std::vector<PendingOp> ops;
  for (int i = 0; i < kWaiters; ++i) {
    ops.push_back(ch.recv_async([&, i](std::optional<int> v) {
      got[i] = v;
      ++fired;
    }));
  }
  EXPECT_EQ(thread_count(), threads_before);
  EXPECT_EQ(fired.load(), 0);
  for (int i = 0; i < kWaiters; ++i) {
    ASSERT_EQ(ch.try_send(i), ChanStatus::kOk) << i;
  }
  EXPECT_EQ(fired.load(), kWaiters);
  // FIFO: the i-th registered receiver got the i-th value.
  for (int i = 0; i < kWaiters; ++i) ASSERT_EQ(got[i], i);
}

TEST(AsyncRecv, CancelWithdrawsItAndConsumesNothing) {
  auto ch = make_chan<int>();
  bool ran = false;
  PendingOp op = ch.recv_async([&](std::optional<int>) { ran = true; });
  EXPECT_TRUE(op.cancel());
  EXPECT_FALSE(op.pending());
  EXPECT_FALSE(op.cancel());
  EXPECT_EQ(ch.try_send(1), ChanStatus::kWouldBlock);
  ch.close();
  EXPECT_FALSE(ran);
}

TEST(AsyncRecv, CancelAfterItFiredReturnsFalse) {
  auto ch = make_chan<int>(1);
  std::optional<int> got;
  PendingOp op = ch.recv_async([&](std::optional<int> v) { got = v; });
  ch.send(3);
  EXPECT_FALSE(op.cancel());
  EXPECT_EQ(got, 3);
}

TEST(AsyncRecv, CancelRacingASendLosesNothing) {
  constexpr int kRounds = 2000;
  int delivered = 0, withdrawn = 0;
  for (int r = 0; r < kRounds; ++r) {
    auto ch = make_chan<int>(1);
    std::atomic<int> got{-1};
    PendingOp op = ch.recv_async([&](std::optional<int> v) { got = *v; });
    std::thread sender([&] { ch.send(r); });
    const bool cancelled = op.cancel();
    sender.join();
    if (cancelled) {
      // The value went to the buffer instead.
      ++withdrawn;
      EXPECT_EQ(ch.try_recv().value, r);
      EXPECT_EQ(got.load(), -1);
    } else {
      ++delivered;
      EXPECT_EQ(got.load(), r);
      EXPECT_EQ(ch.len(), 0u);
    }
  }
  EXPECT_EQ(delivered + withdrawn, kRounds);
}

TEST(AsyncRecv, CloseCompletesPendingReceiversWithNullopt) {
  auto ch = make_chan<int>();
  int closed_seen = 0;
  std::vector<PendingOp> ops;
  for (int i = 0; i < 3; ++i) {
    ops.push_back(ch.recv_async([&](std::optional<int> v) {
      if (!v) ++closed_seen;
    }));
  }
  ch.close();
  EXPECT_EQ(closed_seen, 3);
}

TEST(AsyncRecv, OutlivesEveryOtherHandleToItsChannel) {
  std::optional<int> got;
  PendingOp op;
  Chan<int> sender_side;
  {
    auto ch = make_chan<int>();
    op = ch.recv_async([&](std::optional<int> v) { got = v; });
    sender_side = ch;
  }
  sender_side.send(6);
  EXPECT_EQ(got, 6);

  // A pending op whose channel has no other handle can still be cancelled.
  PendingOp orphan = make_chan<int>().recv_async([](std::optional<int>) {});
  EXPECT_TRUE(orphan.cancel());
}

TEST(AsyncSend, UnbufferedCompletesWhenAReceiverTakesIt) {
  auto ch = make_chan<std::unique_ptr<int>>();
  int result = -1;
  PendingOp op =
      ch.send_async(std::make_unique<int>(2), [&](bool ok) { result = ok; });
  EXPECT_TRUE(op.pending());
  EXPECT_EQ(result, -1);
  auto v = ch.recv();
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(**v, 2);
  EXPECT_EQ(result, 1);
}

TEST(AsyncSend, BufferedCompletesInlineAndClosedReportsFalse) {
  auto ch = make_chan<int>(1);
  int result = -1;
  ch.send_async(1, [&](bool ok) { result = ok; });
  EXPECT_EQ(result, 1);
  PendingOp blocked = ch.send_async(2, [&](bool ok) { result = ok; });
  EXPECT_TRUE(blocked.pending());
  ch.close();
  EXPECT_EQ(result, 0);
  ch.send_async(3, [&](bool ok) { result = ok ? 7 : 8; });
  EXPECT_EQ(result, 8);
  EXPECT_EQ(ch.recv(), 1);
  EXPECT_EQ(ch.recv(), std::nullopt);
}

TEST(AsyncRecv, TakesFromABlockedThreadSenderInline) {
  auto ch = make_chan<int>();
  std::thread sender([&] { ch.send(12); });
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    if (detail::stats_of(ch).blocked_senders != 0) break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline);
    std::this_thread::sleep_for(1ms);
  }
  std::optional<int> got;
  PendingOp op = ch.recv_async([&](std::optional<int> v) { got = v; });
  EXPECT_FALSE(op.pending());
  EXPECT_EQ(got, 12);
  sender.join();
}

TEST(ReadyAsync, FiresAtOnceWhenReadyAndConsumesNothing) {
  auto ch = make_chan<int>(1);
  ch.send(1);
  bool ready = false;
  PendingOp op = ch.ready_async(false, [&] { ready = true; });
  EXPECT_TRUE(ready);
  EXPECT_EQ(ch.len(), 1u);  // nothing taken
  bool send_ready = false;
  ch.ready_async(true, [&] { send_ready = true; });
  EXPECT_FALSE(send_ready);  // full
  EXPECT_EQ(ch.recv(), 1);
  EXPECT_TRUE(send_ready);  // room now
}

// A buffered channel's sends and receives skip its lock when they can; a
// watcher makes them take it, so that they wake it.
TEST(ReadyAsync, BufferedReadinessFiresOnSendsAndReceivesFromOtherThreads) {
  auto ch = make_chan<int>(2);
  std::atomic<int> recv_ready{0};
  PendingOp op = ch.ready_async(false, [&] { ++recv_ready; });
  EXPECT_EQ(recv_ready.load(), 0);
  std::thread([&] { ch.send(1); }).join();
  EXPECT_EQ(recv_ready.load(), 1);
  std::thread([&] { ch.send(2); }).join();  // full now
  std::atomic<int> send_ready{0};
  PendingOp w = ch.ready_async(true, [&] { ++send_ready; });
  EXPECT_EQ(send_ready.load(), 0);
  std::thread([&] { EXPECT_EQ(ch.recv(), 1); }).join();
  EXPECT_EQ(send_ready.load(), 1);
  EXPECT_EQ(ch.recv(), 2);
}

TEST(ReadyAsync, RecvReadinessFiresWhenASenderQueuesOrOnClose) {
  auto ch = make_chan<int>();
  std::atomic<int> fired{0};
  PendingOp op = ch.ready_async(false, [&] { ++fired; });
  EXPECT_EQ(fired.load(), 0);
  std::thread sender([&] { ch.send(5); });
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (fired.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(fired.load(), 1);
  EXPECT_EQ(ch.recv(), 5);  // the sender's value is still there
  sender.join();

  auto c2 = make_chan<int>();
  bool closed_ready = false;
  c2.ready_async(false, [&] { closed_ready = true; });
  c2.close();
  EXPECT_TRUE(closed_ready);
}

TEST(ReadyAsync, SendReadinessFiresWhenAReceiverQueues) {
  auto ch = make_chan<int>();
  bool ready = false;
  PendingOp op = ch.ready_async(true, [&] { ready = true; });
  EXPECT_FALSE(ready);
  PendingOp r = ch.recv_async([](std::optional<int>) {});
  EXPECT_TRUE(ready);
  EXPECT_TRUE(r.cancel());
}

TEST(ReadyAsync, CancelledWatchNeverFiresAndStaleSelectNodesDoNotCount) {
  auto ch = make_chan<int>();
  bool ready = false;
  PendingOp op = ch.ready_async(false, [&] { ready = true; });
  EXPECT_TRUE(op.cancel());
  ch.close();
  EXPECT_FALSE(ready);

  // A cancelled sender leaves no readiness behind.
  auto c2 = make_chan<int>();
  PendingOp s = c2.send_async(1, [](bool) {});
  EXPECT_TRUE(s.cancel());
  bool r2 = false;
  PendingOp w = c2.ready_async(false, [&] { r2 = true; });
  EXPECT_FALSE(r2);
  EXPECT_TRUE(w.cancel());
}

}  // namespace
}  // namespace dchan
