// The session stream's combined writes (client/src/connection.h) under
// acked calls from many threads on one Connection, against a real
// dchan-broker on 127.0.0.1.
//
// What is checked: callers that a reader wakes with their answers get their
// next frames written together, not one write each; acked sends from
// many threads on one Client keep each thread's order and deliver every
// value exactly once; a quiet call (call_quiet: a quiet unlock) is
// confirmed by the answer to a later request, or gets its refusal; a
// timed-out call's cancel is answered and leaves nothing pending. No
// timing assertions: the write counts are what the Connection reports.
#include "connection.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "gtest/gtest.h"

namespace dchan::testing {
namespace {

using detail::Connection;

constexpr int kThreads = 16;
constexpr int kCallsPerThread = 300;

TEST(Connection, CallersWokenTogetherWriteTheirNextFramesTogether) {
  BrokerProcess broker;
  Connection conn(broker.address(), ClientOptions{});
  const Connection::WriteCounts before = conn.write_counts();
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; ++t) {
    callers.emplace_back([&conn] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        v1::ClientFrame ping;
        ping.mutable_ping();
        conn.call(ping, Connection::Deadline::max());
      }
    });
  }
  for (std::thread& t : callers) t.join();
  const Connection::WriteCounts after = conn.write_counts();
  const uint64_t frames = after.frames - before.frames;
  const uint64_t writes = after.writes - before.writes;
  RecordProperty("frames", static_cast<int>(frames));
  RecordProperty("writes", static_cast<int>(writes));
  EXPECT_GE(frames, uint64_t{kThreads} * kCallsPerThread);
  // Each write that wakes k callers is followed by one write of their k
  // next frames, not k writes: with 16 callers, far more than 2 frames per
  // write on average (about 1.3 when each woken caller wrote alone).
  EXPECT_GE(frames, 2 * writes)
      << frames << " frames in " << writes << " writes";
}

// What a quiet call's callback got.
struct QuietOutcome {
  bool called = false;
  absl::Status lost;
  int code = -1;
  std::string message;
};

Connection::Callback record(QuietOutcome& into) {
  return [&into](const absl::Status& lost, v1::ServerFrame& answer) {
    into.called = true;
    into.lost = lost;
    into.code = answer.code();
    into.message = answer.message();
  };
}

TEST(Connection, AQuietUnlockIsConfirmedByALaterAnswerOrGetsItsRefusal) {
  BrokerProcess broker;
  Connection conn(broker.address(), ClientOptions{});
  const auto untimed = Connection::Deadline::max();
  v1::ClientFrame open;
  open.mutable_open()->set_name("m");
  open.mutable_open()->set_kind(v1::OBJECT_KIND_MUTEX);
  const uint64_t handle = conn.call(open, untimed).open().handle();
  auto unlock = [&](uint64_t token) {
    v1::ClientFrame f;
    f.mutable_unlock()->set_handle(handle);
    f.mutable_unlock()->set_token(token);
    f.mutable_unlock()->set_quiet(true);
    return f;
  };
  auto ping = [&] {
    v1::ClientFrame f;
    f.mutable_ping();
    conn.call(f, untimed);
  };

  v1::ClientFrame lock;
  lock.mutable_lock()->set_handle(handle);
  const uint64_t token = conn.call(lock, untimed).lock().token();
  QuietOutcome ok;
  v1::ClientFrame f = unlock(token);
  conn.call_quiet(f, record(ok));
  // The broker does not answer it; the ping's answer, read by this thread,
  // confirms it before call() returns.
  ping();
  EXPECT_TRUE(ok.called) << "a later answer did not confirm the quiet unlock";
  EXPECT_TRUE(ok.lost.ok()) << ok.lost;
  EXPECT_EQ(ok.code, 0);

  // Not held any more: refused, and the refusal reaches the callback.
  QuietOutcome refused;
  f = unlock(0);
  conn.call_quiet(f, record(refused));
  ping();
  ASSERT_TRUE(refused.called);
  EXPECT_TRUE(refused.lost.ok()) << refused.lost;
  EXPECT_EQ(refused.code,
            static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(refused.message, "sync: unlock of unlocked mutex");

  // Held again by this session: the lock was released by the first unlock.
  v1::ClientFrame try_lock;
  try_lock.mutable_lock()->set_handle(handle);
  try_lock.mutable_lock()->set_nonblocking(true);
  EXPECT_EQ(conn.call(try_lock, untimed).lock().outcome(), v1::OUTCOME_OK);
}

// A call whose deadline passes is cancelled; the broker answers the cancel
// too, and nothing stays pending on either side.
TEST(Connection, ATimedOutCallAndItsCancelLeaveNothingPending) {
  BrokerProcess broker;
  Connection conn(broker.address(), ClientOptions{});
  const auto untimed = Connection::Deadline::max();
  v1::ClientFrame open;
  open.mutable_open()->set_name("c");
  open.mutable_open()->set_kind(v1::OBJECT_KIND_CHANNEL);
  open.mutable_open()->set_type_name("string");
  const uint64_t handle = conn.call(open, untimed).open().handle();
  auto ping = [&] {
    v1::ClientFrame f;
    f.mutable_ping();
    conn.call(f, untimed);
  };
  for (int i = 0; i < 3; ++i) {
    v1::ClientFrame recv;
    recv.mutable_recv()->set_handle(handle);
    const v1::ServerFrame got = conn.call(
        recv, std::chrono::steady_clock::now() + std::chrono::milliseconds(5));
    EXPECT_EQ(got.recv().outcome(), v1::OUTCOME_CANCELLED);
  }
  // The broker answers in the order it handles requests: once the ping is
  // answered, so is every cancel before it.
  ping();
  EXPECT_EQ(conn.pending_calls(), 0u) << "a cancel is still awaiting its answer";

  // A cancel of a request answered already: NOT_FOUND, ignored.
  v1::ClientFrame f;
  f.mutable_ping();
  const uint64_t answered = conn.call_async(
      f, [](const absl::Status&, v1::ServerFrame&) {});
  ping();
  conn.cancel(answered);
  ping();
  EXPECT_EQ(conn.pending_calls(), 0u);
  EXPECT_TRUE(conn.lost().ok()) << conn.lost();
}

TEST(Connection, AckedSendsFromManyThreadsKeepOrderAndArriveOnce) {
  BrokerProcess broker;
  Client client = Client::connect(broker.address());
  Chan<int64_t> ch =
      client.chan<int64_t>("many_senders", kThreads * kCallsPerThread);
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([ch, t]() mutable {
      for (int64_t i = 0; i < kCallsPerThread; ++i) {
        ch.send(int64_t{t} * kCallsPerThread + i);
      }
    });
  }
  for (std::thread& t : senders) t.join();
  ch.close();
  std::map<int64_t, int64_t> next;  // thread -> next value expected
  int64_t received = 0;
  while (std::optional<int64_t> v = ch.recv()) {
    const int64_t t = *v / kCallsPerThread;
    ASSERT_GE(t, 0);
    ASSERT_LT(t, kThreads);
    EXPECT_EQ(*v % kCallsPerThread, next[t]) << "thread " << t;
    next[t] = *v % kCallsPerThread + 1;
    ++received;
  }
  EXPECT_EQ(received, int64_t{kThreads} * kCallsPerThread);
}

}  // namespace
}  // namespace dchan::testing
