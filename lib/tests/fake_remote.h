// lib/tests/fake_remote.h — in-process stand-ins for the broker backends of
// detail/remote.h, so that lib's tests can check that a remote handle routes
// every operation to its backend (the client library's real backends are
// tested against a real broker in integration_tests/).
#ifndef DCHAN_LIB_TESTS_FAKE_REMOTE_H_
#define DCHAN_LIB_TESTS_FAKE_REMOTE_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>

#include "absl/status/status.h"
#include "dchan/detail/remote.h"
#include "dchan/error.h"

namespace dchan::test_util {

// A reader/writer lock with RemoteLock's contract: tokens count exclusive
// acquisitions; lose() plays the session loss.
class FakeLock final : public detail::RemoteLock {
 public:
  bool lock(bool shared, Deadline deadline) override {
    std::unique_lock<std::mutex> hold(mu_);
    throw_if_lost_locked();
    auto free = [&] { return !writer_ && (shared || readers_ == 0); };
    if (deadline == detail::RemoteChan::kNonBlocking) {
      if (!free()) return false;
    } else if (!cv_.wait_until(hold, deadline, free)) {
      return false;
    }
    if (!writer_ && readers_ == 0) source_ = std::stop_source();
    if (shared) {
      ++readers_;
    } else {
      writer_ = true;
      ++token_;
    }
    return true;
  }

  void unlock(bool shared) override {
    std::lock_guard<std::mutex> hold(mu_);
    throw_if_lost_locked();
    if (shared ? readers_ == 0 : !writer_) {
      throw Error(absl::StatusCode::kFailedPrecondition,
                  shared ? "sync: RUnlock of unlocked RWMutex"
                         : "sync: unlock of unlocked mutex");
    }
    if (shared) {
      --readers_;
    } else {
      writer_ = false;
    }
    cv_.notify_all();
  }

  uint64_t token() const noexcept override {
    std::lock_guard<std::mutex> hold(mu_);
    return token_;
  }

  std::stop_token hold_token() const noexcept override {
    std::lock_guard<std::mutex> hold(mu_);
    if (!lost_ && !writer_ && readers_ == 0) return std::stop_token();
    return source_.get_token();
  }

  // The session is lost while the lock is held.
  void lose() {
    std::stop_source source;
    {
      std::lock_guard<std::mutex> hold(mu_);
      lost_ = true;
      source = source_;
    }
    source.request_stop();
  }

 private:
  void throw_if_lost_locked() const {
    if (lost_) throw Error(absl::StatusCode::kAborted, "fake: lock was lost");
  }

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool writer_ = false;
  int readers_ = 0;
  uint64_t token_ = 0;
  bool lost_ = false;
  std::stop_source source_{std::nostopstate};
};

class FakeWaitGroup final : public detail::RemoteWaitGroup {
 public:
  void add(int delta) override {
    std::lock_guard<std::mutex> hold(mu_);
    if (count_ + delta < 0) {
      throw Error(absl::StatusCode::kFailedPrecondition,
                  "sync: negative WaitGroup counter");
    }
    count_ += delta;
    if (count_ == 0) {
      failed_ = false;
      cv_.notify_all();
    }
  }

  bool wait(Deadline deadline) override {
    std::unique_lock<std::mutex> hold(mu_);
    auto done = [&] { return count_ == 0 || failed_; };
    if (deadline == detail::RemoteChan::kNonBlocking) {
      if (!done()) return false;
    } else if (!cv_.wait_until(hold, deadline, done)) {
      return false;
    }
    if (failed_) {
      throw Error(absl::StatusCode::kAborted, "fake: participant was lost");
    }
    return true;
  }

  int count() override {
    std::lock_guard<std::mutex> hold(mu_);
    return count_;
  }

  // A participant is lost owing Dones.
  void fail() {
    std::lock_guard<std::mutex> hold(mu_);
    failed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_ = 0;
  bool failed_ = false;
};

class FakeValue final : public detail::RemoteValue {
 public:
  std::optional<std::string> load() override {
    std::lock_guard<std::mutex> hold(mu_);
    return value_;
  }
  std::optional<std::string> swap(const std::string& value) override {
    std::lock_guard<std::mutex> hold(mu_);
    std::optional<std::string> old = std::move(value_);
    value_ = value;
    return old;
  }
  bool compare_and_swap(const std::string& old,
                        const std::string& desired) override {
    std::lock_guard<std::mutex> hold(mu_);
    if (!value_.has_value() || *value_ != old) return false;
    value_ = desired;
    return true;
  }

 private:
  std::mutex mu_;
  std::optional<std::string> value_;
};

}  // namespace dchan::test_util

#endif  // DCHAN_LIB_TESTS_FAKE_REMOTE_H_
