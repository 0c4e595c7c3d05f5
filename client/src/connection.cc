#include "connection.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "dchan/detail/futex.h"
#include "dchan/error.h"

namespace dchan::detail {
namespace {

[[noreturn]] void throw_status(const absl::Status& status) {
  throw Error(status.code(), std::string(status.message()));
}

}  // namespace

Connection::Connection(const std::string& target, const ClientOptions& options)
    : target_(target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
              static_cast<int>(options.keepalive_time.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
              static_cast<int>(options.keepalive_timeout.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetMaxReceiveMessageSize(-1);
  // Each Client is its own session: do not share a connection between them.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  channel_ = grpc::CreateCustomChannel(
      target, grpc::InsecureChannelCredentials(), args);
  const auto deadline =
      std::chrono::system_clock::now() + options.connect_timeout;
  if (!channel_->WaitForConnected(deadline)) {
    throw Error(
        absl::StatusCode::kUnavailable,
        absl::StrCat("dchan: cannot reach the broker at ", target, " within ",
                     options.connect_timeout.count(), " ms"));
  }
  stub_ = v1::Broker::NewStub(channel_);
  stream_ = stub_->Session(&context_);
  background_reader_ = std::thread([this] { background_read_loop(); });
}

Connection::~Connection() {
  {
    absl::MutexLock lock(&write_mu_);
    // No user thread can be writing: each holds a reference while it does.
    if (!writes_failed_) stream_->WritesDone();
  }
  context_.TryCancel();
  // Read the stream to its end (nobody else is left to, unless the
  // background reader holds the role for an asynchronous call): that
  // finishes it and fails what is still outstanding.
  bool read_to_end = false;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    mu_.Await(absl::Condition(
        +[](Connection* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
          return !c->reading_ || c->stream_over_;
        },
        this));
    if (!stream_over_) {
      reading_ = true;
      read_to_end = true;
    }
  }
  if (read_to_end) {
    v1::ServerBatch batch;
    for (;;) {
      read_once(batch);
      absl::MutexLock lock(&mu_);
      if (stream_over_) break;
    }
  }
  background_reader_.join();
}

uint64_t Connection::call_async(v1::ClientFrame& frame, Callback on_answer) {
  auto call = std::make_shared<Call>();
  call->on_answer = std::move(on_answer);
  return start(call, frame);
}

void Connection::cancel(uint64_t id) noexcept {
  v1::ClientFrame cancel;
  cancel.mutable_cancel()->set_target(id);
  enqueue(std::move(cancel));
}

void Connection::finish(Call& call, const absl::Status& error) {
  if (call.on_answer) {
    std::move(call.on_answer)(error, call.answer);
    return;
  }
  call.error = error;
  call.state.store(kAnswered, std::memory_order_release);
  futex_wake_all(call.state);
}

uint64_t Connection::start(const std::shared_ptr<Call>& call,
                           v1::ClientFrame& frame) {
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) throw_status(broken_);
    id = next_id_++;
    frame.set_id(id);
    calls_.emplace(id, call);
    if (!call->self_reading) ++background_needed_;
  }
  enqueue(std::move(frame));
  return id;
}

void Connection::enqueue(v1::ClientFrame frame) {
  v1::ClientBatch batch;
  {
    absl::MutexLock lock(&write_mu_);
    write_queue_.push_back(std::move(frame));
    if (writing_) return;  // the writer in progress takes it along
    writing_ = true;
  }
  for (;;) {
    {
      absl::MutexLock lock(&write_mu_);
      if (write_queue_.empty() || writes_failed_) {
        write_queue_.clear();
        writing_ = false;
        return;
      }
      // Up to kMaxBatchBytes per message (a larger frame goes alone), so
      // that a batch never exceeds the broker's --max_message_bytes.
      batch.Clear();
      std::size_t bytes = 0, taken = 0;
      while (taken < write_queue_.size()) {
        const std::size_t size = write_queue_[taken].ByteSizeLong();
        if (taken > 0 && bytes + size > kMaxBatchBytes) break;
        bytes += size;
        batch.add_frames()->Swap(&write_queue_[taken]);
        ++taken;
      }
      write_queue_.erase(write_queue_.begin(), write_queue_.begin() + taken);
    }
    if (!stream_->Write(batch)) {
      // The stream is broken; the reader sees it end and fails every call.
      absl::MutexLock lock(&write_mu_);
      writes_failed_ = true;
    }
  }
}

v1::ServerFrame Connection::call(v1::ClientFrame& frame, Deadline deadline) {
  auto call = std::make_shared<Call>();
  // A thread blocked in Read cannot honour a deadline: only untimed (and
  // non-blocking, answered at once) calls read for themselves.
  call->self_reading =
      deadline == Deadline::max() || deadline == Deadline::min();
  const uint64_t id = start(call, frame);
  if (call->self_reading) {
    wait_reading(call);
  } else if (!wait_answered(*call, deadline)) {
    // Withdraw it; the broker then answers CANCELLED, or the result if the
    // operation completed first.
    v1::ClientFrame cancel;
    cancel.mutable_cancel()->set_target(id);
    enqueue(std::move(cancel));
    wait_answered(*call, Deadline::max());
  }
  if (!call->error.ok()) throw_status(call->error);
  if (call->answer.code() != 0) {
    throw Error(static_cast<absl::StatusCode>(call->answer.code()),
                call->answer.message());
  }
  return std::move(call->answer);
}

bool Connection::wait_answered(Call& call, Deadline deadline) {
  for (;;) {
    if (call.state.load(std::memory_order_acquire) == kAnswered) return true;
    if (deadline == Deadline::max()) {
      futex_wait(call.state, kWaiting);
    } else if (!futex_wait_until(call.state, kWaiting, deadline)) {
      return call.state.load(std::memory_order_acquire) == kAnswered;
    }
  }
}

void Connection::wait_reading(const std::shared_ptr<Call>& call) {
  v1::ServerBatch batch;
  for (;;) {
    bool take = false;
    {
      absl::MutexLock lock(&mu_);
      if (call->settled) break;
      if (!reading_ && !stream_over_) {
        reading_ = true;
        take = true;
      } else if (!stream_over_) {
        idle_readers_.push_back(call);
      }
      // stream_over_: fail_all settles this call; wait for it below.
    }
    if (!take) {
      uint32_t s;
      while ((s = call->state.load(std::memory_order_acquire)) == kWaiting) {
        futex_wait(call->state, kWaiting);
      }
      if (s == kAnswered) break;
      // Handed the read role (kReader): reading_ stays true for us.
      call->state.store(kWaiting, std::memory_order_relaxed);
    }
    read_once(batch);
    release_read_role();
  }
  // The answer is published before `settled` is read under mu_, or by the
  // kAnswered store; either way wait for the store.
  while (call->state.load(std::memory_order_acquire) != kAnswered) {
    futex_wait(call->state, call->state.load(std::memory_order_relaxed));
  }
}

void Connection::read_once(v1::ServerBatch& batch) {
  batch.Clear();
  if (!stream_->Read(&batch)) {
    end_stream();
    return;
  }
  for (v1::ServerFrame& f : *batch.mutable_frames()) {
    std::shared_ptr<Call> call;
    {
      absl::MutexLock lock(&mu_);
      auto it = calls_.find(f.id());
      if (it == calls_.end()) continue;
      call = std::move(it->second);
      calls_.erase(it);
      call->settled = true;
      if (!call->self_reading) --background_needed_;
    }
    call->answer.Swap(&f);
    finish(*call, absl::OkStatus());
  }
}

void Connection::release_read_role() {
  std::shared_ptr<Call> next;
  {
    absl::MutexLock lock(&mu_);
    if (stream_over_) {
      reading_ = false;
      return;
    }
    while (!idle_readers_.empty()) {
      std::shared_ptr<Call> c = std::move(idle_readers_.front());
      idle_readers_.pop_front();
      if (!c->settled) {
        next = std::move(c);
        break;
      }
    }
    // Handing over keeps reading_ set: nobody else may take the role in
    // between. Otherwise the background reader sees reading_ clear (its
    // condition is re-evaluated as mu_ is released).
    if (next == nullptr) reading_ = false;
  }
  if (next != nullptr) {
    next->state.store(kReader, std::memory_order_release);
    futex_wake_all(next->state);
  }
}

void Connection::background_read_loop() {
  v1::ServerBatch batch;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Connection* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
            return c->stream_over_ || c->stopping_ ||
                   (!c->reading_ && c->background_needed_ > 0);
          },
          this));
      if (stream_over_ || stopping_) return;
      reading_ = true;
    }
    read_once(batch);
    release_read_role();
  }
}

void Connection::end_stream() {
  // Stop writers, and wait for a Write in progress (it fails now) before
  // Finish: the sync API allows no Write during Finish.
  {
    absl::MutexLock lock(&write_mu_);
    writes_failed_ = true;
    write_mu_.Await(absl::Condition(
        +[](bool* writing) { return !*writing; }, &writing_));
  }
  const grpc::Status st = stream_->Finish();
  fail_all(absl::UnavailableError(
      absl::StrCat("dchan: lost the broker at ", target_, ": ",
                   st.ok() ? "stream ended" : st.error_message())));
}

void Connection::fail_all(const absl::Status& status) {
  absl::flat_hash_map<uint64_t, std::shared_ptr<Call>> calls;
  std::deque<std::shared_ptr<Call>> idle;
  {
    absl::MutexLock lock(&mu_);
    broken_ = status;
    stream_over_ = true;
    calls.swap(calls_);
    idle.swap(idle_readers_);
    for (auto& [id, call] : calls) call->settled = true;
    background_needed_ = 0;
  }
  for (auto& [id, call] : calls) finish(*call, status);
}

}  // namespace dchan::detail
