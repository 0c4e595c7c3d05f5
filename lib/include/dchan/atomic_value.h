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
// How readers avoid blocking and torn values. A T that is trivially
// copyable, no wider than a pointer and fits a lock-free std::atomic<T>
// (integers, pointers, double, small structs of them) is kept in one: a
// load() is two plain loads (a "stored yet" flag, then the value), a store()
// one exchange, a compare_and_swap() a compare-exchange loop.
//
// Any other T lives in a heap object behind an atomic pointer, as Go's
// atomic.Value holds an interface: a store() builds a new object and swaps
// the pointer (writers take turns on a mutex), so an object is never written
// while readers may copy it. A load() marks a read section in the calling
// thread's own record (a plain store to a cache line no other thread
// writes, no fence), loads the pointer and copies the object; it never
// waits for anything. Readers write nothing another thread reads often and
// share only read-mostly lines (the pointer's, and the reclamation epoch,
// which stores advance), so they scale with their number. The replaced
// object is freed by epoch-based reclamation (see dchan/detail/epoch.h)
// once no reader can still be copying it: a writer never waits for readers
// either; a reader preempted while copying only delays freeing. Stores
// free in batches, as their check for readers costs a system call: a
// replaced value is destroyed by a store() to this AtomicValue (the one
// that replaced it or a later one) once a check, by any store in the
// process, found that no load() that may hold it is still running; or with
// the last handle. A store checks after a batch of sizeof(T) * n ~ 64 KiB
// (16 to 1024 values; what T owns on the heap is not counted), or when no
// store in the process checked for a clock tick (1-10 ms). So with no
// load() running, a value replaced seldom goes with the store that replaced
// it; while loads run, up to about two batches wait per AtomicValue, plus
// what a stalled load holds. Its destructor runs on that writer's thread,
// after the writers' mutex is released, so it may store to this
// AtomicValue again.
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

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "dchan/codec.h"
#include "dchan/detail/epoch.h"
#include "dchan/detail/remote.h"
#include "dchan/error.h"

namespace dchan {

template <class T>
class AtomicValue;

namespace detail {

// An AtomicValue<T> kept behind a pointer frees replaced values in batches:
// a store scans for what readers may still hold (a system call, which
// interrupts every CPU running a thread of the process: ~10 us on a busy
// 2-vCPU VM; see dchan/detail/epoch.h) once it retired kReclaimBatch<T>
// values since its last scan (about 64 KiB of T objects, 16 to 1024 of
// them), or when no scan began in the process for a clock tick
// (epoch_scan_due). Other stores free what earlier scans allow.
inline constexpr size_t kReclaimBytes = 64 * 1024;
template <class T>
inline constexpr size_t kReclaimBatch = std::clamp<size_t>(kReclaimBytes /
                                                               sizeof(T),
                                                           16, 1024);

// The shared state of an AtomicValue<T> for any T: the value is a heap
// object behind an atomic pointer, replaced whole by writers and freed by
// epoch-based reclamation (dchan/detail/epoch.h), as Go's atomic.Value keeps
// an interface pointer and leaves the old object to the garbage collector.
template <class T>
class AtomicValueState {
 public:
  AtomicValueState() = default;
  AtomicValueState(const AtomicValueState&) = delete;
  AtomicValueState& operator=(const AtomicValueState&) = delete;
  // No reader is left: each holds a handle, and so this state.
  ~AtomicValueState() {
    delete value_.load(std::memory_order_relaxed);
    for (const Retired& r : retired_) delete r.value;
  }

  std::optional<T> load() const {
    EpochReadSection reading;
    const T* v = value_.load(std::memory_order_seq_cst);
    if (v == nullptr) return std::nullopt;
    return std::optional<T>(std::in_place, *v);
  }

  void store(T v) {
    auto fresh = std::make_unique<const T>(std::move(v));
    Freed freed;
    std::lock_guard<std::mutex> hold(writers_mu_);
    publish_locked(std::move(fresh), freed);
  }

  // Publishes `v`; returns a copy of the value it replaced (readers may
  // still be copying that one, so it cannot be moved from).
  std::optional<T> swap(T v) {
    auto fresh = std::make_unique<const T>(std::move(v));
    Freed freed;
    std::lock_guard<std::mutex> hold(writers_mu_);
    std::optional<T> old;
    // Only writers change the pointer, and they are excluded.
    if (const T* cur = value_.load(std::memory_order_relaxed)) {
      old.emplace(*cur);
    }
    publish_locked(std::move(fresh), freed);
    return old;
  }

  bool compare_and_swap(const T& old, T desired) {
    Freed freed;
    std::lock_guard<std::mutex> hold(writers_mu_);
    const T* cur = value_.load(std::memory_order_relaxed);
    if (cur == nullptr || !(*cur == old)) return false;
    publish_locked(std::make_unique<const T>(std::move(desired)), freed);
    return true;
  }

 private:
  struct Retired {
    const T* value;
    uint64_t tag;  // epoch_retire_tag() when it was replaced
  };

  // Objects no reader can hold any more. Declared before the writers' lock,
  // so they are deleted after it is released (T's destructor may store to
  // this AtomicValue again).
  struct Freed {
    absl::InlinedVector<const T*, 8> objects;
    ~Freed() {
      for (const T* object : objects) delete object;
    }
  };

  // Publishes `fresh` and retires the value it replaces; moves what no
  // reader can hold any more to `freed`.
  void publish_locked(std::unique_ptr<const T> fresh, Freed& freed) {
    // Nothing may throw once the pointer is swapped.
    if (retired_.size() == retired_.capacity()) {
      retired_.reserve(std::max<size_t>(2 * retired_.capacity(), 8));
    }
    const T* old = value_.exchange(fresh.release(), std::memory_order_seq_cst);
    if (old == nullptr) return;
    retired_.push_back({old, epoch_retire_tag()});
    // A scan is a membarrier call, and advancing the epoch writes a line
    // every load reads: scan once per kReclaimBatch<T> values retired, or
    // when no scan in the process began for a clock tick (so that values
    // stored seldom go soon). While loads run, a value waits for the epoch
    // to advance twice: at most about two batches wait, plus what a
    // stalled load holds.
    uint64_t bound;
    if (++retired_since_scan_ >= kReclaimBatch<T> || epoch_scan_due()) {
      retired_since_scan_ = 0;
      bound = epoch_reclaim_bound();
    } else {
      bound = epoch_free_bound();
    }
    // Tags never decrease (writers take turns; the epoch only grows), so
    // what may be freed is a prefix.
    if (retired_.front().tag >= bound) return;
    size_t n = 0;
    while (n < retired_.size() && retired_[n].tag < bound) ++n;
    if (n > freed.objects.capacity()) {
      try {
        freed.objects.reserve(n);
      } catch (const std::bad_alloc&) {
        return;  // freed by a later store, or with the last handle
      }
    }
    for (size_t i = 0; i < n; ++i) freed.objects.push_back(retired_[i].value);
    retired_.erase(retired_.begin(), retired_.begin() + n);
  }

  // Loads read this line, and only this one of the state's. The writers'
  // fields sit on lines of their own: sharing this one, each store missed
  // in cache on the mutex's lock and again on its unlock.
  alignas(64) std::atomic<const T*> value_{nullptr};
  alignas(64) std::mutex writers_mu_;
  // Guarded by writers_mu_:
  std::vector<Retired> retired_;  // replaced, maybe still being copied
  size_t retired_since_scan_ = 0;
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

  void store(T v) { swap(v); }

  // One exchange. The first store takes first_mu_, writes the value, then
  // marks it stored: that mark is the moment it takes effect (readers see
  // nothing before it), and the stores that race it wait for it, so exactly
  // one store finds no value before it.
  std::optional<T> swap(T v) {
    if (stored_.load(std::memory_order_acquire)) [[likely]] {
      return value_.exchange(v, std::memory_order_seq_cst);
    }
    std::lock_guard<std::mutex> hold(first_mu_);
    const T old = value_.exchange(v, std::memory_order_seq_cst);
    if (stored_.load(std::memory_order_relaxed)) return old;
    stored_.store(true, std::memory_order_seq_cst);
    return std::nullopt;
  }

  // T's == decides (not its bytes); the compare-exchange then checks that
  // the value is still the one compared, bytes and all (a failed one reloads
  // them, so padding cannot make it fail forever).
  bool compare_and_swap(const T& old, T desired) {
    if (!stored_.load(std::memory_order_seq_cst)) return false;
    T cur = value_.load(std::memory_order_seq_cst);
    do {
      if (!(cur == old)) return false;
    } while (
        !value_.compare_exchange_weak(cur, desired, std::memory_order_seq_cst));
    return true;
  }

 private:
  std::atomic<bool> stored_{false};
  std::atomic<T> value_{};
  std::mutex first_mu_;  // only until the first store took effect
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
  // first store. Local: never blocks (wait-free); throws what copying T
  // throws, and std::bad_alloc or std::system_error on a thread's first
  // load of a T not kept in one atomic word (its reclamation record). Not
  // async-signal-safe. Remote: asks the broker; throws as described above.
  std::optional<T> load() const {
    if (state_ == nullptr) [[unlikely]] {
      return remote_load();
    }
    return state_->load();
  }

  // Replaces the value with `v`. Local: never waits for readers (nor makes
  // one wait); a T not kept in one atomic word waits for concurrent writers
  // (they take turns), one kept in a word only for a racing first store.
  // Throws std::bad_alloc (a T not kept in one atomic word is allocated) and
  // std::system_error from std::mutex. Remote: returns once the broker
  // stored it; throws kUnavailable.
  void store(T v) {
    if (state_ == nullptr) [[unlikely]] {
      remote_->swap(encode(v));  // the old bytes are not decoded
      return;
    }
    state_->store(std::move(v));
  }

  // As store(), and returns the previous value (std::nullopt if none): a
  // copy of it, for a T not kept in one atomic word (readers may still be
  // copying the replaced object, so it is not moved from).
  std::optional<T> swap(T v) {
    if (state_ == nullptr) [[unlikely]] {
      return remote_swap(v);
    }
    return state_->swap(std::move(v));
  }

  // Stores `desired` if the current value == `old`, atomically with respect
  // to other writers; returns whether it did. Before the first store there
  // is nothing to compare with, so it returns false (Go's CompareAndSwap(nil,
  // new) has no typed counterpart: use store). Local: waits as store() (a
  // T kept in one word: may retry while other writers change it); throws
  // what T's operator== throws. Remote: compares encoded bytes (see
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
