#include "dchan/detail/epoch.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace dchan::detail {
namespace {

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

}  // namespace
}  // namespace dchan::detail
