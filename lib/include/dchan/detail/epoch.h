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
// thread's record (a store to a line no other thread writes: readers share
// nothing and scale with their number); leaving it writes "quiescent". A
// writer tags each object it retires with the epoch current after the
// exchange. The epoch advances from e to e + 1 only when every thread
// reading announced e, so once it reached tag + 2 every reader that may
// have loaded the retired pointer has left its read section (the classic
// rule of Fraser's epoch-based reclamation). And if a writer's scan finds no
// thread reading at all, everything it retired before the scan is
// unreachable at once.
//
// Asymmetric fences. The announcement must be visible to a writer's scan
// before the reader loads a published pointer: a store then a load, which
// x86 reorders unless a full fence (a locked instruction, ~10 ns) sits
// between them. Readers are many and writers few, so the writers pay
// instead: a scan starts with membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED),
// which makes every thread of the process that is running execute a full
// fence (a thread not running passed one when it was switched out), and a
// reader's section has only a compiler barrier. Either a reader's fence
// falls before its pointer load, and then the load sees what the writer
// published before the scan, or after its announcement, and then the scan
// sees that. Nor can a reader announce an epoch newer than the objects it
// may hold allow: its loads of the epoch and of the pointer are
// sequentially consistent, and a scan loads the epoch before its
// membarrier. The same holds for a scan by another writer (epochs are
// shared): one that advances the epoch past an object's tag loaded an
// epoch written after the tag was read, so after the object was
// unpublished, and its membarrier comes later still.
//
// A scan costs a system call: ~0.25 us here, ~10 us when other threads of
// the process run on the other CPU of this 2-vCPU VM, which then takes an
// interrupt. So writers scan in batches (see AtomicValueState). The
// process registers for membarrier while it starts: registering while
// several threads run waits ~20 ms for an RCU grace period.
//
// Without membarrier. Where it is missing when the process starts
// (kernels before 4.14, a seccomp filter that denies it), readers announce
// with a sequentially consistent store (the locked instruction) and
// writers need no fence of their own (epoch_readers_fence()). Should it
// fail later (a filter installed after the start), writers fall back to
// changing a page's protection, which interrupts the same CPUs to flush
// their TLBs (x86-64); failing that too, scans free nothing and the first
// one says so on stderr.
//
// Costs. A read section is four plain stores: two to the thread's own
// record line, two to a thread-local flag. A reclaim scan is a membarrier
// call and reads one line per thread that has a record (threads that ever
// read and are still alive; an exiting thread's record is reused by the
// next one). Nobody waits for anybody: a reader preempted inside its
// section only delays the freeing of what writers retire meanwhile.
//
// Rules. Read sections nest (only the outermost announces) and close in
// the reverse order of opening (they are scoped objects). They must not
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

// The calling thread's record (null until its first read section) and
// whether the thread is inside a read section.
struct ThreadEpoch {
  EpochRecord* record = nullptr;
  bool reading = false;
};
inline thread_local ThreadEpoch t_epoch;

// The process-wide epoch (defined in epoch.cc).
extern std::atomic<uint64_t> g_epoch;

// Whether readers fence themselves: set when membarrier is unavailable,
// before the first record is handed out, and never changed after.
extern std::atomic<bool> g_readers_fence;

// Gives the calling thread a record: a free one from the registry, or a new
// one. Released when the thread exits. Decides how readers fence first,
// if the process has not yet (see "Without membarrier"). Throws
// std::bad_alloc and std::system_error (see record_key in epoch.cc).
EpochRecord* acquire_epoch_record();

// Marks a read section: while one is open on a thread, nothing a writer
// retires after the thread loaded it is freed. Load what it protects with
// memory_order_seq_cst (free on x86 and ARMv8): the argument above needs
// the epoch's load and the pointer's to be ordered in the one total order.
class EpochReadSection {
 public:
  EpochReadSection() {
    ThreadEpoch& t = t_epoch;
    // Only the outermost section announces and leaves. No store here
    // depends on a load of what the last section wrote: the load of
    // t.reading only feeds a predicted branch (a depth counter, loaded,
    // incremented and stored back, chained each load to the last: ~3 ns).
    outer_ = !t.reading;
    if (outer_) {
      EpochRecord* r = t.record;
      if (r == nullptr) [[unlikely]] {
        r = acquire_epoch_record();
      }
      const uint64_t announcement =
          (g_epoch.load(std::memory_order_seq_cst) << 1) | 1;
      if (g_readers_fence.load(std::memory_order_relaxed)) [[unlikely]] {
        // Ordered before the loads that follow by the total order of
        // sequentially consistent operations, which the writers' are too.
        r->word.store(announcement, std::memory_order_seq_cst);
      } else {
        // Release, so that a writer that reads this announcement also sees
        // the reads of the thread's earlier sections done (and a
        // ThreadSanitizer build sees why freeing then is safe). The
        // compiler barrier keeps the store before the loads that follow;
        // the writers' membarrier orders them on the CPU.
        r->word.store(announcement, std::memory_order_release);
        std::atomic_signal_fence(std::memory_order_seq_cst);
      }
      t.reading = true;
    }
  }
  ~EpochReadSection() {
    if (outer_) {
      ThreadEpoch& t = t_epoch;
      t.reading = false;
      // Release: the section's reads happen before a writer that sees this
      // frees what they read.
      t.record->word.store(0, std::memory_order_release);
    }
  }
  EpochReadSection(const EpochReadSection&) = delete;
  EpochReadSection& operator=(const EpochReadSection&) = delete;

 private:
  bool outer_;
};

// The tag for an object retired now: call after unpublishing it.
inline uint64_t epoch_retire_tag() noexcept {
  return g_epoch.load(std::memory_order_seq_cst);
}

// Scans the threads' records (advancing the epoch when every reading thread
// announced the current one) and returns a bound: every object retired
// before this call with a tag below the bound may be freed. UINT64_MAX when
// no thread was reading; 0 (nothing) if no fence could be made (see
// "Without membarrier"). Makes a system call: see "Asymmetric fences".
uint64_t epoch_reclaim_bound() noexcept;

// A bound as epoch_reclaim_bound()'s, from the epoch alone: what other
// writers' scans already allow (objects whose tag the epoch passed by 2).
// No system call: one load of a line readers load too.
inline uint64_t epoch_free_bound() noexcept {
  const uint64_t epoch = g_epoch.load(std::memory_order_seq_cst);
  return epoch == 0 ? 0 : epoch - 1;
}

// Whether no scan began in the process for kEpochScanInterval (by the
// coarse clock: at least a tick, 1-10 ms). Writers that retired something
// since their last scan scan then, so that values stored seldom go soon.
inline constexpr int64_t kEpochScanInterval = 1'000'000;  // ns
bool epoch_scan_due() noexcept;

// Whether readers fence themselves (membarrier was unavailable when the
// process started). Decides first if the process has not yet.
bool epoch_readers_fence();

// CLOCK_MONOTONIC_COARSE in nanoseconds, for writers pacing their scans: a
// few ns to read, advancing once per kernel tick (1-10 ms).
int64_t coarse_monotonic_ns() noexcept;

// Test hook: records in the registry (used or free).
int epoch_record_count() noexcept;

}  // namespace dchan::detail

#endif  // DCHAN_DETAIL_EPOCH_H_
