// Misuse of broker locks, wait groups and atomic values at the client level
// (issue 5): each is a dchan::Error with the code and message a Go
// programmer expects (Go's own text for Go's panics), nothing changes on the
// broker, and afterwards the broker serves — the same session, and another
// process — as before.
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "broker_process.h"
#include "dchan/client.h"
#include "gtest/gtest.h"
#include "sync_test_util.h"

namespace dchan::testing {
namespace {

// Runs `op`, which must throw dchan::Error with `code` and a message that
// contains every one of `parts`.
void expect_error(const std::function<void()>& op, absl::StatusCode code,
                  const std::vector<std::string>& parts) {
  try {
    op();
    ADD_FAILURE() << "no dchan::Error was thrown; expected "
                  << absl::StatusCodeToString(code);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const std::string& p : parts) {
      EXPECT_TRUE(absl::StrContains(e.what(), p))
          << "\"" << e.what() << "\" does not mention \"" << p << "\"";
    }
  }
}

// The broker still serves: the test's own session locks and unlocks a fresh
// mutex and passes a value through a channel, and another process takes a
// lock.
void expect_broker_serves(BrokerProcess& broker, Client& client) {
  ASSERT_TRUE(broker.running());
  Mutex m = client.mutex("after-the-misuse");
  ASSERT_TRUE(m.try_lock_for(kWorkerBound));
  m.unlock();
  Chan<int64_t> ch = client.chan<int64_t>("after-the-misuse-chan", 1);
  ch.send(17);
  EXPECT_EQ(ch.recv(), std::optional<int64_t>(17));
  const ProcessResult r =
      sync_worker("lock-once", broker, {"--lock=after-the-misuse"})
          .wait(kWorkerBound);
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(has_line(r.out, "unlocked")) << r;
}

TEST(RemoteSyncBadInput,
     UnlockOfUnlockedMutexIsFailedPreconditionWithGosMessage) {
  BrokerProcess broker(short_ttl_broker_args());
  Client client = connect_client(broker, "test");
  Mutex m = client.mutex("m");
  expect_error([&] { m.unlock(); }, absl::StatusCode::kFailedPrecondition,
               {"sync: unlock of unlocked mutex"});
  m.lock();
  m.unlock();
  expect_error([&] { m.unlock(); }, absl::StatusCode::kFailedPrecondition,
               {"sync: unlock of unlocked mutex"});
  expect_broker_serves(broker, client);
}

TEST(RemoteSyncBadInput,
     UnlockOfMutexHeldByAnotherProcessIsRefusedAndItStaysHeld) {
  BrokerProcess broker(short_ttl_broker_args());
  Process holder = sync_worker("hold-lock", broker,
                               {"--lock=m", "--client_name=rightful-holder"});
  ASSERT_TRUE(holder.wait_for_output("holding\n", kBrokerStateBound))
      << holder.wait(milliseconds(0));
  const uint64_t holder_token = locked_token(holder.output_so_far());

  Client client = connect_client(broker, "test");
  Mutex m = client.mutex("m");
  expect_error([&] { m.unlock(); }, absl::StatusCode::kFailedPrecondition,
               {"sync: unlock of unlocked mutex"});
  const std::optional<ObjectState> st = broker.object_state("m");
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->holder_sessions.size(), 1u);
  EXPECT_EQ(st->token, holder_token);
  EXPECT_FALSE(m.try_lock());

  holder.signal(SIGKILL);
  ASSERT_TRUE(m.try_lock_for(kTtl + kLossSlack));
  EXPECT_GT(m.token(), holder_token);
  m.unlock();
  expect_broker_serves(broker, client);
}

TEST(RemoteSyncBadInput,
     UnlockOfUnlockedRWMutexIsFailedPreconditionWithGosMessages) {
  BrokerProcess broker(short_ttl_broker_args());
  Client client = connect_client(broker, "test");
  RWMutex rw = client.rw_mutex("rw");
  expect_error([&] { rw.unlock(); }, absl::StatusCode::kFailedPrecondition,
               {"sync: Unlock of unlocked RWMutex"});
  expect_error([&] { rw.unlock_shared(); },
               absl::StatusCode::kFailedPrecondition,
               {"sync: RUnlock of unlocked RWMutex"});
  // Held in the other mode is not held in this one.
  rw.lock_shared();
  expect_error([&] { rw.unlock(); }, absl::StatusCode::kFailedPrecondition,
               {"sync: Unlock of unlocked RWMutex"});
  rw.unlock_shared();
  rw.lock();
  expect_error([&] { rw.unlock_shared(); },
               absl::StatusCode::kFailedPrecondition,
               {"sync: RUnlock of unlocked RWMutex"});
  rw.unlock();
  expect_broker_serves(broker, client);
}

TEST(RemoteSyncBadInput,
     NegativeWaitGroupCounterIsFailedPreconditionAndChangesNothing) {
  BrokerProcess broker(short_ttl_broker_args());
  Client client = connect_client(broker, "test");
  WaitGroup wg = client.wait_group("wg");
  expect_error([&] { wg.add(-1); }, absl::StatusCode::kFailedPrecondition,
               {"sync: negative WaitGroup counter"});
  EXPECT_EQ(wg.count(), 0);
  wg.add(2);
  expect_error([&] { wg.add(-3); }, absl::StatusCode::kFailedPrecondition,
               {"sync: negative WaitGroup counter"});
  EXPECT_EQ(wg.count(), 2);
  wg.done();
  wg.done();
  expect_error([&] { wg.done(); }, absl::StatusCode::kFailedPrecondition,
               {"sync: negative WaitGroup counter"});
  EXPECT_TRUE(wg.wait_for(kWorkerBound));
  expect_broker_serves(broker, client);
}

TEST(RemoteSyncBadInput, AtomicValueOfAnotherTypeIsInvalidArgumentNamingBoth) {
  BrokerProcess broker(short_ttl_broker_args());
  Client client = connect_client(broker, "test");
  AtomicValue<int64_t> v = client.atomic_value<int64_t>("v");
  v.store(7);
  expect_error(
      [&] {
        AtomicValue<std::string> s = client.atomic_value<std::string>("v");
        (void)s.load();
      },
      absl::StatusCode::kInvalidArgument, {"\"v\"", "int64", "string"});
  EXPECT_EQ(v.load(), std::optional<int64_t>(7));
  expect_broker_serves(broker, client);
}

TEST(RemoteSyncBadInput, NameOfAnotherKindIsInvalidArgumentNamingBoth) {
  BrokerProcess broker(short_ttl_broker_args());
  Client client = connect_client(broker, "test");
  Chan<int64_t> x = client.chan<int64_t>("x", 1);
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  // Opened and used at once: whether the open or the first operation
  // refuses, nothing may block or succeed.
  expect_error([&] { (void)client.mutex("x").try_lock(); }, kInvalid,
               {"\"x\" is a channel, not a mutex"});
  expect_error([&] { (void)client.rw_mutex("x").try_lock(); }, kInvalid,
               {"\"x\" is a channel, not an RWMutex"});
  expect_error([&] { (void)client.wait_group("x").count(); }, kInvalid,
               {"\"x\" is a channel, not a WaitGroup"});
  expect_error([&] { (void)client.atomic_value<int64_t>("x").load(); },
               kInvalid, {"\"x\" is a channel, not an AtomicValue"});

  Mutex m = client.mutex("m");
  m.lock();
  expect_error([&] { (void)client.rw_mutex("m").try_lock(); }, kInvalid,
               {"\"m\" is a mutex, not an RWMutex"});
  expect_error([&] { (void)client.chan<int64_t>("m", 1).try_recv(); }, kInvalid,
               {"\"m\" is a mutex, not a channel"});
  WaitGroup wg = client.wait_group("w");
  expect_error([&] { (void)client.mutex("w").try_lock(); }, kInvalid,
               {"\"w\" is a WaitGroup, not a mutex"});

  // The refused opens changed nothing.
  x.send(5);
  EXPECT_EQ(x.recv(), std::optional<int64_t>(5));
  m.unlock();
  EXPECT_EQ(wg.count(), 0);
  expect_broker_serves(broker, client);
}

TEST(RemoteSyncBadInput, WaitGroupReopenedWithAnotherForgiveIsInvalidArgument) {
  BrokerProcess broker(short_ttl_broker_args());
  Client client = connect_client(broker, "test");
  WaitGroup strict = client.wait_group("jobs");
  strict.add(1);
  expect_error(
      [&] {
        (void)client.wait_group("jobs", WaitGroupOptions{.forgive = true})
            .count();
      },
      absl::StatusCode::kInvalidArgument, {"\"jobs\"", "forgive"});
  EXPECT_EQ(strict.count(), 1);
  strict.done();
  EXPECT_TRUE(strict.wait_for(kWorkerBound));
  expect_broker_serves(broker, client);
}

}  // namespace
}  // namespace dchan::testing
