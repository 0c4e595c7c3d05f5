// The client API of broker-hosted sync objects — Client::mutex, rw_mutex,
// wait_group, atomic_value — against a real dchan-broker (one per test, on
// 127.0.0.1). Two Clients in one process are two sessions, so "another
// process" is played by a second Client here; the multi-process scenarios
// (kill -9, SIGSTOP of a holder, contention between processes) live in the
// process-level tests.
//
// Every wait is bounded: the bounds are liveness bounds, not performance
// assertions.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "gtest/gtest.h"

namespace dchan::testing {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

// How long a condition that should come about may take (liveness bound).
constexpr milliseconds kBound = 20s;

// Runs `fn`, which must throw dchan::Error with `code` and a message that
// contains `text`; returns the message.
std::string expect_error(const std::function<void()>& fn, absl::StatusCode code,
                         const std::string& text = "") {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_TRUE(absl::StrContains(e.what(), text))
        << "\"" << e.what() << "\" lacks \"" << text << "\"";
    return e.what();
  }
  ADD_FAILURE() << "no dchan::Error (expected code " << static_cast<int>(code)
                << ")";
  return "";
}

bool eventually(const std::function<bool()>& cond,
                milliseconds limit = kBound) {
  const auto deadline = steady_clock::now() + limit;
  while (!cond()) {
    if (steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Whether process `pid` is stopped (SIGSTOP has taken effect).
bool is_stopped(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const size_t close = line.rfind(')');  // "PID (COMM) STATE ..."
  return close != std::string::npos && close + 2 < line.size() &&
         line[close + 2] == 'T';
}

// Returns once the broker has applied every request `c` sent so far: an
// unlock returns before that (only `c`'s own later requests are sure to
// come after it), so another session's try_lock needs this first.
void settle(Client& c) { c.wait_group("settle").count(); }

ClientOptions named(const std::string& name) {
  ClientOptions o;
  o.name = name;
  return o;
}

TEST(RemoteSyncApi, ClientReportsItsNameAndTheGrantedSessionTtl) {
  BrokerProcess broker;
  ClientOptions o = named("api-test");
  o.session_ttl = 2s;
  Client c = Client::connect(broker.address(), o);
  EXPECT_EQ(c.name(), "api-test");
  EXPECT_EQ(c.session_ttl(), 2s);
  EXPECT_GT(c.session_id(), 0u);

  Client d = Client::connect(broker.address());               // defaults
  EXPECT_TRUE(absl::StrContains(d.name(), ":")) << d.name();  // hostname:pid
  EXPECT_EQ(d.session_ttl(), 10s);
  EXPECT_NE(d.session_id(), c.session_id());

  ClientOptions tiny;
  tiny.session_ttl = 1ms;  // below the broker's --min_session_ttl_ms (100)
  EXPECT_EQ(Client::connect(broker.address(), tiny).session_ttl(), 100ms);
}

TEST(RemoteMutex, LockTryLockAndUnlockAcrossTwoSessions) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  Mutex ma = a.mutex("m");
  Mutex mb = b.mutex("m");
  EXPECT_TRUE(ma.is_remote());
  EXPECT_NE(ma, mb);  // two sessions' handles

  ma.lock();
  const uint64_t t1 = ma.token();
  EXPECT_GT(t1, 0u);
  EXPECT_FALSE(mb.try_lock());
  const auto start = steady_clock::now();
  EXPECT_FALSE(mb.try_lock_for(100ms));
  EXPECT_GE(steady_clock::now() - start, 100ms);
  EXPECT_FALSE(mb.try_lock_until(std::chrono::system_clock::now() + 20ms));
  ma.unlock();
  settle(a);

  ASSERT_TRUE(mb.try_lock());
  const uint64_t t2 = mb.token();
  EXPECT_GT(t2, t1);
  EXPECT_FALSE(ma.try_lock());
  mb.unlock();
  ASSERT_TRUE(ma.try_lock_for(1s));
  EXPECT_GT(ma.token(), t2);
  ma.unlock();
}

TEST(RemoteMutex, BlockedLockIsGrantedWhenTheHolderUnlocks) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  Mutex ma = a.mutex("m");
  Mutex mb = b.mutex("m");
  ma.lock();
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    mb.lock();
    got = true;
  });
  std::this_thread::sleep_for(50ms);  // let it queue (either way: correct)
  EXPECT_FALSE(got.load());
  ma.unlock();
  waiter.join();
  EXPECT_TRUE(got.load());
  EXPECT_FALSE(ma.try_lock());
  mb.unlock();
}

TEST(RemoteMutex, TimedOutLockIsWithdrawnAndTakesNothing) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  Client c = Client::connect(broker.address());
  Mutex ma = a.mutex("m");
  Mutex mb = b.mutex("m");
  Mutex mc = c.mutex("m");
  ma.lock();
  EXPECT_FALSE(mb.try_lock_for(50ms));  // queued, then withdrawn
  ma.unlock();
  settle(a);
  // Had b's request stayed queued, it would hold the lock now.
  ASSERT_TRUE(mc.try_lock());
  mc.unlock();
  settle(c);
  ASSERT_TRUE(mb.try_lock());  // b holds nothing it does not know of
  mb.unlock();
}

TEST(RemoteMutex, ManyThreadsOfTwoSessionsNeverOverlap) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  constexpr int kPerThread = 50;
  std::atomic<int> inside{0};
  std::atomic<int> overlaps{0};
  int64_t counter = 0;
  uint64_t last_token = 0;
  std::atomic<int> token_regressions{0};
  std::vector<std::thread> threads;
  for (Client* c : {&a, &a, &b, &b}) {
    threads.emplace_back([&, mu = c->mutex("counter")]() mutable {
      for (int i = 0; i < kPerThread; ++i) {
        std::lock_guard<Mutex> hold(mu);
        if (inside.fetch_add(1) != 0) ++overlaps;
        if (mu.token() <= last_token) ++token_regressions;
        last_token = mu.token();
        ++counter;
        inside.fetch_sub(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(token_regressions.load(), 0);
  EXPECT_EQ(counter, 4 * kPerThread);
}

TEST(RemoteMutex, WorksWithStandardLockTypes) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  Mutex x = a.mutex("x");
  Mutex y = a.mutex("y");
  { std::lock_guard<Mutex> hold(x); }
  {
    std::unique_lock<Mutex> hold(x, std::try_to_lock);
    EXPECT_TRUE(hold.owns_lock());
    Mutex bx = b.mutex("x");
    std::unique_lock<Mutex> other(bx, std::defer_lock);
    EXPECT_FALSE(other.try_lock_for(10ms));
  }
  {
    std::unique_lock<Mutex> hold(x, 1s);  // try_lock_for
    EXPECT_TRUE(hold.owns_lock());
  }
  {
    std::scoped_lock both(x, y);
    EXPECT_FALSE(b.mutex("y").try_lock());
  }
  settle(a);
  EXPECT_TRUE(b.mutex("y").try_lock());
  b.mutex("y").unlock();  // any handle of the holding session may unlock
}

TEST(RemoteMutex, HandlesOfOneClientForOneNameShareTheLock) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Mutex m1 = a.mutex("m");
  Mutex m2 = a.mutex("m");
  EXPECT_EQ(m1, m2);
  m1.lock();
  EXPECT_FALSE(m2.try_lock());  // the session holds it: not reentrant
  EXPECT_EQ(m2.token(), m1.token());
  std::thread([m2]() mutable { m2.unlock(); }).join();  // any thread
  EXPECT_TRUE(m1.try_lock());
  m1.unlock();
}

TEST(RemoteMutex, UnlockOfUnlockedThrowsGosMessage) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  Mutex ma = a.mutex("m");
  expect_error([&] { ma.unlock(); }, absl::StatusCode::kFailedPrecondition,
               "sync: unlock of unlocked mutex");
  ma.lock();
  // Held by another session: not this one's to unlock.
  expect_error([&] { b.mutex("m").unlock(); },
               absl::StatusCode::kFailedPrecondition,
               "sync: unlock of unlocked mutex");
  ma.unlock();  // unchanged: still held by a
}

TEST(RemoteMutex, HoldTokenCanStopOnlyWhileHeld) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Mutex m = a.mutex("m");
  EXPECT_FALSE(m.hold_token().stop_possible());
  m.lock();
  std::stop_token held = m.hold_token();
  EXPECT_TRUE(held.stop_possible());
  EXPECT_FALSE(held.stop_requested());
  m.unlock();
  EXPECT_FALSE(held.stop_requested());  // released, not lost
  EXPECT_FALSE(m.hold_token().stop_possible());
}

TEST(RemoteMutex, BrokerKilledWhileHeldStopsTheHoldTokenAndUnlockAborts) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Mutex m = a.mutex("lost");
  WaitGroup wg = a.wait_group("wg");
  std::unique_lock<Mutex> hold(m);
  const uint64_t token = m.token();
  std::atomic<bool> told{false};
  std::atomic<int> code_in_callback{-1};
  std::atomic<int> other_code_in_callback{-1};
  std::stop_callback on_loss(m.hold_token(), [&] {
    // Runs on the thread that noticed (here the client's reader): an
    // operation on the lost lock must fail at once, not wait on that thread.
    try {
      Mutex(m).unlock();
    } catch (const Error& e) {
      code_in_callback = static_cast<int>(e.code());
    }
    try {
      WaitGroup(wg).count();  // another object: a call on the connection
    } catch (const Error& e) {
      other_code_in_callback = static_cast<int>(e.code());
    }
    told = true;
  });
  broker.kill();
  ASSERT_TRUE(eventually([&] { return told.load(); }))
      << "the hold token was not stopped after the broker died";
  EXPECT_EQ(code_in_callback.load(),
            static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_EQ(other_code_in_callback.load(),
            static_cast<int>(absl::StatusCode::kUnavailable));
  const std::string msg =
      expect_error([&] { hold.unlock(); }, absl::StatusCode::kAborted,
                   "dchan: lock \"lost\" was lost while held (token " +
                       std::to_string(token) + "): ");
  hold.release();
  // Every later operation on the lost lock says so too; others: kUnavailable.
  expect_error([&] { m.lock(); }, absl::StatusCode::kAborted, msg);
  expect_error([&] { wg.add(1); }, absl::StatusCode::kUnavailable);
  expect_error([&] { a.mutex("other"); }, absl::StatusCode::kUnavailable);
}

TEST(RemoteMutex, SilentBrokerPastTheTtlMakesTheClientDeclareTheLoss) {
  BrokerProcess broker;
  ClientOptions o;
  o.session_ttl = 500ms;
  // Keepalive far beyond the TTL: the client's own TTL check must notice.
  o.keepalive_time = 60s;
  o.keepalive_timeout = 60s;
  Client a = Client::connect(broker.address(), o);
  RWMutex m = a.rw_mutex("frozen");
  m.lock_shared();
  std::stop_token held = m.hold_token();
  broker.signal(SIGSTOP);
  const auto start = steady_clock::now();
  const bool stopped = eventually([&] { return held.stop_requested(); });
  const auto waited = steady_clock::now() - start;
  broker.signal(SIGCONT);
  ASSERT_TRUE(stopped) << "no loss declared while the broker was silent";
  EXPECT_LT(waited, 5s);  // the TTL (0.5 s), not the keepalive (120 s)
  expect_error([&] { m.unlock_shared(); }, absl::StatusCode::kAborted,
               "nothing heard from it for");
  expect_error([&] { a.rw_mutex("other"); }, absl::StatusCode::kUnavailable,
               "nothing heard from it for");
}

TEST(RemoteMutex, UnlockReturnsAtOnceAndALossBeforeItsAnswerIsThrownNext) {
  BrokerProcess broker;
  ClientOptions o;
  o.session_ttl = 500ms;
  o.keepalive_time = 60s;  // the client's own TTL check notices the loss
  o.keepalive_timeout = 60s;
  Client a = Client::connect(broker.address(), o);
  Mutex m = a.mutex("m");
  RWMutex rw = a.rw_mutex("rw");
  m.lock();
  rw.lock_shared();
  const uint64_t token = m.token();
  broker.signal(SIGSTOP);
  ASSERT_TRUE(eventually([&] { return is_stopped(broker.pid()); }));
  // Neither waits for the frozen broker (they would throw the loss here).
  m.unlock();
  rw.unlock_shared();
  EXPECT_FALSE(m.hold_token().stop_possible());   // released, as far as
  EXPECT_FALSE(rw.hold_token().stop_possible());  // this client knows
  // Any call waits for the loss, declared at the TTL.
  expect_error([&] { a.wait_group("probe"); }, absl::StatusCode::kUnavailable);
  broker.signal(SIGCONT);
  // The broker never confirmed the releases: the locks were lost while
  // held, and every operation on them says so.
  const std::string msg = "dchan: lock \"m\" was lost while held (token " +
                          std::to_string(token) + "): ";
  expect_error([&] { m.lock(); }, absl::StatusCode::kAborted, msg);
  expect_error([&] { m.try_lock(); }, absl::StatusCode::kAborted, msg);
  expect_error([&] { rw.lock_shared(); }, absl::StatusCode::kAborted,
               "dchan: lock \"rw\" was lost while held");
}

TEST(RemoteMutex, DroppingTheLastHandleAfterUnlockWaitsUntilItIsApplied) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  Mutex mb = b.mutex("m");
  std::optional<Mutex> m = a.mutex("m");
  m->lock();
  broker.signal(SIGSTOP);
  ASSERT_TRUE(eventually([&] { return is_stopped(broker.pid()); }));
  m->unlock();  // returns: it does not wait for the frozen broker
  std::atomic<bool> dropped{false};
  std::thread dropper([&] {
    m.reset();  // the last handle: waits for the unlock's answer
    dropped = true;
  });
  // No answer can come while the broker is frozen (however long this is).
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(dropped.load());
  broker.signal(SIGCONT);
  dropper.join();
  EXPECT_TRUE(mb.try_lock());  // the unlock was applied before it returned
  mb.unlock();
}

TEST(RemoteMutex, AnotherSessionsUnlockHandsTheLockOnWhileWaitingForNothing) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  Mutex ma = a.mutex("m");
  Mutex mb = b.mutex("m");
  AtomicValue<int64_t> inside = a.atomic_value<int64_t>("inside");
  AtomicValue<int64_t> total = b.atomic_value<int64_t>("total");
  inside.store(0);
  total.store(0);
  constexpr int kRounds = 200;
  auto work = [](Mutex m, AtomicValue<int64_t> in, AtomicValue<int64_t> sum) {
    for (int i = 0; i < kRounds; ++i) {
      m.lock();
      // Nobody else inside: the unlock before this lock was applied first.
      EXPECT_TRUE(in.compare_and_swap(0, 1));
      sum.store(sum.load().value_or(0) + 1);
      EXPECT_TRUE(in.compare_and_swap(1, 0));
      m.unlock();
    }
  };
  std::thread ta(work, ma, inside, a.atomic_value<int64_t>("total"));
  std::thread tb(work, mb, b.atomic_value<int64_t>("inside"), total);
  ta.join();
  tb.join();
  EXPECT_EQ(total.load(), std::optional<int64_t>(2 * kRounds));
}

TEST(RemoteRWMutex, ReadersShareAndAWriterExcludes) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  RWMutex ra = a.rw_mutex("table");
  RWMutex rb = b.rw_mutex("table");
  EXPECT_TRUE(ra.is_remote());
  {
    std::shared_lock<RWMutex> r1(ra);
    std::shared_lock<RWMutex> r2(rb, std::try_to_lock);
    EXPECT_TRUE(r2.owns_lock());
    EXPECT_TRUE(ra.hold_token().stop_possible());
    EXPECT_FALSE(rb.try_lock());
  }
  uint64_t t1 = 0;
  {
    std::lock_guard<RWMutex> w(rb);
    t1 = rb.token();
    EXPECT_GT(t1, 0u);
    EXPECT_FALSE(ra.try_lock_shared());
    EXPECT_FALSE(ra.try_lock());
  }
  uint64_t t2 = 0;
  {
    std::unique_lock<RWMutex> w(ra);
    t2 = ra.token();
    EXPECT_GT(t2, t1);
  }
  {
    // A read hold carries the last writer's token, in a session that never
    // wrote too.
    Client c = Client::connect(broker.address());
    RWMutex rc = c.rw_mutex("table");
    std::shared_lock<RWMutex> r(rc);
    EXPECT_EQ(rc.token(), t2);
  }
  // A blocked reader is let in when the writer leaves.
  rb.lock();
  std::thread reader([ra]() mutable {
    ra.lock_shared();
    ra.unlock_shared();
  });
  std::this_thread::sleep_for(20ms);
  rb.unlock();
  reader.join();
}

TEST(RemoteRWMutex, UnlocksOfUnlockedThrowGosMessages) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  RWMutex m = a.rw_mutex("rw");
  expect_error([&] { m.unlock(); }, absl::StatusCode::kFailedPrecondition,
               "sync: Unlock of unlocked RWMutex");
  expect_error([&] { m.unlock_shared(); },
               absl::StatusCode::kFailedPrecondition,
               "sync: RUnlock of unlocked RWMutex");
  m.lock();
  m.unlock();
}

TEST(RemoteWaitGroup, AddDoneWaitAndCountAcrossSessions) {
  BrokerProcess broker;
  Client coord = Client::connect(broker.address());
  Client worker = Client::connect(broker.address());
  WaitGroup wg = coord.wait_group("jobs");
  EXPECT_TRUE(wg.is_remote());
  EXPECT_EQ(wg.count(), 0);
  EXPECT_TRUE(wg.wait_for(0ms));  // zero: at once
  wg.add(2);
  EXPECT_EQ(wg.count(), 2);
  EXPECT_FALSE(wg.wait_for(50ms));
  EXPECT_FALSE(wg.wait_until(std::chrono::system_clock::now() + 10ms));
  std::thread t([wk = worker.wait_group("jobs")]() mutable {
    wk.done();
    wk.done();
  });
  wg.wait();
  t.join();
  EXPECT_EQ(wg.count(), 0);
  expect_error([&] { wg.done(); }, absl::StatusCode::kFailedPrecondition,
               "sync: negative WaitGroup counter");
  EXPECT_EQ(wg.count(), 0);
}

TEST(RemoteWaitGroup, ParticipantLostOwingDonesFailsWaitNamingIt) {
  BrokerProcess broker;
  Client coord = Client::connect(broker.address());
  WaitGroup wg = coord.wait_group("jobs");
  {
    Client worker = Client::connect(broker.address(), named("worker-2"));
    worker.wait_group("jobs").add(1);
    EXPECT_EQ(wg.count(), 1);
  }  // the worker's session ends owing one Done
  expect_error([&] { wg.wait(); }, absl::StatusCode::kAborted, "worker-2");
  wg.add(1);  // a new round
  wg.done();
  EXPECT_TRUE(wg.wait_for(1s));
}

TEST(RemoteWaitGroup, ForgiveCountsALostParticipantsDebtAsDone) {
  BrokerProcess broker;
  Client coord = Client::connect(broker.address());
  WaitGroup wg = coord.wait_group("jobs", {.forgive = true});
  {
    Client worker = Client::connect(broker.address(), named("worker-3"));
    worker.wait_group("jobs", {.forgive = true}).add(1);
  }
  EXPECT_TRUE(wg.wait_for(kBound));
  // Every process must agree on the setting.
  expect_error([&] { coord.wait_group("jobs"); },
               absl::StatusCode::kInvalidArgument);
}

TEST(RemoteAtomicValue, LoadStoreSwapAndCompareAndSwapAcrossSessions) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  AtomicValue<int64_t> va = a.atomic_value<int64_t>("n");
  AtomicValue<int64_t> vb = b.atomic_value<int64_t>("n");
  EXPECT_TRUE(va.is_remote());
  EXPECT_EQ(va.load(), std::nullopt);
  EXPECT_FALSE(va.compare_and_swap(0, 1));  // nothing stored yet
  va.store(41);
  EXPECT_EQ(vb.load(), 41);
  EXPECT_EQ(vb.swap(42), 41);
  EXPECT_FALSE(va.compare_and_swap(41, 50));
  EXPECT_TRUE(va.compare_and_swap(42, 43));
  EXPECT_EQ(vb.load(), 43);

  AtomicValue<std::string> s = a.atomic_value<std::string>("config");
  s.store("v1");
  EXPECT_EQ(b.atomic_value<std::string>("config").swap("v2"), "v1");
  EXPECT_EQ(s.load(), "v2");
}

TEST(RemoteAtomicValue, ConcurrentCompareAndSwapIncrementsLoseNothing) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  Client b = Client::connect(broker.address());
  a.atomic_value<int64_t>("ctr").store(0);
  constexpr int kPerThread = 50;
  std::vector<std::thread> threads;
  for (Client* c : {&a, &b}) {
    threads.emplace_back([v = c->atomic_value<int64_t>("ctr")]() mutable {
      for (int i = 0; i < kPerThread; ++i) {
        for (;;) {
          const int64_t cur = *v.load();
          if (v.compare_and_swap(cur, cur + 1)) break;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(a.atomic_value<int64_t>("ctr").load(), 2 * kPerThread);
}

TEST(RemoteSyncApi, HandlesAreReleasedWithTheirLastUser) {
  // A session may hold 8 handles at once: far fewer than this test opens.
  BrokerProcess broker({"--max_handles_per_session=8"});
  Client a = Client::connect(broker.address());
  Chan<std::string> kept = a.chan<std::string>("kept", 1);
  for (int i = 0; i < 40; ++i) {
    const std::string n = std::to_string(i);
    Chan<std::string> ch = a.chan<std::string>("chan-" + n, 1);
    ch.send(n);
    EXPECT_EQ(ch.recv(), n);
    Mutex mu = a.mutex("mutex-" + n);
    { std::lock_guard<Mutex> hold(mu); }
    WaitGroup wg = a.wait_group("wg-" + n);
    wg.add(1);
    wg.done();
    AtomicValue<std::string> v = a.atomic_value<std::string>("value-" + n);
    v.store(n);
    EXPECT_EQ(v.load(), n);
  }
  kept.send("still open");
  EXPECT_EQ(kept.recv(), "still open");
  std::optional<std::vector<SessionState>> sessions = broker.sessions();
  ASSERT_TRUE(sessions.has_value());
  ASSERT_EQ(sessions->size(), 1u);
  EXPECT_LE(sessions->front().open_handles, 2u);  // "kept" (+ at most one)
}

TEST(RemoteSyncApi, TypeAndKindMismatchesAreInvalidArgument) {
  BrokerProcess broker;
  Client a = Client::connect(broker.address());
  // Held: an object nobody holds, left as it was made, is forgotten, and
  // its name is then free for another type or kind (below).
  AtomicValue<int64_t> v = a.atomic_value<int64_t>("v");
  expect_error([&] { a.atomic_value<std::string>("v"); },
               absl::StatusCode::kInvalidArgument);
  std::optional<Chan<int>> c = a.chan<int>("c");
  expect_error([&] { a.mutex("c"); }, absl::StatusCode::kInvalidArgument);
  Mutex held = a.mutex("m");
  expect_error([&] { a.rw_mutex("m"); }, absl::StatusCode::kInvalidArgument);
  expect_error([&] { a.wait_group("m"); }, absl::StatusCode::kInvalidArgument);
  expect_error([&] { a.chan<int>("m"); }, absl::StatusCode::kInvalidArgument);
  // The broker is unharmed: the names still work as what they are.
  Mutex m = a.mutex("m");
  m.lock();
  m.unlock();
  // Dropped while empty, the channel is forgotten (its release goes ahead
  // of the next open on the session): "c" can now be a mutex.
  c.reset();
  Mutex now_a_mutex = a.mutex("c");
  now_a_mutex.lock();
  now_a_mutex.unlock();
}

// Untimed, timed and non-blocking calls of many threads on two sessions, with
// a short TTL so that pings (asynchronous calls) run all along: the read role
// keeps moving between callers and the background reader, and nothing hangs
// or is declared lost.
TEST(RemoteSyncApi, MixedCallsOfManyThreadsWithFrequentPingsNeverHang) {
  BrokerProcess broker({"--min_session_ttl_ms=100"});
  ClientOptions o;
  o.session_ttl = 200ms;
  Client a = Client::connect(broker.address(), o);
  Client b = Client::connect(broker.address(), o);
  Mutex ma = a.mutex("m");
  Mutex mb = b.mutex("m");
  WaitGroup wg = a.wait_group("wg");
  AtomicValue<int64_t> v = a.atomic_value<int64_t>("v");
  v.store(0);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> ops{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      Mutex m = t % 2 == 0 ? ma : mb;
      while (!stop.load()) {
        switch (t % 3) {
          case 0:
            if (m.try_lock_for(1ms)) m.unlock();
            break;
          case 1:
            m.lock();
            m.unlock();
            break;
          case 2:
            (void)wg.count();
            (void)wg.wait_for(1us);
            (void)v.load();
            break;
        }
        ++ops;
      }
    });
  }
  std::this_thread::sleep_for(3s);
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_GT(ops.load(), 100);
  EXPECT_FALSE(ma.hold_token().stop_possible());
  ma.lock();  // the session is still alive: not lost meanwhile
  ma.unlock();
}

}  // namespace
}  // namespace dchan::testing
