#include "session.h"

#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "atomic_value.h"
#include "dchan/error.h"
#include "dchan/select.h"
#include "lock.h"
#include "wait_group.h"

namespace dchan::server {
namespace {

v1::Outcome to_outcome(ChanStatus st) {
  switch (st) {
    case ChanStatus::kOk:
      return v1::OUTCOME_OK;
    case ChanStatus::kWouldBlock:
    case ChanStatus::kTimeout:
      return v1::OUTCOME_WOULD_BLOCK;
    case ChanStatus::kClosed:
      return v1::OUTCOME_CLOSED;
  }
  return v1::OUTCOME_UNSPECIFIED;
}

v1::ServerFrame send_frame(uint64_t id, v1::Outcome outcome) {
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_send()->set_outcome(outcome);
  return f;
}

// The answer to a send with more_values: `sent` of them got in.
v1::ServerFrame send_many_frame(uint64_t id, v1::Outcome outcome,
                                std::size_t sent) {
  v1::ServerFrame f = send_frame(id, outcome);
  f.mutable_send()->set_sent(sent);
  return f;
}

v1::ServerFrame recv_frame(uint64_t id, std::optional<std::string> value,
                           v1::Outcome if_empty) {
  v1::ServerFrame f;
  f.set_id(id);
  v1::RecvResponse* r = f.mutable_recv();
  if (value.has_value()) {
    r->set_outcome(v1::OUTCOME_OK);
    r->set_value(std::move(*value));
  } else {
    r->set_outcome(if_empty);
  }
  return f;
}

// A lock answer; a grant says which token block it reserved (above 1).
v1::ServerFrame lock_frame(uint64_t id, v1::Outcome outcome, uint64_t token,
                           uint32_t token_block = 0) {
  v1::ServerFrame f;
  f.set_id(id);
  v1::LockResponse* r = f.mutable_lock();
  r->set_outcome(outcome);
  if (outcome == v1::OUTCOME_OK) {
    r->set_token(token);
    if (token_block > 1) r->set_token_block(token_block);
  }
  return f;
}

v1::ServerFrame wait_frame(uint64_t id, v1::Outcome outcome, int64_t count) {
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_wait()->set_outcome(outcome);
  f.mutable_wait()->set_count(count);
  return f;
}

// What a request needs its handle to be, for the wrong-kind error.
template <class T>
constexpr absl::string_view kind_needed();
template <>
constexpr absl::string_view kind_needed<ChannelObject>() {
  return "a channel";
}
template <>
constexpr absl::string_view kind_needed<LockObject>() {
  return "a mutex or an RWMutex";
}
template <>
constexpr absl::string_view kind_needed<WaitGroupObject>() {
  return "a WaitGroup";
}
template <>
constexpr absl::string_view kind_needed<ValueObject>() {
  return "an AtomicValue";
}

// The batch receives whose batch waits for the values of a send_many (see
// FillsAfterSend), on the thread running that send_many; nullptr elsewhere.
thread_local std::vector<absl::AnyInvocable<void()&&>>* t_deferred_fills =
    nullptr;

// While a send_many puts its values into a channel one by one, a waiting
// batch receive (RecvRequest.max_values) that the first value completes
// would fill its batch at once, with only that value in the channel: the
// receiver would get one value and ask again for the rest (a round trip
// per frame). Instead its fill and answer wait until the frame's values
// are in (or parked), and run when this object goes.
class FillsAfterSend {
 public:
  FillsAfterSend() : outer_(t_deferred_fills) { t_deferred_fills = &fills_; }
  FillsAfterSend(const FillsAfterSend&) = delete;
  FillsAfterSend& operator=(const FillsAfterSend&) = delete;
  ~FillsAfterSend() {
    t_deferred_fills = outer_;
    for (auto& fill : fills_) std::move(fill)();
  }

  // Whether a send_many on this thread is putting its values in.
  static bool active() noexcept { return t_deferred_fills != nullptr; }
  // Runs `fill` when the innermost send_many on this thread is done.
  // Requires active().
  static void defer(absl::AnyInvocable<void() &&> fill) {
    t_deferred_fills->push_back(std::move(fill));
  }

 private:
  std::vector<absl::AnyInvocable<void() &&>>* outer_;
  std::vector<absl::AnyInvocable<void() &&>> fills_;
};

}  // namespace

void return_frame_value(v1::ServerFrame& frame,
                        const std::shared_ptr<ChannelObject>& returned_to) {
  if (returned_to == nullptr) return;
  if (frame.has_recv() && frame.recv().outcome() == v1::OUTCOME_OK) {
    v1::RecvResponse* r = frame.mutable_recv();
    ChannelObject::give_back(returned_to, std::move(*r->mutable_value()));
    for (std::string& v : *r->mutable_more_values()) {
      ChannelObject::give_back(returned_to, std::move(v));
    }
  } else if (frame.has_select() && frame.select().outcome() == v1::OUTCOME_OK) {
    ChannelObject::give_back(
        returned_to, std::move(*frame.mutable_select()->mutable_value()));
  } else if (frame.has_offer() && frame.offer().outcome() == v1::OUTCOME_OK) {
    // Only receive offers' answers name a channel to return to.
    ChannelObject::give_back(
        returned_to, std::move(*frame.mutable_offer()->mutable_value()));
  }
}

v1::ServerFrame error_frame(uint64_t id, const absl::Status& status) {
  v1::ServerFrame f;
  f.set_id(id);
  f.set_code(static_cast<int32_t>(status.code()));
  f.set_message(std::string(status.message()));
  return f;
}

Session::Session(uint64_t id, std::string peer, Registry& registry,
                 std::shared_ptr<Outbox> outbox, SessionLimits limits)
    : id_(id),
      peer_(std::move(peer)),
      registry_(registry),
      outbox_(std::move(outbox)),
      limits_(limits),
      last_frame_(Clock::now().time_since_epoch().count()),
      ttl_ms_(std::clamp(limits.default_ttl, limits.min_ttl, limits.max_ttl)
                  .count()) {}

Session::~Session() = default;

void Session::handle(const v1::ClientFrame& frame) {
  v1::ClientFrame copy = frame;
  handle(std::move(copy));
}

void Session::handle(v1::ClientFrame&& frame) {
  if (ended_flag_.load(std::memory_order_acquire)) return;
  last_frame_.store(Clock::now().time_since_epoch().count(),
                    std::memory_order_relaxed);
  const bool first_frame = first_frame_;
  first_frame_ = false;
  const uint64_t id = frame.id();
  if (frame.op_case() == v1::ClientFrame::kCancel) {
    cancel(id, frame.cancel());
    return;
  }
  if (frame.op_case() == v1::ClientFrame::kClaimAnswer) {
    claim_answer(frame.claim_answer());
    return;
  }
  if (id == 0) {
    reply_error(0, absl::InvalidArgumentError("request id 0 is invalid"));
    return;
  }
  switch (frame.op_case()) {
    case v1::ClientFrame::kOpen:
      open(id, frame.open());
      return;
    case v1::ClientFrame::kSend:
      send(id, *frame.mutable_send());
      return;
    case v1::ClientFrame::kRecv:
      recv(id, frame.recv());
      return;
    case v1::ClientFrame::kClose:
      close(id, frame.close());
      return;
    case v1::ClientFrame::kSelect:
      select(id, frame.select());
      return;
    case v1::ClientFrame::kStat:
      stat(id, frame.stat());
      return;
    case v1::ClientFrame::kWatch:
      watch(id, frame.watch());
      return;
    case v1::ClientFrame::kOffer:
      offer(id, frame.offer());
      return;
    case v1::ClientFrame::kHello:
      hello(id, frame.hello(), first_frame);
      return;
    case v1::ClientFrame::kPing: {
      v1::ServerFrame f;
      f.set_id(id);
      f.mutable_ping();
      reply(std::move(f));
      return;
    }
    case v1::ClientFrame::kLock:
      lock(id, frame.lock());
      return;
    case v1::ClientFrame::kUnlock:
      unlock(id, frame.unlock());
      return;
    case v1::ClientFrame::kWanted:
      wanted(id, frame.wanted());
      return;
    case v1::ClientFrame::kAdd:
      add(id, frame.add());
      return;
    case v1::ClientFrame::kWait:
      wait(id, frame.wait());
      return;
    case v1::ClientFrame::kLoad:
      load(id, frame.load());
      return;
    case v1::ClientFrame::kSwap:
      swap(id, frame.swap());
      return;
    case v1::ClientFrame::kCompareAndSwap:
      compare_and_swap(id, frame.compare_and_swap());
      return;
    case v1::ClientFrame::kRelease:
      release(id, frame.release());
      return;
    case v1::ClientFrame::kReturnValues:
      return_values(id, frame.return_values());
      return;
    case v1::ClientFrame::kCancel:
    case v1::ClientFrame::kClaimAnswer:
    case v1::ClientFrame::OP_NOT_SET:
      break;
  }
  reply_error(id, absl::InvalidArgumentError(
                      "the frame carries no operation this broker knows"));
}

void Session::hello(uint64_t id, const v1::HelloRequest& req,
                    bool first_frame) {
  if (!first_frame) {
    reply_error(id, absl::FailedPreconditionError(
                        "Hello must be the session's first frame"));
    return;
  }
  if (req.client_name().size() > limits_.max_client_name_bytes) {
    reply_error(id,
                absl::InvalidArgumentError(absl::StrCat(
                    "client name is ", req.client_name().size(),
                    " bytes; the limit is ", limits_.max_client_name_bytes)));
    return;
  }
  std::chrono::milliseconds ttl = limits_.default_ttl;
  if (req.ttl_ms() != 0) {
    // Clamped before the conversion: a huge request cannot overflow.
    ttl = std::chrono::milliseconds(static_cast<int64_t>(std::min<uint64_t>(
        req.ttl_ms(), static_cast<uint64_t>(limits_.max_ttl.count()))));
  }
  ttl = std::clamp(ttl, limits_.min_ttl, limits_.max_ttl);
  ttl_ms_.store(ttl.count(), std::memory_order_relaxed);
  {
    absl::MutexLock lock(&mu_);
    client_name_ = req.client_name();
  }
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_hello()->set_session_id(id_);
  f.mutable_hello()->set_ttl_ms(static_cast<uint64_t>(ttl.count()));
  reply(std::move(f));
}

void Session::open(uint64_t id, const v1::OpenRequest& req) {
  if (handles_.size() >= limits_.max_handles) {
    reply_error(id, absl::ResourceExhaustedError(
                        absl::StrCat("this session holds ", handles_.size(),
                                     " handles, its limit")));
    return;
  }
  absl::StatusOr<std::shared_ptr<Object>> obj = registry_.open(req);
  if (!obj.ok()) {
    reply_error(id, obj.status());
    return;
  }
  const bool tell_on_end = LockObject::is_kind((*obj)->kind()) ||
                           WaitGroupObject::is_kind((*obj)->kind());
  const uint64_t handle = next_handle_++;
  (*obj)->add_handle();
  handles_.emplace(handle, *obj);
  {
    absl::MutexLock lock(&mu_);
    handles_count_ = handles_.size();
    // After end() this object is never told; nothing can be recorded for
    // this session on it either (see object.h).
    if (tell_on_end && !ended_) ++tell_on_end_[*std::move(obj)];
  }
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_open()->set_handle(handle);
  reply(std::move(f));
}

void Session::release(uint64_t id, const v1::ReleaseRequest& req) {
  auto it = handles_.find(req.handle());
  if (it == handles_.end()) {
    reply_error(id, absl::NotFoundError(absl::StrCat(
                        "unknown handle ", req.handle(), " (not open)")));
    return;
  }
  std::shared_ptr<Object> obj = std::move(it->second);
  handles_.erase(it);
  // A lock or wait group is told when this session ends — unless this was
  // the session's last handle to it and it holds nothing for the session.
  // That answer is final: only this session's requests (on a handle, on
  // this thread) could record something new for it there.
  const bool told =
      LockObject::is_kind(obj->kind()) || WaitGroupObject::is_kind(obj->kind());
  const bool involved = told && obj->involves(id_);
  {
    absl::MutexLock lock(&mu_);
    handles_count_ = handles_.size();
    auto t = told ? tell_on_end_.find(obj) : tell_on_end_.end();
    if (t != tell_on_end_.end() && --t->second == 0 && !involved) {
      tell_on_end_.erase(t);
    }
  }
  const std::string name = obj->name();
  obj->drop_handle();
  obj.reset();  // our references go first: see Registry
  // Before the answer: a client that reopens the name once released finds
  // it forgotten (if it was idle).
  registry_.forget_if_idle(name);
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_release();
  reply(std::move(f));
}

template <class T>
std::shared_ptr<T> Session::object(uint64_t id, uint64_t handle) {
  auto it = handles_.find(handle);
  if (it == handles_.end()) {
    reply_error(id,
                absl::NotFoundError(absl::StrCat("unknown handle ", handle,
                                                 " (open the object first)")));
    return nullptr;
  }
  const Object& obj = *it->second;
  if (!T::is_kind(obj.kind())) {
    reply_error(
        id, absl::InvalidArgumentError(absl::StrCat(
                "\"", obj.name(), "\" (handle ", handle, ") is ",
                kind_with_article(obj.kind()), ", not ", kind_needed<T>())));
    return nullptr;
  }
  return std::static_pointer_cast<T>(it->second);
}

bool Session::check_value_size(uint64_t id, const std::string& value) {
  if (value.size() <= limits_.max_value_bytes) return true;
  reply_error(id, absl::InvalidArgumentError(absl::StrCat(
                      "value of ", value.size(), " bytes is over the limit of ",
                      limits_.max_value_bytes)));
  return false;
}

void Session::send(uint64_t id, v1::SendRequest& req) {
  std::shared_ptr<ChannelObject> obj = object<ChannelObject>(id, req.handle());
  if (obj == nullptr || !check_value_size(id, req.value())) return;
  if (req.more_values_size() > 0) {
    send_many(id, obj, req);
    return;
  }
  std::string value = std::move(*req.mutable_value());
  // First without blocking: when that succeeds (room in the buffer, or a
  // receiver waiting) no sender is parked on the channel (Go's invariant),
  // so answering at once keeps this session's sends in order, and the
  // pending-operation bookkeeping is skipped. (`value` is moved from only
  // on kOk.)
  const ChanStatus st = obj->chan.try_send(std::move(value));
  if (req.nonblocking() || st != ChanStatus::kWouldBlock) {
    reply(send_frame(id, to_outcome(st)));
    return;
  }
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kSend);
  if (seq == 0) return;
  PendingOp op = obj->chan.send_async(
      std::move(value), [self = shared_from_this(), id, seq](bool ok) {
        self->finish_pending(
            id, seq, send_frame(id, ok ? v1::OUTCOME_OK : v1::OUTCOME_CLOSED),
            nullptr);
      });
  attach(id, seq, std::move(op));
}

void Session::send_many(uint64_t id, const std::shared_ptr<ChannelObject>& obj,
                        v1::SendRequest& req) {
  if (req.nonblocking()) {
    reply_error(id, absl::InvalidArgumentError(
                        "a non-blocking send carries one value"));
    return;
  }
  for (const std::string& v : req.more_values()) {
    if (!check_value_size(id, v)) return;  // answered; nothing sent
  }
  const std::size_t n = 1 + static_cast<std::size_t>(req.more_values_size());
  auto value_at = [&req](std::size_t i) -> std::string& {
    return i == 0 ? *req.mutable_value()
                  : *req.mutable_more_values(static_cast<int>(i - 1));
  };
  // As many as fit at once, as in send(); the first that does not fit and
  // every one after it wait, each a parked sender in order (so that this
  // session's later sends queue behind them).
  const FillsAfterSend fills;
  std::size_t i = 0;
  for (; i < n; ++i) {
    // Moved from only on kOk (the value then waits below).
    const ChanStatus st = obj->chan.try_send(std::move(value_at(i)));
    if (st == ChanStatus::kWouldBlock) break;
    if (st == ChanStatus::kClosed) {
      reply(send_many_frame(id, v1::OUTCOME_CLOSED, i));
      return;
    }
  }
  if (i == n) {
    reply(send_many_frame(id, v1::OUTCOME_OK, n));
    return;
  }
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kSend);
  if (seq == 0) return;
  // What the parked values share. Each one's callback captures only this
  // pointer, which fits in AnyInvocable's inline storage: a parked value
  // costs lib's operation record and nothing else (the broker spends much
  // of a stream's time in malloc/free on this path).
  struct Parked {
    std::shared_ptr<Session> session;
    uint64_t id;
    uint64_t seq;
    std::size_t n;
    std::atomic<std::size_t> left;
    std::atomic<std::size_t> sent;
  };
  auto parked = std::make_shared<Parked>();
  parked->session = shared_from_this();
  parked->id = id;
  parked->seq = seq;
  parked->n = n;
  parked->left.store(n - i);
  parked->sent.store(i);
  auto on_done = [parked](bool ok) {
    if (ok) parked->sent.fetch_add(1);
    if (parked->left.fetch_sub(1) != 1) return;
    const std::size_t sent = parked->sent.load();
    parked->session->finish_pending(
        parked->id, parked->seq,
        send_many_frame(parked->id,
                        sent == parked->n ? v1::OUTCOME_OK : v1::OUTCOME_CLOSED,
                        sent),
        nullptr);
  };
  std::vector<PendingOp> ops;
  ops.reserve(n - i);
  for (; i < n; ++i) {
    ops.push_back(obj->chan.send_async(std::move(value_at(i)), on_done));
  }
  // Withdrawn when any value was still waiting: the rest never answer (their
  // count cannot reach zero), the cancel answers CANCELLED.
  attach(id, seq, [ops = std::move(ops)]() mutable {
    bool withdrew = false;
    for (PendingOp& op : ops) withdrew = op.cancel() || withdrew;
    return withdrew;
  });
}

void Session::recv(uint64_t id, const v1::RecvRequest& req) {
  std::shared_ptr<ChannelObject> obj = object<ChannelObject>(id, req.handle());
  if (obj == nullptr) return;
  const std::size_t max =
      std::clamp<std::size_t>(req.max_values(), 1, limits_.max_recv_batch);
  // First without blocking (a value available: no pending bookkeeping).
  RecvResult<std::string> r = obj->chan.try_recv();
  if (r.status == ChanStatus::kClosed) r.value = obj->take_after_close();
  if (r.value.has_value() || req.nonblocking() ||
      r.status == ChanStatus::kClosed) {
    v1::ServerFrame f =
        recv_frame(id, std::move(r.value),
                   r.status == ChanStatus::kClosed ? v1::OUTCOME_CLOSED
                                                   : v1::OUTCOME_WOULD_BLOCK);
    fill_batch(*obj, f, max);
    deliver(std::move(f), obj);
    return;
  }
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kRecv);
  if (seq == 0) return;
  PendingOp op = obj->chan.recv_async([self = shared_from_this(), id, seq, obj,
                                       max](std::optional<std::string> v) {
    if (!v.has_value()) v = obj->take_after_close();
    v1::ServerFrame f = recv_frame(id, std::move(v), v1::OUTCOME_CLOSED);
    if (max > 1 && FillsAfterSend::active()) {
      FillsAfterSend::defer(
          [self, id, seq, obj, max, f = std::move(f)]() mutable {
            self->finish_batch(obj, id, seq, std::move(f), max);
          });
      return;
    }
    self->finish_batch(obj, id, seq, std::move(f), max);
  });
  attach(id, seq, std::move(op));
}

void Session::finish_batch(const std::shared_ptr<ChannelObject>& obj,
                           uint64_t id, uint64_t seq, v1::ServerFrame frame,
                           std::size_t max) {
  // A session that ended meanwhile hands its answer's values back to the
  // channel (finish_pending): take no more of them out.
  if (live()) fill_batch(*obj, frame, max);
  finish_pending(id, seq, std::move(frame), obj);
}

void Session::fill_batch(ChannelObject& obj, v1::ServerFrame& frame,
                         std::size_t max) {
  v1::RecvResponse* r = frame.mutable_recv();
  if (max <= 1 || r->outcome() != v1::OUTCOME_OK) return;
  std::size_t bytes = r->value().size();
  for (std::size_t n = 1; n < max && bytes < limits_.max_batch_bytes; ++n) {
    RecvResult<std::string> more = obj.chan.try_recv();
    if (more.status == ChanStatus::kClosed) more.value = obj.take_after_close();
    if (!more.value.has_value()) break;
    bytes += more.value->size();
    r->add_more_values(std::move(*more.value));
  }
  batch_extras_.fetch_add(1 + static_cast<uint64_t>(r->more_values_size()),
                          std::memory_order_relaxed);
}

void Session::return_values(uint64_t id, const v1::ReturnRequest& req) {
  std::shared_ptr<ChannelObject> obj = object<ChannelObject>(id, req.handle());
  if (obj == nullptr) return;
  for (const std::string& v : req.values()) {
    if (!check_value_size(id, v)) return;  // answered; nothing taken
  }
  // Only values this session took in batches can come back.
  const auto n = static_cast<uint64_t>(req.values_size());
  uint64_t held = batch_extras_.load(std::memory_order_relaxed);
  do {
    if (n > held) {
      reply(error_frame(
          id, absl::FailedPreconditionError(absl::StrFormat(
                  "ReturnRequest hands back %d values, but this session "
                  "holds only %d values from batch receives",
                  n, held))));
      return;
    }
  } while (!batch_extras_.compare_exchange_weak(held, held - n,
                                                std::memory_order_relaxed));
  // A value that finds the buffer full waits for room behind the senders
  // already parked (in order).
  for (const std::string& v : req.values()) ChannelObject::give_back(obj, v);
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_return_values()->set_taken(
      static_cast<uint64_t>(req.values_size()));
  reply(std::move(f));
}

void Session::close(uint64_t id, const v1::CloseRequest& req) {
  std::shared_ptr<ChannelObject> obj = object<ChannelObject>(id, req.handle());
  if (obj == nullptr) return;
  try {
    obj->chan.close();
  } catch (const Error& e) {
    reply_error(id, e.status());
    return;
  }
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_close();
  reply(std::move(f));
}

void Session::cancel(uint64_t id, const v1::CancelRequest& req) {
  Withdraw withdraw;
  v1::ClientFrame::OpCase kind;
  bool pending, id_in_use;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(req.target());
    pending = it != pending_.end();
    id_in_use = id != 0 && pending_.contains(id);
    if (pending) {
      withdraw = it->second.withdraw;
      kind = it->second.kind;
    }
  }
  if (id_in_use) {
    // Its answer would be taken for the pending request's.
    reply_error(id, absl::InvalidArgumentError(absl::StrCat(
                        "cancel: request id ", id, " is already pending")));
    return;
  }
  // The cancel's own answer; id 0 (the old, unanswered form) gets none.
  auto answer = [&](bool withdrawn) {
    if (id == 0) return;
    v1::ServerFrame f;
    f.set_id(id);
    f.mutable_cancel()->set_withdrawn(withdrawn);
    reply(std::move(f));
  };
  if (!pending) {
    if (id != 0) {
      reply_error(id, absl::NotFoundError(absl::StrCat(
                          "cancel: no request ", req.target(),
                          " is pending in this session (answered already, "
                          "or never made)")));
    }
    return;
  }
  // Not withdrawn: it fired, and its own answer is on its way.
  if (!withdraw || !withdraw()) {
    answer(false);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    pending_.erase(req.target());
    offer_claims_.erase(req.target());
  }
  // The answer to the withdrawn request itself, in its own shape.
  v1::ServerFrame f;
  f.set_id(req.target());
  switch (kind) {
    case v1::ClientFrame::kSend:
      f.mutable_send()->set_outcome(v1::OUTCOME_CANCELLED);
      break;
    case v1::ClientFrame::kSelect:
      f.mutable_select()->set_outcome(v1::OUTCOME_CANCELLED);
      break;
    case v1::ClientFrame::kWatch:
      f.mutable_watch()->set_outcome(v1::OUTCOME_CANCELLED);
      break;
    case v1::ClientFrame::kOffer:
      f.mutable_offer()->set_outcome(v1::OUTCOME_CANCELLED);
      break;
    case v1::ClientFrame::kLock:
      f.mutable_lock()->set_outcome(v1::OUTCOME_CANCELLED);
      break;
    case v1::ClientFrame::kWanted:
      f.mutable_wanted()->set_outcome(v1::OUTCOME_CANCELLED);
      break;
    case v1::ClientFrame::kWait:
      f.mutable_wait()->set_outcome(v1::OUTCOME_CANCELLED);
      break;
    default:
      f.mutable_recv()->set_outcome(v1::OUTCOME_CANCELLED);
      break;
  }
  reply(std::move(f));
  answer(true);
}

void Session::select(uint64_t id, const v1::SelectRequest& req) {
  if (static_cast<std::size_t>(req.cases_size()) > limits_.max_select_cases) {
    reply_error(
        id, absl::InvalidArgumentError(absl::StrCat(
                "select of ", req.cases_size(), " cases is over the limit of ",
                limits_.max_select_cases)));
    return;
  }
  std::vector<AsyncSelectCase<std::string>> cases;
  std::vector<std::shared_ptr<ChannelObject>> objs;
  cases.reserve(req.cases_size());
  for (const v1::SelectCase& c : req.cases()) {
    std::shared_ptr<ChannelObject> obj = object<ChannelObject>(id, c.handle());
    if (obj == nullptr || !check_value_size(id, c.value())) return;
    cases.push_back({obj->chan, c.send(), c.value()});
    objs.push_back(std::move(obj));
  }
  const uint64_t seq =
      req.nonblocking() ? 0 : begin_pending(id, v1::ClientFrame::kSelect);
  if (!req.nonblocking() && seq == 0) return;
  auto done = [self = shared_from_this(), id, seq, objs,
               nonblocking = req.nonblocking()](SelectOutcome<std::string> o) {
    v1::ServerFrame f;
    f.set_id(id);
    v1::SelectResponse* r = f.mutable_select();
    r->set_index(static_cast<uint32_t>(o.index));
    r->set_outcome(to_outcome(o.status));
    const bool got_value = o.value.has_value();
    if (got_value) r->set_value(*o.value);
    if (nonblocking) {
      self->deliver(std::move(f), got_value ? objs[o.index] : nullptr);
    } else {
      self->finish_pending(id, seq, std::move(f),
                           got_value ? objs[o.index] : nullptr);
    }
  };
  PendingOp op = select_async<std::string>(std::move(cases), req.nonblocking(),
                                           std::move(done));
  if (!req.nonblocking()) attach(id, seq, std::move(op));
}

void Session::stat(uint64_t id, const v1::StatRequest& req) {
  std::shared_ptr<ChannelObject> obj = object<ChannelObject>(id, req.handle());
  if (obj == nullptr) return;
  const detail::ChanStats st = detail::stats_of(obj->chan);
  v1::ServerFrame f;
  f.set_id(id);
  v1::StatResponse* r = f.mutable_stat();
  r->set_len(st.len + obj->after_close_count());
  r->set_cap(st.cap);
  r->set_closed(st.closed);
  reply(std::move(f));
}

void Session::watch(uint64_t id, const v1::WatchRequest& req) {
  std::shared_ptr<ChannelObject> obj = object<ChannelObject>(id, req.handle());
  if (obj == nullptr) return;
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kWatch);
  if (seq == 0) return;
  PendingOp op =
      obj->chan.ready_async(req.send(), [self = shared_from_this(), id, seq] {
        v1::ServerFrame f;
        f.set_id(id);
        f.mutable_watch()->set_outcome(v1::OUTCOME_OK);
        self->finish_pending(id, seq, std::move(f), nullptr);
      });
  attach(id, seq, std::move(op));
}

void Session::offer(uint64_t id, const v1::OfferRequest& req) {
  std::shared_ptr<ChannelObject> obj = object<ChannelObject>(id, req.handle());
  if (obj == nullptr || !check_value_size(id, req.value())) return;
  if (obj->capacity != 0) {
    reply_error(
        id, absl::InvalidArgumentError(absl::StrCat(
                "\"", obj->name(), "\" is buffered (capacity ", obj->capacity,
                "): offers are for unbuffered channels only")));
    return;
  }
  if (req.select_id() == 0) {
    reply_error(id, absl::InvalidArgumentError("an offer needs a select_id"));
    return;
  }
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kOffer);
  if (seq == 0) return;
  OfferBook::Spec spec;
  spec.owner = std::static_pointer_cast<OfferOwner>(shared_from_this());
  spec.session_id = id_;
  spec.select_id = req.select_id();
  spec.request_id = id;
  spec.seq = seq;
  spec.send = req.send();
  if (spec.send) {
    spec.value = req.value();
  } else {
    spec.returned_to = obj;
  }
  std::shared_ptr<OfferBook> book = obj->offers;
  const uint64_t key = book->add(std::move(spec));
  attach(
      id, seq, [book, key] { return book->withdraw(key); },
      [book, key](uint64_t claim, bool accept) {
        return book->answer(key, claim, accept);
      });
}

void Session::claim_answer(const v1::ClaimAnswer& req) {
  AnswerClaim answer;
  {
    absl::MutexLock lock(&mu_);
    auto it = offer_claims_.find(req.target());
    if (it != offer_claims_.end()) answer = it->second;
  }
  absl::Status st;
  if (!answer) {
    st = absl::FailedPreconditionError(
        absl::StrCat("claim answer for request ", req.target(),
                     ", which is not a pending offer"));
  } else {
    st = answer(req.claim(), req.accept());
  }
  if (!st.ok()) {
    // Id 0: the answer of no request (clients ignore it); the offer itself
    // is unaffected.
    reply_error(
        0, absl::Status(st.code(),
                        absl::StrCat("claim answer for request ", req.target(),
                                     ": ", st.message(), "; ignored")));
  }
}

void Session::ask_claim(uint64_t request_id, uint64_t claim) {
  v1::ServerFrame f;
  f.set_id(request_id);
  f.mutable_offer_claim()->set_claim(claim);
  reply(std::move(f));
}

void Session::finish_offer(uint64_t request_id, uint64_t seq,
                           v1::Outcome outcome,
                           std::optional<std::string> value,
                           const std::shared_ptr<ChannelObject>& returned_to) {
  v1::ServerFrame f;
  f.set_id(request_id);
  v1::OfferResponse* r = f.mutable_offer();
  r->set_outcome(outcome);
  const bool got_value = value.has_value();
  if (got_value) r->set_value(*std::move(value));
  finish_pending(request_id, seq, std::move(f),
                 got_value ? returned_to : nullptr);
}

void Session::lock(uint64_t id, const v1::LockRequest& req) {
  std::shared_ptr<LockObject> obj = object<LockObject>(id, req.handle());
  if (obj == nullptr) return;
  if (req.nonblocking()) {
    absl::StatusOr<LockObject::Request> r =
        obj->lock(shared_from_this(), req.shared(), nullptr, req.token_block());
    if (!r.ok()) {
      reply_error(id, r.status());
    } else {
      reply(lock_frame(id,
                       r->granted ? v1::OUTCOME_OK : v1::OUTCOME_WOULD_BLOCK,
                       r->token, req.token_block()));
    }
    return;
  }
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kLock);
  if (seq == 0) return;
  absl::StatusOr<LockObject::Request> r = obj->lock(
      shared_from_this(), req.shared(),
      [self = shared_from_this(), id, seq,
       block = req.token_block()](uint64_t token) {
        self->finish_pending(
            id, seq, lock_frame(id, v1::OUTCOME_OK, token, block), nullptr);
      },
      req.token_block());
  if (!r.ok()) {
    finish_pending(id, seq, error_frame(id, r.status()), nullptr);
  } else if (r->granted) {
    finish_pending(id, seq,
                   lock_frame(id, v1::OUTCOME_OK, r->token, req.token_block()),
                   nullptr);
  } else {
    attach(id, seq,
           [obj, ticket = r->ticket] { return obj->withdraw(ticket); });
  }
}

void Session::unlock(uint64_t id, const v1::UnlockRequest& req) {
  std::shared_ptr<LockObject> obj = object<LockObject>(id, req.handle());
  if (obj == nullptr) return;
  // Returns once the lock has been handed on: the next holder's answer is
  // queued before this one.
  const absl::Status st = obj->unlock(*this, req.shared(), req.token());
  if (!st.ok()) {
    reply_error(id, st);
    return;
  }
  if (req.quiet()) return;  // answered only when refused
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_unlock();
  reply(std::move(f));
}

void Session::wanted(uint64_t id, const v1::WantedRequest& req) {
  std::shared_ptr<LockObject> obj = object<LockObject>(id, req.handle());
  if (obj == nullptr) return;
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kWanted);
  if (seq == 0) return;
  auto answer = [id](v1::Outcome outcome) {
    v1::ServerFrame f;
    f.set_id(id);
    f.mutable_wanted()->set_outcome(outcome);
    return f;
  };
  uint64_t ticket = 0;
  const absl::StatusOr<LockObject::Wanted> w = obj->wanted(
      *this, req.token(),
      [self = shared_from_this(), id, seq, answer](bool wanted) {
        self->finish_pending(
            id, seq, answer(wanted ? v1::OUTCOME_OK : v1::OUTCOME_CANCELLED),
            nullptr);
      },
      &ticket);
  if (!w.ok()) {
    finish_pending(id, seq, error_frame(id, w.status()), nullptr);
  } else if (*w == LockObject::Wanted::kNow) {
    finish_pending(id, seq, answer(v1::OUTCOME_OK), nullptr);
  } else if (*w == LockObject::Wanted::kNoHold) {
    finish_pending(id, seq, answer(v1::OUTCOME_CANCELLED), nullptr);
  } else {
    attach(id, seq, [obj, ticket] { return obj->withdraw_wanted(ticket); });
  }
}

void Session::add(uint64_t id, const v1::AddRequest& req) {
  std::shared_ptr<WaitGroupObject> obj =
      object<WaitGroupObject>(id, req.handle());
  if (obj == nullptr) return;
  const absl::StatusOr<int64_t> count = obj->add(*this, req.delta());
  if (!count.ok()) {
    reply_error(id, count.status());
    return;
  }
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_add()->set_count(*count);
  reply(std::move(f));
}

void Session::wait(uint64_t id, const v1::WaitRequest& req) {
  std::shared_ptr<WaitGroupObject> obj =
      object<WaitGroupObject>(id, req.handle());
  if (obj == nullptr) return;
  using Result = WaitGroupObject::Wait::Result;
  if (req.nonblocking()) {
    absl::StatusOr<WaitGroupObject::Wait> w = obj->wait();
    if (!w.ok()) {
      reply_error(id, w.status());
    } else {
      reply(wait_frame(
          id,
          w->result == Result::kZero ? v1::OUTCOME_OK : v1::OUTCOME_WOULD_BLOCK,
          w->count));
    }
    return;
  }
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kWait);
  if (seq == 0) return;
  absl::StatusOr<WaitGroupObject::Wait> w =
      obj->wait([self = shared_from_this(), id, seq](absl::Status st) {
        self->finish_pending(
            id, seq,
            st.ok() ? wait_frame(id, v1::OUTCOME_OK, 0) : error_frame(id, st),
            nullptr);
      });
  if (!w.ok()) {
    finish_pending(id, seq, error_frame(id, w.status()), nullptr);
  } else if (w->result == Result::kQueued) {
    attach(id, seq,
           [obj, ticket = w->ticket] { return obj->withdraw(ticket); });
  } else {
    finish_pending(id, seq, wait_frame(id, v1::OUTCOME_OK, 0), nullptr);
  }
}

void Session::load(uint64_t id, const v1::LoadRequest& req) {
  std::shared_ptr<ValueObject> obj = object<ValueObject>(id, req.handle());
  if (obj == nullptr) return;
  std::optional<std::string> v = obj->load();
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_load()->set_has_value(v.has_value());
  if (v.has_value()) f.mutable_load()->set_value(*std::move(v));
  reply(std::move(f));
}

void Session::swap(uint64_t id, const v1::SwapRequest& req) {
  std::shared_ptr<ValueObject> obj = object<ValueObject>(id, req.handle());
  if (obj == nullptr || !check_value_size(id, req.value())) return;
  std::optional<std::string> old = obj->swap(req.value());
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_swap()->set_had_value(old.has_value());
  if (old.has_value()) f.mutable_swap()->set_old(*std::move(old));
  reply(std::move(f));
}

void Session::compare_and_swap(uint64_t id,
                               const v1::CompareAndSwapRequest& req) {
  std::shared_ptr<ValueObject> obj = object<ValueObject>(id, req.handle());
  if (obj == nullptr || !check_value_size(id, req.desired())) return;
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_compare_and_swap()->set_swapped(
      obj->compare_and_swap(req.old(), req.desired()));
  reply(std::move(f));
}

uint64_t Session::begin_pending(uint64_t id, v1::ClientFrame::OpCase kind) {
  absl::Status error;
  uint64_t seq = 0;
  {
    absl::MutexLock lock(&mu_);
    if (ended_) {
      error = absl::UnavailableError("the session has ended");
    } else if (pending_.contains(id)) {
      error = absl::InvalidArgumentError(
          absl::StrCat("request id ", id, " is already pending"));
    } else if (pending_.size() >= limits_.max_pending) {
      error = absl::ResourceExhaustedError(
          absl::StrCat("this session has ", pending_.size(),
                       " pending operations, its limit"));
    } else {
      seq = next_seq_++;
      Pending& p = pending_[id];
      p.seq = seq;
      p.kind = kind;
    }
  }
  if (seq == 0) reply_error(id, error);
  return seq;
}

void Session::attach(uint64_t id, uint64_t seq, PendingOp op) {
  attach(id, seq, [op]() mutable { return op.cancel(); });
}

void Session::attach(uint64_t id, uint64_t seq, Withdraw withdraw,
                     AnswerClaim answer_claim) {
  bool withdraw_now = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(id);
    const bool ours = it != pending_.end() && it->second.seq == seq;
    if (ended_) {
      // end() ran while this operation was being set up (and cleared the
      // table): withdraw it, or it would stay queued for good.
      if (ours) {
        pending_.erase(it);
        offer_claims_.erase(id);
      }
      withdraw_now = true;
    } else if (ours) {
      it->second.withdraw = withdraw;
      if (answer_claim) offer_claims_[id] = std::move(answer_claim);
    }
  }
  // Harmless if it fired meanwhile: its answer found the session ended and
  // returned any value it took.
  if (withdraw_now) withdraw();
}

void Session::finish_pending(
    uint64_t id, uint64_t seq, v1::ServerFrame frame,
    const std::shared_ptr<ChannelObject>& returned_to) {
  bool live;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(id);
    if (it != pending_.end() && it->second.seq == seq) {
      pending_.erase(it);
      offer_claims_.erase(id);
    }
    live = !ended_;
  }
  if (live && outbox_->push(frame, returned_to)) return;
  return_frame_value(frame, returned_to);
}

void Session::end() {
  std::vector<Withdraw> withdraws;
  std::vector<std::shared_ptr<Object>> objects;
  {
    absl::MutexLock lock(&mu_);
    if (ended_) return;
    ended_ = true;
    ended_flag_.store(true, std::memory_order_release);
    withdraws.reserve(pending_.size());
    for (auto& [id, p] : pending_) withdraws.push_back(std::move(p.withdraw));
    pending_.clear();
    offer_claims_.clear();
    objects.reserve(tell_on_end_.size());
    for (const auto& [obj, handles] : tell_on_end_) objects.push_back(obj);
    tell_on_end_.clear();
  }
  // An op that fired meanwhile finds ended_ and returns its value.
  for (Withdraw& w : withdraws) {
    if (w) w();
  }
  // live() is false from here on: nothing new is recorded for this session
  // on these objects (see object.h).
  for (const std::shared_ptr<Object>& obj : objects) obj->session_ended(*this);
  std::vector<std::string> names;
  names.reserve(objects.size());
  for (const std::shared_ptr<Object>& obj : objects) {
    names.push_back(obj->name());
  }
  absl::MutexLock lock(&mu_);
  told_names_ = std::move(names);
}

void Session::drop_handles() {
  std::vector<std::string> names;
  {
    absl::MutexLock lock(&mu_);
    if (!ended_) return;  // handle() may still run
    names = std::move(told_names_);
    told_names_.clear();
    handles_count_ = 0;
  }
  names.reserve(names.size() + handles_.size());
  for (const auto& [handle, obj] : handles_) {
    names.push_back(obj->name());
    obj->drop_handle();
  }
  // Our references go first: see Registry.
  handles_.clear();
  for (const std::string& name : names) registry_.forget_if_idle(name);
}

bool Session::expire_if_silent(Clock::time_point now) {
  const std::chrono::milliseconds ttl_now = ttl();
  if (!live() || now - last_frame() <= ttl_now) return false;
  const std::string name = client_name();
  const std::string who =
      name.empty() ? peer_ : absl::StrCat("\"", name, "\", ", peer_);
  std::fprintf(stderr,
               "dchan-broker: session %llu (%s) expired: no frame for %lld "
               "ms; ending it\n",
               static_cast<unsigned long long>(id_), who.c_str(),
               static_cast<long long>(ttl_now.count()));
  end();
  outbox_->finish(absl::UnavailableError(
      absl::StrCat("dchan-broker: session ", id_, " expired (no frame for ",
                   ttl_now.count(), " ms)")));
  return true;
}

std::string Session::describe() const {
  const std::string name = client_name();
  if (name.empty()) {
    return absl::StrCat("participant (session ", id_, ", ", peer_, ")");
  }
  return absl::StrCat("participant \"", name, "\" (session ", id_, ", ", peer_,
                      ")");
}

std::string Session::client_name() const {
  absl::MutexLock lock(&mu_);
  return client_name_;
}

void Session::reply(v1::ServerFrame frame) { outbox_->push(frame, nullptr); }

void Session::deliver(v1::ServerFrame frame,
                      const std::shared_ptr<ChannelObject>& returned_to) {
  if (!outbox_->push(frame, returned_to)) {
    return_frame_value(frame, returned_to);
  }
}

void Session::reply_error(uint64_t id, const absl::Status& status) {
  reply(error_frame(id, status));
}

std::size_t Session::pending_count() const {
  absl::MutexLock lock(&mu_);
  return pending_.size();
}

std::size_t Session::handle_count() const {
  absl::MutexLock lock(&mu_);
  return handles_count_;
}

std::size_t Session::locks_held() const {
  std::vector<std::shared_ptr<Object>> objects;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [obj, handles] : tell_on_end_) objects.push_back(obj);
  }
  std::size_t n = 0;
  for (const std::shared_ptr<Object>& obj : objects) {
    if (LockObject::is_kind(obj->kind())) {
      n += static_cast<const LockObject&>(*obj).holds_of(id_);
    }
  }
  return n;
}

}  // namespace dchan::server
