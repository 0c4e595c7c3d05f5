// The session core without gRPC: frames in, frames out.
#include "session.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_outbox.h"

namespace dchan::server {
namespace {

using fakes::TestOutbox;
using ::testing::HasSubstr;

constexpr int kInvalidArgument =
    static_cast<int>(absl::StatusCode::kInvalidArgument);
constexpr int kFailedPrecondition =
    static_cast<int>(absl::StatusCode::kFailedPrecondition);
constexpr int kNotFound = static_cast<int>(absl::StatusCode::kNotFound);

class SessionTest : public ::testing::Test {
 protected:
  struct Client {
    std::shared_ptr<TestOutbox> out = std::make_shared<TestOutbox>();
    std::shared_ptr<Session> session;
  };

  Client connect(SessionLimits limits = {}) {
    Client c;
    c.session =
        std::make_shared<Session>(++ids_, "test", registry_, c.out, limits);
    sessions_.push_back(c.session);
    return c;
  }

  // Ends every session, as the broker does when a stream ends: pending
  // operations hold their session, so this also frees them.
  void TearDown() override {
    for (const std::shared_ptr<Session>& s : sessions_) s->end();
  }

  static uint64_t open(Client& c, const std::string& name,
                       const std::string& type = "string", uint64_t cap = 0) {
    v1::ClientFrame f;
    f.set_id(1000 + name.size());
    f.mutable_open()->set_name(name);
    f.mutable_open()->set_kind(v1::OBJECT_KIND_CHANNEL);
    f.mutable_open()->set_type_name(type);
    f.mutable_open()->set_capacity(cap);
    c.session->handle(f);
    v1::ServerFrame r = c.out->take();
    EXPECT_EQ(r.code(), 0) << r.message();
    return r.open().handle();
  }

  static void send(Client& c, uint64_t id, uint64_t handle,
                   const std::string& value, bool nonblocking = false) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_send()->set_handle(handle);
    f.mutable_send()->set_value(value);
    f.mutable_send()->set_nonblocking(nonblocking);
    c.session->handle(f);
  }

  static void recv(Client& c, uint64_t id, uint64_t handle,
                   bool nonblocking = false) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_recv()->set_handle(handle);
    f.mutable_recv()->set_nonblocking(nonblocking);
    c.session->handle(f);
  }

  // Two sessions on a registry of their own share channel "ch" (string,
  // capacity 1); `park` (given both clients and their handles) leaves
  // `parked` values waiting for room in it. Once both sessions end and the
  // registry goes, nothing may keep the channel alive.
  template <class Park>
  static void expect_parked_values_free_their_channel(std::size_t parked,
                                                      Park park) {
    std::weak_ptr<Object> channel;
    {
      Registry registry;
      Client a, b;
      a.session = std::make_shared<Session>(1, "test", registry, a.out);
      b.session = std::make_shared<Session>(2, "test", registry, b.out);
      const uint64_t ha = open(a, "ch", "string", 1),
                     hb = open(b, "ch", "string", 1);
      park(a, b, ha, hb);
      channel = registry.objects().front();
      const auto& ch = static_cast<const ChannelObject&>(*channel.lock());
      EXPECT_EQ(detail::stats_of(ch.chan).blocked_senders, parked);
      for (Client* c : {&a, &b}) {
        c->session->end();
        c->session->drop_handles();
      }
    }
    EXPECT_TRUE(channel.expired()) << "the parked values keep their channel";
  }

  // Opens `name` as `kind`; returns the answer.
  static v1::ServerFrame open_as(Client& c, const std::string& name,
                                 v1::ObjectKind kind,
                                 const std::string& type = "",
                                 bool forgive = false) {
    v1::ClientFrame f;
    f.set_id(2000);
    f.mutable_open()->set_name(name);
    f.mutable_open()->set_kind(kind);
    f.mutable_open()->set_type_name(type);
    f.mutable_open()->set_forgive(forgive);
    c.session->handle(f);
    return c.out->take();
  }

  static uint64_t open_handle(Client& c, const std::string& name,
                              v1::ObjectKind kind,
                              const std::string& type = "") {
    v1::ServerFrame r = open_as(c, name, kind, type);
    EXPECT_EQ(r.code(), 0) << r.message();
    return r.open().handle();
  }

  static void lock(Client& c, uint64_t id, uint64_t handle,
                   bool nonblocking = false, bool shared = false,
                   uint32_t token_block = 0) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_lock()->set_handle(handle);
    f.mutable_lock()->set_nonblocking(nonblocking);
    f.mutable_lock()->set_shared(shared);
    f.mutable_lock()->set_token_block(token_block);
    c.session->handle(f);
  }

  static void wanted(Client& c, uint64_t id, uint64_t handle, uint64_t token) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_wanted()->set_handle(handle);
    f.mutable_wanted()->set_token(token);
    c.session->handle(f);
  }

  static void unlock(Client& c, uint64_t id, uint64_t handle,
                     uint64_t token = 0, bool shared = false,
                     bool quiet = false) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_unlock()->set_handle(handle);
    f.mutable_unlock()->set_token(token);
    f.mutable_unlock()->set_shared(shared);
    f.mutable_unlock()->set_quiet(quiet);
    c.session->handle(f);
  }

  static void add(Client& c, uint64_t id, uint64_t handle, int64_t delta) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_add()->set_handle(handle);
    f.mutable_add()->set_delta(delta);
    c.session->handle(f);
  }

  static void wait(Client& c, uint64_t id, uint64_t handle,
                   bool nonblocking = false) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_wait()->set_handle(handle);
    f.mutable_wait()->set_nonblocking(nonblocking);
    c.session->handle(f);
  }

  static void hello(Client& c, uint64_t id, const std::string& name,
                    uint64_t ttl_ms = 0) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_hello()->set_client_name(name);
    f.mutable_hello()->set_ttl_ms(ttl_ms);
    c.session->handle(f);
  }

  static void release(Client& c, uint64_t handle) {
    v1::ClientFrame f;
    f.set_id(3000);
    f.mutable_release()->set_handle(handle);
    c.session->handle(f);
    v1::ServerFrame r = c.out->take();
    EXPECT_EQ(r.code(), 0) << r.message();
    EXPECT_TRUE(r.has_release());
  }

  // A cancel in the old, unanswered form (frame id 0).
  static void cancel(Client& c, uint64_t target) { cancel(c, 0, target); }

  static void cancel(Client& c, uint64_t id, uint64_t target) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_cancel()->set_target(target);
    c.session->handle(f);
  }

  Registry registry_;
  uint64_t ids_ = 0;
  std::vector<std::shared_ptr<Session>> sessions_;
};

TEST_F(SessionTest, UnbufferedSendIsAnsweredOnlyOnceAReceiverHasTheValue) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch"), hb = open(b, "ch");
  send(a, 1, ha, "hello");
  EXPECT_EQ(a.out->size(), 0u) << "unbuffered send answered with no receiver";
  recv(b, 7, hb);
  v1::ServerFrame got = b.out->take();
  EXPECT_EQ(got.id(), 7u);
  EXPECT_EQ(got.recv().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(got.recv().value(), "hello");
  v1::ServerFrame sent = a.out->take();
  EXPECT_EQ(sent.id(), 1u);
  EXPECT_EQ(sent.send().outcome(), v1::OUTCOME_OK);
}

TEST_F(SessionTest, PendingReceiveIsAnsweredWhenAnotherSessionSends) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch", "string", 4),
                 hb = open(b, "ch", "string", 4);
  recv(a, 3, ha);
  EXPECT_EQ(a.out->size(), 0u);
  send(b, 9, hb, "v");
  EXPECT_EQ(b.out->take().send().outcome(), v1::OUTCOME_OK);
  v1::ServerFrame got = a.out->take();
  EXPECT_EQ(got.id(), 3u);
  EXPECT_EQ(got.recv().value(), "v");
  EXPECT_EQ(a.session->pending_count(), 0u);
}

TEST_F(SessionTest, NonblockingFormsAnswerAtOnce) {
  Client a = connect();
  const uint64_t h = open(a, "ch");
  recv(a, 1, h, true);
  EXPECT_EQ(a.out->take().recv().outcome(), v1::OUTCOME_WOULD_BLOCK);
  send(a, 2, h, "x", true);
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_WOULD_BLOCK);
}

TEST_F(SessionTest, CancelWithdrawsAReceiveThatThenConsumesNothing) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch"), hb = open(b, "ch");
  recv(a, 5, ha);
  cancel(a, 6, 5);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.id(), 5u);
  EXPECT_EQ(f.recv().outcome(), v1::OUTCOME_CANCELLED);
  // Then the cancel's own answer.
  f = a.out->take();
  EXPECT_EQ(f.id(), 6u);
  EXPECT_EQ(f.code(), 0) << f.message();
  ASSERT_TRUE(f.has_cancel());
  EXPECT_TRUE(f.cancel().withdrawn());
  EXPECT_EQ(a.session->pending_count(), 0u);
  send(b, 1, hb, "x", true);
  EXPECT_EQ(b.out->take().send().outcome(), v1::OUTCOME_WOULD_BLOCK);
}

TEST_F(SessionTest, CancelOfARequestNotPendingIsAnsweredNotFound) {
  Client a = connect();
  const uint64_t h = open(a, "ch");
  recv(a, 5, h);
  cancel(a, 6, 5);
  a.out->take();
  a.out->take();
  // Its target answered already, and an id never used: each cancel gets an
  // error naming the target, and nothing else is answered.
  cancel(a, 7, 5);
  cancel(a, 8, 12345);
  ASSERT_EQ(a.out->size(), 2u);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.id(), 7u);
  EXPECT_EQ(f.code(), kNotFound);
  EXPECT_THAT(f.message(), HasSubstr("no request 5 is pending"));
  f = a.out->take();
  EXPECT_EQ(f.id(), 8u);
  EXPECT_EQ(f.code(), kNotFound);
  EXPECT_THAT(f.message(), HasSubstr("no request 12345 is pending"));
  // The old form (frame id 0) is never answered, pending target or not.
  cancel(a, 12345);
  EXPECT_EQ(a.out->size(), 0u);
  recv(a, 9, h);
  cancel(a, 9);
  f = a.out->take();
  EXPECT_EQ(f.id(), 9u);
  EXPECT_EQ(f.recv().outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(a.out->size(), 0u);
}

TEST_F(SessionTest, CancelWhoseOwnIdIsPendingIsRefusedAndWithdrawsNothing) {
  Client a = connect();
  const uint64_t h = open(a, "ch");
  recv(a, 5, h);
  recv(a, 6, h);
  // Its answer would pass for request 6's.
  cancel(a, 6, 5);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.id(), 6u);
  EXPECT_EQ(f.code(), kInvalidArgument);
  EXPECT_THAT(f.message(), HasSubstr("already pending"));
  EXPECT_EQ(a.session->pending_count(), 2u);
  // A cancel naming itself, likewise.
  cancel(a, 5, 5);
  f = a.out->take();
  EXPECT_EQ(f.id(), 5u);
  EXPECT_EQ(f.code(), kInvalidArgument);
  EXPECT_EQ(a.session->pending_count(), 2u);
  EXPECT_EQ(a.out->size(), 0u);
}

TEST_F(SessionTest, CancelledSendIsAnsweredInItsOwnShape) {
  Client a = connect();
  const uint64_t h = open(a, "ch");
  send(a, 4, h, "x");
  cancel(a, 4);
  v1::ServerFrame f = a.out->take();
  ASSERT_TRUE(f.has_send());
  EXPECT_EQ(f.send().outcome(), v1::OUTCOME_CANCELLED);
}

TEST_F(SessionTest, BadRequestsGetClearErrorsAndTheSessionGoesOn) {
  Client a = connect();
  const uint64_t h = open(a, "ch");
  recv(a, 1, 999);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.code(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_NE(f.message().find("999"), std::string::npos);

  recv(a, 0, h);
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));

  v1::ClientFrame empty;
  empty.set_id(3);
  a.session->handle(empty);
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));

  v1::ClientFrame wrong_kind;
  wrong_kind.set_id(4);
  wrong_kind.mutable_open()->set_name("x");
  a.session->handle(wrong_kind);
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));

  v1::ClientFrame mismatch;
  mismatch.set_id(5);
  mismatch.mutable_open()->set_name("ch");
  mismatch.mutable_open()->set_kind(v1::OBJECT_KIND_CHANNEL);
  mismatch.mutable_open()->set_type_name("int64");
  a.session->handle(mismatch);
  f = a.out->take();
  EXPECT_EQ(f.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(f.message().find("int64"), std::string::npos);

  // Still works.
  send(a, 6, h, "x", true);
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_WOULD_BLOCK);
}

TEST_F(SessionTest, AReusedPendingIdIsRefusedWithoutHarmingTheFirst) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch"), hb = open(b, "ch");
  recv(a, 8, ha);
  recv(a, 8, ha);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(f.message().find("already pending"), std::string::npos);
  send(b, 1, hb, "v");
  f = a.out->take();
  EXPECT_EQ(f.id(), 8u);
  EXPECT_EQ(f.recv().value(), "v");
}

TEST_F(SessionTest, OversizedValuesAndTooManyPendingAreRefused) {
  SessionLimits limits;
  limits.max_value_bytes = 10;
  limits.max_pending = 2;
  Client a = connect(limits);
  const uint64_t h = open(a, "ch");
  send(a, 1, h, std::string(11, 'x'));
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  recv(a, 2, h);
  recv(a, 3, h);
  recv(a, 4, h);
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kResourceExhausted));
}

TEST_F(SessionTest, CloseAnswersPendingOpsEverywhereAndCloseTwiceFails) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch"), hb = open(b, "ch");
  const uint64_t ha2 = open(a, "ch2"), hb2 = open(b, "ch2");
  recv(a, 1, ha);
  send(a, 2, ha2, "x");
  v1::ClientFrame close;
  close.set_id(3);
  close.mutable_close()->set_handle(hb);
  b.session->handle(close);
  EXPECT_EQ(b.out->take().code(), 0);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.id(), 1u);
  EXPECT_EQ(f.recv().outcome(), v1::OUTCOME_CLOSED);
  close.set_id(4);
  close.mutable_close()->set_handle(hb2);
  b.session->handle(close);
  EXPECT_EQ(b.out->take().code(), 0);
  f = a.out->take();
  EXPECT_EQ(f.id(), 2u);
  EXPECT_EQ(f.send().outcome(), v1::OUTCOME_CLOSED);

  close.set_id(5);
  b.session->handle(close);
  f = b.out->take();
  EXPECT_EQ(f.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(f.message(), "close of closed channel");
}

TEST_F(SessionTest, EndWithdrawsPendingOperations) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch"), hb = open(b, "ch");
  recv(a, 1, ha);
  a.session->end();
  send(b, 1, hb, "x", true);
  EXPECT_EQ(b.out->take().send().outcome(), v1::OUTCOME_WOULD_BLOCK);
  // After end, frames are dropped unanswered, and carried out no more.
  send(a, 2, ha, "late", true);
  recv(b, 2, hb, true);
  EXPECT_EQ(a.out->size(), 0u);
  EXPECT_EQ(b.out->take().recv().outcome(), v1::OUTCOME_WOULD_BLOCK);
}

TEST_F(SessionTest, AValueThatCannotBeDeliveredGoesBackToItsChannel) {
  Client a = connect(), b = connect(), c = connect();
  const uint64_t ha = open(a, "ch", "string", 1),
                 hb = open(b, "ch", "string", 1),
                 hc = open(c, "ch", "string", 1);
  recv(a, 1, ha);
  a.out->refuse();  // a's stream is gone, its session not yet ended
  send(b, 1, hb, "precious");
  EXPECT_EQ(b.out->take().send().outcome(), v1::OUTCOME_OK);
  recv(c, 1, hc, true);
  v1::ServerFrame f = c.out->take();
  EXPECT_EQ(f.recv().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(f.recv().value(), "precious");
}

TEST_F(SessionTest, SelectFiresExactlyOneCase) {
  Client a = connect(), b = connect();
  const uint64_t a1 = open(a, "c1"), a2 = open(a, "c2");
  const uint64_t b2 = open(b, "c2");
  v1::ClientFrame sel;
  sel.set_id(1);
  sel.mutable_select()->add_cases()->set_handle(a1);
  sel.mutable_select()->add_cases()->set_handle(a2);
  a.session->handle(sel);
  EXPECT_EQ(a.out->size(), 0u);
  send(b, 1, b2, "two");
  EXPECT_EQ(b.out->take().send().outcome(), v1::OUTCOME_OK);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.select().index(), 1u);
  EXPECT_EQ(f.select().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(f.select().value(), "two");
  // The c1 case was withdrawn.
  const uint64_t b1 = open(b, "c1");
  send(b, 2, b1, "one", true);
  EXPECT_EQ(b.out->take().send().outcome(), v1::OUTCOME_WOULD_BLOCK);

  v1::ClientFrame nb;
  nb.set_id(2);
  nb.mutable_select()->add_cases()->set_handle(a1);
  nb.mutable_select()->set_nonblocking(true);
  a.session->handle(nb);
  f = a.out->take();
  EXPECT_EQ(f.select().outcome(), v1::OUTCOME_WOULD_BLOCK);
}

TEST_F(SessionTest, StatReportsLenCapAndClosed) {
  Client a = connect();
  const uint64_t h = open(a, "ch", "string", 3);
  send(a, 1, h, "x");
  a.out->take();
  v1::ClientFrame st;
  st.set_id(2);
  st.mutable_stat()->set_handle(h);
  a.session->handle(st);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.stat().len(), 1u);
  EXPECT_EQ(f.stat().cap(), 3u);
  EXPECT_FALSE(f.stat().closed());
}

TEST_F(SessionTest, WatchAnswersOnReadinessAndConsumesNothing) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch"), hb = open(b, "ch");
  v1::ClientFrame w;
  w.set_id(1);
  w.mutable_watch()->set_handle(ha);
  a.session->handle(w);
  EXPECT_EQ(a.out->size(), 0u);
  send(b, 1, hb, "v");  // blocks: unbuffered, nobody receives
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.id(), 1u);
  EXPECT_EQ(f.watch().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(b.out->size(), 0u) << "the watch consumed the value";
  recv(a, 2, ha, true);
  f = a.out->take();
  EXPECT_EQ(f.recv().value(), "v");

  w.set_id(3);
  a.session->handle(w);
  cancel(a, 3);
  f = a.out->take();
  EXPECT_EQ(f.id(), 3u);
  EXPECT_EQ(f.watch().outcome(), v1::OUTCOME_CANCELLED);
}

TEST_F(SessionTest, HelloNamesTheClientAndGrantsAClampedTtl) {
  SessionLimits limits;
  limits.min_ttl = std::chrono::milliseconds(100);
  limits.max_ttl = std::chrono::milliseconds(5000);
  limits.default_ttl = std::chrono::milliseconds(2000);
  Client a = connect(limits), b = connect(limits), c = connect(limits);
  hello(a, 1, "host:42", 1);
  v1::ServerFrame f = a.out->take();
  ASSERT_EQ(f.code(), 0) << f.message();
  EXPECT_EQ(f.hello().session_id(), a.session->id());
  EXPECT_EQ(f.hello().ttl_ms(), 100u);
  EXPECT_EQ(a.session->client_name(), "host:42");
  EXPECT_EQ(a.session->ttl(), std::chrono::milliseconds(100));
  hello(b, 1, "b", UINT64_MAX);
  EXPECT_EQ(b.out->take().hello().ttl_ms(), 5000u);
  hello(c, 1, "c", 0);
  EXPECT_EQ(c.out->take().hello().ttl_ms(), 2000u) << "0 asks for the default";
}

TEST_F(SessionTest, HelloAfterTheFirstFrameIsFailedPrecondition) {
  Client a = connect(), b = connect();
  hello(a, 1, "first");
  EXPECT_EQ(a.out->take().code(), 0);
  hello(a, 2, "again");
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.code(), kFailedPrecondition);
  EXPECT_EQ(a.session->client_name(), "first");

  open(b, "ch");
  hello(b, 3, "late");
  EXPECT_EQ(b.out->take().code(), kFailedPrecondition);
  EXPECT_EQ(b.session->client_name(), "");
}

TEST_F(SessionTest, PingIsAnsweredAtOnceAndRefreshesTheSession) {
  Client a = connect();
  const auto before = a.session->last_frame();
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  v1::ClientFrame f;
  f.set_id(9);
  f.mutable_ping();
  a.session->handle(f);
  v1::ServerFrame r = a.out->take();
  EXPECT_EQ(r.id(), 9u);
  EXPECT_TRUE(r.has_ping());
  EXPECT_GT(a.session->last_frame(), before);
}

TEST_F(SessionTest, ASessionSilentForItsTtlExpiresWithUnavailable) {
  SessionLimits limits;
  limits.default_ttl = std::chrono::milliseconds(1000);
  Client a = connect(limits);
  const auto t0 = a.session->last_frame();
  EXPECT_FALSE(
      a.session->expire_if_silent(t0 + std::chrono::milliseconds(999)));
  EXPECT_TRUE(a.session->live());
  EXPECT_TRUE(
      a.session->expire_if_silent(t0 + std::chrono::milliseconds(1001)));
  EXPECT_FALSE(a.session->live());
  ASSERT_TRUE(a.out->finished().has_value());
  EXPECT_EQ(a.out->finished()->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(a.out->finished()->message(),
            "dchan-broker: session 1 expired (no frame for 1000 ms)");
  EXPECT_FALSE(a.session->expire_if_silent(t0 + std::chrono::hours(1)))
      << "an ended session expires once";
}

TEST_F(SessionTest, ANameOfAnotherKindAndAHandleOfAnotherKindAreRefused) {
  Client a = connect();
  const uint64_t ch = open(a, "x");
  v1::ServerFrame f = open_as(a, "x", v1::OBJECT_KIND_MUTEX);
  EXPECT_EQ(f.code(), kInvalidArgument);
  EXPECT_EQ(f.message(), "\"x\" is a channel, not a mutex");

  lock(a, 1, ch);
  f = a.out->take();
  EXPECT_EQ(f.code(), kInvalidArgument);
  EXPECT_NE(f.message().find("is a channel, not a mutex or an RWMutex"),
            std::string::npos)
      << f.message();
  const uint64_t m = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  send(a, 2, m, "v", true);
  f = a.out->take();
  EXPECT_EQ(f.code(), kInvalidArgument);
  EXPECT_NE(f.message().find("is a mutex, not a channel"), std::string::npos);
  add(a, 3, m, 1);
  EXPECT_EQ(a.out->take().code(), kInvalidArgument);
  lock(a, 4, m, false, /*shared=*/true);
  EXPECT_EQ(a.out->take().code(), kInvalidArgument);
  EXPECT_EQ(a.session->pending_count(), 0u);
}

TEST_F(SessionTest, AQueuedLockIsAnsweredWhenGrantedWithALargerToken) {
  Client a = connect(), b = connect();
  const uint64_t ha = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  const uint64_t hb = open_handle(b, "m", v1::OBJECT_KIND_MUTEX);
  lock(a, 1, ha);
  v1::ServerFrame f = a.out->take();
  ASSERT_EQ(f.lock().outcome(), v1::OUTCOME_OK);
  const uint64_t t1 = f.lock().token();
  EXPECT_EQ(a.session->locks_held(), 1u);
  lock(b, 1, hb);
  EXPECT_EQ(b.out->size(), 0u);
  lock(b, 2, hb, /*nonblocking=*/true);
  EXPECT_EQ(b.out->take().lock().outcome(), v1::OUTCOME_WOULD_BLOCK);
  unlock(a, 2, ha, t1);
  // By the time the unlock is answered, the lock has been handed on.
  EXPECT_TRUE(a.out->take().has_unlock());
  f = b.out->take();
  EXPECT_EQ(f.id(), 1u);
  EXPECT_EQ(f.lock().outcome(), v1::OUTCOME_OK);
  EXPECT_GT(f.lock().token(), t1);
  EXPECT_EQ(a.session->locks_held(), 0u);
  EXPECT_EQ(b.session->locks_held(), 1u);
  EXPECT_EQ(b.session->pending_count(), 0u);
}

TEST_F(SessionTest, ACancelledLockRequestIsAnsweredCancelledAndNeverGranted) {
  Client a = connect(), b = connect();
  const uint64_t ha = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  const uint64_t hb = open_handle(b, "m", v1::OBJECT_KIND_MUTEX);
  lock(a, 1, ha);
  a.out->take();
  lock(b, 5, hb);
  cancel(b, 5);
  v1::ServerFrame f = b.out->take();
  EXPECT_EQ(f.id(), 5u);
  ASSERT_TRUE(f.has_lock());
  EXPECT_EQ(f.lock().outcome(), v1::OUTCOME_CANCELLED);
  unlock(a, 2, ha);
  a.out->take();
  EXPECT_EQ(b.out->size(), 0u);
  EXPECT_EQ(b.session->locks_held(), 0u);
  lock(a, 3, ha, /*nonblocking=*/true);
  EXPECT_EQ(a.out->take().lock().outcome(), v1::OUTCOME_OK);
}

TEST_F(SessionTest, AnEndedHolderHandsItsLockToTheNextLiveWaiter) {
  Client a = connect(), b = connect(), c = connect();
  const uint64_t ha = open_handle(a, "rw", v1::OBJECT_KIND_RW_MUTEX);
  const uint64_t hb = open_handle(b, "rw", v1::OBJECT_KIND_RW_MUTEX);
  const uint64_t hc = open_handle(c, "rw", v1::OBJECT_KIND_RW_MUTEX);
  lock(a, 1, ha, false, /*shared=*/true);
  lock(a, 2, ha, false, /*shared=*/true);
  lock(a, 3, ha);  // queued behind its own read locks
  EXPECT_EQ(a.out->size(), 2u);
  lock(b, 1, hb);
  lock(c, 1, hc);
  b.session->end();  // withdraws b's queued request
  a.session->end();  // releases both read locks, withdraws its own request
  v1::ServerFrame f = c.out->take();
  EXPECT_EQ(f.lock().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(c.session->locks_held(), 1u);
  EXPECT_EQ(b.out->size(), 0u);
}

TEST_F(SessionTest, UnlockNotHeldIsFailedPreconditionWithGosMessage) {
  Client a = connect(), b = connect();
  const uint64_t ha = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  const uint64_t hb = open_handle(b, "m", v1::OBJECT_KIND_MUTEX);
  unlock(a, 1, ha);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.code(), kFailedPrecondition);
  EXPECT_EQ(f.message(), "sync: unlock of unlocked mutex");
  lock(a, 2, ha);
  const uint64_t t = a.out->take().lock().token();
  unlock(b, 1, hb);
  EXPECT_EQ(b.out->take().message(), "sync: unlock of unlocked mutex");
  unlock(a, 3, ha, t + 1);
  f = a.out->take();
  EXPECT_EQ(f.code(), static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_EQ(a.session->locks_held(), 1u);
}

TEST_F(SessionTest, AQuietUnlockIsAnsweredOnlyWhenRefused) {
  Client a = connect(), b = connect();
  const uint64_t ha = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  const uint64_t hb = open_handle(b, "m", v1::OBJECT_KIND_MUTEX);
  lock(a, 1, ha);
  const uint64_t t = a.out->take().lock().token();
  lock(b, 1, hb);  // queued behind a
  EXPECT_EQ(b.out->size(), 0u);
  unlock(a, 2, ha, t, /*shared=*/false, /*quiet=*/true);
  EXPECT_EQ(a.out->size(), 0u) << "a quiet unlock that succeeded was answered";
  EXPECT_EQ(b.out->take().lock().outcome(), v1::OUTCOME_OK);  // handed on
  EXPECT_EQ(a.session->locks_held(), 0u);
  // Refused: answered, with Go's message, like a plain unlock.
  unlock(a, 3, ha, 0, /*shared=*/false, /*quiet=*/true);
  const v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.id(), 3u);
  EXPECT_EQ(f.code(), kFailedPrecondition);
  EXPECT_EQ(f.message(), "sync: unlock of unlocked mutex");
}

// A client that keeps its lock: a token block at the grant, then a wanted
// request answered when another session queues.
TEST_F(SessionTest, AKeptLockIsWantedWhenAnotherSessionQueues) {
  Client a = connect(), b = connect();
  const uint64_t ha = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  const uint64_t hb = open_handle(b, "m", v1::OBJECT_KIND_MUTEX);
  lock(a, 1, ha, false, false, /*token_block=*/64);
  v1::ServerFrame granted = a.out->take();
  EXPECT_EQ(granted.lock().token_block(), 64u) << "the grant echoes its block";
  const uint64_t t = granted.lock().token();
  wanted(a, 2, ha, t);
  EXPECT_EQ(a.out->size(), 0u);
  EXPECT_EQ(a.session->pending_count(), 1u);
  lock(b, 1, hb);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.id(), 2u);
  EXPECT_EQ(f.wanted().outcome(), v1::OUTCOME_OK);
  unlock(a, 3, ha, t, false, /*quiet=*/true);
  f = b.out->take();
  EXPECT_EQ(f.lock().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(f.lock().token(), t + 64) << "above a's block";
  EXPECT_EQ(f.lock().token_block(), 0u) << "no block asked for";
  EXPECT_EQ(a.out->size(), 0u);
  EXPECT_EQ(a.session->pending_count(), 0u);
}

TEST_F(SessionTest, EveryGrantEchoesItsTokenBlock) {
  Client a = connect(), b = connect();
  const uint64_t ha = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  const uint64_t hb = open_handle(b, "m", v1::OBJECT_KIND_MUTEX);
  lock(a, 1, ha, /*nonblocking=*/true, false, /*token_block=*/8);
  v1::ServerFrame f = a.out->take();
  ASSERT_EQ(f.lock().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(f.lock().token_block(), 8u) << "a non-blocking grant";
  lock(b, 1, hb, false, false, /*token_block=*/16);  // queued behind a
  EXPECT_EQ(b.out->size(), 0u);
  unlock(a, 2, ha, f.lock().token());
  EXPECT_TRUE(a.out->take().has_unlock());
  f = b.out->take();
  ASSERT_EQ(f.lock().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(f.lock().token_block(), 16u) << "a grant to a queued request";
  lock(a, 3, ha, /*nonblocking=*/true, false, 8);
  f = a.out->take();
  EXPECT_EQ(f.lock().outcome(), v1::OUTCOME_WOULD_BLOCK);
  EXPECT_EQ(f.lock().token_block(), 0u) << "nothing reserved";
}

TEST_F(SessionTest, WantedEndsCancelledWithItsHoldOrWhenWithdrawn) {
  Client a = connect();
  const uint64_t ha = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  wanted(a, 1, ha, 1);  // no such hold
  EXPECT_EQ(a.out->take().wanted().outcome(), v1::OUTCOME_CANCELLED);
  lock(a, 2, ha, false, false, 8);
  const uint64_t t = a.out->take().lock().token();
  wanted(a, 3, ha, t);
  wanted(a, 4, ha, t);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.id(), 4u);
  EXPECT_EQ(f.code(), static_cast<int>(absl::StatusCode::kAlreadyExists));
  cancel(a, 3);
  f = a.out->take();
  EXPECT_EQ(f.id(), 3u);
  EXPECT_EQ(f.wanted().outcome(), v1::OUTCOME_CANCELLED);
  wanted(a, 5, ha, t);
  unlock(a, 6, ha, t);
  f = a.out->take();
  EXPECT_EQ(f.id(), 5u) << "the wanted request's answer comes first";
  EXPECT_EQ(f.wanted().outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_TRUE(a.out->take().has_unlock());
  // Bad input: a token block on an RWMutex, or over the limit.
  const uint64_t hrw = open_handle(a, "rw", v1::OBJECT_KIND_RW_MUTEX);
  lock(a, 7, hrw, false, false, 2);
  EXPECT_EQ(a.out->take().code(), kInvalidArgument);
  lock(a, 8, ha, false, false, (1u << 20) + 1);
  EXPECT_EQ(a.out->take().code(), kInvalidArgument);
  wanted(a, 9, hrw + 1000, t);
  EXPECT_EQ(a.out->take().code(), kNotFound);
  EXPECT_EQ(a.session->locks_held(), 0u);
  EXPECT_EQ(a.session->pending_count(), 0u);
}

TEST_F(SessionTest, AWaitFailsNamingTheParticipantLostOwingDones) {
  Client worker = connect(), coord = connect();
  hello(worker, 1, "worker-2");
  worker.out->take();
  const uint64_t hw = open_handle(worker, "jobs", v1::OBJECT_KIND_WAIT_GROUP);
  const uint64_t hc = open_handle(coord, "jobs", v1::OBJECT_KIND_WAIT_GROUP);
  add(worker, 2, hw, 1);
  EXPECT_EQ(worker.out->take().add().count(), 1);
  wait(coord, 1, hc);
  EXPECT_EQ(coord.out->size(), 0u);
  worker.session->end();
  v1::ServerFrame f = coord.out->take();
  EXPECT_EQ(f.id(), 1u);
  EXPECT_EQ(f.code(), static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_EQ(f.message(),
            "dchan: WaitGroup \"jobs\": participant \"worker-2\" (session 1, "
            "test) was lost owing 1 Done(s)");
  wait(coord, 2, hc, /*nonblocking=*/true);
  EXPECT_EQ(coord.out->take().code(),
            static_cast<int>(absl::StatusCode::kAborted));
}

TEST_F(SessionTest, AForgivingWaitGroupReturnsWhenADebtorIsLost) {
  Client worker = connect(), coord = connect();
  v1::ServerFrame f =
      open_as(worker, "jobs", v1::OBJECT_KIND_WAIT_GROUP, "", true);
  const uint64_t hw = f.open().handle();
  f = open_as(coord, "jobs", v1::OBJECT_KIND_WAIT_GROUP, "", false);
  EXPECT_EQ(f.code(), kInvalidArgument) << "forgive must agree";
  f = open_as(coord, "jobs", v1::OBJECT_KIND_WAIT_GROUP, "", true);
  const uint64_t hc = f.open().handle();
  add(worker, 1, hw, 2);
  worker.out->take();
  wait(coord, 1, hc);
  worker.session->end();
  f = coord.out->take();
  EXPECT_EQ(f.code(), 0) << f.message();
  EXPECT_EQ(f.wait().outcome(), v1::OUTCOME_OK);
}

TEST_F(SessionTest, WaitGroupCountsAndCancelsInItsOwnShape) {
  Client a = connect();
  const uint64_t h = open_handle(a, "wg", v1::OBJECT_KIND_WAIT_GROUP);
  wait(a, 1, h, true);
  EXPECT_EQ(a.out->take().wait().outcome(), v1::OUTCOME_OK);
  add(a, 2, h, 3);
  EXPECT_EQ(a.out->take().add().count(), 3);
  add(a, 3, h, -4);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.code(), kFailedPrecondition);
  EXPECT_EQ(f.message(), "sync: negative WaitGroup counter");
  add(a, 4, h, int64_t{1} << 40);
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kOutOfRange));
  wait(a, 5, h, true);
  f = a.out->take();
  EXPECT_EQ(f.wait().outcome(), v1::OUTCOME_WOULD_BLOCK);
  EXPECT_EQ(f.wait().count(), 3);
  wait(a, 6, h);
  cancel(a, 6);
  f = a.out->take();
  EXPECT_EQ(f.id(), 6u);
  ASSERT_TRUE(f.has_wait());
  EXPECT_EQ(f.wait().outcome(), v1::OUTCOME_CANCELLED);
  add(a, 7, h, -3);
  EXPECT_EQ(a.out->take().add().count(), 0);
  EXPECT_EQ(a.out->size(), 0u) << "the cancelled wait was answered";
}

TEST_F(SessionTest, AtomicValueLoadSwapAndCompareAndSwap) {
  SessionLimits limits;
  limits.max_value_bytes = 8;
  Client a = connect(limits), b = connect(limits);
  const uint64_t h =
      open_handle(a, "v", v1::OBJECT_KIND_ATOMIC_VALUE, "string");
  v1::ServerFrame f = open_as(b, "v", v1::OBJECT_KIND_ATOMIC_VALUE, "int64");
  EXPECT_EQ(f.code(), kInvalidArgument);
  EXPECT_NE(f.message().find("string"), std::string::npos);
  EXPECT_NE(f.message().find("int64"), std::string::npos);

  v1::ClientFrame load;
  load.set_id(1);
  load.mutable_load()->set_handle(h);
  a.session->handle(load);
  EXPECT_FALSE(a.out->take().load().has_value());

  v1::ClientFrame swap;
  swap.set_id(2);
  swap.mutable_swap()->set_handle(h);
  swap.mutable_swap()->set_value("one");
  a.session->handle(swap);
  EXPECT_FALSE(a.out->take().swap().had_value());
  swap.mutable_swap()->set_value("two");
  a.session->handle(swap);
  f = a.out->take();
  EXPECT_TRUE(f.swap().had_value());
  EXPECT_EQ(f.swap().old(), "one");

  v1::ClientFrame cas;
  cas.set_id(3);
  cas.mutable_compare_and_swap()->set_handle(h);
  cas.mutable_compare_and_swap()->set_old("one");
  cas.mutable_compare_and_swap()->set_desired("three");
  a.session->handle(cas);
  EXPECT_FALSE(a.out->take().compare_and_swap().swapped());
  cas.mutable_compare_and_swap()->set_old("two");
  a.session->handle(cas);
  EXPECT_TRUE(a.out->take().compare_and_swap().swapped());
  a.session->handle(load);
  f = a.out->take();
  EXPECT_TRUE(f.load().has_value());
  EXPECT_EQ(f.load().value(), "three");

  swap.mutable_swap()->set_value("123456789");
  a.session->handle(swap);
  EXPECT_EQ(a.out->take().code(), kInvalidArgument);
  cas.mutable_compare_and_swap()->set_old("three");
  cas.mutable_compare_and_swap()->set_desired("123456789");
  a.session->handle(cas);
  EXPECT_EQ(a.out->take().code(), kInvalidArgument);
  a.session->handle(load);
  EXPECT_EQ(a.out->take().load().value(), "three");
}

TEST_F(SessionTest, AReleasedHandleIsNotFoundAndItsObjectLivesOn) {
  SessionLimits limits;
  limits.max_handles = 2;
  Client a = connect(limits), b = connect();
  const uint64_t hm = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  lock(a, 1, hm);
  EXPECT_EQ(a.out->take().lock().outcome(), v1::OUTCOME_OK);
  v1::ClientFrame f;
  f.set_id(2);
  f.mutable_release()->set_handle(hm);
  a.session->handle(f);
  v1::ServerFrame r = a.out->take();
  EXPECT_EQ(r.code(), 0) << r.message();
  EXPECT_TRUE(r.has_release());
  EXPECT_EQ(a.session->handle_count(), 0u);
  // The handle is gone; the lock the session holds is not.
  lock(a, 3, hm);
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_EQ(a.session->locks_held(), 1u);
  f.set_id(4);
  a.session->handle(f);  // released twice
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kNotFound));
  // Released handles do not count against the limit: open and release
  // more objects than it allows.
  for (int i = 0; i < 5; ++i) {
    const uint64_t h = open(a, "c" + std::to_string(i));
    f.set_id(10 + i);
    f.mutable_release()->set_handle(h);
    a.session->handle(f);
    EXPECT_EQ(a.out->take().code(), 0);
  }
  // The lock is still held by the session, which hands it on at its end.
  const uint64_t hb = open_handle(b, "m", v1::OBJECT_KIND_MUTEX);
  lock(b, 1, hb);
  EXPECT_EQ(b.out->size(), 0u);
  a.session->end();
  EXPECT_EQ(b.out->take().lock().outcome(), v1::OUTCOME_OK);
}

// ---------------------------------------------------------------------------
// Pipelining: sends with more_values, batch receives, returned values.

v1::ClientFrame multi_send(uint64_t id, uint64_t handle,
                           const std::vector<std::string>& values,
                           bool nonblocking = false) {
  v1::ClientFrame f;
  f.set_id(id);
  v1::SendRequest* req = f.mutable_send();
  req->set_handle(handle);
  req->set_nonblocking(nonblocking);
  req->set_value(values.front());
  for (std::size_t i = 1; i < values.size(); ++i) {
    req->add_more_values(values[i]);
  }
  return f;
}

v1::ClientFrame batch_recv(uint64_t id, uint64_t handle, uint32_t max,
                           bool nonblocking = false) {
  v1::ClientFrame f;
  f.set_id(id);
  f.mutable_recv()->set_handle(handle);
  f.mutable_recv()->set_max_values(max);
  f.mutable_recv()->set_nonblocking(nonblocking);
  return f;
}

// Every value of a recv answer, `value` then `more_values`.
std::vector<std::string> values_of(const v1::ServerFrame& f) {
  std::vector<std::string> out;
  if (f.recv().outcome() != v1::OUTCOME_OK) return out;
  out.push_back(f.recv().value());
  for (const std::string& v : f.recv().more_values()) out.push_back(v);
  return out;
}

// A receive takes parked senders' values too (Go's chanrecv refills the
// buffer from them), so batches of two show the order.
TEST_F(SessionTest, MultiValueSendWaitsForRoomInOrderAndIsAnsweredOnce) {
  Client a = connect(), b = connect(), c = connect();
  const uint64_t ha = open(a, "ch", "string", 2),
                 hb = open(b, "ch", "string", 2),
                 hc = open(c, "ch", "string", 2);
  a.session->handle(multi_send(1, ha, {"1", "2", "3", "4"}));
  EXPECT_EQ(a.out->size(), 0u) << "answered before 3 and 4 were in";
  // Another session's send queues behind 3 and 4.
  send(c, 9, hc, "5");
  b.session->handle(batch_recv(2, hb, 2));
  EXPECT_EQ(values_of(b.out->take()), (std::vector<std::string>{"1", "2"}));
  // Taking them moved 3 and 4 into the buffer: now all four are sent.
  const v1::ServerFrame r = a.out->take();
  EXPECT_EQ(r.id(), 1u);
  EXPECT_EQ(r.send().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(r.send().sent(), 4u);
  EXPECT_EQ(a.out->size(), 0u);
  b.session->handle(batch_recv(3, hb, 2));
  EXPECT_EQ(values_of(b.out->take()), (std::vector<std::string>{"3", "4"}));
  b.session->handle(batch_recv(4, hb, 2));
  EXPECT_EQ(values_of(b.out->take()), (std::vector<std::string>{"5"}));
  EXPECT_EQ(c.out->take().send().outcome(), v1::OUTCOME_OK);
}

// A batch receive waiting on an empty channel is completed by the first
// value of a multi-value send; its batch is filled once the whole frame is
// in, so one answer carries the frame (it carried only the first value,
// and the receiver asked again for the rest). Values beyond the buffer
// park and reach the batch too (a receive refills the buffer from them).
TEST_F(SessionTest, AWaitingBatchReceiveGetsTheWholeFrameOfAMultiValueSend) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch", "string", 3),
                 hb = open(b, "ch", "string", 3);
  b.session->handle(batch_recv(1, hb, 8));
  EXPECT_EQ(b.out->size(), 0u);
  a.session->handle(multi_send(2, ha, {"1", "2", "3", "4", "5"}));
  EXPECT_EQ(values_of(b.out->take()),
            (std::vector<std::string>{"1", "2", "3", "4", "5"}));
  EXPECT_EQ(b.out->size(), 0u);
  const v1::ServerFrame r = a.out->take();
  EXPECT_EQ(r.send().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(r.send().sent(), 5u);
  // A receive that takes one value at a time is answered at once, as before.
  recv(b, 3, hb);
  EXPECT_EQ(b.out->size(), 0u);
  a.session->handle(multi_send(4, ha, {"6", "7"}));
  EXPECT_EQ(b.out->take().recv().value(), "6");
  EXPECT_EQ(a.out->take().send().sent(), 2u);
  b.session->handle(batch_recv(5, hb, 8));
  EXPECT_EQ(values_of(b.out->take()), (std::vector<std::string>{"7"}));
}

// An outbox that runs `on_send_answer` (once) as the first send answer is
// pushed: something another session does between a multi-value send's
// answer and the batch fills it deferred (FillsAfterSend).
class HookedOutbox : public TestOutbox {
 public:
  std::function<void()> on_send_answer;
  bool push(v1::ServerFrame& frame,
            const std::shared_ptr<ChannelObject>& returned_to) override {
    if (frame.has_send() && on_send_answer) std::exchange(on_send_answer, {})();
    return TestOutbox::push(frame, returned_to);
  }
};

// A batch receiver whose session ends before its deferred fill takes no
// more values out: only the value that completed its receive goes back (to
// the channel's back, as any undeliverable answer's), and the rest keep
// their order for the next receiver. (Filling anyway added 2 to the
// undeliverable answer, and both went back: 3, 4, 1, 2.)
TEST_F(SessionTest, ABatchReceiverThatEndsBeforeItsFillTakesNoMoreValues) {
  auto hooked = std::make_shared<HookedOutbox>();
  Client a;
  a.out = hooked;
  a.session = std::make_shared<Session>(100, "test", registry_, a.out);
  sessions_.push_back(a.session);
  Client b = connect(), c = connect();
  const uint64_t ha = open(a, "ch", "string", 4),
                 hb = open(b, "ch", "string", 4),
                 hc = open(c, "ch", "string", 4);
  b.session->handle(batch_recv(1, hb, 2));
  hooked->on_send_answer = [&] { b.session->end(); };
  a.session->handle(multi_send(2, ha, {"1", "2", "3", "4"}));
  EXPECT_EQ(a.out->take().send().sent(), 4u);
  c.session->handle(batch_recv(3, hc, 8));
  EXPECT_EQ(values_of(c.out->take()),
            (std::vector<std::string>{"2", "3", "4", "1"}));
}

TEST_F(SessionTest, MultiValueSendCutOffByACloseSaysHowManyGotIn) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch", "string", 1),
                 hb = open(b, "ch", "string", 1);
  a.session->handle(multi_send(1, ha, {"1", "2", "3"}));
  v1::ClientFrame close;
  close.set_id(2);
  close.mutable_close()->set_handle(hb);
  b.session->handle(close);
  EXPECT_EQ(b.out->take().code(), 0);
  const v1::ServerFrame r = a.out->take();
  EXPECT_EQ(r.send().outcome(), v1::OUTCOME_CLOSED);
  EXPECT_EQ(r.send().sent(), 1u);
  // After a close, nothing gets in at all.
  a.session->handle(multi_send(3, ha, {"4", "5"}));
  const v1::ServerFrame r2 = a.out->take();
  EXPECT_EQ(r2.send().outcome(), v1::OUTCOME_CLOSED);
  EXPECT_EQ(r2.send().sent(), 0u);
}

// Values that wait are moved into the channel, not copied: long values (no
// small-string buffer) arrive whole and in order, whether they fitted at
// once or waited; receives that free room part by part let the parked ones
// in one by one; a close then fails the rest, and the answer counts exactly
// the values that got in — which stay receivable, in order, after the close.
TEST_F(SessionTest, MultiValueSendPartlyTakenThenClosedKeepsWhatGotIn) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch", "string", 2),
                 hb = open(b, "ch", "string", 2);
  std::vector<std::string> values;
  for (char c : std::string("abcdefg")) values.push_back(std::string(100, c));
  a.session->handle(multi_send(1, ha, values));  // 2 in, 5 parked
  EXPECT_EQ(a.out->size(), 0u);
  recv(b, 2, hb);  // takes a, lets c in
  EXPECT_EQ(b.out->take().recv().value(), values[0]);
  b.session->handle(batch_recv(3, hb, 2));  // takes b, c; lets d, e in
  EXPECT_EQ(values_of(b.out->take()),
            (std::vector<std::string>{values[1], values[2]}));
  EXPECT_EQ(a.out->size(), 0u) << "answered while f and g still wait";
  v1::ClientFrame close;
  close.set_id(4);
  close.mutable_close()->set_handle(hb);
  b.session->handle(close);
  EXPECT_EQ(b.out->take().code(), 0);
  const v1::ServerFrame r = a.out->take();
  EXPECT_EQ(r.id(), 1u);
  EXPECT_EQ(r.send().outcome(), v1::OUTCOME_CLOSED);
  EXPECT_EQ(r.send().sent(), 5u);
  EXPECT_EQ(a.out->size(), 0u) << "answered more than once";
  b.session->handle(batch_recv(5, hb, 8));
  EXPECT_EQ(values_of(b.out->take()),
            (std::vector<std::string>{values[3], values[4]}));
  recv(b, 6, hb);
  EXPECT_EQ(b.out->take().recv().outcome(), v1::OUTCOME_CLOSED);
}

TEST_F(SessionTest, MultiValueSendRefusesBadInputAndSendsNothing) {
  SessionLimits limits;
  limits.max_value_bytes = 4;
  Client a = connect(limits);
  const uint64_t h = open(a, "ch", "string", 8);
  a.session->handle(multi_send(1, h, {"1", "2"}, /*nonblocking=*/true));
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  a.session->handle(multi_send(2, h, {"1", "toolong"}));
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  recv(a, 3, h, /*nonblocking=*/true);
  EXPECT_EQ(a.out->take().recv().outcome(), v1::OUTCOME_WOULD_BLOCK);
}

TEST_F(SessionTest, BatchReceiveWaitsForOneThenTakesWhatIsThere) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch", "string", 8),
                 hb = open(b, "ch", "string", 8);
  b.session->handle(batch_recv(1, hb, 3));
  EXPECT_EQ(b.out->size(), 0u);
  send(a, 2, ha, "1");
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(values_of(b.out->take()), (std::vector<std::string>{"1"}));
  a.session->handle(multi_send(3, ha, {"2", "3", "4", "5"}));
  EXPECT_EQ(a.out->take().send().sent(), 4u);
  b.session->handle(batch_recv(4, hb, 3));
  EXPECT_EQ(values_of(b.out->take()),
            (std::vector<std::string>{"2", "3", "4"}));
  b.session->handle(batch_recv(5, hb, 3, /*nonblocking=*/true));
  EXPECT_EQ(values_of(b.out->take()), (std::vector<std::string>{"5"}));
}

TEST_F(SessionTest, ReturnedValuesGoToTheBackAndOutliveAClose) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch", "string", 2),
                 hb = open(b, "ch", "string", 2);
  // b takes r0 and, as a batch's extras, r1..r3 (two of them were parked
  // sends of a).
  a.session->handle(multi_send(1, ha, {"r0", "r1", "r2", "r3"}));
  b.session->handle(batch_recv(2, hb, 4));
  EXPECT_EQ(values_of(b.out->take()),
            (std::vector<std::string>{"r0", "r1", "r2", "r3"}));
  EXPECT_EQ(a.out->take().send().sent(), 4u);
  send(a, 3, ha, "x");
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_OK);
  v1::ClientFrame ret;
  ret.set_id(4);
  ret.mutable_return_values()->set_handle(hb);
  for (const char* v : {"r1", "r2", "r3"})
    ret.mutable_return_values()->add_values(v);
  b.session->handle(ret);
  EXPECT_EQ(b.out->take().return_values().taken(), 3u);
  // "x" and "r1" are buffered, "r2" and "r3" wait for room; the close
  // fails their sends, and the broker keeps them for the receivers.
  v1::ClientFrame close;
  close.set_id(5);
  close.mutable_close()->set_handle(ha);
  a.session->handle(close);
  EXPECT_EQ(a.out->take().code(), 0);
  v1::ClientFrame stat;
  stat.set_id(6);
  stat.mutable_stat()->set_handle(hb);
  b.session->handle(stat);
  EXPECT_EQ(b.out->take().stat().len(), 4u);
  b.session->handle(batch_recv(7, hb, 10));
  EXPECT_EQ(values_of(b.out->take()),
            (std::vector<std::string>{"x", "r1", "r2", "r3"}));
  recv(b, 8, hb);
  EXPECT_EQ(b.out->take().recv().outcome(), v1::OUTCOME_CLOSED);
}

TEST_F(SessionTest, ASessionCanReturnOnlyValuesItTookInBatches) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch", "string", 4),
                 hb = open(b, "ch", "string", 4);
  // Never took anything: a return would add values out of thin air.
  v1::ClientFrame ret;
  ret.set_id(1);
  ret.mutable_return_values()->set_handle(hb);
  ret.mutable_return_values()->add_values("forged");
  b.session->handle(ret);
  EXPECT_EQ(b.out->take().code(),
            static_cast<int>(absl::StatusCode::kFailedPrecondition));
  // A plain receive takes v0: it cannot come back. A batch receive takes
  // v1, v2 and v3 (first value and extras): it may return three, once.
  a.session->handle(multi_send(2, ha, {"v0", "v1", "v2", "v3"}));
  EXPECT_EQ(a.out->take().send().sent(), 4u);
  recv(b, 3, hb);
  EXPECT_EQ(b.out->take().recv().value(), "v0");
  ret.set_id(4);
  b.session->handle(ret);  // "forged" still
  EXPECT_EQ(b.out->take().code(),
            static_cast<int>(absl::StatusCode::kFailedPrecondition));
  b.session->handle(batch_recv(5, hb, 3));
  EXPECT_EQ(values_of(b.out->take()),
            (std::vector<std::string>{"v1", "v2", "v3"}));
  ret.set_id(6);
  ret.mutable_return_values()->add_values("v2");  // now "forged", "v2"
  ret.mutable_return_values()->add_values("v3");
  ret.mutable_return_values()->add_values("v4");  // four values: too many
  b.session->handle(ret);
  EXPECT_EQ(b.out->take().code(),
            static_cast<int>(absl::StatusCode::kFailedPrecondition));
  ret.mutable_return_values()->clear_values();
  for (const char* v : {"v1", "v2", "v3"})
    ret.mutable_return_values()->add_values(v);
  ret.set_id(7);
  b.session->handle(ret);
  EXPECT_EQ(b.out->take().return_values().taken(), 3u);
  ret.set_id(8);
  b.session->handle(ret);  // already handed back
  EXPECT_EQ(b.out->take().code(),
            static_cast<int>(absl::StatusCode::kFailedPrecondition));
  b.session->handle(batch_recv(9, hb, 10, /*nonblocking=*/true));
  EXPECT_EQ(values_of(b.out->take()),
            (std::vector<std::string>{"v1", "v2", "v3"}));
}

TEST_F(SessionTest, AValueItsSessionCouldNotTakeOutlivesAClose) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "ch", "string", 1),
                 hb = open(b, "ch", "string", 1);
  send(a, 1, ha, "v1");
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_OK);
  send(a, 2, ha, "v2");  // parked: the buffer is full
  EXPECT_EQ(a.out->size(), 0u);
  // b's stream can take no more answers: the v1 it receives goes back into
  // the channel, where v2 took its place, so it waits for room ...
  b.out->refuse();
  recv(b, 1, hb, /*nonblocking=*/true);
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_OK);
  // ... and a close fails that wait: the channel keeps v1 for its receivers.
  v1::ClientFrame close;
  close.set_id(3);
  close.mutable_close()->set_handle(ha);
  a.session->handle(close);
  EXPECT_EQ(a.out->take().code(), 0);
  recv(a, 4, ha);
  EXPECT_EQ(a.out->take().recv().value(), "v2");
  recv(a, 5, ha);
  EXPECT_EQ(a.out->take().recv().value(), "v1");
  recv(a, 6, ha);
  EXPECT_EQ(a.out->take().recv().outcome(), v1::OUTCOME_CLOSED);
}

// A value handed back to a full channel waits as a parked send, which
// nobody can withdraw. It must not hold its channel: when the broker exits
// (its registry goes) with the value still parked, the channel, its
// buffer and the value are freed (they used to keep each other alive:
// object -> channel -> parked send -> object).
TEST_F(SessionTest, AValueThatCouldNotBeDeliveredDoesNotKeepItsChannelAlive) {
  expect_parked_values_free_their_channel(
      1, [](Client& a, Client& b, uint64_t ha, uint64_t hb) {
        send(a, 1, ha, "v1");
        EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_OK);
        send(a, 2, ha, "v2");  // parked: the buffer is full
        // b cannot take the v1 it receives: it goes back, behind v2, and
        // waits.
        b.out->refuse();
        recv(b, 1, hb, /*nonblocking=*/true);
        EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_OK);
      });
}

// The same for values a client hands back (ReturnRequest).
TEST_F(SessionTest, ReturnedValuesWaitingForRoomDoNotKeepTheirChannelAlive) {
  expect_parked_values_free_their_channel(
      2, [](Client& a, Client& b, uint64_t ha, uint64_t hb) {
        a.session->handle(multi_send(1, ha, {"r0", "r1", "r2"}));
        b.session->handle(batch_recv(2, hb, 3));
        EXPECT_EQ(values_of(b.out->take()),
                  (std::vector<std::string>{"r0", "r1", "r2"}));
        EXPECT_EQ(a.out->take().send().sent(), 3u);
        send(a, 3, ha, "x");  // the buffer is full again
        EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_OK);
        v1::ClientFrame ret;
        ret.set_id(4);
        ret.mutable_return_values()->set_handle(hb);
        ret.mutable_return_values()->add_values("r1");
        ret.mutable_return_values()->add_values("r2");
        b.session->handle(ret);
        EXPECT_EQ(b.out->take().return_values().taken(), 2u);
      });
}

TEST_F(SessionTest, ReturnToAnUnknownHandleIsNotFound) {
  Client a = connect();
  v1::ClientFrame ret;
  ret.set_id(1);
  ret.mutable_return_values()->set_handle(42);
  ret.mutable_return_values()->add_values("v");
  a.session->handle(ret);
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kNotFound));
}

// --- Offers (spanning selects) ---------------------------------------------

template <class C>
void offer(C& c, uint64_t id, uint64_t handle, bool send, uint64_t select_id,
           const std::string& value = "") {
  v1::ClientFrame f;
  f.set_id(id);
  f.mutable_offer()->set_handle(handle);
  f.mutable_offer()->set_send(send);
  f.mutable_offer()->set_value(value);
  f.mutable_offer()->set_select_id(select_id);
  c.session->handle(f);
}

template <class C>
void claim_answer(C& c, uint64_t target, uint64_t claim, bool accept) {
  v1::ClientFrame f;  // id 0: a claim answer is not a request
  f.mutable_claim_answer()->set_target(target);
  f.mutable_claim_answer()->set_claim(claim);
  f.mutable_claim_answer()->set_accept(accept);
  c.session->handle(f);
}

TEST_F(SessionTest, OffersOfTwoSessionsMeetThroughTwoClaims) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "x"), hb = open(b, "x");
  offer(a, 1, ha, /*send=*/false, 1);
  EXPECT_EQ(a.out->size(), 0u);
  offer(b, 2, hb, /*send=*/true, 1, "hello");
  // a's session id is lower: a is asked first.
  v1::ServerFrame q = a.out->take();
  ASSERT_TRUE(q.has_offer_claim()) << q.DebugString();
  EXPECT_EQ(q.id(), 1u);
  EXPECT_EQ(b.out->size(), 0u);
  claim_answer(a, 1, q.offer_claim().claim(), true);
  v1::ServerFrame qb = b.out->take();
  ASSERT_TRUE(qb.has_offer_claim()) << qb.DebugString();
  claim_answer(b, 2, qb.offer_claim().claim(), true);
  v1::ServerFrame ra = a.out->take(), rb = b.out->take();
  EXPECT_EQ(ra.id(), 1u);
  EXPECT_EQ(ra.offer().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(ra.offer().value(), "hello");
  EXPECT_EQ(rb.id(), 2u);
  EXPECT_EQ(rb.offer().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(a.session->pending_count(), 0u);
  EXPECT_EQ(b.session->pending_count(), 0u);
}

TEST_F(SessionTest, ClaimAnswersNeverAskedTwiceOrLateAreIgnored) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "x"), hb = open(b, "x");
  // Never asked: no such pending request at all, then an offer not asked.
  claim_answer(a, 77, 1, true);
  v1::ServerFrame e = a.out->take();
  EXPECT_EQ(e.id(), 0u);
  EXPECT_EQ(e.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition))
      << e.message();
  offer(a, 1, ha, false, 1);
  claim_answer(a, 1, 1, true);
  e = a.out->take();
  EXPECT_EQ(e.id(), 0u);
  EXPECT_NE(e.code(), 0);
  // A receive pending under the id is not an offer.
  recv(a, 5, ha);
  claim_answer(a, 5, 1, true);
  e = a.out->take();
  EXPECT_EQ(e.id(), 0u);
  EXPECT_NE(e.code(), 0);

  offer(b, 2, hb, true, 1, "v");
  v1::ServerFrame q = a.out->take();
  ASSERT_TRUE(q.has_offer_claim());
  claim_answer(a, 1, q.offer_claim().claim(), true);
  claim_answer(a, 1, q.offer_claim().claim(), true);  // twice
  e = a.out->take();
  EXPECT_EQ(e.id(), 0u);
  EXPECT_NE(e.code(), 0);
  v1::ServerFrame qb = b.out->take();
  ASSERT_TRUE(qb.has_offer_claim());
  claim_answer(b, 2, qb.offer_claim().claim(), true);
  EXPECT_EQ(a.out->take().offer().value(), "v");
  EXPECT_EQ(b.out->take().offer().outcome(), v1::OUTCOME_OK);
  claim_answer(b, 2, qb.offer_claim().claim(), true);  // late
  e = b.out->take();
  EXPECT_EQ(e.id(), 0u);
  EXPECT_NE(e.code(), 0);
  // The sessions go on: the pending receive still works.
  send(b, 3, hb, "after");
  EXPECT_EQ(a.out->take().recv().value(), "after");
  EXPECT_EQ(b.out->take().send().outcome(), v1::OUTCOME_OK);
}

TEST_F(SessionTest, ASessionEndingInAMatchAbortsItsPartner) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "x"), hb = open(b, "x");
  offer(a, 1, ha, false, 1);
  offer(b, 2, hb, true, 1, "v");
  v1::ServerFrame q = a.out->take();
  claim_answer(a, 1, q.offer_claim().claim(), true);
  ASSERT_TRUE(b.out->take().has_offer_claim());
  b.session->end();  // never answers
  v1::ServerFrame ra = a.out->take();
  EXPECT_EQ(ra.id(), 1u);
  EXPECT_EQ(ra.offer().outcome(), v1::OUTCOME_ABORTED);
  // b's value went nowhere: a later receiver finds nothing.
  recv(a, 3, ha, /*nonblocking=*/true);
  EXPECT_EQ(a.out->take().recv().outcome(), v1::OUTCOME_WOULD_BLOCK);
}

TEST_F(SessionTest, AReceivedOfferValueThatCannotBeDeliveredGoesBack) {
  Client a = connect(), b = connect(), c = connect();
  const uint64_t ha = open(a, "x"), hb = open(b, "x"), hc = open(c, "x");
  offer(a, 1, ha, false, 1);
  offer(b, 2, hb, true, 1, "kept");
  claim_answer(a, 1, a.out->take().offer_claim().claim(), true);
  a.out->refuse();  // a's stream has ended
  claim_answer(b, 2, b.out->take().offer_claim().claim(), true);
  EXPECT_EQ(b.out->take().offer().outcome(), v1::OUTCOME_OK);
  recv(c, 3, hc);
  v1::ServerFrame r = c.out->take();
  EXPECT_EQ(r.recv().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(r.recv().value(), "kept");
}

TEST_F(SessionTest, OffersAreRefusedOnBufferedChannelsAndWithoutSelectId) {
  Client a = connect();
  const uint64_t h = open(a, "buffered", "string", 4);
  offer(a, 1, h, true, 1, "v");
  v1::ServerFrame e = a.out->take();
  EXPECT_EQ(e.code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(e.message().find("unbuffered"), std::string::npos) << e.message();
  const uint64_t u = open(a, "u");
  offer(a, 2, u, true, 0, "v");
  EXPECT_EQ(a.out->take().code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  // Cancelled in its own shape.
  offer(a, 3, u, true, 9, "v");
  v1::ClientFrame cancel;
  cancel.mutable_cancel()->set_target(3);
  a.session->handle(cancel);
  v1::ServerFrame c = a.out->take();
  EXPECT_EQ(c.id(), 3u);
  EXPECT_EQ(c.offer().outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(a.session->pending_count(), 0u);
}

TEST_F(SessionTest, ReleasingTheLastHandleForgetsAnIdleChannel) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "c"), hb = open(b, "c");
  send(a, 1, ha, "x", /*nonblocking=*/true);
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_WOULD_BLOCK);
  release(a, ha);
  EXPECT_EQ(registry_.size(), 1u);  // b holds it
  release(b, hb);
  EXPECT_EQ(registry_.size(), 0u);
  // The name is free again, for another capacity.
  const uint64_t h = open(a, "c", "string", 4);
  send(a, 2, h, "x");
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_OK);
}

TEST_F(SessionTest, ReleaseKeepsAChannelThatHoldsAValueOrIsClosed) {
  Client a = connect(), b = connect();
  const uint64_t hbuf = open(a, "buf", "string", 1);
  send(a, 1, hbuf, "kept");
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_OK);
  const uint64_t hdone = open(a, "done");
  v1::ClientFrame close;
  close.set_id(2);
  close.mutable_close()->set_handle(hdone);
  a.session->handle(close);
  EXPECT_TRUE(a.out->take().has_close());
  release(a, hbuf);
  release(a, hdone);
  EXPECT_EQ(registry_.size(), 2u);
  // Another capacity is refused: it is the same channel.
  EXPECT_EQ(open_as(b, "buf", v1::OBJECT_KIND_CHANNEL, "string").code(),
            static_cast<int>(absl::StatusCode::kInvalidArgument));
  recv(b, 1, open(b, "buf", "string", 1));
  EXPECT_EQ(b.out->take().recv().value(), "kept");
  recv(b, 2, open(b, "done"));
  EXPECT_EQ(b.out->take().recv().outcome(), v1::OUTCOME_CLOSED);
}

TEST_F(SessionTest, APendingReceiveKeepsItsChannelAfterItsHandleIsReleased) {
  Client a = connect(), b = connect();
  const uint64_t ha = open(a, "c");
  recv(a, 1, ha);
  release(a, ha);
  EXPECT_EQ(registry_.size(), 1u);
  send(b, 1, open(b, "c"), "x");
  EXPECT_EQ(b.out->take().send().outcome(), v1::OUTCOME_OK);
  EXPECT_EQ(a.out->take().recv().value(), "x");
}

TEST_F(SessionTest, AHeldLockAStoredValueAndAnOwedWaitGroupAreKept) {
  Client a = connect(), b = connect();
  const uint64_t hm = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  lock(a, 1, hm);
  EXPECT_EQ(a.out->take().lock().outcome(), v1::OUTCOME_OK);
  const uint64_t hv =
      open_handle(a, "v", v1::OBJECT_KIND_ATOMIC_VALUE, "string");
  v1::ClientFrame swap;
  swap.set_id(2);
  swap.mutable_swap()->set_handle(hv);
  swap.mutable_swap()->set_value("stored");
  a.session->handle(swap);
  EXPECT_FALSE(a.out->take().swap().had_value());
  const uint64_t hw = open_handle(a, "wg", v1::OBJECT_KIND_WAIT_GROUP);
  add(a, 3, hw, 1);
  EXPECT_EQ(a.out->take().code(), 0);
  release(a, hm);
  release(a, hv);
  release(a, hw);
  EXPECT_EQ(registry_.size(), 3u);

  lock(b, 1, open_handle(b, "m", v1::OBJECT_KIND_MUTEX), /*nonblocking=*/true);
  EXPECT_EQ(b.out->take().lock().outcome(), v1::OUTCOME_WOULD_BLOCK);
  v1::ClientFrame load;
  load.set_id(2);
  load.mutable_load()->set_handle(
      open_handle(b, "v", v1::OBJECT_KIND_ATOMIC_VALUE, "string"));
  b.session->handle(load);
  EXPECT_EQ(b.out->take().load().value(), "stored");
  wait(b, 3, open_handle(b, "wg", v1::OBJECT_KIND_WAIT_GROUP),
       /*nonblocking=*/true);
  EXPECT_EQ(b.out->take().wait().outcome(), v1::OUTCOME_WOULD_BLOCK);
}

TEST_F(SessionTest, AnEndedSessionsIdleObjectsAreForgottenOnceItsHandlesDrop) {
  Client a = connect(), b = connect();
  recv(a, 1, open(a, "c"));  // withdrawn by the end
  const uint64_t hm = open_handle(a, "m", v1::OBJECT_KIND_MUTEX);
  lock(a, 2, hm);  // released by the end
  EXPECT_EQ(a.out->take().lock().outcome(), v1::OUTCOME_OK);
  const uint64_t hw = open_handle(a, "wg", v1::OBJECT_KIND_WAIT_GROUP);
  add(a, 3, hw, 1);
  add(a, 4, hw, -1);
  EXPECT_EQ(a.out->take().code(), 0);
  EXPECT_EQ(a.out->take().code(), 0);
  // A lock whose handle was released while the session held it: forgotten
  // at the end too, once released.
  const uint64_t hr = open_handle(a, "rw", v1::OBJECT_KIND_RW_MUTEX);
  lock(a, 5, hr);
  EXPECT_EQ(a.out->take().lock().outcome(), v1::OUTCOME_OK);
  release(a, hr);
  // Still open elsewhere: kept.
  open(b, "shared");
  open(a, "shared");
  a.session->end();
  EXPECT_EQ(registry_.size(), 5u);  // the handles are still there
  a.session->drop_handles();
  EXPECT_EQ(registry_.size(), 1u);
  EXPECT_EQ(registry_.objects()[0]->name(), "shared");
  EXPECT_EQ(a.session->handle_count(), 0u);
}

TEST_F(SessionTest, AWaitGroupFailedByAnEndedDebtorIsKept) {
  Client a = connect(), b = connect();
  add(a, 1, open_handle(a, "wg", v1::OBJECT_KIND_WAIT_GROUP), 1);
  EXPECT_EQ(a.out->take().code(), 0);
  a.session->end();
  a.session->drop_handles();
  EXPECT_EQ(registry_.size(), 1u);
  wait(b, 1, open_handle(b, "wg", v1::OBJECT_KIND_WAIT_GROUP));
  EXPECT_EQ(b.out->take().code(), static_cast<int>(absl::StatusCode::kAborted));
}

TEST_F(SessionTest, DropHandlesBeforeEndDoesNothing) {
  Client a = connect();
  const uint64_t h = open(a, "c");
  a.session->drop_handles();
  EXPECT_EQ(registry_.size(), 1u);
  send(a, 1, h, "x", /*nonblocking=*/true);
  EXPECT_EQ(a.out->take().send().outcome(), v1::OUTCOME_WOULD_BLOCK);
}

TEST_F(SessionTest, ALockOrWaitGroupIsForgottenAtReleaseOnlyWhenFree) {
  Client a = connect(), b = connect();
  const uint64_t free_lock = open_handle(a, "free", v1::OBJECT_KIND_MUTEX);
  lock(a, 1, free_lock);
  const uint64_t token = a.out->take().lock().token();
  unlock(a, 2, free_lock, token);
  EXPECT_EQ(a.out->take().code(), 0);
  release(a, free_lock);
  EXPECT_EQ(registry_.size(), 0u);

  // Held (or owed) when released: kept, and still settled at the end.
  const uint64_t held = open_handle(a, "held", v1::OBJECT_KIND_MUTEX);
  lock(a, 3, held);
  EXPECT_EQ(a.out->take().lock().outcome(), v1::OUTCOME_OK);
  const uint64_t owed = open_handle(a, "owed", v1::OBJECT_KIND_WAIT_GROUP);
  add(a, 4, owed, 1);
  EXPECT_EQ(a.out->take().code(), 0);
  // Two handles to one lock: released once, the other still holds it.
  const uint64_t twice1 = open_handle(a, "twice", v1::OBJECT_KIND_MUTEX);
  const uint64_t twice2 = open_handle(a, "twice", v1::OBJECT_KIND_MUTEX);
  release(a, held);
  release(a, owed);
  release(a, twice1);
  EXPECT_EQ(registry_.size(), 3u);
  lock(a, 5, twice2);
  EXPECT_EQ(a.out->take().lock().outcome(), v1::OUTCOME_OK);
  release(a, twice2);  // held: kept

  const uint64_t hb = open_handle(b, "held", v1::OBJECT_KIND_MUTEX);
  lock(b, 1, hb);  // queued behind a's hold
  EXPECT_EQ(b.out->size(), 0u);
  a.session->end();  // releases "held" and "twice", fails "owed"
  EXPECT_EQ(b.out->take().lock().outcome(), v1::OUTCOME_OK);
  wait(b, 2, open_handle(b, "owed", v1::OBJECT_KIND_WAIT_GROUP));
  EXPECT_EQ(b.out->take().code(), static_cast<int>(absl::StatusCode::kAborted));
  a.session->drop_handles();
  // "twice" goes; "held" is b's, "owed" has failed.
  EXPECT_EQ(registry_.size(), 2u);
}

// Sessions on several threads open, use and release one name at once: an
// open never gets a channel that is being forgotten, and nothing forgotten
// held a value — every value sent is received exactly once.
TEST_F(SessionTest, ConcurrentOpensAndReleasesOfOneNameLoseNoValue) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 2000;
  std::vector<Client> clients;
  for (int t = 0; t < kThreads; ++t) clients.push_back(connect());
  std::atomic<int64_t> sent{0}, received{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Client& c = clients[t];
      for (int i = 0; i < kRounds; ++i) {
        const uint64_t h = open(c, "shared", "string", 1);
        send(c, 1, h, "v", /*nonblocking=*/true);
        if (c.out->take().send().outcome() == v1::OUTCOME_OK) ++sent;
        if (i % 2 == 0) {
          recv(c, 2, h, /*nonblocking=*/true);
          if (c.out->take().recv().outcome() == v1::OUTCOME_OK) ++received;
        }
        release(c, h);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  Client last = connect();
  recv(last, 1, open(last, "shared", "string", 1), /*nonblocking=*/true);
  if (last.out->take().recv().outcome() == v1::OUTCOME_OK) ++received;
  EXPECT_GT(sent.load(), 0);
  EXPECT_EQ(sent.load(), received.load());
}

}  // namespace
}  // namespace dchan::server
