// WaitGroupObject: the counter, per-session debts, failure and forgive,
// without gRPC or sessions.
#include "wait_group.h"

#include <climits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "fake_participant.h"
#include "gtest/gtest.h"

namespace dchan::server {
namespace {

using fakes::FakeParticipant;
using Result = WaitGroupObject::Wait::Result;

// A queued wait's answer, once it came.
class Answer {
 public:
  WaitGroupObject::OnDone on_done() {
    return [this](absl::Status st) {
      absl::MutexLock lock(&mu_);
      EXPECT_FALSE(status_.has_value()) << "answered twice";
      status_ = std::move(st);
    };
  }
  std::optional<absl::Status> status() {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  absl::Mutex mu_;
  std::optional<absl::Status> status_;
};

// Queues a wait; fails the test if it is answered at once.
uint64_t queue_wait(WaitGroupObject& wg, Answer& answer) {
  absl::StatusOr<WaitGroupObject::Wait> w = wg.wait(answer.on_done());
  EXPECT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(w.ok() && w->result == Result::kQueued);
  return w.ok() ? w->ticket : 0;
}

int64_t add(WaitGroupObject& wg, const FakeParticipant& who, int64_t delta) {
  absl::StatusOr<int64_t> c = wg.add(who, delta);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : -1;
}

TEST(WaitGroup, WaitersAreReleasedWhenDonesFromOtherSessionsReachZero) {
  WaitGroupObject wg("jobs", false);
  auto coord = FakeParticipant::make(1, "coord");
  auto w1 = FakeParticipant::make(2, "w1"), w2 = FakeParticipant::make(3, "w2");
  EXPECT_EQ(add(wg, *w1, 1), 1);
  EXPECT_EQ(add(wg, *w2, 1), 2);
  Answer answer;
  queue_wait(wg, answer);
  EXPECT_EQ(add(wg, *w1, -1), 1);
  EXPECT_FALSE(answer.status().has_value());
  EXPECT_EQ(add(wg, *w2, -1), 0);
  ASSERT_TRUE(answer.status().has_value());
  EXPECT_TRUE(answer.status()->ok());
  // A wait at zero is answered at once.
  absl::StatusOr<WaitGroupObject::Wait> w = wg.wait(nullptr);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->result, Result::kZero);
  (void)coord;
}

TEST(WaitGroup, ASessionLostOwingDonesFailsEveryWaitNamingTheParticipant) {
  WaitGroupObject wg("jobs", false);
  auto w1 = FakeParticipant::make(7, "worker-2"),
       w2 = FakeParticipant::make(8, "worker-3");
  add(wg, *w1, 1);
  add(wg, *w2, 1);
  Answer blocked;
  queue_wait(wg, blocked);
  w1->end(wg);
  const std::string expected =
      "dchan: WaitGroup \"jobs\": participant \"worker-2\" (session 7, "
      "test-peer) was lost owing 1 Done(s)";
  ASSERT_TRUE(blocked.status().has_value()) << "the blocked wait hangs";
  EXPECT_EQ(blocked.status()->code(), absl::StatusCode::kAborted);
  EXPECT_EQ(blocked.status()->message(), expected);
  EXPECT_EQ(wg.count(), 1) << "the lost debt leaves the counter";
  // Every later wait fails too, even once the counter reaches zero.
  EXPECT_EQ(wg.wait(nullptr).status().message(), expected);
  add(wg, *w2, -1);
  EXPECT_EQ(wg.count(), 0);
  absl::StatusOr<WaitGroupObject::Wait> late = wg.wait(nullptr);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(wg.failure(), expected);
}

TEST(WaitGroup, AnAddFromZeroStartsANewRoundThatHasNotFailed) {
  WaitGroupObject wg("jobs", false);
  auto lost = FakeParticipant::make(1, "lost"),
       next = FakeParticipant::make(2, "next");
  add(wg, *lost, 1);
  lost->end(wg);
  EXPECT_FALSE(wg.failure().empty());
  add(wg, *next, 1);
  EXPECT_TRUE(wg.failure().empty());
  Answer answer;
  queue_wait(wg, answer);
  add(wg, *next, -1);
  ASSERT_TRUE(answer.status().has_value());
  EXPECT_TRUE(answer.status()->ok());
}

TEST(WaitGroup, AnAddThatDoesNotStartFromZeroKeepsTheFailure) {
  WaitGroupObject wg("jobs", false);
  auto lost = FakeParticipant::make(1), other = FakeParticipant::make(2);
  add(wg, *other, 1);
  add(wg, *lost, 1);
  lost->end(wg);
  add(wg, *other, 1);  // 1 → 2: the same round
  EXPECT_EQ(wg.wait(nullptr).status().code(), absl::StatusCode::kAborted);
}

TEST(WaitGroup, ForgiveCountsALostDebtAsDone) {
  WaitGroupObject wg("jobs", true);
  auto w1 = FakeParticipant::make(1), w2 = FakeParticipant::make(2);
  add(wg, *w1, 2);
  add(wg, *w2, 1);
  Answer answer;
  queue_wait(wg, answer);
  w1->end(wg);
  EXPECT_EQ(wg.count(), 1);
  EXPECT_FALSE(answer.status().has_value());
  EXPECT_TRUE(wg.failure().empty());
  w2->end(wg);
  ASSERT_TRUE(answer.status().has_value());
  EXPECT_TRUE(answer.status()->ok()) << *answer.status();
}

TEST(WaitGroup, DonesBeyondASessionsOwnAddsPayTheAddersDebt) {
  // Go's usual shape: the coordinator adds for its workers; they call Done.
  WaitGroupObject wg("jobs", false);
  auto coord = FakeParticipant::make(1), w1 = FakeParticipant::make(2),
       w2 = FakeParticipant::make(3);
  add(wg, *coord, 2);
  add(wg, *w1, -1);
  add(wg, *w2, -1);
  // The coordinator owes nothing now: its end fails nothing.
  coord->end(wg);
  EXPECT_TRUE(wg.failure().empty());
  EXPECT_EQ(wg.count(), 0);
}

TEST(WaitGroup, ASessionThatEndsOwingNothingChangesNothing) {
  WaitGroupObject wg("jobs", false);
  auto a = FakeParticipant::make(1), b = FakeParticipant::make(2);
  add(wg, *a, 1);
  add(wg, *b, 0);  // a count query
  b->end(wg);
  EXPECT_EQ(wg.count(), 1);
  EXPECT_TRUE(wg.failure().empty());
}

TEST(WaitGroup, ANegativeCounterIsRefusedAndTheCounterIsUnchanged) {
  WaitGroupObject wg("jobs", false);
  auto a = FakeParticipant::make(1);
  absl::StatusOr<int64_t> c = wg.add(*a, -1);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.status().message(), "sync: negative WaitGroup counter");
  add(wg, *a, 2);
  EXPECT_EQ(wg.add(*a, -3).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(wg.add(*a, INT64_MIN).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(wg.count(), 2);
}

TEST(WaitGroup, ACounterAboveInt32MaxIsOutOfRange) {
  WaitGroupObject wg("jobs", false);
  auto a = FakeParticipant::make(1);
  add(wg, *a, INT32_MAX);
  EXPECT_EQ(wg.add(*a, 1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(wg.add(*a, INT64_MAX).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(wg.count(), INT32_MAX);
}

TEST(WaitGroup, AWithdrawnWaitIsNeverAnswered) {
  WaitGroupObject wg("jobs", false);
  auto a = FakeParticipant::make(1);
  add(wg, *a, 1);
  Answer answer;
  const uint64_t ticket = queue_wait(wg, answer);
  EXPECT_TRUE(wg.withdraw(ticket));
  EXPECT_FALSE(wg.withdraw(ticket));
  add(wg, *a, -1);
  EXPECT_FALSE(answer.status().has_value());
}

TEST(WaitGroup, ANonblockingWaitReportsTheCounterAndQueuesNothing) {
  WaitGroupObject wg("jobs", false);
  auto a = FakeParticipant::make(1);
  add(wg, *a, 3);
  absl::StatusOr<WaitGroupObject::Wait> w = wg.wait(nullptr);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->result, Result::kWouldBlock);
  EXPECT_EQ(w->count, 3);
  v1::ObjectInfo info;
  wg.describe(info);
  EXPECT_EQ(info.blocked_waiters(), 0u);
  EXPECT_EQ(info.count(), 3);
}

TEST(WaitGroup, AnEndedSessionCanAddNothing) {
  WaitGroupObject wg("jobs", false);
  auto a = FakeParticipant::make(1);
  a->kill();
  EXPECT_EQ(wg.add(*a, 1).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(wg.count(), 0);
}

TEST(WaitGroup, ConcurrentAddsAndDonesFromManySessionsEndAtZero) {
  WaitGroupObject wg("jobs", false);
  constexpr int kThreads = 6, kRounds = 2000;
  Answer answer;
  auto starter = FakeParticipant::make(100);
  add(wg, *starter, 1);  // keeps the round open while the threads run
  queue_wait(wg, answer);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto me = FakeParticipant::make(t + 1);
      for (int i = 0; i < kRounds; ++i) {
        add(wg, *me, 1);
        add(wg, *me, -1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_FALSE(answer.status().has_value());
  add(wg, *starter, -1);
  ASSERT_TRUE(answer.status().has_value());
  EXPECT_TRUE(answer.status()->ok());
  EXPECT_EQ(wg.count(), 0);
}

}  // namespace
}  // namespace dchan::server
