// The timer service behind dchan::after(): one thread, a min-heap of
// deadlines. It is created on first use and deliberately never destroyed, so
// a process may exit while timers are pending (as in Go).
#include <condition_variable>
#include <mutex>
#include <queue>
#include <thread>
#include <vector>

#include "dchan/select.h"

namespace dchan {
namespace {

using Clock = std::chrono::steady_clock;

// Delivers a timer's value. Capacity 1 and this is the only send: it never
// blocks. Marked fired after the send, so that "fired and empty" means
// somebody drained it (select_on_broker relies on that).
void fire(Chan<Clock::time_point>& ch) {
  ch.try_send(Clock::now());
  detail::ChanCore* core = detail::state_of(ch);
  core->lock();
  core->timer_fired_ = true;
  core->unlock();
}

class TimerService {
 public:
  static TimerService& get() {
    static TimerService* service = new TimerService();  // never destroyed
    return *service;
  }

  void add(Clock::time_point when, Chan<Clock::time_point> ch) {
    std::lock_guard<std::mutex> lock(mu_);
    const bool earliest = timers_.empty() || when < timers_.top().when;
    timers_.push(Timer{when, std::move(ch)});
    if (earliest) cv_.notify_one();
  }

 private:
  struct Timer {
    Clock::time_point when;
    Chan<Clock::time_point> ch;
    bool operator>(const Timer& o) const { return when > o.when; }
  };

  TimerService() {
    std::thread([this] { run(); }).detach();
  }

  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (timers_.empty()) {
        cv_.wait(lock);
        continue;
      }
      const Clock::time_point when = timers_.top().when;
      if (Clock::now() < when) {
        cv_.wait_until(lock, when);
        continue;
      }
      Chan<Clock::time_point> ch = timers_.top().ch;
      timers_.pop();
      lock.unlock();
      fire(ch);
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
};

}  // namespace

Chan<std::chrono::steady_clock::time_point> after(
    std::chrono::steady_clock::duration d) {
  auto ch = make_chan<Clock::time_point>(1);
  const Clock::time_point when = detail::deadline_after(d);
  detail::state_of(ch)->timer_deadline_ = when;  // before anyone sees ch
  if (d <= Clock::duration::zero()) {
    fire(ch);
  } else {
    TimerService::get().add(when, ch);
  }
  return ch;
}

}  // namespace dchan
