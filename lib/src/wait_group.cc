// dchan::WaitGroup on one 64-bit state word and a futex generation counter.
//
// state_ holds the counter (high 32 bits, signed) and a flag "a waiter may be
// parked" (low bit); every change is a CAS, so a rejected add() leaves it
// untouched. The add() that takes the counter to zero resets the whole word
// to zero (so the next round starts clean at once) and, if the flag is set,
// bumps generation_ and wakes the waiters parked on it. A waiter reads
// generation_ before it sets the flag (by a CAS that sees the counter
// non-zero and fails if the round ended meanwhile), so the bump that ends
// its round always releases it. (As in Go, a waiter whose round ends and a
// new one starts with the same state between its load and that CAS waits
// for the new round: Go's rule that a reused WaitGroup's new Add calls
// happen after the previous Wait calls returned avoids it.)
//
// Before it parks, a waiter spins and yields as channel waiters do
// (spin.h), and learns from where the round was ended: the add() that ends
// a round records its CPU in completer_cpu_ (a hint; relaxed) before its
// CAS.
#include "dchan/wait_group.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

#include "dchan/detail/futex.h"
#include "dchan/error.h"
#include "spin.h"

namespace dchan {
namespace detail {

class WaitGroupCore {
 public:
  // `self` is the handle's pointer to this core: the add() that ends a round
  // holds a reference while it wakes the waiters, who may drop the last
  // handle as soon as they see the counter at zero.
  void add(int delta, const std::shared_ptr<WaitGroupCore>& self) {
    std::shared_ptr<WaitGroupCore> keep;
    uint64_t s = state_.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t next_count = int64_t{counter(s)} + delta;
      if (next_count < 0) throw_panic("sync: negative WaitGroup counter");
      if (next_count > INT32_MAX) {
        throw Error(absl::StatusCode::kOutOfRange,
                    "sync: WaitGroup counter overflow");
      }
      // Ending a round with parked waiters touches generation_ after the
      // CAS; without any, the CAS is the last access.
      if (next_count == 0 && (s & kHasWaiters) != 0 && keep == nullptr) {
        keep = self;
      }
      const uint64_t next =
          next_count == 0
              ? 0
              : (uint64_t{static_cast<uint32_t>(next_count)} << 32) |
                    (s & kHasWaiters);
      if (next_count == 0) {
        completer_cpu_.store(current_cpu(), std::memory_order_relaxed);
      }
      if (state_.compare_exchange_weak(s, next, std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
        if (next_count == 0 && (s & kHasWaiters) != 0) {
          generation_.fetch_add(1, std::memory_order_release);
          futex_wake_all(generation_);
        }
        return;
      }
    }
  }

  bool wait_until(std::chrono::steady_clock::time_point deadline) {
    uint64_t s = state_.load(std::memory_order_acquire);
    if (counter(s) == 0) return true;
    // Spin and yield first: rounds are often about to end.
    const SpinOutcome spun = spin_then_yield([this] { return is_zero(); });
    if (spun == SpinOutcome::kSpun) return true;
    if (spun == SpinOutcome::kYielded) {
      learn_after_wait(completer_cpu_.load(std::memory_order_relaxed), {});
      return true;
    }
    const auto parked_at = std::chrono::steady_clock::now();
    uint32_t gen;
    for (;;) {
      gen = generation_.load(std::memory_order_acquire);
      s = state_.load(std::memory_order_acquire);
      if (counter(s) == 0) return true;
      // Mark this round as having a parked waiter. If the round ends between
      // the loads and here, the CAS fails (the word was reset) and we
      // re-check.
      if ((s & kHasWaiters) != 0 ||
          state_.compare_exchange_weak(s, s | kHasWaiters,
                                       std::memory_order_acquire,
                                       std::memory_order_acquire)) {
        break;
      }
    }
    // kHasWaiters stays set for the rest of the round even if this wait times
    // out: at worst the round ends with one futex wake nobody needed.
    while (generation_.load(std::memory_order_acquire) == gen) {
      if (!futex_wait_until(generation_, gen, deadline)) {
        return generation_.load(std::memory_order_acquire) != gen;
      }
    }
    learn_after_wait(completer_cpu_.load(std::memory_order_relaxed), parked_at);
    return true;
  }

  bool is_zero() const noexcept {
    return counter(state_.load(std::memory_order_acquire)) == 0;
  }

  int count() const noexcept {
    return counter(state_.load(std::memory_order_relaxed));
  }

 private:
  static int32_t counter(uint64_t s) noexcept {
    return static_cast<int32_t>(static_cast<uint32_t>(s >> 32));
  }
  // Low word of state_: set once a waiter may be parked in this round.
  static constexpr uint64_t kHasWaiters = 1;

  std::atomic<uint64_t> state_{0};
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> completer_cpu_{-1};  // where the last round ended
};

}  // namespace detail

WaitGroup::WaitGroup() : core_(std::make_shared<detail::WaitGroupCore>()) {}

// Each member takes one predictable branch: a local handle (core_ set) or a
// broker-hosted one (remote_ set).
void WaitGroup::add(int delta) {
  if (core_ == nullptr) [[unlikely]] {
    std::shared_ptr<detail::RemoteWaitGroup> keep = remote_;  // as in wait()
    keep->add(delta);
    return;
  }
  core_->add(delta, core_);
}

// A blocked waiter keeps the state alive: the process may exit (destroying a
// global handle) while it is parked.
void WaitGroup::wait() {
  if (core_ == nullptr) [[unlikely]] {
    std::shared_ptr<detail::RemoteWaitGroup> keep = remote_;
    keep->wait(detail::RemoteChan::kNoDeadline);
    return;
  }
  if (core_->is_zero()) return;
  std::shared_ptr<detail::WaitGroupCore> keep = core_;
  keep->wait_until(std::chrono::steady_clock::time_point::max());
}

bool WaitGroup::wait_until_steady(
    std::chrono::steady_clock::time_point deadline) {
  if (core_ == nullptr) [[unlikely]] {
    std::shared_ptr<detail::RemoteWaitGroup> keep = remote_;
    return keep->wait(deadline);
  }
  std::shared_ptr<detail::WaitGroupCore> keep = core_;
  return keep->wait_until(deadline);
}

int WaitGroup::count() const {
  if (core_ == nullptr) [[unlikely]] {
    return remote_->count();
  }
  return core_->count();
}

}  // namespace dchan
