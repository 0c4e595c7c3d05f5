#include "dchan/select.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fake_remote.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace dchan {
namespace {

using namespace std::chrono_literals;
constexpr auto kLiveness = 10s;

// The selects' pins on a local channel (see ChanCore::pin_locked).
template <class T>
uint32_t pins_of(const Chan<T>& ch) {
  detail::ChanState<T>* s = detail::state_of(ch);
  s->lock();
  const uint32_t pins = s->pins_;
  s->unlock();
  return pins;
}

TEST(Select, RunsTheReadyCaseAndReturnsItsIndex) {
  auto a = make_chan<int>(1);
  auto b = make_chan<int>(1);
  b.send(5);
  std::optional<int> got;
  const std::size_t i =
      select(on_recv(a, [&](std::optional<int>) { ADD_FAILURE(); }),
             on_recv(b, [&](std::optional<int> v) { got = v; }));
  EXPECT_EQ(i, 1u);
  EXPECT_EQ(got, 5);
}

TEST(Select, DefaultRunsOnlyWhenNothingIsReady) {
  auto a = make_chan<int>(1);
  bool ran_default = false;
  EXPECT_EQ(select(on_recv(a), on_default([&] { ran_default = true; })), 1u);
  EXPECT_TRUE(ran_default);
  a.send(1);
  ran_default = false;
  EXPECT_EQ(select(on_recv(a), on_default([&] { ran_default = true; })), 0u);
  EXPECT_FALSE(ran_default);
}

// A single channel case with a default takes a shorter path than other
// selects (a non-blocking send or receive, as in Go); it must keep every
// rule of select, with the default first or last.
TEST(Select, OneCaseWithDefaultKeepsSelectSemantics) {
  // Receive: empty -> default; a buffered value; a blocked sender's value;
  // closed and drained -> the case with nullopt.
  auto a = make_chan<int>(1);
  std::optional<int> got = -1;
  int defaults = 0;
  auto recv_a = [&] {
    return select(on_recv(a, [&](std::optional<int> v) { got = v; }),
                  on_default([&] { ++defaults; }));
  };
  EXPECT_EQ(recv_a(), 1u);
  EXPECT_EQ(defaults, 1);
  a.send(7);
  EXPECT_EQ(recv_a(), 0u);
  EXPECT_EQ(got, 7);
  auto u = make_chan<int>();
  std::thread sender(
      [&] { EXPECT_EQ(u.send_for(8, kLiveness), ChanStatus::kOk); });
  // Default first: the receive is case 1.
  const auto give_up = std::chrono::steady_clock::now() + kLiveness;
  while (select(on_default(),
                on_recv(u, [&](std::optional<int> x) { got = x; })) != 1 &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::yield();
  }
  sender.join();
  EXPECT_EQ(got, 8);
  a.close();
  EXPECT_EQ(recv_a(), 0u);
  EXPECT_EQ(got, std::nullopt);
  EXPECT_EQ(defaults, 1);

  // Send: room -> sent; full -> default (the value not delivered); a
  // blocked receiver takes it; closed -> panic.
  auto b = make_chan<int>(1);
  EXPECT_EQ(select(on_send(b, 1), on_default()), 0u);
  EXPECT_EQ(select(on_default(), on_send(b, 2)), 0u);  // default first: 0
  EXPECT_EQ(b.len(), 1u);
  EXPECT_EQ(*b.recv(), 1);
  auto v = make_chan<int>();
  std::optional<int> taken;
  std::thread receiver([&] { taken = v.recv_for(kLiveness).value; });
  while (select(on_send(v, 9), on_default()) != 0 &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::yield();
  }
  receiver.join();
  EXPECT_EQ(taken, 9);
  b.close();
  EXPECT_THROW(select(on_send(b, 3), on_default()), Error);

  // The nil channel: always the default.
  Chan<int> nil;
  EXPECT_EQ(select(on_recv(nil), on_default()), 1u);
  EXPECT_EQ(select(on_default(), on_send(nil, 1)), 0u);
}

// A select first looks at its channels without locking them, and one with
// a default that sees nothing ready returns at once. Every kind of readiness
// must still be seen, through the general engine too (here: several cases
// and a default; each scenario's ready case is the last one, after cases
// that are not ready).
TEST(Select, ALookWithoutTheLockSeesEveryKindOfReadiness) {
  auto never = make_chan<int>();  // nobody sends or receives on it
  auto empty = make_chan<int>(2);
  auto fires_last = [&](auto ready_case) {
    return select(on_recv(never), on_recv(empty), on_default(),
                  std::move(ready_case)) == 3;
  };
  const auto give_up = std::chrono::steady_clock::now() + kLiveness;
  auto until_fired = [&](auto make_case) {
    while (!fires_last(make_case()) &&
           std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
    return std::chrono::steady_clock::now() < give_up;
  };

  // Nothing ready: the default.
  EXPECT_EQ(
      select(on_recv(never), on_recv(empty), on_send(never, 1), on_default()),
      3u);

  // Receives: a buffered value; a blocked sender (unbuffered); closed.
  auto buffered = make_chan<int>(2);
  buffered.send(1);
  EXPECT_TRUE(fires_last(on_recv(buffered)));
  auto unbuffered = make_chan<int>();
  std::thread sender(
      [&] { EXPECT_EQ(unbuffered.send_for(2, kLiveness), ChanStatus::kOk); });
  EXPECT_TRUE(until_fired([&] { return on_recv(unbuffered); }));
  sender.join();
  auto closed = make_chan<int>();
  closed.close();
  std::optional<int> got = 0;
  EXPECT_TRUE(
      fires_last(on_recv(closed, [&](std::optional<int> v) { got = v; })));
  EXPECT_EQ(got, std::nullopt);

  // Sends: room in a buffer; a blocked receiver (unbuffered); a full
  // buffer that is closed panics rather than looking full.
  auto room = make_chan<int>(1);
  EXPECT_TRUE(fires_last(on_send(room, 3)));
  EXPECT_EQ(room.len(), 1u);
  std::optional<int> taken;
  std::thread receiver([&] { taken = unbuffered.recv_for(kLiveness).value; });
  EXPECT_TRUE(until_fired([&] { return on_send(unbuffered, 4); }));
  receiver.join();
  EXPECT_EQ(taken, 4);
  room.close();  // still holds its value: full and closed
  EXPECT_THROW(fires_last(on_send(room, 5)), Error);
  EXPECT_EQ(room.try_send(5), ChanStatus::kClosed);
}

TEST(Select, BlocksUntilACaseIsReady) {
  auto a = make_chan<int>();
  auto b = make_chan<std::string>();
  std::thread sender([&] {
    std::this_thread::sleep_for(20ms);
    b.send("hi");
  });
  std::optional<std::string> got;
  EXPECT_EQ(select(on_recv(a), on_recv(b, [&](auto v) { got = v; })), 1u);
  EXPECT_EQ(got, "hi");
  sender.join();
}

TEST(Select, SendCaseDeliversToABlockedReceiver) {
  auto a = make_chan<int>();
  std::optional<int> got;
  std::thread receiver([&] { got = a.recv(); });
  bool sent = false;
  EXPECT_EQ(
      select(on_send(a, 3, [&] { sent = true; }), on_recv(after(kLiveness))),
      0u);
  receiver.join();
  EXPECT_TRUE(sent);
  EXPECT_EQ(got, 3);
}

TEST(Select, ChoosesUniformlyAmongReadyCases) {
  constexpr int kCases = 4, kTrials = 20000;
  std::vector<Chan<int>> chans;
  for (int i = 0; i < kCases; ++i) chans.push_back(make_chan<int>(1));
  int hits[kCases] = {};
  for (int t = 0; t < kTrials; ++t) {
    for (auto& c : chans) c.try_send(1);  // refill whichever fired
    ++hits[select(on_recv(chans[0]), on_recv(chans[1]), on_recv(chans[2]),
                  on_recv(chans[3]))];
  }
  // Expected 5000 each, standard deviation ~61: 4400..5600 is ~10 sigma.
  for (int i = 0; i < kCases; ++i) {
    EXPECT_GT(hits[i], 4400) << "case " << i;
    EXPECT_LT(hits[i], 5600) << "case " << i;
  }
}

// Many cases: random_order (select.cc) chains its draws on one random
// number and takes fresh ones past 8 cases. Only the first position decides
// which ready case fires, so this checks that choice (it fails with draws
// that are not chained), not the whole permutation.
TEST(Select, ChoosesUniformlyAmongManyReadyCases) {
  constexpr int kCases = 40, kTrials = 40000;
  std::vector<Chan<int>> chans;
  for (int i = 0; i < kCases; ++i) chans.push_back(make_chan<int>(1));
  std::vector<Case> cases;
  for (auto& c : chans) cases.push_back(on_recv(c));
  int hits[kCases] = {};
  for (int t = 0; t < kTrials; ++t) {
    for (auto& c : chans) c.try_send(1);  // refill whichever fired
    ++hits[select(cases)];
  }
  // Expected 1000 each, standard deviation ~31: 700..1300 is ~9.6 sigma.
  for (int i = 0; i < kCases; ++i) {
    EXPECT_GT(hits[i], 700) << "case " << i;
    EXPECT_LT(hits[i], 1300) << "case " << i;
  }
}

TEST(Select, NeverConsumesFromACaseThatDidNotFire) {
  for (int t = 0; t < 1000; ++t) {
    auto a = make_chan<int>(1);
    auto b = make_chan<int>(1);
    a.send(1);
    b.send(2);
    select(on_recv(a), on_recv(b));
    EXPECT_EQ(a.len() + b.len(), 1u);
  }
}

TEST(Select, ABlockedSelectWithdrawsItsOtherCasesWhenOneFires) {
  auto a = make_chan<int>();
  auto b = make_chan<int>();
  std::thread sender([&] {
    std::this_thread::sleep_for(20ms);
    a.send(1);
  });
  EXPECT_EQ(select(on_recv(a), on_recv(b)), 0u);
  sender.join();
  // The select's receive on b is gone: nobody takes a value from b now.
  EXPECT_EQ(b.try_send(2), ChanStatus::kWouldBlock);
  auto* s = detail::state_of(b);
  s->lock();
  EXPECT_TRUE(s->recvq_.empty());
  s->unlock();
}

// A parked select's receive cases of several types share the landing place
// on its waiter's line when they fit (an int, a std::string, a 16-byte
// counted value) and use their own otherwise (an 80-byte one): whichever fires
// gets its value intact, and no copy is left behind.
TEST(Select, EveryReceiveCaseOfAParkedSelectGetsItsValueIntact) {
  using test_util::Counted;
  using test_util::Wide;
  auto counted = std::make_shared<int>(1);
  const std::string text = "a string longer than the small-string buffer";
  for (std::size_t k = 0; k < 4; ++k) {
    SCOPED_TRACE(testing::Message() << "case " << k);
    auto ints = make_chan<int>();
    auto strings = make_chan<std::string>();
    auto counteds = make_chan<Counted>();
    auto wides = make_chan<Wide>();
    std::thread sender([&] {
      auto parked = [&](auto& ch) {
        return test_util::eventually(
            [&] { return detail::stats_of(ch).blocked_receivers == 1; });
      };
      // Sends anyway if it fails: the select then still gets its value.
      EXPECT_TRUE(parked(ints) && parked(strings) && parked(counteds) &&
                  parked(wides));
      switch (k) {
        case 0:
          ints.send(42);
          break;
        case 1:
          strings.send(text);
          break;
        case 2:
          counteds.send(Counted(counted));
          break;
        default:
          wides.send(Wide(counted));
          break;
      }
    });
    std::optional<int> i;
    std::optional<std::string> str;
    std::optional<Counted> c;
    std::optional<Wide> wide;
    const std::size_t fired =
        select(on_recv(ints, [&](std::optional<int> v) { i = v; }),
               on_recv(strings, [&](std::optional<std::string> v) { str = v; }),
               on_recv(counteds, [&](std::optional<Counted> v) { c = v; }),
               on_recv(wides, [&](std::optional<Wide> v) { wide = v; }));
    sender.join();
    EXPECT_EQ(fired, k);
    EXPECT_EQ(i, k == 0 ? std::optional<int>(42) : std::nullopt);
    EXPECT_EQ(str, k == 1 ? std::optional<std::string>(text) : std::nullopt);
    EXPECT_EQ(c.has_value(), k == 2);
    EXPECT_EQ(wide.has_value(), k == 3);
    if (k >= 2) {
      EXPECT_EQ(k == 2 ? c->p : wide->p, counted);
      EXPECT_EQ(counted.use_count(), 2);  // counted, and c or wide
    }
    c.reset();
    wide.reset();
    EXPECT_EQ(counted.use_count(), 1);
  }
  static_assert(detail::kLandsOnWaiterLine<std::string>);
  static_assert(detail::kLandsOnWaiterLine<Counted>);
  static_assert(!detail::kLandsOnWaiterLine<Wide>);
}

TEST(Select, SendAndRecvOnTheSameChannelNeverMatchEachOther) {
  auto c = make_chan<int>();
  // Alone, neither case can fire: the select times out.
  EXPECT_EQ(select(on_send(c, 1), on_recv(c), on_recv(after(20ms))), 2u);

  // With a receiver elsewhere, the send case fires.
  std::optional<int> got;
  std::thread receiver([&] { got = c.recv(); });
  EXPECT_EQ(select(on_send(c, 1), on_recv(c), on_recv(after(kLiveness))), 0u);
  receiver.join();
  EXPECT_EQ(got, 1);

  // With a sender elsewhere, the recv case fires.
  std::thread sender([&] { c.send(9); });
  std::optional<int> recvd;
  EXPECT_EQ(select(on_send(c, 1), on_recv(c, [&](auto v) { recvd = v; }),
                   on_recv(after(kLiveness))),
            1u);
  sender.join();
  EXPECT_EQ(recvd, 9);
}

TEST(Select, TwoSelectsEachSendingAndReceivingPairUp) {
  auto c = make_chan<int>();
  std::atomic<int> sends{0}, recvs{0};
  auto body = [&](int v) {
    select(on_send(c, v, [&] { ++sends; }),
           on_recv(c, [&](std::optional<int>) { ++recvs; }));
  };
  std::thread t1(body, 1), t2(body, 2);
  t1.join();
  t2.join();
  EXPECT_EQ(sends.load(), 1);
  EXPECT_EQ(recvs.load(), 1);
}

TEST(Select, NilCasesNeverFire) {
  Chan<int> nil;
  EXPECT_EQ(select(on_recv(nil), on_send(nil, 1), on_recv(after(10ms))), 2u);
  EXPECT_EQ(select(on_recv(nil), on_default()), 1u);
}

TEST(Select, RecvCaseSeesACloseAsNullopt) {
  auto a = make_chan<int>();
  a.close();
  bool saw_closed = false;
  select(on_recv(a, [&](std::optional<int> v) { saw_closed = !v; }));
  EXPECT_TRUE(saw_closed);

  auto b = make_chan<int>();
  std::thread closer([&] {
    std::this_thread::sleep_for(20ms);
    b.close();
  });
  saw_closed = false;
  EXPECT_EQ(select(on_recv(after(kLiveness)),
                   on_recv(b, [&](std::optional<int> v) { saw_closed = !v; })),
            1u);
  EXPECT_TRUE(saw_closed);
  closer.join();
}

TEST(Select, SendCaseOnAClosedChannelPanics) {
  auto a = make_chan<int>(1);
  a.close();
  EXPECT_THROW(select(on_send(a, 1)), Error);

  auto b = make_chan<int>();
  std::thread closer([&] {
    std::this_thread::sleep_for(20ms);
    b.close();
  });
  try {
    select(on_send(b, 1), on_recv(after(kLiveness)));
    ADD_FAILURE() << "no panic";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "send on closed channel");
  }
  closer.join();
}

TEST(Select, CaseFunctionMayUseTheSameChannel) {
  auto a = make_chan<int>(1);
  a.send(1);
  select(on_recv(a, [&](std::optional<int>) {
    EXPECT_EQ(a.try_send(2), ChanStatus::kOk);
  }));
  EXPECT_EQ(a.recv(), 2);
}

TEST(Select, MoveOnlySendCaseDeliversOrDropsItsValue) {
  auto a = make_chan<std::unique_ptr<int>>(1);
  EXPECT_EQ(select(on_send(a, std::make_unique<int>(4))), 0u);
  auto r = a.try_recv();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(**r.value, 4);
}

TEST(Select, AfterDeliversOnceAfterItsDuration) {
  const auto start = std::chrono::steady_clock::now();
  auto t = after(30ms);
  auto when = t.recv();
  ASSERT_TRUE(when.has_value());
  EXPECT_GE(*when - start, 30ms);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 30ms);
  EXPECT_EQ(t.try_recv().status, ChanStatus::kWouldBlock);
  // Timers fire in deadline order, whatever the order they were made in.
  auto late = after(60ms);
  auto early = after(10ms);
  EXPECT_EQ(select(on_recv(late), on_recv(early)), 1u);
}

TEST(Select, RunTimeCaseListsWork) {
  std::vector<Chan<int>> chans;
  for (int i = 0; i < 6; ++i) chans.push_back(make_chan<int>(1));
  chans[4].send(40);
  std::optional<int> got;
  std::vector<Case> cases;
  for (auto& c : chans) {
    cases.push_back(on_recv(c, [&](std::optional<int> v) { got = v; }));
  }
  EXPECT_EQ(select(cases), 4u);
  EXPECT_EQ(got, 40);
  // Cases can be reused; with a default, nothing blocks.
  cases.push_back(on_default());
  EXPECT_EQ(select(cases), 6u);
  cases.push_back(on_default());
  try {
    select(cases);
    ADD_FAILURE() << "two defaults accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument);
  }
}

// A case function may drop the very handle its case was made from (Go's
// "ch = nil" to turn a case off): the select no longer needs it then.
TEST(Select, ACaseFunctionMayResetTheHandleItsCaseWasMadeFrom) {
  auto a = std::make_unique<Chan<int>>(make_chan<int>(1));
  a->send(7);
  std::optional<int> got;
  EXPECT_EQ(select(on_recv(*a,
                           [&](std::optional<int> v) {
                             got = v;
                             a.reset();  // the last handle
                           }),
                   on_default()),
            0u);
  EXPECT_EQ(got, 7);
}

// A waiting select pins every channel it registers on (a channel whose
// handles are all gone lives on until its pins are dropped) until the node
// fired or was withdrawn: a channel with a pin left behind would never be
// freed once its handles are gone.
TEST(Select, AWaitingSelectLeavesNoPinBehindHoweverItEnds) {
  auto a = make_chan<int>();
  auto b = make_chan<int>();
  auto parked = [&] {
    return test_util::eventually(
        [&] { return detail::stats_of(b).blocked_receivers == 1; });
  };
  // Fired by a sender (its node claimed), then by a close.
  for (bool by_close : {false, true}) {
    std::thread selector([&] { select(on_recv(a), on_recv(b)); });
    ASSERT_TRUE(parked());
    EXPECT_EQ(pins_of(a), 1u);
    EXPECT_EQ(pins_of(b), 1u);
    if (by_close) {
      auto c = a;
      a = make_chan<int>();
      c.close();
      selector.join();
      EXPECT_EQ(pins_of(c), 0u);
    } else {
      a.send(1);
      selector.join();
    }
    EXPECT_EQ(pins_of(a), 0u);
    EXPECT_EQ(pins_of(b), 0u);
  }
  // An asynchronous select, fired and cancelled.
  for (bool cancel : {false, true}) {
    PendingOp op = select_async<int>({{a, false, {}}, {b, false, {}}}, false,
                                     [](SelectOutcome<int>) {});
    EXPECT_EQ(pins_of(a), 1u);
    EXPECT_EQ(pins_of(b), 1u);
    if (cancel) {
      EXPECT_TRUE(op.cancel());
    } else {
      EXPECT_EQ(a.try_send(1), ChanStatus::kOk);
    }
    EXPECT_EQ(pins_of(a), 0u);
    EXPECT_EQ(pins_of(b), 0u);
  }
}

// Lazy withdrawal (KeptNodes in select.cc): a select fired through one
// channel leaves its node on the other queued, stale, and the thread's next
// select on that channel re-registers the same node without the channel's
// lock. The node pins the channel while queued, and the thread's exit takes
// it out.
TEST(Select, ASelectLeavesItsOtherNodesQueuedForTheThreadsNextSelect) {
  auto ping = make_chan<int>();
  auto quit = make_chan<int>();
  auto parked = [&] {
    return test_util::eventually(
        [&] { return detail::stats_of(ping).blocked_receivers == 1; });
  };
  auto rounds = make_chan<int>();
  std::thread selector([&] {
    for (int i = 1;; ++i) {
      if (select(on_recv(ping), on_recv(quit)) == 1) return;
      rounds.send(i);  // and wait there for the checks
    }
  });
  for (int i = 1; i <= 3; ++i) {
    ASSERT_TRUE(parked());
    ping.send(i);
    ASSERT_TRUE(test_util::eventually(
        [&] { return detail::stats_of(rounds).blocked_senders == 1; }));
    // Fired through ping: its node on quit stays, but waits for nothing.
    EXPECT_EQ(pins_of(quit), 1u);
    EXPECT_EQ(detail::stats_of(quit).blocked_receivers, 0u);
    EXPECT_EQ(pins_of(ping), 0u);
    EXPECT_EQ(rounds.recv(), i);
  }
  ASSERT_TRUE(parked());
  EXPECT_EQ(detail::stats_of(quit).blocked_receivers, 1u);  // re-registered
  quit.close();
  selector.join();
  EXPECT_EQ(pins_of(ping), 0u);  // the thread's exit took its node out
  EXPECT_EQ(pins_of(quit), 0u);
}

// A kept node that a counterparty took out meanwhile (here a try_send that
// met it stale) cannot be re-registered; the next select queues it again
// under the channel's lock and is found there.
TEST(Select, AKeptNodeTakenOutMeanwhileIsQueuedAgain) {
  auto a = make_chan<int>();
  auto b = make_chan<int>();
  Chan<int> to_selector = make_chan<int>();
  Chan<std::optional<int>> from_selector = make_chan<std::optional<int>>(1);
  std::thread selector([&] {
    while (to_selector.recv().has_value()) {
      std::optional<int> got;
      select(on_recv(a, [&](std::optional<int> v) { got = v; }),
             on_recv(b, [&](std::optional<int> v) { got = v; }));
      from_selector.send(got);
    }
  });
  auto result = [&] { return from_selector.recv().value(); };
  auto parked_on_b = [&] {
    return test_util::eventually(
        [&] { return detail::stats_of(b).blocked_receivers == 1; });
  };
  to_selector.send(1);
  ASSERT_TRUE(parked_on_b());
  a.send(1);  // fired through a: its node on b stays queued, stale
  EXPECT_EQ(result(), std::optional<int>(1));
  EXPECT_EQ(b.try_send(2), ChanStatus::kWouldBlock);  // takes the node out
  EXPECT_EQ(pins_of(b), 0u);
  to_selector.send(1);
  ASSERT_TRUE(parked_on_b());
  EXPECT_EQ(pins_of(b), 1u);
  EXPECT_EQ(b.try_send(3), ChanStatus::kOk);
  EXPECT_EQ(result(), std::optional<int>(3));
  // That select parked its case on a, which had fired last, in a's lone
  // slot, and withdrew it when b fired; the next select queues a's node.
  EXPECT_EQ(pins_of(a), 0u);
  to_selector.send(1);
  ASSERT_TRUE(test_util::eventually(
      [&] { return detail::stats_of(a).blocked_receivers == 1; }));
  EXPECT_EQ(b.try_send(4), ChanStatus::kOk);
  EXPECT_EQ(result(), std::optional<int>(4));
  // And a close that meets a stale node: the next select sees the close.
  EXPECT_EQ(pins_of(a), 1u);  // fired through b: a's node kept
  a.close();
  EXPECT_EQ(pins_of(a), 0u);
  to_selector.send(1);
  EXPECT_EQ(result(), std::nullopt);
  to_selector.close();
  selector.join();
}

// Which waiter, if any, sits in `ch`'s lone slot (ChanCore::lone_): 'r' a
// receiver, 's' a sender, 0 none.
template <class T>
char lone_in(const Chan<T>& ch) {
  const uintptr_t l = detail::state_of(ch)->lone_.peek();
  if (l == 0) return 0;
  return (l & detail::ChanCore::kLoneSend) != 0 ? 's' : 'r';
}

// A select's case that fired the last time parks in its unbuffered
// channel's lone slot, and the select takes it out when another case fires
// (so the slot never refers to a select that is over, or to a thread that
// has exited); the other cases keep their nodes. Receive and send cases,
// a trivially copyable value and one that is not (sent by address).
TEST(Select, ACaseThatFiredLastParksInTheLoneSlotAndLeavesWithItsSelect) {
  auto a = make_chan<int>();
  auto b = make_chan<int>();
  auto s = make_chan<std::string>();
  Chan<int> to_selector = make_chan<int>();
  Chan<std::optional<int>> from_selector = make_chan<std::optional<int>>(1);
  std::thread selector([&] {
    while (std::optional<int> round = to_selector.recv()) {
      std::optional<int> got;
      if (*round == 0) {
        select(on_recv(a, [&](std::optional<int> v) { got = v; }),
               on_recv(b, [&](std::optional<int> v) { got = v.value_or(-1); }));
      } else {
        select(on_send(s, std::string(40, 'x'), [&] { got = 40; }),
               on_recv(b, [&](std::optional<int> v) { got = v; }));
      }
      from_selector.send(got);
    }
  });
  auto result = [&] { return from_selector.recv().value(); };
  auto parked = [&](auto& ch, bool sender) {
    return test_util::eventually([&] {
      const detail::ChanStats st = detail::stats_of(ch);
      return (sender ? st.blocked_senders : st.blocked_receivers) == 1;
    });
  };
  to_selector.send(0);
  ASSERT_TRUE(parked(b, false));
  EXPECT_EQ(lone_in(a), 0);  // no history yet: nodes on both
  a.send(1);
  EXPECT_EQ(result(), std::optional<int>(1));
  to_selector.send(0);
  ASSERT_TRUE(parked(a, false));
  EXPECT_EQ(lone_in(a), 'r');  // fired last time
  EXPECT_EQ(pins_of(a), 1u);   // pinned by its lone entry
  EXPECT_EQ(lone_in(b), 0);    // b's node, still queued from the first select
  EXPECT_EQ(pins_of(b), 1u);
  a.send(2);
  EXPECT_EQ(result(), std::optional<int>(2));
  to_selector.send(0);
  ASSERT_TRUE(parked(a, false));
  EXPECT_EQ(lone_in(a), 'r');
  EXPECT_EQ(b.try_send(3), ChanStatus::kOk);  // fires through b...
  EXPECT_EQ(result(), std::optional<int>(3));
  EXPECT_EQ(lone_in(a), 0);  // ...and the select left a's slot
  EXPECT_EQ(a.try_send(4), ChanStatus::kWouldBlock);

  // A send case: its value (a std::string, by address) reaches a receiver.
  to_selector.send(1);
  ASSERT_TRUE(parked(s, true));
  EXPECT_EQ(s.recv(), std::string(40, 'x'));
  EXPECT_EQ(result(), std::optional<int>(40));
  to_selector.send(1);
  ASSERT_TRUE(parked(s, true));
  EXPECT_EQ(lone_in(s), 's');
  EXPECT_EQ(s.recv(), std::string(40, 'x'));
  EXPECT_EQ(result(), std::optional<int>(40));
  // A close reaches the select's lone case with that case's index.
  to_selector.send(1);
  ASSERT_TRUE(parked(s, true));
  EXPECT_EQ(lone_in(s), 's');
  EXPECT_EQ(b.try_send(5), ChanStatus::kOk);
  EXPECT_EQ(result(), std::optional<int>(5));
  EXPECT_EQ(lone_in(s), 0);
  to_selector.send(0);
  ASSERT_TRUE(parked(b, false));
  EXPECT_EQ(lone_in(b), 'r');
  b.close();
  EXPECT_EQ(result(), std::optional<int>(-1));  // b's case saw the close
  to_selector.close();
  selector.join();
  EXPECT_EQ(lone_in(a), 0);
  EXPECT_EQ(lone_in(s), 0);
}

// The same, in the moment between a select's look at its kept node and its
// re-registration (here: while it waits for the lock of its other channel,
// which the test holds): the compare-and-swap fails, and the select
// withdraws and starts over instead of waiting unregistered on k. (When
// the select has not reached that lock after the sleep below, it queues
// the node under k's lock instead, and the test passes either way.)
TEST(Select, AKeptNodeTakenOutWhileItsSelectRegistersMakesItStartOver) {
  auto k = make_chan<int>();
  auto q = make_chan<int>();
  auto go_on = make_chan<int>();
  std::optional<int> got;
  std::size_t fired = 99;
  std::thread selector([&] {
    EXPECT_EQ(select(on_recv(k), on_recv(q)), 1u);  // keeps its node on k
    go_on.recv();
    fired =
        select(on_recv(k, [&](std::optional<int> v) { got = v; }), on_recv(q));
  });
  ASSERT_TRUE(test_util::eventually(
      [&] { return detail::stats_of(q).blocked_receivers == 1; }));
  q.send(1);
  detail::ChanState<int>* qs = detail::state_of(q);
  qs->lock();
  go_on.send(1);
  std::this_thread::sleep_for(20ms);  // lets the select reach q's lock
  EXPECT_EQ(k.try_send(9), ChanStatus::kWouldBlock);  // takes k's node out
  qs->unlock();
  const bool sent =
      test_util::eventually([&] { return k.try_send(5) == ChanStatus::kOk; });
  if (!sent) q.close();  // frees the selector instead of hanging
  selector.join();
  EXPECT_TRUE(sent);
  EXPECT_EQ(fired, 0u);
  EXPECT_EQ(got, std::optional<int>(5));
}

// A thread that takes a stale kept node out writes the node (its links,
// its pin) until it hands the node back (WaitNode::kRemoving); the owner's
// next select, which reuses the node for another channel, waits for that.
// Found by review: under ThreadSanitizer, a race between the remover's
// WaitQueue::remove and the owner's push_back on every run before the fix.
// (The relaxed `dropped` orders nothing: only the node's hand-back may.)
TEST(Select, AStaleNodeTakenOutByAnotherThreadIsReusedOnlyOnceItIsOut) {
  constexpr int kRounds = 300;
  auto d = make_chan<int>();
  std::vector<Chan<int>> c;
  for (int i = 0; i < kRounds; ++i) c.push_back(make_chan<int>());
  std::atomic<int> dropped{-1};
  std::thread other([&] {
    for (int i = 0; i < kRounds; ++i) {
      while (detail::stats_of(c[i]).blocked_receivers != 1) {
        std::this_thread::yield();
      }
      d.send(i);  // fires the select through d
      EXPECT_EQ(c[i].try_send(7), ChanStatus::kWouldBlock);  // takes c[i]'s
                                                             // node out
      dropped.store(i, std::memory_order_relaxed);
    }
  });
  for (int i = 0; i < kRounds; ++i) {
    while (dropped.load(std::memory_order_relaxed) != i - 1) {
      std::this_thread::yield();
    }
    ASSERT_EQ(select(on_recv(c[i]), on_recv(d)), 1u);
  }
  other.join();
}

// The last handle of a channel that holds a kept node goes: the channel is
// freed (its release takes the stale node out), and the thread's later
// selects, which reuse the node for other channels (more than the thread
// keeps), never touch the freed one (a use after free under ASan).
TEST(Select, AChannelDroppedWhileAThreadKeepsANodeOnItIsFreed) {
  auto a = make_chan<int>();
  auto b = std::make_unique<Chan<int>>(make_chan<int>());
  Chan<int> go_on = make_chan<int>();
  std::thread selector([&] {
    EXPECT_EQ(select(on_recv(a), on_recv(*b)), 0u);
    go_on.recv();
    // Twenty channels in turn, each select fired by a value already there.
    for (int i = 0; i < 20; ++i) {
      auto c = make_chan<int>(1);
      c.send(i);
      auto d = make_chan<int>();
      EXPECT_EQ(select(on_recv(d), on_recv(c)), 1u);
    }
  });
  ASSERT_TRUE(test_util::eventually(
      [&] { return detail::stats_of(*b).blocked_receivers == 1; }));
  a.send(1);
  ASSERT_TRUE(test_util::eventually(
      [&] { return detail::stats_of(*b).blocked_receivers == 0; }));
  b.reset();  // the last handle: b's stale node is taken out, b freed
  go_on.send(1);
  selector.join();
}

// A thread keeps a few nodes; a select over channels it has no node for
// takes the least recently used, withdrawing it from its channel.
TEST(Select, AThreadKeepsAFewNodesAndWithdrawsTheOldest) {
  std::vector<Chan<int>> chans;
  for (int i = 0; i < 20; ++i) chans.push_back(make_chan<int>(1));
  auto never = make_chan<int>();
  std::thread selector([&] {
    for (int i = 0; i < 20; ++i) {
      chans[i].send(i);
      select(on_recv(never), on_recv(chans[i]));
    }
  });
  selector.join();
  // Pass 1 found each value: nothing was registered, nothing pinned.
  uint32_t pinned = 0;
  for (auto& c : chans) pinned += pins_of(c);
  EXPECT_EQ(pinned, 0u);

  std::atomic<int> done{0};
  std::thread waiter([&] {
    for (int i = 0; i < 20; ++i) {
      select(on_recv(never), on_recv(chans[i]));
      ++done;
    }
    // Still running: its kept nodes stay queued.
    while (done.load() != 21) std::this_thread::yield();
  });
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(test_util::eventually(
        [&] { return detail::stats_of(chans[i]).blocked_receivers == 1; }));
    chans[i].send(i);
    ASSERT_TRUE(test_util::eventually([&] { return done.load() == i + 1; }));
  }
  // never's node (used by every select) and at most 7 others stay queued.
  pinned = 0;
  for (auto& c : chans) pinned += pins_of(c);
  EXPECT_EQ(pins_of(never), 1u);
  EXPECT_LE(pinned, 7u);
  EXPECT_EQ(pins_of(chans[0]), 0u);  // the oldest was withdrawn
  done = 21;
  waiter.join();
  EXPECT_EQ(pins_of(never), 0u);
}

// A readiness callback that a waiting select runs itself (its registration
// made the channel ready for a send) may select too, and even wait: it
// cannot use the waiting select's kept nodes and waiter (see KeptNodes in
// select.cc), whose registration would be lost.
TEST(Select, ACallbackRunByAWaitingSelectMaySelectItself) {
  auto x = make_chan<int>();
  auto quit = make_chan<int>();
  auto late = make_chan<int>();
  std::optional<int> nested;
  PendingOp watch = x.ready_async(/*for_send=*/true, [&] {
    select(on_recv(late, [&](std::optional<int> v) { nested = v; }),
           on_recv(quit));
  });
  std::optional<int> got;
  std::size_t fired = 99;
  std::thread selector([&] {
    fired = select(on_recv(x, [&](std::optional<int> v) { got = v; }),
                   on_recv(quit));
  });
  // The callback waits in its own select, on the selector's thread.
  const bool nested_parked = test_util::eventually(
      [&] { return detail::stats_of(late).blocked_receivers == 1; });
  if (nested_parked) late.send(7);
  const bool sent = nested_parked && test_util::eventually([&] {
                      return x.try_send(5) == ChanStatus::kOk;
                    });
  if (!sent) quit.close();  // frees the selector instead of hanging
  selector.join();
  EXPECT_TRUE(nested_parked);
  EXPECT_TRUE(sent);
  EXPECT_EQ(fired, 0u);
  EXPECT_EQ(got, std::optional<int>(5));
  EXPECT_EQ(nested, std::optional<int>(7));
}

// A parked select that a counterparty fires still has to withdraw from its
// other channels; by then the counterparty may have dropped their last
// handles (here: the very handle the select's case was made from). The
// select keeps them alive itself (a use after free under ASan otherwise).
TEST(Select, AFiredSelectOutlivesTheHandlesItsCasesWereMadeFrom) {
  for (int round = 0; round < 200; ++round) {
    auto a = std::make_unique<Chan<int>>(make_chan<int>());
    auto b = std::make_unique<Chan<int>>(make_chan<int>());
    std::atomic<bool> done{false};
    std::thread selector([&] {
      EXPECT_EQ(select(on_recv(*a), on_recv(*b)), 0u);
      done = true;
    });
    const auto deadline = std::chrono::steady_clock::now() + kLiveness;
    while (detail::stats_of(*b).blocked_receivers == 0) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline);
      std::this_thread::yield();
    }
    a->send(round);  // fires the select, which then withdraws from b
    b.reset();
    a.reset();
    selector.join();
    EXPECT_TRUE(done);
  }
}

// Two channels behind one owner, whose last reference a callback drops.
struct TwoChannels {
  Chan<int> x = make_chan<int>();
  Chan<int> y = make_chan<int>();
};

// close(x) completes the receivers it claimed one after another: here an
// asynchronous receive first, whose callback drops the last handles of both
// channels of a select that the same close() fired next (allowed: the
// select has fired). The select still withdraws from y, so y must outlive
// it without close() waiting for the select, which only this close() can
// complete (a channel destruction that waited for the select's withdrawal
// hung here).
TEST(Select, ACloseMayDropTheHandlesOfASelectItFiresWhileFiringIt) {
  auto obj = std::make_shared<TwoChannels>();
  TwoChannels* raw = obj.get();
  PendingOp r = obj->x.recv_async(
      [keep = obj](std::optional<int>) mutable { keep.reset(); });
  std::atomic<bool> fired{false};
  std::thread selector([raw, &fired] {
    EXPECT_EQ(select(on_recv(raw->x), on_recv(raw->y)), 0u);
    fired = true;
  });
  ASSERT_TRUE(test_util::eventually(
      [&] { return detail::stats_of(obj->x).blocked_receivers == 2; }));
  Chan<int> x = obj->x;
  obj.reset();  // the asynchronous receive's callback holds the last owner
  std::atomic<bool> closed{false};
  std::thread closer([x, &closed]() mutable {
    x.close();
    closed = true;
  });
  if (!test_util::eventually([&] { return closed && fired; })) {
    closer.detach();  // stuck: report instead of hanging the binary
    selector.detach();
    FAIL() << "close() or the select it fired never returned";
  }
  closer.join();
  selector.join();
}

// The same with y in the select's lone slot (its case fired in the
// thread's previous select): the lone entry pins y as a queued node would,
// so the select's withdrawal from y after x's close() fired it finds y
// alive (found in review: without the pin, a use after free under
// AddressSanitizer).
TEST(Select, ACloseMayDropTheHandlesOfASelectWhoseOtherCaseIsLone) {
  auto obj = std::make_shared<TwoChannels>();
  TwoChannels* raw = obj.get();
  PendingOp r = obj->x.recv_async(
      [keep = obj](std::optional<int>) mutable { keep.reset(); });
  Chan<int> go_on = make_chan<int>();
  std::atomic<int> second{-1};
  std::thread selector([raw, &second, go_on]() mutable {
    EXPECT_EQ(select(on_recv(raw->x), on_recv(raw->y)), 1u);  // y fires
    go_on.recv();
    second = static_cast<int>(select(on_recv(raw->x), on_recv(raw->y)));
  });
  ASSERT_TRUE(test_util::eventually(
      [&] { return detail::stats_of(obj->y).blocked_receivers == 1; }));
  obj->y.send(1);
  go_on.send(1);
  ASSERT_TRUE(test_util::eventually([&] {
    return detail::stats_of(obj->y).blocked_receivers == 1 &&
           detail::stats_of(obj->x).blocked_receivers == 2;
  }));
  EXPECT_NE(detail::state_of(obj->y)->lone_.peek(), 0u);
  EXPECT_EQ(pins_of(obj->y), 1u);  // the lone entry's pin
  Chan<int> x = obj->x;
  obj.reset();  // the asynchronous receive's callback holds the last owner
  x.close();    // its callback drops y; then the select fires through x
  selector.join();
  EXPECT_EQ(second.load(), 0);
}

// A select's registration on x makes a readiness watcher ready, whose
// callback then runs on the select's own thread as it unlocks, before it
// waits. Meanwhile another thread fires the select through y and drops its
// handles (allowed: the select has fired), and the callback drops the last
// handles of x and y: the channels must outlive the select's withdrawal
// without anybody waiting for it (a destruction that waited hung here, on
// the very thread that has to withdraw).
TEST(Select, AWatcherCallbackRunByTheSelectMayDropItsChannels) {
  auto obj = std::make_shared<TwoChannels>();
  TwoChannels* raw = obj.get();
  PendingOp watch =
      obj->x.ready_async(/*for_send=*/true, [keep = obj]() mutable {
        std::this_thread::sleep_for(100ms);  // lets the sender fire the select
        keep.reset();
      });
  std::atomic<bool> fired{false};
  std::thread selector([raw, &fired] {
    EXPECT_EQ(select(on_recv(raw->x), on_recv(raw->y)), 1u);
    fired = true;
  });
  ASSERT_TRUE(test_util::eventually(
      [&] { return detail::stats_of(obj->y).blocked_receivers == 1; }));
  obj->y.send(1);
  obj.reset();  // the watcher's callback holds the last owner
  if (!test_util::eventually([&] { return fired.load(); })) {
    selector.detach();  // stuck: report instead of hanging the binary
    FAIL() << "the select never returned";
  }
  selector.join();
}

// A case's function may destroy its own Case: a run-time case list that
// its quit case clears (a use after free under ASan when the case touched
// itself after running its function; found by review).
TEST(Select, ACaseFunctionMayDestroyItsOwnCase) {
  auto data = make_chan<int>(1);
  auto quit = make_chan<int>(1);
  std::vector<Case> cases;
  int got = 0;
  cases.emplace_back(
      on_recv(data, [&](std::optional<int> v) { got += v.value_or(0); }));
  cases.emplace_back(on_recv(quit, [&](std::optional<int>) { cases.clear(); }));
  data.send(1);
  quit.send(1);
  while (!cases.empty()) select(std::span<Case>(cases));
  EXPECT_LE(got, 1);
}

// A dchan::Case holds its channel: cases built in a loop from handles that
// are gone by the time select runs still work.
TEST(Select, ACaseHoldsItsChannelPastTheHandleItWasMadeFrom) {
  std::vector<Case> cases;
  std::set<int> got;
  for (int i = 0; i < 3; ++i) {
    Chan<int> c = make_chan<int>(1);
    c.send(i);
    cases.push_back(
        on_recv(c, [&got](std::optional<int> v) { got.insert(v.value()); }));
  }  // every handle is gone: only the cases hold the channels
  for (int i = 0; i < 3; ++i) select(cases);
  EXPECT_EQ(got, (std::set<int>{0, 1, 2}));
}

// Selectors receive from two channels fed by several producers while other
// selectors race send cases against them: nothing is lost or duplicated.
TEST(Select, StressEveryValueIsReceivedExactlyOnce) {
  constexpr int kProducers = 2, kPerProducer = 20000, kSelectors = 3;
  auto a = make_chan<int>();
  auto b = make_chan<int>(8);
  auto quit = make_chan<int>();
  std::vector<std::atomic<int>> seen(kProducers * kPerProducer);
  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        const int v = p * kPerProducer + i;
        // Alternate plain sends and select sends.
        if (i % 2 == 0) {
          (p == 0 ? a : b).send(v);
        } else {
          select(on_send(a, v), on_send(b, v));
        }
      }
    });
  }
  std::atomic<int> received{0};
  for (int s = 0; s < kSelectors; ++s) {
    threads.emplace_back([&] {
      bool done = false;
      while (!done) {
        auto take = [&](std::optional<int> v) {
          if (v) {
            seen[*v].fetch_add(1);
            ++received;
          }
        };
        select(on_recv(a, take), on_recv(b, take),
               on_recv(quit, [&](std::optional<int>) { done = true; }));
      }
    });
  }
  for (int p = 0; p < kProducers; ++p) threads[p].join();
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (received.load() < kProducers * kPerProducer &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  quit.close();
  for (std::size_t i = kProducers; i < threads.size(); ++i) threads[i].join();
  EXPECT_EQ(received.load(), kProducers * kPerProducer);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    ASSERT_EQ(seen[i].load(), 1) << "value " << i;
  }
  // Every registration's pin is gone, whoever dropped its node.
  EXPECT_EQ(pins_of(a), 0u);
  EXPECT_EQ(pins_of(b), 0u);
  EXPECT_EQ(pins_of(quit), 0u);
}

// Two threads ping-pong through selects that also receive from two "poke"
// channels, which a third thread sends to and receives from without
// blocking: its operations meet the selects' kept nodes (see KeptNodes in
// select.cc) stale or live, so re-registrations fail, selects start over,
// and pokes fire selects at random. Nothing is lost or taken twice, and a
// close at the end reaches both.
TEST(Select, StressKeptNodesMeetPokesAndACloseAndLoseNothing) {
  constexpr int kRounds = 10000;
  auto ping = make_chan<int>();
  auto pong = make_chan<int>();
  auto poke = make_chan<int>();
  auto bpoke = make_chan<int>(1);
  auto quit = make_chan<int>();
  std::atomic<int> pokes_sent{0}, pokes_got{0}, finished{0};
  auto take = [&](std::optional<int> v) {
    if (v) ++pokes_got;
  };
  // One operation on `ch`, taking pokes until it fires; false on quit.
  auto send_via = [&](Chan<int>& ch, int v) {
    for (;;) {
      switch (select(on_send(ch, v), on_recv(poke, take), on_recv(bpoke, take),
                     on_recv(quit))) {
        case 0:
          return true;
        case 3:
          return false;
      }
    }
  };
  auto recv_via = [&](Chan<int>& ch) -> std::optional<int> {
    for (;;) {
      std::optional<int> got;
      switch (select(on_recv(ch, [&](std::optional<int> v) { got = v; }),
                     on_recv(poke, take), on_recv(bpoke, take),
                     on_recv(quit))) {
        case 0:
          return got;
        case 3:
          return std::nullopt;
      }
    }
  };
  auto wait_for_quit = [&] {
    while (select(on_recv(ping), on_recv(poke, take), on_recv(bpoke, take),
                  on_recv(quit)) != 3) {
    }
  };
  std::thread a([&] {
    for (int i = 0; i < kRounds; ++i) {
      ASSERT_TRUE(send_via(ping, i));
      ASSERT_EQ(recv_via(pong), std::optional<int>(i));
    }
    ++finished;
    wait_for_quit();
  });
  std::thread b([&] {
    for (int i = 0; i < kRounds; ++i) {
      ASSERT_EQ(recv_via(ping), std::optional<int>(i));
      ASSERT_TRUE(send_via(pong, i));
    }
    ++finished;
    wait_for_quit();
  });
  std::atomic<bool> stop{false};
  std::thread poker([&] {
    for (uint32_t r = 1; !stop.load(); r = r * 1103515245 + 12345) {
      switch ((r >> 16) % 4) {
        case 0:
          if (poke.try_send(1) == ChanStatus::kOk) ++pokes_sent;
          break;
        case 1:
          if (bpoke.try_send(1) == ChanStatus::kOk) ++pokes_sent;
          break;
        case 2:
          if (bpoke.try_recv().ok()) --pokes_sent;
          break;
        default:
          std::this_thread::yield();
      }
    }
  });
  const bool done =
      test_util::eventually([&] { return finished.load() == 2; }, 120'000ms);
  stop = true;
  poker.join();
  quit.close();  // also frees a side stuck by a failed assertion
  a.join();
  b.join();
  ASSERT_TRUE(done);
  if (bpoke.try_recv().ok()) --pokes_sent;
  EXPECT_EQ(pokes_got.load(), pokes_sent.load());
  for (Chan<int>* ch : {&ping, &pong, &poke, &bpoke, &quit}) {
    EXPECT_EQ(pins_of(*ch), 0u);  // the threads' exits took their nodes out
  }
}

// A readiness watcher woken while a select registers on several channels
// runs only after every channel lock is released: here its callback uses the
// other channel of the select, which would deadlock under the lock.
TEST(Select, WatcherCallbacksRunWithNoChannelLocked) {
  auto a = make_chan<int>();
  auto b = make_chan<int>();
  const bool a_lower = detail::state_of(a) < detail::state_of(b);
  Chan<int> hi = a_lower ? b : a;
  Chan<int> lo = a_lower ? a : b;
  std::atomic<bool> watcher_ran{false};
  PendingOp watch = hi.ready_async(/*for_send=*/true, [&] {
    lo.len();  // takes lo's lock
    watcher_ran = true;
  });
  std::atomic<bool> selected{false};
  std::thread selector([&] {
    select(on_recv(a), on_recv(b));
    selected = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + kLiveness;
  while (!watcher_ran && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_TRUE(watcher_ran.load()) << "watcher deadlocked inside the select";
  a.send(1);
  selector.join();
  EXPECT_TRUE(selected.load());
}

TEST(SelectAsync, FiresInlineWhenACaseIsReady) {
  auto a = make_chan<std::string>();
  auto b = make_chan<std::string>(1);
  b.send("x");
  std::optional<SelectOutcome<std::string>> out;
  PendingOp op = select_async<std::string>(
      {{a, false, {}}, {b, false, {}}}, false,
      [&](SelectOutcome<std::string> o) { out = std::move(o); });
  EXPECT_FALSE(op.pending());
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->index, 1u);
  EXPECT_EQ(out->status, ChanStatus::kOk);
  EXPECT_EQ(out->value, "x");
}

TEST(SelectAsync, NonblockingReportsWouldBlock) {
  auto a = make_chan<std::string>();
  std::optional<SelectOutcome<std::string>> out;
  select_async<std::string>({{a, false, {}}, {a, true, "v"}}, true,
                            [&](SelectOutcome<std::string> o) { out = o; });
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, ChanStatus::kWouldBlock);
  EXPECT_EQ(out->index, 2u);
}

TEST(SelectAsync, PendingSelectFiresOnceAndWithdrawsItsOtherCases) {
  auto a = make_chan<std::string>();
  auto b = make_chan<std::string>();
  int fired = 0;
  std::optional<SelectOutcome<std::string>> out;
  PendingOp op =
      select_async<std::string>({{a, false, {}}, {b, true, "to-b"}}, false,
                                [&](SelectOutcome<std::string> o) {
                                  ++fired;
                                  out = std::move(o);
                                });
  EXPECT_TRUE(op.pending());
  EXPECT_EQ(a.try_send("to-a"), ChanStatus::kOk);
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(out->index, 0u);
  EXPECT_EQ(out->value, "to-a");
  // Its send case on b is gone: b has no sender.
  EXPECT_EQ(b.try_recv().status, ChanStatus::kWouldBlock);
  EXPECT_EQ(a.try_send("again"), ChanStatus::kWouldBlock);
  EXPECT_FALSE(op.cancel());
}

TEST(SelectAsync, SendCaseDeliversAndCloseReportsClosed) {
  auto a = make_chan<std::string>();
  std::optional<SelectOutcome<std::string>> out;
  PendingOp op = select_async<std::string>(
      {{a, true, "hello"}}, false,
      [&](SelectOutcome<std::string> o) { out = std::move(o); });
  EXPECT_EQ(a.recv(), "hello");
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, ChanStatus::kOk);

  out.reset();
  op = select_async<std::string>(
      {{a, true, "never"}}, false,
      [&](SelectOutcome<std::string> o) { out = std::move(o); });
  a.close();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->status, ChanStatus::kClosed);
}

TEST(SelectAsync, CancelWithdrawsEveryCase) {
  auto a = make_chan<std::string>();
  auto b = make_chan<std::string>();
  bool ran = false;
  PendingOp op = select_async<std::string>(
      {{a, false, {}}, {b, true, "v"}}, false,
      [&](SelectOutcome<std::string>) { ran = true; });
  EXPECT_TRUE(op.cancel());
  EXPECT_EQ(a.try_send("x"), ChanStatus::kWouldBlock);
  EXPECT_EQ(b.try_recv().status, ChanStatus::kWouldBlock);
  EXPECT_FALSE(ran);
}

TEST(SelectAsync, ManyPendingSelectsEachGetExactlyOneValue) {
  constexpr int kSelects = 1000;
  auto a = make_chan<std::string>();
  auto b = make_chan<std::string>();
  std::vector<std::string> got(kSelects);
  std::vector<PendingOp> ops;
  for (int i = 0; i < kSelects; ++i) {
    ops.push_back(select_async<std::string>(
        {{a, false, {}}, {b, false, {}}}, false,
        [&got, i](SelectOutcome<std::string> o) { got[i] = *o.value; }));
  }
  std::thread pa([&] {
    for (int i = 0; i < kSelects / 2; ++i) a.send("a" + std::to_string(i));
  });
  std::thread pb([&] {
    for (int i = 0; i < kSelects / 2; ++i) b.send("b" + std::to_string(i));
  });
  pa.join();
  pb.join();
  std::set<std::string> distinct(got.begin(), got.end());
  EXPECT_EQ(distinct.size(), static_cast<std::size_t>(kSelects));
  EXPECT_EQ(distinct.count(""), 0u);
}

// --- Spanning selects and the broker's offers (a fake broker) -------------

// Two selects that each mix a local channel with the same unbuffered broker
// channel, one sending and one receiving, meet through their offers.
TEST(SpanningSelect, TwoSpanningSelectsMeetThroughTheirOffers) {
  test_util::FakeOfferBroker broker;
  Chan<int64_t> remote = detail::make_remote_chan<int64_t>(
      std::make_shared<test_util::FakeOfferBroker::Chan>(&broker));
  Chan<int64_t> local_a = make_chan<int64_t>(), local_b = make_chan<int64_t>();
  std::optional<int64_t> got;
  std::thread receiver([&] {
    EXPECT_EQ(
        select(on_recv(remote, [&](std::optional<int64_t> v) { got = v; }),
               on_recv(local_b)),
        0u);
  });
  bool sent = false;
  EXPECT_EQ(select(on_send(remote, int64_t{7}, [&] { sent = true; }),
                   on_recv(local_a)),
            0u);
  receiver.join();
  EXPECT_TRUE(sent);
  EXPECT_EQ(got, 7);
  EXPECT_GE(broker.claims(), 2);
}

// A sender's spanning select races a local counterparty on its local case
// against the broker's claims on its offer, round after round: each round
// exactly one case fires — every value reaches the receiver exactly once
// and in order, every local value is taken exactly once — whatever wins.
TEST(SpanningSelect, LocalCounterpartiesAndClaimsRaceAndExactlyOneCaseFires) {
  constexpr int64_t kValues = 300, kLocal = 300;
  test_util::FakeOfferBroker broker;
  Chan<int64_t> remote = detail::make_remote_chan<int64_t>(
      std::make_shared<test_util::FakeOfferBroker::Chan>(&broker));
  Chan<int64_t> local = make_chan<int64_t>();  // the sender's local case
  Chan<int64_t> quit = make_chan<int64_t>();   // the receiver's local case
  std::thread feeder([&] {
    for (int64_t i = 0; i < kLocal; ++i) local.send(i);
  });
  std::vector<int64_t> received;
  std::thread receiver([&] {
    bool done = false;
    while (!done) {
      select(on_recv(remote,
                     [&](std::optional<int64_t> v) {
                       ASSERT_TRUE(v.has_value());
                       received.push_back(*v);
                     }),
             on_recv(quit, [&](std::optional<int64_t>) { done = true; }));
    }
  });
  int64_t next = 0, locals = 0, local_sum = 0;
  while (next < kValues || locals < kLocal) {
    if (next < kValues) {
      select(on_send(remote, next, [&] { ++next; }),
             on_recv(local, [&](std::optional<int64_t> v) {
               ++locals;
               local_sum += *v;
             }));
    } else {
      local_sum += *local.recv();
      ++locals;
    }
  }
  quit.close();
  receiver.join();
  feeder.join();
  ASSERT_EQ(received.size(), static_cast<std::size_t>(kValues));
  for (int64_t i = 0; i < kValues; ++i) ASSERT_EQ(received[i], i);
  EXPECT_EQ(local_sum, kLocal * (kLocal - 1) / 2);
}

// Two selects each offering a send on one channel and a receive on the
// other (their offers cross): every round ends with one commit, never a
// deadlock; aborts only make a select poll again.
TEST(SpanningSelect, CrossingOffersOnTwoChannelsNeverDeadlock) {
  constexpr int kRounds = 200;
  test_util::FakeOfferBroker broker;
  Chan<int64_t> x = detail::make_remote_chan<int64_t>(
      std::make_shared<test_util::FakeOfferBroker::Chan>(&broker));
  Chan<int64_t> y = detail::make_remote_chan<int64_t>(
      std::make_shared<test_util::FakeOfferBroker::Chan>(&broker));
  Chan<int64_t> never_a = make_chan<int64_t>(), never_b = make_chan<int64_t>();
  std::atomic<int64_t> fired_a{0}, fired_b{0}, sent_sum{0}, got_sum{0};
  auto side = [&](Chan<int64_t> out, Chan<int64_t> in, Chan<int64_t> never,
                  int64_t base, std::atomic<int64_t>& fired,
                  std::atomic<int64_t>& sum) {
    for (int r = 0; r < kRounds; ++r) {
      select(on_send(out, base + r,
                     [&, v = base + r] {
                       ++fired;
                       sent_sum += v;
                     }),
             on_recv(in,
                     [&](std::optional<int64_t> v) {
                       ++fired;
                       sum += *v;
                     }),
             on_recv(never));
    }
  };
  std::thread a([&] { side(x, y, never_a, 0, fired_a, got_sum); });
  std::thread b([&] { side(y, x, never_b, 1000000, fired_b, got_sum); });
  a.join();
  b.join();
  EXPECT_EQ(fired_a.load(), kRounds);
  EXPECT_EQ(fired_b.load(), kRounds);
  EXPECT_EQ(got_sum.load(), sent_sum.load());
}

}  // namespace
}  // namespace dchan
