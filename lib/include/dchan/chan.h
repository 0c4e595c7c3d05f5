// dchan/chan.h — Go's channels for C++.
//
//   dchan::Chan<Job> jobs = dchan::make_chan<Job>(100);   // buffered
//   dchan::Chan<int> done = dchan::make_chan<int>();      // unbuffered
//   dchan::Chan<int> nil;                                  // the nil channel
//
// A Chan<T> is a cheap, copyable handle to a channel (Go's channels are
// reference types): copies name the same channel, and `==` tells whether two
// handles do. The semantics are Go's:
//   - send() on an unbuffered channel returns only once a receiver has taken
//     the value (rendezvous); on a buffered one it blocks while the buffer is
//     full.
//   - recv() is FIFO; once the channel is closed it drains what is buffered
//     and then returns std::nullopt forever (Go's `v, ok := <-ch`).
//   - close() wakes every blocked receiver and sender; blocked and later
//     senders throw dchan::Error "send on closed channel".
//   - The nil channel (a default-constructed Chan) blocks send and recv
//     forever; its timed forms time out; its select cases never fire.
//
// Non-blocking and timed forms (try_*, *_for, *_until) never throw for a
// closed channel: they report ChanStatus::kClosed. A send form that does not
// succeed leaves its argument untouched, so a move-only value is not lost.
//
// Thread safety: every member function may be called concurrently from any
// number of threads on copies of the same handle. A single Chan object
// (the handle itself) follows the usual rules for std::shared_ptr.
//
// Element types must be nothrow-move-constructible (std::string, protobuf
// messages, std::unique_ptr, every arithmetic type are).
//
// Remote channels: dchan::Client::chan<T>(name) returns a Chan<T> hosted by a
// broker (see <dchan/client.h>). It has the same semantics; values travel
// encoded by Codec<T> (see <dchan/codec.h>), so T then also needs a codec
// and a default constructor. Its operations may additionally throw
// dchan::Error for remote failures (kUnavailable when the broker is lost;
// kDataLoss for bytes the codec rejects). recv_async and send_async are for
// local channels only.
//
// A buffered channel's send and receive take no lock while the buffer has
// room (a value) and nobody is queued: values move through a ring of cells
// (Vyukov's bounded queue), so a producer and a consumer on two CPUs share
// no lock, and a consumer that keeps up takes each value as it lands. A
// blocking send (receive) polls a full (empty) buffer for the spin limit
// below before it queues. Everything else (queued waiters, close, select's
// registration) goes through the channel's lock, which owns the ring while
// held.
//
// Blocked threads spin for up to about ten microseconds, then yield a few
// times, before parking on a futex (waking a parked thread on another CPU
// costs tens of microseconds on small VMs). Each thread shortens its spin
// when its waits are completed from its own CPU (spinning then only delays
// the thread it waits for); they do not spin when the process was started
// confined to one CPU (`taskset -c 0`).
#ifndef DCHAN_CHAN_H_
#define DCHAN_CHAN_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "dchan/codec.h"
#include "dchan/detail/futex.h"
#include "dchan/detail/remote.h"
#include "dchan/detail/waiter.h"
#include "dchan/error.h"

namespace dchan {

// The outcome of a non-blocking or timed channel operation.
enum class ChanStatus {
  kOk,          // the value was sent or received
  kWouldBlock,  // try_*: the operation could not complete at once
  kTimeout,     // *_for / *_until: the deadline passed first
  kClosed,      // the channel is closed (for a receive: and drained)
};

// Human-readable name of a ChanStatus ("ok", "would block", ...).
const char* to_string(ChanStatus status) noexcept;

// The result of try_recv, recv_for and recv_until: `value` is set exactly
// when `status` is kOk.
template <class T>
struct RecvResult {
  ChanStatus status;
  std::optional<T> value;

  bool ok() const noexcept { return status == ChanStatus::kOk; }
  explicit operator bool() const noexcept { return ok(); }
};

template <class T>
class Chan;
template <class T>
struct AsyncSelectCase;
template <class T>
struct SelectOutcome;

// A pending asynchronous channel operation (see Chan::recv_async and
// Chan::send_async). Copyable; all copies refer to the same operation.
class PendingOp;

namespace detail {

// A channel's shared state: the type-independent core plus, for a buffered
// channel, its ring of `cap_` cells (see "The buffer" in waiter.h). The
// queues and the closed flag are guarded by lock_; the ring is shared by
// the fast paths (no lock) and the lock holder (which owns the positions).
template <class T>
class ChanState final : public ChanCore {
 public:
  // Of a fast path that did not complete: kBusy when the lock must decide
  // (the positions are owned, someone is queued, or the channel is closed).
  enum class Fast { kDone, kFull, kEmpty, kBusy };

  explicit ChanState(std::size_t capacity, uint32_t first_lap = 0)
      : ChanCore(capacity, capacity > 0 ? &ChanState::settle : nullptr,
                 &ChanState::destroy) {
    if (capacity == 0) return;
    // A cell per cache line, so that a sender filling one cell and a
    // receiver emptying the one before write different lines (packed, a
    // receiver that keeps up took ~4x as long per value), where that costs
    // little: a small ring, or a cell that nearly fills its lines anyway.
    const std::size_t padded =
        (sizeof(Cell) + kCacheLine - 1) / kCacheLine * kCacheLine;
    const std::size_t stride =
        capacity <= kPaddedRingBytes / padded ||
                4 * (padded - sizeof(Cell)) <= sizeof(Cell)
            ? padded
            : sizeof(Cell);
    // Zero-filled: every cell's turn is lap 0's, and a big ring's pages are
    // only committed as values reach them (as Go's buffer is).
    enq_.cells = deq_.cells = allocate_zeroed_cells(capacity * stride);
    enq_.stride = deq_.stride = stride;
    const uint64_t first = uint64_t{first_lap} << 32;
    if (first != 0) {
      for (std::size_t i = 0; i < capacity; ++i) cell(i).turn_word = first;
    }
    enq_.pos.store(first, std::memory_order_relaxed);
    deq_.pos.store(first, std::memory_order_relaxed);
  }

  ~ChanState() {
    if (enq_.cells == nullptr) return;
    const uint64_t e = enq_.pos.load(std::memory_order_relaxed) & ~kPosFlags;
    for (uint64_t d = deq_.pos.load(std::memory_order_relaxed) & ~kPosFlags;
         d != e; d = next_pos(d)) {
      cell(d).value()->~T();
    }
    free_cells(enq_.cells);
  }

  // Go's chansend, without blocking: hands `v` to a waiting receiver or
  // buffers it (the release after this hands a buffered value to a queued
  // receiver). On kOk, *fire (if set) must be completed with ok=true once
  // the lock is dropped. `v` is moved from only on kOk. Requires lock().
  ChanStatus send_locked(T& v, Fired* fire) {
    if (closed_) return ChanStatus::kClosed;
    if (cap_ != 0) {
      if (owned_len() == cap_) return ChanStatus::kWouldBlock;
      push_owned(std::move(v));
      return ChanStatus::kOk;
    }
    if constexpr (kLandsOnWaiterLine<T>) {
      if (LandingWaiter* lw = claim_lone_locked(/*senders=*/false, fire)) {
        ::new (static_cast<void*>(lw->landing)) T(std::move(v));
        return ChanStatus::kOk;
      }
    }
    if (WaitNode* r = claim_receiver_locked()) {
      ::new (r->slot) T(std::move(v));
      *fire = Fired{r->waiter, r->case_index};
      return ChanStatus::kOk;
    }
    return ChanStatus::kWouldBlock;
  }

  // Go's chanrecv, without blocking: takes the oldest buffered value (the
  // release after this refills the buffer from a queued sender) or a
  // blocked sender's value. kClosed once closed and drained. On kOk, *fire
  // as in send_locked. Requires lock().
  ChanStatus recv_locked(std::optional<T>& out, Fired* fire) {
    if (cap_ != 0) {
      if (owned_len() != 0) {
        out.emplace(pop_owned());
        return ChanStatus::kOk;
      }
      return closed_ ? ChanStatus::kClosed : ChanStatus::kWouldBlock;
    }
    if constexpr (kLandsOnWaiterLine<T>) {
      if (LandingWaiter* lw = claim_lone_locked(/*senders=*/true, fire)) {
        if constexpr (kLoneSendCopies) {
          out.emplace(
              std::move(*std::launder(reinterpret_cast<T*>(lw->landing))));
        } else {
          void* value = *std::launder(reinterpret_cast<void**>(lw->landing));
          out.emplace(std::move(*static_cast<T*>(value)));
        }
        return ChanStatus::kOk;
      }
    }
    if (WaitNode* s = claim_sender_locked()) {
      out.emplace(std::move(*static_cast<T*>(s->slot)));
      *fire = Fired{s->waiter, s->case_index};
      return ChanStatus::kOk;
    }
    return closed_ ? ChanStatus::kClosed : ChanStatus::kWouldBlock;
  }

  // What a lone sender (ChanCore::lone_) leaves in its landing place: a copy
  // of a trivially copyable value, on the line the receiver reads anyway
  // (a copy leaves the caller's object as a move would, and a failed send
  // has nothing to undo); the address of any other, which the receiver
  // moves from (the caller's object, as for a queued send: never touched
  // by a send that fails). Copying made unbuffered ping-pong of ints
  // ~30% faster than reading them through the address (206-212 ns against
  // 269-296, 3 alternated rounds): the sender often parks first.
  static constexpr bool kLoneSendCopies = std::is_trivially_copyable_v<T>;

  // Puts what a lone sender of `*value` leaves in its landing place (see
  // kLoneSendCopies). Requires kLandsOnWaiterLine<T>.
  static void put_lone_send(LandingWaiter& lw, T* value) noexcept {
    if constexpr (kLoneSendCopies) {
      // Not T's copy constructor: a trivially copyable T may delete it.
      std::memcpy(lw.landing, value, sizeof(T));
    } else {
      ::new (static_cast<void*>(lw.landing)) void*(value);
    }
  }

  // A send into the buffer without the lock (Vyukov's enqueue); `v` is
  // moved from only on kDone. Buffered channels only.
  Fast try_send_fast(T& v) noexcept {
    uint64_t e = enq_.pos.load(std::memory_order_acquire);
    for (;;) {
      if ((e & kPosFlags) != 0) return Fast::kBusy;
      Cell& c = cell_at(enq_, e);
      const uint64_t lap = lap_of(e);
      const uint64_t turn = c.turn().load(std::memory_order_acquire);
      if (turn == lap) {
        prefetch_ahead(enq_, e, /*for_write=*/true);
        if (enq_.pos.compare_exchange_weak(e, next_pos(e),
                                           std::memory_order_seq_cst,
                                           std::memory_order_acquire)) {
          ::new (static_cast<void*>(c.storage)) T(std::move(v));
          c.turn().store(lap + 1, std::memory_order_release);
          return Fast::kDone;
        }
      } else if (static_cast<int64_t>(turn - lap) < 0) {
        return Fast::kFull;  // the cell still holds (or hands out) a value
      } else {
        e = enq_.pos.load(std::memory_order_acquire);  // another sender won e
      }
    }
  }

  // A receive from the buffer without the lock (Vyukov's dequeue).
  // Buffered channels only.
  Fast try_recv_fast(std::optional<T>& out) noexcept {
    uint64_t d = deq_.pos.load(std::memory_order_acquire);
    for (;;) {
      if ((d & kPosFlags) != 0) return Fast::kBusy;
      Cell& c = cell_at(deq_, d);
      const uint64_t lap = lap_of(d);
      const uint64_t turn = c.turn().load(std::memory_order_acquire);
      if (turn == lap + 1) {
        prefetch_ahead(deq_, d, /*for_write=*/false);
        if (deq_.pos.compare_exchange_weak(d, next_pos(d),
                                           std::memory_order_seq_cst,
                                           std::memory_order_acquire)) {
          T* p = c.value();
          out.emplace(std::move(*p));
          p->~T();
          c.turn().store(lap + kLap, std::memory_order_release);
          return Fast::kDone;
        }
      } else if (static_cast<int64_t>(turn - (lap + 1)) < 0) {
        return Fast::kEmpty;  // not written yet (or still being written)
      } else {
        d = deq_.pos.load(std::memory_order_acquire);  // another receiver won d
      }
    }
  }

  // The blocking forms' fast paths: try, and while the buffer is full
  // (empty), or a lock holder owns it for a moment, poll for up to
  // poll_limit() pauses before giving up (false: take the lock). A consumer
  // that keeps up thus takes values as they land, without the lock, and
  // without queueing to be handed each. Queued counterparties or a close
  // are for the lock to settle at once.
  bool send_fast_polling(T& v) noexcept {
    int polls = -1;
    for (;;) {
      const uint64_t e = enq_.pos.load(std::memory_order_acquire);
      const Fast result = try_send_fast(v);
      if (result == Fast::kDone) return true;
      if ((e & (kPosFlags & ~kOwned)) != 0) return false;
      const bool moved =
          result == Fast::kFull
              ? poll_for_room(e, polls)
              : poll_until_moved(enq_, e, polls, [] { return false; });
      if (!moved) return false;
    }
  }
  bool recv_fast_polling(std::optional<T>& out) noexcept {
    int polls = -1;
    for (;;) {
      const uint64_t d = deq_.pos.load(std::memory_order_acquire);
      if (try_recv_fast(out) == Fast::kDone) return true;
      if ((d & (kPosFlags & ~kOwned)) != 0) return false;
      // A closed channel's sends are over: its lock path reports it closed
      // and drained (or hands over a send still moving its value).
      if (!poll_until_moved(deq_, d, polls, [this] {
            return (enq_.pos.load(std::memory_order_relaxed) & kClosedPos) != 0;
          })) {
        return false;
      }
    }
  }

 private:
  // A cell of the ring. Its turn word is lap_of(position) while the cell
  // is free for that position, + 1 once it holds that position's value, and
  // the next lap's once the value was taken (Vyukov's sequence, less the
  // index: so a zero-filled cell is free for the first lap).
  struct Cell {
    T* value() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
    std::atomic_ref<uint64_t> turn() noexcept {
      return std::atomic_ref<uint64_t>(turn_word);
    }
    alignas(std::atomic_ref<uint64_t>::required_alignment)
        uint64_t turn_word;  // only through turn(), once the channel is shared
    alignas(T) unsigned char storage[sizeof(T)];
  };

  static uint64_t lap_of(uint64_t pos) noexcept { return pos & ~(kLap - 1); }

  // For the *_fast_polling forms: polls the cell at `end`'s position `p`
  // until its turn or the position changes (true: try again), or gives up
  // (false) once `polls` (the thread's limit, fetched on first use) run out
  // or `stop()`.
  template <class Stop>
  static bool poll_until_moved(BufferEnd& end, uint64_t p, int& polls,
                               Stop stop) noexcept {
    if (polls < 0) polls = poll_limit();
    Cell& c = cell_at(end, p);
    const uint64_t turn = c.turn().load(std::memory_order_relaxed);
    while (c.turn().load(std::memory_order_relaxed) == turn &&
           end.pos.load(std::memory_order_relaxed) == p) {
      if (stop() || polls-- <= 0) return false;
      spin_pause();
    }
    return true;
  }

  // For send_fast_polling on a full buffer: polls until the cell at `e` is
  // free (true: try again), or `e` moved (true), or `polls` ran out (false:
  // take the lock path). For the first half of its polls it watches the
  // cell room_ahead() positions on instead, and goes on to `e` once that
  // one is free. Watching the cell at `e` from the start, the one the
  // receiver empties next, each look pulled its line away from the
  // receiver in the middle of its write, and the two threads moved one line
  // back and forth per value (buffered 1P1C: ~200 ns per value with the two
  // threads on separate cores of the AMD VM, ~12 ns with this; see
  // docs/BENCHMARKS.md, "Session 15"). The sender then refills a quarter of
  // the ring in a burst, on lines the receiver has left. A receiver slower
  // than that gets the sender watching `e` after half the polls, so that a
  // single freed cell still takes no lock. And the cell ahead may be free
  // while the one at `e` is not (a receive that won `e` is still moving its
  // value out): waiting for `e` then spends polls, where returning at once
  // would loop for as long as that receive is preempted.
  bool poll_for_room(uint64_t e, int& polls) noexcept {
    if (polls < 0) polls = poll_limit();
    uint64_t index = (e & kIndexMask) + room_ahead();
    uint64_t ahead_lap = lap_of(e);
    if (index >= cap_) {
      index -= cap_;
      ahead_lap += kLap;
    }
    const int switch_at = polls / 2;
    Cell& ahead = cell_at(enq_, index);
    while (!cell_free(ahead, ahead_lap) && polls > switch_at) {
      if (enq_.pos.load(std::memory_order_relaxed) != e) return true;
      --polls;
      spin_pause();
    }
    Cell& at_e = cell_at(enq_, e);
    while (!cell_free(at_e, lap_of(e))) {
      if (enq_.pos.load(std::memory_order_relaxed) != e) return true;
      if (polls-- <= 0) return false;
      spin_pause();
    }
    return true;
  }
  // Whether `c` is free for its position in `lap` (its turn word reached
  // `lap`; see Cell).
  static bool cell_free(Cell& c, uint64_t lap) noexcept {
    return static_cast<int64_t>(c.turn().load(std::memory_order_relaxed) -
                                lap) >= 0;
  }

  // For the fast paths: asks for the line of the cell kPrefetchAhead
  // positions after `pos` at `end`, so that its move from the other end's
  // CPU overlaps this end's next few values. In a ring with a cell per
  // line, each value moves its line to the receiver's CPU and, for the next
  // lap, back to the sender's, and a locked compare-and-swap per value
  // keeps a CPU from overlapping those misses by itself. Each end asks
  // only once its own cell was ready (a sender's free, a receiver's full):
  // then the cell ahead is most likely left by the other end (a sender on
  // a full buffer would take a line the receiver is about to read), and a
  // receiver that keeps up with its sender leaves the sender's lines
  // alone. Not in a packed ring (a big one, several cells per line), where
  // the cell ahead may share the line the other end is writing.
  //
  // On the Intel VM (docs/BENCHMARKS.md, "Session 20"), buffered 1P1C went
  // from 51-56 to 30-38 ns per value, 2P2C from 60-62 to 41-44, the
  // 4-channel fan-in select from 132-134 to 87-90. A receiver asking
  // further ahead than the sender took lines the sender was about to
  // write (~100 ns per value), and one asking before its cell was seen
  // full did the same half the time. The wrap divides (3 positions of a
  // 64-cell ring) although subtracting would do: with subtraction, or
  // with no prefetch at those positions, 1P1C measured 27-66 and 37-51 ns
  // against 30-38 (3 alternated rounds each), the two threads falling into
  // a slower pattern in some runs; why the division's delay keeps them out
  // of it was not worked out.
  static constexpr std::size_t kPrefetchAhead = 3;
  void prefetch_ahead(const BufferEnd& end, uint64_t pos,
                      bool for_write) const noexcept {
    if (cap_ <= kPrefetchAhead || end.stride < kCacheLine) return;
    uint64_t i = (pos & kIndexMask) + kPrefetchAhead;
    if (i >= cap_) i %= cap_;  // not a subtraction: see above
    const Cell& ahead = cell_at(end, i);
    if (for_write) {
      prefetch_for_write(&ahead);
    } else {
      __builtin_prefetch(&ahead, 0);
    }
  }
  std::size_t room_ahead() const noexcept {
    return std::min<std::size_t>(cap_ / 4, kRoomAhead);
  }
  static constexpr std::size_t kRoomAhead = 16;

  // A ring of at most this many bytes gives each cell a line of its own
  // whatever the padding costs (128 cells of a word-sized T).
  static constexpr std::size_t kPaddedRingBytes = 8 * 1024;

  // Zero-filled and aligned to a cache line (align_after, as
  // CacheLineAllocator). A big calloc maps fresh zero pages, committed as
  // they are first written.
  static unsigned char* allocate_zeroed_cells(std::size_t bytes) {
    constexpr std::size_t kAlign = std::max(kCacheLine, alignof(Cell));
    static_assert(kAlign <= 255, "the distance back is kept in a byte");
    if (bytes > std::numeric_limits<std::size_t>::max() - kAlign) {
      throw std::bad_alloc();
    }
    auto* raw = static_cast<unsigned char*>(std::calloc(1, bytes + kAlign));
    if (raw == nullptr) throw std::bad_alloc();
    return align_after(raw, kAlign);
  }
  static void free_cells(unsigned char* p) noexcept {
    std::free(block_start(p));
  }

  // The cell for `pos`, through one end's copies of the ring's address and
  // stride (that end's own line; the lock holder owns both lines).
  Cell& cell(uint64_t pos) noexcept { return cell_at(enq_, pos); }
  static Cell& cell_at(const BufferEnd& end, uint64_t pos) noexcept {
    return *std::launder(
        reinterpret_cast<Cell*>(end.cells + (pos & kIndexMask) * end.stride));
  }

  // Buffers `v`. Requires lock() and room (owned_len() < cap_).
  void push_owned(T&& v) noexcept {
    const uint64_t at = enq_.pos.load(std::memory_order_relaxed);
    const uint64_t e = at & ~kPosFlags;
    Cell& c = cell(e);
    // A fast receive may still be moving the previous lap's value out.
    wait_for_turn(c.turn_word, lap_of(e));
    ::new (static_cast<void*>(c.storage)) T(std::move(v));
    c.turn().store(lap_of(e) + 1, std::memory_order_release);
    enq_.pos.store(next_pos(e) | (at & kPosFlags), std::memory_order_relaxed);
  }

  // Takes the oldest buffered value. Requires lock() and owned_len() > 0.
  T pop_owned() noexcept {
    const uint64_t at = deq_.pos.load(std::memory_order_relaxed);
    const uint64_t d = at & ~kPosFlags;
    Cell& c = cell(d);
    // A fast send may have won this position and still be moving its value.
    wait_for_turn(c.turn_word, lap_of(d) + 1);
    T* p = c.value();
    T v(std::move(*p));
    p->~T();
    c.turn().store(lap_of(d) + kLap, std::memory_order_release);
    deq_.pos.store(next_pos(d) | (at & kPosFlags), std::memory_order_relaxed);
    return v;
  }

  // destroy_ (see ChanCore): destroys and frees a channel made by
  // make_chan_at_lap.
  static void destroy(ChanCore* core) noexcept {
    auto* s = static_cast<ChanState*>(core);
    s->~ChanState();
    CacheLineAllocator<ChanState>().deallocate(s, 1);
  }

  // settle_ (see ChanCore): run by every release of the lock. Queued
  // receivers exist only while the buffer is empty and queued senders only
  // while it is full, so this hands over what the holder's own operation
  // (or a fast operation that won its position before the lock) changed:
  // oldest value to the oldest receiver, oldest sender's value to the
  // freed cell, as Go's chanrecv does.
  static void settle(ChanCore* core) noexcept {
    auto* s = static_cast<ChanState*>(core);
    for (;;) {
      if (!s->recvq_.empty() && s->owned_len() != 0) {
        if (WaitNode* r = s->claim_receiver_locked()) {
          ::new (r->slot) T(s->pop_owned());
          r->next = s->watch_fired_;
          s->watch_fired_ = r;
          continue;
        }
      }
      if (!s->sendq_.empty() && s->owned_len() < s->cap_) {
        if (WaitNode* w = s->claim_sender_locked()) {
          s->push_owned(std::move(*static_cast<T*>(w->slot)));
          w->next = s->watch_fired_;
          s->watch_fired_ = w;
          continue;
        }
      }
      break;
    }
    if (!s->watchq_.empty()) s->wake_watchers_locked();
  }
};

// Moves the value a counterparty constructed at a receive node's `slot`
// (see WaitNode::slot) into `out`, and destroys it there.
template <class T>
void take_landed(void* slot, std::optional<T>& out) {
  T* p = std::launder(static_cast<T*>(slot));
  struct Destroy {
    T* p;
    ~Destroy() { p->~T(); }
  } destroy{p};
  out.emplace(std::move(*p));
}

// Completes a waiter claimed by send_locked/recv_locked. No lock held.
inline void fire(const Fired& f) noexcept {
  if (f.waiter != nullptr) f.waiter->complete(f.case_index, true);
}

template <class T>
ChanState<T>* state_of(const Chan<T>& ch) noexcept;
template <class T>
RemoteChan* remote_of(const Chan<T>& ch) noexcept;
struct ChanStats;
template <class T>
ChanStats stats_of(const Chan<T>& ch) noexcept;
template <class T>
Chan<T> make_remote_chan(std::shared_ptr<RemoteChan> remote);
template <class T>
Chan<T> make_chan_at_lap(std::size_t capacity, uint32_t first_lap);

// An asynchronous operation: a callback waiter that owns its nodes and
// slots. It keeps itself (self_) and its channels alive while queued.
class AsyncOp : public Waiter {
 public:
  // Withdraws the operation if it has not fired yet.
  bool cancel() noexcept {
    if (!try_claim()) return false;
    withdraw();
    mark_done_by_owner();
    std::shared_ptr<const void> chan = std::move(chan_keep_);
    std::shared_ptr<AsyncOp> self = std::move(self_);
    return true;
  }

 protected:
  AsyncOp() noexcept : Waiter(&AsyncOp::on_fire) {}
  virtual ~AsyncOp() = default;
  // Unlinks every node that is still queued. No lock held.
  virtual void withdraw() noexcept = 0;
  // Runs the completion, once fired, with no lock held.
  virtual void deliver() noexcept = 0;

  std::shared_ptr<AsyncOp> self_;          // while queued
  std::shared_ptr<const void> chan_keep_;  // the channel, while queued

 private:
  static void on_fire(Waiter* w) noexcept {
    auto* op = static_cast<AsyncOp*>(w);
    std::shared_ptr<AsyncOp> self = std::move(op->self_);
    op->chan_keep_.reset();  // the completing party holds its own handle
    op->deliver();
  }
  friend class dchan::PendingOp;
  template <class U>
  friend class dchan::Chan;
};

}  // namespace detail

class PendingOp {
 public:
  // An operation that is not pending (it completed at once).
  PendingOp() = default;

  // Withdraws the operation if it has not fired: returns true when it was
  // withdrawn (its callback will never run, a receive consumed nothing, a
  // send's value is destroyed unsent). Returns false when it already fired:
  // its callback has run or is running on another thread. Never blocks on
  // the callback.
  bool cancel() noexcept { return op_ != nullptr && op_->cancel(); }

  // True while the operation is queued and may still fire.
  bool pending() const noexcept { return op_ != nullptr && !op_->done(); }

 private:
  explicit PendingOp(std::shared_ptr<detail::AsyncOp> op)
      : op_(std::move(op)) {}
  std::shared_ptr<detail::AsyncOp> op_;
  template <class U>
  friend class Chan;
  template <class U>
  friend PendingOp select_async(
      std::vector<AsyncSelectCase<U>> cases, bool nonblocking,
      absl::AnyInvocable<void(SelectOutcome<U>) &&> done);
};

template <class T>
class Chan {
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "dchan::Chan<T> needs a nothrow-move-constructible T");
  static_assert(std::is_nothrow_destructible_v<T>);

 public:
  using value_type = T;

  // The nil channel.
  Chan() noexcept = default;

  // Sends `value`. Blocks until a receiver takes it (unbuffered) or there is
  // room in the buffer. Throws dchan::Error "send on closed channel" if the
  // channel is closed, also when it is closed while this call is blocked.
  // On the nil channel, blocks forever.
  void send(T value) {
    detail::ChanState<T>* s = state_.get();
    if (s == nullptr) [[unlikely]] {
      if (remote_ == nullptr) detail::block_forever();
      if (remote_send_owned(std::move(value),
                            detail::RemoteChan::kNoDeadline) ==
          ChanStatus::kClosed) {
        detail::throw_panic("send on closed channel");
      }
      return;
    }
    if (s->cap_ != 0 && s->send_fast_polling(value)) return;
    detail::Fired to_fire;
    s->lock();
    const ChanStatus st = s->send_locked(value, &to_fire);
    if (st != ChanStatus::kWouldBlock) {
      s->unlock();
      if (st == ChanStatus::kClosed)
        detail::throw_panic("send on closed channel");
      detail::fire(to_fire);
      return;
    }
    if (!*park_locked(s, &value, /*is_send=*/true, kForever)) {
      detail::throw_panic("send on closed channel");
    }
  }

  // Receives the next value. Blocks until one is available. Returns
  // std::nullopt once the channel is closed and drained. On the nil
  // channel, blocks forever.
  std::optional<T> recv() {
    detail::ChanState<T>* s = state_.get();
    std::optional<T> out;
    if (s == nullptr) [[unlikely]] {
      if (remote_ == nullptr) detail::block_forever();
      remote_recv(out, detail::RemoteChan::kNoDeadline);
      return out;
    }
    if (s->cap_ != 0 && s->recv_fast_polling(out)) return out;
    detail::Fired to_fire;
    s->lock();
    if (s->recv_locked(out, &to_fire) != ChanStatus::kWouldBlock) {
      s->unlock();
      detail::fire(to_fire);
      return out;
    }
    park_locked(s, &out, /*is_send=*/false, kForever);
    return out;
  }

  // Closes the channel: every blocked receiver gets std::nullopt (after the
  // buffer drains), every blocked sender throws. Throws dchan::Error "close
  // of closed channel" or "close of nil channel".
  void close() {
    detail::ChanState<T>* s = state_.get();
    if (s == nullptr) [[unlikely]] {
      if (remote_ == nullptr) detail::throw_panic("close of nil channel");
      remote_->close();
      return;
    }
    s->lock();
    if (s->closed_) {
      s->unlock();
      detail::throw_panic("close of closed channel");
    }
    detail::Fired lone;
    detail::WaitNode* fired = s->close_locked(&lone);
    s->unlock();
    detail::ChanCore::fire_all(fired, /*ok=*/false);
    if (lone.waiter != nullptr) {
      lone.waiter->complete(lone.case_index, /*ok=*/false);
    }
  }

  // Sends without blocking: kOk, kWouldBlock or kClosed. `value` is moved
  // from only on kOk.
  ChanStatus try_send(T&& value) { return try_send_ref(value); }
  ChanStatus try_send(const T& value) {
    T copy(value);
    return try_send_ref(copy);
  }

  // Sends, giving up after `timeout` (kTimeout) or when the channel is or
  // gets closed (kClosed). `value` is moved from only on kOk.
  template <class Rep, class Period>
  ChanStatus send_for(T&& value, std::chrono::duration<Rep, Period> timeout) {
    return send_until_steady(value, detail::deadline_after(timeout));
  }
  template <class Rep, class Period>
  ChanStatus send_for(const T& value,
                      std::chrono::duration<Rep, Period> timeout) {
    T copy(value);
    return send_until_steady(copy, detail::deadline_after(timeout));
  }
  template <class Clock, class Duration>
  ChanStatus send_until(T&& value,
                        std::chrono::time_point<Clock, Duration> deadline) {
    return send_until_steady(value, detail::to_steady(deadline));
  }
  template <class Clock, class Duration>
  ChanStatus send_until(const T& value,
                        std::chrono::time_point<Clock, Duration> deadline) {
    T copy(value);
    return send_until_steady(copy, detail::to_steady(deadline));
  }

  // Receives without blocking: kOk with a value, kWouldBlock, or kClosed
  // once closed and drained.
  RecvResult<T> try_recv() {
    RecvResult<T> r{ChanStatus::kWouldBlock, std::nullopt};
    detail::ChanState<T>* s = state_.get();
    if (s == nullptr) [[unlikely]] {
      if (remote_ != nullptr) {
        r.status = remote_recv(r.value, detail::RemoteChan::kNonBlocking);
      }
      return r;
    }
    if (s->cap_ != 0 &&
        s->try_recv_fast(r.value) == detail::ChanState<T>::Fast::kDone) {
      r.status = ChanStatus::kOk;
      return r;
    }
    if (!s->may_be_ready(/*is_send=*/false)) return r;
    detail::Fired to_fire;
    s->lock();
    r.status = s->recv_locked(r.value, &to_fire);
    s->unlock();
    detail::fire(to_fire);
    return r;
  }

  // Receives, giving up after `timeout` (kTimeout); kClosed once closed and
  // drained. A receive that times out consumes nothing.
  template <class Rep, class Period>
  RecvResult<T> recv_for(std::chrono::duration<Rep, Period> timeout) {
    return recv_until_steady(detail::deadline_after(timeout));
  }
  template <class Clock, class Duration>
  RecvResult<T> recv_until(std::chrono::time_point<Clock, Duration> deadline) {
    return recv_until_steady(detail::to_steady(deadline));
  }

  // Asynchronous receive, for event-driven callers: never blocks. `done`
  // runs exactly once with the value (std::nullopt: closed and drained) —
  // inline before this returns if a value is available now, otherwise later
  // on the thread of whichever party completes the receive (a sender, or
  // close()) after it dropped the channel's lock — unless the returned
  // operation is cancelled first. No thread waits for it: a pending receive
  // is a node in the channel's queue. On the nil channel it stays pending
  // until cancelled.
  PendingOp recv_async(absl::AnyInvocable<void(std::optional<T>) &&> done);

  // Asynchronous send: like recv_async; `done(true)` once a receiver took
  // the value or it was buffered, `done(false)` if the channel is or gets
  // closed (the value is then dropped).
  PendingOp send_async(T value, absl::AnyInvocable<void(bool) &&> done);

  // Readiness watch, for selects that span processes: `done` runs once the
  // channel is ready for a receive (a value buffered, a sender waiting, or
  // closed) — or, with `for_send`, for a send (room in the buffer, a
  // receiver waiting, or closed) — consuming nothing. Inline if ready now,
  // otherwise on the thread that made it ready, after it dropped the lock.
  // Readiness is a hint: another party may take it first. Local channels
  // only.
  PendingOp ready_async(bool for_send, absl::AnyInvocable<void() &&> done);

  // The number of buffered values (Go's len), and the capacity (Go's cap).
  // Both 0 for the nil channel.
  std::size_t len() const {
    detail::ChanState<T>* s = state_.get();
    if (s == nullptr) [[unlikely]] {
      return remote_ != nullptr ? remote_->len() : 0;
    }
    return s->buffered_len();
  }
  std::size_t cap() const noexcept {
    if (state_ != nullptr) return state_->cap_;
    return remote_ != nullptr ? remote_->cap() : 0;
  }

  // True for the nil channel.
  bool is_nil() const noexcept {
    return state_ == nullptr && remote_ == nullptr;
  }

  // True for a channel hosted by a broker.
  bool is_remote() const noexcept { return remote_ != nullptr; }

  // Same channel (Go's ==). Two handles to one broker channel obtained by
  // separate opens compare unequal, as two Go channels would.
  friend bool operator==(const Chan& a, const Chan& b) noexcept {
    return a.state_ == b.state_ && a.remote_ == b.remote_;
  }

  // Range-for support: `for (T v : ch)` receives until the channel is closed
  // and drained. The iterator yields T&& so that move-only values can be
  // taken: use `for (T v : ch)` or `for (auto&& v : ch)`.
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    using reference = T&&;

    iterator() = default;
    T&& operator*() { return std::move(*value_); }
    iterator& operator++() {
      value_ = ch_->recv();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) {
      return !it.value_.has_value();
    }

   private:
    explicit iterator(Chan* ch) : ch_(ch), value_(ch->recv()) {}
    Chan* ch_ = nullptr;
    std::optional<T> value_;
    friend class Chan;
  };
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  template <class U>
  friend Chan<U> make_chan(std::size_t capacity);
  friend detail::ChanState<T>* detail::state_of<T>(const Chan<T>&) noexcept;
  friend detail::RemoteChan* detail::remote_of<T>(const Chan<T>&) noexcept;
  friend detail::ChanStats detail::stats_of<T>(const Chan<T>&) noexcept;
  friend Chan<T> detail::make_remote_chan<T>(
      std::shared_ptr<detail::RemoteChan>);
  friend Chan<T> detail::make_chan_at_lap<T>(std::size_t, uint32_t);

  explicit Chan(std::shared_ptr<detail::ChanState<T>> s)
      : state_(std::move(s)) {}
  explicit Chan(std::shared_ptr<detail::RemoteChan> r)
      : remote_(std::move(r)) {}

  // Remote paths: encode, call the backend, decode. Out of the local fast
  // path's way.
  ChanStatus remote_send(const T& value,
                         detail::RemoteChan::Deadline deadline) {
    if constexpr (kHasCodec<T>) {
      std::string bytes;
      Codec<T>::encode(value, bytes);
      return remote_->send(std::move(bytes), deadline);
    } else {
      // make_remote_chan requires a codec, so remote_ is never set here.
      (void)value;
      (void)deadline;
      throw Error(absl::StatusCode::kInternal,
                  "dchan: remote Chan without codec");
    }
  }
  // A send whose value is the callee's to consume (send(T value)): a
  // string's bytes are the encoding, so they move on to the backend
  // uncopied.
  ChanStatus remote_send_owned(T&& value,
                               detail::RemoteChan::Deadline deadline) {
    if constexpr (std::is_same_v<T, std::string>) {
      return remote_->send(std::move(value), deadline);
    } else {
      return remote_send(value, deadline);
    }
  }
  ChanStatus remote_recv(std::optional<T>& out,
                         detail::RemoteChan::Deadline deadline) {
    if constexpr (kHasCodec<T>) {
      std::string bytes;
      const ChanStatus st = remote_->recv(bytes, deadline);
      if constexpr (std::is_same_v<T, std::string>) {
        // The bytes are the value: moved, not decoded into a copy.
        if (st == ChanStatus::kOk) out.emplace(std::move(bytes));
        return st;
      }
      if (st == ChanStatus::kOk) {
        T value{};
        const absl::Status decoded = Codec<T>::decode(bytes, value);
        if (!decoded.ok()) {
          throw Error(decoded.code(), std::string(decoded.message()));
        }
        out.emplace(std::move(value));
      }
      return st;
    } else {
      (void)out;
      (void)deadline;
      throw Error(absl::StatusCode::kInternal,
                  "dchan: remote Chan without codec");
    }
  }

  ChanStatus try_send_ref(T& value) {
    detail::ChanState<T>* s = state_.get();
    if (s == nullptr) [[unlikely]] {
      return remote_ != nullptr
                 ? remote_send(value, detail::RemoteChan::kNonBlocking)
                 : ChanStatus::kWouldBlock;
    }
    if (s->cap_ != 0 &&
        s->try_send_fast(value) == detail::ChanState<T>::Fast::kDone) {
      return ChanStatus::kOk;
    }
    if (!s->may_be_ready(/*is_send=*/true)) return ChanStatus::kWouldBlock;
    detail::Fired to_fire;
    s->lock();
    const ChanStatus st = s->send_locked(value, &to_fire);
    s->unlock();
    detail::fire(to_fire);
    return st;
  }

  ChanStatus send_until_steady(T& value,
                               std::chrono::steady_clock::time_point deadline) {
    detail::ChanState<T>* s = state_.get();
    if (s == nullptr) [[unlikely]] {
      return remote_ != nullptr ? remote_send(value, deadline)
                                : sleep_until(deadline);
    }
    if (s->cap_ != 0 && s->send_fast_polling(value)) return ChanStatus::kOk;
    detail::Fired to_fire;
    s->lock();
    const ChanStatus st = s->send_locked(value, &to_fire);
    if (st != ChanStatus::kWouldBlock) {
      s->unlock();
      detail::fire(to_fire);
      return st;
    }
    const std::optional<bool> ok = park_locked(s, &value, true, deadline);
    if (!ok) return ChanStatus::kTimeout;
    return *ok ? ChanStatus::kOk : ChanStatus::kClosed;
  }

  RecvResult<T> recv_until_steady(
      std::chrono::steady_clock::time_point deadline) {
    RecvResult<T> r{ChanStatus::kWouldBlock, std::nullopt};
    detail::ChanState<T>* s = state_.get();
    if (s == nullptr) [[unlikely]] {
      r.status = remote_ != nullptr ? remote_recv(r.value, deadline)
                                    : sleep_until(deadline);
      return r;
    }
    if (s->cap_ != 0 && s->recv_fast_polling(r.value)) {
      r.status = ChanStatus::kOk;
      return r;
    }
    detail::Fired to_fire;
    s->lock();
    r.status = s->recv_locked(r.value, &to_fire);
    if (r.status != ChanStatus::kWouldBlock) {
      s->unlock();
      detail::fire(to_fire);
      return r;
    }
    const std::optional<bool> ok = park_locked(s, &r.value, false, deadline);
    if (!ok) {
      r.status = ChanStatus::kTimeout;
    } else {
      r.status = *ok ? ChanStatus::kOk : ChanStatus::kClosed;
    }
    return r;
  }

  static constexpr std::chrono::steady_clock::time_point kForever =
      std::chrono::steady_clock::time_point::max();

  // Blocks the caller on `s` (locked on entry; unlocked here) with a node
  // whose slot is `slot` (a send: the T to move from; a receive: the
  // std::optional<T> to move the value into), or in the channel's lone slot,
  // until a counterparty or close() completes it —
  // returning its ok (false: closed) — or `deadline` passes: then the node
  // is withdrawn and nullopt returned.
  static std::optional<bool> park_locked(
      detail::ChanState<T>* s, void* slot, bool is_send,
      std::chrono::steady_clock::time_point deadline) {
    // A received value is constructed in this frame (see WaitNode::slot);
    // a small one on the waiter's own cache line.
    struct Plain {
      detail::Waiter w;
      alignas(T) unsigned char landing[sizeof(T)];
    };
    std::conditional_t<detail::kLandsOnWaiterLine<T>, detail::LandingWaiter,
                       Plain>
        p;
    if constexpr (detail::kLandsOnWaiterLine<T>) {
      // An unbuffered channel's lone waiter (ChanCore::lone_). A send's
      // landing place holds a copy of its value or its address (see
      // ChanState::kLoneSendCopies).
      if (s->lone_free_locked(is_send)) {
        if (is_send) {
          detail::ChanState<T>::put_lone_send(p, static_cast<T*>(slot));
        }
        s->set_lone_locked(&p, is_send);
        s->unlock();
        return wait_parked(p, slot, is_send, deadline,
                           [&] { s->withdraw_lone(&p, /*is_select=*/false); });
      }
    }
    detail::WaitNode n;
    n.waiter = &p.w;
    n.slot = is_send ? slot : p.landing;
    n.is_send = is_send;
    s->enqueue_locked(&n);
    s->unlock();
    return wait_parked(p, slot, is_send, deadline, [&] { s->unlink(&n); });
  }

  // The rest of park_locked once `p` waits: until a counterparty or close()
  // completes it, or `deadline` passes and this thread wins the claim: then
  // `withdraw()` takes it out of the channel, and nullopt.
  template <class Parked, class Withdraw>
  static std::optional<bool> wait_parked(
      Parked& p, void* slot, bool is_send,
      std::chrono::steady_clock::time_point deadline, Withdraw withdraw) {
    if (!p.w.wait_until(deadline)) {
      if (p.w.try_claim()) {
        withdraw();
        return std::nullopt;
      }
      p.w.wait();  // claimed by a counterparty or close(): completes at once
    }
    if (!is_send && p.w.ok()) {
      detail::take_landed(p.landing, *static_cast<std::optional<T>*>(slot));
    }
    return p.w.ok();
  }

  static ChanStatus sleep_until(
      std::chrono::steady_clock::time_point deadline) {
    if (deadline == std::chrono::steady_clock::time_point::max()) {
      detail::block_forever();
    }
    std::this_thread::sleep_until(deadline);
    return ChanStatus::kTimeout;
  }

  std::shared_ptr<detail::ChanState<T>> state_;  // local channel
  std::shared_ptr<detail::RemoteChan> remote_;   // broker channel
};

// Makes a channel with room for `capacity` buffered values (0: unbuffered).
// The buffer is allocated up front, as in Go. Throws dchan::Error
// kInvalidArgument "makechan: size out of range" above 2^29 - 1 values
// (Go's message), std::bad_alloc if the buffer cannot be allocated.
template <class T>
Chan<T> make_chan(std::size_t capacity = 0) {
  return detail::make_chan_at_lap<T>(capacity, 0);
}

namespace detail {

// make_chan, with the buffer's positions starting `first_lap` laps on (tests
// run a channel across the positions' wrap-around this way).
template <class T>
Chan<T> make_chan_at_lap(std::size_t capacity, uint32_t first_lap) {
  if (capacity > ChanCore::kMaxCapacity) {
    throw Error(absl::StatusCode::kInvalidArgument,
                "makechan: size out of range");
  }
  // Its own allocation rather than std::allocate_shared's: a channel may
  // outlive its last handle while selects still pin it
  // (ChanCore::release_last_handle), so the handles' deleter decides when
  // it goes.
  CacheLineAllocator<ChanState<T>> alloc;
  ChanState<T>* s = alloc.allocate(1);
  try {
    ::new (static_cast<void*>(s)) ChanState<T>(capacity, first_lap);
  } catch (...) {
    alloc.deallocate(s, 1);
    throw;
  }
  return Chan<T>(std::shared_ptr<ChanState<T>>(
      s, [](ChanState<T>* p) { p->release_last_handle(); }));
}

template <class T>
ChanState<T>* state_of(const Chan<T>& ch) noexcept {
  return ch.state_.get();
}

template <class T>
RemoteChan* remote_of(const Chan<T>& ch) noexcept {
  return ch.remote_.get();
}

// A snapshot of a local channel's state, for inspection (the broker's
// ListObjects). Waiter counts may include nodes of selects that already fired
// elsewhere and have not withdrawn them yet.
struct ChanStats {
  std::size_t len = 0;
  std::size_t cap = 0;
  bool closed = false;
  std::size_t blocked_senders = 0;
  std::size_t blocked_receivers = 0;
  // Readiness watchers (the broker's WatchRequest).
  std::size_t watchers = 0;
};

template <class T>
ChanStats stats_of(const Chan<T>& ch) noexcept {
  ChanStats st;
  ChanState<T>* s = ch.state_.get();
  if (s == nullptr) return st;
  s->lock();
  st.len = s->cap_ != 0 ? s->owned_len() : 0;
  st.cap = s->cap_;
  st.closed = s->closed_;
  st.blocked_senders = s->live_count(/*senders=*/true);
  st.blocked_receivers = s->live_count(/*senders=*/false);
  st.watchers = s->watchq_.count();
  s->unlock();
  return st;
}

// Used by the client library to hand out broker-backed channels.
template <class T>
Chan<T> make_remote_chan(std::shared_ptr<RemoteChan> remote) {
  static_assert(kHasCodec<T>,
                "a broker channel's element type needs a dchan::Codec<T>");
  return Chan<T>(std::move(remote));
}

template <class T>
class AsyncRecv final : public AsyncOp {
 public:
  explicit AsyncRecv(absl::AnyInvocable<void(std::optional<T>) &&> done)
      : done_(std::move(done)) {
    node_.waiter = this;
    node_.slot = landing_;
  }
  void withdraw() noexcept override {
    if (node_.chan != nullptr) node_.chan->unlink(&node_);
  }
  void deliver() noexcept override {
    std::optional<T> value;
    if (ok()) take_landed(landing_, value);
    std::move(done_)(std::move(value));
  }

  WaitNode node_;
  alignas(T) unsigned char landing_[sizeof(T)];  // see WaitNode::slot
  absl::AnyInvocable<void(std::optional<T>) &&> done_;
};

template <class T>
class AsyncSend final : public AsyncOp {
 public:
  AsyncSend(T value, absl::AnyInvocable<void(bool) &&> done)
      : value_(std::move(value)), done_(std::move(done)) {
    node_.waiter = this;
    node_.slot = &value_;
    node_.is_send = true;
  }
  void withdraw() noexcept override {
    if (node_.chan != nullptr) node_.chan->unlink(&node_);
  }
  void deliver() noexcept override { std::move(done_)(ok()); }

  WaitNode node_;
  T value_;
  absl::AnyInvocable<void(bool) &&> done_;
};

}  // namespace detail

namespace detail {

class AsyncWatch final : public AsyncOp {
 public:
  AsyncWatch(bool for_send, absl::AnyInvocable<void() &&> done)
      : done_(std::move(done)) {
    node_.waiter = this;
    node_.is_send = for_send;
    node_.is_watch = true;
  }
  void withdraw() noexcept override {
    if (node_.chan != nullptr) node_.chan->unlink(&node_);
  }
  void deliver() noexcept override { std::move(done_)(); }

  WaitNode node_;
  absl::AnyInvocable<void() &&> done_;
};

}  // namespace detail

template <class T>
PendingOp Chan<T>::ready_async(bool for_send,
                               absl::AnyInvocable<void() &&> done) {
  if (remote_ != nullptr) {
    throw Error(absl::StatusCode::kFailedPrecondition,
                "dchan: ready_async needs a local channel");
  }
  auto op = std::make_shared<detail::AsyncWatch>(for_send, std::move(done));
  detail::ChanState<T>* s = state_.get();
  if (s == nullptr) return PendingOp(std::move(op));  // nil: never ready
  op->self_ = op;
  op->chan_keep_ = state_;
  s->lock();
  s->add_watch_locked(&op->node_);  // fires at unlock if ready now
  s->unlock();
  return PendingOp(std::move(op));
}

template <class T>
PendingOp Chan<T>::recv_async(
    absl::AnyInvocable<void(std::optional<T>) &&> done) {
  if (remote_ != nullptr) {
    throw Error(absl::StatusCode::kFailedPrecondition,
                "dchan: recv_async needs a local channel");
  }
  auto op = std::make_shared<detail::AsyncRecv<T>>(std::move(done));
  detail::ChanState<T>* s = state_.get();
  if (s == nullptr) {
    // Nil: pending forever, but cancellable. It is queued nowhere, so it
    // needs neither a node link nor a self reference.
    return PendingOp(std::move(op));
  }
  detail::Fired to_fire;
  std::optional<T> value;
  s->lock();
  const ChanStatus st = s->recv_locked(value, &to_fire);
  if (st != ChanStatus::kWouldBlock) {
    s->unlock();
    detail::fire(to_fire);
    op->try_claim();
    op->mark_done_by_owner();
    std::move(op->done_)(std::move(value));
    return PendingOp();
  }
  op->self_ = op;
  op->chan_keep_ = state_;
  s->enqueue_locked(&op->node_);
  s->unlock();
  return PendingOp(std::move(op));
}

template <class T>
PendingOp Chan<T>::send_async(T value, absl::AnyInvocable<void(bool) &&> done) {
  if (remote_ != nullptr) {
    throw Error(absl::StatusCode::kFailedPrecondition,
                "dchan: send_async needs a local channel");
  }
  auto op =
      std::make_shared<detail::AsyncSend<T>>(std::move(value), std::move(done));
  detail::ChanState<T>* s = state_.get();
  if (s == nullptr) return PendingOp(std::move(op));
  detail::Fired to_fire;
  s->lock();
  const ChanStatus st = s->send_locked(op->value_, &to_fire);
  if (st != ChanStatus::kWouldBlock) {
    s->unlock();
    detail::fire(to_fire);
    op->try_claim();
    op->mark_done_by_owner();
    std::move(op->done_)(st == ChanStatus::kOk);
    return PendingOp();
  }
  op->self_ = op;
  op->chan_keep_ = state_;
  s->enqueue_locked(&op->node_);
  s->unlock();
  return PendingOp(std::move(op));
}

}  // namespace dchan

#endif  // DCHAN_CHAN_H_
