// dchan/group.h — fork-join groups of tasks (Go's golang.org/x/sync/errgroup).
//
//   dchan::Group g(4);                    // at most 4 tasks at a time
//   for (const std::string& url : urls) {
//     g.go([url] { fetch(url); });        // blocks while 4 are running
//   }
//   g.wait();                             // all done; rethrows the first error
//
// A Group runs tasks concurrently with dchan::go and waits for all of them.
// An exception escaping a task does not end the process (unlike go()): the
// Group keeps the first one and wait() rethrows it once every task has
// finished (errgroup's "Wait returns the first non-nil error"). Later
// exceptions are dropped. There is no cancellation: the other tasks run to
// completion (check a flag or close a channel to stop them early).
//
// A Group is a cheap, copyable handle (copies name the same group, so tasks
// may start further tasks in their own group); a default-constructed Group
// allocates a fresh one without a limit. Moving a handle copies it. It may
// be reused after wait(); the first exception stays recorded, as in Go.
//
// Memory ordering: everything a task did happens-before wait() returns (or
// throws) for the round that includes it.
//
// Thread safety: every member function may be called concurrently from any
// number of threads on copies of the same handle. A single Group object (the
// handle itself) follows the usual rules for std::shared_ptr.
#ifndef DCHAN_GROUP_H_
#define DCHAN_GROUP_H_

#include <exception>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

#include "absl/functional/any_invocable.h"

namespace dchan {

namespace detail {
class GroupCore;
}  // namespace detail

class Group {
 public:
  // A group without a concurrency limit. Throws std::bad_alloc.
  Group();

  // A group that runs at most `limit` tasks at a time (errgroup's SetLimit).
  // Throws dchan::Error (kInvalidArgument) if limit < 1.
  explicit Group(int limit);

  // Copies share the group; "moving" copies too.
  Group(const Group&) = default;
  Group& operator=(const Group&) = default;
  ~Group() = default;

  // Runs fn() as a new task of this group. Blocks while `limit` tasks are
  // running (never without a limit). Throws what dchan::go throws (the task
  // has then not started and does not count); exceptions thrown by fn are
  // reported by wait(), not here.
  template <class F>
  requires std::is_invocable_v < std::decay_t<F>
  & > void go(F&& fn) {
    start(absl::AnyInvocable<void() &&>(
        [fn = std::decay_t<F>(std::forward<F>(fn))]() mutable {
          std::invoke(fn);
        }));
  }

  // As go(), but if `limit` tasks are running it does not start fn and
  // returns false (errgroup's TryGo). Never blocks.
  template <class F>
  requires std::is_invocable_v < std::decay_t<F>
  & > bool try_go(F&& fn) {
    return try_start(absl::AnyInvocable<void() &&>(
        [fn = std::decay_t<F>(std::forward<F>(fn))]() mutable {
          std::invoke(fn);
        }));
  }

  // Blocks until every task started so far (and every task they started
  // before finishing) has finished, then rethrows the first exception any
  // task of this group threw, if one did.
  void wait();

  friend bool operator==(const Group& a, const Group& b) noexcept {
    return a.core_ == b.core_;
  }

 private:
  void start(absl::AnyInvocable<void() &&> task);
  bool try_start(absl::AnyInvocable<void() &&> task);

  std::shared_ptr<detail::GroupCore> core_;
};

}  // namespace dchan

#endif  // DCHAN_GROUP_H_
