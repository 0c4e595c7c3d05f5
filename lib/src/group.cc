// dchan::Group: a WaitGroup for the tasks, an optional semaphore for the
// limit, and the first exception, all in one shared core that each running
// task keeps alive.
#include "dchan/group.h"

#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "dchan/error.h"
#include "dchan/go.h"
#include "dchan/wait_group.h"
#include "semaphore.h"

namespace dchan {
namespace detail {

class GroupCore {
 public:
  explicit GroupCore(int limit) {
    if (limit > 0) slots_.emplace(static_cast<uint32_t>(limit));
  }

  Semaphore* slots() { return slots_ ? &*slots_ : nullptr; }
  WaitGroup& tasks() { return tasks_; }

  void record(std::exception_ptr e) {
    std::lock_guard<std::mutex> hold(mu_);
    if (first_error_ == nullptr) first_error_ = std::move(e);
  }

  std::exception_ptr first_error() {
    std::lock_guard<std::mutex> hold(mu_);
    return first_error_;
  }

 private:
  WaitGroup tasks_;
  std::optional<Semaphore> slots_;  // free task slots, when limited
  std::mutex mu_;
  std::exception_ptr first_error_;  // guarded by mu_
};

namespace {

// Starts `task` once its slot (if any) is taken.
void launch(const std::shared_ptr<GroupCore>& core,
            absl::AnyInvocable<void() &&> task) {
  core->tasks().add(1);
  try {
    dchan::go([core, task = std::move(task)]() mutable {
      try {
        std::move(task)();
      } catch (...) {
        core->record(std::current_exception());
      }
      if (Semaphore* slots = core->slots()) slots->release();
      core->tasks().done();
    });
  } catch (...) {
    if (Semaphore* slots = core->slots()) slots->release();
    core->tasks().done();
    throw;
  }
}

}  // namespace
}  // namespace detail

Group::Group() : core_(std::make_shared<detail::GroupCore>(0)) {}

Group::Group(int limit) {
  if (limit < 1) {
    throw Error(absl::StatusCode::kInvalidArgument,
                "dchan::Group: limit must be at least 1");
  }
  core_ = std::make_shared<detail::GroupCore>(limit);
}

void Group::start(absl::AnyInvocable<void() &&> task) {
  std::shared_ptr<detail::GroupCore> keep = core_;  // alive while blocked
  if (detail::Semaphore* slots = keep->slots()) slots->acquire();
  detail::launch(keep, std::move(task));
}

bool Group::try_start(absl::AnyInvocable<void() &&> task) {
  detail::Semaphore* slots = core_->slots();
  if (slots != nullptr && !slots->try_acquire()) return false;
  detail::launch(core_, std::move(task));
  return true;
}

void Group::wait() {
  std::shared_ptr<detail::GroupCore> keep = core_;  // alive while blocked
  keep->tasks().wait();
  if (std::exception_ptr e = core_->first_error()) std::rethrow_exception(e);
}

}  // namespace dchan
