// The slow paths of dchan::Mutex: spinning, the FIFO queue of parked
// waiters, and starvation-mode hand-off. See mutex.h for the design; the
// invariants the code below keeps are:
//   - kHasWaiters and kStarving change only under queue_mu_, kHasWaiters
//     exactly when the queue becomes empty / non-empty.
//   - kStarving implies kLocked and a non-empty queue: a waiter sets it only
//     by a CAS that sees the lock held, and whoever empties the queue clears
//     it. In starvation mode unlock() keeps kLocked set and passes ownership
//     to the head waiter (kHandOff), so arriving threads cannot take the lock.
//   - kWoken is owned by exactly one thread: the spinner that set it (none
//     while kMaxSpins is 0), a waiter that set it as it queued (it polls
//     the lock; see kPolls), the unlock() that set it, from its CAS until
//     it publishes the wake-up (or clears kWoken if the queue emptied
//     meanwhile), or the waiter that unlock() woke. A waiter that owns it
//     clears it when it takes the lock, waits again, or gives up
//     (give_up_woken), so an unlock() that sees kWoken may skip the wake-up
//     without losing it.
//   - A woken waiter stays in the queue (at its head) while it competes,
//     and leaves it only with the lock or at its deadline. Going back to
//     sleep after losing the race is then two compare-and-swaps on its own
//     word and the state, without queue_mu_: with two threads trading the
//     lock, re-queueing under queue_mu_ made the holder's next unlock() block
//     on queue_mu_ (a futex call per wake-up on both sides; see
//     docs/BENCHMARKS.md, "Session 14").
//   - A waiter re-arms its word (kWakeUp -> kParked) before it hands kWoken
//     back, and unlock() publishes a wake-up only to a waiter whose kWoken
//     it has just set, so a waiter's word holds at most one wake-up.
#include "dchan/mutex.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>

#include "dchan/detail/futex.h"
#include "dchan/error.h"

namespace dchan::detail {
namespace {

using Clock = std::chrono::steady_clock;

// How long a contended lock() spins before it queues, in pause
// instructions (further capped by spin_budget(), which is 0 on one CPU). Go
// spins briefly; on the 2-vCPU VMs measured here (docs/BENCHMARKS.md) any
// spin, short or long, made two CPUs trade the lock and its cache line on
// every operation and cost throughput (2 threads: ~100-150 ns per operation
// with spinning, ~65-85 ns without), so waiters queue at once.
constexpr int kMaxSpins = 0;

// A parked waiter spins on its own word for spin_budget() / this before it
// sleeps (see lock_slow).
constexpr int kWordSpinDivisor = 4;

// A waiter that owns kWoken (it claimed it when it queued, or an unlock()
// woke it) and finds the lock held looks at the lock again kPolls times
// before it gives kWoken back and waits on its own word. While it owns
// kWoken the holder's unlock()s stay on the fast path: no wake-up to
// publish, and between two looks the lock's line stays on the holder's CPU.
// (Waiting on its own word instead, the waiter was woken by nearly every
// unlock() and made the holder pay three or four cache-line transfers per
// operation; see docs/BENCHMARKS.md, "Session 17".)
//
// The looks are spin_budget() / kPollDivisor pauses (~1 us) apart, times
// 2^t_poll_shift: each look that finds the lock held doubles the calling
// thread's gap, up to 2^kMaxPollShift times (~16 us), and each that finds
// it free halves it. A look costs the holder the lock's line, and a poll
// phase that ends in a sleep costs it a wake-up at its next unlock() (the
// queue's lock, the waiter's word, a futex call); but a lock freed just
// after a look stays unnoticed until the next. Threads that trade a lock in
// a tight loop (it is never seen free) want long gaps: ~1 us apart they
// took 1.2-1.6x std::mutex's time on the Intel VM, ~5 us apart 0.85-0.98x.
// Threads that hold a lock for microseconds and leave it as long want short
// ones: ~5 us apart took 1.4x the time of ~1 us there. The adaptive gap
// came within ~10% of the better fixed one in each (docs/BENCHMARKS.md,
// "Session 25"). What long gaps cost: a poll phase spins its CPU for up to
// ~32 us before the waiter sleeps; the shift is the thread's, so it carries
// over to its next wait on any Mutex; a timed lock() may return up to one
// gap after its deadline; and a waiter past the starvation threshold
// notices only after its poll phase. On one CPU the gap is 0 pauses
// (spin_budget() is 0).
constexpr int kPolls = 2;
constexpr int kPollDivisor = 10;
constexpr int kMaxPollShift = 4;
thread_local int t_poll_shift = 0;

// Go's starvationThresholdNs.
constexpr auto kStarvationThreshold = std::chrono::milliseconds(1);

// Values of Waiter::word.
constexpr uint32_t kParked = 0;   // in the queue
constexpr uint32_t kWakeUp = 1;   // woken in normal mode (still queued):
                                  // compete again
constexpr uint32_t kHandOff = 2;  // popped in starvation mode: the lock is ours
constexpr uint32_t kSleeping = 3;  // in the queue, asleep in futex_wait (or
                                   // about to be): the waker must wake it

// Publishes `value` (kWakeUp or kHandOff) to a waiter (under queue_mu_);
// returns whether it sleeps, so that the caller wakes it once
// queue_mu_ is released. A waiter that has not gone to sleep yet sees the
// word change and needs no system call.
bool publish(std::atomic<uint32_t>& word, uint32_t value) {
  return word.exchange(value, std::memory_order_acq_rel) == kSleeping;
}

}  // namespace

struct MutexCore::Waiter {
  std::atomic<uint32_t> word{kParked};
  Waiter* prev = nullptr;   // guarded by queue_mu_
  Waiter* next = nullptr;   // guarded by queue_mu_
  bool queued = false;      // guarded by queue_mu_
  Clock::time_point start;  // first park; written under queue_mu_
};

void MutexCore::enqueue_locked(Waiter* w) {
  w->queued = true;
  w->next = nullptr;
  w->prev = tail_;
  (tail_ != nullptr ? tail_->next : head_) = w;
  tail_ = w;
}

void MutexCore::remove_locked(Waiter* w) {
  (w->prev != nullptr ? w->prev->next : head_) = w->next;
  (w->next != nullptr ? w->next->prev : tail_) = w->prev;
  w->prev = w->next = nullptr;
  w->queued = false;
}

MutexCore::Waiter* MutexCore::pop_front_locked() {
  Waiter* w = head_;
  if (w != nullptr) remove_locked(w);
  return w;
}

uint32_t MutexCore::leave_queue(Waiter& me) {
  std::lock_guard<std::mutex> hold(queue_mu_);
  if (me.queued) {
    remove_locked(&me);
    if (head_ == nullptr) clear_bits(kHasWaiters | kStarving);
  }
  // Wake-ups and hand-offs are published under queue_mu_: none comes now.
  return me.word.load(std::memory_order_acquire);
}

void MutexCore::leave_queue_holding(Waiter& me) {
  std::atomic<uint32_t>* word = nullptr;
  bool sleeps = false;
  {
    std::lock_guard<std::mutex> hold(queue_mu_);
    if (me.queued) remove_locked(&me);
    // A wake-up here came from an unlock() of the lock this thread has just
    // taken, made by another thread before this lock() returned (Go allows
    // any goroutine to unlock; only a racy program unlocks this early). That
    // unlock() freed the lock and set kWoken for a waiter to take it: pass
    // both to the next waiter, as unlock() would have.
    if (me.word.load(std::memory_order_acquire) == kWakeUp) {
      if (head_ == nullptr) {
        clear_bits(kWoken);
      } else {
        word = &head_->word;
        sleeps = publish(*word, kWakeUp);
      }
    }
    if (head_ == nullptr) clear_bits(kHasWaiters | kStarving);
  }
  if (sleeps) futex_wake_one(*word);
}

bool MutexCore::wait_again(bool starving) {
  std::unique_lock<std::mutex> hold(queue_mu_, std::defer_lock);
  // kStarving changes only under queue_mu_ (see the invariants above).
  if (starving) hold.lock();
  uint32_t s = state_.load(std::memory_order_relaxed);
  while ((s & kLocked) != 0) {
    const uint32_t next = (s & ~kWoken) | (starving ? kStarving : 0);
    // Release: the unlock() that sees kWoken clear and wakes this waiter
    // must see its word re-armed first.
    if (state_.compare_exchange_weak(s, next, std::memory_order_release,
                                     std::memory_order_relaxed)) {
      return true;
    }
  }
  return false;
}

bool MutexCore::give_up_woken() {
  uint32_t s = state_.load(std::memory_order_relaxed);
  for (;;) {
    if ((s & kLocked) == 0) {
      if (state_.compare_exchange_weak(s, (s | kLocked) & ~kWoken,
                                       std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
        return true;
      }
    } else if (state_.compare_exchange_weak(s, s & ~kWoken,
                                            std::memory_order_relaxed,
                                            std::memory_order_relaxed)) {
      // The holder's unlock() now sees kWoken clear and wakes a waiter.
      return false;
    }
  }
}

bool MutexCore::lock_slow(Clock::time_point deadline) {
  const int budget = spin_budget();  // 0 on one CPU
  const int spin_limit = std::min(budget, kMaxSpins);
  const int word_spins = budget / kWordSpinDivisor;
  const bool timed = deadline != Clock::time_point::max();
  Waiter me;
  bool awoke = false;     // this thread owns kWoken
  bool in_queue = false;  // `me` is queued (or was, until a hand-off popped it)
  bool starving = false;  // this thread has waited longer than the threshold
  int spins = 0;
  int polls = 0;  // looks at the held lock since this thread got kWoken
  const int poll_pauses = budget / kPollDivisor;
  uint32_t s = state_.load(std::memory_order_relaxed);
  for (;;) {
    if ((s & kLocked) == 0) {
      const uint32_t next = awoke ? ((s | kLocked) & ~kWoken) : (s | kLocked);
      if (state_.compare_exchange_weak(s, next, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
        if (in_queue) leave_queue_holding(me);
        return true;
      }
      continue;
    }
    // Held. Spin while it is worth it (never in starvation mode: the lock
    // goes to the head of the queue, not to a spinner).
    if ((s & kStarving) == 0 && spins < spin_limit) {
      // Tell unlock() not to wake a parked waiter: this thread will take it.
      if (!awoke && (s & (kWoken | kHasWaiters)) == kHasWaiters) {
        if (state_.compare_exchange_weak(s, s | kWoken,
                                         std::memory_order_relaxed,
                                         std::memory_order_relaxed)) {
          awoke = true;
          s |= kWoken;
        }
        continue;
      }
      spin_pause();
      ++spins;
      s = state_.load(std::memory_order_relaxed);
      continue;
    }
    if (timed && Clock::now() >= deadline) {
      if (in_queue) {
        const uint32_t v = leave_queue(me);
        if (v == kHandOff) {
          if (awoke) clear_bits(kWoken);
          return true;
        }
        awoke = awoke || v == kWakeUp;
      }
      return awoke && give_up_woken();
    }

    if (!in_queue) {
      // Park: register in the state (while the lock is still held) and
      // queue at the tail.
      std::unique_lock<std::mutex> hold(queue_mu_);
      // Claim kWoken (poll for the lock instead of waiting to be woken)
      // unless the head of the queue has waited past the starvation
      // threshold: it must be woken to see that, and claimers would keep
      // every unlock() from waking it.
      const bool may_claim =
          poll_pauses > 0 && (head_ == nullptr || Clock::now() - head_->start <
                                                      kStarvationThreshold);
      s = state_.load(std::memory_order_relaxed);
      bool registered = false;
      bool claim = false;
      while ((s & kLocked) != 0) {
        claim =
            may_claim && (s & kStarving) == 0 && (awoke || (s & kWoken) == 0);
        const uint32_t next = claim   ? (s | kHasWaiters | kWoken)
                              : awoke ? ((s | kHasWaiters) & ~kWoken)
                                      : (s | kHasWaiters);
        if (state_.compare_exchange_weak(s, next, std::memory_order_relaxed,
                                         std::memory_order_relaxed)) {
          registered = true;
          break;
        }
      }
      if (!registered) continue;  // freed meanwhile: compete for it
      me.start = Clock::now();
      enqueue_locked(&me);
      in_queue = true;
      if (claim) {
        awoke = true;
        hold.unlock();
        s = state_.load(std::memory_order_relaxed);
        continue;
      }
    } else if (awoke && (s & kStarving) == 0 && polls < kPolls) {
      // Owns kWoken and lost the race: look again a little later, off the
      // lock's line meanwhile (see kPolls).
      ++polls;
      const int gap = poll_pauses << t_poll_shift;
      for (int i = 0; i < gap; ++i) spin_pause();
      s = state_.load(std::memory_order_relaxed);
      if ((s & kLocked) == 0) {
        if (t_poll_shift > 0) --t_poll_shift;
      } else if (t_poll_shift < kMaxPollShift) {
        ++t_poll_shift;
      }
      continue;
    } else if (!wait_again(starving)) {
      s = state_.load(std::memory_order_relaxed);
      continue;  // woken, and the lock is free: compete for it
    }
    awoke = false;

    // The wake-up usually comes within the holder's critical section and
    // the unlock: spin on this waiter's own word (not the lock's cache
    // line) first, so that neither side makes a system call for it. Not
    // with one CPU (spin_budget() is 0): the unlocker could not run.
    uint32_t v = me.word.load(std::memory_order_acquire);
    for (int i = 0; v == kParked && i < word_spins; ++i) {
      spin_pause();
      v = me.word.load(std::memory_order_acquire);
    }
    while (v == kParked || v == kSleeping) {
      // Announce the sleep; a waker that sees it makes the wake call.
      if (v == kParked && !me.word.compare_exchange_weak(
                              v, kSleeping, std::memory_order_acquire,
                              std::memory_order_acquire)) {
        continue;  // `v` reloaded: woken meanwhile, or a spurious failure
      }
      if (!futex_wait_until(me.word, kSleeping, deadline) &&
          me.word.load(std::memory_order_acquire) == kSleeping) {
        v = leave_queue(me);
        if (v == kHandOff) return true;
        return v == kWakeUp && give_up_woken();  // woken while timing out
      }
      v = me.word.load(std::memory_order_acquire);
    }
    if (v == kHandOff) return true;  // starvation mode: ownership passed

    // Woken in normal mode, still queued: this thread owns kWoken. Re-arm
    // the word for the next wake-up before competing again.
    awoke = true;
    if (!me.word.compare_exchange_strong(v, kParked, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
      // Cannot happen while this thread owns kWoken (only its own
      // wait_again sets kStarving), but a hand-off would be the lock.
      clear_bits(kWoken);
      return true;
    }
    spins = 0;
    polls = 0;
    starving = starving || Clock::now() - me.start > kStarvationThreshold;
    s = state_.load(std::memory_order_relaxed);
  }
}

void MutexCore::unlock_slow(uint32_t s) {
  for (;;) {
    if ((s & kLocked) == 0) throw_panic("sync: unlock of unlocked mutex");
    if ((s & kStarving) != 0) {
      // Hand the lock, still marked locked, to the head waiter.
      std::atomic<uint32_t>* word = nullptr;
      bool sleeps = false;
      {
        std::lock_guard<std::mutex> hold(queue_mu_);
        s = state_.load(std::memory_order_relaxed);
        if ((s & kStarving) != 0) {
          Waiter* w = pop_front_locked();  // non-null: kStarving invariant
          if (head_ == nullptr) {
            clear_bits(kHasWaiters | kStarving);
          } else if (Clock::now() - w->start < kStarvationThreshold) {
            clear_bits(kStarving);
          }
          word = &w->word;
          sleeps = publish(*word, kHandOff);
        }
      }
      if (word != nullptr) {
        // The waiter may have returned already; waking its old address is
        // harmless (see futex.h).
        if (sleeps) futex_wake_one(*word);
        return;
      }
      continue;  // left starvation mode meanwhile (a waiter timed out)
    }
    const bool wake = (s & (kHasWaiters | kWoken)) == kHasWaiters;
    const uint32_t next = (s & ~kLocked) | (wake ? kWoken : 0);
    // Acquire too: the waiter this wakes re-armed its word before it handed
    // kWoken back (wait_again).
    if (state_.compare_exchange_weak(s, next, std::memory_order_acq_rel,
                                     std::memory_order_relaxed)) {
      if (!wake) return;
      std::atomic<uint32_t>* word = nullptr;
      bool sleeps = false;
      {
        // The head stays queued while it competes (see the invariants).
        std::lock_guard<std::mutex> hold(queue_mu_);
        Waiter* w = head_;
        if (w == nullptr) {
          // The only waiter timed out meanwhile: nobody to own kWoken.
          clear_bits(kWoken);
        } else {
          word = &w->word;
          sleeps = publish(*word, kWakeUp);
        }
      }
      if (sleeps) futex_wake_one(*word);
      return;
    }
  }
}

}  // namespace dchan::detail
