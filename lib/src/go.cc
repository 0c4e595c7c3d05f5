// dchan::go: a process-wide pool of threads, each running one goroutine at a
// time.
//
// Go's shape, with threads for Ms: go() appends the task to a run queue and
// makes sure there are at least as many awake idle workers as queued tasks
// (awake_: spinning, or woken and about to look at the queue). If there are
// not, it wakes the most recently parked worker (an intrusive LIFO list, so
// recently used threads stay warm and the others age out) or starts a new
// thread. A queued task therefore always has a worker on its way and never
// waits behind a goroutine that blocks. A worker that finishes a task looks
// at the queue first (so "start one, wait for it, start the next" is served
// by the thread that just finished, not by a cross-CPU wake-up), spins for
// about spin_budget() (so a go() that follows soon costs no system call),
// then parks until woken or until the idle timeout passes, when it leaves
// the pool.
//
// The pool is created on first use and never destroyed; its threads are
// detached. Process exit therefore neither joins nor destroys anything a
// running goroutine may be using.
#include "dchan/go.h"

#include <cxxabi.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <typeinfo>
#include <utility>

#include "dchan/detail/futex.h"
#include "dchan/detail/waiter.h"

namespace dchan::detail {
namespace {

using Clock = std::chrono::steady_clock;
using Task = absl::AnyInvocable<void() &&>;

// Values of Worker::word.
constexpr uint32_t kParked = 0;  // asleep in the idle list
constexpr uint32_t kWoken = 1;   // taken off the idle list by go()

struct Worker {
  std::atomic<uint32_t> word{kWoken};
  Worker* prev = nullptr;  // idle list links, guarded by Pool::mu_
  Worker* next = nullptr;
  bool parked = false;  // in the idle list; guarded by Pool::mu_
};

std::string type_name(const std::type_info* type) {
  if (type == nullptr) return "unknown";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(
      abi::__cxa_demangle(type->name(), nullptr, nullptr, &status), std::free);
  return status == 0 && name != nullptr ? name.get() : type->name();
}

// Go's behaviour for a panic nobody recovered: message on stderr, exit 2.
[[noreturn]] void die_of_panic(const char* what) {
  const std::string type = type_name(abi::__cxa_current_exception_type());
  std::fprintf(stderr,
               "panic: %s\n\n[an exception of type %s escaped a goroutine "
               "started by dchan::go]\n",
               what, type.c_str());
  std::fflush(stderr);
  std::_Exit(2);
}

void run_task(Task& task) noexcept {
  try {
    std::move(task)();
  } catch (const std::exception& e) {
    die_of_panic(e.what());
  } catch (...) {
    die_of_panic("(not a std::exception)");
  }
}

class Pool {
 public:
  void launch(Task task) {
    Worker* wake = nullptr;
    uint64_t id;
    {
      std::unique_lock<Lock> hold(mu_);
      id = next_id_++;
      queue_.push_back({id, std::move(task)});
      queued_.store(queue_.size(), std::memory_order_relaxed);
      // Every queued task needs an awake worker that will take it; one more
      // is needed now unless enough are awake already.
      if (awake() >= queue_.size()) return;
      if (threads_ > parked_ + awake() && spin_budget() > 0) {
        // Some worker is running a task and may be about to finish (the
        // "start one, wait for it, start the next" pattern): give it a
        // moment instead of paying for a cross-CPU wake-up. Bounded, so a
        // blocked goroutine delays go() by at most about a microsecond.
        hold.unlock();
        const int spins = spin_budget() / 8;
        for (int i = 0; i < spins; ++i) {
          spin_pause();
          if (awake_.load(std::memory_order_relaxed) >=
              queued_.load(std::memory_order_relaxed)) {
            break;
          }
        }
        hold.lock();
        if (awake() >= queue_.size()) return;
      }
      awake_.fetch_add(1, std::memory_order_relaxed);
      if (idle_head_ != nullptr) {
        wake = idle_head_;
        unlink_locked(wake);
      } else {
        ++threads_;
      }
    }
    if (wake != nullptr) {
      wake->word.store(kWoken, std::memory_order_release);
      futex_wake_one(wake->word);
      return;
    }
    try {
      std::thread([this] { run(); }).detach();
    } catch (...) {
      std::lock_guard<Lock> hold(mu_);
      --threads_;
      awake_.fetch_sub(1, std::memory_order_relaxed);
      for (auto it = queue_.begin(); it != queue_.end(); ++it) {
        if (it->first == id) {  // not taken by another worker: undo go()
          queue_.erase(it);
          queued_.store(queue_.size(), std::memory_order_relaxed);
          throw;
        }
      }
      // Another worker already runs the task: go() has succeeded.
    }
  }

  GoPoolStats stats() {
    std::lock_guard<Lock> hold(mu_);
    return GoPoolStats{threads_, parked_ + awake()};
  }

  void set_idle_timeout(Clock::duration timeout) {
    idle_timeout_ns_.store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count(),
        std::memory_order_relaxed);
  }

 private:
  // A worker thread. It starts awake (counted in awake_ by launch()).
  void run() {
    auto w = std::make_unique<Worker>();
    bool ran = false;  // the last pass ran a task
    for (;;) {
      Task task;
      {
        std::lock_guard<Lock> hold(mu_);
        if (!queue_.empty()) {
          task = std::move(queue_.front().second);
          queue_.pop_front();
          queued_.store(queue_.size(), std::memory_order_relaxed);
          awake_.fetch_sub(1, std::memory_order_relaxed);
        }
      }
      if (task) {
        run_task(task);
        task = nullptr;  // release what the goroutine captured
        std::lock_guard<Lock> hold(mu_);
        awake_.fetch_add(1, std::memory_order_relaxed);
        ran = true;
        continue;
      }
      // Nothing queued. A worker that has just run a task spins a little (a
      // go() that comes soon then costs no system call); one that was woken
      // for work someone else took parks again at once rather than spin on
      // a CPU the launcher may need.
      bool found = false;
      for (int i = ran ? spin_budget() : 0; i > 0 && !found; --i) {
        spin_pause();
        found = queued_.load(std::memory_order_relaxed) > 0;
      }
      ran = false;
      if (found || park(w.get())) continue;
      return;  // retired; w is freed
    }
  }

  // Parks an awake worker with nothing to do until go() wakes it (true; it
  // is then counted awake again) or the idle timeout passes (false: it has
  // left the pool).
  bool park(Worker* w) {
    {
      std::lock_guard<Lock> hold(mu_);
      if (!queue_.empty()) return true;
      awake_.fetch_sub(1, std::memory_order_relaxed);
      w->word.store(kParked, std::memory_order_relaxed);
      w->parked = true;
      w->prev = nullptr;
      w->next = idle_head_;
      if (idle_head_ != nullptr) idle_head_->prev = w;
      idle_head_ = w;
      ++parked_;
    }
    auto deadline =
        Clock::now() + std::chrono::nanoseconds(
                           idle_timeout_ns_.load(std::memory_order_relaxed));
    while (w->word.load(std::memory_order_acquire) == kParked) {
      if (!futex_wait_until(w->word, kParked, deadline) &&
          w->word.load(std::memory_order_acquire) == kParked) {
        std::lock_guard<Lock> hold(mu_);
        if (w->parked) {  // nobody claimed it: retire
          unlink_locked(w);
          --threads_;
          return false;
        }
        // go() took it off the list and is about to wake it.
        deadline = Clock::time_point::max();
      }
    }
    return true;
  }

  void unlink_locked(Worker* w) {
    (w->prev != nullptr ? w->prev->next : idle_head_) = w->next;
    if (w->next != nullptr) w->next->prev = w->prev;
    w->prev = w->next = nullptr;
    w->parked = false;
    --parked_;
  }

  // The channels' lock: go() and the workers hold it for a few instructions
  // each, and it spins briefly before it sleeps where std::mutex sleeps at
  // once (with it, go_spawn64_wait took 697-875 ns per task, now 424-468).
  Lock mu_;
  std::deque<std::pair<uint64_t, Task>> queue_;  // guarded by mu_
  std::atomic<std::size_t> queued_{0};  // queue_.size(), polled by spinners
  uint64_t next_id_ = 0;                // guarded by mu_
  Worker* idle_head_ = nullptr;  // parked workers, most recent first; mu_
  std::size_t threads_ = 0;      // guarded by mu_
  std::size_t parked_ = 0;       // guarded by mu_
  // Workers not running a task and not parked (spinning, or woken or just
  // started and about to look at the queue). Written under mu_; read without
  // it only by go()'s bounded wait.
  std::atomic<std::size_t> awake_{0};
  std::size_t awake() const { return awake_.load(std::memory_order_relaxed); }
  std::atomic<int64_t> idle_timeout_ns_{
      std::chrono::duration_cast<std::chrono::nanoseconds>(kGoIdleTimeout)
          .count()};
};

// Never destroyed: goroutines may outlive main().
Pool& pool() {
  static Pool* const p = new Pool;
  return *p;
}

}  // namespace

void go_task(Task task) { pool().launch(std::move(task)); }

GoPoolStats go_pool_stats() { return pool().stats(); }

void set_go_idle_timeout(Clock::duration timeout) {
  pool().set_idle_timeout(timeout);
}

}  // namespace dchan::detail
