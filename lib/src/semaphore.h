// A counting semaphore on a futex, private to lib's sync types (RWMutex's
// reader and writer semaphores, Group's concurrency limit).
//
// release() makes permits available and wakes sleepers only when some are
// parked; acquire() takes a permit, spinning briefly and then parking.
// Memory ordering: a release() synchronises-with the acquire() that takes the
// permit it added. Thread-safe.
#ifndef DCHAN_SRC_SEMAPHORE_H_
#define DCHAN_SRC_SEMAPHORE_H_

#include <atomic>
#include <cstdint>

#include "dchan/detail/futex.h"

namespace dchan::detail {

class Semaphore {
 public:
  explicit Semaphore(uint32_t permits = 0) : count_(permits) {}
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;

  bool try_acquire() noexcept {
    // seq_cst: pairs with release()'s sleepers_ check (Dekker-style).
    uint32_t c = count_.load(std::memory_order_seq_cst);
    while (c > 0) {
      if (count_.compare_exchange_weak(c, c - 1, std::memory_order_seq_cst,
                                       std::memory_order_seq_cst)) {
        return true;
      }
    }
    return false;
  }

  // Blocks until a permit is available and takes it. Never throws.
  void acquire() noexcept {
    if (try_acquire()) return;
    for (int i = spin_budget(); i > 0; --i) {
      spin_pause();
      if (count_.load(std::memory_order_relaxed) > 0 && try_acquire()) return;
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (!try_acquire()) futex_wait(count_, 0);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

  // Adds `n` permits, waking up to `n` parked threads. Never blocks.
  void release(uint32_t n = 1) noexcept {
    if (n == 0) return;
    count_.fetch_add(n, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      futex_wake(count_, static_cast<int>(n));
    }
  }

 private:
  std::atomic<uint32_t> count_;
  std::atomic<uint32_t> sleepers_{0};
};

}  // namespace dchan::detail

#endif  // DCHAN_SRC_SEMAPHORE_H_
