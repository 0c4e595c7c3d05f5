// lib/tests/fake_remote.h — in-process stand-ins for the broker backends of
// detail/remote.h, so that lib's tests can check that a remote handle routes
// every operation to its backend (the client library's real backends are
// tested against a real broker in integration_tests/).
#ifndef DCHAN_LIB_TESTS_FAKE_REMOTE_H_
#define DCHAN_LIB_TESTS_FAKE_REMOTE_H_

#include <condition_variable>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "dchan/chan.h"
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
    } else {
      ++waiting_;
      const bool got = cv_.wait_until(hold, deadline, free);
      --waiting_;
      if (!got) return false;
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

  // Threads blocked in lock().
  int waiting() const {
    std::lock_guard<std::mutex> hold(mu_);
    return waiting_;
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
  int waiting_ = 0;
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

// An unbuffered broker channel whose only counterparties are other spanning
// selects' offers: a stand-in for the broker's offer book (server/src/
// offer_book.h), so that lib's side of the offer/claim protocol runs under
// ThreadSanitizer. Watches never fire and non-blocking operations find
// nothing ready (there are no real senders or receivers). One "broker"
// thread matches a send offer with a receive offer of another select and
// asks both claims in turn (the one added first is asked first), as the
// client's reader thread would: commit both, or abort the first if the
// second refuses. Every channel made by one FakeOfferBroker shares its
// thread, so claims on several channels are serialised, as on one client
// connection.
class FakeOfferBroker {
 public:
  FakeOfferBroker() : thread_([this] { run(); }) {}
  ~FakeOfferBroker() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  class Chan final : public detail::RemoteChan {
   public:
    explicit Chan(FakeOfferBroker* broker) : broker_(broker) {}
    ChanStatus send(std::string, Deadline deadline) override {
      if (deadline != kNonBlocking) throw_unused();
      return ChanStatus::kWouldBlock;
    }
    ChanStatus recv(std::string&, Deadline deadline) override {
      if (deadline != kNonBlocking) throw_unused();
      return ChanStatus::kWouldBlock;
    }
    void close() override { throw_unused(); }
    std::size_t len() override { return 0; }
    std::size_t cap() const noexcept override { return 0; }
    const void* session() const noexcept override { return broker_; }
    detail::RemoteSelectResult select(std::vector<detail::RemoteSelectCase>&,
                                      Deadline) override {
      throw_unused();
    }
    uint64_t watch(bool, absl::AnyInvocable<void(bool) &&>) override {
      return 0;  // never ready: only offers meet here
    }
    void cancel_watch(uint64_t) noexcept override {}
    uint64_t offer(
        bool send, const std::string& value, uint64_t select_id,
        absl::AnyInvocable<bool()> claim,
        absl::AnyInvocable<void(detail::RemoteOfferResult) &&> done) override {
      return broker_->add(this, send, value, select_id, std::move(claim),
                          std::move(done));
    }
    void cancel_offer(uint64_t token) noexcept override {
      broker_->cancel(token);
    }

   private:
    [[noreturn]] static void throw_unused() {
      throw Error(absl::StatusCode::kUnimplemented,
                  "FakeOfferBroker::Chan: only offers");
    }
    FakeOfferBroker* const broker_;
  };

  // Claims asked so far, and aborts sent.
  int claims() {
    std::lock_guard<std::mutex> lock(mu_);
    return claims_;
  }
  int aborts() {
    std::lock_guard<std::mutex> lock(mu_);
    return aborts_;
  }

 private:
  struct Offer {
    Chan* chan;
    bool send;
    std::string value;
    uint64_t select_id;
    absl::AnyInvocable<bool()> claim;
    absl::AnyInvocable<void(detail::RemoteOfferResult) &&> done;
  };

  uint64_t add(Chan* chan, bool send, const std::string& value,
               uint64_t select_id, absl::AnyInvocable<bool()> claim,
               absl::AnyInvocable<void(detail::RemoteOfferResult) &&> done) {
    uint64_t token;
    {
      std::lock_guard<std::mutex> lock(mu_);
      token = next_++;
      offers_.emplace(token, Offer{chan, send, value, select_id,
                                   std::move(claim), std::move(done)});
    }
    cv_.notify_all();
    return token;
  }

  void cancel(uint64_t token) {
    std::optional<Offer> o;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = offers_.find(token);
      if (it == offers_.end()) return;  // in a match, or answered
      o.emplace(std::move(it->second));
      offers_.erase(it);
    }
    detail::RemoteOfferResult r;
    r.kind = detail::RemoteOfferResult::kCancelled;
    std::move(o->done)(std::move(r));
  }

  // Takes a matching pair out of offers_ (first: the older), or false.
  bool take_pair_locked(Offer* first, Offer* second) {
    for (auto a = offers_.begin(); a != offers_.end(); ++a) {
      for (auto b = std::next(a); b != offers_.end(); ++b) {
        if (a->second.chan != b->second.chan ||
            a->second.send == b->second.send ||
            a->second.select_id == b->second.select_id) {
          continue;
        }
        *first = std::move(a->second);
        *second = std::move(b->second);
        offers_.erase(b);
        offers_.erase(a);
        return true;
      }
    }
    return false;
  }

  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      Offer first, second;
      cv_.wait(lock,
               [&] { return stop_ || take_pair_locked(&first, &second); });
      if (stop_) return;
      claims_ += 1;
      lock.unlock();
      // Claims run without the lock: an accepting select withdraws its
      // other offers (cancel) at once.
      detail::RemoteOfferResult r;
      if (!first.claim()) {
        // Refused: its select withdraws it; the partner is offered again.
        r.kind = detail::RemoteOfferResult::kCancelled;
        std::move(first.done)(std::move(r));
        lock.lock();
        offers_.emplace(next_++, std::move(second));
        continue;
      }
      lock.lock();
      claims_ += 1;
      lock.unlock();
      if (!second.claim()) {
        r.kind = detail::RemoteOfferResult::kAborted;
        std::move(first.done)(std::move(r));
        r = {};
        r.kind = detail::RemoteOfferResult::kCancelled;
        std::move(second.done)(std::move(r));
        lock.lock();
        aborts_ += 1;
        continue;
      }
      detail::RemoteOfferResult sent, got;
      sent.kind = got.kind = detail::RemoteOfferResult::kCommitted;
      got.value = first.send ? first.value : second.value;
      std::move((first.send ? first : second).done)(std::move(sent));
      std::move((first.send ? second : first).done)(std::move(got));
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Offer> offers_;  // guarded by mu_
  uint64_t next_ = 1;                 // guarded by mu_
  int claims_ = 0;                    // guarded by mu_
  int aborts_ = 0;                    // guarded by mu_
  bool stop_ = false;                 // guarded by mu_
  std::thread thread_;                // last: starts after the rest
};

}  // namespace dchan::test_util

#endif  // DCHAN_LIB_TESTS_FAKE_REMOTE_H_
