// bench/sync_bench.cc — dchan's sync types (issue 3), each next to the
// standard and Abseil equivalents measured in the same process and run.
//
// Workloads (one benchmark iteration = one operation):
//   mutex_uncontended/*   lock(); ++counter; unlock() on one thread.
//   mutex_contended_N/*   N threads (exactly N; no ->Threads()) share one
//                         lock and do lock(); ++counter; unlock() in a loop;
//                         time per operation = wall time / all operations.
//   wait_group_add_done/dchan  add(1); done() on one thread.
//   go_spawn_wait/*       start one task and wait for it: dchan::go + a
//                         WaitGroup vs std::thread + join().
//   go_spawn64_wait/*     start 64 tasks, then wait for all; per task.
//   go_launch/dchan       only the go() call (tasks are trivial; the wait
//                         for them after each batch is not timed).
//   atomic_value_load/*   load() while another thread stores continuously:
//                         dchan::AtomicValue<int64_t> vs a std::mutex-guarded
//                         std::optional vs std::atomic<std::shared_ptr>.
//
// Multi-thread workloads run batches: each batch starts its threads, waits
// until they are running, and times on the driver thread from releasing
// them to the last one finishing (UseManualTime).
//
// Run bench/run_sync.sh for the full comparison with Go (bench/go/sync).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
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

// Runs `threads` threads doing `per_thread` lock/increment/unlock each on
// `mu`; returns the wall time from release to the last finish.
template <class M>
double RunContended(M& mu, int threads, int64_t per_thread) {
  std::atomic<int> ready{0};
  std::atomic<bool> start{false};
  int64_t counter = 0;
  std::atomic<int64_t> finished_at_ns{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      ready.fetch_add(1);
      while (!start.load(std::memory_order_acquire)) std::this_thread::yield();
      for (int64_t i = 0; i < per_thread; ++i) {
        mu.lock();
        ++counter;
        mu.unlock();
      }
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
  benchmark::DoNotOptimize(counter);
  return std::chrono::duration<double>(Clock::duration(finished_at_ns.load()) -
                                       begin.time_since_epoch())
      .count();
}

template <class M, int kThreads>
void BM_MutexContended(benchmark::State& state) {
  constexpr int64_t kBatch = 200'000;
  M mu;
  while (state.KeepRunningBatch(kBatch)) {
    state.SetIterationTime(RunContended(mu, kThreads, kBatch / kThreads));
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

void BM_AtomicValueLoad(benchmark::State& state) {
  dchan::AtomicValue<int64_t> v;
  v.store(0);
  Writer writer([v](int64_t i) mutable { v.store(i); });
  int64_t sum = 0;
  for (auto _ : state) sum += *v.load();
  benchmark::DoNotOptimize(sum);
}

void BM_MutexOptionalLoad(benchmark::State& state) {
  struct Guarded {
    std::mutex mu;
    std::optional<int64_t> value;
  } g;
  g.value = 0;
  Writer writer([&g](int64_t i) {
    std::lock_guard<std::mutex> hold(g.mu);
    g.value = i;
  });
  int64_t sum = 0;
  for (auto _ : state) {
    std::lock_guard<std::mutex> hold(g.mu);
    sum += *g.value;
  }
  benchmark::DoNotOptimize(sum);
}

void BM_AtomicSharedPtrLoad(benchmark::State& state) {
  std::atomic<std::shared_ptr<const int64_t>> p(
      std::make_shared<const int64_t>(0));
  Writer writer(
      [&p](int64_t i) { p.store(std::make_shared<const int64_t>(i)); });
  int64_t sum = 0;
  for (auto _ : state) sum += *p.load();
  benchmark::DoNotOptimize(sum);
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
  RegisterBenchmark("wait_group_add_done/dchan", BM_WaitGroupAddDone);
  RegisterBenchmark("go_spawn_wait/dchan", BM_GoSpawnWait)->UseRealTime();
  RegisterBenchmark("go_spawn_wait/std_thread", BM_ThreadSpawnJoin)
      ->UseRealTime();
  RegisterBenchmark("go_spawn64_wait/dchan", BM_GoSpawn64Wait)->UseRealTime();
  RegisterBenchmark("go_spawn64_wait/std_thread", BM_ThreadSpawn64Join)
      ->UseRealTime();
  RegisterBenchmark("go_launch/dchan", BM_GoLaunch)->UseManualTime();
  RegisterBenchmark("atomic_value_load/dchan", BM_AtomicValueLoad)
      ->UseRealTime();
  RegisterBenchmark("atomic_value_load/std_mutex", BM_MutexOptionalLoad)
      ->UseRealTime();
  RegisterBenchmark("atomic_value_load/std_atomic_shared_ptr",
                    BM_AtomicSharedPtrLoad)
      ->UseRealTime();
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
