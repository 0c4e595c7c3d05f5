// bench/sync_bench.cc — dchan's sync types (issue 3), each next to the
// standard and Abseil equivalents measured in the same process and run.
//
// Workloads (one benchmark iteration = one operation):
//   mutex_uncontended/*   lock(); ++counter; unlock() on one thread.
//   mutex_contended_N/*   N threads (exactly N; no ->Threads()) share one
//                         lock and do lock(); ++counter; unlock() in a loop;
//                         time per operation = wall time / all operations.
//   mutex_held_2/*        2 threads share one lock; each does lock(),
//                         ~3 us of work (a busy loop on the steady clock),
//                         unlock(), ~3 us of work, in a loop. Time per
//                         operation as above; the least is ~3 us, the lock
//                         never free. Where a waiter that polls for the
//                         lock (dchan, see kPolls in lib/src/mutex.cc) is
//                         slowest to notice it free: the lock is free for
//                         about as long as the poller waits between looks.
//   wait_group_add_done/dchan  add(1); done() on one thread.
//   wait_group_wake/*     two threads hand a turn back and forth through
//                         WaitGroups: A done()s a[i] and wait()s on b[i], B
//                         wait()s on a[i] and done()s b[i] (every group
//                         starts at 1); one iteration = one round trip, two
//                         wake-ups. Baseline: the same on a std::mutex +
//                         std::condition_variable countdown (what
//                         std::latch-like code does).
//   go_spawn_wait/*       start one task and wait for it: dchan::go + a
//                         WaitGroup vs std::thread + join().
//   go_spawn64_wait/*     start 64 tasks, then wait for all; per task.
//   go_launch/dchan       only the go() call (tasks are trivial; the wait
//                         for them after each batch is not timed).
//   atomic_value_load/*   load() while another thread stores continuously:
//                         dchan::AtomicValue<int64_t> vs a std::mutex-guarded
//                         std::optional vs std::atomic<std::shared_ptr>.
//   atomic_value_store/*  store() while another thread load()s continuously;
//                         same baselines.
//   atomic_value_load_wide/*, atomic_value_store_wide/*  the same with a
//                         32-byte struct, too big for one atomic word: dchan
//                         then keeps it in a heap object behind a pointer
//                         (epoch-based reclamation).
//   atomic_value_load_2readers/*, atomic_value_load_2readers_wide/*  load()
//                         from two threads at once, no writer: do readers
//                         scale? Time per load, both threads' loads counted.
//
// Multi-thread workloads run batches: each batch starts its threads, waits
// until they are running, and times on the driver thread from releasing
// them to the last one finishing (UseManualTime).
//
// Run bench/run_sync.sh for the full comparison with Go (bench/go/sync).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "batch.h"
#include "benchmark/benchmark.h"
#include "dchan/atomic_value.h"
#include "dchan/go.h"
#include "dchan/mutex.h"
#include "dchan/wait_group.h"

namespace {

using Clock = std::chrono::steady_clock;

// absl::Mutex spelled as a Lockable.
struct AbslLockable {
  absl::Mutex mu;
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) { mu.Lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION(mu) { mu.Unlock(); }
};

// ---------------------------------------------------------------------------
// Mutex

template <class M>
void BM_MutexUncontended(benchmark::State& state) {
  M mu;
  int64_t counter = 0;
  for (auto _ : state) {
    mu.lock();
    ++counter;
    mu.unlock();
  }
  benchmark::DoNotOptimize(counter);
}

// Starts `threads` threads running body(t), waits until all are running,
// then releases them together. Returns the wall time from the release to
// the last one finishing.
template <class Body>
double RunThreads(int threads, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> start{false};
  std::atomic<int64_t> finished_at_ns{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!start.load(std::memory_order_acquire)) std::this_thread::yield();
      body(t);
      const int64_t now = Clock::now().time_since_epoch().count();
      int64_t prev = finished_at_ns.load();
      while (now > prev && !finished_at_ns.compare_exchange_weak(prev, now)) {
      }
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  const auto begin = Clock::now();
  start.store(true, std::memory_order_release);
  for (auto& t : pool) t.join();
  return std::chrono::duration<double>(Clock::duration(finished_at_ns.load()) -
                                       begin.time_since_epoch())
      .count();
}

// Runs `threads` threads doing `per_thread` lock/increment/unlock each on
// `mu`. Returns the wall time from release to the last finish, and counts in
// `*handovers` how often the lock went to a different thread than the one
// that held it last (a lock that keeps one thread running longer hands over
// less, and each hand-over moves the lock's lines between CPUs).
template <class M>
double RunContended(M& mu, int threads, int64_t per_thread,
                    int64_t* handovers) {
  int64_t counter = 0;
  int last_holder = -1;  // guarded by mu
  int64_t changes = 0;   // guarded by mu
  const double seconds = RunThreads(threads, [&](int t) {
    for (int64_t i = 0; i < per_thread; ++i) {
      mu.lock();
      ++counter;
      if (last_holder != t) {
        last_holder = t;
        ++changes;
      }
      mu.unlock();
    }
  });
  benchmark::DoNotOptimize(counter);
  *handovers += changes;
  return seconds;
}

template <class M, int kThreads>
void BM_MutexContended(benchmark::State& state) {
  constexpr int64_t kBatch = 200'000;
  M mu;
  int64_t handovers = 0;
  while (state.KeepRunningBatch(kBatch)) {
    state.SetIterationTime(
        RunContended(mu, kThreads, kBatch / kThreads, &handovers));
  }
  state.counters["ops_per_handover"] =
      static_cast<double>(state.iterations()) /
      static_cast<double>(std::max<int64_t>(handovers, 1));
}

// Busy for `d` (the thread keeps its CPU, as code doing work does).
void BusyFor(Clock::duration d) {
  const auto until = Clock::now() + d;
  while (Clock::now() < until) {
  }
}

template <class M>
void BM_MutexHeld2(benchmark::State& state) {
  constexpr int64_t kBatch = 4'000;
  constexpr auto kWork = std::chrono::microseconds(3);
  M mu;
  while (state.KeepRunningBatch(kBatch)) {
    int64_t counter = 0;
    state.SetIterationTime(RunThreads(2, [&](int) {
      for (int64_t i = 0; i < kBatch / 2; ++i) {
        mu.lock();
        ++counter;
        BusyFor(kWork);
        mu.unlock();
        BusyFor(kWork);
      }
    }));
    benchmark::DoNotOptimize(counter);
  }
}

// ---------------------------------------------------------------------------
// WaitGroup

void BM_WaitGroupAddDone(benchmark::State& state) {
  dchan::WaitGroup wg;
  for (auto _ : state) {
    wg.add(1);
    wg.done();
  }
}

// A countdown latch on std::mutex + std::condition_variable: the baseline
// for a WaitGroup used only as "wait until n done()s".
class CvCountdown {
 public:
  explicit CvCountdown(int n) : count_(n) {}
  void done() {
    std::unique_lock<std::mutex> lock(mu_);
    if (--count_ == 0) {
      lock.unlock();
      cv_.notify_all();
    }
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return count_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_;  // guarded by mu_
};

struct DchanGroups {
  explicit DchanGroups(int64_t n) : a(n), b(n) {
    for (auto& g : a) g.add(1);
    for (auto& g : b) g.add(1);
  }
  std::vector<dchan::WaitGroup> a, b;
};

struct CvGroups {
  explicit CvGroups(int64_t n) {
    a.reserve(n);
    b.reserve(n);
    for (int64_t i = 0; i < n; ++i) {
      a.push_back(std::make_unique<CvCountdown>(1));
      b.push_back(std::make_unique<CvCountdown>(1));
    }
  }
  std::vector<std::unique_ptr<CvCountdown>> a, b;
};

dchan::WaitGroup& At(std::vector<dchan::WaitGroup>& v, int64_t i) {
  return v[i];
}
CvCountdown& At(std::vector<std::unique_ptr<CvCountdown>>& v, int64_t i) {
  return *v[i];
}

// Batches of kWakeBatch round trips; the groups of a batch are made before
// the timed span (dchan::bench::RunBatch times from the release).
template <class Groups>
void BM_WaitGroupWake(benchmark::State& state) {
  constexpr int64_t kWakeBatch = 1 << 12;
  while (state.KeepRunningBatch(kWakeBatch)) {
    auto g = std::make_shared<Groups>(kWakeBatch);
    std::vector<std::function<void()>> workers;
    workers.push_back([g] {
      for (int64_t i = 0; i < kWakeBatch; ++i) {
        At(g->a, i).wait();
        At(g->b, i).done();
      }
    });
    state.SetIterationTime(dchan::bench::RunBatch(workers, [g] {
                             for (int64_t i = 0; i < kWakeBatch; ++i) {
                               At(g->a, i).done();
                               At(g->b, i).wait();
                             }
                           }).all);
  }
}

// ---------------------------------------------------------------------------
// go() vs std::thread

void BM_GoSpawnWait(benchmark::State& state) {
  for (auto _ : state) {
    dchan::WaitGroup wg;
    wg.add(1);
    dchan::go([wg]() mutable { wg.done(); });
    wg.wait();
  }
}

void BM_ThreadSpawnJoin(benchmark::State& state) {
  for (auto _ : state) {
    std::thread t([] {});
    t.join();
  }
}

constexpr int kSpawnBatch = 64;

void BM_GoSpawn64Wait(benchmark::State& state) {
  while (state.KeepRunningBatch(kSpawnBatch)) {
    dchan::WaitGroup wg;
    wg.add(kSpawnBatch);
    for (int i = 0; i < kSpawnBatch; ++i) {
      dchan::go([wg]() mutable { wg.done(); });
    }
    wg.wait();
  }
}

void BM_ThreadSpawn64Join(benchmark::State& state) {
  std::vector<std::thread> threads;
  threads.reserve(kSpawnBatch);
  while (state.KeepRunningBatch(kSpawnBatch)) {
    for (int i = 0; i < kSpawnBatch; ++i) threads.emplace_back([] {});
    for (auto& t : threads) t.join();
    threads.clear();
  }
}

void BM_GoLaunch(benchmark::State& state) {
  constexpr int kBatch = 64;
  while (state.KeepRunningBatch(kBatch)) {
    dchan::WaitGroup wg;
    wg.add(kBatch);
    const auto begin = Clock::now();
    for (int i = 0; i < kBatch; ++i) {
      dchan::go([wg]() mutable { wg.done(); });
    }
    const auto end = Clock::now();
    wg.wait();
    state.SetIterationTime(std::chrono::duration<double>(end - begin).count());
  }
}

// ---------------------------------------------------------------------------
// AtomicValue load under a concurrent writer

// Starts a thread that stores 1, 2, 3, ... through `store` until stopped.
class Writer {
 public:
  template <class Store>
  explicit Writer(Store store)
      : thread_([this, store]() mutable {
          for (int64_t i = 1; !stop_.load(std::memory_order_relaxed); ++i) {
            store(i);
          }
        }) {}
  ~Writer() {
    stop_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The values stored: an int64_t (one atomic word: AtomicValue keeps it in a
// std::atomic), or four of them (AtomicValue's heap object behind a pointer).
struct Wide {
  int64_t a, b, c, d;
};
template <class V>
V make_value(int64_t i) {
  if constexpr (std::is_same_v<V, Wide>) {
    return Wide{i, i, i, i};
  } else {
    return i;
  }
}
int64_t sum_of(int64_t v) { return v; }
int64_t sum_of(const Wide& v) { return v.a + v.d; }

template <class V>
void BM_AtomicValueLoad(benchmark::State& state) {
  dchan::AtomicValue<V> v;
  v.store(make_value<V>(0));
  Writer writer([v](int64_t i) mutable { v.store(make_value<V>(i)); });
  int64_t sum = 0;
  for (auto _ : state) sum += sum_of(*v.load());
  benchmark::DoNotOptimize(sum);
}

template <class V>
void BM_MutexOptionalLoad(benchmark::State& state) {
  struct Guarded {
    std::mutex mu;
    std::optional<V> value;
  } g;
  g.value = make_value<V>(0);
  Writer writer([&g](int64_t i) {
    std::lock_guard<std::mutex> hold(g.mu);
    g.value = make_value<V>(i);
  });
  int64_t sum = 0;
  for (auto _ : state) {
    std::lock_guard<std::mutex> hold(g.mu);
    sum += sum_of(*g.value);
  }
  benchmark::DoNotOptimize(sum);
}

template <class V>
void BM_AtomicSharedPtrLoad(benchmark::State& state) {
  std::atomic<std::shared_ptr<const V>> p(
      std::make_shared<const V>(make_value<V>(0)));
  Writer writer([&p](int64_t i) {
    p.store(std::make_shared<const V>(make_value<V>(i)));
  });
  int64_t sum = 0;
  for (auto _ : state) sum += sum_of(*p.load());
  benchmark::DoNotOptimize(sum);
}

// AtomicValue store under a concurrent reader

// Starts a thread that calls `load` until stopped.
class Reader {
 public:
  template <class Load>
  explicit Reader(Load load)
      : thread_([this, load]() mutable {
          int64_t sum = 0;
          while (!stop_.load(std::memory_order_relaxed)) sum += load();
          benchmark::DoNotOptimize(sum);
        }) {}
  ~Reader() {
    stop_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

template <class V>
void BM_AtomicValueStore(benchmark::State& state) {
  dchan::AtomicValue<V> v;
  v.store(make_value<V>(0));
  Reader reader([v] { return sum_of(*v.load()); });
  int64_t i = 0;
  for (auto _ : state) v.store(make_value<V>(++i));
}

template <class V>
void BM_MutexOptionalStore(benchmark::State& state) {
  struct Guarded {
    std::mutex mu;
    std::optional<V> value;
  } g;
  g.value = make_value<V>(0);
  Reader reader([&g] {
    std::lock_guard<std::mutex> hold(g.mu);
    return sum_of(*g.value);
  });
  int64_t i = 0;
  for (auto _ : state) {
    std::lock_guard<std::mutex> hold(g.mu);
    g.value = make_value<V>(++i);
  }
}

template <class V>
void BM_AtomicSharedPtrStore(benchmark::State& state) {
  std::atomic<std::shared_ptr<const V>> p(
      std::make_shared<const V>(make_value<V>(0)));
  Reader reader([&p] { return sum_of(*p.load()); });
  int64_t i = 0;
  for (auto _ : state) p.store(std::make_shared<const V>(make_value<V>(++i)));
}

// AtomicValue load from two threads at once, no writer: whether readers
// scale (they share the value; ideally they write nothing shared). Time per
// load, all threads' loads counted (as in the Go benchmark: b.N in all).

template <class Load>
void BM_TwoReaders(benchmark::State& state, Load load) {
  constexpr int kReaders = 2;
  constexpr int64_t kBatch = 200'000;
  while (state.KeepRunningBatch(kBatch)) {
    state.SetIterationTime(RunThreads(kReaders, [&](int) {
      int64_t sum = 0;
      for (int64_t i = 0; i < kBatch / kReaders; ++i) sum += load();
      benchmark::DoNotOptimize(sum);
    }));
  }
}

template <class V>
void BM_AtomicValueLoad2Readers(benchmark::State& state) {
  dchan::AtomicValue<V> v;
  v.store(make_value<V>(1));
  BM_TwoReaders(state, [&v] { return sum_of(*v.load()); });
}

template <class V>
void BM_MutexOptionalLoad2Readers(benchmark::State& state) {
  std::mutex mu;
  std::optional<V> value = make_value<V>(1);
  BM_TwoReaders(state, [&] {
    std::lock_guard<std::mutex> hold(mu);
    return sum_of(*value);
  });
}

template <class V>
void BM_AtomicSharedPtrLoad2Readers(benchmark::State& state) {
  std::atomic<std::shared_ptr<const V>> p(
      std::make_shared<const V>(make_value<V>(1)));
  BM_TwoReaders(state, [&p] { return sum_of(*p.load()); });
}

// Registers atomic_value_{load,store,load_2readers}<suffix>/{dchan,
// std_mutex,std_atomic_shared_ptr} for values of type V.
template <class V>
void RegisterAtomicValue(const std::string& suffix) {
  using Fn = void (*)(benchmark::State&);
  struct Variant {
    const char* name;
    Fn load;
    Fn store;
    Fn load_2readers;
  };
  const Variant variants[] = {
      {"dchan", BM_AtomicValueLoad<V>, BM_AtomicValueStore<V>,
       BM_AtomicValueLoad2Readers<V>},
      {"std_mutex", BM_MutexOptionalLoad<V>, BM_MutexOptionalStore<V>,
       BM_MutexOptionalLoad2Readers<V>},
      {"std_atomic_shared_ptr", BM_AtomicSharedPtrLoad<V>,
       BM_AtomicSharedPtrStore<V>, BM_AtomicSharedPtrLoad2Readers<V>},
  };
  for (const char* op : {"load", "store"}) {
    for (const Variant& v : variants) {
      const std::string name =
          std::string("atomic_value_") + op + suffix + "/" + v.name;
      RegisterBenchmark(name.c_str(),
                        std::string_view(op) == "load" ? v.load : v.store)
          ->UseRealTime();
    }
  }
  for (const Variant& v : variants) {
    const std::string name =
        std::string("atomic_value_load_2readers") + suffix + "/" + v.name;
    RegisterBenchmark(name.c_str(), v.load_2readers)->UseManualTime();
  }
}

void Register() {
  using benchmark::RegisterBenchmark;
  RegisterBenchmark("mutex_uncontended/dchan",
                    BM_MutexUncontended<dchan::Mutex>);
  RegisterBenchmark("mutex_uncontended/std", BM_MutexUncontended<std::mutex>);
  RegisterBenchmark("mutex_uncontended/absl",
                    BM_MutexUncontended<AbslLockable>);
  RegisterBenchmark("mutex_contended_2/dchan",
                    BM_MutexContended<dchan::Mutex, 2>)
      ->UseManualTime();
  RegisterBenchmark("mutex_contended_2/std", BM_MutexContended<std::mutex, 2>)
      ->UseManualTime();
  RegisterBenchmark("mutex_contended_2/absl",
                    BM_MutexContended<AbslLockable, 2>)
      ->UseManualTime();
  RegisterBenchmark("mutex_contended_4/dchan",
                    BM_MutexContended<dchan::Mutex, 4>)
      ->UseManualTime();
  RegisterBenchmark("mutex_contended_4/std", BM_MutexContended<std::mutex, 4>)
      ->UseManualTime();
  RegisterBenchmark("mutex_contended_4/absl",
                    BM_MutexContended<AbslLockable, 4>)
      ->UseManualTime();
  RegisterBenchmark("mutex_held_2/dchan", BM_MutexHeld2<dchan::Mutex>)
      ->UseManualTime();
  RegisterBenchmark("mutex_held_2/std", BM_MutexHeld2<std::mutex>)
      ->UseManualTime();
  RegisterBenchmark("mutex_held_2/absl", BM_MutexHeld2<AbslLockable>)
      ->UseManualTime();
  RegisterBenchmark("wait_group_add_done/dchan", BM_WaitGroupAddDone);
  RegisterBenchmark("wait_group_wake/dchan", BM_WaitGroupWake<DchanGroups>)
      ->UseManualTime();
  RegisterBenchmark("wait_group_wake/mutex_cv", BM_WaitGroupWake<CvGroups>)
      ->UseManualTime();
  RegisterBenchmark("go_spawn_wait/dchan", BM_GoSpawnWait)->UseRealTime();
  RegisterBenchmark("go_spawn_wait/std_thread", BM_ThreadSpawnJoin)
      ->UseRealTime();
  RegisterBenchmark("go_spawn64_wait/dchan", BM_GoSpawn64Wait)->UseRealTime();
  RegisterBenchmark("go_spawn64_wait/std_thread", BM_ThreadSpawn64Join)
      ->UseRealTime();
  RegisterBenchmark("go_launch/dchan", BM_GoLaunch)->UseManualTime();
  RegisterAtomicValue<int64_t>("");
  RegisterAtomicValue<Wide>("_wide");
}

}  // namespace

int main(int argc, char** argv) {
  // glibc uses real atomics only once a second thread has existed.
  std::thread([] {}).join();
  Register();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
