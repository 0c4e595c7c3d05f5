#include "dchan/detail/waiter.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "spin.h"

namespace dchan::detail {

void Lock::lock_slow() noexcept {
  // Spin a little: the holder keeps the lock for a few instructions only.
  for (int i = 0; i < 64; ++i) {
    spin_pause();
    uint32_t expected = 0;
    if (word_.load(std::memory_order_relaxed) == 0 &&
        word_.compare_exchange_weak(expected, 1, std::memory_order_acquire,
                                    std::memory_order_relaxed)) {
      return;
    }
  }
  // Announce a sleeper (2) and sleep until we take the lock from 0.
  uint32_t c = word_.exchange(2, std::memory_order_acquire);
  while (c != 0) {
    futex_wait(word_, 2);
    c = word_.exchange(2, std::memory_order_acquire);
  }
}

int Waiter::spin_then_yield() noexcept {
  switch (detail::spin_then_yield([this] { return done(); })) {
    case SpinOutcome::kSpun:
      return kSpun;
    case SpinOutcome::kYielded:
      return kYielded;
    case SpinOutcome::kMustPark:
      break;
  }
  return kMustPark;
}

void Waiter::learn_after_park(
    std::chrono::steady_clock::time_point parked_at) noexcept {
  learn_after_wait(completer_cpu_, parked_at);
}

void Waiter::wait() noexcept {
  wait_until(std::chrono::steady_clock::time_point::max());
}

bool Waiter::wait_until(
    std::chrono::steady_clock::time_point deadline) noexcept {
  const int r = spin_then_yield();
  if (r == kSpun) return true;
  std::chrono::steady_clock::time_point parked_at;
  if (r == kMustPark) {
    parked_at = std::chrono::steady_clock::now();
    uint32_t s = state_.load(std::memory_order_acquire);
    while ((s & kPhaseMask) != kDone) {
      if ((s & kParked) == 0) {
        if (!state_.compare_exchange_weak(s, s | kParked,
                                          std::memory_order_acquire)) {
          continue;
        }
        s |= kParked;
      }
      // With no deadline, futex_wait_until waits without a time limit.
      if (!futex_wait_until(state_, s, deadline)) return done();
      s = state_.load(std::memory_order_acquire);
    }
  }
  learn_after_park(parked_at);
  return true;
}

void ChanCore::wake_watchers_locked() noexcept {
  bool recv_ready = false, send_ready = false, computed_recv = false,
       computed_send = false;
  WaitNode* n = watchq_.front();
  while (n != nullptr) {
    WaitNode* next = n->next;
    bool ready;
    if (n->is_send) {
      if (!computed_send) {
        send_ready = closed_ || (cap_ != 0 && owned_len() < cap_) ||
                     has_live(/*senders=*/false);
        computed_send = true;
      }
      ready = send_ready;
    } else {
      if (!computed_recv) {
        recv_ready = closed_ || (cap_ != 0 && owned_len() > 0) ||
                     has_live(/*senders=*/true);
        computed_recv = true;
      }
      ready = recv_ready;
    }
    if (ready || !n->waiter->waiting()) {
      watchq_.remove(n);
      if (n->waiter->try_claim()) {
        n->next = watch_fired_;
        watch_fired_ = n;
      }
    }
    n = next;
  }
}

WaitNode* ChanCore::close_locked(Fired* lone) noexcept {
  closed_ = true;
  if (!claim_lone_locked(/*senders=*/false, lone)) {
    claim_lone_locked(/*senders=*/true, lone);
  }
  WaitNode* head = nullptr;
  WaitNode** tail = &head;
  for (WaitQueue* q : {&recvq_, &sendq_}) {
    while (WaitNode* n = claim_front(*q)) {
      *tail = n;
      tail = &n->next;
    }
  }
  if (!watchq_.empty()) wake_watchers_locked();
  return head;
}

void ChanCore::fire_all(WaitNode* fired, bool ok) noexcept {
  while (fired != nullptr) {
    // Read everything before complete(): the node may vanish with its waiter.
    WaitNode* next = fired->next;
    Waiter* w = fired->waiter;
    const uint32_t index = fired->case_index;
    w->complete(index, ok);
    fired = next;
  }
}

void ChanCore::unlink(WaitNode* n) noexcept {
  lock();
  if (n->queued)
    (n->is_watch ? watchq_ : n->is_send ? sendq_ : recvq_).remove(n);
  const bool was_pinned = n->pinned;
  unpin_locked(n);
  // The last pin of a channel whose handles are all gone: nobody else can
  // reach it any more (a node's claim, in settle or elsewhere, comes from a
  // handle holder or from this unlock).
  const bool destroy = was_pinned && pins_ == 0 && orphaned_;
  unlock();
  if (destroy) destroy_(this);
}

void ChanCore::release_last_handle() noexcept {
  // The raw lock: without handles there is nothing to settle, and unlink()
  // reads orphaned_ under the same lock.
  lock_.lock();
  // Kept nodes of selects that are over stay queued until someone meets
  // them (see WaitNode::arm): take them out, with their pins. Their owners
  // see them detached and never come back to this channel.
  for (WaitQueue* q : {&recvq_, &sendq_}) {
    WaitNode* n = q->front();
    while (n != nullptr) {
      WaitNode* next = n->next;
      uint32_t a = n->arm.load(std::memory_order_acquire);
      while (WaitNode::is_kept(a) && !n->waiter->live(WaitNode::gen_of(a)) &&
             !remove_stale_kept(*q, n, a)) {
      }
      n = next;
    }
  }
  const bool pinned = pins_ != 0;
  if (pinned) orphaned_ = true;
  lock_.unlock();
  if (!pinned) destroy_(this);
}

void wait_a_few_instructions(int i) noexcept {
  // The other thread is a few instructions from done, unless it was
  // preempted there: then yield to it (it may share this CPU), and at last
  // sleep, which lets it run even if it has a lower real-time priority.
  if (i < 64) {
    spin_pause();
  } else if (i < 128) {
    sched_yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void wait_for_turn(uint64_t& word, uint64_t value) noexcept {
  const std::atomic_ref<uint64_t> turn(word);
  for (int i = 0; turn.load(std::memory_order_acquire) != value; ++i) {
    wait_a_few_instructions(i);
  }
}

int poll_limit() noexcept { return thread_spin_limit(); }

void block_forever() noexcept {
  std::atomic<uint32_t> never{0};
  for (;;) futex_wait(never, 0);
}

}  // namespace dchan::detail
