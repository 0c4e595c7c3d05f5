#include "session.h"

#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dchan/error.h"
#include "dchan/select.h"

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

// Sends a value that its session could not take back into its channel.
void return_value(const std::shared_ptr<ChannelObject>& obj, std::string value,
                  uint64_t session_id);

}  // namespace

void return_frame_value(v1::ServerFrame& frame,
                        const std::shared_ptr<ChannelObject>& returned_to,
                        uint64_t session_id) {
  if (returned_to == nullptr) return;
  if (frame.has_recv() && frame.recv().outcome() == v1::OUTCOME_OK) {
    return_value(returned_to, std::move(*frame.mutable_recv()->mutable_value()),
                 session_id);
  } else if (frame.has_select() && frame.select().outcome() == v1::OUTCOME_OK) {
    return_value(returned_to,
                 std::move(*frame.mutable_select()->mutable_value()),
                 session_id);
  }
}

namespace {

void return_value(const std::shared_ptr<ChannelObject>& obj, std::string value,
                  uint64_t session_id) {
  obj->chan.send_async(std::move(value), [obj, session_id](bool ok) {
    if (!ok) {
      std::fprintf(
          stderr,
          "dchan-broker: session %llu ended holding a value of "
          "channel \"%s\", which was closed meanwhile: value dropped\n",
          static_cast<unsigned long long>(session_id), obj->name.c_str());
    }
  });
}

}  // namespace

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
      limits_(limits) {}

Session::~Session() = default;

void Session::handle(const v1::ClientFrame& frame) {
  if (ended_flag_.load(std::memory_order_acquire)) return;
  const uint64_t id = frame.id();
  if (frame.op_case() == v1::ClientFrame::kCancel) {
    cancel(frame.cancel());
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
      send(id, frame.send());
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
    case v1::ClientFrame::kCancel:
    case v1::ClientFrame::OP_NOT_SET:
      break;
  }
  reply_error(id, absl::InvalidArgumentError(
                      "the frame carries no operation this broker knows"));
}

void Session::open(uint64_t id, const v1::OpenRequest& req) {
  if (req.kind() != v1::OBJECT_KIND_CHANNEL) {
    reply_error(id, absl::InvalidArgumentError(absl::StrCat(
                        "open \"", req.name(), "\": unsupported object kind ",
                        v1::ObjectKind_Name(req.kind()))));
    return;
  }
  if (handles_.size() >= limits_.max_handles) {
    reply_error(id, absl::ResourceExhaustedError(
                        absl::StrCat("this session holds ", handles_.size(),
                                     " handles, its limit")));
    return;
  }
  absl::StatusOr<std::shared_ptr<ChannelObject>> obj =
      registry_.open_channel(req.name(), req.type_name(), req.capacity());
  if (!obj.ok()) {
    reply_error(id, obj.status());
    return;
  }
  const uint64_t handle = next_handle_++;
  handles_.emplace(handle, *std::move(obj));
  {
    absl::MutexLock lock(&mu_);
    handles_count_ = handles_.size();
  }
  v1::ServerFrame f;
  f.set_id(id);
  f.mutable_open()->set_handle(handle);
  reply(std::move(f));
}

std::shared_ptr<ChannelObject> Session::channel(uint64_t id, uint64_t handle) {
  auto it = handles_.find(handle);
  if (it == handles_.end()) {
    reply_error(id,
                absl::NotFoundError(absl::StrCat("unknown handle ", handle,
                                                 " (open the object first)")));
    return nullptr;
  }
  return it->second;
}

void Session::send(uint64_t id, const v1::SendRequest& req) {
  std::shared_ptr<ChannelObject> obj = channel(id, req.handle());
  if (obj == nullptr) return;
  if (req.value().size() > limits_.max_value_bytes) {
    reply_error(
        id, absl::InvalidArgumentError(absl::StrCat(
                "value of ", req.value().size(), " bytes is over the limit of ",
                limits_.max_value_bytes)));
    return;
  }
  if (req.nonblocking()) {
    reply(send_frame(id, to_outcome(obj->chan.try_send(req.value()))));
    return;
  }
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kSend);
  if (seq == 0) return;
  PendingOp op = obj->chan.send_async(
      req.value(), [self = shared_from_this(), id, seq](bool ok) {
        self->finish_pending(
            id, seq, send_frame(id, ok ? v1::OUTCOME_OK : v1::OUTCOME_CLOSED),
            nullptr);
      });
  attach(id, seq, std::move(op));
}

void Session::recv(uint64_t id, const v1::RecvRequest& req) {
  std::shared_ptr<ChannelObject> obj = channel(id, req.handle());
  if (obj == nullptr) return;
  if (req.nonblocking()) {
    RecvResult<std::string> r = obj->chan.try_recv();
    deliver(recv_frame(id, std::move(r.value), to_outcome(r.status)), obj);
    return;
  }
  const uint64_t seq = begin_pending(id, v1::ClientFrame::kRecv);
  if (seq == 0) return;
  PendingOp op = obj->chan.recv_async(
      [self = shared_from_this(), id, seq, obj](std::optional<std::string> v) {
        self->finish_pending(
            id, seq, recv_frame(id, std::move(v), v1::OUTCOME_CLOSED), obj);
      });
  attach(id, seq, std::move(op));
}

void Session::close(uint64_t id, const v1::CloseRequest& req) {
  std::shared_ptr<ChannelObject> obj = channel(id, req.handle());
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

void Session::cancel(const v1::CancelRequest& req) {
  PendingOp op;
  v1::ClientFrame::OpCase kind;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(req.target());
    if (it == pending_.end()) return;  // unknown, or answered already
    op = it->second.op;
    kind = it->second.kind;
  }
  if (!op.cancel()) return;  // it fired: its own answer is on its way
  {
    absl::MutexLock lock(&mu_);
    pending_.erase(req.target());
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
    default:
      f.mutable_recv()->set_outcome(v1::OUTCOME_CANCELLED);
      break;
  }
  reply(std::move(f));
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
    std::shared_ptr<ChannelObject> obj = channel(id, c.handle());
    if (obj == nullptr) return;
    if (c.value().size() > limits_.max_value_bytes) {
      reply_error(
          id, absl::InvalidArgumentError(absl::StrCat(
                  "value of ", c.value().size(), " bytes is over the limit of ",
                  limits_.max_value_bytes)));
      return;
    }
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
  std::shared_ptr<ChannelObject> obj = channel(id, req.handle());
  if (obj == nullptr) return;
  const detail::ChanStats st = detail::stats_of(obj->chan);
  v1::ServerFrame f;
  f.set_id(id);
  v1::StatResponse* r = f.mutable_stat();
  r->set_len(st.len);
  r->set_cap(st.cap);
  r->set_closed(st.closed);
  reply(std::move(f));
}

void Session::watch(uint64_t id, const v1::WatchRequest& req) {
  std::shared_ptr<ChannelObject> obj = channel(id, req.handle());
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
  bool withdraw = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(id);
    const bool ours = it != pending_.end() && it->second.seq == seq;
    if (ended_) {
      // end() ran while this operation was being set up (and cleared the
      // table): withdraw it, or it would stay queued for good.
      if (ours) pending_.erase(it);
      withdraw = true;
    } else if (ours) {
      it->second.op = op;
    }
  }
  // Harmless if it fired meanwhile: its answer found the session ended and
  // returned any value it took.
  if (withdraw) op.cancel();
}

void Session::finish_pending(
    uint64_t id, uint64_t seq, v1::ServerFrame frame,
    const std::shared_ptr<ChannelObject>& returned_to) {
  bool live;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(id);
    if (it != pending_.end() && it->second.seq == seq) pending_.erase(it);
    live = !ended_;
  }
  if (live && outbox_->push(frame, returned_to)) return;
  return_frame_value(frame, returned_to, id_);
}

void Session::end() {
  std::vector<PendingOp> ops;
  {
    absl::MutexLock lock(&mu_);
    if (ended_) return;
    ended_ = true;
    ended_flag_.store(true, std::memory_order_release);
    ops.reserve(pending_.size());
    for (auto& [id, p] : pending_) ops.push_back(std::move(p.op));
    pending_.clear();
  }
  // An op that fired meanwhile finds ended_ and returns its value.
  for (PendingOp& op : ops) op.cancel();
}

void Session::reply(v1::ServerFrame frame) { outbox_->push(frame, nullptr); }

void Session::deliver(v1::ServerFrame frame,
                      const std::shared_ptr<ChannelObject>& returned_to) {
  if (!outbox_->push(frame, returned_to)) {
    return_frame_value(frame, returned_to, id_);
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

}  // namespace dchan::server
