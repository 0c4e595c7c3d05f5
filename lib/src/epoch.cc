// Epoch-based reclamation: the record registry and the writers' scan (see
// dchan/detail/epoch.h).
#include "dchan/detail/epoch.h"

#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>
#include <system_error>

namespace dchan::detail {

std::atomic<uint64_t> g_epoch{0};
std::atomic<bool> g_readers_fence{false};

namespace {

// coarse_monotonic_ns() when the last scan began; the first is due at once.
std::atomic<int64_t> g_last_scan_ns{INT64_MIN / 2};

int membarrier(int cmd) {
  return static_cast<int>(syscall(__NR_membarrier, cmd, 0u, 0));
}

// Registers the process for expedited private membarriers, or sets
// g_readers_fence when that is impossible; true if readers fence. Called
// once, before the first record is handed out.
bool decide_readers_fence() {
  const int saved_errno = errno;
  const int supported = membarrier(MEMBARRIER_CMD_QUERY);
  const bool asymmetric =
      supported >= 0 && (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
      membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
  g_readers_fence.store(!asymmetric, std::memory_order_relaxed);
  errno = saved_errno;
  return !asymmetric;
}

bool readers_fence() {
  static const bool fence = decide_readers_fence();
  return fence;
}

// Decided while the process starts, usually before it has a second thread:
// registering a process that runs several threads waits for an RCU grace
// period (~20 ms here), which a first load() should not. A load() during
// another translation unit's static initialisation decides earlier.
[[maybe_unused]] const bool g_decided_at_start = readers_fence();

// The writers' fence where membarrier fails after the process registered
// (a seccomp filter installed later): changing a page's protection makes
// the kernel flush the TLB of every CPU running a thread of the process.
// On x86-64 that is an interrupt, which drains the CPU's store buffer as
// membarrier's does (a CPU not running one of the threads passed a full
// barrier when it switched away). Elsewhere TLBs may be flushed without
// interrupting the CPU, so there is no fallback.
bool shootdown_fence() noexcept {
#if defined(__x86_64__)
  static void* const page = [] {
    void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }();
  if (page == nullptr) return false;
  // One writer at a time: another's PROT_NONE must not land between this
  // one's PROT_READ | PROT_WRITE and its write.
  static std::atomic_flag busy = ATOMIC_FLAG_INIT;
  while (busy.test_and_set(std::memory_order_acquire)) sched_yield();
  bool done = mprotect(page, 4096, PROT_READ | PROT_WRITE) == 0;
  if (done) {
    // Present and dirty, so that taking the access away must flush.
    static_cast<std::atomic<int>*>(page)->fetch_add(1);
    done = mprotect(page, 4096, PROT_NONE) == 0;
  }
  busy.clear(std::memory_order_release);
  return done;
#else
  return false;
#endif
}

// The writers' side of a scan: after it, every thread's announcement made
// before its next load of a published pointer is visible (see
// "Asymmetric fences" in the header). False if it could not be done; then
// the scan frees nothing, and the first failure says so on stderr.
bool heavy_fence() noexcept {
  // Readers that fence store their announcement sequentially consistent,
  // and a scan's loads are too: their total order does the work.
  if (readers_fence()) return true;
  const int saved_errno = errno;
  bool done = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0;
  // Registration is inherited by a forked child and holds until exec; were
  // it lost anyway (EPERM), register again.
  if (!done && errno == EPERM) {
    done = membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0 &&
           membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0;
  }
  if (!done) done = shootdown_fence();
  if (!done) {
    static std::atomic<bool> told{false};
    if (!told.exchange(true, std::memory_order_relaxed)) {
      std::fprintf(stderr,
                   "dchan: membarrier failed after it had worked (%s): "
                   "AtomicValue can no longer free the values it replaces\n",
                   std::strerror(errno));
    }
  }
  errno = saved_errno;
  return done;
}

// Every record ever made, newest first. Records are never freed: a thread
// that exits leaves its record for the next thread that reads.
std::atomic<EpochRecord*> g_records{nullptr};

// Returns the exiting thread's record to the registry. Runs after the
// thread's C++ thread_local destructors; a read section one of them (or a
// later key destructor) opens acquires a record again, which the next
// round of key destructors releases (a record acquired after the last of
// PTHREAD_DESTRUCTOR_ITERATIONS rounds stays in use: quiescent, harmless).
void release_record(void* p) {
  auto* r = static_cast<EpochRecord*>(p);
  r->word.store(0, std::memory_order_release);
  t_epoch.record = nullptr;
  r->in_use.store(false, std::memory_order_release);
}

// In a forked child only the forking thread lives on: the others' records
// would stay in use, and one caught inside a read section would stop the
// epoch for good.
void release_other_threads_records() {
  for (EpochRecord* r = g_records.load(std::memory_order_acquire); r != nullptr;
       r = r->next) {
    if (r == t_epoch.record) continue;
    r->word.store(0, std::memory_order_relaxed);
    r->in_use.store(false, std::memory_order_release);
  }
}

// The key whose destructor releases a thread's record. Throws
// std::system_error when the process is out of keys (PTHREAD_KEYS_MAX) or
// memory; the next first read section tries again.
pthread_key_t record_key() {
  static const pthread_key_t key = [] {
    pthread_key_t k;
    if (const int err = pthread_key_create(&k, release_record); err != 0) {
      throw std::system_error(err, std::generic_category(),
                              "dchan: pthread_key_create");
    }
    if (const int err =
            pthread_atfork(nullptr, nullptr, release_other_threads_records);
        err != 0) {
      pthread_key_delete(k);
      throw std::system_error(err, std::generic_category(),
                              "dchan: pthread_atfork");
    }
    return k;
  }();
  return key;
}

}  // namespace

EpochRecord* acquire_epoch_record() {
  const pthread_key_t key = record_key();
  readers_fence();
  EpochRecord* r = nullptr;
  for (EpochRecord* c = g_records.load(std::memory_order_acquire); c != nullptr;
       c = c->next) {
    bool free = false;
    if (!c->in_use.load(std::memory_order_relaxed)) {
      if (c->in_use.compare_exchange_strong(free, true,
                                            std::memory_order_acquire)) {
        r = c;
        break;
      }
    }
  }
  if (r == nullptr) {
    r = new EpochRecord;  // in use
    EpochRecord* head = g_records.load(std::memory_order_relaxed);
    // Sequentially consistent, as the scan's load of the head: a scan that
    // misses this record comes before it in that order, and so before the
    // record's first announcement.
    do {
      r->next = head;
    } while (!g_records.compare_exchange_weak(
        head, r, std::memory_order_seq_cst, std::memory_order_relaxed));
  }
  if (pthread_setspecific(key, r) != 0) {
    r->in_use.store(false, std::memory_order_release);
    throw std::bad_alloc();
  }
  t_epoch.record = r;
  return r;
}

uint64_t epoch_reclaim_bound() noexcept {
  // The epoch first: an object retired with tag t may be freed only after
  // a scan that read the epoch past t, and that scan's fence must come
  // after the object was unpublished.
  uint64_t epoch = g_epoch.load(std::memory_order_seq_cst);
  g_last_scan_ns.store(coarse_monotonic_ns(), std::memory_order_relaxed);
  if (!heavy_fence()) return 0;
  bool reading = false;
  bool all_current = true;
  for (EpochRecord* r = g_records.load(std::memory_order_seq_cst); r != nullptr;
       r = r->next) {
    const uint64_t word = r->word.load(std::memory_order_seq_cst);
    if ((word & 1) == 0) continue;
    reading = true;
    if ((word >> 1) != epoch) all_current = false;
  }
  // Advanced with no thread reading too, for writers that free by the
  // epoch alone (epoch_free_bound).
  if (all_current) {
    // On failure `epoch` becomes the epoch another writer advanced to.
    if (g_epoch.compare_exchange_strong(epoch, epoch + 1,
                                        std::memory_order_seq_cst)) {
      ++epoch;
    }
  }
  if (!reading) return UINT64_MAX;
  // Retired with tag t: free once the epoch reached t + 2.
  return epoch == 0 ? 0 : epoch - 1;
}

bool epoch_scan_due() noexcept {
  return coarse_monotonic_ns() -
             g_last_scan_ns.load(std::memory_order_relaxed) >=
         kEpochScanInterval;
}

bool epoch_readers_fence() { return readers_fence(); }

int64_t coarse_monotonic_ns() noexcept {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
  return int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}

int epoch_record_count() noexcept {
  int n = 0;
  for (EpochRecord* r = g_records.load(std::memory_order_acquire); r != nullptr;
       r = r->next) {
    ++n;
  }
  return n;
}

}  // namespace dchan::detail
