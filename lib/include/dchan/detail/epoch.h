// dchan/detail/epoch.h — epoch-based reclamation, for values that readers
// copy without locks (AtomicValue<T> for a T wider than an atomic word).
//
// A writer publishes a new object by exchanging an atomic pointer and
// *retires* the old one: readers that loaded the old pointer just before may
// still be copying it, so it may only be deleted once every such reader is
// done. Readers mark where they may hold a published pointer with an
// EpochReadSection; a writer asks epoch_reclaim_bound() which of the objects
// it retired no reader can hold any more.
//
// How. A process-wide epoch counter only grows. Each thread that reads owns
// a record, one cache line of its own, which says "quiescent" or "reading
// since epoch e". Entering a read section announces the current epoch in the
// thread's record (a sequentially consistent store to a line no other
// thread writes: readers share nothing and scale with their number);
// leaving it writes "quiescent". A writer tags each object it retires with
// the epoch current after the exchange. The epoch advances from e to e + 1
// only when every thread reading announced e, so once it reached tag + 2
// every reader that may have loaded the retired pointer has left its read
// section (the classic rule of Fraser's epoch-based reclamation). And if
// a writer's scan finds no thread reading at all, everything it retired
// before the scan is unreachable at once.
//
// Costs. A read section is two stores to the thread's own line (the first
// a full fence). A reclaim scan reads one line per thread that has a record
// (threads that ever read and are still alive; an exiting thread's record is
// reused by the next one). Nobody waits for anybody: a reader preempted
// inside its section only delays the freeing of what writers retire
// meanwhile.
//
// Rules. Read sections nest (only the outermost announces). They must not
// be entered from a signal handler. A thread's first section allocates its
// record (may throw std::bad_alloc, or std::system_error when the process
// is out of pthread keys).
#ifndef DCHAN_DETAIL_EPOCH_H_
#define DCHAN_DETAIL_EPOCH_H_

#include <atomic>
#include <cstdint>

namespace dchan::detail {

// One thread's announcement, on a cache line of its own.
struct alignas(64) EpochRecord {
  // 0: quiescent; (e << 1) | 1: in a read section entered at epoch e.
  std::atomic<uint64_t> word{0};
  std::atomic<bool> in_use{true};  // owned by a live thread
  EpochRecord* next = nullptr;     // the registry's list; never changes
};

// The calling thread's record (null until its first read section) and how
// deep in read sections it is.
struct ThreadEpoch {
  EpochRecord* record = nullptr;
  uint32_t depth = 0;
};
inline thread_local ThreadEpoch t_epoch;

// The process-wide epoch (defined in epoch.cc).
extern std::atomic<uint64_t> g_epoch;

// Gives the calling thread a record: a free one from the registry, or a new
// one. Released when the thread exits. Throws std::bad_alloc and
// std::system_error (see record_key in epoch.cc).
EpochRecord* acquire_epoch_record();

// Marks a read section: while one is open on a thread, nothing a writer
// retires after the thread loaded it is freed.
class EpochReadSection {
 public:
  EpochReadSection() {
    ThreadEpoch& t = t_epoch;
    if (t.depth == 0) {
      EpochRecord* r = t.record;
      if (r == nullptr) [[unlikely]] {
        r = acquire_epoch_record();
      }
      // The announcement must be visible before this thread loads any
      // published pointer: both are sequentially consistent (and so is the
      // epoch's load, which keeps it no newer than the epoch then).
      r->word.store((g_epoch.load(std::memory_order_seq_cst) << 1) | 1,
                    std::memory_order_seq_cst);
    }
    ++t.depth;
  }
  ~EpochReadSection() {
    ThreadEpoch& t = t_epoch;
    if (--t.depth == 0) {
      // Release: the section's reads happen before a writer that sees this
      // frees what they read.
      t.record->word.store(0, std::memory_order_release);
    }
  }
  EpochReadSection(const EpochReadSection&) = delete;
  EpochReadSection& operator=(const EpochReadSection&) = delete;
};

// The tag for an object retired now: call after unpublishing it.
inline uint64_t epoch_retire_tag() noexcept {
  return g_epoch.load(std::memory_order_seq_cst);
}

// Scans the threads' records (advancing the epoch when every reading thread
// announced the current one) and returns a bound: every object retired
// before this call with a tag below the bound may be freed. UINT64_MAX when
// no thread was reading.
uint64_t epoch_reclaim_bound() noexcept;

// Test hook: records in the registry (used or free).
int epoch_record_count() noexcept;

}  // namespace dchan::detail

#endif  // DCHAN_DETAIL_EPOCH_H_
