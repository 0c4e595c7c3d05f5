// Reaper: silent sessions end, talking ones live on; real threads and
// short TTLs, bounded by "eventually", never by exact timing.
#include "reaper.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "lock.h"
#include "test_outbox.h"

namespace dchan::server {
namespace {

using fakes::TestOutbox;
using std::chrono::milliseconds;

template <class Cond>
bool eventually(Cond cond, milliseconds limit = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

class ReaperTest : public ::testing::Test {
 protected:
  struct Client {
    std::shared_ptr<TestOutbox> out = std::make_shared<TestOutbox>();
    std::shared_ptr<Session> session;
  };

  Client connect(milliseconds ttl) {
    SessionLimits limits;
    limits.min_ttl = milliseconds(1);
    limits.default_ttl = ttl;
    Client c;
    c.session = std::make_shared<Session>(++ids_, "test-peer", registry_, c.out,
                                          limits);
    absl::MutexLock lock(&mu_);
    sessions_.push_back(c.session);
    return c;
  }

  void TearDown() override {
    absl::MutexLock lock(&mu_);
    for (const std::shared_ptr<Session>& s : sessions_) s->end();
  }

  Reaper::ListSessions lister() {
    return [this] {
      absl::MutexLock lock(&mu_);
      return sessions_;
    };
  }

  static void ping(Client& c, uint64_t id) {
    v1::ClientFrame f;
    f.set_id(id);
    f.mutable_ping();
    c.session->handle(f);
  }

  Registry registry_;
  uint64_t ids_ = 0;
  absl::Mutex mu_;
  std::vector<std::shared_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
};

TEST_F(ReaperTest, ASilentSessionIsEndedWithUnavailableNamingItsTtl) {
  Client c = connect(milliseconds(50));
  Reaper reaper(lister());
  ASSERT_TRUE(eventually([&] { return c.out->finished().has_value(); }));
  EXPECT_FALSE(c.session->live());
  const absl::Status st = *c.out->finished();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(st.message(),
            "dchan-broker: session 1 expired (no frame for 50 ms)");
}

TEST_F(ReaperTest, ASessionThatKeepsSendingFramesLivesOn) {
  Client talker = connect(milliseconds(300));
  Client silent = connect(milliseconds(300));
  Reaper reaper(lister());
  // Frames every ~10 ms against a 300 ms TTL, until the silent session
  // (same TTL, started together) has expired, and a while longer.
  uint64_t id = 1;
  const auto keep_talking = [&](milliseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
      ping(talker, id++);
      std::this_thread::sleep_for(milliseconds(10));
    }
  };
  ASSERT_TRUE(eventually([&] {
    keep_talking(milliseconds(10));
    return silent.out->finished().has_value();
  }));
  keep_talking(milliseconds(700));
  EXPECT_TRUE(talker.session->live());
  EXPECT_FALSE(talker.out->finished().has_value());
}

TEST_F(ReaperTest, AnExpiredHolderReleasesItsLockToTheNextWaiter) {
  Client holder = connect(milliseconds(50));
  Client waiter = connect(std::chrono::hours(1));
  v1::ClientFrame open;
  open.set_id(1);
  open.mutable_open()->set_name("m");
  open.mutable_open()->set_kind(v1::OBJECT_KIND_MUTEX);
  holder.session->handle(open);
  waiter.session->handle(open);
  const uint64_t hh = holder.out->take().open().handle();
  const uint64_t hw = waiter.out->take().open().handle();
  v1::ClientFrame lock;
  lock.set_id(2);
  lock.mutable_lock()->set_handle(hh);
  holder.session->handle(lock);
  const uint64_t first = holder.out->take().lock().token();
  lock.mutable_lock()->set_handle(hw);
  waiter.session->handle(lock);
  EXPECT_EQ(waiter.out->size(), 0u);
  Reaper reaper(lister());
  ASSERT_TRUE(eventually([&] { return waiter.out->size() == 1; }));
  const v1::ServerFrame f = waiter.out->take();
  EXPECT_EQ(f.lock().outcome(), v1::OUTCOME_OK);
  EXPECT_GT(f.lock().token(), first);
  // The reaper ends the session (handing the lock on) before it finishes the
  // stream, so the holder's end may land just after the waiter's grant.
  EXPECT_TRUE(eventually([&] { return holder.out->finished().has_value(); }));
}

TEST_F(ReaperTest, StopIsPromptAndIdempotent) {
  Reaper reaper(lister(), milliseconds(100000));
  const auto start = std::chrono::steady_clock::now();
  reaper.stop();
  reaper.stop();
  // Generous: stop() wakes the thread rather than waiting out its period.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

}  // namespace
}  // namespace dchan::server
