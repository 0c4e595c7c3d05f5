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
// How readers avoid blocking and torn values. A T that is trivially copyable,
// no wider than a pointer and fits a lock-free std::atomic<T> (integers,
// pointers, double, small structs of them) is kept in one: a load() is two
// plain loads (a "stored yet" flag, then the value), a store() an exchange
// under the writers' mutex. Any other T uses the Left-Right technique
// (Ramalhete and Correia, 2015): the state keeps two slots. Readers only read
// the slot that left_right_ points at, after announcing themselves on one of
// two reader counters; they never wait for anything (load() is wait-free: two
// counter updates and a copy of T). A writer (writers take turns on a mutex)
// builds the new value in the other slot, which no reader is reading, then
// flips left_right_ so that new readers read it, then waits until every reader
// that may still read the old slot has left (flipping between the two counters
// so that a stream of new readers cannot keep it waiting), and only then moves
// the old value out of its slot. So a value is never written while a reader
// copies it, and a reader never waits for a writer; writers wait for the
// readers in flight (as long as a copy of T takes).
//
// Memory ordering: sequentially consistent. A store() synchronises-with the
// load() calls that return its value, so everything the writer did before
// storing is visible to such a reader.
//
// Remote AtomicValues: dchan::Client::atomic_value<T>(name) returns an
// AtomicValue<T> hosted by a broker (see <dchan/client.h>), shared by every
// process that opens the name with the same type name. T then also needs a
// dchan::Codec<T> (see <dchan/codec.h>) and a default constructor. Every
// operation is one round trip, linearizable on the broker, and returns once
// the broker applied it. Values travel encoded, so compare_and_swap compares
// the *encoded bytes* of `old` with those of the stored value, not T's ==
// (the same for codecs that encode equal values equally, such as the
// built-in ones; a protobuf message's encoding may differ for equal maps).
// Remote operations may throw dchan::Error: kUnavailable (broker lost),
// kDataLoss (stored bytes the codec rejects).
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
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include "dchan/codec.h"
#include "dchan/detail/futex.h"
#include "dchan/detail/remote.h"
#include "dchan/error.h"

namespace dchan {

template <class T>
class AtomicValue;

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

// The shared state of an AtomicValue<T> whose T fits a lock-free atomic
// word (and is trivially copyable): the value lives in one std::atomic<T>,
// so a load is two plain loads (whether a value was stored yet, and the
// value), as Go's atomic.Value.Load is one pointer load.
template <class T>
class AtomicWordState {
 public:
  std::optional<T> load() const noexcept {
    if (!stored_.load(std::memory_order_seq_cst)) [[unlikely]] {
      return std::nullopt;
    }
    return value_.load(std::memory_order_seq_cst);
  }

  // The first store writes the value, then marks it stored: that mark is
  // the moment it takes effect (readers see nothing before it).
  std::optional<T> swap(T v) {
    std::lock_guard<std::mutex> hold(writers_mu_);
    const T old = value_.exchange(v, std::memory_order_seq_cst);
    if (stored_.load(std::memory_order_relaxed)) return old;
    stored_.store(true, std::memory_order_seq_cst);
    return std::nullopt;
  }

  // Under the writers' mutex, so that T's == (not its bytes) decides.
  bool compare_and_swap(const T& old, T desired) {
    std::lock_guard<std::mutex> hold(writers_mu_);
    if (!stored_.load(std::memory_order_relaxed) ||
        !(value_.load(std::memory_order_relaxed) == old)) {
      return false;
    }
    value_.store(desired, std::memory_order_seq_cst);
    return true;
  }

 private:
  std::atomic<bool> stored_{false};
  std::atomic<T> value_{};
  std::mutex writers_mu_;
};

// Whether AtomicValue<T> keeps its value in one atomic word: one that
// std::atomic accepts (only such a T may be looked up in it), no wider than
// a pointer (a 16-byte std::atomic may call into libatomic, e.g. with clang
// and -mcx16), and lock-free.
template <class T>
inline constexpr bool kAtomicCandidate = std::conjunction_v<
    std::is_same<T, std::remove_cv_t<T>>, std::is_trivially_copyable<T>,
    std::is_copy_constructible<T>, std::is_move_constructible<T>,
    std::is_copy_assignable<T>, std::is_move_assignable<T>,
    std::is_default_constructible<T>,
    std::bool_constant<sizeof(T) <= sizeof(void*)>>;
template <class T, bool = kAtomicCandidate<T>>
inline constexpr bool kWordValue = false;
template <class T>
inline constexpr bool kWordValue<T, true> = std::atomic<T>::is_always_lock_free;

template <class T>
using AtomicValueStateFor =
    std::conditional_t<kWordValue<T>, AtomicWordState<T>, AtomicValueState<T>>;

template <class T>
AtomicValue<T> make_remote_atomic_value(std::shared_ptr<RemoteValue> remote);

}  // namespace detail

template <class T>
class AtomicValue {
  static_assert(std::is_copy_constructible_v<T>,
                "AtomicValue<T>::load() returns copies of T");
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "AtomicValue<T> needs a nothrow move constructor");

 public:
  // A new, empty local AtomicValue. Throws std::bad_alloc.
  AtomicValue() : state_(std::make_shared<detail::AtomicValueStateFor<T>>()) {}

  // Copies share the value; "moving" copies too.
  AtomicValue(const AtomicValue&) = default;
  AtomicValue& operator=(const AtomicValue&) = default;
  ~AtomicValue() = default;

  // A copy of the value most recently stored, or std::nullopt before the
  // first store. Local: never blocks (wait-free); throws only what copying T
  // throws. Remote: asks the broker; throws as described above.
  std::optional<T> load() const {
    if (state_ == nullptr) [[unlikely]] {
      return remote_load();
    }
    return state_->load();
  }

  // Replaces the value with `v`. Local: blocks on concurrent writers and
  // until the readers still copying the previous value are done (a writer
  // never makes a reader wait); never throws (beyond std::system_error from
  // std::mutex). Remote: returns once the broker stored it; throws
  // kUnavailable.
  void store(T v) {
    if (state_ == nullptr) [[unlikely]] {
      remote_->swap(encode(v));  // the old bytes are not decoded
      return;
    }
    state_->swap(std::move(v));
  }

  // As store(), and returns the previous value (std::nullopt if none).
  std::optional<T> swap(T v) {
    if (state_ == nullptr) [[unlikely]] {
      return remote_swap(v);
    }
    return state_->swap(std::move(v));
  }

  // Stores `desired` if the current value == `old`, atomically with respect
  // to other writers; returns whether it did. Before the first store there
  // is nothing to compare with, so it returns false (Go's CompareAndSwap(nil,
  // new) has no typed counterpart: use store). Local: blocks as store();
  // throws what T's operator== throws. Remote: compares encoded bytes (see
  // above); throws kUnavailable.
  bool compare_and_swap(const T& old,
                        T desired) requires std::equality_comparable<T> {
    if (state_ == nullptr) [[unlikely]] {
      return remote_compare_and_swap(old, desired);
    }
    return state_->compare_and_swap(old, std::move(desired));
  }

  // True for an AtomicValue hosted by a broker.
  bool is_remote() const noexcept { return remote_ != nullptr; }

  // Same value. Two handles to one broker AtomicValue obtained by separate
  // opens compare unequal.
  friend bool operator==(const AtomicValue& a, const AtomicValue& b) noexcept {
    return a.state_ == b.state_ && a.remote_ == b.remote_;
  }

 private:
  // Remote handles exist only for types make_remote_atomic_value accepts.
  static constexpr bool kRemotable =
      kHasCodec<T> && std::is_default_constructible_v<T>;

  friend AtomicValue detail::make_remote_atomic_value<T>(
      std::shared_ptr<detail::RemoteValue>);
  explicit AtomicValue(std::shared_ptr<detail::RemoteValue> remote)
      : remote_(std::move(remote)) {}

  // Remote paths: encode, call the backend, decode. Out of the local fast
  // path's way.
  static std::optional<T> decode(std::optional<std::string>& bytes) {
    if (!bytes.has_value()) return std::nullopt;
    if constexpr (kRemotable) {
      T value{};
      const absl::Status decoded = Codec<T>::decode(*bytes, value);
      if (!decoded.ok()) {
        throw Error(decoded.code(), std::string(decoded.message()));
      }
      return std::optional<T>(std::move(value));
    } else {
      throw_no_codec();
    }
  }
  static std::string encode(const T& v) {
    std::string bytes;
    if constexpr (kRemotable) {
      Codec<T>::encode(v, bytes);
    } else {
      (void)v;
      throw_no_codec();
    }
    return bytes;
  }
  [[noreturn]] static void throw_no_codec() {
    // make_remote_atomic_value requires a codec, so remote_ is never set.
    throw Error(absl::StatusCode::kInternal,
                "dchan: remote AtomicValue without codec");
  }
  std::optional<T> remote_load() const {
    std::optional<std::string> bytes = remote_->load();
    return decode(bytes);
  }
  std::optional<T> remote_swap(const T& v) {
    std::optional<std::string> old = remote_->swap(encode(v));
    return decode(old);
  }
  bool remote_compare_and_swap(const T& old, const T& desired) {
    return remote_->compare_and_swap(encode(old), encode(desired));
  }

  // Exactly one is set: the local state, or the broker-hosted value.
  std::shared_ptr<detail::AtomicValueStateFor<T>> state_;
  std::shared_ptr<detail::RemoteValue> remote_;
};

namespace detail {

// Used by the client library to hand out broker-hosted AtomicValues.
template <class T>
AtomicValue<T> make_remote_atomic_value(std::shared_ptr<RemoteValue> remote) {
  static_assert(kHasCodec<T>,
                "a broker AtomicValue's type needs a dchan::Codec<T>");
  static_assert(std::is_default_constructible_v<T>,
                "a broker AtomicValue's type needs a default constructor");
  return AtomicValue<T>(std::move(remote));
}

}  // namespace detail

}  // namespace dchan

#endif  // DCHAN_ATOMIC_VALUE_H_
