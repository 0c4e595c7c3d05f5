#include "lock.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dchan::server {

LockObject::LockObject(std::string name, v1::ObjectKind kind,
                       uint64_t last_token)
    : Object(std::move(name), kind), token_(last_token) {}

absl::StatusOr<LockObject::Request> LockObject::lock(
    std::shared_ptr<const Participant> who, bool shared, OnGrant on_grant,
    uint32_t token_block) {
  if (shared && !rw()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mutex \"", name(), "\" has no shared mode (open it as an RWMutex)"));
  }
  if (token_block > 1 && (rw() || shared)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lock \"", name(),
        "\": a token block is for exclusive requests on a mutex only"));
  }
  if (token_block > kMaxTokenBlock) {
    return absl::InvalidArgumentError(
        absl::StrCat("lock \"", name(), "\": a token block of ", token_block,
                     " is over the limit of ", kMaxTokenBlock));
  }
  token_block = std::max<uint32_t>(token_block, 1);
  Request r;
  OnWanted tell;  // run unlocked
  {
    absl::MutexLock lock(&mu_);
    // Checked under mu_: see object.h.
    if (!who->live()) return absl::UnavailableError("the session has ended");
    if (queue_.empty() && holders_allow_locked(shared)) {
      r.granted = true;
      r.token = take_locked(who->id(), shared, token_block);
      return r;
    }
    // Asked for while held: a kept hold is wanted, by a non-blocking
    // request too (a process polling with try_lock must get its turn).
    if (writer_.has_value()) tell = std::exchange(on_wanted_, nullptr);
    if (on_grant != nullptr) {
      r.ticket = next_ticket_++;
      queue_.emplace(r.ticket, Waiter{std::move(who), shared,
                                      std::move(on_grant), token_block});
    }
  }
  if (tell != nullptr) std::move(tell)(true);
  return r;
}

absl::StatusOr<LockObject::Wanted> LockObject::wanted(const Participant& who,
                                                      uint64_t token,
                                                      OnWanted on_wanted,
                                                      uint64_t* ticket) {
  absl::MutexLock lock(&mu_);
  if (writer_ != who.id() || writer_token_ != token) return Wanted::kNoHold;
  if (on_wanted_ != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat(
        "lock \"", name(), "\": a wanted request for the hold with token ",
        token, " is pending already"));
  }
  if (!queue_.empty()) return Wanted::kNow;
  on_wanted_ = std::move(on_wanted);
  wanted_ticket_ = *ticket = next_ticket_++;
  return Wanted::kPending;
}

bool LockObject::withdraw_wanted(uint64_t ticket) {
  OnWanted dropped;  // destroyed unlocked
  absl::MutexLock lock(&mu_);
  if (on_wanted_ == nullptr || wanted_ticket_ != ticket) return false;
  dropped = std::exchange(on_wanted_, nullptr);
  return true;
}

bool LockObject::withdraw(uint64_t ticket) {
  Waiter withdrawn;  // destroyed unlocked
  {
    absl::MutexLock lock(&mu_);
    auto it = queue_.find(ticket);
    if (it == queue_.end()) return false;
    withdrawn = std::move(it->second);
    queue_.erase(it);
  }
  // A writer that gave up may have been all that held back the readers
  // queued behind it.
  grant_and_run();
  return true;
}

absl::Status LockObject::unlock(const Participant& who, bool shared,
                                uint64_t token) {
  OnWanted tell;  // run unlocked
  {
    absl::MutexLock lock(&mu_);
    if (shared) {
      if (!rw()) {
        return absl::InvalidArgumentError(
            absl::StrCat("mutex \"", name(),
                         "\" has no shared mode (it is not an RWMutex)"));
      }
      auto it = readers_.find(who.id());
      if (it == readers_.end()) {
        return absl::FailedPreconditionError(
            "sync: RUnlock of unlocked RWMutex");
      }
      if (--it->second == 0) readers_.erase(it);
      --reader_holds_;
    } else {
      if (writer_ != who.id()) {
        return absl::FailedPreconditionError(
            rw() ? "sync: Unlock of unlocked RWMutex"
                 : "sync: unlock of unlocked mutex");
      }
      if (token != 0 && token != writer_token_) {
        return absl::AbortedError(absl::StrCat(
            "dchan: unlock of \"", name(), "\" with fencing token ", token,
            ", but this session's acquisition has token ", writer_token_));
      }
      writer_.reset();
      tell = std::exchange(on_wanted_, nullptr);
    }
  }
  if (tell != nullptr) std::move(tell)(false);
  grant_and_run();
  return absl::OkStatus();
}

void LockObject::session_ended(const Participant& who) {
  std::vector<Waiter> dropped;  // destroyed unlocked
  OnWanted untold;              // destroyed unlocked, never run
  {
    absl::MutexLock lock(&mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->second.who->id() == who.id()) {
        dropped.push_back(std::move(it->second));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    if (writer_ == who.id()) {
      writer_.reset();
      untold = std::exchange(on_wanted_, nullptr);
    }
    auto it = readers_.find(who.id());
    if (it != readers_.end()) {
      reader_holds_ -= it->second;
      readers_.erase(it);
    }
  }
  grant_and_run();
}

std::size_t LockObject::holds_of(uint64_t session_id) const {
  absl::MutexLock lock(&mu_);
  std::size_t n = writer_ == session_id ? 1 : 0;
  auto it = readers_.find(session_id);
  if (it != readers_.end()) n += it->second;
  return n;
}

uint64_t LockObject::token() const {
  absl::MutexLock lock(&mu_);
  return token_;
}

std::size_t LockObject::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

bool LockObject::involves(uint64_t session_id) const {
  absl::MutexLock lock(&mu_);
  if (writer_ == session_id || readers_.contains(session_id)) return true;
  for (const auto& [ticket, w] : queue_) {
    if (w.who->id() == session_id) return true;
  }
  return false;
}

bool LockObject::idle() const {
  absl::MutexLock lock(&mu_);
  return !writer_.has_value() && reader_holds_ == 0 && queue_.empty();
}

bool LockObject::holders_allow_locked(bool shared) const {
  if (writer_.has_value()) return false;
  return shared || reader_holds_ == 0;
}

uint64_t LockObject::take_locked(uint64_t session_id, bool shared,
                                 uint32_t token_block) {
  if (shared) {
    ++readers_[session_id];
    ++reader_holds_;
    return token_;
  }
  writer_ = session_id;
  writer_token_ = ++token_;
  token_ += token_block - 1;
  return writer_token_;
}

void LockObject::grant_locked(std::vector<Grant>& grants,
                              std::vector<Waiter>& dropped) {
  while (!queue_.empty()) {
    auto head = queue_.begin();
    Waiter& w = head->second;
    if (!w.who->live()) {
      // Its session ended and has not withdrawn it yet: never grant it.
      dropped.push_back(std::move(w));
      queue_.erase(head);
      continue;
    }
    if (!holders_allow_locked(w.shared)) return;
    grants.push_back({std::move(w.on_grant),
                      take_locked(w.who->id(), w.shared, w.token_block)});
    dropped.push_back(std::move(w));  // its session reference
    queue_.erase(head);
  }
}

void LockObject::grant_and_run() {
  std::vector<Grant> grants;
  std::vector<Waiter> dropped;
  {
    absl::MutexLock lock(&mu_);
    grant_locked(grants, dropped);
  }
  for (Grant& g : grants) std::move(g.on_grant)(g.token);
}

void LockObject::describe_kind(v1::ObjectInfo& info) const {
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> holders;
  if (writer_.has_value()) holders.push_back(*writer_);
  for (const auto& [session, n] : readers_) holders.push_back(session);
  std::sort(holders.begin(), holders.end());
  for (uint64_t h : holders) info.add_holder_sessions(h);
  info.set_token(token_);
  info.set_queued_lockers(queue_.size());
}

}  // namespace dchan::server
