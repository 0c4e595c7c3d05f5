#include "dchan/detail/epoch.h"

#include <linux/filter.h>
#include <linux/membarrier.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <thread>
#include <vector>

#include "dchan/detail/futex.h"
#include "gtest/gtest.h"

namespace dchan::detail {
namespace {

using namespace std::chrono_literals;

// A thread that opens a read section (nested `depth` deep, then all but the
// outermost closed again) and holds it until released.
class Reader {
 public:
  explicit Reader(int depth = 1)
      : thread_([this, depth] {
          EpochReadSection outer;
          for (int i = 1; i < depth; ++i) EpochReadSection inner;
          inside_.store(true);
          while (!release_.load()) std::this_thread::yield();
        }) {
    while (!inside_.load()) std::this_thread::yield();
  }
  ~Reader() { leave(); }
  void leave() {
    release_.store(true);
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> inside_{false};
  std::atomic<bool> release_{false};
  std::thread thread_;
};

TEST(Epoch, WithNoThreadReadingEverythingRetiredIsFree) {
  const uint64_t tag = epoch_retire_tag();
  EXPECT_EQ(epoch_reclaim_bound(), UINT64_MAX);
  EXPECT_LT(tag, epoch_reclaim_bound());
}

// A reader that entered before an object was retired may hold it: however
// often writers scan, the bound stays at or below the object's tag, and the
// epoch advances at most once past the reader's.
TEST(Epoch, AReaderInsideItsSectionKeepsWhatWasRetiredAfterItEntered) {
  Reader reader;
  const uint64_t tag = epoch_retire_tag();
  for (int i = 0; i < 1000; ++i) {
    ASSERT_LE(epoch_reclaim_bound(), tag) << "scan " << i;
  }
  EXPECT_LE(epoch_retire_tag(), tag + 1);
  reader.leave();
  EXPECT_LT(tag, epoch_reclaim_bound());
}

// Only the outermost section announces and leaves: closing an inner one
// must not end the outer one's protection.
TEST(Epoch, ClosingANestedSectionKeepsTheOuterOneOpen) {
  Reader reader(/*depth=*/3);
  const uint64_t tag = epoch_retire_tag();
  for (int i = 0; i < 100; ++i) ASSERT_LE(epoch_reclaim_bound(), tag);
  reader.leave();
  EXPECT_LT(tag, epoch_reclaim_bound());
}

// A thread's record goes back to the registry when the thread exits, for
// the next thread to reuse: threads that read one after another need one.
TEST(Epoch, ExitedThreadsLeaveTheirRecordsForTheNext) {
  { Reader warm_up; }
  const int before = epoch_record_count();
  for (int i = 0; i < 50; ++i) {
    std::thread([] { EpochReadSection reading; }).join();
  }
  EXPECT_EQ(epoch_record_count(), before);
}

// Each of many concurrent readers gets a record of its own.
TEST(Epoch, ConcurrentReadersHaveRecordsOfTheirOwn) {
  std::vector<Reader*> readers;
  for (int i = 0; i < 8; ++i) readers.push_back(new Reader);
  const uint64_t tag = epoch_retire_tag();
  readers[3]->leave();
  for (int i = 0; i < 100; ++i) ASSERT_LE(epoch_reclaim_bound(), tag);
  EXPECT_GE(epoch_record_count(), 8);
  for (Reader* r : readers) delete r;
  EXPECT_LT(tag, epoch_reclaim_bound());
}

// In a forked child only the forking thread lives on: a record another
// thread held open in the parent must not stop reclamation there.
TEST(Epoch, AForkedChildForgetsTheParentsOtherReaders) {
  Reader reader;
  ASSERT_NE(epoch_reclaim_bound(), UINT64_MAX);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(epoch_reclaim_bound() == UINT64_MAX ? 0 : 1);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child still saw a reader";
}

// The reason for the writers' fence (membarrier, see "Asymmetric fences"):
// a reader's announcement may still sit in its CPU's store buffer while it
// loads the published pointer and reads the object. A writer that swapped
// the pointer and then scanned must see that reader. The reader here makes
// the window wide: before announcing it stores to lines the writer keeps
// taking away, so its announcement waits behind those stores while its
// loads run ahead. The writer marks what its scans free as dead and
// republishes it later; a reader must never see a dead object. Without the
// fence, readers saw 252-4,640 dead objects per 1 s run here (x86), and
// none in other runs on the same VM in another mode: the lock-step test
// below is the steadier check. Bounded in rounds and time.
TEST(Epoch, AScanSeesEveryReaderThatMayHoldWhatItFrees) {
  struct alignas(64) Object {
    std::atomic<bool> alive{true};
  };
  struct alignas(64) Line {
    std::atomic<uint64_t> word{0};
  };
  constexpr int kObjects = 64;
  constexpr int kLines = 16;
  std::vector<Object> objects(kObjects);
  std::vector<Line> lines(kLines);
  std::atomic<Object*> published{&objects[0]};
  std::atomic<bool> stop{false};
  int64_t reads = 0;
  int64_t dead_seen = 0;
  std::thread reader([&] {
    for (int64_t n = 0; !stop.load(std::memory_order_relaxed); ++n) {
      for (Line& l : lines) l.word.store(n, std::memory_order_relaxed);
      EpochReadSection reading;
      const Object* o = published.load(std::memory_order_seq_cst);
      if (!o->alive.load(std::memory_order_relaxed)) ++dead_seen;
      ++reads;
    }
  });
  struct Retired {
    Object* object;
    uint64_t tag;
  };
  std::vector<Retired> retired;
  std::vector<Object*> free_objects;
  for (int i = 1; i < kObjects; ++i) free_objects.push_back(&objects[i]);
  const auto deadline = std::chrono::steady_clock::now() + 1s;
  for (int round = 0; round < 2'000'000; ++round) {
    if (round % 256 == 0 && std::chrono::steady_clock::now() > deadline) {
      break;
    }
    for (Line& l : lines) l.word.fetch_add(1, std::memory_order_relaxed);
    if (!free_objects.empty()) {
      Object* fresh = free_objects.back();
      free_objects.pop_back();
      fresh->alive.store(true, std::memory_order_relaxed);
      Object* old = published.exchange(fresh, std::memory_order_seq_cst);
      retired.push_back({old, epoch_retire_tag()});
    }
    const uint64_t bound = epoch_reclaim_bound();
    size_t n = 0;
    while (n < retired.size() && retired[n].tag < bound) {
      retired[n].object->alive.store(false, std::memory_order_relaxed);
      free_objects.push_back(retired[n].object);
      ++n;
    }
    retired.erase(retired.begin(), retired.begin() + n);
  }
  stop = true;
  reader.join();
  EXPECT_GT(reads, 0);
  EXPECT_EQ(dead_seen, 0) << "of " << reads << " reads, " << dead_seen
                          << " saw an object a scan had freed";
}

// The writers' fence checked directly, in lock step: each round a reader
// enters its section (after stores to lines the writer keeps taking away,
// which hold its announcement in the store buffer), loads the pointer and
// stays inside until the writer, which meanwhile swapped the pointer and
// scanned, is done. A violation: the reader loaded the old pointer, and
// the scan's bound would free it. Returns the violations in `rounds`
// rounds or `limit` time, whichever ends first. Without the membarrier,
// AScanNeverFreesWhatAReaderInsideLoaded counted 6,185-7,472 violations
// per 1 s run here (x86; docs/BENCHMARKS.md, "Session 16").
int64_t count_held_but_freed(int rounds, std::chrono::milliseconds limit) {
  struct alignas(64) Line {
    std::atomic<int64_t> word{0};
  };
  std::vector<Line> lines(16);
  alignas(64) std::atomic<int> go{0};
  alignas(64) std::atomic<int> scanned{0};
  alignas(64) std::atomic<int> done{0};
  alignas(64) std::atomic<int64_t> published{0};
  std::atomic<int> last{rounds};
  int64_t seen = 0;  // written by the reader before `done`
  auto wait_for = [](const std::atomic<int>& a, int value) {
    for (int spins = 0; a.load(std::memory_order_acquire) != value; ++spins) {
      if (spins % 1024 == 1023) std::this_thread::yield();
      spin_pause();
    }
  };
  std::thread reader([&] {
    for (int i = 1; i <= last.load(std::memory_order_relaxed); ++i) {
      wait_for(go, i);
      if (i > last.load(std::memory_order_relaxed)) break;
      for (Line& l : lines) l.word.store(i, std::memory_order_relaxed);
      {
        EpochReadSection reading;
        seen = published.load(std::memory_order_seq_cst);
        wait_for(scanned, i);
      }
      done.store(i, std::memory_order_release);
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int64_t violations = 0;
  for (int i = 1; i <= rounds; ++i) {
    if (i % 256 == 0 && std::chrono::steady_clock::now() > deadline) {
      last.store(i - 1, std::memory_order_relaxed);
      go.store(i, std::memory_order_release);  // lets the reader see `last`
      break;
    }
    for (Line& l : lines) l.word.fetch_add(1, std::memory_order_relaxed);
    go.store(i, std::memory_order_release);
    for (int d = (i * 7) % 200; d > 0; --d) spin_pause();  // vary the race
    const int64_t old = published.exchange(i, std::memory_order_seq_cst);
    const uint64_t tag = epoch_retire_tag();
    const uint64_t bound = epoch_reclaim_bound();
    scanned.store(i, std::memory_order_release);
    wait_for(done, i);
    if (seen == old && tag < bound) ++violations;
  }
  reader.join();
  return violations;
}

TEST(Epoch, AScanNeverFreesWhatAReaderInsideLoaded) {
  EXPECT_EQ(count_held_but_freed(1'000'000, 1s), 0);
}

// Set in the child of WithoutMembarrierReadersFenceThemselves, which runs
// this binary's other tests where membarrier fails.
constexpr char kNoMembarrierEnv[] = "DCHAN_EPOCH_TEST_NO_MEMBARRIER";

// Exit codes of the forked children below.
constexpr int kNoSeccomp = 3;
constexpr int kNoExec = 4;

// Installs a seccomp filter on the calling process that fails membarrier
// with ENOSYS (as a container's filter may). The system call's number is
// checked without the architecture: only these tests' children call it.
bool deny_membarrier() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_membarrier, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(std::size(filter)), filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

// Readers fence themselves only where the writers cannot fence for them.
TEST(Epoch, ReadersFenceOnlyWithoutMembarrier) {
  if (getenv(kNoMembarrierEnv) != nullptr) {
    EXPECT_TRUE(epoch_readers_fence());
    return;
  }
  const long supported = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (supported < 0 || (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) {
    GTEST_SKIP() << "no expedited private membarrier on this kernel";
  }
  EXPECT_FALSE(epoch_readers_fence());
}

// Where a seccomp filter denies membarrier (as a container's may), readers
// fence and every test here still passes: the child runs them all under a
// filter that fails membarrier with ENOSYS.
TEST(Epoch, WithoutMembarrierReadersFenceThemselves) {
  if (getenv(kNoMembarrierEnv) != nullptr) return;  // the child
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (!deny_membarrier()) _exit(kNoSeccomp);
    // All of the tests, whatever shard this one ran in.
    if (setenv(kNoMembarrierEnv, "1", 1) != 0 ||
        unsetenv("GTEST_SHARD_INDEX") != 0 ||
        unsetenv("GTEST_TOTAL_SHARDS") != 0) {
      _exit(kNoExec);
    }
    char exe[] = "/proc/self/exe";
    char filter_flag[] = "--gtest_filter=Epoch.*";
    char* const argv[] = {exe, filter_flag, nullptr};
    execv(exe, argv);
    _exit(kNoExec);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == kNoSeccomp) {
    GTEST_SKIP() << "this process may not install a seccomp filter";
  }
  if (WEXITSTATUS(status) == kNoExec) {
    GTEST_SKIP() << "could not run /proc/self/exe again";
  }
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the tests failed with readers fencing";
}

// Where membarrier worked when the process started but fails later (a
// seccomp filter installed after the start), writers fence another way and
// scans still free: in a child that installs such a filter, a scan with no
// reader frees everything, and the lock-step check finds no violation.
TEST(Epoch, WhenMembarrierFailsLaterScansStillFenceAndFree) {
  if (epoch_readers_fence()) GTEST_SKIP() << "readers fence themselves here";
#if !defined(__x86_64__)
  GTEST_SKIP() << "no fallback fence on this architecture";
#endif
  { EpochReadSection registered; }
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (!deny_membarrier()) _exit(kNoSeccomp);
    if (epoch_reclaim_bound() != UINT64_MAX) _exit(1);
    _exit(count_held_but_freed(300'000, 1s) == 0 ? 0 : 2);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == kNoSeccomp) {
    GTEST_SKIP() << "this process may not install a seccomp filter";
  }
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "1: a scan with no reader freed nothing; 2: a reader held what a "
         "scan freed";
}

}  // namespace
}  // namespace dchan::detail
