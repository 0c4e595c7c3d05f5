// bench/chan_bench.cc — dchan channels and select, each next to the same
// workload on a plain std::mutex + std::condition_variable bounded queue,
// measured in the same process and run.
//
// Workloads (one benchmark iteration = one round trip or one item):
//   pingpong/*          A sends on ch1, B receives it and sends it back on
//                       ch2; dchan unbuffered, baseline two capacity-1 queues.
//   buffered_1p1c/*     one producer, one consumer, capacity 64.
//   buffered_2p2c/*     two producers, two consumers, capacity 64; the last
//                       producer closes, consumers drain until closed.
//   select4_fanin/*     one producer feeds 4 capacity-64 channels round-robin;
//                       the receiver selects over the 4. Baseline: 4 bounded
//                       queues under one mutex, the receiver waits on one
//                       condvar for "any queue non-empty" and picks one.
//   select_pingpong/*   the ping-pong with both sides using 2-case selects
//                       (the op, or a receive on a quit channel that never
//                       fires). Baseline: the capacity-1 ping-pong whose wait
//                       predicates also test a quit flag.
//
// Timing: every benchmark runs batches of a fixed number of items. Each batch
// spawns its partner threads (exactly the threads the workload names; no
// ->Threads()), waits until they are running, and times on the driver thread
// from releasing them to the moment the last participant finished
// (UseManualTime). Reported time is wall time per round trip / per item.
//
// Run bench/run_chan.sh for the full comparison with Go.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "batch.h"
#include "benchmark/benchmark.h"
#include "dchan/chan.h"
#include "dchan/select.h"

namespace {

// ---------------------------------------------------------------------------
// Baseline: a bounded FIFO queue on std::mutex + std::condition_variable, as
// one would write it without dchan. Thread-safe; close() makes pop() return
// std::nullopt once drained. Capacity >= 1.
template <class T>
class BoundedQueue {
 public:
  explicit BoundedQueue(std::size_t capacity) : buf_(capacity) {}

  // Blocks while full. Returns false if the queue is closed.
  bool push(T v) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return count_ < buf_.size() || closed_; });
    if (closed_) return false;
    buf_[(head_ + count_) % buf_.size()] = std::move(v);
    ++count_;
    lock.unlock();
    not_empty_.notify_one();
    return true;
  }

  // Blocks while empty. std::nullopt once closed and drained.
  std::optional<T> pop() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return count_ > 0 || closed_; });
    if (count_ == 0) return std::nullopt;
    T v = std::move(buf_[head_]);
    head_ = (head_ + 1) % buf_.size();
    --count_;
    lock.unlock();
    not_full_.notify_one();
    return v;
  }

  void close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  std::vector<T> buf_;    // guarded by mu_
  std::size_t head_ = 0;  // guarded by mu_
  std::size_t count_ = 0;
  bool closed_ = false;
};

// Baseline for the fan-in select: K bounded queues under one mutex. pop_any()
// waits on one condvar for "some queue non-empty" and takes from the first
// non-empty queue starting at a rotating index (select's fairness, cheaply).
template <class T, std::size_t K>
class QueueGroup {
 public:
  explicit QueueGroup(std::size_t capacity) {
    for (auto& q : queues_) q.buf.resize(capacity);
  }

  void push(std::size_t i, T v) {
    Ring& q = queues_[i];
    std::unique_lock<std::mutex> lock(mu_);
    q.not_full.wait(lock, [&] { return q.count < q.buf.size(); });
    q.buf[(q.head + q.count) % q.buf.size()] = std::move(v);
    ++q.count;
    ++total_;
    lock.unlock();
    not_empty_.notify_one();
  }

  T pop_any() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return total_ > 0; });
    for (std::size_t k = 0; k < K; ++k) {
      Ring& q = queues_[(next_ + k) % K];
      if (q.count == 0) continue;
      next_ = (next_ + k + 1) % K;
      T v = std::move(q.buf[q.head]);
      q.head = (q.head + 1) % q.buf.size();
      --q.count;
      --total_;
      lock.unlock();
      q.not_full.notify_one();
      return v;
    }
    __builtin_unreachable();  // total_ > 0
  }

 private:
  struct Ring {
    std::condition_variable not_full;
    std::vector<T> buf;
    std::size_t head = 0;
    std::size_t count = 0;
  };
  std::mutex mu_;
  std::condition_variable not_empty_;
  std::array<Ring, K> queues_;  // guarded by mu_
  std::size_t total_ = 0;
  std::size_t next_ = 0;
};

// ---------------------------------------------------------------------------
// Harness.

// Drives `state` in batches of `batch` iterations; `make_batch(n, workers,
// driver)` fills in the participants of one batch of n iterations.
template <class MakeBatch>
void RunBatched(benchmark::State& state, int64_t batch, MakeBatch make_batch) {
  while (state.KeepRunningBatch(batch)) {
    std::vector<std::function<void()>> workers;
    std::function<void()> driver;
    make_batch(batch, workers, driver);
    state.SetIterationTime(dchan::bench::RunBatch(workers, driver).all);
  }
  state.SetItemsProcessed(state.iterations());
}

constexpr int64_t kPingPongBatch = 1 << 12;
constexpr int64_t kItemBatch = 1 << 16;
constexpr std::size_t kBufferCap = 64;

// The two implementations behind the same workload code.
struct DchanImpl {
  using Queue = dchan::Chan<int>;
  // Go's unbuffered channel is a rendezvous: capacity 0.
  static constexpr std::size_t kPingPongCap = 0;
  static Queue make(std::size_t cap) { return dchan::make_chan<int>(cap); }
  static void send(Queue& q, int v) { q.send(v); }
  static std::optional<int> recv(Queue& q) { return q.recv(); }
  static void close(Queue& q) { q.close(); }
};

struct MutexCvImpl {
  using Queue = std::shared_ptr<BoundedQueue<int>>;
  static constexpr std::size_t kPingPongCap = 1;
  static Queue make(std::size_t cap) {
    return std::make_shared<BoundedQueue<int>>(cap);
  }
  static void send(Queue& q, int v) { q->push(v); }
  static std::optional<int> recv(Queue& q) { return q->pop(); }
  static void close(Queue& q) { q->close(); }
};

// ---------------------------------------------------------------------------
// Workloads.

template <class Impl>
void BM_PingPong(benchmark::State& state) {
  RunBatched(state, kPingPongBatch, [](int64_t n, auto& workers, auto& driver) {
    auto ping =
        std::make_shared<typename Impl::Queue>(Impl::make(Impl::kPingPongCap));
    auto pong =
        std::make_shared<typename Impl::Queue>(Impl::make(Impl::kPingPongCap));
    workers.push_back([=] {
      for (int64_t i = 0; i < n; ++i) Impl::send(*pong, *Impl::recv(*ping));
    });
    driver = [=] {
      for (int64_t i = 0; i < n; ++i) {
        Impl::send(*ping, static_cast<int>(i));
        benchmark::DoNotOptimize(Impl::recv(*pong));
      }
    };
  });
}

template <class Impl>
void BM_Buffered1P1C(benchmark::State& state) {
  RunBatched(state, kItemBatch, [](int64_t n, auto& workers, auto& driver) {
    auto q = std::make_shared<typename Impl::Queue>(Impl::make(kBufferCap));
    workers.push_back([=] {
      for (int64_t i = 0; i < n; ++i) Impl::send(*q, static_cast<int>(i));
    });
    driver = [=] {
      for (int64_t i = 0; i < n; ++i) benchmark::DoNotOptimize(Impl::recv(*q));
    };
  });
}

template <class Impl>
void BM_Buffered2P2C(benchmark::State& state) {
  RunBatched(state, kItemBatch, [](int64_t n, auto& workers, auto& driver) {
    auto q = std::make_shared<typename Impl::Queue>(Impl::make(kBufferCap));
    auto producers_left = std::make_shared<std::atomic<int>>(2);
    auto produce = [=](int64_t count) {
      for (int64_t i = 0; i < count; ++i) Impl::send(*q, static_cast<int>(i));
      if (producers_left->fetch_sub(1, std::memory_order_acq_rel) == 1) {
        Impl::close(*q);
      }
    };
    auto consume = [=] {
      while (auto v = Impl::recv(*q)) benchmark::DoNotOptimize(v);
    };
    workers.push_back([=] { produce(n / 2); });
    workers.push_back([=] { produce(n - n / 2); });
    workers.push_back(consume);
    driver = consume;
  });
}

void BM_Select4FanIn_Dchan(benchmark::State& state) {
  RunBatched(state, kItemBatch, [](int64_t n, auto& workers, auto& driver) {
    auto chans = std::make_shared<std::array<dchan::Chan<int>, 4>>();
    for (auto& c : *chans) c = dchan::make_chan<int>(kBufferCap);
    workers.push_back([=] {
      for (int64_t i = 0; i < n; ++i) (*chans)[i & 3].send(static_cast<int>(i));
    });
    driver = [=] {
      auto& c = *chans;
      int64_t sum = 0;
      auto take = [&](std::optional<int> v) { sum += *v; };
      for (int64_t i = 0; i < n; ++i) {
        dchan::select(dchan::on_recv(c[0], take), dchan::on_recv(c[1], take),
                      dchan::on_recv(c[2], take), dchan::on_recv(c[3], take));
      }
      benchmark::DoNotOptimize(sum);
    };
  });
}

void BM_Select4FanIn_MutexCv(benchmark::State& state) {
  RunBatched(state, kItemBatch, [](int64_t n, auto& workers, auto& driver) {
    auto group = std::make_shared<QueueGroup<int, 4>>(kBufferCap);
    workers.push_back([=] {
      for (int64_t i = 0; i < n; ++i) group->push(i & 3, static_cast<int>(i));
    });
    driver = [=] {
      int64_t sum = 0;
      for (int64_t i = 0; i < n; ++i) sum += group->pop_any();
      benchmark::DoNotOptimize(sum);
    };
  });
}

void BM_SelectPingPong_Dchan(benchmark::State& state) {
  RunBatched(state, kPingPongBatch, [](int64_t n, auto& workers, auto& driver) {
    auto ping = dchan::make_chan<int>();
    auto pong = dchan::make_chan<int>();
    auto quit = dchan::make_chan<int>();  // never fires
    workers.push_back([=] {
      for (int64_t i = 0; i < n; ++i) {
        int v = 0;
        dchan::select(
            dchan::on_recv(ping, [&](std::optional<int> x) { v = *x; }),
            dchan::on_recv(quit));
        dchan::select(dchan::on_send(pong, v), dchan::on_recv(quit));
      }
    });
    driver = [=] {
      int64_t sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        dchan::select(dchan::on_send(ping, static_cast<int>(i)),
                      dchan::on_recv(quit));
        dchan::select(
            dchan::on_recv(pong, [&](std::optional<int> x) { sum += *x; }),
            dchan::on_recv(quit));
      }
      benchmark::DoNotOptimize(sum);
    };
  });
}

// The condvar equivalent of a 2-case select is a wait predicate with two
// conditions: "my queue is ready, or quit was set". quit never gets set.
class QuitQueue {
 public:
  explicit QuitQueue(std::atomic<bool>* quit) : quit_(quit) {}
  bool push(int v) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(
        lock, [&] { return !full_ || quit_->load(std::memory_order_relaxed); });
    if (quit_->load(std::memory_order_relaxed)) return false;
    value_ = v;
    full_ = true;
    lock.unlock();
    not_empty_.notify_one();
    return true;
  }
  std::optional<int> pop() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(
        lock, [&] { return full_ || quit_->load(std::memory_order_relaxed); });
    if (!full_) return std::nullopt;
    full_ = false;
    lock.unlock();
    not_full_.notify_one();
    return value_;
  }

 private:
  std::atomic<bool>* const quit_;
  std::mutex mu_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  int value_ = 0;  // guarded by mu_
  bool full_ = false;
};

void BM_SelectPingPong_MutexCv(benchmark::State& state) {
  RunBatched(state, kPingPongBatch, [](int64_t n, auto& workers, auto& driver) {
    auto quit = std::make_shared<std::atomic<bool>>(false);
    auto ping = std::make_shared<QuitQueue>(quit.get());
    auto pong = std::make_shared<QuitQueue>(quit.get());
    workers.push_back([=] {
      for (int64_t i = 0; i < n; ++i) pong->push(*ping->pop());
    });
    driver = [=] {
      int64_t sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        ping->push(static_cast<int>(i));
        sum += *pong->pop();
      }
      benchmark::DoNotOptimize(sum);
      benchmark::DoNotOptimize(quit);
    };
  });
}

void Register(const char* name, void (*fn)(benchmark::State&)) {
  benchmark::RegisterBenchmark(name, fn)->UseManualTime()->Unit(
      benchmark::kNanosecond);
}

}  // namespace

int main(int argc, char** argv) {
  // glibc uses real atomics only once a second thread has existed.
  std::thread([] {}).join();

  Register("pingpong/dchan", BM_PingPong<DchanImpl>);
  Register("pingpong/mutex_cv", BM_PingPong<MutexCvImpl>);
  Register("buffered_1p1c/dchan", BM_Buffered1P1C<DchanImpl>);
  Register("buffered_1p1c/mutex_cv", BM_Buffered1P1C<MutexCvImpl>);
  Register("buffered_2p2c/dchan", BM_Buffered2P2C<DchanImpl>);
  Register("buffered_2p2c/mutex_cv", BM_Buffered2P2C<MutexCvImpl>);
  Register("select4_fanin/dchan", BM_Select4FanIn_Dchan);
  Register("select4_fanin/mutex_cv", BM_Select4FanIn_MutexCv);
  Register("select_pingpong/dchan", BM_SelectPingPong_Dchan);
  Register("select_pingpong/mutex_cv", BM_SelectPingPong_MutexCv);

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
