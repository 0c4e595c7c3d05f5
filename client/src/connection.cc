#include "connection.h"

#include <utility>

#include "absl/strings/str_cat.h"
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
  reader_ = std::thread([this] { read_loop(); });
}

Connection::~Connection() {
  {
    absl::MutexLock lock(&write_mu_);
    // No user thread can be writing: each holds a reference while it does.
    if (!writes_failed_) stream_->WritesDone();
  }
  context_.TryCancel();
  reader_.join();
}

uint64_t Connection::call_async(v1::ClientFrame& frame, Callback on_answer) {
  auto call = std::make_shared<Call>();
  call->on_answer = std::move(on_answer);
  uint64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) throw_status(broken_);
    id = next_id_++;
    frame.set_id(id);
    calls_.emplace(id, std::move(call));
  }
  enqueue(std::move(frame));
  return id;
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
  call.done.try_claim();
  call.done.complete(0, error.ok());
}

std::shared_ptr<Connection::Call> Connection::start(v1::ClientFrame& frame,
                                                    uint64_t* id) {
  auto call = std::make_shared<Call>();
  {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) throw_status(broken_);
    *id = next_id_++;
    frame.set_id(*id);
    calls_.emplace(*id, call);
  }
  enqueue(std::move(frame));
  return call;
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
  uint64_t id = 0;
  std::shared_ptr<Call> call = start(frame, &id);
  if (deadline == Deadline::max() || deadline == Deadline::min()) {
    call->done.wait();
  } else if (!call->done.wait_until(deadline)) {
    // Withdraw it; the broker then answers CANCELLED, or the result if the
    // operation completed first.
    v1::ClientFrame cancel;
    cancel.mutable_cancel()->set_target(id);
    enqueue(std::move(cancel));
    call->done.wait();
  }
  if (!call->error.ok()) throw_status(call->error);
  if (call->answer.code() != 0) {
    throw Error(static_cast<absl::StatusCode>(call->answer.code()),
                call->answer.message());
  }
  return std::move(call->answer);
}

void Connection::read_loop() {
  v1::ServerBatch batch;
  while (stream_->Read(&batch)) {
    for (v1::ServerFrame& f : *batch.mutable_frames()) {
      std::shared_ptr<Call> call;
      {
        absl::MutexLock lock(&mu_);
        auto it = calls_.find(f.id());
        if (it == calls_.end()) continue;
        call = std::move(it->second);
        calls_.erase(it);
      }
      call->answer.Swap(&f);
      finish(*call, absl::OkStatus());
    }
    batch.Clear();
  }
  // The stream is over. Stop writers, and wait for a Write in progress (it
  // fails now) before Finish: the sync API allows no Write during Finish.
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
  {
    absl::MutexLock lock(&mu_);
    broken_ = status;
    calls.swap(calls_);
  }
  for (auto& [id, call] : calls) finish(*call, status);
}

}  // namespace dchan::detail
