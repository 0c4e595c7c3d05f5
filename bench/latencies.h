// bench/latencies.h — per-op latency percentiles of one repetition, and
// object names unique to this process (so repetitions and benchmarks never
// share a broker channel or a Redis key). Header-only.
#ifndef DCHAN_BENCH_LATENCIES_H_
#define DCHAN_BENCH_LATENCIES_H_

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"

namespace dchan::bench {

// Collects one repetition's per-op times; report() sets the p50_us and
// p99_us counters (microseconds) that the table scripts read.
class Latencies {
 public:
  Latencies() { ns_.reserve(1 << 16); }
  void add(std::chrono::steady_clock::duration d) {
    ns_.push_back(std::chrono::duration<double, std::nano>(d).count());
  }
  void report(benchmark::State& state) {
    if (ns_.empty()) return;
    std::sort(ns_.begin(), ns_.end());
    auto at = [&](double q) {
      const std::size_t i = static_cast<std::size_t>(q * ns_.size());
      return ns_[std::min(i, ns_.size() - 1)] / 1e3;
    };
    state.counters["p50_us"] = at(0.50);
    state.counters["p99_us"] = at(0.99);
  }

 private:
  std::vector<double> ns_;
};

// "bench-WHAT-PID-N": a name no other benchmark or process uses.
inline std::string UniqueName(const char* what) {
  static std::atomic<int> n{0};
  return std::string("bench-") + what + "-" + std::to_string(getpid()) + "-" +
         std::to_string(n.fetch_add(1));
}

}  // namespace dchan::bench

#endif  // DCHAN_BENCH_LATENCIES_H_
