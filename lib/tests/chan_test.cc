#include "dchan/chan.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dchan/select.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace dchan {
namespace {

using namespace std::chrono_literals;

// Generous bound for "this eventually happens" on a loaded 2-vCPU machine.
constexpr auto kLiveness = 10s;

using test_util::eventually;

void expect_panic(const std::function<void()>& fn, const std::string& msg) {
  try {
    fn();
    ADD_FAILURE() << "expected dchan::Error \"" << msg << "\"";
  } catch (const Error& e) {
    EXPECT_EQ(e.what(), msg);
    EXPECT_EQ(e.code(), absl::StatusCode::kFailedPrecondition);
  }
}

TEST(Chan, UnbufferedSendReturnsOnlyAfterAReceiverTookTheValue) {
  auto ch = make_chan<int>();
  std::atomic<bool> sent{false};
  std::thread sender([&] {
    ch.send(7);
    sent = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(sent.load()) << "unbuffered send returned with no receiver";
  EXPECT_EQ(ch.recv(), 7);
  sender.join();
  EXPECT_TRUE(sent.load());
}

// A sender polling a full buffer watches a cell further on (see
// poll_for_room): one free cell must still let it through.
TEST(Chan, BufferedSendBlocksOnlyWhileTheBufferIsFull) {
  for (int cap : {2, 8, 64}) {
    auto ch = make_chan<int>(cap);
    for (int i = 0; i < cap; ++i) ch.send(i);
    EXPECT_EQ(ch.len(), static_cast<std::size_t>(cap));
    std::atomic<bool> sent{false};
    std::thread sender([&] {
      ch.send(cap);
      sent = true;
    });
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(sent.load()) << "send into a full buffer did not block";
    EXPECT_EQ(ch.recv(), 0);
    sender.join();
    EXPECT_TRUE(sent.load());
    for (int i = 1; i <= cap; ++i) EXPECT_EQ(ch.recv(), i);
  }
}

TEST(Chan, ReceivesInFifoOrder) {
  auto ch = make_chan<int>(100);
  for (int i = 0; i < 100; ++i) ch.send(i);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(ch.recv(), i);
}

TEST(Chan, BlockedSendersAreServedInFifoOrderIntoTheBuffer) {
  auto ch = make_chan<int>(1);
  ch.send(0);
  std::vector<std::thread> senders;
  for (int i = 1; i <= 3; ++i) {
    senders.emplace_back([&ch, i] { ch.send(i); });
    // Let sender i block before starting i+1, so the queue order is known.
    ASSERT_TRUE(eventually([&] {
      const std::size_t n = detail::stats_of(ch).blocked_senders;
      return n == static_cast<std::size_t>(i);
    }));
  }
  for (int i = 0; i <= 3; ++i) EXPECT_EQ(ch.recv(), i);
  for (auto& t : senders) t.join();
}

TEST(Chan, CloseDrainsTheBufferThenReturnsNulloptForever) {
  auto ch = make_chan<std::string>(3);
  ch.send("a");
  ch.send("b");
  ch.close();
  EXPECT_EQ(ch.recv(), "a");
  EXPECT_EQ(ch.recv(), "b");
  EXPECT_EQ(ch.recv(), std::nullopt);
  EXPECT_EQ(ch.recv(), std::nullopt);
  EXPECT_EQ(ch.try_recv().status, ChanStatus::kClosed);
}

TEST(Chan, CloseWakesEveryBlockedReceiver) {
  auto ch = make_chan<int>();
  std::atomic<int> woke{0};
  std::vector<std::thread> receivers;
  for (int i = 0; i < 8; ++i) {
    receivers.emplace_back([&] {
      if (!ch.recv().has_value()) ++woke;
    });
  }
  ASSERT_TRUE(eventually([&] {
    const std::size_t n = detail::stats_of(ch).blocked_receivers;
    return n == 8;
  }));
  ch.close();
  for (auto& t : receivers) t.join();
  EXPECT_EQ(woke.load(), 8);
}

TEST(Chan, CloseMakesEveryBlockedSenderThrow) {
  for (std::size_t cap : {0, 1}) {
    auto ch = make_chan<int>(cap);
    if (cap == 1) ch.send(0);
    std::atomic<int> threw{0};
    std::vector<std::thread> senders;
    for (int i = 0; i < 8; ++i) {
      senders.emplace_back([&] {
        try {
          ch.send(1);
        } catch (const Error& e) {
          if (std::string(e.what()) == "send on closed channel") ++threw;
        }
      });
    }
    ASSERT_TRUE(eventually([&] {
      const std::size_t n = detail::stats_of(ch).blocked_senders;
      return n == 8;
    }));
    ch.close();
    for (auto& t : senders) t.join();
    EXPECT_EQ(threw.load(), 8) << "capacity " << cap;
  }
}

TEST(Chan, SendOnClosedChannelPanics) {
  auto ch = make_chan<int>(5);
  ch.close();
  expect_panic([&] { ch.send(1); }, "send on closed channel");
}

TEST(Chan, CloseOfClosedOrNilChannelPanics) {
  auto ch = make_chan<int>();
  ch.close();
  expect_panic([&] { ch.close(); }, "close of closed channel");
  Chan<int> nil;
  expect_panic([&] { nil.close(); }, "close of nil channel");
}

TEST(Chan, TrySendTellsOkWouldBlockAndClosedApart) {
  auto unbuffered = make_chan<int>();
  EXPECT_EQ(unbuffered.try_send(1), ChanStatus::kWouldBlock);
  auto buffered = make_chan<int>(1);
  EXPECT_EQ(buffered.try_send(1), ChanStatus::kOk);
  EXPECT_EQ(buffered.try_send(2), ChanStatus::kWouldBlock);
  buffered.close();
  EXPECT_EQ(buffered.try_send(3), ChanStatus::kClosed);
}

TEST(Chan, TrySendHandsToABlockedReceiver) {
  auto ch = make_chan<int>();
  std::optional<int> got;
  std::thread receiver([&] { got = ch.recv(); });
  ASSERT_TRUE(eventually([&] { return ch.try_send(42) == ChanStatus::kOk; }));
  receiver.join();
  EXPECT_EQ(got, 42);
}

TEST(Chan, TryRecvTellsOkWouldBlockAndClosedApart) {
  auto ch = make_chan<int>(1);
  auto r = ch.try_recv();
  EXPECT_EQ(r.status, ChanStatus::kWouldBlock);
  EXPECT_FALSE(r.value.has_value());
  ch.send(5);
  r = ch.try_recv();
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.value, 5);
  ch.close();
  EXPECT_EQ(ch.try_recv().status, ChanStatus::kClosed);
}

TEST(Chan, FailedSendsDoNotSwallowAMoveOnlyValue) {
  auto ch = make_chan<std::unique_ptr<int>>();
  auto p = std::make_unique<int>(9);
  EXPECT_EQ(ch.try_send(std::move(p)), ChanStatus::kWouldBlock);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(ch.send_for(std::move(p), 10ms), ChanStatus::kTimeout);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(ch.send_until(std::move(p), std::chrono::system_clock::now() + 5ms),
            ChanStatus::kTimeout);
  ASSERT_NE(p, nullptr);
  ch.close();
  EXPECT_EQ(ch.try_send(std::move(p)), ChanStatus::kClosed);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(ch.send_for(std::move(p), 10ms), ChanStatus::kClosed);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 9);
}

// "Moved from only on kOk", to the letter: a send that times out or meets a
// close (while parked in the lone slot, or not) never moves the caller's
// object, so that a derived object passed as the element type stays whole.
TEST(Chan, AFailedSendDoesNotMoveTheCallersValue) {
  struct Counted {
    int* moves;
    Counted(int* m) : moves(m) {}  // NOLINT: a test's shorthand
    Counted(Counted&& o) noexcept : moves(o.moves) { ++*moves; }
  };
  int moves = 0;
  auto ch = make_chan<Counted>();
  Counted v(&moves);
  EXPECT_EQ(ch.send_for(std::move(v), 5ms), ChanStatus::kTimeout);
  EXPECT_EQ(moves, 0);
  std::thread closer([&] {
    ASSERT_TRUE(
        eventually([&] { return detail::stats_of(ch).blocked_senders == 1; }));
    ch.close();
  });
  EXPECT_EQ(ch.send_for(std::move(v), kLiveness), ChanStatus::kClosed);
  closer.join();
  EXPECT_EQ(moves, 0);
}

// A trivially copyable type without a copy constructor travels through an
// unbuffered channel too (a lone sender's landing place holds its bytes).
TEST(Chan, AMoveOnlyTriviallyCopyableValueTravelsUnbuffered) {
  struct Token {
    int id;
    explicit Token(int i) : id(i) {}
    Token(const Token&) = delete;
    Token(Token&&) = default;
  };
  static_assert(std::is_trivially_copyable_v<Token>);
  auto ch = make_chan<Token>();
  std::thread sender([&] { ch.send(Token(5)); });
  ASSERT_TRUE(
      eventually([&] { return detail::stats_of(ch).blocked_senders == 1; }));
  std::optional<Token> got = ch.recv();
  sender.join();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->id, 5);
}

TEST(Chan, TimedSendDeliversToALateReceiver) {
  auto ch = make_chan<std::unique_ptr<int>>();
  std::optional<std::unique_ptr<int>> got;
  std::thread receiver([&] {
    std::this_thread::sleep_for(20ms);
    got = ch.recv();
  });
  auto p = std::make_unique<int>(3);
  EXPECT_EQ(ch.send_for(std::move(p), kLiveness), ChanStatus::kOk);
  EXPECT_EQ(p, nullptr);
  receiver.join();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(**got, 3);
}

TEST(Chan, TimedRecvTimesOutConsumingNothing) {
  auto ch = make_chan<int>();
  const auto start = std::chrono::steady_clock::now();
  auto r = ch.recv_for(20ms);
  EXPECT_EQ(r.status, ChanStatus::kTimeout);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 20ms);
  // The withdrawn receive is gone: a send finds no receiver...
  EXPECT_EQ(ch.try_send(1), ChanStatus::kWouldBlock);
  // ...and the next value goes to the next receiver, not into the void.
  std::thread sender([&] { ch.send(2); });
  EXPECT_EQ(ch.recv(), 2);
  sender.join();
  EXPECT_EQ(ch.recv_until(std::chrono::system_clock::now() + 5ms).status,
            ChanStatus::kTimeout);
}

TEST(Chan, TimedRecvGetsAValueSentInTime) {
  auto ch = make_chan<int>();
  std::thread sender([&] {
    std::this_thread::sleep_for(20ms);
    ch.send(11);
  });
  auto r = ch.recv_until(std::chrono::steady_clock::now() + kLiveness);
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.value, 11);
  sender.join();
}

TEST(Chan, TimedFormsReportACloseWhileWaiting) {
  auto ch = make_chan<int>();
  std::thread closer([&] {
    std::this_thread::sleep_for(20ms);
    ch.close();
  });
  EXPECT_EQ(ch.recv_for(kLiveness).status, ChanStatus::kClosed);
  closer.join();

  auto ch2 = make_chan<int>();
  std::thread closer2([&] {
    std::this_thread::sleep_for(20ms);
    ch2.close();
  });
  EXPECT_EQ(ch2.send_for(1, kLiveness), ChanStatus::kClosed);
  closer2.join();
}

// The first waiter of an unbuffered channel parks in the channel's lone
// slot, the others in its queue behind it: they are served oldest first.
TEST(Chan, UnbufferedWaitersAreServedOldestFirst) {
  constexpr int kWaiters = 4;
  auto ch = make_chan<int>();
  std::vector<int> got(kWaiters, -1);
  std::vector<std::thread> receivers;
  for (int i = 0; i < kWaiters; ++i) {
    receivers.emplace_back([&ch, &got, i] { got[i] = *ch.recv(); });
    ASSERT_TRUE(eventually([&] {
      return detail::stats_of(ch).blocked_receivers ==
             static_cast<std::size_t>(i + 1);
    }));
  }
  for (int v = 0; v < kWaiters; ++v) ch.send(v);
  for (auto& t : receivers) t.join();
  for (int i = 0; i < kWaiters; ++i) EXPECT_EQ(got[i], i) << "receiver " << i;

  std::vector<std::thread> senders;
  for (int i = 0; i < kWaiters; ++i) {
    senders.emplace_back([&ch, i] { ch.send(i); });
    ASSERT_TRUE(eventually([&] {
      return detail::stats_of(ch).blocked_senders ==
             static_cast<std::size_t>(i + 1);
    }));
  }
  for (int v = 0; v < kWaiters; ++v) EXPECT_EQ(ch.recv(), v);
  for (auto& t : senders) t.join();
}

// The lock-free look of try_recv, try_send and select's first pass
// (may_be_ready) reads the lone slot and the queue one after the other.
// Here a sender is blocked throughout: S1 in the slot, then S2 queued
// behind it before S1 is taken. Read in the other order (queue, then slot),
// a look preempted between its two reads could see the queue still empty
// and the slot already empty, and tell a receive it would block. More
// lookers than CPUs get preempted often, at random instructions.
TEST(Chan, ALookWithoutTheLockSeesASenderBlockedThroughout) {
  const int lookers =
      2 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::atomic<long> missed{0};
  for (int round = 0; round < 100; ++round) {
    auto ch = make_chan<int>();
    auto* s = detail::state_of(ch);
    std::thread s1([&] { ch.send(1); });
    ASSERT_TRUE(
        eventually([&] { return detail::stats_of(ch).blocked_senders == 1; }));
    std::atomic<bool> stop{false};
    std::vector<std::thread> looking;
    for (int i = 0; i < lookers; ++i) {
      looking.emplace_back([&] {
        while (!stop.load(std::memory_order_relaxed)) {
          if (!s->may_be_ready(/*is_send=*/false)) ++missed;
        }
      });
    }
    std::thread s2([&] { ch.send(2); });
    ASSERT_TRUE(
        eventually([&] { return detail::stats_of(ch).blocked_senders == 2; }));
    EXPECT_EQ(ch.recv(), 1);
    stop = true;
    for (auto& t : looking) t.join();
    EXPECT_EQ(ch.recv(), 2);
    s1.join();
    s2.join();
  }
  EXPECT_EQ(missed.load(), 0);
}

// A blocked send in the lone slot keeps its value with the caller: a close
// leaves it there, as a timeout does (FailedSendsDoNotSwallow...).
TEST(Chan, ABlockedSendClosedUnderItKeepsItsMoveOnlyValue) {
  auto ch = make_chan<std::unique_ptr<int>>();
  std::thread closer([&] {
    ASSERT_TRUE(
        eventually([&] { return detail::stats_of(ch).blocked_senders == 1; }));
    ch.close();
  });
  auto p = std::make_unique<int>(4);
  EXPECT_EQ(ch.send_for(std::move(p), kLiveness), ChanStatus::kClosed);
  closer.join();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 4);
}

// Timed senders race their deadlines against receivers: a value is either
// taken exactly once or handed back to its sender (which sends it again),
// never lost, never duplicated.
TEST(Chan, TimedSendersRacingTheirDeadlinesLoseNoValue) {
  constexpr int kSenders = 2, kPerSender = 3'000;
  auto ch = make_chan<std::unique_ptr<int>>();
  std::vector<std::atomic<int>> seen(kSenders * kPerSender);
  std::thread receiver([&] {
    std::minstd_rand pace(7);
    while (std::optional<std::unique_ptr<int>> v = ch.recv()) {
      ASSERT_NE(*v, nullptr);
      seen[**v].fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::microseconds(pace() % 40));
    }
  });
  std::vector<std::thread> senders;
  for (int s = 0; s < kSenders; ++s) {
    senders.emplace_back([&, s] {
      for (int i = 0; i < kPerSender; ++i) {
        auto p = std::make_unique<int>(s * kPerSender + i);
        while (ch.send_for(std::move(p), 20us) == ChanStatus::kTimeout) {
          ASSERT_NE(p, nullptr);
        }
      }
    });
  }
  for (auto& t : senders) t.join();
  ch.close();
  receiver.join();
  for (std::size_t i = 0; i < seen.size(); ++i) {
    ASSERT_EQ(seen[i].load(), 1) << "value " << i;
  }
}

TEST(Chan, LenAndCap) {
  auto ch = make_chan<int>(4);
  EXPECT_EQ(ch.cap(), 4u);
  EXPECT_EQ(ch.len(), 0u);
  ch.send(1);
  ch.send(2);
  EXPECT_EQ(ch.len(), 2u);
  ch.recv();
  EXPECT_EQ(ch.len(), 1u);
  auto unbuffered = make_chan<int>();
  EXPECT_EQ(unbuffered.cap(), 0u);
  EXPECT_EQ(unbuffered.len(), 0u);
}

TEST(Chan, RangeForEndsWhenClosedAndDrained) {
  auto ch = make_chan<int>(3);
  std::thread producer([&] {
    for (int i = 1; i <= 10; ++i) ch.send(i);
    ch.close();
  });
  int sum = 0, n = 0;
  for (int v : ch) {
    sum += v;
    ++n;
  }
  producer.join();
  EXPECT_EQ(n, 10);
  EXPECT_EQ(sum, 55);
}

TEST(Chan, MoveOnlyValuesTravelThroughBufferedAndUnbuffered) {
  for (std::size_t cap : {0, 2}) {
    auto ch = make_chan<std::unique_ptr<int>>(cap);
    std::thread producer([&] {
      for (int i = 0; i < 5; ++i) ch.send(std::make_unique<int>(i));
      ch.close();
    });
    int expect = 0;
    for (std::unique_ptr<int> p : ch) {
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(*p, expect++);
    }
    producer.join();
    EXPECT_EQ(expect, 5);
  }
}

TEST(Chan, NilChannelNeverCompletes) {
  Chan<int> nil;
  EXPECT_TRUE(nil.is_nil());
  EXPECT_EQ(nil.len(), 0u);
  EXPECT_EQ(nil.cap(), 0u);
  EXPECT_EQ(nil.try_send(1), ChanStatus::kWouldBlock);
  EXPECT_EQ(nil.try_recv().status, ChanStatus::kWouldBlock);
  EXPECT_EQ(nil.send_for(1, 10ms), ChanStatus::kTimeout);
  EXPECT_EQ(nil.recv_for(10ms).status, ChanStatus::kTimeout);
  EXPECT_EQ(nil, Chan<int>());

  // Blocking forms block forever: these threads never return (a process may
  // exit with them blocked, as in Go).
  auto returned = std::make_shared<std::atomic<int>>(0);
  std::thread([nil, returned]() mutable {
    nil.recv();
    ++*returned;
  }).detach();
  std::thread([nil, returned]() mutable {
    nil.send(1);
    ++*returned;
  }).detach();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(returned->load(), 0);
}

TEST(Chan, CopiesAreHandlesToTheSameChannel) {
  auto a = make_chan<int>(1);
  Chan<int> b = a;
  EXPECT_EQ(a, b);
  EXPECT_FALSE(a == make_chan<int>(1));
  b.send(4);
  EXPECT_EQ(a.recv(), 4);
}

TEST(Error, CarriesAStatusCode) {
  Error e(absl::StatusCode::kUnavailable, "broker gone");
  EXPECT_EQ(e.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(e.status(), absl::UnavailableError("broker gone"));
  const std::runtime_error& base = e;
  EXPECT_STREQ(base.what(), "broker gone");
}

// Receivers whose deadlines keep running out while senders hand them
// values at about the same pace: a receiver that timed out but was claimed
// just before it could withdraw still gets its value (it lands next to the
// waiter, then moves to the caller), and one that withdrew got none. Every
// value arrives exactly once.
TEST(Chan, TimedReceiversRacingTheirDeadlinesLoseNoValue) {
  constexpr int kSenders = 2, kReceivers = 2, kPerSender = 3'000;
  auto ch = make_chan<int>();
  std::vector<std::atomic<int>> seen(kSenders * kPerSender);
  std::vector<std::thread> receivers;
  for (int r = 0; r < kReceivers; ++r) {
    receivers.emplace_back([&] {
      for (;;) {
        const RecvResult<int> got = ch.recv_for(20us);
        if (got.status == ChanStatus::kClosed) return;
        if (got.status == ChanStatus::kTimeout) {
          EXPECT_FALSE(got.value.has_value());
          continue;
        }
        ASSERT_TRUE(got.ok());
        seen[*got.value].fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::vector<std::thread> senders;
  for (int p = 0; p < kSenders; ++p) {
    senders.emplace_back([&, p] {
      std::minstd_rand pace(p + 1);
      for (int i = 0; i < kPerSender; ++i) {
        std::this_thread::sleep_for(std::chrono::microseconds(pace() % 40));
        ch.send(p * kPerSender + i);
      }
    });
  }
  for (auto& t : senders) t.join();
  ch.close();
  for (auto& t : receivers) t.join();
  for (std::size_t i = 0; i < seen.size(); ++i) {
    ASSERT_EQ(seen[i].load(), 1) << "value " << i;
  }
}

// Many producers and consumers: every value is received exactly once.
class ChanStress : public ::testing::TestWithParam<std::size_t> {};

TEST_P(ChanStress, EveryValueIsReceivedExactlyOnce) {
  constexpr int kProducers = 4, kConsumers = 4, kPerProducer = 20000;
  auto ch = make_chan<int>(GetParam());
  std::vector<std::atomic<int>> seen(kProducers * kPerProducer);
  std::atomic<long long> sum{0};
  std::atomic<int> count{0};
  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) ch.send(p * kPerProducer + i);
    });
  }
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&] {
      for (int v : ch) {
        seen[v].fetch_add(1, std::memory_order_relaxed);
        sum += v;
        ++count;
      }
    });
  }
  for (int p = 0; p < kProducers; ++p) threads[p].join();
  ch.close();
  for (std::size_t i = kProducers; i < threads.size(); ++i) threads[i].join();
  const long long n = kProducers * kPerProducer;
  EXPECT_EQ(count.load(), n);
  EXPECT_EQ(sum.load(), n * (n - 1) / 2);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    ASSERT_EQ(seen[i].load(), 1) << "value " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Capacities, ChanStress, ::testing::Values(0, 1, 64));

// A buffered channel's ring, with every form on each side: each sender's
// values reach each receiver in the order sent (the ring is FIFO), and
// every value exactly once. 2,000 ints make a ring too big to give each
// cell a line of its own (the packed layout).
class ChanRing : public ::testing::TestWithParam<std::size_t> {};

TEST_P(ChanRing, EachSendersValuesArriveInOrderThroughEveryForm) {
  constexpr int kSenders = 4, kReceivers = 4;
  constexpr int64_t kPerSender = 20000;
  auto ch = make_chan<int64_t>(GetParam());
  auto never = make_chan<int64_t>();
  std::vector<std::thread> senders, receivers;
  for (int p = 0; p < kSenders; ++p) {
    senders.emplace_back([&, p] {
      for (int64_t i = 0; i < kPerSender; ++i) {
        int64_t v = p * kPerSender + i;
        switch (p) {
          case 0:
            ch.send(v);
            break;
          case 1:
            while (ch.try_send(std::move(v)) == ChanStatus::kWouldBlock) {
              std::this_thread::yield();
            }
            break;
          case 2:
            while (ch.send_for(std::move(v), 1ms) == ChanStatus::kTimeout) {
            }
            break;
          default:
            select(on_send(ch, v), on_recv(never));
        }
      }
    });
  }
  std::vector<std::vector<int64_t>> got(kReceivers);
  for (int c = 0; c < kReceivers; ++c) {
    receivers.emplace_back([&, c] {
      for (;;) {
        std::optional<int64_t> v;
        switch (c) {
          case 0:
            v = ch.recv();
            break;
          case 1: {
            RecvResult<int64_t> r = ch.try_recv();
            if (r.status == ChanStatus::kWouldBlock) {
              std::this_thread::yield();
              continue;
            }
            v = r.value;
            break;
          }
          case 2: {
            RecvResult<int64_t> r = ch.recv_for(1ms);
            if (r.status == ChanStatus::kTimeout) continue;
            v = r.value;
            break;
          }
          default:
            select(on_recv(ch, [&](std::optional<int64_t> x) { v = x; }),
                   on_recv(never));
        }
        if (!v) return;  // closed and drained
        got[c].push_back(*v);
      }
    });
  }
  for (auto& t : senders) t.join();
  ch.close();
  for (auto& t : receivers) t.join();
  std::vector<int64_t> all;
  for (int c = 0; c < kReceivers; ++c) {
    std::vector<int64_t> last(kSenders, -1);
    for (int64_t v : got[c]) {
      const auto p = static_cast<std::size_t>(v / kPerSender);
      ASSERT_LT(last[p], v) << "receiver " << c << " got sender " << p
                            << "'s values out of order";
      last[p] = v;
    }
    all.insert(all.end(), got[c].begin(), got[c].end());
  }
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), static_cast<std::size_t>(kSenders * kPerSender));
  for (std::size_t i = 0; i < all.size(); ++i) {
    ASSERT_EQ(all[i], static_cast<int64_t>(i));
  }
}

INSTANTIATE_TEST_SUITE_P(Capacities, ChanRing, ::testing::Values(1, 7, 2000));

// The ring's positions count laps in 32 bits: a channel runs on across
// their wrap-around (made to start three laps before it), alone and
// between two threads, with len() right on the way.
TEST(Chan, BufferedValuesCrossThePositionsWrapAround) {
  for (std::size_t cap : {1, 3, 64}) {
    auto ch = detail::make_chan_at_lap<int>(cap, 0xFFFFFFFFu - 2);
    int next_in = 0, next_out = 0;
    for (std::size_t step = 0; step < 6 * cap + 6; ++step) {
      const std::size_t n = 1 + step % cap;
      for (std::size_t i = 0; i < n; ++i) ch.send(next_in++);
      ASSERT_EQ(ch.len(), n) << "capacity " << cap;
      if (n == cap) {
        int extra = -1;
        EXPECT_EQ(ch.try_send(std::move(extra)), ChanStatus::kWouldBlock);
      }
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(ch.recv(), next_out++);
      ASSERT_EQ(ch.len(), 0u);
    }

    auto two = detail::make_chan_at_lap<int>(cap, 0xFFFFFFFFu);
    constexpr int kValues = 5000;
    std::thread sender([&] {
      for (int i = 0; i < kValues; ++i) two.send(i);
      two.close();
    });
    int expected = 0;
    for (int v : two) ASSERT_EQ(v, expected++) << "capacity " << cap;
    EXPECT_EQ(expected, kValues);
    sender.join();
  }
}

// The lock holder owns the ring's positions: a buffered send or receive
// that would skip the lock waits for it instead (else a receiver queueing
// under the lock could miss a value landing meanwhile).
TEST(Chan, BufferedOperationsWaitForTheLockHolder) {
  auto ch = make_chan<int>(4);
  ch.send(1);
  auto* s = detail::state_of(ch);
  s->lock();
  std::atomic<bool> sent{false}, received{false};
  std::thread sender([&] {
    EXPECT_EQ(ch.try_send(2), ChanStatus::kOk);
    sent = true;
  });
  std::thread receiver([&] {
    EXPECT_EQ(ch.try_recv().value, 1);
    received = true;
  });
  std::this_thread::sleep_for(
      20ms);  // time to get past the lock, if they could
  EXPECT_FALSE(sent.load());
  EXPECT_FALSE(received.load());
  s->unlock();
  sender.join();
  receiver.join();
  EXPECT_EQ(ch.recv(), 2);
}

TEST(Chan, ValuesLeftInTheBufferAreDestroyedWithTheChannel) {
  auto value = std::make_shared<int>(1);
  {
    auto ch = detail::make_chan_at_lap<std::shared_ptr<int>>(4, 0xFFFFFFFFu);
    for (int i = 0; i < 4; ++i) ch.send(value);
    ch.recv();
    ch.recv();
    ch.send(value);  // the ring (and its lap count) wraps
    EXPECT_EQ(value.use_count(), 4);
  }
  EXPECT_EQ(value.use_count(), 1);
}

// A parked receive gets its value constructed where it parked (on its
// waiter's line when it fits), moved to the caller and destroyed there:
// every blocking form delivers it intact and leaves no copy behind, also
// when a buffered channel's release hands it over; a close delivers
// nothing.
template <class T>
void ExpectParkedReceivesDeliver(T value, const std::shared_ptr<int>& counted) {
  const long copies = counted.use_count();
  enum Form { kRecv, kRecvFor, kRecvAsync, kClose };
  for (std::size_t cap : {0, 1}) {
    for (Form form : {kRecv, kRecvFor, kRecvAsync, kClose}) {
      SCOPED_TRACE(testing::Message() << "cap " << cap << " form " << form);
      auto ch = make_chan<T>(cap);
      std::optional<T> got;
      PendingOp op;
      std::thread receiver;
      if (form == kRecvAsync) {
        op = ch.recv_async([&](std::optional<T> v) { got = std::move(v); });
      } else {
        receiver = std::thread([&, form] {
          got = form == kRecvFor ? ch.recv_for(kLiveness).value : ch.recv();
        });
      }
      ASSERT_TRUE(eventually(
          [&] { return detail::stats_of(ch).blocked_receivers == 1; }));
      if (form == kClose) {
        ch.close();
      } else {
        ch.send(value);
      }
      if (receiver.joinable()) receiver.join();
      if (form == kClose) {
        EXPECT_FALSE(got.has_value());
      } else {
        ASSERT_TRUE(got.has_value());
        EXPECT_TRUE(*got == value);
        EXPECT_EQ(counted.use_count(), copies + 1);  // `got` alone
      }
      got.reset();
      EXPECT_EQ(counted.use_count(), copies);
    }
  }
}

TEST(Chan, AParkedReceiveDeliversItsValueAndLeavesNoCopy) {
  auto counted = std::make_shared<int>(7);
  ExpectParkedReceivesDeliver(test_util::Counted(counted), counted);
  ExpectParkedReceivesDeliver(test_util::Wide(counted), counted);
  static_assert(detail::kLandsOnWaiterLine<test_util::Counted>);
  static_assert(!detail::kLandsOnWaiterLine<test_util::Wide>);
}

TEST(Chan, MakeChanRefusesACapacityItsPositionsCannotCount) {
  try {
    make_chan<char>(detail::ChanCore::kMaxCapacity + 1);
    ADD_FAILURE() << "expected dchan::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_STREQ(e.what(), "makechan: size out of range");
  }
}

// close() against senders that keep winning positions without the lock:
// every send that returned is received, and every later one throws.
TEST(Chan, CloseRacingSendsLosesNothing) {
  for (int round = 0; round < 30; ++round) {
    auto ch = make_chan<int>(16);
    std::atomic<int64_t> sent{0};
    std::atomic<int64_t> received{0};
    std::vector<std::thread> senders;
    for (int p = 0; p < 2; ++p) {
      senders.emplace_back([&] {
        for (;;) {
          try {
            ch.send(1);
          } catch (const Error&) {
            return;  // closed
          }
          sent.fetch_add(1);
        }
      });
    }
    std::thread receiver([&] {
      for (int v : ch) received.fetch_add(v);
    });
    ASSERT_TRUE(eventually([&] { return received.load() > 1000; }));
    ch.close();
    for (auto& t : senders) t.join();
    receiver.join();
    EXPECT_EQ(received.load(), sent.load()) << "round " << round;
  }
}

}  // namespace
}  // namespace dchan
