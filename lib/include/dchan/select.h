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
// Broker channels: a select whose cases are on channels of one Client (one
// broker session), plus any on_default and after() timer cases, runs as one
// select on the broker; a timer case becomes the select's deadline there.
// A select that mixes broker channels with other local channels, or spans
// several Clients (a "spanning" select), registers on its local channels and
// asks each broker to watch its cases for readiness (consuming nothing);
// when a broker case looks ready first, it is tried without blocking while
// no other case can fire, and the select starts over if another process
// took it first. Watches see only real senders and receivers, so each case
// on an unbuffered broker channel is also *offered* to other spanning
// selects: two offers that can meet (a send and a receive of two selects)
// are matched by the broker, which asks each select in turn to commit —
// the select claims itself exactly as a local counterparty would, and then
// belongs to that offer until the broker commits it (the case fires) or
// aborts it (the other select refused or went away; the select polls every
// case again). While claimed it is "busy": local counterparties skip it,
// and it re-polls after an abort, so nothing waits on a busy select.
// Claims are asked in one global order and never block the broker; an
// unanswered claim times out (the broker's --offer_claim_timeout_ms). See
// "Offers" in proto/dchan/v1/broker.proto. So two spanning selects — one
// sending, one receiving on the same unbuffered broker channel — meet, as
// in Go. Same guarantees in every form: exactly one case fires, no other
// case consumes or delivers anything.
// Offers are made for unbuffered broker channels only: on a buffered one
// the watches see every readiness (a value to take, room to put one). A
// spanning select with a default case polls once and offers nothing (as in
// Go, it never waits for a partner); a broker-side select or a plain
// operation is a real waiter, met through the watch. Progress: an accepted
// claim is aborted only when the other select's attempt has ended (it fired,
// accepted another claim, or timed out), so every abort follows some other
// attempt's end; in theory, selects that keep restarting can abort each
// other's matches more than once in a row before one commits.
//
// For a set of cases known only at run time, put them in a
// std::vector<dchan::Case> (each case converts to Case) and call
// select(std::span<Case>).
//
// How it works (Go's selectgo): lock every channel involved in address
// order, poll the cases in a random order, and if none is ready enqueue one
// waiter on every channel; the first counterparty to claim the waiter fires
// its case, and the others find a stale node and skip it. Unlike Go, a
// select that has fired leaves its nodes on the other channels queued
// (stale) rather than locking each channel again to take them out: the
// thread's next select on such a channel re-registers the same node without
// that channel's lock, so a quit channel that every worker selects on is
// only read, never written, while it does not fire. Whoever meets a stale
// node takes it out. A thread keeps up to 8 such nodes, and takes them out
// when it exits.
//
// after(d) returns a channel that receives the current steady_clock time
// once, `d` from now (Go's time.After). One background timer thread serves
// every after(); the timer keeps its channel until it fires.
//
// Lifetimes: a case made from a named channel handle refers to the handle
// instead of copying it (a copy touches the channel's reference count, a
// cache line that every thread using the channel would then trade), so the
// handle must stay alive until the select() using the case returns, as it
// does when the case is written inside the select() call. A case made from
// a temporary (after(d), a function's result) holds its channel, and so does
// every dchan::Case. Clang warns about a function that returns a case made
// from its own parameter or local handle (ABSL_ATTRIBUTE_LIFETIME_BOUND on
// on_recv and on_send). Once a select that had to wait has fired, the party
// that fired it may drop any handle at once: the select's registrations pin
// their channels (without touching a reference count), and a channel whose
// last handle is gone while a fired select still has to withdraw from it
// is freed by that withdrawal; one that holds only stale nodes a thread
// kept (see "How it works") is freed at once. A case's function may drop
// the handle its case was made from.
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
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/status/status.h"
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
  // The channel, or nullptr for the nil channel, a broker channel and the
  // default case.
  virtual ChanCore* core() const noexcept = 0;
  // The broker channel of a case on one, else nullptr.
  virtual RemoteChan* remote() const noexcept = 0;
  // Broker send cases: the value, encoded by its Codec.
  virtual void encode_send(std::string& out) const = 0;
  // Broker recv cases: takes a received value (decoded by its Codec).
  virtual absl::Status decode_recv(const std::string& bytes) = 0;
  // Requires core()->lock(). Tries to complete the case now: kOk (then
  // `*to_fire`, if set, is completed after unlocking), kClosed (a receive
  // got "closed"; a send must panic), or kWouldBlock.
  virtual ChanStatus try_locked(Fired* to_fire) = 0;
  // Requires a buffered local channel (core()->cap_ != 0). Completes the
  // case without the lock if the buffer's fast path can (true; the case is
  // then kOk); false leaves it to try_locked.
  virtual bool try_fast() noexcept = 0;
  // The slot of the case's node when the select parks (see
  // WaitNode::slot): a send case's value; for a receive case `landing` (the
  // select's LandingWaiter::landing, or nullptr) if its value fits there,
  // else room in the case itself.
  virtual void* park_slot(void* landing) noexcept = 0;
  // A receive case fired through its parked node with ok = true: moves the
  // value a counterparty constructed at `slot` (its park_slot()) into the
  // case. Other cases: nothing.
  virtual void take_landed(void* slot) = 0;
  // Whether the case may park in its unbuffered channel's lone slot
  // (ChanCore::lone_) with the select's LandingWaiter `lw`; a send case
  // then puts there what it leaves to its receiver (true). Receive cases
  // whose value lands on `lw`'s line may too (true, nothing put).
  virtual bool put_lone(LandingWaiter& lw) noexcept {
    (void)lw;
    return false;
  }
  // Runs the case's function, with no lock held. `ok` false: the channel
  // was closed (a send then throws).
  virtual void finish(bool ok) = 0;
  // Makes the case hold its channel if it only refers to it (see
  // CaseChan): a dchan::Case, and a select over broker channels (which
  // waits on I/O) do so. A local select that waits pins its channels
  // instead (ChanCore::pin_locked).
  virtual void hold_channel() noexcept = 0;

 private:
  const Kind kind_;
};

// Runs one of `cases` as described in the file comment; returns its index.
std::size_t select_cases(SelectCase* const* cases, std::size_t n);

// The first half of a select, shared by select_cases and select_async.
// Locks every channel, polls the cases in random order and, when one is
// ready, completes its channel side (the case's finish() is left to the
// caller). Otherwise, if `w` is set, registers nodes[i] for every channel
// case on `w`. `nodes` has n entries. `landing`: see SelectCase::park_slot.
struct PollOutcome {
  enum Kind {
    kFired,
    kRegistered,
    kWouldBlock,
    kNeverReady
  } kind = kWouldBlock;
  std::size_t index = 0;  // kFired: the case
  bool ok = false;        // kFired: false when its channel was closed
};
PollOutcome select_poll(SelectCase* const* cases, std::size_t n, Waiter* w,
                        WaitNode* nodes, void* landing = nullptr);

// Unlinks every registered node except nodes[except].
void select_withdraw(WaitNode* nodes, std::size_t n,
                     std::size_t except) noexcept;

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

// The channel of a case. A case made from a named channel refers to it, as
// a reference would: copying the handle would touch the channel's
// reference count, a cache line that every thread using the channel then
// trades (both sides of a ping-pong, every select on a shared quit
// channel). A case made from a temporary (after(d), a function's result)
// holds it. hold() makes the case hold its channel either way (see Case).
template <class T>
class CaseChan {
 public:
  explicit CaseChan(const Chan<T>& ch) noexcept : ref_(&ch) {}
  explicit CaseChan(Chan<T>&& ch) noexcept : held_(std::move(ch)) {}

  const Chan<T>& get() const noexcept {
    return ref_ != nullptr ? *ref_ : held_;
  }
  void hold() noexcept {
    if (ref_ == nullptr) return;
    held_ = *ref_;
    ref_ = nullptr;
  }

 private:
  const Chan<T>* ref_ = nullptr;  // the named channel, or nullptr: held_
  Chan<T> held_;
};

template <class T, class F>
class RecvCase final : public SelectCase {
 public:
  static constexpr bool kIsDefault = false;
  RecvCase(CaseChan<T> ch, F fn)
      : SelectCase(Kind::kRecv), ch_(std::move(ch)), fn_(std::move(fn)) {}
  void hold_channel() noexcept override { ch_.hold(); }
  ChanCore* core() const noexcept override { return state_of(ch_.get()); }
  RemoteChan* remote() const noexcept override { return remote_of(ch_.get()); }
  void encode_send(std::string&) const override {}
  absl::Status decode_recv(const std::string& bytes) override {
    if constexpr (kHasCodec<T>) {
      T v{};
      absl::Status st = Codec<T>::decode(bytes, v);
      if (st.ok()) value_.emplace(std::move(v));
      return st;
    } else {
      (void)bytes;
      return absl::InternalError("dchan: remote Chan without codec");
    }
  }
  ChanStatus try_locked(Fired* to_fire) override {
    return state_of(ch_.get())->recv_locked(value_, to_fire);
  }
  bool try_fast() noexcept override {
    return state_of(ch_.get())->try_recv_fast(value_) ==
           ChanState<T>::Fast::kDone;
  }
  void* park_slot(void* landing) noexcept override {
    if (landing != nullptr && kLandsOnWaiterLine<T>) return landing;
    return own_landing_;
  }
  void take_landed(void* slot) override { detail::take_landed(slot, value_); }
  bool put_lone(LandingWaiter&) noexcept override {
    return kLandsOnWaiterLine<T>;
  }
  void finish(bool) override {
    // Leaves value_ empty, so that a reused Case's next receive never
    // destroys an old value under a channel's lock (it could hold the last
    // handle of another channel, whose release takes that channel's lock);
    // and touches nothing of the case after its function, which may
    // destroy the case (a run-time case list cleared by its quit case).
    std::optional<T> v = std::move(value_);
    value_.reset();
    invoke_case_fn(fn_, std::move(v));
  }
  std::optional<T>& value() noexcept { return value_; }

 private:
  CaseChan<T> ch_;
  F fn_;
  std::optional<T> value_;
  alignas(T) unsigned char own_landing_[sizeof(T)];  // see park_slot()
};

template <class T, class F>
class SendCase final : public SelectCase {
 public:
  static constexpr bool kIsDefault = false;
  SendCase(CaseChan<T> ch, T value, F fn)
      : SelectCase(Kind::kSend),
        ch_(std::move(ch)),
        value_(std::move(value)),
        fn_(std::move(fn)) {}
  void hold_channel() noexcept override { ch_.hold(); }
  ChanCore* core() const noexcept override { return state_of(ch_.get()); }
  RemoteChan* remote() const noexcept override { return remote_of(ch_.get()); }
  void encode_send(std::string& out) const override {
    if constexpr (kHasCodec<T>)
      Codec<T>::encode(value_, out);
    else
      (void)out;
  }
  absl::Status decode_recv(const std::string&) override {
    return absl::OkStatus();
  }
  ChanStatus try_locked(Fired* to_fire) override {
    return state_of(ch_.get())->send_locked(value_, to_fire);
  }
  bool try_fast() noexcept override {
    return state_of(ch_.get())->try_send_fast(value_) ==
           ChanState<T>::Fast::kDone;
  }
  void* park_slot(void*) noexcept override { return &value_; }
  void take_landed(void*) override {}
  bool put_lone(LandingWaiter& lw) noexcept override {
    if constexpr (kLandsOnWaiterLine<T>) {
      ChanState<T>::put_lone_send(lw, &value_);
      return true;
    } else {
      (void)lw;
      return false;
    }
  }
  void finish(bool ok) override {
    if (!ok) throw_panic("send on closed channel");
    invoke_case_fn(fn_);
  }

 private:
  CaseChan<T> ch_;
  T value_;
  F fn_;
};

template <class F>
class DefaultCase final : public SelectCase {
 public:
  static constexpr bool kIsDefault = true;
  explicit DefaultCase(F fn) : SelectCase(Kind::kDefault), fn_(std::move(fn)) {}
  void hold_channel() noexcept override {}
  ChanCore* core() const noexcept override { return nullptr; }
  RemoteChan* remote() const noexcept override { return nullptr; }
  void encode_send(std::string&) const override {}
  absl::Status decode_recv(const std::string&) override {
    return absl::OkStatus();
  }
  ChanStatus try_locked(Fired*) override { return ChanStatus::kWouldBlock; }
  bool try_fast() noexcept override { return false; }
  void* park_slot(void*) noexcept override { return nullptr; }
  void take_landed(void*) override {}
  void finish(bool) override { invoke_case_fn(fn_); }

 private:
  F fn_;
};

}  // namespace detail

// A receive case; see the file comment. A case made from a named channel
// refers to it (the channel must outlive the case, as it does when the case
// is written inside the select() call); one made from a temporary holds it.
template <class T, class F = detail::NoFn>
detail::RecvCase<T, F> on_recv(const Chan<T>& ch ABSL_ATTRIBUTE_LIFETIME_BOUND,
                               F fn = {}) {
  return detail::RecvCase<T, F>(detail::CaseChan<T>(ch), std::move(fn));
}
template <class T, class F = detail::NoFn>
detail::RecvCase<T, F> on_recv(Chan<T>&& ch, F fn = {}) {
  return detail::RecvCase<T, F>(detail::CaseChan<T>(std::move(ch)),
                                std::move(fn));
}

// A send case; see the file comment. `value` is delivered only if this case
// fires. The channel is referred to or held as by on_recv.
template <class T, class U, class F = detail::NoFn>
detail::SendCase<T, F> on_send(const Chan<T>& ch ABSL_ATTRIBUTE_LIFETIME_BOUND,
                               U&& value, F fn = {}) {
  return detail::SendCase<T, F>(detail::CaseChan<T>(ch),
                                T(std::forward<U>(value)), std::move(fn));
}
template <class T, class U, class F = detail::NoFn>
detail::SendCase<T, F> on_send(Chan<T>&& ch, U&& value, F fn = {}) {
  return detail::SendCase<T, F>(detail::CaseChan<T>(std::move(ch)),
                                T(std::forward<U>(value)), std::move(fn));
}

// The default case; see the file comment.
template <class F = detail::NoFn>
detail::DefaultCase<F> on_default(F fn = {}) {
  return detail::DefaultCase<F>(std::move(fn));
}

// A type-erased case, for selects whose cases are known at run time. Made
// from any on_recv / on_send / on_default result. It holds its channel
// (cases built in a loop may outlive the handle they were made from).
class Case {
 public:
  template <class C, class = std::enable_if_t<std::is_base_of_v<
                         detail::SelectCase, std::decay_t<C>>>>
  Case(C&& c)  // NOLINT(google-explicit-constructor): cases convert.
  {
    auto impl = std::make_unique<std::decay_t<C>>(std::forward<C>(c));
    impl->hold_channel();
    impl_ = std::move(impl);
  }

  detail::SelectCase* get() const noexcept { return impl_.get(); }

 private:
  std::unique_ptr<detail::SelectCase> impl_;
};

// Runs exactly one of `cases`; returns its index. See the file comment.
template <class... Cases>
requires(sizeof...(Cases) > 0 &&
         (std::is_base_of_v<detail::SelectCase, std::decay_t<Cases>> &&
          ...)) std::size_t select(Cases&&... cases) {
  static_assert(((std::decay_t<Cases>::kIsDefault ? 1 : 0) + ...) <= 1,
                "select() takes at most one on_default case");
  detail::SelectCase* const all[] = {&cases...};
  if constexpr (sizeof...(Cases) == 2 &&
                ((std::decay_t<Cases>::kIsDefault ? 1 : 0) + ...) == 1) {
    // One channel case and a default (Go compiles this to a non-blocking
    // send or receive): try that case under its channel's lock if it may be
    // ready, as the general engine's first pass would, without the engine.
    constexpr std::size_t kChan =
        std::tuple_element_t<0, std::tuple<std::decay_t<Cases>...>>::kIsDefault
            ? 1
            : 0;
    auto cases_tuple = std::forward_as_tuple(cases...);
    auto& c = std::get<kChan>(cases_tuple);  // a final class: no virtual calls
    if (detail::ChanCore* core = c.core()) {
      ChanStatus st = ChanStatus::kWouldBlock;
      detail::Fired to_fire;
      if (core->cap_ != 0 && c.try_fast()) {
        st = ChanStatus::kOk;
      } else if (core->may_be_ready(c.kind() ==
                                    detail::SelectCase::Kind::kSend)) {
        core->lock();
        st = c.try_locked(&to_fire);
        core->unlock();
      }
      if (st != ChanStatus::kWouldBlock) {
        detail::fire(to_fire);
        c.finish(st == ChanStatus::kOk);
        return kChan;
      }
      std::get<1 - kChan>(cases_tuple).finish(true);
      return 1 - kChan;
    }
    // The nil channel or a broker channel: the general engine.
  }
  return detail::select_cases(all, sizeof...(Cases));
}

// The run-time form; Case objects that did not fire can be reused. An empty
// span blocks forever, like Go's `select {}`. More than one default case
// throws dchan::Error (kInvalidArgument).
std::size_t select(std::span<Case> cases);

// A channel that receives the current time once, `d` from now.
Chan<std::chrono::steady_clock::time_point> after(
    std::chrono::steady_clock::duration d);

// --- Asynchronous select, for event-driven callers (the broker) ----------
//
// select_async runs a select over local channels of one element type without
// blocking: `done` runs exactly once with the outcome — inline if a case is
// ready now (or, with `nonblocking`, none is: status kWouldBlock), otherwise
// on the thread of the party that fires a case, after it dropped its lock —
// unless the returned PendingOp is cancelled first (then nothing was
// consumed or delivered). Same guarantees as select(): exactly one case
// fires, random choice among ready cases, no thread waits.

template <class T>
struct AsyncSelectCase {
  Chan<T> chan;
  bool send = false;
  T value{};  // for send cases
};

template <class T>
struct SelectOutcome {
  std::size_t index = 0;  // the case that fired (kOk, kClosed)
  // kOk; kClosed (a receive saw the channel closed and drained, or a send
  // case's channel is closed: Go would panic); kWouldBlock (nonblocking).
  ChanStatus status = ChanStatus::kWouldBlock;
  std::optional<T> value;  // a received value
};

namespace detail {

template <class T>
class AsyncSelect final : public AsyncOp {
 public:
  AsyncSelect(std::vector<AsyncSelectCase<T>> cases,
              absl::AnyInvocable<void(SelectOutcome<T>) &&> done)
      : done_(std::move(done)), nodes_(cases.size()) {
    cases_.reserve(cases.size());
    recv_values_.resize(cases.size(), nullptr);
    for (std::size_t i = 0; i < cases.size(); ++i) {
      if (remote_of(cases[i].chan) != nullptr) {
        throw Error(absl::StatusCode::kInvalidArgument,
                    "dchan: select_async needs local channels");
      }
      if (cases[i].send) {
        cases_.push_back(std::make_unique<SendCase<T, NoFn>>(
            CaseChan<T>(std::move(cases[i].chan)), std::move(cases[i].value),
            NoFn{}));
      } else {
        auto rc = std::make_unique<RecvCase<T, NoFn>>(
            CaseChan<T>(std::move(cases[i].chan)), NoFn{});
        recv_values_[i] = &rc->value();
        cases_.push_back(std::move(rc));
      }
      ptrs_.push_back(cases_.back().get());
    }
  }

  // Holds the op alive while its nodes may be queued.
  void arm(std::shared_ptr<AsyncOp> self) noexcept { self_ = std::move(self); }
  // Completes the op on the calling thread: select_poll fired case `index`
  // (or found nothing ready: index == size(), kWouldBlock).
  void complete_inline(std::size_t index, ChanStatus status) noexcept {
    self_.reset();
    try_claim();
    mark_done_by_owner();
    finish_now(index, status);
  }

  SelectCase* const* cases() const noexcept { return ptrs_.data(); }
  std::size_t size() const noexcept { return ptrs_.size(); }
  WaitNode* nodes() noexcept { return nodes_.data(); }

  void finish_now(std::size_t index, ChanStatus status) noexcept {
    SelectOutcome<T> out;
    out.index = index;
    out.status = status;
    if (status == ChanStatus::kOk && recv_values_[index] != nullptr) {
      out.value = std::move(*recv_values_[index]);
    }
    std::move(done_)(std::move(out));
  }

  void withdraw() noexcept override {
    select_withdraw(nodes_.data(), nodes_.size(), nodes_.size());
  }
  void deliver() noexcept override {
    const std::size_t fired = fired_case();
    select_withdraw(nodes_.data(), nodes_.size(), fired);
    if (ok()) ptrs_[fired]->take_landed(nodes_[fired].slot);
    finish_now(fired, ok() ? ChanStatus::kOk : ChanStatus::kClosed);
  }

 private:
  std::vector<std::unique_ptr<SelectCase>> cases_;
  std::vector<SelectCase*> ptrs_;
  std::vector<std::optional<T>*> recv_values_;
  absl::AnyInvocable<void(SelectOutcome<T>) &&> done_;
  std::vector<WaitNode> nodes_;
};

}  // namespace detail

template <class T>
PendingOp select_async(std::vector<AsyncSelectCase<T>> cases, bool nonblocking,
                       absl::AnyInvocable<void(SelectOutcome<T>) &&> done) {
  auto op = std::make_shared<detail::AsyncSelect<T>>(std::move(cases),
                                                     std::move(done));
  // Keep the op alive from before its nodes are queued: a counterparty may
  // fire it as soon as select_poll drops the locks.
  op->arm(op);
  detail::PollOutcome r;
  try {
    r = detail::select_poll(op->cases(), op->size(),
                            nonblocking ? nullptr : op.get(), op->nodes());
  } catch (...) {
    op->arm(nullptr);
    throw;
  }
  switch (r.kind) {
    case detail::PollOutcome::kRegistered:
      return PendingOp(std::move(op));
    case detail::PollOutcome::kNeverReady:
      op->arm(nullptr);  // queued nowhere: only the caller's handle holds it
      return PendingOp(std::move(op));
    case detail::PollOutcome::kFired:
      op->complete_inline(r.index,
                          r.ok ? ChanStatus::kOk : ChanStatus::kClosed);
      return PendingOp();
    case detail::PollOutcome::kWouldBlock:
      break;
  }
  op->complete_inline(op->size(), ChanStatus::kWouldBlock);
  return PendingOp();
}

}  // namespace dchan

#endif  // DCHAN_SELECT_H_
