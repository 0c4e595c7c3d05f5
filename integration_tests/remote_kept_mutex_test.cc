// A broker Mutex opened with MutexOptions::keep, against a real
// dchan-broker on 127.0.0.1 (short session TTL, kTtl): the client keeps the
// lock after unlock() and takes it back without the broker until another
// request waits for it.
//
//   - relocks are local: the broker sees one acquisition per block of
//     tokens, still held by the keeper's session, while the tokens the
//     keeper's lock() returns go up one by one, across blocks too;
//   - another Client gets a kept lock that no thread holds, with a token
//     above the keeper's block; the keeper then waits its turn; a process
//     that polls with try_lock() gets it too;
//   - a kept lock held when it is wanted goes back at its holder's unlock;
//     two threads of the keeping Client take turns through the broker;
//   - misuse (mixed keep settings for one name, an unlock of a kept lock no
//     thread holds) is refused and changes nothing;
//   - the last handle dropped gives a kept lock back at once, also while
//     another's request makes the keeper release it (many threads of
//     keeping and plain Clients: no overlap, no token regression);
//   - a keeper process frozen (SIGSTOP) holds others up until its session
//     ends, and no longer.
//
// Every wait is bounded; the bounds are liveness bounds, not performance
// assertions.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "gtest/gtest.h"
#include "sync_test_util.h"

namespace dchan::testing {
namespace {

// The token block a kept Mutex reserves per acquisition on the broker
// (client/src/sync.cc, kKeptTokenBlock).
constexpr uint64_t kBlock = 4096;

Mutex kept(Client& c, const std::string& name) {
  return c.mutex(name, MutexOptions{.keep = true});
}

auto queued_at_least(uint64_t n) {
  return [n](const ObjectState& s) { return s.queued_lockers >= n; };
}

// The sessions holding lock `name` (empty if the broker forgot it).
std::vector<uint64_t> holders(BrokerProcess& broker, const std::string& name) {
  const std::optional<ObjectState> st = broker.object_state(name);
  return st.has_value() ? st->holder_sessions : std::vector<uint64_t>{};
}

// Each test: a broker of its own, and the keeping Client `a`.
class RemoteKeptMutex : public ::testing::Test {
 protected:
  BrokerProcess broker{short_ttl_broker_args()};
  Client a = connect_client(broker, "keeper");
};

TEST_F(RemoteKeptMutex, RelocksAreLocalAndTheirTokensGoUpOneByOne) {
  Mutex m = kept(a, "m");
  m.lock();
  const uint64_t first = m.token();
  m.unlock();
  std::optional<ObjectState> st = broker.object_state("m");
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->holder_sessions, std::vector<uint64_t>{a.session_id()})
      << "not kept after unlock";
  EXPECT_EQ(st->token, first + kBlock - 1) << "the block is not reserved";
  // Two blocks and a bit: each block's last unlock gives the lock back, and
  // the next lock() takes a new block on the broker.
  uint64_t last = first;
  for (uint64_t i = 1; i < 2 * kBlock + 10; ++i) {
    m.lock();
    ASSERT_EQ(m.token(), last + 1) << "acquisition " << i;
    last = m.token();
    m.unlock();
  }
  st = broker.object_state("m");
  ASSERT_TRUE(st.has_value());
  // Three acquisitions on the broker in all: one per block.
  EXPECT_EQ(st->token, first + 3 * kBlock - 1);
  EXPECT_EQ(st->holder_sessions, std::vector<uint64_t>{a.session_id()});
  EXPECT_EQ(st->queued_lockers, 0u);
}

TEST_F(RemoteKeptMutex, AnotherClientGetsAKeptLockThatNoThreadHolds) {
  Client b = connect_client(broker, "other");
  Mutex ma = kept(a, "m");
  Mutex mb = b.mutex("m");
  ma.lock();
  const uint64_t first = ma.token();
  ma.unlock();
  ASSERT_TRUE(mb.try_lock_for(kBrokerStateBound))
      << "a kept lock that no thread held was not handed on";
  EXPECT_GT(mb.token(), first + kBlock - 1) << "not above the keeper's block";
  EXPECT_FALSE(ma.try_lock()) << "the keeper took back a lock another holds";
  // The keeper's next lock() waits its turn on the broker.
  std::atomic<bool> got{false};
  std::thread keeper([&] { got = ma.try_lock_for(kBrokerStateBound); });
  EXPECT_TRUE(
      broker.wait_for_object("m", queued_at_least(1), kBrokerStateBound));
  mb.unlock();
  keeper.join();
  ASSERT_TRUE(got);
  EXPECT_GT(ma.token(), mb.token());
  ma.unlock();
  EXPECT_EQ(holders(broker, "m"), std::vector<uint64_t>{a.session_id()})
      << "kept again after its turn";
}

TEST_F(RemoteKeptMutex, AProcessPollingWithTryLockGetsAKeptLock) {
  Client b = connect_client(broker, "poller");
  Mutex ma = kept(a, "m");
  Mutex mb = b.mutex("m");
  ma.lock();
  ma.unlock();
  // A refused try_lock asks for the lock: the keeper gives it back, and a
  // later try finds it free (the keeper takes no turn meanwhile).
  const steady_clock::time_point give_up =
      steady_clock::now() + kBrokerStateBound;
  bool got = false;
  while (!(got = mb.try_lock()) && steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  ASSERT_TRUE(got) << "polling with try_lock never got a kept lock";
  EXPECT_EQ(holders(broker, "m"), std::vector<uint64_t>{b.session_id()});
  mb.unlock();
}

TEST_F(RemoteKeptMutex, AKeptLockHeldWhenWantedGoesBackAtItsHoldersUnlock) {
  Client b = connect_client(broker, "other");
  Mutex ma = kept(a, "m");
  Mutex mb = b.mutex("m");
  ma.lock();
  ma.unlock();
  ma.lock();  // taken back locally, held
  const uint64_t held_token = ma.token();
  std::atomic<bool> got{false};
  std::thread other([&] { got = mb.try_lock_for(kBrokerStateBound); });
  ASSERT_TRUE(
      broker.wait_for_object("m", queued_at_least(1), kBrokerStateBound));
  EXPECT_EQ(holders(broker, "m"), std::vector<uint64_t>{a.session_id()});
  ma.unlock();
  other.join();
  ASSERT_TRUE(got) << "the holder's unlock did not give the lock back";
  EXPECT_GT(mb.token(), held_token);
  mb.unlock();
}

TEST_F(RemoteKeptMutex, ThreadsOfTheKeepingClientTakeTurnsThroughTheBroker) {
  Mutex m = kept(a, "m");
  m.lock();
  const uint64_t first = m.token();
  std::atomic<uint64_t> second{0};
  std::thread t([&] {
    if (m.try_lock_for(kBrokerStateBound)) {
      second = m.token();
      m.unlock();
    }
  });
  // The second thread waits on the broker, behind its own session's hold.
  ASSERT_TRUE(
      broker.wait_for_object("m", queued_at_least(1), kBrokerStateBound));
  m.unlock();
  t.join();
  EXPECT_GT(second.load(), first + kBlock - 1);
  // Kept again after the second thread's unlock: taken back locally.
  m.lock();
  EXPECT_EQ(m.token(), second.load() + 1);
  m.unlock();
}

// unlock() of `m`, which no thread holds, throws Go's error.
void expect_unlock_refused(Mutex& m, const std::string& what) {
  try {
    m.unlock();
    ADD_FAILURE() << "unlock of " << what << " returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kFailedPrecondition) << what;
    EXPECT_STREQ(e.what(), "sync: unlock of unlocked mutex") << what;
  }
}

TEST_F(RemoteKeptMutex, MisuseIsRefusedAndChangesNothing) {
  Mutex m = kept(a, "m");
  try {
    a.mutex("m");
    ADD_FAILURE() << "a second keep setting for one name was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument) << e.what();
  }
  Mutex plain = a.mutex("n");
  EXPECT_THROW(kept(a, "n"), Error);
  // Not held yet: the broker answers, as for any Mutex.
  expect_unlock_refused(m, "a free lock");
  m.lock();
  const uint64_t first = m.token();
  m.unlock();
  // Kept, held by no thread: refused here, and it stays kept.
  expect_unlock_refused(m, "a kept lock no thread holds");
  EXPECT_EQ(holders(broker, "m"), std::vector<uint64_t>{a.session_id()});
  m.lock();
  EXPECT_EQ(m.token(), first + 1);
  m.unlock();
}

TEST_F(RemoteKeptMutex, DroppingTheLastHandleGivesAKeptLockBack) {
  {
    Mutex m = kept(a, "m");
    m.lock();
    m.unlock();
    ASSERT_EQ(holders(broker, "m"), std::vector<uint64_t>{a.session_id()});
  }
  // The Client lives on: only the handle's release can have freed it.
  const steady_clock::time_point give_up =
      steady_clock::now() + kBrokerStateBound;
  while (!holders(broker, "m").empty() && steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_TRUE(holders(broker, "m").empty())
      << "still held after its last handle was dropped";
  Mutex again = kept(a, "m");
  ASSERT_TRUE(again.try_lock());
  again.unlock();
}

// Threads of two keeping Clients and of a plain one, and a thread that
// opens, uses and drops a kept handle over and over (its drop racing the
// release that another's request causes), all on one lock: never two
// holders, tokens only go up, and nobody waits for a lock that no thread
// holds. (Review found such a wait: a handle dropped while the wanted
// answer's callback released the lock sent its handle's release first; the
// broker refused the unlock that followed, and the session kept the lock
// for good. That window is too narrow for this test to hit reliably here;
// the review reproduced it with a delay in the callback.)
TEST_F(RemoteKeptMutex, KeepersAndOthersInManyThreadsNeverOverlapOrStick) {
  Client c = connect_client(broker, "keeper-2");
  Client b = connect_client(broker, "plain");
  Client d = connect_client(broker, "reopener");
  std::atomic<int> inside{0}, overlaps{0}, regressions{0}, stuck{0};
  std::atomic<int> acquisitions{0};
  uint64_t last = 0;  // under the lock
  // kind 0: try_lock_for(the liveness bound); 1: try_lock(); 2: a short
  // timed lock (withdrawn on the broker when it expires).
  auto take_turns = [&](Mutex m, int kind, int rounds) {
    for (int i = 0; i < rounds; ++i) {
      bool got = false;
      if (kind == 0) {
        got = m.try_lock_for(kBrokerStateBound);
        if (!got) ++stuck;
      } else if (kind == 1) {
        got = m.try_lock();
      } else {
        got = m.try_lock_for(std::chrono::microseconds(200 + (i % 7) * 100));
      }
      if (!got) continue;
      if (inside.fetch_add(1) != 0) ++overlaps;
      if (m.token() <= last) ++regressions;
      last = m.token();
      ++acquisitions;
      if (i % 13 == 0) std::this_thread::yield();
      inside.fetch_sub(1);
      m.unlock();
    }
  };
  std::vector<std::thread> threads;
  for (int kind = 0; kind < 3; ++kind) {
    threads.emplace_back(take_turns, kept(a, "s"), kind, 3000);
  }
  for (int kind = 0; kind < 2; ++kind) {
    threads.emplace_back(take_turns, kept(c, "s"), kind, 3000);
  }
  threads.emplace_back(take_turns, b.mutex("s"), 0, 1500);
  threads.emplace_back(take_turns, b.mutex("s"), 2, 1500);
  threads.emplace_back([&] {
    for (int i = 0; i < 1500; ++i) take_turns(kept(d, "s"), i % 3, 3);
  });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(overlaps, 0);
  EXPECT_EQ(regressions, 0);
  EXPECT_EQ(stuck, 0) << "a lock was not handed on within the bound";
  EXPECT_GT(acquisitions, 0);
}

TEST_F(RemoteKeptMutex, AFrozenKeeperHoldsOthersUpUntilItsSessionEnds) {
  Process keeper = sync_worker(
      "lock-once", broker,
      {"--lock=m", "--kind=mutex-keep", "--stay=1", "--client_name=keeper"});
  ASSERT_TRUE(keeper.wait_for_output("unlocked\n", kWorkerBound))
      << keeper.wait(milliseconds(0));
  const uint64_t keeper_token = locked_token(keeper.output_so_far());
  ASSERT_EQ(holders(broker, "m").size(), 1u) << "not kept";
  keeper.signal(SIGSTOP);
  const int64_t frozen_at = steady_now_ns();
  Client b = connect_client(broker, "other");
  Mutex mb = b.mutex("m");
  ASSERT_TRUE(mb.try_lock_for(kTtl + kLossSlack))
      << "the frozen keeper's session did not end within TTL + slack";
  const int64_t got_at = steady_now_ns();
  EXPECT_GT(mb.token(), keeper_token + kBlock - 1);
  mb.unlock();
  keeper.signal(SIGKILL);
  keeper.wait(kWorkerBound);
  std::printf(
      "MEASURE a frozen keeper held another client up %.1f ms (session TTL "
      "%lld ms)\n",
      static_cast<double>(got_at - frozen_at) / 1e6,
      static_cast<long long>(kTtl.count()));
  std::fflush(stdout);
}

}  // namespace
}  // namespace dchan::testing
