#include "reaper.h"

#include <algorithm>
#include <utility>

#include "absl/time/time.h"

namespace dchan::server {

Reaper::Reaper(ListSessions list, std::chrono::milliseconds max_period,
               absl::AnyInvocable<void()> each_period)
    : list_(std::move(list)),
      each_period_(std::move(each_period)),
      max_period_(max_period) {
  thread_ = std::thread([this] { run(); });
}

Reaper::~Reaper() { stop(); }

void Reaper::stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  absl::MutexLock lock(&join_mu_);
  if (thread_.joinable()) thread_.join();
}

void Reaper::run() {
  std::chrono::milliseconds period = max_period_;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                           absl::FromChrono(period));
      if (stopping_) return;
    }
    const Session::Clock::time_point now = Session::Clock::now();
    period = max_period_;
    for (const std::shared_ptr<Session>& s : list_()) {
      if (s->expire_if_silent(now) || !s->live()) continue;
      period = std::min(period, s->ttl() / 4);
    }
    period = std::max(period, std::chrono::milliseconds(1));
    if (each_period_) each_period_();
  }
}

}  // namespace dchan::server
