#include "wait_group.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dchan::server {

WaitGroupObject::WaitGroupObject(std::string name, bool forgive)
    : Object(std::move(name), v1::OBJECT_KIND_WAIT_GROUP), forgive_(forgive) {}

absl::StatusOr<int64_t> WaitGroupObject::add(const Participant& who,
                                             int64_t delta) {
  std::vector<OnDone> wake;
  absl::Status status;
  int64_t after;
  {
    absl::MutexLock lock(&mu_);
    // Checked under mu_: see object.h.
    if (!who.live()) return absl::UnavailableError("the session has ended");
    // count_ is in [0, INT32_MAX]: neither bound below can overflow.
    if (delta < -count_) {
      return absl::FailedPreconditionError("sync: negative WaitGroup counter");
    }
    if (delta > INT32_MAX - count_) {
      return absl::OutOfRangeError(absl::StrCat(
          "sync: WaitGroup counter overflow: WaitGroup \"", name(), "\" at ",
          count_, " cannot add ", delta, " (the limit is ", INT32_MAX, ")"));
    }
    if (count_ == 0 && delta > 0) failure_.clear();  // a new round
    count_ += delta;
    if (delta > 0) {
      debts_[who.id()] += delta;
    } else {
      // Pay this session's own debt first, then the oldest sessions'.
      int64_t left = -delta;
      auto own = debts_.find(who.id());
      if (own != debts_.end()) {
        const int64_t paid = std::min(own->second, left);
        left -= paid;
        if ((own->second -= paid) == 0) debts_.erase(own);
      }
      for (auto it = debts_.begin(); left > 0 && it != debts_.end();) {
        const int64_t paid = std::min(it->second, left);
        left -= paid;
        if ((it->second -= paid) == 0) {
          it = debts_.erase(it);
        } else {
          ++it;
        }
      }
    }
    after = count_;
    wake = take_waiters_locked(status);
  }
  for (OnDone& done : wake) std::move(done)(status);
  return after;
}

absl::StatusOr<WaitGroupObject::Wait> WaitGroupObject::wait(OnDone on_done) {
  absl::MutexLock lock(&mu_);
  if (!failure_.empty()) return absl::AbortedError(failure_);
  Wait w;
  w.count = count_;
  if (count_ == 0) return w;
  if (on_done == nullptr) {
    w.result = Wait::Result::kWouldBlock;
    return w;
  }
  w.result = Wait::Result::kQueued;
  w.ticket = next_ticket_++;
  waiters_.emplace(w.ticket, std::move(on_done));
  return w;
}

bool WaitGroupObject::withdraw(uint64_t ticket) {
  OnDone withdrawn;  // destroyed unlocked
  absl::MutexLock lock(&mu_);
  auto it = waiters_.find(ticket);
  if (it == waiters_.end()) return false;
  withdrawn = std::move(it->second);
  waiters_.erase(it);
  return true;
}

void WaitGroupObject::session_ended(const Participant& who) {
  // Named before taking mu_ (describe() takes the session's own lock).
  const std::string participant = who.describe();
  std::vector<OnDone> wake;
  absl::Status status;
  int64_t debt = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = debts_.find(who.id());
    if (it == debts_.end()) return;
    debt = it->second;
    debts_.erase(it);
    count_ -= debt;  // the debts add up to count_: never below zero
    // Keep the first loss of a round: it is the cause of the failure.
    if (!forgive_ && failure_.empty()) {
      failure_ =
          absl::StrCat("dchan: WaitGroup \"", name(), "\": ", participant,
                       " was lost owing ", debt, " Done(s)");
    }
    wake = take_waiters_locked(status);
  }
  std::fprintf(
      stderr,
      "dchan-broker: WaitGroup \"%s\": %s was lost owing %lld "
      "Done(s); %s\n",
      name().c_str(), participant.c_str(), static_cast<long long>(debt),
      forgive_ ? "forgiven (counted as done)" : "the WaitGroup has failed");
  for (OnDone& done : wake) std::move(done)(status);
}

int64_t WaitGroupObject::count() const {
  absl::MutexLock lock(&mu_);
  return count_;
}

std::string WaitGroupObject::failure() const {
  absl::MutexLock lock(&mu_);
  return failure_;
}

std::vector<WaitGroupObject::OnDone> WaitGroupObject::take_waiters_locked(
    absl::Status& status) {
  std::vector<OnDone> wake;
  if (waiters_.empty()) return wake;
  if (!failure_.empty()) {
    status = absl::AbortedError(failure_);
  } else if (count_ == 0) {
    status = absl::OkStatus();
  } else {
    return wake;
  }
  wake.reserve(waiters_.size());
  for (auto& [ticket, done] : waiters_) wake.push_back(std::move(done));
  waiters_.clear();
  return wake;
}

void WaitGroupObject::describe_kind(v1::ObjectInfo& info) const {
  absl::MutexLock lock(&mu_);
  info.set_count(count_);
  info.set_blocked_waiters(waiters_.size());
  info.set_failure(failure_);
}

bool WaitGroupObject::involves(uint64_t session_id) const {
  absl::MutexLock lock(&mu_);
  return debts_.contains(session_id);
}

bool WaitGroupObject::idle() const {
  absl::MutexLock lock(&mu_);
  // Debts add up to the counter, so a zero counter means no debt either.
  return count_ == 0 && failure_.empty() && waiters_.empty() && debts_.empty();
}

}  // namespace dchan::server
