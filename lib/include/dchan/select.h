// dchan/select.h — Go's select statement.
//
//   std::size_t i = dchan::select(
//       dchan::on_recv(jobs, [&](std::optional<Job> j) { ... }),
//       dchan::on_send(results, r, [&] { ... }),
//       dchan::on_recv(dchan::after(50ms), [&](auto) { timed_out = true; }));
//
// select() runs exactly one case and returns its index (0-based, in argument
// order). It blocks until some case can proceed, unless an on_default case is
// present, which runs when none can proceed at once. When several cases are
// ready, one is chosen uniformly at random. A case that does not fire
// consumes nothing: no value is taken from its channel and a send case's
// value is not delivered (it is destroyed with the case). A case's function
// runs after every channel lock is released, so it may use the same
// channels.
//
// Cases:
//   on_recv(ch, fn)        fn(std::optional<T>): the value, or std::nullopt
//                          when ch is closed and drained. fn may be omitted,
//                          or take no argument.
//   on_send(ch, value, fn) fn(): value was delivered (or buffered). If ch is
//                          closed when this case is chosen, select throws
//                          dchan::Error "send on closed channel" (Go panics).
//   on_default(fn)         fn(): nothing else was ready. At most one.
// Cases on the nil channel never fire; a select with only nil cases and no
// default blocks forever (Go's `select {}`).
//
// For a set of cases known only at run time, put them in a
// std::vector<dchan::Case> (each case converts to Case) and call
// select(std::span<Case>).
//
// How it works (Go's selectgo): lock every channel involved in address
// order, poll the cases in a random order, and if none is ready enqueue one
// waiter on every channel; the first counterparty to claim the waiter fires
// its case, and the others find a stale node and skip it.
//
// after(d) returns a channel that receives the current steady_clock time
// once, `d` from now (Go's time.After). One background timer thread serves
// every after(); the timer keeps its channel until it fires.
//
// Thread safety: select() may run concurrently on any channels. A Case
// object is used by one select at a time.
#ifndef DCHAN_SELECT_H_
#define DCHAN_SELECT_H_

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "dchan/chan.h"
#include "dchan/detail/waiter.h"

namespace dchan {
namespace detail {

// One case of a select, type-erased for the engine in select.cc.
class SelectCase {
 public:
  enum class Kind { kRecv, kSend, kDefault };

  explicit SelectCase(Kind kind) noexcept : kind_(kind) {}
  virtual ~SelectCase() = default;

  Kind kind() const noexcept { return kind_; }
  // The channel, or nullptr for the nil channel and the default case.
  virtual ChanCore* core() const noexcept = 0;
  // Requires core()->lock_. Tries to complete the case now: kOk (then
  // `*to_fire`, if set, is completed after unlocking), kClosed (a receive
  // got "closed"; a send must panic), or kWouldBlock.
  virtual ChanStatus try_locked(WaitNode** to_fire) = 0;
  // Where a counterparty moves the value to (recv) or from (send).
  virtual void* slot() noexcept = 0;
  // Runs the case's function, with no lock held. `ok` false: the channel
  // was closed (a send then throws).
  virtual void finish(bool ok) = 0;

 private:
  const Kind kind_;
};

// Runs one of `cases` as described in the file comment; returns its index.
std::size_t select_cases(SelectCase* const* cases, std::size_t n);

template <class F, class... Args>
void invoke_case_fn(F& fn, Args&&... args) {
  if constexpr (std::is_invocable_v<F&, Args&&...>) {
    fn(std::forward<Args>(args)...);
  } else {
    static_assert(std::is_invocable_v<F&>,
                  "a case function takes the case's value or nothing");
    fn();
  }
}

struct NoFn {
  template <class... Args>
  void operator()(Args&&...) const noexcept {}
};

template <class T, class F>
class RecvCase final : public SelectCase {
 public:
  static constexpr bool kIsDefault = false;
  RecvCase(Chan<T> ch, F fn)
      : SelectCase(Kind::kRecv), ch_(std::move(ch)), fn_(std::move(fn)) {}
  ChanCore* core() const noexcept override { return state_of(ch_); }
  ChanStatus try_locked(WaitNode** to_fire) override {
    return state_of(ch_)->recv_locked(value_, to_fire);
  }
  void* slot() noexcept override { return &value_; }
  void finish(bool) override {
    invoke_case_fn(fn_, std::move(value_));
  }

 private:
  Chan<T> ch_;
  F fn_;
  std::optional<T> value_;
};

template <class T, class F>
class SendCase final : public SelectCase {
 public:
  static constexpr bool kIsDefault = false;
  SendCase(Chan<T> ch, T value, F fn)
      : SelectCase(Kind::kSend),
        ch_(std::move(ch)),
        value_(std::move(value)),
        fn_(std::move(fn)) {}
  ChanCore* core() const noexcept override { return state_of(ch_); }
  ChanStatus try_locked(WaitNode** to_fire) override {
    return state_of(ch_)->send_locked(value_, to_fire);
  }
  void* slot() noexcept override { return &value_; }
  void finish(bool ok) override {
    if (!ok) throw_panic("send on closed channel");
    invoke_case_fn(fn_);
  }

 private:
  Chan<T> ch_;
  T value_;
  F fn_;
};

template <class F>
class DefaultCase final : public SelectCase {
 public:
  static constexpr bool kIsDefault = true;
  explicit DefaultCase(F fn) : SelectCase(Kind::kDefault), fn_(std::move(fn)) {}
  ChanCore* core() const noexcept override { return nullptr; }
  ChanStatus try_locked(WaitNode**) override { return ChanStatus::kWouldBlock; }
  void* slot() noexcept override { return nullptr; }
  void finish(bool) override { invoke_case_fn(fn_); }

 private:
  F fn_;
};

}  // namespace detail

// A receive case; see the file comment.
template <class T, class F = detail::NoFn>
detail::RecvCase<T, F> on_recv(Chan<T> ch, F fn = {}) {
  return detail::RecvCase<T, F>(std::move(ch), std::move(fn));
}

// A send case; see the file comment. `value` is delivered only if this case
// fires.
template <class T, class U, class F = detail::NoFn>
detail::SendCase<T, F> on_send(Chan<T> ch, U&& value, F fn = {}) {
  return detail::SendCase<T, F>(std::move(ch), T(std::forward<U>(value)),
                                std::move(fn));
}

// The default case; see the file comment.
template <class F = detail::NoFn>
detail::DefaultCase<F> on_default(F fn = {}) {
  return detail::DefaultCase<F>(std::move(fn));
}

// A type-erased case, for selects whose cases are known at run time. Made
// from any on_recv / on_send / on_default result.
class Case {
 public:
  template <class C, class = std::enable_if_t<std::is_base_of_v<
                         detail::SelectCase, std::decay_t<C>>>>
  Case(C&& c)  // NOLINT(google-explicit-constructor): cases convert.
      : impl_(std::make_unique<std::decay_t<C>>(std::forward<C>(c))) {}

  detail::SelectCase* get() const noexcept { return impl_.get(); }

 private:
  std::unique_ptr<detail::SelectCase> impl_;
};

// Runs exactly one of `cases`; returns its index. See the file comment.
template <class... Cases>
  requires(sizeof...(Cases) > 0 &&
           (std::is_base_of_v<detail::SelectCase, std::decay_t<Cases>> && ...))
std::size_t select(Cases&&... cases) {
  static_assert(((std::decay_t<Cases>::kIsDefault ? 1 : 0) + ...) <= 1,
                "select() takes at most one on_default case");
  detail::SelectCase* const all[] = {&cases...};
  return detail::select_cases(all, sizeof...(Cases));
}

// The run-time form; Case objects that did not fire can be reused. An empty
// span blocks forever, like Go's `select {}`. More than one default case
// throws dchan::Error (kInvalidArgument).
std::size_t select(std::span<Case> cases);

// A channel that receives the current time once, `d` from now.
Chan<std::chrono::steady_clock::time_point> after(
    std::chrono::steady_clock::duration d);

}  // namespace dchan

#endif  // DCHAN_SELECT_H_
