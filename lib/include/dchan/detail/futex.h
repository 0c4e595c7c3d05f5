// dchan/detail/futex.h — parking a thread on a 32-bit atomic word.
//
// Internal to dchan. The primitives every blocking dchan type parks on:
// futex_wait() sleeps while a word still holds an expected value,
// futex_wake() wakes sleepers, and spin_pause() is the CPU hint used while
// spinning before a park. Waking a thread parked on another vCPU costs tens of
// microseconds on small VMs, so callers spin briefly first (see
// spin_budget()).
//
// Every wait may return spuriously; callers re-check their condition in a
// loop. Waking an address whose owner has since returned is harmless (a
// private futex wake never touches the memory), which lets a waker publish
// "done" and then wake without keeping the waiter alive.
//
// Synchronisation is carried by the std::atomic operations on the word, so
// ThreadSanitizer sees every happens-before edge; the syscall only sleeps.
#ifndef DCHAN_DETAIL_FUTEX_H_
#define DCHAN_DETAIL_FUTEX_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <type_traits>

namespace dchan::detail {

// Sleeps while `word` == `expected`, or until woken or spuriously.
void futex_wait(std::atomic<uint32_t>& word, uint32_t expected) noexcept;

// As futex_wait, but gives up at `deadline` (steady clock). Returns false
// when the deadline has passed.
bool futex_wait_until(std::atomic<uint32_t>& word, uint32_t expected,
                      std::chrono::steady_clock::time_point deadline) noexcept;

// Wakes up to `count` threads sleeping on `word`.
void futex_wake(std::atomic<uint32_t>& word, int count) noexcept;
inline void futex_wake_one(std::atomic<uint32_t>& word) noexcept {
  futex_wake(word, 1);
}
void futex_wake_all(std::atomic<uint32_t>& word) noexcept;

// A CPU hint for spin loops (x86 `pause`).
inline void spin_pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Asks for the cache line at `p` ahead of a write to it (x86 PREFETCHW,
// which CPUs without it execute as a no-op), so that its transfer from
// another CPU overlaps the work before the write.
inline void prefetch_for_write(const void* p) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1);
#endif
}

// How many spin iterations a waiter should try before parking: 0 when the
// process was confined to one CPU when it started (spinning would only delay
// the thread it waits for), otherwise about ten microseconds' worth
// (calibrated once: waking a parked thread costs more than that on small
// VMs). Threads that pin themselves to one CPU each keep the full budget:
// their partners may run on other CPUs.
int spin_budget() noexcept;

// The CPU the calling thread runs on (-1 if unknown). Cheap: glibc reads it
// from the thread's rseq area.
int current_cpu() noexcept;

// Converts any clock's time point to a steady-clock deadline.
template <class Clock, class Duration>
std::chrono::steady_clock::time_point to_steady(
    std::chrono::time_point<Clock, Duration> t) {
  if constexpr (std::is_same_v<Clock, std::chrono::steady_clock>) {
    return std::chrono::time_point_cast<std::chrono::steady_clock::duration>(t);
  } else {
    return std::chrono::steady_clock::now() +
           std::chrono::duration_cast<std::chrono::steady_clock::duration>(
               t - Clock::now());
  }
}

// Deadline `d` from now, saturating instead of overflowing for huge `d`.
template <class Rep, class Period>
std::chrono::steady_clock::time_point deadline_after(
    std::chrono::duration<Rep, Period> d) {
  using std::chrono::steady_clock;
  const auto now = steady_clock::now();
  if (d <= d.zero()) return now;
  const auto max_left = steady_clock::time_point::max() - now;
  if (std::chrono::duration_cast<std::chrono::duration<double>>(d) >=
      std::chrono::duration_cast<std::chrono::duration<double>>(max_left)) {
    return steady_clock::time_point::max();
  }
  return now + std::chrono::duration_cast<steady_clock::duration>(d);
}

}  // namespace dchan::detail

#endif  // DCHAN_DETAIL_FUTEX_H_
