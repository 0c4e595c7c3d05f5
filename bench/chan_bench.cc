// bench/chan_bench.cc — dchan channels and select, each next to the same
// workload on a plain std::mutex + std::condition_variable queue and (where
// it has an equivalent) on moodycamel's lock-free queue, measured in the same
// process and run; plus the floors of a thread hand-off on this machine.
//
// Workloads (one benchmark iteration = one round trip or one item):
//   pingpong/*          A sends on ch1, B receives it and sends it back on
//                       ch2; dchan unbuffered, baselines two capacity-1
//                       queues / two moodycamel BlockingConcurrentQueues.
//   unbuffered_1p1c/*   one producer, one consumer, one way, unbuffered: a
//                       send returns once the receiver took the value.
//                       Baseline: a mutex+condvar rendezvous slot (moodycamel
//                       has no rendezvous: no row).
//   buffered_1p1c/*     one producer, one consumer, capacity 64. moodycamel:
//                       BlockingConcurrentQueue bounded to 64 by a
//                       LightweightSemaphore counting free slots.
//   buffered_2p2c/*     two producers, two consumers, capacity 64; the last
//                       producer closes, consumers drain until closed
//                       (moodycamel: it enqueues one end marker per consumer).
//   select4_fanin/*     one producer feeds 4 capacity-64 channels round-robin;
//                       the receiver selects over the 4. Baseline: 4 bounded
//                       queues under one mutex, the receiver waits on one
//                       condvar for "any queue non-empty" and picks one.
//   select_pingpong/*   the ping-pong with both sides using 2-case selects
//                       (the op, or a receive on a quit channel that never
//                       fires). Baseline: the capacity-1 ping-pong whose wait
//                       predicates also test a quit flag.
//   select_nonblock_empty/*  one thread: a 2-case receive select with
//                       on_default on two empty channels (default fires).
//                       Baselines: try_pop on two empty queues.
//   select_nonblock_ready/*  one thread; one iteration = a select {send;
//                       default} into a capacity-1 channel with room, then a
//                       select {recv; default} taking the value back (both
//                       cases ready). Baselines: try_push + try_pop.
//
// Floors (no queue at all; what a hand-off between two threads costs on this
// machine; one iteration = one round trip, i.e. two hand-offs):
//   floor_futex_pingpong  a turn word; each side flips it, FUTEX_WAKEs, and
//                       FUTEX_WAITs (no spinning) until it flips back.
//   floor_yield_pingpong  the same with sched_yield() instead of futex wait
//                       (what a waiter that yields instead of parking pays;
//                       on one CPU: two context switches per round trip).
//   floor_spin_pingpong   two sequence counters on separate cache lines,
//                       each side spins on the other's: the cost of moving a
//                       cache line between CPUs twice (see SpinStep for the
//                       escape when the CPUs are busy). Registered only when
//                       the process may use two CPUs (pinned to one, a spin
//                       only ends when the scheduler preempts the spinner);
//                       its two threads are pinned to two of them, so that
//                       it measures two CPUs whatever CPU the kernel starts
//                       a new thread on (a spin never parks, so it never
//                       gets moved apart).
//   floor_rendezvous_pingpong  the least an unbuffered channel can do: to
//                       receive, a side publishes its mailbox in the
//                       channel's word and spins on the mailbox; the sender
//                       spins until a mailbox is published, takes it, fills
//                       it. No lock, no claim, no queue: the announce-then-
//                       find of Go's sudog, four cache-line moves in a
//                       row per round trip where the spin floor has two.
//                       Registered and pinned as floor_spin_pingpong.
//   floor_spsc_ring       buffered_1p1c's least: one producer, one consumer
//                       and a bare ring of 64 ints (Lamport's queue; each
//                       side reads the other's index only when its cached
//                       copy says full or empty), spinning, no blocking,
//                       no second producer or consumer possible. Registered
//                       and pinned as floor_spin_pingpong. One iteration =
//                       one item, as for buffered_1p1c.
//   floor_spsc_ring_yield  the same ring, a side yielding its CPU
//                       (sched_yield) at each look that finds it full or
//                       empty: buffered_1p1c's least with the two threads on
//                       one CPU (pinned: two context switches per 64 items,
//                       and the ring's ~1 ns per item). Registered always,
//                       not pinned; a floor only with both threads on one
//                       CPU (the table shows it pinned only).
//   floor_mpmc_ring_yield  Vyukov's bounded multi-producer multi-consumer
//                       ring of 64 cells, bare (a cell per line, one
//                       compare-and-swap per operation: the algorithm of a
//                       buffered dchan channel's fast paths, without its
//                       flags, close, parked waiters or prefetch), yielding
//                       as floor_spsc_ring_yield: what any channel built on
//                       it pays for buffered_1p1c with both threads on one
//                       CPU. Registered always, not pinned (pinned only in
//                       the table, as floor_spsc_ring_yield).
//
// Timing: every benchmark runs batches of a fixed number of items. Each batch
// spawns its partner threads (exactly the threads the workload names; no
// ->Threads()), waits until they are running, and times on the driver thread
// from releasing them to the moment the last participant finished
// (UseManualTime). Reported time is wall time per round trip / per item.
//
// Run bench/run_chan.sh for the full comparison with Go.
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
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
#include "concurrentqueue/blockingconcurrentqueue.h"
#include "concurrentqueue/concurrentqueue.h"
#include "concurrentqueue/lightweightsemaphore.h"
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

  // Non-blocking forms: false / std::nullopt when full / empty (or closed).
  bool try_push(T v) {
    std::unique_lock<std::mutex> lock(mu_);
    if (closed_ || count_ == buf_.size()) return false;
    buf_[(head_ + count_) % buf_.size()] = std::move(v);
    ++count_;
    lock.unlock();
    not_empty_.notify_one();
    return true;
  }
  std::optional<T> try_pop() {
    std::unique_lock<std::mutex> lock(mu_);
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

// Baseline for the unbuffered one-way workload: Go's unbuffered channel on
// a std::mutex + two condvars. push() returns once a pop() took its value.
// Thread-safe; close() makes pop() return std::nullopt and push() false.
class Rendezvous {
 public:
  bool push(int v) {
    std::unique_lock<std::mutex> lock(mu_);
    space_.wait(lock, [&] { return !full_ || closed_; });
    if (closed_) return false;
    value_ = v;
    full_ = true;
    const uint64_t ticket = ++put_;
    lock.unlock();
    item_.notify_one();
    lock.lock();
    // Woken by pop() (the value was taken) or close().
    space_.wait(lock, [&] { return taken_ >= ticket || closed_; });
    return taken_ >= ticket;
  }

  std::optional<int> pop() {
    std::unique_lock<std::mutex> lock(mu_);
    item_.wait(lock, [&] { return full_ || closed_; });
    if (!full_) return std::nullopt;
    const int v = value_;
    full_ = false;
    ++taken_;
    lock.unlock();
    space_.notify_all();  // the sender waiting for "taken", and next senders
    return v;
  }

  void close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    item_.notify_all();
    space_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable item_;   // a value is there (or closed)
  std::condition_variable space_;  // the slot is free / a value was taken
  int value_ = 0;                  // guarded by mu_
  bool full_ = false;
  bool closed_ = false;
  uint64_t put_ = 0;
  uint64_t taken_ = 0;
};

// moodycamel's BlockingConcurrentQueue (lock-free MPMC, a semaphore that
// spins before it sleeps) bounded by a LightweightSemaphore counting free
// slots, as one would build a Go-like bounded queue from it. It has no
// close: close() enqueues an end marker for each of up to kMaxConsumers
// consumers, and pop() returns std::nullopt on one (so each consumer must
// stop at its first std::nullopt, as the workloads do). Values must not be
// kEnd.
class MoodyQueue {
 public:
  static constexpr int kEnd = INT_MIN;
  static constexpr int kMaxConsumers = 4;

  explicit MoodyQueue(std::size_t capacity)
      : slots_(
            static_cast<moodycamel::LightweightSemaphore::ssize_t>(capacity)) {}

  void push(int v) {
    slots_.wait();
    q_.enqueue(v);
  }
  std::optional<int> pop() {
    int v = 0;
    q_.wait_dequeue(v);
    if (v == kEnd) return std::nullopt;
    slots_.signal();
    return v;
  }
  void close() {
    for (int i = 0; i < kMaxConsumers; ++i) q_.enqueue(kEnd);
  }

 private:
  moodycamel::BlockingConcurrentQueue<int> q_;
  moodycamel::LightweightSemaphore slots_;
};

// ---------------------------------------------------------------------------
// Harness.

// Drives `state` in batches of `batch` iterations; `make_batch(n, workers,
// driver)` fills in the participants of one batch of n iterations.
// `apart`: the driver runs on one CPU and its partners on another (the
// spin floors: what two CPUs can do, whatever the kernel's placement of a
// new thread; see MayUseTwoCpus), then the driver gets its CPUs back.
template <class MakeBatch>
void RunBatched(benchmark::State& state, int64_t batch, MakeBatch make_batch,
                bool apart = false) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (apart) sched_getaffinity(0, sizeof(allowed), &allowed);
  const auto pin_to_nth_allowed = [&allowed](int nth) {
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &allowed) && nth-- == 0) {
        CPU_SET(cpu, &one);
        break;
      }
    }
    sched_setaffinity(0, sizeof(one), &one);
  };
  while (state.KeepRunningBatch(batch)) {
    std::vector<std::function<void()>> workers;
    std::function<void()> driver;
    make_batch(batch, workers, driver);
    std::function<void()> before_release;
    if (apart) {
      pin_to_nth_allowed(1);  // the partners, spawned next, inherit it
      before_release = [&] { pin_to_nth_allowed(0); };
    }
    state.SetIterationTime(
        dchan::bench::RunBatch(workers, driver, {}, before_release).all);
  }
  if (apart) sched_setaffinity(0, sizeof(allowed), &allowed);
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

struct MoodyImpl {
  using Queue = std::shared_ptr<MoodyQueue>;
  static constexpr std::size_t kPingPongCap = 1;
  static Queue make(std::size_t cap) {
    return std::make_shared<MoodyQueue>(cap);
  }
  static void send(Queue& q, int v) { q->push(v); }
  static std::optional<int> recv(Queue& q) { return q->pop(); }
  static void close(Queue& q) { q->close(); }
};

// The unbuffered one-way workload's two implementations.
struct DchanRendezvousImpl {
  using Queue = dchan::Chan<int>;
  static Queue make() { return dchan::make_chan<int>(); }
  static void send(Queue& q, int v) { q.send(v); }
  static std::optional<int> recv(Queue& q) { return q.recv(); }
};

struct MutexCvRendezvousImpl {
  using Queue = std::shared_ptr<Rendezvous>;
  static Queue make() { return std::make_shared<Rendezvous>(); }
  static void send(Queue& q, int v) { q->push(v); }
  static std::optional<int> recv(Queue& q) { return q->pop(); }
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
void BM_Unbuffered1P1C(benchmark::State& state) {
  RunBatched(state, kPingPongBatch, [](int64_t n, auto& workers, auto& driver) {
    auto q = std::make_shared<typename Impl::Queue>(Impl::make());
    workers.push_back([=] {
      for (int64_t i = 0; i < n; ++i) Impl::send(*q, static_cast<int>(i));
    });
    driver = [=] {
      for (int64_t i = 0; i < n; ++i) benchmark::DoNotOptimize(Impl::recv(*q));
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

// Non-blocking select, one thread (no partner; main() started and joined a
// thread already, so atomics are real).
void BM_SelectNonblockEmpty_Dchan(benchmark::State& state) {
  auto a = dchan::make_chan<int>();
  auto b = dchan::make_chan<int>();
  int64_t defaults = 0;
  for (auto _ : state) {
    dchan::select(dchan::on_recv(a), dchan::on_recv(b),
                  dchan::on_default([&] { ++defaults; }));
  }
  if (defaults != state.iterations()) state.SkipWithError("a case fired");
}

void BM_SelectNonblockEmpty_MutexCv(benchmark::State& state) {
  BoundedQueue<int> a(1), b(1);
  int64_t defaults = 0;
  for (auto _ : state) {
    if (!a.try_pop() && !b.try_pop()) ++defaults;
  }
  if (defaults != state.iterations()) state.SkipWithError("a queue popped");
}

void BM_SelectNonblockEmpty_Moody(benchmark::State& state) {
  moodycamel::ConcurrentQueue<int> a, b;
  int64_t defaults = 0;
  for (auto _ : state) {
    int v;
    if (!a.try_dequeue(v) && !b.try_dequeue(v)) ++defaults;
  }
  if (defaults != state.iterations()) state.SkipWithError("a queue popped");
}

void BM_SelectNonblockReady_Dchan(benchmark::State& state) {
  auto c = dchan::make_chan<int>(1);
  int64_t sum = 0, defaults = 0;
  int i = 0;
  for (auto _ : state) {
    dchan::select(dchan::on_send(c, i++),
                  dchan::on_default([&] { ++defaults; }));
    dchan::select(dchan::on_recv(c, [&](std::optional<int> v) { sum += *v; }),
                  dchan::on_default([&] { ++defaults; }));
  }
  benchmark::DoNotOptimize(sum);
  if (defaults != 0) state.SkipWithError("a default fired");
}

void BM_SelectNonblockReady_MutexCv(benchmark::State& state) {
  BoundedQueue<int> c(1);
  int64_t sum = 0, defaults = 0;
  int i = 0;
  for (auto _ : state) {
    if (!c.try_push(i++)) ++defaults;
    if (auto v = c.try_pop()) {
      sum += *v;
    } else {
      ++defaults;
    }
  }
  benchmark::DoNotOptimize(sum);
  if (defaults != 0) state.SkipWithError("a default fired");
}

void BM_SelectNonblockReady_Moody(benchmark::State& state) {
  moodycamel::ConcurrentQueue<int> c;
  int64_t sum = 0, defaults = 0;
  int i = 0;
  for (auto _ : state) {
    if (!c.try_enqueue(i++)) ++defaults;
    int v;
    if (c.try_dequeue(v)) {
      sum += v;
    } else {
      ++defaults;
    }
  }
  benchmark::DoNotOptimize(sum);
  if (defaults != 0) state.SkipWithError("a default fired");
}

// ---------------------------------------------------------------------------
// Floors: hand-offs between two threads with nothing else around them.

void FutexWait(std::atomic<uint32_t>& word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE,
          expected, nullptr, nullptr, 0);
}
void FutexWake(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, 1,
          nullptr, nullptr, 0);
}

// turn: 0 = the driver's turn, 1 = the partner's. Each side hands the turn
// over with a store and a FUTEX_WAKE, then sleeps in FUTEX_WAIT until the
// turn comes back: every hand-off is a wake-up of a sleeping thread (or a
// failed wait when the partner was quicker).
void BM_FloorFutexPingPong(benchmark::State& state) {
  RunBatched(state, kPingPongBatch, [](int64_t n, auto& workers, auto& driver) {
    auto turn = std::make_shared<std::atomic<uint32_t>>(0);
    workers.push_back([=] {
      for (int64_t i = 0; i < n; ++i) {
        while (turn->load(std::memory_order_acquire) == 0) FutexWait(*turn, 0);
        turn->store(0, std::memory_order_release);
        FutexWake(*turn);
      }
    });
    driver = [=] {
      for (int64_t i = 0; i < n; ++i) {
        turn->store(1, std::memory_order_release);
        FutexWake(*turn);
        while (turn->load(std::memory_order_acquire) == 1) FutexWait(*turn, 1);
      }
    };
  });
}

// Sequence counters on separate cache lines; each side waits for the
// other's, calling kWaitStep(polls so far in this wait) between polls.
struct alignas(64) PaddedSeq {
  std::atomic<int64_t> v{0};
};

template <void (*kWaitStep)(int64_t), bool kApart>
void BM_FloorPollPingPong(benchmark::State& state) {
  RunBatched(
      state, kPingPongBatch,
      [](int64_t n, auto& workers, auto& driver) {
        auto seqs = std::make_shared<std::array<PaddedSeq, 2>>();
        workers.push_back([=] {
          auto& [ping, pong] = *seqs;
          for (int64_t i = 1; i <= n; ++i) {
            for (int64_t k = 0; ping.v.load(std::memory_order_acquire) != i;
                 ++k) {
              kWaitStep(k);
            }
            pong.v.store(i, std::memory_order_release);
          }
        });
        driver = [=] {
          auto& [ping, pong] = *seqs;
          for (int64_t i = 1; i <= n; ++i) {
            ping.v.store(i, std::memory_order_release);
            for (int64_t k = 0; pong.v.load(std::memory_order_acquire) != i;
                 ++k) {
              kWaitStep(k);
            }
          }
        };
      },
      kApart);
}

// A pure spin while the partner runs on the other CPU (it answers within a
// few hundred `pause`s). Only when both threads share a CPU (the other one
// busy with something else) does a wait reach 1 << 14 polls; it then yields
// every 1 << 14 polls, so that such a run ends in bounded time (a CI smoke
// run on a busy machine) instead of one scheduler time slice per hand-off.
void SpinStep(int64_t polls) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
  if ((polls & ((1 << 14) - 1)) == (1 << 14) - 1) sched_yield();
}
void YieldStep(int64_t) { sched_yield(); }

// A receiver's mailbox and a channel reduced to the one word through which
// a receiver announces it (see floor_rendezvous_pingpong). One sender per
// channel, so the sender takes the announced mailbox with a plain store.
struct alignas(64) Mailbox {
  std::atomic<bool> full{false};
  int64_t value = 0;
};
struct alignas(64) AnnounceWord {
  std::atomic<Mailbox*> waiting{nullptr};
};

int64_t RendezvousRecv(AnnounceWord& ch, Mailbox& box) {
  box.full.store(false, std::memory_order_relaxed);
  ch.waiting.store(&box, std::memory_order_release);
  for (int64_t k = 0; !box.full.load(std::memory_order_acquire); ++k) {
    SpinStep(k);
  }
  return box.value;
}

void RendezvousSend(AnnounceWord& ch, int64_t v) {
  Mailbox* box;
  for (int64_t k = 0;
       (box = ch.waiting.load(std::memory_order_acquire)) == nullptr; ++k) {
    SpinStep(k);
  }
  ch.waiting.store(nullptr, std::memory_order_relaxed);
  box->value = v;
  box->full.store(true, std::memory_order_release);
}

void BM_FloorRendezvousPingPong(benchmark::State& state) {
  RunBatched(
      state, kPingPongBatch,
      [](int64_t n, auto& workers, auto& driver) {
        struct Shared {
          AnnounceWord ping, pong;
          Mailbox driver_box, worker_box;
        };
        auto s = std::make_shared<Shared>();
        workers.push_back([=] {
          for (int64_t i = 0; i < n; ++i) {
            RendezvousSend(s->pong, RendezvousRecv(s->ping, s->worker_box));
          }
        });
        driver = [=] {
          int64_t sum = 0;
          for (int64_t i = 0; i < n; ++i) {
            RendezvousSend(s->ping, i);
            sum += RendezvousRecv(s->pong, s->driver_box);
          }
          benchmark::DoNotOptimize(sum);
        };
      },
      /*apart=*/true);
}

// Lamport's single-producer single-consumer ring with cached indices (see
// floor_spsc_ring): the producer writes slots and `tail`, the consumer
// `head`, each on lines of their own.
struct SpscRing {
  static constexpr int64_t kCap = kBufferCap;
  alignas(64) std::atomic<int64_t> tail{0};
  alignas(64) std::atomic<int64_t> head{0};
  alignas(64) int slots[kCap];
};

template <void (*Step)(int64_t), bool kApart>
void BM_FloorSpscRing(benchmark::State& state) {
  RunBatched(
      state, kItemBatch,
      [](int64_t n, auto& workers, auto& driver) {
        auto r = std::make_shared<SpscRing>();
        workers.push_back([=] {
          int64_t head_seen = 0;
          for (int64_t t = 0; t < n; ++t) {
            for (int64_t k = 0; t - head_seen == SpscRing::kCap; ++k) {
              head_seen = r->head.load(std::memory_order_acquire);
              if (t - head_seen == SpscRing::kCap) Step(k);
            }
            r->slots[t % SpscRing::kCap] = static_cast<int>(t);
            r->tail.store(t + 1, std::memory_order_release);
          }
        });
        driver = [=] {
          int64_t tail_seen = 0;
          for (int64_t h = 0; h < n; ++h) {
            for (int64_t k = 0; h == tail_seen; ++k) {
              tail_seen = r->tail.load(std::memory_order_acquire);
              if (h == tail_seen) Step(k);
            }
            benchmark::DoNotOptimize(r->slots[h % SpscRing::kCap]);
            r->head.store(h + 1, std::memory_order_release);
          }
        };
      },
      kApart);
}

// Vyukov's bounded multi-producer multi-consumer ring, bare (see
// floor_mpmc_ring_yield): a cell per line, each with a turn word; an end
// claims its position with one compare-and-swap. The algorithm of a dchan
// buffered channel's fast paths, less its flags, close, parked waiters and
// prefetch.
struct MpmcRing {
  static constexpr uint64_t kCap = kBufferCap;
  struct alignas(64) Cell {
    std::atomic<uint64_t> turn{0};  // 2 * lap: free; 2 * lap + 1: full
    int value = 0;
  };
  alignas(64) std::atomic<uint64_t> tail{0};
  alignas(64) std::atomic<uint64_t> head{0};
  Cell cells[kCap];

  bool try_push(int v) {
    uint64_t t = tail.load(std::memory_order_acquire);
    for (;;) {
      Cell& c = cells[t % kCap];
      const uint64_t free_turn = 2 * (t / kCap);
      const uint64_t turn = c.turn.load(std::memory_order_acquire);
      if (turn == free_turn) {
        if (tail.compare_exchange_weak(t, t + 1, std::memory_order_seq_cst,
                                       std::memory_order_acquire)) {
          c.value = v;
          c.turn.store(free_turn + 1, std::memory_order_release);
          return true;
        }
      } else if (static_cast<int64_t>(turn - free_turn) < 0) {
        return false;  // full
      } else {
        t = tail.load(std::memory_order_acquire);
      }
    }
  }
  bool try_pop(int& out) {
    uint64_t h = head.load(std::memory_order_acquire);
    for (;;) {
      Cell& c = cells[h % kCap];
      const uint64_t full_turn = 2 * (h / kCap) + 1;
      const uint64_t turn = c.turn.load(std::memory_order_acquire);
      if (turn == full_turn) {
        if (head.compare_exchange_weak(h, h + 1, std::memory_order_seq_cst,
                                       std::memory_order_acquire)) {
          out = c.value;
          c.turn.store(full_turn + 1, std::memory_order_release);
          return true;
        }
      } else if (static_cast<int64_t>(turn - full_turn) < 0) {
        return false;  // empty
      } else {
        h = head.load(std::memory_order_acquire);
      }
    }
  }
};

template <void (*Step)(int64_t)>
void BM_FloorMpmcRing(benchmark::State& state) {
  RunBatched(state, kItemBatch, [](int64_t n, auto& workers, auto& driver) {
    auto r = std::make_shared<MpmcRing>();
    workers.push_back([=] {
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t k = 0; !r->try_push(static_cast<int>(t)); ++k) Step(k);
      }
    });
    driver = [=] {
      for (int64_t h = 0; h < n; ++h) {
        int v = 0;
        for (int64_t k = 0; !r->try_pop(v); ++k) Step(k);
        benchmark::DoNotOptimize(v);
      }
    };
  });
}

bool MayUseTwoCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) >= 2;
}

void Register(const char* name, void (*fn)(benchmark::State&)) {
  benchmark::RegisterBenchmark(name, fn)->UseManualTime()->Unit(
      benchmark::kNanosecond);
}

void RegisterSingleThread(const char* name, void (*fn)(benchmark::State&)) {
  benchmark::RegisterBenchmark(name, fn)->UseRealTime()->Unit(
      benchmark::kNanosecond);
}

}  // namespace

int main(int argc, char** argv) {
  // glibc uses real atomics only once a second thread has existed.
  std::thread([] {}).join();

  Register("pingpong/dchan", BM_PingPong<DchanImpl>);
  Register("pingpong/mutex_cv", BM_PingPong<MutexCvImpl>);
  Register("pingpong/moodycamel", BM_PingPong<MoodyImpl>);
  Register("unbuffered_1p1c/dchan", BM_Unbuffered1P1C<DchanRendezvousImpl>);
  Register("unbuffered_1p1c/mutex_cv",
           BM_Unbuffered1P1C<MutexCvRendezvousImpl>);
  Register("buffered_1p1c/dchan", BM_Buffered1P1C<DchanImpl>);
  Register("buffered_1p1c/mutex_cv", BM_Buffered1P1C<MutexCvImpl>);
  Register("buffered_1p1c/moodycamel", BM_Buffered1P1C<MoodyImpl>);
  Register("buffered_2p2c/dchan", BM_Buffered2P2C<DchanImpl>);
  Register("buffered_2p2c/mutex_cv", BM_Buffered2P2C<MutexCvImpl>);
  Register("buffered_2p2c/moodycamel", BM_Buffered2P2C<MoodyImpl>);
  Register("select4_fanin/dchan", BM_Select4FanIn_Dchan);
  Register("select4_fanin/mutex_cv", BM_Select4FanIn_MutexCv);
  Register("select_pingpong/dchan", BM_SelectPingPong_Dchan);
  Register("select_pingpong/mutex_cv", BM_SelectPingPong_MutexCv);
  RegisterSingleThread("select_nonblock_empty/dchan",
                       BM_SelectNonblockEmpty_Dchan);
  RegisterSingleThread("select_nonblock_empty/mutex_cv",
                       BM_SelectNonblockEmpty_MutexCv);
  RegisterSingleThread("select_nonblock_empty/moodycamel",
                       BM_SelectNonblockEmpty_Moody);
  RegisterSingleThread("select_nonblock_ready/dchan",
                       BM_SelectNonblockReady_Dchan);
  RegisterSingleThread("select_nonblock_ready/mutex_cv",
                       BM_SelectNonblockReady_MutexCv);
  RegisterSingleThread("select_nonblock_ready/moodycamel",
                       BM_SelectNonblockReady_Moody);
  Register("floor_futex_pingpong/raw", BM_FloorFutexPingPong);
  Register("floor_yield_pingpong/raw",
           BM_FloorPollPingPong<YieldStep, /*kApart=*/false>);
  Register("floor_spsc_ring_yield/raw",
           BM_FloorSpscRing<YieldStep, /*kApart=*/false>);
  Register("floor_mpmc_ring_yield/raw", BM_FloorMpmcRing<YieldStep>);
  if (MayUseTwoCpus()) {
    Register("floor_spin_pingpong/raw",
             BM_FloorPollPingPong<SpinStep, /*kApart=*/true>);
    Register("floor_rendezvous_pingpong/raw", BM_FloorRendezvousPingPong);
    Register("floor_spsc_ring/raw",
             BM_FloorSpscRing<SpinStep, /*kApart=*/true>);
  }

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
