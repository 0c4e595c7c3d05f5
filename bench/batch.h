// bench/batch.h — the timed-batch harness shared by dchan's benchmarks.
//
// A batch spawns one thread per worker, waits until all are running, runs
// `before_release` (if any: untimed, e.g. to move the calling thread to
// another CPU), then releases them together and runs `driver` on the calling
// thread; after joining them it runs `after` (if any), still inside the
// timed span. Wall time is measured from the release, so thread creation is
// never counted.
#ifndef DCHAN_BENCH_BATCH_H_
#define DCHAN_BENCH_BATCH_H_

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <thread>
#include <vector>

namespace dchan::bench {

struct BatchTimes {
  double driver = 0;  // seconds from the release to the end of the driver
  double all = 0;     // ... to the end of the last participant / `after`
};

inline BatchTimes RunBatch(const std::vector<std::function<void()>>& workers,
                           const std::function<void()>& driver,
                           const std::function<void()>& after = {},
                           const std::function<void()>& before_release = {}) {
  using Clock = std::chrono::steady_clock;
  const std::size_t n = workers.size();
  std::atomic<std::size_t> ready{0};
  std::atomic<bool> go{false};
  std::vector<Clock::time_point> finished(n);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      ready.fetch_add(1, std::memory_order_acq_rel);
      while (!go.load(std::memory_order_acquire)) sched_yield();
      workers[i]();
      finished[i] = Clock::now();
    });
  }
  while (ready.load(std::memory_order_acquire) < n) sched_yield();
  if (before_release) before_release();
  const Clock::time_point start = Clock::now();
  go.store(true, std::memory_order_release);
  if (driver) driver();
  const Clock::time_point driver_end = Clock::now();
  Clock::time_point end = driver_end;
  for (std::thread& t : threads) t.join();
  for (const Clock::time_point& f : finished) end = std::max(end, f);
  if (after) {
    after();
    end = Clock::now();
  }
  return {std::chrono::duration<double>(driver_end - start).count(),
          std::chrono::duration<double>(end - start).count()};
}

}  // namespace dchan::bench

#endif  // DCHAN_BENCH_BATCH_H_
