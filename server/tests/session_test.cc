// The session core without gRPC: frames in, frames out.
#include "session.h"

#include <deque>
#include <memory>
#include <optional>
#include <string>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace dchan::server {
namespace {

class TestOutbox : public Outbox {
 public:
  bool push(v1::ServerFrame& frame,
            const std::shared_ptr<ChannelObject>&) override {
    absl::MutexLock lock(&mu_);
    if (refuse_) return false;
    frames_.push_back(std::move(frame));
    return true;
  }
  void finish(const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    if (finished_.has_value()) return;
    finished_ = status;
    refuse_ = true;
  }
  // The status the stream was finished with, if it was.
  std::optional<absl::Status> finished() {
    absl::MutexLock lock(&mu_);
    return finished_;
  }
  // The oldest answer not yet taken; fails the test if there is none.
  v1::ServerFrame take() {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(frames_.empty()) << "no answer";
    if (frames_.empty()) return {};
    v1::ServerFrame f = std::move(frames_.front());
    frames_.pop_front();
    return f;
  }
  std::size_t size() {
    absl::MutexLock lock(&mu_);
    return frames_.size();
  }
  void refuse() {
    absl::MutexLock lock(&mu_);
    refuse_ = true;
  }

 private:
  absl::Mutex mu_;
  std::deque<v1::ServerFrame> frames_;
  bool refuse_ = false;
  std::optional<absl::Status> finished_;
};

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
    return c;
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

  static void cancel(Client& c, uint64_t target) {
    v1::ClientFrame f;
    f.mutable_cancel()->set_target(target);
    c.session->handle(f);
  }

  Registry registry_;
  uint64_t ids_ = 0;
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
  cancel(a, 5);
  v1::ServerFrame f = a.out->take();
  EXPECT_EQ(f.id(), 5u);
  EXPECT_EQ(f.recv().outcome(), v1::OUTCOME_CANCELLED);
  send(b, 1, hb, "x", true);
  EXPECT_EQ(b.out->take().send().outcome(), v1::OUTCOME_WOULD_BLOCK);
  // Cancelling again, or an id never used, is answered by nothing.
  cancel(a, 5);
  cancel(a, 12345);
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

}  // namespace
}  // namespace dchan::server
