// dchan/detail/waiter.h — the one mechanism every blocking dchan operation
// stands on: waiters queued on a channel.
//
// Internal to dchan (used by chan.h and select.h; the broker reaches it only
// through Chan's asynchronous forms).
//
// A Waiter is one blocked operation: a blocking send/recv, a select over
// several channels, or an asynchronous operation with a completion callback.
// It is queued on one or more channels through WaitNodes (Go's sudog), one
// node per case. A waiter fires exactly once:
//
//   kWaiting --try_claim()--> kClaimed --complete()--> kDone
//
// The party that wins try_claim() (a counterparty holding the channel's lock,
// close(), or the waiter itself giving up on a timeout) owns the completion:
// it constructs the value in the node's slot (a receive) or moves it out
// (a send), unlinks the node, drops the channel lock and calls complete().
// Everybody else who meets one of the waiter's nodes in a queue sees the
// claim fail and unlinks that node as stale. So a select registered on ten
// channels consumes a value from at most one of them, and a parked
// operation costs a node in a queue — no thread for asynchronous waiters.
// One exception to the queue: the first blocking send or receive (or select
// case) to wait on an unbuffered channel parks in the channel's lone slot
// instead, without a node (ChanCore::lone_). It is taken out of the slot
// and claimed the same way, its waiter's landing place standing in for the
// node's slot.
//
// Memory ordering: the claimer's writes to the slot and to fired_case/ok
// happen before its release exchange to kDone; the waiter reads them after an
// acquire load that sees kDone.
#ifndef DCHAN_DETAIL_WAITER_H_
#define DCHAN_DETAIL_WAITER_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>

#include "dchan/detail/futex.h"

namespace dchan::detail {

// A small futex-based mutex (Drepper's "Futexes are tricky", mutex 2) with a
// short spin. Guards one channel's state, held only for a handful of
// instructions, never while user code or a callback runs; and go()'s run
// queue, where a task's move constructor runs under it.
class Lock {
 public:
  Lock() = default;
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;

  void lock() noexcept {
    uint32_t expected = 0;
    if (word_.compare_exchange_strong(expected, 1, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
      return;
    }
    lock_slow();
  }
  // The wake after the exchange may come after another thread took the
  // lock and freed the memory (a channel freed by its last unlink, see
  // ChanCore::release_last_handle): harmless, as a private futex wake does
  // not touch the memory and every waiter re-checks its word.
  void unlock() noexcept {
    if (word_.exchange(0, std::memory_order_release) == 2) {
      futex_wake_one(word_);
    }
  }

 private:
  void lock_slow() noexcept;

  // 0: unlocked; 1: locked; 2: locked and somebody may sleep on it.
  std::atomic<uint32_t> word_{0};
};

class Waiter;
class ChanCore;

// Waits (spins, then yields, then sleeps) until `word` (accessed
// atomically) holds `value`: under a buffered channel's lock, for a fast
// operation that won its position just before and is still moving its
// value into or out of that cell.
void wait_for_turn(uint64_t& word, uint64_t value) noexcept;

// The i-th step (from 0) of waiting for another thread that is a few
// instructions from done: spins, then yields, then sleeps (it may have been
// preempted there, on this CPU, with a lower real-time priority).
void wait_a_few_instructions(int i) noexcept;

// How many times a buffered channel's fast path polls a full or empty
// buffer before it takes the lock to wait: the calling thread's spin limit
// (0 where spinning cannot pay; see spin.h).
int poll_limit() noexcept;

// The cache line size the layout of a channel plans for (x86-64, most
// ARM64 cores). Not std::hardware_destructive_interference_size: GCC warns
// that its value may differ between compiler flags, and this is in a header.
inline constexpr std::size_t kCacheLine = 64;

// Returns the first `align`-aligned address after `raw` (1 to `align` bytes
// on, for a block from an allocator aligned to at least 2), keeping the
// distance back in the byte before it; block_start() reads it back.
// `align` is a power of two of at most 255.
inline unsigned char* align_after(unsigned char* raw,
                                  std::size_t align) noexcept {
  const std::uintptr_t at = (reinterpret_cast<std::uintptr_t>(raw) + align) &
                            ~std::uintptr_t{align - 1};
  unsigned char* p = raw + (at - reinterpret_cast<std::uintptr_t>(raw));
  p[-1] = static_cast<unsigned char>(p - raw);
  return p;
}
inline unsigned char* block_start(unsigned char* p) noexcept {
  return p - p[-1];
}

// Allocates a channel's state at a cache line boundary (it is laid out in
// lines, see ChanCore) through the plain operator new:
// over-aligned new goes through glibc's memalign, which made a channel's
// creation three times as slow (20 -> 65 ns; reply channels are made per
// request). The distance back to the block operator new returned is kept in
// the byte just before the aligned address.
template <class T>
struct CacheLineAllocator {
  using value_type = T;
  static_assert(alignof(T) <= kCacheLine);
  static_assert(kCacheLine <= 255, "the distance back is kept in a byte");

  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) noexcept {}  // NOLINT

  T* allocate(std::size_t n) {
    if (n > (std::numeric_limits<std::size_t>::max() - kCacheLine) / sizeof(T))
      throw std::bad_array_new_length();
    auto* raw =
        static_cast<unsigned char*>(::operator new(n * sizeof(T) + kCacheLine));
    return reinterpret_cast<T*>(align_after(raw, kCacheLine));
  }
  void deallocate(T* t, std::size_t) noexcept {
    ::operator delete(block_start(reinterpret_cast<unsigned char*>(t)));
  }
  template <class U>
  bool operator==(const CacheLineAllocator<U>&) const noexcept {
    return true;
  }
};

// A word of a channel's state that only the holder of the channel's lock
// writes, but that ChanCore::may_be_ready() reads without the lock. Reads
// under the lock are relaxed and writes are release stores: on x86 both
// compile to the plain loads and stores they replace (an increment is a
// load and a store, not a read-modify-write: writers hold the lock). The
// release makes a lock-free peek() that sees a write also see every write
// before it (close() marks the channel closed, then empties its lone slot
// and its queues: a peek that sees them emptied by close() sees it closed).
template <class T>
class LockedWord {
 public:
  constexpr LockedWord(T v = T()) noexcept : v_(v) {}  // NOLINT: a plain T
  LockedWord(const LockedWord&) = delete;
  LockedWord& operator=(const LockedWord&) = delete;

  operator T() const noexcept {  // NOLINT: reads like the plain T it was
    return v_.load(std::memory_order_relaxed);
  }
  LockedWord& operator=(T v) noexcept {
    v_.store(v, std::memory_order_release);
    return *this;
  }
  LockedWord& operator++() noexcept { return *this = *this + 1; }
  LockedWord& operator--() noexcept { return *this = *this - 1; }

  // A lock-free read that later reads cannot overtake. Sequentially
  // consistent (a plain load on x86; LDAR, not the weaker LDAPR, on ARM),
  // so that it is not hoisted above the release of a lock the thread
  // dropped just before: with `a.send(1); b.try_recv()` on one thread and
  // `b.send(1); a.try_recv()` on another, both must not miss the other's
  // value, as both could not when try_recv took the lock.
  T peek() const noexcept { return v_.load(std::memory_order_seq_cst); }

 private:
  std::atomic<T> v_;
};

// One registration of a waiter on one channel queue (Go's sudog). Owned by
// the waiter; linked into at most one queue, under that channel's lock.
struct WaitNode {
  WaitNode() = default;
  WaitNode(const WaitNode&) = delete;
  WaitNode& operator=(const WaitNode&) = delete;

  Waiter* waiter = nullptr;
  // Send: points at the T to move from. Recv: points at uninitialized
  // storage for a T (aligned for it), in which the claimer constructs the
  // value before it completes the waiter with ok = true; nothing is
  // constructed there when the channel was closed (ok = false). The owner
  // moves the value out and destroys it (take_landed() in chan.h). Raw
  // storage, so that receives of any types may share one landing place:
  // a select's receive cases land on its waiter's cache line.
  void* slot = nullptr;
  uint32_t case_index = 0;
  bool is_send = false;
  bool is_watch = false;  // a readiness watcher (in watchq_)
  ChanCore* chan = nullptr;

  // Queue links, guarded by chan's lock.
  WaitNode* prev = nullptr;
  WaitNode* next = nullptr;
  bool queued = false;
  bool pinned = false;  // holds one of chan's pins_; guarded by chan's lock

  // The generation of its waiter this node is registered for, and whether
  // its owner leaves it queued after the waiter fires (a "kept" node, see
  // select.cc's KeptNodes): 0 for an ordinary node (generation 0, withdrawn
  // by its owner), kept(g) for a kept node queued for generation g,
  // kDetaching while its owner withdraws a kept node, kRemoving while
  // somebody else takes a stale kept node out. A kept node is re-registered
  // for the owner's next select without the channel's lock, by a
  // compare-and-swap from its old kept(g) to the new generation's; whoever
  // meets it stale in a queue takes it out by a compare-and-swap to
  // kRemoving (ChanCore::claim_or_drop), so exactly one of the two wins.
  // A kept node that is queued holds a pin (pinned), which its remover
  // drops; the remover then stores 0 (release), after which the node is
  // its owner's again: the owner waits out kRemoving before it reuses the
  // node (select.cc's KeptNodes::detach).
  static constexpr uint32_t kDetaching = 2;
  // Neither kept nor 0. Its gen_of() is 1, a real generation, but only the
  // remover (under the channel's lock) and the owner see a node in this
  // state, and neither asks its waiter about it.
  static constexpr uint32_t kRemoving = 4;
  static constexpr uint32_t kept(uint32_t gen) noexcept { return gen << 2 | 1; }
  static constexpr bool is_kept(uint32_t arm) noexcept {
    return (arm & 1) != 0;
  }
  static constexpr uint32_t gen_of(uint32_t arm) noexcept { return arm >> 2; }
  std::atomic<uint32_t> arm{0};
};

// An intrusive FIFO of WaitNodes. Not thread-safe: guarded by the owning
// channel's lock.
class WaitQueue {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t count() const noexcept {
    std::size_t n = 0;
    for (const WaitNode* w = head_; w != nullptr; w = w->next) ++n;
    return n;
  }
  WaitNode* front() const noexcept { return head_; }
  // Without the lock: true if the queue was empty at the moment of the read.
  bool peek_empty() const noexcept { return head_.peek() == nullptr; }

  void push_back(WaitNode* n) noexcept {
    n->prev = tail_;
    n->next = nullptr;
    if (tail_ != nullptr) {
      tail_->next = n;
    } else {
      head_ = n;
    }
    tail_ = n;
    n->queued = true;
  }

  void remove(WaitNode* n) noexcept {
    if (n->prev != nullptr) {
      n->prev->next = n->next;
    } else {
      head_ = n->next;
    }
    if (n->next != nullptr) {
      n->next->prev = n->prev;
    } else {
      tail_ = n->prev;
    }
    n->prev = n->next = nullptr;
    n->queued = false;
  }

 private:
  LockedWord<WaitNode*> head_{nullptr};  // see peek_empty()
  WaitNode* tail_ = nullptr;
};

// A blocked operation that fires exactly once. See the file comment.
class Waiter {
 public:
  Waiter() = default;
  Waiter(const Waiter&) = delete;
  Waiter& operator=(const Waiter&) = delete;

  // Wins the right to complete this waiter, if it waits in generation
  // `gen` (a node's WaitNode::gen_of(arm); 0 unless the waiter is reused,
  // see rearm()). Exactly one caller ever gets true. Callers that get false
  // must not touch the waiter's slots.
  bool try_claim(uint32_t gen = 0) noexcept {
    const uint32_t waiting = gen << kGenShift | kWaiting;
    uint32_t s = state_.load(std::memory_order_relaxed);
    while ((s & ~kParked) == waiting) {
      if (state_.compare_exchange_weak(s, (s & ~kPhaseMask) | kClaimed,
                                       std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
        return true;
      }
    }
    return false;
  }

  // Called once by the claimer, with no channel lock held, after it moved the
  // value: records which case fired and whether it succeeded (false: the
  // channel was closed), then wakes the parked thread or runs the callback.
  // The waiter may be gone when this returns.
  void complete(uint32_t case_index, bool ok) noexcept {
    fired_case_ = case_index;
    ok_ = ok;
    if (callback_ != nullptr) {
      state_.store(kDone, std::memory_order_release);
      callback_(this);
      return;
    }
    completer_cpu_ = current_cpu();
    // kClaimed + 1 == kDone: the generation and kParked stay.
    if (state_.fetch_add(kDone - kClaimed, std::memory_order_release) &
        kParked) {
      futex_wake_one(state_);
    }
  }

  // For a waiter claimed by its own thread (timeout, cancel): marks it done
  // without waking anybody.
  void mark_done_by_owner() noexcept {
    const uint32_t s = state_.load(std::memory_order_relaxed);
    state_.store((s & kGenMask) | kDone, std::memory_order_relaxed);
  }

  // A thread waiter reused for another wait (a thread's select waiter, see
  // select.cc): once done, waits again as generation `gen` (1 to kMaxGen;
  // each reuse a new one). Nodes registered for an older generation are
  // stale: try_claim() with their generation fails.
  static constexpr uint32_t kMaxGen = (uint32_t{1} << (32 - 3)) - 1;
  void rearm(uint32_t gen) noexcept {
    state_.store(gen << kGenShift | kWaiting, std::memory_order_relaxed);
  }
  // True while the waiter waits in generation `gen` (a hint, as waiting()).
  bool live(uint32_t gen) const noexcept {
    return (state_.load(std::memory_order_relaxed) & ~kParked) ==
           (gen << kGenShift | kWaiting);
  }

  // Thread waiters: blocks until complete() ran. Spins briefly first.
  void wait() noexcept;

  // Thread waiters: as wait(), giving up at `deadline`. Returns false on
  // timeout, in which case the waiter may still be claimed by someone else:
  // the caller must try_claim() to withdraw, and wait() if that fails.
  bool wait_until(std::chrono::steady_clock::time_point deadline) noexcept;

  bool done() const noexcept {
    return (state_.load(std::memory_order_acquire) & kPhaseMask) == kDone;
  }
  // False once anybody claimed it (a hint: it may change at any moment).
  bool waiting() const noexcept {
    return (state_.load(std::memory_order_relaxed) & kPhaseMask) == kWaiting;
  }
  uint32_t fired_case() const noexcept { return fired_case_; }
  bool ok() const noexcept { return ok_; }

 protected:
  // Makes this a callback waiter: complete() calls `fn(this)` on the
  // claimer's thread instead of waking a parked thread.
  explicit Waiter(void (*fn)(Waiter*)) noexcept : callback_(fn) {}

 private:
  // Spins (up to this thread's adaptive limit), then yields a few times.
  enum { kSpun, kYielded, kMustPark };
  int spin_then_yield() noexcept;
  // Adapts this thread's spin limit after a wait that had to give up the
  // CPU, from where the completer ran and how long the wait took since
  // `parked_at` (default-constructed: it completed while yielding).
  void learn_after_park(
      std::chrono::steady_clock::time_point parked_at) noexcept;

  static constexpr uint32_t kWaiting = 0;
  static constexpr uint32_t kClaimed = 1;
  static constexpr uint32_t kDone = 2;
  static constexpr uint32_t kPhaseMask = 3;
  static constexpr uint32_t kParked = 4;  // a thread sleeps on state_
  static constexpr int kGenShift = 3;     // the generation: see rearm()
  static constexpr uint32_t kGenMask = ~uint32_t{0} << kGenShift;

  std::atomic<uint32_t> state_{kWaiting};
  void (*const callback_)(Waiter*) = nullptr;
  uint32_t fired_case_ = 0;
  bool ok_ = false;
  int completer_cpu_ = -1;  // thread waiters: where complete() ran
};

// A thread waiter with room for a received value on its own cache line
// (see WaitNode::slot): the counterparty that completes a parked receive
// then writes one line of the receiver's (the waiter's state and the value)
// instead of two, and the receiver reads both back in one move.
struct alignas(kCacheLine) LandingWaiter {
  static constexpr std::size_t kSize = 32;
  static constexpr std::size_t kAlign = 16;
  Waiter w;
  alignas(kAlign) unsigned char landing[kSize];
};
static_assert(sizeof(LandingWaiter) == kCacheLine,
              "a Waiter and its landing place fill one cache line");

// True if a T fits LandingWaiter::landing.
template <class T>
inline constexpr bool kLandsOnWaiterLine = sizeof(T) <= LandingWaiter::kSize &&
                                           alignof(T) <= LandingWaiter::kAlign;

// A waiter claimed under a channel's lock, to be completed with ok = true
// once the lock is dropped (see fire() in chan.h): a queued node's waiter
// and case, or a lone waiter's (see ChanCore::lone_).
struct Fired {
  Waiter* waiter = nullptr;
  uint32_t case_index = 0;
};

// The type-independent part of a channel: its lock, wait queues and
// counters. Chan<T>'s state derives from it and adds the typed buffer.
class ChanCore {
 public:
  // `settle` is the typed part of every release of a buffered channel (see
  // "The buffer" below); unbuffered channels have none.
  // `destroy` destroys and frees the whole channel (ChanState<T>).
  ChanCore(std::size_t capacity, void (*settle)(ChanCore*),
           void (*destroy)(ChanCore*)) noexcept
      : cap_(capacity), settle_(settle), destroy_(destroy) {}
  ChanCore(const ChanCore&) = delete;
  ChanCore& operator=(const ChanCore&) = delete;

  // The buffer (channels with a capacity). Its values sit in a ring of
  // cells (Vyukov's bounded MPMC queue), each with a sequence word that
  // says whose turn the cell is, so that a sender and a receiver on two
  // CPUs each write their own position word and the cells, and never the
  // lock's line: with a consumer that keeps up, a value costs a fraction of
  // a cache line move instead of several (a rendezvous per value through
  // the lock). ChanState<T> runs these fast paths without the lock.
  //
  // A position is (lap << 32 | index); below the lap, the position words
  // carry flags that send every fast path to the lock:
  //   kOwned    the lock holder owns the positions: lock() sets it on both,
  //             release() clears it, so under the lock the buffer changes
  //             only by the holder's hand (apart from a fast operation that
  //             won its position just before and is still moving its value:
  //             the holder waits for that cell);
  //   kWaiting  on enq_: receivers or watchers are queued, so a send must go
  //             through the lock, whose release hands the value over (Go's
  //             direct hand-off; no receiver overtakes one that waits); on
  //             deq_: senders or watchers are queued, likewise;
  //   kClosedPos on enq_: closed, so no send can win a position after
  //             close() (closed_ says the same to everything else).
  // A cell's sequence is the position it is free for (index i starts at i),
  // that position + 1 once it holds that position's value, and the same
  // index one lap on once the value was taken.
  static constexpr uint64_t kLap = uint64_t{1} << 32;
  static constexpr uint64_t kIndexMask = (uint64_t{1} << 29) - 1;
  static constexpr uint64_t kOwned = uint64_t{1} << 29;
  static constexpr uint64_t kWaiting = uint64_t{1} << 30;
  static constexpr uint64_t kClosedPos = uint64_t{1} << 31;
  static constexpr uint64_t kPosFlags = kOwned | kWaiting | kClosedPos;
  // The largest capacity a position's index can count (Go's makechan also
  // refuses sizes out of range).
  static constexpr std::size_t kMaxCapacity = kIndexMask;

  // Takes the channel's lock; of a buffered channel, also its positions.
  void lock() noexcept {
    lock_.lock();
    if (cap_ != 0) {
      enq_.pos.fetch_or(kOwned, std::memory_order_acq_rel);
      deq_.pos.fetch_or(kOwned, std::memory_order_acq_rel);
    }
  }

  // The number of buffered values, reservations of fast sends that are
  // still moving theirs included. Requires lock().
  std::size_t owned_len() const noexcept {
    return static_cast<std::size_t>(
        distance(enq_.pos.load(std::memory_order_relaxed),
                 deq_.pos.load(std::memory_order_relaxed)));
  }

  // Without the lock: Go's len(), from the two positions read one after
  // the other (a count between the buffer's fill at the two reads), within
  // [0, cap].
  std::size_t buffered_len() const noexcept {
    if (cap_ == 0) return 0;
    const int64_t n = distance(enq_.pos.load(std::memory_order_seq_cst),
                               deq_.pos.load(std::memory_order_seq_cst));
    return n <= 0 ? 0 : std::min(static_cast<std::size_t>(n), cap_);
  }

  // The position after `p` (flags ignored, dropped).
  uint64_t next_pos(uint64_t p) const noexcept {
    p &= ~kPosFlags;
    return (p & kIndexMask) + 1 < cap_ ? p + 1 : (p & ~(kLap - 1)) + kLap;
  }

  // Values between positions d and e (e ahead; flags ignored). Exact for
  // positions read under lock(); two positions read without it may be a
  // lap apart or crossed: callers clamp.
  int64_t distance(uint64_t e, uint64_t d) const noexcept {
    const auto laps =
        static_cast<int32_t>(static_cast<uint32_t>((e >> 32) - (d >> 32)));
    return static_cast<int64_t>(laps) * static_cast<int64_t>(cap_) +
           static_cast<int64_t>(e & kIndexMask) -
           static_cast<int64_t>(d & kIndexMask);
  }

  // Pops the oldest receiver (or sender) whose waiter this call manages to
  // claim, dropping stale nodes of waiters already fired elsewhere. Returns
  // nullptr when none is left. Requires lock_.
  WaitNode* claim_receiver_locked() noexcept { return claim_front(recvq_); }
  WaitNode* claim_sender_locked() noexcept { return claim_front(sendq_); }

  // The lone waiter (unbuffered channels; see lone_). A blocking send or
  // receive, or one case of a select, that would queue first on an empty
  // queue parks there instead: true if it may. Requires lock_.
  bool lone_free_locked(bool is_send) const noexcept {
    return cap_ == 0 && lone_ == 0 && (is_send ? sendq_ : recvq_).empty();
  }
  // Makes `lw` the lone sender (its landing place holding the value to
  // send or its address: ChanState::kLoneSendCopies) or receiver, for case
  // `case_index` of its waiter's generation `gen` (a select's, from 1; 0
  // and 0 for a plain send or receive). A select's entry pins the channel,
  // as its queued nodes do (see pin_locked()): the claim that fires the
  // select through it drops the pin, else the select's withdraw_lone().
  // Requires lock_ and lone_free_locked(is_send).
  void set_lone_locked(LandingWaiter* lw, bool is_send, uint32_t case_index = 0,
                       uint32_t gen = 0) noexcept {
    lone_ = reinterpret_cast<uintptr_t>(lw) | (is_send ? kLoneSend : 0);
    lone_case_ = case_index;
    lone_gen_ = gen;
    if (gen != 0) ++pins_;
    if (!watchq_.empty()) [[unlikely]]
      wake_watchers_locked();
  }
  // The lone sender (`senders`) or receiver in lone word `l`, or nullptr.
  static LandingWaiter* lone_of(uintptr_t l, bool senders) noexcept {
    if (l == 0 || ((l & kLoneSend) != 0) != senders) return nullptr;
    return reinterpret_cast<LandingWaiter*>(l & ~kLoneSend);
  }
  // Takes the lone sender (`senders`) or receiver out, if there is one, and
  // claims it: returns it, to be completed as *fired says, or nullptr. A
  // lone waiter is the oldest of its side: the queue behind it filled only
  // while it was there. Requires lock_.
  LandingWaiter* claim_lone_locked(bool senders, Fired* fired) noexcept {
    LandingWaiter* lw = lone_of(lone_, senders);
    if (lw == nullptr) return nullptr;
    lone_ = 0;
    // Fails for a waiter that timed out and withdraws (withdraw_lone), or a
    // select that fired through another case and withdraws (its pin stays
    // for that).
    if (!lw->w.try_claim(lone_gen_)) return nullptr;
    if (lone_gen_ != 0) --pins_;
    *fired = Fired{&lw->w, lone_case_};
    return lw;
  }
  // A lone waiter that is over without this channel (a plain one timed
  // out; a select, `is_select`, fired through another case) leaves the
  // slot, unless a counterparty or close() took it out meanwhile; a select
  // drops its pin. Takes lock_. Like unlink(), may free the channel (the
  // last pin of an orphaned one): the caller touches it no more.
  void withdraw_lone(LandingWaiter* lw, bool is_select) noexcept {
    lock();
    withdraw_lone_locked(lw, is_select);
    const bool destroy = is_select && pins_ == 0 && orphaned_;
    unlock();
    if (destroy) destroy_(this);
  }
  // withdraw_lone(), under lock_ (which keeps the channel: the caller
  // still holds a handle).
  void withdraw_lone_locked(LandingWaiter* lw, bool is_select) noexcept {
    if ((lone_ & ~kLoneSend) == reinterpret_cast<uintptr_t>(lw)) lone_ = 0;
    if (is_select) --pins_;
  }

  // Closes the channel: marks it closed and claims every queued waiter into
  // the list returned (linked through WaitNode::next), to be completed with
  // ok=false by fire_all() after the lock is dropped, and the lone waiter
  // into *lone, to be completed likewise. Requires lock_; the caller
  // checked it was open.
  WaitNode* close_locked(Fired* lone) noexcept;

  // Completes nodes collected by close_locked(). No lock held.
  static void fire_all(WaitNode* fired, bool ok) noexcept;

  // Unlinks `n` if it is still queued, and drops its pin. Takes lock_. May
  // free the channel (the last pin of an orphaned one): the caller touches
  // it no more.
  void unlink(WaitNode* n) noexcept;

  // The last handle is gone (Chan's deleter): destroys the channel now, or,
  // while selects still pin it (see pin_locked()), marks it orphaned for
  // the unlink() that drops the last pin to destroy. Never waits: the thread
  // dropping the handle may be the one that has to complete or withdraw
  // such a select (a close() whose receivers' callbacks drop handles, a
  // watcher's callback run by the registering select itself), or the
  // select may never fire (a thread still blocked at process exit).
  void release_last_handle() noexcept;

  // Without the lock (Go's empty() and full() checks before a non-blocking
  // chanrecv or chansend takes the lock): false only if there was a moment
  // during the call at which a receive (`is_send` false) or a send on this
  // channel could not have proceeded; true when it may proceed, to be tried
  // under the lock. A queued node may be stale (its select fired
  // elsewhere): a queue that is not empty only says "maybe".
  bool may_be_ready(bool is_send) const noexcept {
    // First what says whether a counterparty or buffer is there: a buffered
    // channel's positions (a sender blocks only on a full buffer, a
    // receiver only on an empty one), an unbuffered one's lone slot and
    // counterparty queue. Then closed_, read after them: a channel never
    // reopens, so open then means open at that moment too. The positions
    // only grow: a receive reads the receivers' first, so the count it sees
    // is at least the count at that read; a send reads the senders' first,
    // so it sees at most the count at that read. The lone slot before the
    // queue: a waiter takes the slot only while its side's queue is empty,
    // so if the slot was found without a counterparty and the queue empty
    // after it, there was a moment in between with neither (the other
    // order missed a sender that was blocked throughout: the lone one
    // claimed after the queue was read, a queued one read in its place).
    bool blocked;
    if (cap_ == 0) {
      blocked = lone_of(lone_.peek(), /*senders=*/!is_send) == nullptr &&
                (is_send ? recvq_ : sendq_).peek_empty();
    } else if (is_send) {
      const uint64_t e = enq_.pos.load(std::memory_order_seq_cst);
      const uint64_t d = deq_.pos.load(std::memory_order_seq_cst);
      blocked = distance(e, d) >= static_cast<int64_t>(cap_);
    } else {
      const uint64_t d = deq_.pos.load(std::memory_order_seq_cst);
      const uint64_t e = enq_.pos.load(std::memory_order_seq_cst);
      blocked = distance(e, d) <= 0;
    }
    return !blocked || closed_;
  }

  // A select's node pins its channel from its registration until it is
  // claimed (its case fired) or its owner unlinks it (select_withdraw): a
  // select fired through another channel may still have to withdraw from
  // this one after every handle to it is gone, so the channel outlives its
  // last handle until its last pin is dropped (release_last_handle). A
  // select thus keeps its channels alive without copying their handles: a
  // handle's reference count is a cache line that every thread using the
  // channel would trade, while pins_ sits on the line the registration and
  // withdrawal lock anyway. Requires lock_; `n` is enqueued here.
  void pin_locked(WaitNode* n) noexcept {
    n->pinned = true;
    ++pins_;
  }

  void enqueue_locked(WaitNode* n) noexcept {
    n->chan = this;
    (n->is_send ? sendq_ : recvq_).push_back(n);
    if (!watchq_.empty()) [[unlikely]]
      wake_watchers_locked();
  }

  // Readiness watchers (Chan::ready_async): a watch node's is_send says
  // which readiness it waits for. Fires it at once (after unlock) if ready.
  void add_watch_locked(WaitNode* n) noexcept {
    n->chan = this;
    watchq_.push_back(n);
    wake_watchers_locked();
  }

  // Claims the watchers whose readiness now holds; unlock() completes them.
  // Requires lock_; called after every change that can make a channel
  // ready for a receive (a value buffered, a sender queued or parked in the
  // lone slot, close) or a send (room in the buffer, a receiver queued or
  // lone, close).
  void wake_watchers_locked() noexcept;

  // Releases lock_, then completes the watchers woken meanwhile. Every
  // unlock of a channel goes through here (or through release()).
  void unlock() noexcept {
    WaitNode* fired = release();
    if (fired != nullptr) [[unlikely]] {
      fire_all(fired, true);
    }
  }

  // Releases lock_ and hands back the watchers woken meanwhile, for the
  // caller to fire_all() once it holds no channel lock at all (a select
  // releasing several channels).
  [[nodiscard]] WaitNode* release() noexcept {
    if (cap_ != 0) {
      settle_(this);
      publish_positions();
    }
    WaitNode* fired = watch_fired_;
    if (fired != nullptr) watch_fired_ = nullptr;  // else leave its line shared
    lock_.unlock();
    return fired;
  }

  // One end of the buffer: the position its side wins next, and copies of
  // what that side's fast path reads with it, so that it reads one line.
  struct alignas(kCacheLine) BufferEnd {
    std::atomic<uint64_t> pos{0};
    unsigned char* cells = nullptr;  // set once by ChanState<T>
    std::size_t stride = 0;          // bytes from one cell to the next
  };

  // The first cache line holds what every locked send and receive writes
  // or reads (a counterparty on another CPU takes it over once per
  // hand-off); the second what they only read, unless a readiness watcher
  // or a timer is involved. Spread over three lines, the unbuffered
  // ping-pong took 12% longer, a select ping-pong 18%. A buffered channel's
  // fast paths touch neither: each side has its BufferEnd line. make_chan
  // allocates it at a line boundary (CacheLineAllocator).
  alignas(kCacheLine) Lock lock_;
  // closed_ is written under lock_; may_be_ready() reads it without it.
  LockedWord<bool> closed_{false};
  bool timer_fired_ = false;  // after(): its value was sent; guarded by lock_
  WaitQueue recvq_;           // guarded by lock_
  WaitQueue sendq_;           // guarded by lock_
  uint32_t pins_ = 0;         // see pin_locked(); guarded by lock_
  bool orphaned_ = false;     // see release_last_handle(); guarded by lock_
  // An unbuffered channel's lone waiter: 0, or the address of a blocked
  // send's or receive's LandingWaiter (| kLoneSend for a send), parked here
  // instead of in its queue while its side's queue is empty. A counterparty
  // then reads this line and the waiter's own, where it puts a receive's
  // value (or finds a send's, or its address: ChanState::kLoneSendCopies)
  // and completes it: queued, it also wrote the node's links, a third line,
  // and the waiter wrote them back at its next wait (unbuffered
  // ping-pong ~25% faster on the 2-vCPU AMD VM, in both of its modes; see
  // docs/BENCHMARKS.md, "Session 19"). Only waiters whose value fits the
  // landing place park here (kLandsOnWaiterLine): a blocking send or
  // receive, or one case of a select (one that fired the last time, see
  // select.cc's select_kept); asynchronous operations always queue.
  // Written under lock_; may_be_ready() reads it without.
  LockedWord<uintptr_t> lone_{0};
  static constexpr uintptr_t kLoneSend = 1;
  uint32_t lone_case_ = 0;  // its case and generation: see set_lone_locked
  uint32_t lone_gen_ = 0;

  alignas(kCacheLine) WaitNode* watch_fired_ = nullptr;  // see unlock()
  WaitQueue watchq_;                                     // guarded by lock_
  const std::size_t cap_;
  // For a channel made by after(): when its value arrives. A select over
  // broker channels uses it as its deadline. max() for other channels.
  std::chrono::steady_clock::time_point timer_deadline_ =
      std::chrono::steady_clock::time_point::max();
  // Buffered channels: hands buffered values to queued receivers and queued
  // senders' values to free cells, and wakes watchers (ChanState<T>).
  void (*const settle_)(ChanCore*);
  void (*const destroy_)(ChanCore*);  // see the constructor

  BufferEnd enq_;  // senders' end (flags: kOwned, kWaiting, kClosedPos)
  BufferEnd deq_;  // receivers' end (flags: kOwned, kWaiting)

 private:
  // Ends the ownership lock() took: writes the positions back with the
  // flags that now hold (see "The buffer"). Requires lock().
  void publish_positions() noexcept {
    uint64_t enq_flags = closed_ ? kClosedPos : 0;
    uint64_t deq_flags = 0;
    if (!recvq_.empty() || !watchq_.empty()) enq_flags |= kWaiting;
    if (!sendq_.empty() || !watchq_.empty()) deq_flags |= kWaiting;
    enq_.pos.store(
        (enq_.pos.load(std::memory_order_relaxed) & ~kPosFlags) | enq_flags,
        std::memory_order_release);
    deq_.pos.store(
        (deq_.pos.load(std::memory_order_relaxed) & ~kPosFlags) | deq_flags,
        std::memory_order_release);
  }

  WaitNode* claim_front(WaitQueue& q) noexcept {
    while (WaitNode* n = q.front()) {
      q.remove(n);
      if (claim_or_drop(n)) return n;
    }
    return nullptr;
  }

  // `n` was just taken out of its queue (under lock_): claims its waiter for
  // the generation it is registered for (true; its pin is dropped, and a
  // kept node is left detached for its owner to see once completed), or
  // finds it stale (false): a kept node is then detached and its pin
  // dropped here, unless its owner re-registered it meanwhile (then it is
  // claimed for the new generation); an ordinary node, or a kept one its
  // owner is withdrawing, keeps its pin for the owner's unlink().
  bool claim_or_drop(WaitNode* n) noexcept {
    uint32_t a = n->arm.load(std::memory_order_acquire);
    for (;;) {
      if (n->waiter->try_claim(WaitNode::gen_of(a))) {
        unpin_locked(n);
        // The owner reads it once the waiter completed (after this).
        if (WaitNode::is_kept(a)) n->arm.store(0, std::memory_order_relaxed);
        return true;
      }
      if (!WaitNode::is_kept(a)) return false;
      if (n->arm.compare_exchange_weak(a, WaitNode::kRemoving,
                                       std::memory_order_acquire,
                                       std::memory_order_acquire)) {
        unpin_locked(n);
        n->arm.store(0, std::memory_order_release);  // the owner's again
        return false;
      }
    }
  }

  // Takes a stale kept node out of `q` (see WaitNode::arm): false if its
  // owner re-registered it meanwhile (`a` then holds the new value).
  // Requires lock_; `n` is queued in `q` and `a` was kept and stale.
  bool remove_stale_kept(WaitQueue& q, WaitNode* n, uint32_t& a) noexcept {
    if (!n->arm.compare_exchange_strong(a, WaitNode::kRemoving,
                                        std::memory_order_acquire,
                                        std::memory_order_acquire)) {
      return false;
    }
    q.remove(n);
    unpin_locked(n);
    n->arm.store(0, std::memory_order_release);  // the owner's again
    return true;
  }
  void unpin_locked(WaitNode* n) noexcept {
    if (!n->pinned) return;
    n->pinned = false;
    --pins_;
  }

 public:
  // True if a sender (`senders`) or receiver waits that may still fire:
  // the lone waiter, or a live node in the queue (see has_live_waiter).
  // Requires lock_.
  bool has_live(bool senders) noexcept {
    return lone_live(senders) || has_live_waiter(senders ? sendq_ : recvq_);
  }
  // The senders (`senders`) or receivers whose waiter may still fire,
  // counted (ChanStats). Requires lock_.
  std::size_t live_count(bool senders) const noexcept {
    return (lone_live(senders) ? 1 : 0) +
           live_waiters(senders ? sendq_ : recvq_);
  }
  // True if the lone slot holds a sender (`senders`) or receiver that may
  // still fire. Requires lock_.
  bool lone_live(bool senders) const noexcept {
    const LandingWaiter* lw = lone_of(lone_, senders);
    return lw != nullptr && lw->w.live(lone_gen_);
  }

  // True if `q` holds a node whose waiter may still fire; takes stale nodes
  // (of selects that fired elsewhere) out on the way. Requires lock_.
  bool has_live_waiter(WaitQueue& q) noexcept {
    while (WaitNode* n = q.front()) {
      uint32_t a = n->arm.load(std::memory_order_acquire);
      if (n->waiter->live(WaitNode::gen_of(a))) return true;
      if (!WaitNode::is_kept(a)) {
        q.remove(n);  // its owner unlinks it (and drops its pin)
      } else {
        remove_stale_kept(q, n, a);  // or re-registered: look again
      }
    }
    return false;
  }

  // The nodes in `q` whose waiter may still fire (ChanStats). Requires
  // lock_.
  static std::size_t live_waiters(const WaitQueue& q) noexcept {
    std::size_t live = 0;
    for (const WaitNode* n = q.front(); n != nullptr; n = n->next) {
      if (n->waiter->live(
              WaitNode::gen_of(n->arm.load(std::memory_order_acquire)))) {
        ++live;
      }
    }
    return live;
  }

  // A kept node's owner takes it out while holding lock_ (a select that
  // claimed itself after registering, see select.cc): unlinks it, drops its
  // pin and detaches it.
  void withdraw_locked(WaitNode* n) noexcept {
    if (n->queued) (n->is_send ? sendq_ : recvq_).remove(n);
    unpin_locked(n);
    n->arm.store(0, std::memory_order_relaxed);
  }
};

// Parks the calling thread forever (a nil channel's send or receive).
[[noreturn]] void block_forever() noexcept;

}  // namespace dchan::detail

#endif  // DCHAN_DETAIL_WAITER_H_
