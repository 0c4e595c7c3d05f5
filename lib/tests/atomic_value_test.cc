#include "dchan/atomic_value.h"

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <future>
#include <limits>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "fake_remote.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace dchan {
namespace {

using namespace std::chrono_literals;

TEST(AtomicValue, LoadBeforeTheFirstStoreIsEmpty) {
  AtomicValue<std::string> v;
  EXPECT_FALSE(v.load().has_value());
  AtomicValue<int64_t> word;  // kept in one atomic word
  EXPECT_FALSE(word.load().has_value());
  EXPECT_FALSE(word.compare_and_swap(0, 1));  // nothing stored to compare
  EXPECT_FALSE(word.load().has_value());
}

TEST(AtomicValue, LoadReturnsTheLastStoredValue) {
  AtomicValue<std::string> v;
  v.store("one");
  EXPECT_EQ(v.load(), "one");
  v.store("two");
  EXPECT_EQ(v.load(), "two");
}

TEST(AtomicValue, SwapReturnsThePreviousValue) {
  AtomicValue<int> v;
  EXPECT_EQ(v.swap(1), std::nullopt);
  EXPECT_EQ(v.swap(2), 1);
  EXPECT_EQ(v.load(), 2);
}

TEST(AtomicValue, CompareAndSwapStoresOnlyOnMatch) {
  AtomicValue<std::string> v;
  EXPECT_FALSE(v.compare_and_swap("", "x"));  // nothing stored yet
  EXPECT_FALSE(v.load().has_value());
  v.store("a");
  EXPECT_FALSE(v.compare_and_swap("b", "c"));
  EXPECT_EQ(v.load(), "a");
  EXPECT_TRUE(v.compare_and_swap("a", "c"));
  EXPECT_EQ(v.load(), "c");
}

TEST(AtomicValue, CopiesShareTheValue) {
  AtomicValue<int> a;
  AtomicValue<int> b = a;
  EXPECT_EQ(a, b);
  EXPECT_NE(a, AtomicValue<int>());
  a.store(7);
  EXPECT_EQ(b.load(), 7);
}

TEST(AtomicValue, MoveOnlyOperationsWorkWithMoveOnlyFriendlyTypes) {
  AtomicValue<std::vector<int>> v;
  std::vector<int> big(1000, 3);
  v.store(std::move(big));
  EXPECT_EQ(v.load()->size(), 1000u);
}

// A value whose parts must always agree: a torn read shows as a mismatch.
struct Wide {
  std::array<uint64_t, 32> words;
  std::string text;  // heap-allocated: a freed read shows under ASan
  static Wide of(uint64_t n) {
    Wide w;
    w.words.fill(n);
    w.text =
        std::string(100, static_cast<char>('a' + n % 26)) + std::to_string(n);
    return w;
  }
  bool consistent() const {
    for (uint64_t x : words) {
      if (x != words[0]) return false;
    }
    return text == of(words[0]).text;
  }
  bool operator==(const Wide&) const = default;
};

// Three readers load while one writer stores make(1), make(2), ... (every
// third one by compare_and_swap from the one before); the writer starts only
// once the readers are loading, so they also race the first store. Readers
// see nothing, then only whole stored values (`whole`), never going back
// (`seq` of a value is its n).
template <class T, class Make, class Seq, class Whole>
void expect_readers_see_whole_values_in_order(Make make, Seq seq, Whole whole) {
  AtomicValue<T> v;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> broken{0}, backwards{0}, loads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      int64_t last = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const std::optional<T> x = v.load();
        loads.fetch_add(1, std::memory_order_relaxed);
        if (!x) continue;
        if (!whole(*x)) broken.fetch_add(1);
        // One writer: a reader never sees an older value after a newer one.
        if (seq(*x) < last) backwards.fetch_add(1);
        last = seq(*x);
      }
    });
  }
  while (loads.load() < 1'000) std::this_thread::yield();  // before any store
  int64_t n = 0;
  while (n < 20'000 || loads.load() < 40'000) {
    ++n;
    if (n % 3 == 0) {
      EXPECT_TRUE(v.compare_and_swap(make(n - 1), make(n)));
    } else {
      v.store(make(n));
    }
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(broken.load(), 0);
  EXPECT_EQ(backwards.load(), 0);
  EXPECT_EQ(seq(*v.load()), n);
}

TEST(AtomicValue, ReadersUnderAConcurrentWriterSeeWholeValuesInOrder) {
  static_assert(!detail::kWordValue<Wide>, "meant for the heap object");
  expect_readers_see_whole_values_in_order<Wide>(
      [](int64_t n) { return Wide::of(static_cast<uint64_t>(n)); },
      [](const Wide& w) { return static_cast<int64_t>(w.words[0]); },
      [](const Wide& w) { return w.consistent(); });
}

// A value that fits one atomic word is kept in a std::atomic, with a flag
// for "stored yet": a reader must never see the word's initial 0.
TEST(AtomicValue, AWordSizedValueIsReadWholeAndInOrderUnderAWriter) {
  static_assert(detail::kWordValue<int64_t>);
  expect_readers_see_whole_values_in_order<int64_t>(
      [](int64_t n) { return n; }, [](int64_t x) { return x; },
      [](int64_t x) { return x != 0; });
}

// Trivially copyable types that std::atomic would reject (no move
// assignment) or that may not be lock-free without libatomic (wider than a
// pointer) live behind the pointer, and work.
struct NoMoveAssign {
  int x = 0;
  NoMoveAssign() = default;
  explicit NoMoveAssign(int v) : x(v) {}
  NoMoveAssign(const NoMoveAssign&) = default;
  NoMoveAssign(NoMoveAssign&&) = default;
  NoMoveAssign& operator=(const NoMoveAssign&) = default;
  NoMoveAssign& operator=(NoMoveAssign&&) = delete;
  bool operator==(const NoMoveAssign&) const = default;
};
struct TwoWords {
  int64_t a = 0, b = 0;
  bool operator==(const TwoWords&) const = default;
};
static_assert(std::is_trivially_copyable_v<NoMoveAssign> &&
              !detail::kWordValue<NoMoveAssign>);
static_assert(!detail::kWordValue<TwoWords>);

TEST(AtomicValue, TypesNotForOneAtomicWordUseTheSlots) {
  AtomicValue<NoMoveAssign> v;
  v.store(NoMoveAssign(1));
  EXPECT_TRUE(v.compare_and_swap(NoMoveAssign(1), NoMoveAssign(2)));
  EXPECT_EQ(v.load()->x, 2);
  AtomicValue<TwoWords> w;
  w.store(TwoWords{1, 2});
  EXPECT_EQ(w.swap(TwoWords{3, 4}), (TwoWords{1, 2}));
  EXPECT_EQ(w.load(), (TwoWords{3, 4}));
}

// Starts `threads` threads running body(t) at about the same moment (they
// wait until all are running) and joins them.
template <class Body>
void run_together(int threads, Body body) {
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < threads) std::this_thread::yield();
      body(t);
    });
  }
  for (auto& t : pool) t.join();
}

// Threads that increment by compare_and_swap (retrying on failure) lose no
// increment: a compare and its swap are atomic together, in an atomic word
// as behind the pointer.
template <class T>
void expect_concurrent_increments_by_cas_add_up() {
  constexpr int kThreads = 4;
  constexpr int64_t kEach = 20'000;
  AtomicValue<T> v;
  v.store(T{0});
  run_together(kThreads, [&](int) {
    for (int64_t i = 0; i < kEach;) {
      const T cur = *v.load();
      if (v.compare_and_swap(cur, T{cur.n + 1})) ++i;
    }
  });
  EXPECT_EQ(v.load()->n, kThreads * kEach);
}

struct Count {
  int64_t n = 0;
  bool operator==(const Count&) const = default;
};
struct WideCount {
  int64_t n = 0;
  int64_t padding[3] = {};
  bool operator==(const WideCount&) const = default;
};
static_assert(detail::kWordValue<Count> && !detail::kWordValue<WideCount>);

TEST(AtomicValue, ConcurrentIncrementsByCompareAndSwapAddUp) {
  expect_concurrent_increments_by_cas_add_up<Count>();
  expect_concurrent_increments_by_cas_add_up<WideCount>();
}

// Of threads that race to swap into an empty AtomicValue, exactly one finds
// no value before it; the others each get a value another one stored. The
// threads race on each of many fresh values in turn (a barrier per value).
template <class T>
void expect_exactly_one_first_swap() {
  constexpr int kThreads = 4;
  constexpr int kValues = 5'000;
  std::vector<AtomicValue<T>> values(kValues);
  std::vector<std::atomic<int>> arrived(kValues);
  std::vector<std::atomic<int>> empty(kValues);
  run_together(kThreads, [&](int t) {
    for (int i = 0; i < kValues; ++i) {
      arrived[i].fetch_add(1);
      while (arrived[i].load() < kThreads) std::this_thread::yield();
      const std::optional<T> old = values[i].swap(T{t + 1});
      if (!old) {
        empty[i].fetch_add(1);
      } else if (old->n < 1 || old->n > kThreads || old->n == t + 1) {
        ADD_FAILURE() << "swap " << t + 1 << " found " << old->n;
      }
    }
  });
  for (int i = 0; i < kValues; ++i) {
    ASSERT_EQ(empty[i].load(), 1) << "value " << i;
  }
}

TEST(AtomicValue, ExactlyOneOfRacingFirstSwapsFindsNoValue) {
  expect_exactly_one_first_swap<Count>();
  expect_exactly_one_first_swap<WideCount>();
}

// compare_and_swap compares with T's ==, as Go compares interface values,
// also for a value kept in an atomic word: -0.0 == 0.0, NaN != NaN.
TEST(AtomicValue, CompareAndSwapUsesTheTypesEqualityNotItsBytes) {
  static_assert(detail::kWordValue<double>);
  AtomicValue<double> v;
  v.store(0.0);
  EXPECT_TRUE(v.compare_and_swap(-0.0, 1.0));
  EXPECT_EQ(v.load(), 1.0);
  v.store(std::numeric_limits<double>::quiet_NaN());
  EXPECT_FALSE(
      v.compare_and_swap(std::numeric_limits<double>::quiet_NaN(), 2.0));
  EXPECT_TRUE(std::isnan(*v.load()));
}

// A type whose operator== can be made to block, so a writer inside
// compare_and_swap is held mid-write.
std::atomic<bool> g_block_compare{false};
std::atomic<bool> g_in_compare{false};
std::atomic<bool> g_release_compare{false};

// Kept in an atomic word (Gated) or behind the pointer (GatedWide).
struct Gated {
  int value = 0;
  bool operator==(const Gated& other) const {
    if (g_block_compare.load()) {
      g_in_compare = true;
      while (!g_release_compare.load()) std::this_thread::yield();
    }
    return value == other.value;
  }
};
struct GatedWide : Gated {
  std::array<int64_t, 4> padding{};
};
static_assert(detail::kWordValue<Gated> && !detail::kWordValue<GatedWide>);

template <class G>
void expect_readers_do_not_wait_for_a_writer_in_progress() {
  g_block_compare = false;
  g_in_compare = false;
  g_release_compare = false;
  AtomicValue<G> v;
  v.store(G{{1}});
  g_block_compare = true;
  std::thread writer(
      [v]() mutable { EXPECT_TRUE(v.compare_and_swap(G{{1}}, G{{2}})); });
  while (!g_in_compare.load()) std::this_thread::yield();
  // The writer holds the write side; loads still complete at once.
  std::future<int> read =
      std::async(std::launch::async, [v] { return v.load()->value; });
  const bool ready = read.wait_for(5s) == std::future_status::ready;
  g_release_compare = true;
  writer.join();
  ASSERT_TRUE(ready) << "load() waited for the writer";
  EXPECT_EQ(read.get(), 1);
  g_block_compare = false;
  EXPECT_EQ(v.load()->value, 2);
}

TEST(AtomicValue, ReadersDoNotWaitForAWriterInProgress) {
  expect_readers_do_not_wait_for_a_writer_in_progress<Gated>();
  expect_readers_do_not_wait_for_a_writer_in_progress<GatedWide>();
}

// A value (too wide for one atomic word) that counts its live instances.
struct Counted {
  static inline std::atomic<int> live{0};
  int64_t id = 0;
  std::array<int64_t, 4> padding{};
  explicit Counted(int64_t i) : id(i) { ++live; }
  Counted(const Counted& other) : id(other.id) { ++live; }
  Counted(Counted&& other) noexcept : id(other.id) { ++live; }
  Counted& operator=(const Counted&) = delete;
  ~Counted() { --live; }
};
static_assert(!detail::kWordValue<Counted>);

// A replaced value is destroyed once no load() can still be copying it, by
// a store that checks for readers: with no reader, every kReclaimBatch-th
// store (so at most kReclaimBatch values are alive at a time), and the
// first store a clock tick after the last check. The last handle destroys
// the current one.
TEST(AtomicValue, ReplacedValuesAreDestroyedOnceNoReaderCanHoldThem) {
  ASSERT_EQ(Counted::live.load(), 0);
  {
    AtomicValue<Counted> v;
    constexpr int kBatch = detail::kReclaimBatch<Counted>;
    for (int i = 0; i < 3 * kBatch; ++i) {
      v.store(Counted(i));
      ASSERT_LE(Counted::live.load(), kBatch) << "after store " << i;
    }
    EXPECT_EQ(v.swap(Counted(3 * kBatch))->id, 3 * kBatch - 1);
    std::atomic<bool> stop{false};
    std::vector<std::thread> readers;
    for (int r = 0; r < 3; ++r) {
      readers.emplace_back([&, v] {
        while (!stop.load(std::memory_order_relaxed)) {
          if (v.load()->id < 3 * kBatch) {
            ADD_FAILURE() << "an older value came back";
          }
        }
      });
    }
    for (int i = 3 * kBatch + 1; i < 10'000; ++i) v.store(Counted(i));
    stop = true;
    for (auto& t : readers) t.join();
    // Once the clock ticks, a store frees every replaced value.
    EXPECT_TRUE(test_util::eventually([&] {
      v.store(Counted(10'000));
      return Counted::live.load() == 1;
    }));
    EXPECT_EQ(Counted::live.load(), 1);
  }
  EXPECT_EQ(Counted::live.load(), 0);
}

// A store that does not check for readers itself still frees what other
// stores' checks allow: once another AtomicValue's stores checked twice
// (each check moves the reclamation epoch on), the next store here
// destroys the value replaced before them, with no clock tick needed.
TEST(AtomicValue, ChecksByOtherStoresFreeWhatThisOneReplaced) {
  ASSERT_EQ(Counted::live.load(), 0);
  {
    AtomicValue<Counted> x;
    x.store(Counted(1));
    // A check now, so that the next store does not check (unless the
    // clock ticks in between: then the test passes without telling).
    detail::epoch_reclaim_bound();
    x.store(Counted(2));
    AtomicValue<std::string> y;
    for (size_t i = 0; i <= 2 * detail::kReclaimBatch<std::string>; ++i) {
      y.store("y");
    }
    x.store(Counted(3));
    // Value 1 is gone; value 2 may wait for a check.
    EXPECT_LE(Counted::live.load(), 2);
  }
  EXPECT_EQ(Counted::live.load(), 0);
}

// A wide value whose copy constructor can be held, optionally after
// loading another AtomicValue (a read section nested in the load's own).
// `source_alive` tells whether the object it copies was still alive after
// the hold (in an ASan build a freed one is also reported as a use after
// free).
std::atomic<bool> g_hold_copy{false};
std::atomic<bool> g_in_copy{false};
std::atomic<bool> g_release_copy{false};
AtomicValue<std::string>* g_nested = nullptr;

struct HeldCopy {
  static constexpr uint64_t kAlive = 0xa11fe;
  static constexpr uint64_t kDead = 0xdead;
  int64_t id = 0;
  uint64_t magic = kAlive;
  bool source_alive = true;
  std::array<int64_t, 4> padding{};
  explicit HeldCopy(int64_t i) : id(i) {}
  HeldCopy(const HeldCopy& other) : id(other.id) {
    if (g_hold_copy.exchange(false)) {
      if (g_nested != nullptr) {
        EXPECT_EQ(g_nested->load(), "inner");
      }
      g_in_copy = true;
      while (!g_release_copy.load()) std::this_thread::yield();
    }
    source_alive = other.magic == kAlive;
  }
  HeldCopy(HeldCopy&& other) noexcept
      : id(other.id), source_alive(other.source_alive) {}
  HeldCopy& operator=(const HeldCopy&) = delete;
  ~HeldCopy() { magic = kDead; }
  bool operator==(const HeldCopy& other) const { return id == other.id; }
};
static_assert(!detail::kWordValue<HeldCopy>);

void expect_writers_do_not_wait_for_a_reader_in_progress(bool nested) {
  AtomicValue<std::string> inner;
  inner.store("inner");
  g_nested = nested ? &inner : nullptr;
  g_in_copy = false;
  g_release_copy = false;
  AtomicValue<HeldCopy> v;
  v.store(HeldCopy(1));
  g_hold_copy = true;
  std::future<HeldCopy> read =
      std::async(std::launch::async, [v] { return *v.load(); });
  while (!g_in_copy.load()) std::this_thread::yield();
  // The reader is inside load(), copying value 1: writers still go on.
  std::future<void> write = std::async(std::launch::async, [v]() mutable {
    v.store(HeldCopy(2));
    v.store(HeldCopy(3));
    EXPECT_TRUE(v.compare_and_swap(HeldCopy(3), HeldCopy(4)));
  });
  const bool wrote = write.wait_for(5s) == std::future_status::ready;
  g_release_copy = true;
  write.get();
  const HeldCopy got = read.get();
  ASSERT_TRUE(wrote) << "a store waited for the reader";
  EXPECT_EQ(got.id, 1);
  EXPECT_TRUE(got.source_alive) << "value 1 was destroyed while copied";
  EXPECT_EQ(v.load()->id, 4);
  g_nested = nullptr;
}

TEST(AtomicValue, WritersDoNotWaitForAReaderInProgress) {
  expect_writers_do_not_wait_for_a_reader_in_progress(/*nested=*/false);
}

// A load inside T's copy (another AtomicValue's) ends its own read section,
// not the outer load's: the value being copied stays alive.
TEST(AtomicValue, ALoadNestedInACopyKeepsTheOuterValueAlive) {
  expect_writers_do_not_wait_for_a_reader_in_progress(/*nested=*/true);
}

// A value whose destructor stores to the AtomicValue that held it: the
// replaced value is destroyed after the writers' mutex is released, so the
// nested store does not deadlock. Each Trigger's destructor stores a value
// with the next Trigger, then replaces that one until it is destroyed (by
// one of those stores, at the latest the kReclaimBatch-th): a chain of 50
// nested stores.
struct Chained;
std::atomic<int> g_triggers_fired{0};
struct Trigger {
  Trigger(AtomicValue<Chained>* h, int64_t n) : home(h), next(n) {}
  Trigger(const Trigger&) = delete;
  ~Trigger();
  AtomicValue<Chained>* home;
  int64_t next;
};
struct Chained {
  int64_t id = 0;
  std::shared_ptr<Trigger> trigger;  // one owner: the stored value
};
// Stores values numbered `id` until Trigger `n` has fired (false if
// 2 * kReclaimBatch stores did not destroy it).
bool store_until_fired(AtomicValue<Chained>& v, int64_t id, int n) {
  for (size_t i = 0; i < 2 * detail::kReclaimBatch<Chained>; ++i) {
    if (g_triggers_fired.load() >= n) return true;
    v.store(Chained{id, nullptr});
  }
  return g_triggers_fired.load() >= n;
}
Trigger::~Trigger() {
  ++g_triggers_fired;
  if (next > 50) return;
  home->store(Chained{next, std::make_shared<Trigger>(home, next + 1)});
  EXPECT_TRUE(store_until_fired(*home, -next, static_cast<int>(next) + 1));
}

TEST(AtomicValue, AReplacedValuesDestructorMayStoreToTheSameValue) {
  g_triggers_fired = 0;
  AtomicValue<Chained> v;
  std::atomic<bool> done{false};
  std::thread writer([&] {
    v.store(Chained{0, std::make_shared<Trigger>(&v, 1)});
    // Destroys Trigger 1, which stores...
    EXPECT_TRUE(store_until_fired(v, -1000, 1));
    done = true;
  });
  if (!test_util::eventually([&] { return done.load(); }, 10s)) {
    writer.detach();  // deadlocked on the writers' mutex
    FAIL() << "a destructor's store deadlocked";
  }
  writer.join();
  EXPECT_EQ(g_triggers_fired.load(), 51);
  // Each replaced Trigger fired inside a store of the one before it, and
  // each stops storing once the next fired: the innermost store came last.
  EXPECT_EQ(v.load()->id, -50);
}

TEST(AtomicValue, LocalAtomicValueIsNotRemote) {
  EXPECT_FALSE(AtomicValue<int>().is_remote());
}

TEST(AtomicValue, RemoteHandleEncodesThroughTheCodec) {
  auto backend = std::make_shared<test_util::FakeValue>();
  AtomicValue<int32_t> v = detail::make_remote_atomic_value<int32_t>(backend);
  EXPECT_TRUE(v.is_remote());
  EXPECT_EQ(v, AtomicValue<int32_t>(v));
  EXPECT_NE(v, AtomicValue<int32_t>());
  EXPECT_EQ(v.load(), std::nullopt);
  EXPECT_FALSE(v.compare_and_swap(1, 2));  // nothing stored yet
  v.store(7);
  EXPECT_EQ(v.load(), 7);
  EXPECT_EQ(backend->load(), std::string("\x07\0\0\0", 4));  // little-endian
  EXPECT_EQ(v.swap(8), 7);
  EXPECT_FALSE(v.compare_and_swap(7, 9));
  EXPECT_TRUE(v.compare_and_swap(8, 9));
  EXPECT_EQ(v.load(), 9);
}

TEST(AtomicValue, RemoteBytesTheCodecRejectsThrowDataLoss) {
  auto backend = std::make_shared<test_util::FakeValue>();
  AtomicValue<int32_t> v = detail::make_remote_atomic_value<int32_t>(backend);
  backend->swap("xy");  // not 4 bytes
  try {
    v.load();
    ADD_FAILURE() << "load decoded malformed bytes";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), absl::StatusCode::kDataLoss);
  }
  v.store(1);  // store does not decode what it replaces
  EXPECT_EQ(v.load(), 1);
}

}  // namespace
}  // namespace dchan
