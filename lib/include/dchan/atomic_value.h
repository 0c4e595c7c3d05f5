// dchan/atomic_value.h — Go's sync/atomic.Value for C++, typed.
//
//   dchan::AtomicValue<Config> config;           // empty
//   config.store(load_config());                 // writer
//   std::optional<Config> c = config.load();     // readers, any thread
//
// An AtomicValue<T> holds either nothing (before the first store) or one
// value of T, which threads replace and read atomically: a load() returns a
// copy of some value that was stored, never a mix of two. Like the other
// sync types it is a cheap, copyable handle (copies name the same value,
// `==` tells whether two handles do); a default-constructed AtomicValue
// allocates a fresh, empty one. Moving a handle copies it.
//
// T must be copy-constructible (load() returns copies) and
// nothrow-move-constructible; compare_and_swap also needs `==`.
//
// How readers avoid blocking and torn values (the Left-Right technique,
// Ramalhete and Correia, 2015): the state keeps two slots. Readers only
// read the slot that left_right_ points at, after announcing themselves on
// one of two reader counters; they never wait for anything (load() is
// wait-free: two counter updates and a copy of T). A writer (writers take
// turns on a mutex) builds the new value in the other slot, which no reader
// is reading, then flips left_right_ so that new readers read it, then waits
// until every reader that may still read the old slot has left (flipping
// between the two counters so that a stream of new readers cannot keep it
// waiting), and only then moves the old value out of its slot. So a value is
// never written while a reader copies it, and a reader never waits for a
// writer; writers wait for the readers in flight (as long as a copy of T
// takes).
//
// Memory ordering: sequentially consistent. A store() synchronises-with the
// load() calls that return its value, so everything the writer did before
// storing is visible to such a reader.
//
// Thread safety: every member function may be called concurrently from any
// number of threads on copies of the same handle. A single AtomicValue
// object (the handle itself) follows the usual rules for std::shared_ptr.
#ifndef DCHAN_ATOMIC_VALUE_H_
#define DCHAN_ATOMIC_VALUE_H_

#include <atomic>
#include <concepts>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>

#include "dchan/detail/futex.h"

namespace dchan {

namespace detail {

// The shared state of an AtomicValue<T>: Left-Right over two optional<T>.
template <class T>
class AtomicValueState {
 public:
  std::optional<T> load() const {
    const uint32_t vi = version_.load(std::memory_order_seq_cst);
    readers_[vi].count.fetch_add(1, std::memory_order_seq_cst);
    struct Depart {
      std::atomic<int64_t>& count;
      ~Depart() { count.fetch_sub(1, std::memory_order_release); }
    } depart{readers_[vi].count};
    return slot_[left_right_.load(std::memory_order_seq_cst)];
  }

  // Publishes `v`; returns the value it replaced. Blocks on other writers and
  // on readers of the previous value.
  std::optional<T> swap(T v) {
    std::lock_guard<std::mutex> hold(writers_mu_);
    return publish_locked(std::move(v));
  }

  bool compare_and_swap(const T& old, T desired) {
    std::lock_guard<std::mutex> hold(writers_mu_);
    // Writers are excluded and readers only read, so reading the live slot
    // here races with nothing.
    const std::optional<T>& cur =
        slot_[left_right_.load(std::memory_order_relaxed)];
    if (!cur.has_value() || !(*cur == old)) return false;
    publish_locked(std::move(desired));
    return true;
  }

 private:
  std::optional<T> publish_locked(T&& v) {
    const uint32_t live = left_right_.load(std::memory_order_relaxed);
    // No reader reads the other slot: readers that chose it before the last
    // flip were drained by the previous writer.
    slot_[1 - live].emplace(std::move(v));
    left_right_.store(1 - live, std::memory_order_seq_cst);
    // Wait for every reader that may still read slot_[live]: first those on
    // the idle counter, then flip new readers to it and wait for the rest.
    const uint32_t prev = version_.load(std::memory_order_relaxed);
    wait_for_readers(1 - prev);
    version_.store(1 - prev, std::memory_order_seq_cst);
    wait_for_readers(prev);
    std::optional<T> old = std::move(slot_[live]);
    slot_[live].reset();
    return old;
  }

  void wait_for_readers(uint32_t vi) const {
    for (int spins = 0; readers_[vi].count.load(std::memory_order_acquire) != 0;
         ++spins) {
      if (spins < 64) {
        spin_pause();
      } else {
        std::this_thread::yield();  // a reader may have been preempted
      }
    }
  }

  struct alignas(64) ReaderCount {
    mutable std::atomic<int64_t> count{0};
  };

  ReaderCount readers_[2];
  alignas(64) std::atomic<uint32_t> version_{0};  // counter new readers use
  std::atomic<uint32_t> left_right_{0};           // slot readers read
  std::optional<T> slot_[2];                      // see the class comment
  std::mutex writers_mu_;
};

}  // namespace detail

template <class T>
class AtomicValue {
  static_assert(std::is_copy_constructible_v<T>,
                "AtomicValue<T>::load() returns copies of T");
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "AtomicValue<T> needs a nothrow move constructor");

 public:
  // A new, empty AtomicValue. Throws std::bad_alloc.
  AtomicValue() : state_(std::make_shared<detail::AtomicValueState<T>>()) {}

  // Copies share the value; "moving" copies too.
  AtomicValue(const AtomicValue&) = default;
  AtomicValue& operator=(const AtomicValue&) = default;
  ~AtomicValue() = default;

  // A copy of the value most recently stored, or std::nullopt before the
  // first store. Never blocks (wait-free); throws only what copying T throws.
  std::optional<T> load() const { return state_->load(); }

  // Replaces the value with `v`. Blocks on concurrent writers and until the
  // readers still copying the previous value are done (a writer never makes
  // a reader wait). Never throws (beyond std::system_error from std::mutex).
  void store(T v) { state_->swap(std::move(v)); }

  // As store(), and returns the previous value (std::nullopt if none).
  std::optional<T> swap(T v) { return state_->swap(std::move(v)); }

  // Stores `desired` if the current value == `old`, atomically with respect
  // to other writers; returns whether it did. Before the first store there
  // is nothing to compare with, so it returns false (Go's CompareAndSwap(nil,
  // new) has no typed counterpart: use store). Blocks as store(); throws
  // what T's operator== throws.
  bool compare_and_swap(const T& old,
                        T desired) requires std::equality_comparable<T> {
    return state_->compare_and_swap(old, std::move(desired));
  }

  friend bool operator==(const AtomicValue& a, const AtomicValue& b) noexcept {
    return a.state_ == b.state_;
  }

 private:
  // Local state. (A broker-hosted AtomicValue will add its backend beside
  // this pointer.)
  std::shared_ptr<detail::AtomicValueState<T>> state_;
};

}  // namespace dchan

#endif  // DCHAN_ATOMIC_VALUE_H_
