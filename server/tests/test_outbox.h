// server/tests/test_outbox.h — a session's Outbox for tests: answers are
// kept for the test to take, in order.
#ifndef DCHAN_SERVER_TESTS_TEST_OUTBOX_H_
#define DCHAN_SERVER_TESTS_TEST_OUTBOX_H_

#include <deque>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "session.h"

namespace dchan::server::fakes {

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

}  // namespace dchan::server::fakes

#endif  // DCHAN_SERVER_TESTS_TEST_OUTBOX_H_
