// server/src/reaper.h — ends sessions that have been silent for their TTL.
//
// One thread for the whole broker (never one per session). Every period it
// asks for the live sessions and calls Session::expire_if_silent() on each;
// the period is a quarter of the shortest TTL among them, at most
// `max_period` and at least a millisecond, so a silent session ends within
// about 1.25 × its TTL. After each round it runs `each_period`, if given
// (the broker's sweep of objects nobody refers to any more).
//
// Thread safety: stop() may be called from any thread, any number of
// times; the destructor stops the thread and joins it.
#ifndef DCHAN_SERVER_REAPER_H_
#define DCHAN_SERVER_REAPER_H_

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "session.h"

namespace dchan::server {

class Reaper {
 public:
  // Lists the sessions to check. Called on the reaper's thread, with no
  // lock of the reaper held.
  using ListSessions =
      absl::AnyInvocable<std::vector<std::shared_ptr<Session>>()>;

  explicit Reaper(
      ListSessions list,
      std::chrono::milliseconds max_period = std::chrono::milliseconds(100),
      absl::AnyInvocable<void()> each_period = nullptr);
  ~Reaper();
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;

  // Stops the thread and waits for it (a sweep in progress finishes).
  void stop();

 private:
  void run();

  ListSessions list_;                       // only the reaper's thread calls it
  absl::AnyInvocable<void()> each_period_;  // likewise
  const std::chrono::milliseconds max_period_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex join_mu_;  // serialises stop()'s join
  std::thread thread_;
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_REAPER_H_
