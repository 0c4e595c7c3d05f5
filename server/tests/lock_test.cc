// LockObject: FIFO grants, shared batches, fencing tokens, withdrawal and
// session end, without gRPC or sessions.
#include "lock.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "fake_participant.h"
#include "gtest/gtest.h"

namespace dchan::server {
namespace {

using fakes::FakeParticipant;

// Records the order in which queued requests are granted.
class Grants {
 public:
  LockObject::OnGrant on_grant(std::string who) {
    return [this, who = std::move(who)](uint64_t token) {
      absl::MutexLock lock(&mu_);
      order_.push_back(who);
      tokens_.push_back(token);
    };
  }
  std::vector<std::string> order() {
    absl::MutexLock lock(&mu_);
    return order_;
  }
  std::vector<uint64_t> tokens() {
    absl::MutexLock lock(&mu_);
    return tokens_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> order_;
  std::vector<uint64_t> tokens_;
};

using Names = std::vector<std::string>;

// Takes `lock` at once; fails the test if it queues.
uint64_t take(LockObject& lock, const std::shared_ptr<FakeParticipant>& who,
              bool shared = false) {
  absl::StatusOr<LockObject::Request> r = lock.lock(who, shared);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r.ok() && r->granted) << "not granted at once";
  return r.ok() ? r->token : 0;
}

// Queues a request; fails the test if it is granted at once.
uint64_t queue(LockObject& lock, const std::shared_ptr<FakeParticipant>& who,
               bool shared, Grants& grants, const std::string& name) {
  absl::StatusOr<LockObject::Request> r =
      lock.lock(who, shared, grants.on_grant(name));
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r.ok() && !r->granted) << name << " was granted at once";
  return r.ok() ? r->ticket : 0;
}

TEST(Lock, QueuedRequestsAreGrantedOneAtATimeInArrivalOrder) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2),
       c = FakeParticipant::make(3), d = FakeParticipant::make(4);
  Grants grants;
  take(lock, a);
  queue(lock, c, false, grants, "c");
  queue(lock, b, false, grants, "b");
  queue(lock, d, false, grants, "d");
  EXPECT_EQ(lock.queued(), 3u);
  ASSERT_TRUE(lock.unlock(*a, false, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"c"}));
  ASSERT_TRUE(lock.unlock(*c, false, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"c", "b"}));
  ASSERT_TRUE(lock.unlock(*b, false, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"c", "b", "d"}));
  EXPECT_EQ(lock.holds_of(4), 1u);
  EXPECT_EQ(lock.queued(), 0u);
}

TEST(Lock, ANewRequestQueuesBehindWaitersEvenWhenTheLockIsFree) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2),
       c = FakeParticipant::make(3);
  Grants grants;
  take(lock, a);
  queue(lock, b, false, grants, "b");
  // A non-blocking request does not jump the queue either.
  absl::StatusOr<LockObject::Request> r = lock.lock(c, false);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->granted);
  EXPECT_EQ(r->ticket, 0u) << "a non-blocking request must not queue";
  EXPECT_EQ(lock.queued(), 1u);
}

TEST(Lock, ConsecutiveSharedRequestsAtTheHeadAreGrantedTogether) {
  LockObject lock("rw", v1::OBJECT_KIND_RW_MUTEX);
  auto w1 = FakeParticipant::make(1), r1 = FakeParticipant::make(2),
       r2 = FakeParticipant::make(3), w2 = FakeParticipant::make(4),
       r3 = FakeParticipant::make(5);
  Grants grants;
  take(lock, w1);
  queue(lock, r1, true, grants, "r1");
  queue(lock, r2, true, grants, "r2");
  queue(lock, w2, false, grants, "w2");
  queue(lock, r3, true, grants, "r3");
  ASSERT_TRUE(lock.unlock(*w1, false, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"r1", "r2"}));
  ASSERT_TRUE(lock.unlock(*r1, true, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"r1", "r2"})) << "w2 waits for r2";
  ASSERT_TRUE(lock.unlock(*r2, true, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"r1", "r2", "w2"}));
  ASSERT_TRUE(lock.unlock(*w2, false, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"r1", "r2", "w2", "r3"}));
}

TEST(Lock, AWaitingWriterIsNotStarvedByLaterReaders) {
  LockObject lock("rw", v1::OBJECT_KIND_RW_MUTEX);
  auto r1 = FakeParticipant::make(1), w = FakeParticipant::make(2),
       r2 = FakeParticipant::make(3);
  Grants grants;
  take(lock, r1, true);
  queue(lock, w, false, grants, "w");
  // The lock is read-held, yet a new reader must wait behind the writer.
  queue(lock, r2, true, grants, "r2");
  absl::StatusOr<LockObject::Request> try_read = lock.lock(r2, true);
  ASSERT_TRUE(try_read.ok());
  EXPECT_FALSE(try_read->granted);
  ASSERT_TRUE(lock.unlock(*r1, true, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"w"}));
  ASSERT_TRUE(lock.unlock(*w, false, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"w", "r2"}));
}

TEST(Lock, TokensStrictlyIncreaseAndSharedHoldsGetTheLastExclusiveOne) {
  LockObject lock("rw", v1::OBJECT_KIND_RW_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2);
  EXPECT_EQ(take(lock, a, true), 0u) << "no exclusive acquisition yet";
  ASSERT_TRUE(lock.unlock(*a, true, 0).ok());
  uint64_t last = 0;
  for (int i = 0; i < 5; ++i) {
    const auto& who = i % 2 == 0 ? a : b;
    const uint64_t t = take(lock, who);
    EXPECT_GT(t, last);
    last = t;
    ASSERT_TRUE(lock.unlock(*who, false, t).ok());
  }
  EXPECT_EQ(take(lock, a, true), last);
  EXPECT_EQ(take(lock, b, true), last);
  EXPECT_EQ(lock.token(), last);
  // Queued grants count too.
  Grants grants;
  queue(lock, a, false, grants, "a");
  ASSERT_TRUE(lock.unlock(*a, true, 0).ok());
  ASSERT_TRUE(lock.unlock(*b, true, 0).ok());
  ASSERT_EQ(grants.tokens().size(), 1u);
  EXPECT_EQ(grants.tokens()[0], last + 1);
}

TEST(Lock, AWithdrawnRequestIsNeverGrantedAndUnblocksReadersBehindIt) {
  LockObject lock("rw", v1::OBJECT_KIND_RW_MUTEX);
  auto r1 = FakeParticipant::make(1), w = FakeParticipant::make(2),
       r2 = FakeParticipant::make(3);
  Grants grants;
  take(lock, r1, true);
  const uint64_t ticket = queue(lock, w, false, grants, "w");
  queue(lock, r2, true, grants, "r2");
  EXPECT_TRUE(lock.withdraw(ticket));
  EXPECT_EQ(grants.order(), (Names{"r2"}));
  EXPECT_FALSE(lock.withdraw(ticket)) << "withdrawn twice";
  ASSERT_TRUE(lock.unlock(*r1, true, 0).ok());
  ASSERT_TRUE(lock.unlock(*r2, true, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"r2"}))
      << "the withdrawn writer was granted";
  EXPECT_EQ(lock.holds_of(2), 0u);
}

TEST(Lock, AGrantedRequestCanNoLongerBeWithdrawn) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2);
  Grants grants;
  take(lock, a);
  const uint64_t ticket = queue(lock, b, false, grants, "b");
  ASSERT_TRUE(lock.unlock(*a, false, 0).ok());
  EXPECT_FALSE(lock.withdraw(ticket));
  EXPECT_EQ(lock.holds_of(2), 1u);
}

TEST(Lock, SessionEndReleasesEveryHoldAndHandsTheLockOn) {
  LockObject lock("rw", v1::OBJECT_KIND_RW_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2),
       c = FakeParticipant::make(3);
  Grants grants;
  take(lock, a, true);
  take(lock, a, true);  // two read locks of one session
  queue(lock, b, false, grants, "b");
  EXPECT_EQ(lock.holds_of(1), 2u);
  a->end(lock);
  EXPECT_EQ(grants.order(), (Names{"b"}));
  EXPECT_EQ(lock.holds_of(1), 0u);

  queue(lock, c, false, grants, "c");
  b->end(lock);
  EXPECT_EQ(grants.order(), (Names{"b", "c"}));
  EXPECT_EQ(lock.holds_of(3), 1u);
}

TEST(Lock, SessionEndWithdrawsItsQueuedRequests) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2),
       c = FakeParticipant::make(3);
  Grants grants;
  take(lock, a);
  queue(lock, b, false, grants, "b");
  queue(lock, c, false, grants, "c");
  b->end(lock);
  EXPECT_EQ(lock.queued(), 1u);
  ASSERT_TRUE(lock.unlock(*a, false, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"c"}));
}

TEST(Lock, AGrantSkipsARequestWhoseSessionHasEndedButNotWithdrawnYet) {
  // etcd-io/etcd#11456: the broker must check the waiter's session at grant
  // time, not trust its queue.
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2),
       c = FakeParticipant::make(3);
  Grants grants;
  take(lock, a);
  queue(lock, b, false, grants, "b");
  queue(lock, c, false, grants, "c");
  b->kill();  // ended; its session_ended() has not run yet
  ASSERT_TRUE(lock.unlock(*a, false, 0).ok());
  EXPECT_EQ(grants.order(), (Names{"c"}));
  EXPECT_EQ(lock.holds_of(2), 0u);
  EXPECT_EQ(lock.holds_of(3), 1u);
  // Nor is an ended session ever granted at once.
  ASSERT_TRUE(lock.unlock(*c, false, 0).ok());
  EXPECT_EQ(lock.lock(b, false).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(lock.holds_of(2), 0u);
}

TEST(Lock, UnlockOfALockNotHeldFailsWithGosMessageAndChangesNothing) {
  LockObject m("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2);
  absl::Status st = m.unlock(*a, false, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(), "sync: unlock of unlocked mutex");
  take(m, a);
  st = m.unlock(*b, false, 0);  // held, but by another session
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(), "sync: unlock of unlocked mutex");
  EXPECT_EQ(m.holds_of(1), 1u);

  LockObject rw("rw", v1::OBJECT_KIND_RW_MUTEX);
  st = rw.unlock(*a, false, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(), "sync: Unlock of unlocked RWMutex");
  take(rw, a, true);
  st = rw.unlock(*a, false, 0);  // read-held: not an exclusive hold
  EXPECT_EQ(st.message(), "sync: Unlock of unlocked RWMutex");
  st = rw.unlock(*b, true, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(), "sync: RUnlock of unlocked RWMutex");
  EXPECT_EQ(rw.holds_of(1), 1u);
}

TEST(Lock, UnlockWithAStaleTokenIsAbortedAndTheLockStaysHeld) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1);
  const uint64_t t1 = take(lock, a);
  ASSERT_TRUE(lock.unlock(*a, false, t1).ok());
  const uint64_t t2 = take(lock, a);
  const absl::Status st = lock.unlock(*a, false, t1);
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted);
  EXPECT_NE(st.message().find(std::to_string(t2)), std::string::npos)
      << st.message();
  EXPECT_EQ(lock.holds_of(1), 1u);
  EXPECT_TRUE(lock.unlock(*a, false, 0).ok()) << "token 0 skips the check";
}

TEST(Lock, SharedModeOfAPlainMutexIsInvalidArgument) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1);
  EXPECT_EQ(lock.lock(a, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(lock.unlock(*a, true, 0).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Lock, ManyThreadsNeverOverlapAndEachGrantHasALargerToken) {
  // Each thread is a session that takes the lock through a queued request
  // (the callback signals it), checks that it is alone, and unlocks.
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  constexpr int kThreads = 6, kRounds = 300;
  std::atomic<int> inside{0};
  std::atomic<int> overlaps{0};
  std::atomic<uint64_t> last_token{0};
  std::atomic<int> token_regressions{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto me = FakeParticipant::make(t + 1);
      for (int i = 0; i < kRounds; ++i) {
        auto granted = std::make_shared<absl::Notification>();
        auto token = std::make_shared<std::atomic<uint64_t>>(0);
        absl::StatusOr<LockObject::Request> r =
            lock.lock(me, false, [granted, token](uint64_t tk) {
              token->store(tk);
              granted->Notify();
            });
        ASSERT_TRUE(r.ok());
        uint64_t tk = r->token;
        if (!r->granted) {
          granted->WaitForNotification();
          tk = token->load();
        }
        if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
        if (tk <= last_token.load()) token_regressions.fetch_add(1);
        last_token.store(tk);
        inside.fetch_sub(1);
        ASSERT_TRUE(lock.unlock(*me, false, tk).ok());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(token_regressions.load(), 0);
  EXPECT_EQ(lock.token(), uint64_t{kThreads * kRounds});
  EXPECT_EQ(lock.queued(), 0u);
}

// Token blocks: an acquisition reserves its block; the next one, queued or
// not, gets a token above it; the unlock's check is on the block's first.
TEST(Lock, ATokenBlockIsReservedForItsAcquisition) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2);
  Grants grants;
  absl::StatusOr<LockObject::Request> r = lock.lock(a, false, nullptr, 100);
  ASSERT_TRUE(r.ok() && r->granted);
  EXPECT_EQ(r->token, 1u);
  EXPECT_EQ(lock.token(), 100u);
  ASSERT_TRUE(lock.lock(b, false, grants.on_grant("b"), 10).ok());
  EXPECT_EQ(lock.unlock(*a, false, 2).code(), absl::StatusCode::kAborted)
      << "a token of the block other than its first";
  ASSERT_TRUE(lock.unlock(*a, false, 1).ok());
  EXPECT_EQ(grants.tokens(), (std::vector<uint64_t>{101}));
  EXPECT_EQ(lock.token(), 110u);
  ASSERT_TRUE(lock.unlock(*b, false, 101).ok());
  EXPECT_EQ(take(lock, a), 111u) << "no block: one token";
}

TEST(Lock, TokenBlocksAreForExclusiveRequestsOnAMutexWithinTheLimit) {
  LockObject mutex("m", v1::OBJECT_KIND_MUTEX);
  LockObject rw("rw", v1::OBJECT_KIND_RW_MUTEX);
  auto a = FakeParticipant::make(1);
  EXPECT_EQ(rw.lock(a, false, nullptr, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rw.lock(a, true, nullptr, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(mutex.lock(a, false, nullptr, LockObject::kMaxTokenBlock + 1)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(mutex.token(), 0u) << "a refused request reserved nothing";
  absl::StatusOr<LockObject::Request> r =
      mutex.lock(a, false, nullptr, LockObject::kMaxTokenBlock);
  ASSERT_TRUE(r.ok() && r->granted);
  EXPECT_EQ(mutex.token(), uint64_t{LockObject::kMaxTokenBlock});
  EXPECT_TRUE(rw.lock(a, false, nullptr, 1).ok()) << "1: the one token";
}

// Records what a wanted() callback was told.
struct Told {
  std::atomic<int> wanted{0}, ended{0};
  uint64_t ticket = 0;  // of the last wanted() that is pending
  LockObject::OnWanted on_wanted() {
    return [this](bool w) { ++(w ? wanted : ended); };
  }
};

TEST(Lock, WantedIsToldWhenAnotherRequestQueues) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2);
  Grants grants;
  Told told;
  const uint64_t t = take(lock, a);
  absl::StatusOr<LockObject::Wanted> w =
      lock.wanted(*a, t, told.on_wanted(), &told.ticket);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(*w, LockObject::Wanted::kPending);
  EXPECT_EQ(lock.wanted(*a, t, told.on_wanted(), &told.ticket).status().code(),
            absl::StatusCode::kAlreadyExists);
  queue(lock, b, false, grants, "b");
  EXPECT_EQ(told.wanted, 1);
  // Told once; the unlock then tells nothing more.
  ASSERT_TRUE(lock.unlock(*a, false, t).ok());
  EXPECT_EQ(told.wanted, 1);
  EXPECT_EQ(told.ended, 0);
  EXPECT_EQ(grants.order(), (Names{"b"}));
}

// A process polling with try_lock asks for the lock too.
TEST(Lock, WantedIsToldWhenANonBlockingRequestIsRefused) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2);
  Told told;
  const uint64_t t = take(lock, a);
  ASSERT_TRUE(lock.wanted(*a, t, told.on_wanted(), &told.ticket).ok());
  absl::StatusOr<LockObject::Request> r = lock.lock(b, false);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->granted);
  EXPECT_EQ(lock.queued(), 0u) << "a non-blocking request queues nothing";
  EXPECT_EQ(told.wanted, 1);
  ASSERT_TRUE(lock.unlock(*a, false, t).ok());
  EXPECT_EQ(told.ended, 0) << "told once";
}

TEST(Lock, WantedIsAnsweredAtOnceWhenARequestWaitsOrThereIsNoSuchHold) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2);
  Grants grants;
  Told told;
  EXPECT_EQ(*lock.wanted(*a, 1, told.on_wanted(), &told.ticket),
            LockObject::Wanted::kNoHold);
  const uint64_t t = take(lock, a);
  EXPECT_EQ(*lock.wanted(*b, t, told.on_wanted(), &told.ticket),
            LockObject::Wanted::kNoHold)
      << "another session's";
  EXPECT_EQ(*lock.wanted(*a, t + 1, told.on_wanted(), &told.ticket),
            LockObject::Wanted::kNoHold)
      << "another acquisition's token";
  queue(lock, a, false, grants, "a again");  // its own session's counts too
  EXPECT_EQ(*lock.wanted(*a, t, told.on_wanted(), &told.ticket),
            LockObject::Wanted::kNow);
  EXPECT_EQ(told.wanted + told.ended, 0) << "answered by the result alone";
}

TEST(Lock, WantedIsToldTheHoldEndedAtUnlockButNotAtSessionEnd) {
  LockObject lock("m", v1::OBJECT_KIND_MUTEX);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2);
  Grants grants;
  Told told;
  uint64_t t = take(lock, a);
  ASSERT_TRUE(lock.wanted(*a, t, told.on_wanted(), &told.ticket).ok());
  ASSERT_TRUE(lock.unlock(*a, false, t).ok());
  EXPECT_EQ(told.ended, 1);
  t = take(lock, a);
  ASSERT_TRUE(lock.wanted(*a, t, told.on_wanted(), &told.ticket).ok());
  const uint64_t first = told.ticket;
  EXPECT_TRUE(lock.withdraw_wanted(first));
  EXPECT_FALSE(lock.withdraw_wanted(first)) << "withdrawn already";
  ASSERT_TRUE(lock.wanted(*a, t, told.on_wanted(), &told.ticket).ok())
      << "may ask again";
  EXPECT_FALSE(lock.withdraw_wanted(first)) << "took the newer one";
  queue(lock, b, false, grants, "b");
  EXPECT_EQ(told.wanted, 1);
  ASSERT_TRUE(lock.unlock(*a, false, t).ok());
  // b holds it now; its session ends with a wanted() pending.
  const uint64_t tb = grants.tokens().at(0);
  ASSERT_TRUE(lock.wanted(*b, tb, told.on_wanted(), &told.ticket).ok());
  b->end(lock);
  EXPECT_EQ(told.wanted, 1);
  EXPECT_EQ(told.ended, 1);
  EXPECT_FALSE(lock.withdraw_wanted(told.ticket));
  EXPECT_TRUE(lock.idle());
}

}  // namespace
}  // namespace dchan::server
