#include "service.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "google/protobuf/arena.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/slice.h"
#include "reflection.h"

namespace dchan::server {
namespace {

// Received values of at least this many bytes leave as slices of their own
// buffers; smaller ones are copied into the batch's encoding (a slice per
// small value would cost more than the copy).
constexpr std::size_t kOwnSliceBytes = 16 << 10;

// Protobuf wire format: a length-delimited field is its tag byte
// (field number << 3 | 2), the length as a varint, then the bytes.
constexpr char kBatchFramesTag = (1 << 3) | 2;     // ServerBatch.frames
constexpr char kFrameRecvTag = (6 << 3) | 2;       // ServerFrame.recv
constexpr char kRecvValueTag = (2 << 3) | 2;       // RecvResponse.value
constexpr char kRecvMoreValuesTag = (3 << 3) | 2;  // RecvResponse.more_values

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

std::size_t varint_size(uint64_t v) {
  std::size_t n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}

bool has_large_value(const v1::ServerFrame& frame) {
  if (!frame.has_recv()) return false;
  const v1::RecvResponse& r = frame.recv();
  if (r.value().size() >= kOwnSliceBytes) return true;
  for (const std::string& v : r.more_values()) {
    if (v.size() >= kOwnSliceBytes) return true;
  }
  return false;
}

// Encodes frames as one ServerBatch message, the bytes a client parses as
// v1::ServerBatch. A receive answer that carries a large value is encoded
// as the frame without its values followed by a second `recv` field that
// holds them (a parser merges repeated occurrences of a message field, so
// the client sees one RecvResponse), and each large value is a slice that
// owns the value's buffer: the value is not copied on its way out.
class BatchEncoder {
 public:
  explicit BatchEncoder(std::size_t reserve) { bytes_.reserve(reserve); }

  // Appends `frame`, moving large values out of it.
  void add(v1::ServerFrame& frame) {
    if (!has_large_value(frame)) {
      const std::size_t size = frame.ByteSizeLong();
      bytes_.push_back(kBatchFramesTag);
      put_varint(bytes_, size);
      const std::size_t at = bytes_.size();
      bytes_.resize(at + size);
      frame.SerializeWithCachedSizesToArray(
          reinterpret_cast<uint8_t*>(&bytes_[at]));
      return;
    }
    v1::RecvResponse* r = frame.mutable_recv();
    std::vector<std::string> values;
    values.reserve(1 + static_cast<std::size_t>(r->more_values_size()));
    values.push_back(std::move(*r->mutable_value()));
    for (std::string& v : *r->mutable_more_values()) {
      values.push_back(std::move(v));
    }
    r->clear_value();
    r->clear_more_values();
    std::size_t values_size = 0;
    for (const std::string& v : values) {
      values_size += 1 + varint_size(v.size()) + v.size();
    }
    const std::size_t rest_size = frame.ByteSizeLong();
    bytes_.push_back(kBatchFramesTag);
    put_varint(bytes_, rest_size + 1 + varint_size(values_size) + values_size);
    const std::size_t at = bytes_.size();
    bytes_.resize(at + rest_size);
    frame.SerializeWithCachedSizesToArray(
        reinterpret_cast<uint8_t*>(&bytes_[at]));
    bytes_.push_back(kFrameRecvTag);
    put_varint(bytes_, values_size);
    for (std::size_t i = 0; i < values.size(); ++i) {
      bytes_.push_back(i == 0 ? kRecvValueTag : kRecvMoreValuesTag);
      put_varint(bytes_, values[i].size());
      if (values[i].size() >= kOwnSliceBytes) {
        cut();
        add_slice(std::move(values[i]));
      } else {
        bytes_.append(values[i]);
      }
    }
  }

  // The batch encoded so far.
  grpc::ByteBuffer finish() {
    cut();
    return grpc::ByteBuffer(slices_.data(), slices_.size());
  }

 private:
  void cut() {
    if (bytes_.empty()) return;
    add_slice(std::move(bytes_));
    bytes_.clear();
  }

  // A slice that owns `bytes` (freed when gRPC is done with it).
  void add_slice(std::string bytes) {
    auto* owned = new std::string(std::move(bytes));
    slices_.emplace_back(
        owned->data(), owned->size(),
        [](void* p) { delete static_cast<std::string*>(p); }, owned);
  }

  std::string bytes_;  // the slice being filled
  std::vector<grpc::Slice> slices_;
};

}  // namespace

// What a completion queue tag points at: a call, and which of its
// operations completed. Each call object counts itself in its broker's
// calls_ while it lives (see BrokerServer::stop_polling).
class Call {
 public:
  explicit Call(BrokerServer* broker) : broker_(broker) {
    absl::MutexLock lock(&broker_->calls_mu_);
    ++broker_->calls_;
  }
  virtual ~Call() {
    absl::MutexLock lock(&broker_->calls_mu_);
    --broker_->calls_;
  }
  // On the polling thread of the call's queue. `ok`: gRPC's verdict on the
  // operation.
  virtual void on_event(int event, bool ok) = 0;

 protected:
  // Runs `request` (which asks gRPC for this call on the queue it is given)
  // on queue `queue`; once polling has stopped nobody will, and the call
  // deletes itself instead.
  void ask(std::size_t queue,
           absl::FunctionRef<void(grpc::ServerCompletionQueue*)> request) {
    if (!broker_->request_call(queue, request)) delete this;
  }

  BrokerServer* const broker_;
};

struct Tag {
  Call* call;
  int event;
};

// The operations a StreamWriter starts on its stream (under its lock, so
// never two at once).
class StreamOps {
 public:
  virtual void start_write(const grpc::ByteBuffer& batch) = 0;
  virtual void start_finish(const grpc::Status& status) = 0;

 protected:
  ~StreamOps() = default;
};

// The write side of one session stream: a bounded queue of answers behind
// one write in flight. Shared between the call and the Session (its
// Outbox), so it outlives the call: once the call is done, push() refuses.
class StreamWriter final : public Outbox {
 public:
  StreamWriter(StreamOps* stream, std::size_t max_bytes,
               std::size_t batch_bytes)
      : stream_(stream), max_bytes_(max_bytes), batch_bytes_(batch_bytes) {}

  // Called (once, with no lock held) when the queue overflows: the call
  // ends its session there and then.
  void set_on_overflow(absl::AnyInvocable<void()> fn) {
    on_overflow_ = std::move(fn);
  }

  bool push(v1::ServerFrame& frame,
            const std::shared_ptr<ChannelObject>& returned_to) override {
    std::deque<Queued> dropped;
    {
      absl::MutexLock lock(&mu_);
      if (stream_ == nullptr || finish_wanted_) return false;
      const std::size_t size = frame.ByteSizeLong();
      if (queued_bytes_ + size <= max_bytes_) {
        queued_bytes_ += size;
        queue_.push_back({std::move(frame), returned_to, size});
        maybe_write_locked();
        return true;
      }
      // The client is not reading: end the session rather than grow.
      dropped = finish_locked(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("dchan-broker: over ", max_bytes_,
                       " bytes of answers queued for this session: the "
                       "client is not reading its stream")));
    }
    return_values(dropped);
    if (on_overflow_) on_overflow_();
    return false;  // not queued: the caller returns its value
  }

  void finish(const absl::Status& status) override {
    finish(grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                        std::string(status.message())));
  }

  // While corked, answers queue but no write starts: the call corks while
  // it handles one incoming batch, so that the answers to that batch (and
  // whatever else completes meanwhile) leave as one write instead of the
  // first answer going alone. Only the call's reader calls these.
  void cork() {
    absl::MutexLock lock(&mu_);
    corked_ = true;
  }
  void uncork() {
    absl::MutexLock lock(&mu_);
    corked_ = false;
    maybe_write_locked();
  }

  // The write in flight completed.
  void on_write_done(bool ok) {
    std::deque<Queued> dropped;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        dropped =
            finish_locked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                       "dchan-broker: stream write failed"));
      }
      // Also after a failure: a finish wanted earlier waited for this write.
      maybe_write_locked();
    }
    return_values(dropped);
  }

  // Ends the stream with `status` once the write in flight (if any) is done;
  // answers still queued are not sent (their values go back).
  void finish(grpc::Status status) {
    std::deque<Queued> dropped;
    {
      absl::MutexLock lock(&mu_);
      dropped = finish_locked(std::move(status));
    }
    return_values(dropped);
  }

  // The call is done: from now on push() refuses and no operation starts.
  void detach() {
    std::deque<Queued> dropped;
    {
      absl::MutexLock lock(&mu_);
      stream_ = nullptr;
      dropped.swap(queue_);
      queued_bytes_ = 0;
    }
    return_values(dropped);
  }

 private:
  struct Queued {
    v1::ServerFrame frame;
    std::shared_ptr<ChannelObject> returned_to;  // set: it may hold a value
    std::size_t bytes;  // frame.ByteSizeLong(), once (it walks every value)
  };

  // Wants the stream finished; returns the answers that will now never be
  // written.
  std::deque<Queued> finish_locked(grpc::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::deque<Queued> dropped;
    if (finish_wanted_) return dropped;
    finish_wanted_ = true;
    status_ = std::move(status);
    dropped.swap(queue_);
    queued_bytes_ = 0;
    maybe_write_locked();
    return dropped;
  }

  // Values carried by answers that were queued but will not be written go
  // back into their channels. No lock held.
  void return_values(std::deque<Queued>& dropped) {
    for (Queued& q : dropped) {
      return_frame_value(q.frame, q.returned_to);
    }
  }

  void maybe_write_locked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (stream_ == nullptr || writing_ || finished_) return;
    if (corked_ && !finish_wanted_) return;
    if (finish_wanted_) {
      finished_ = true;
      stream_->start_finish(status_);
      return;
    }
    if (queue_.empty()) return;
    // The frames of this batch: at most batch_bytes_, and at least one.
    std::size_t n = 0;
    std::size_t bytes = 0;
    std::size_t copied = 0;  // what the encoder copies (not large values)
    for (const Queued& q : queue_) {
      if (n > 0 && bytes + q.bytes > batch_bytes_) break;
      bytes += q.bytes;
      copied += has_large_value(q.frame) ? 64 : q.bytes + 16;
      ++n;
    }
    BatchEncoder encoder(copied);
    for (std::size_t i = 0; i < n; ++i) {
      encoder.add(queue_.front().frame);
      queue_.pop_front();
    }
    batch_ = encoder.finish();
    queued_bytes_ -= std::min(queued_bytes_, bytes);
    writing_ = true;
    stream_->start_write(batch_);
  }

  absl::AnyInvocable<void()> on_overflow_;  // set before the first push
  absl::Mutex mu_;
  StreamOps* stream_ ABSL_GUARDED_BY(mu_);
  const std::size_t max_bytes_;
  const std::size_t batch_bytes_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  std::size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool corked_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_wanted_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer batch_;  // the write in flight; touched only when !writing_
};

// Blocks of up to 32 KiB: a batch of a thousand values takes a dozen.
// (Frees of 64 KiB and more make glibc consolidate its fast bins.)
google::protobuf::ArenaOptions read_arena_options() {
  google::protobuf::ArenaOptions options;
  options.max_block_size = 32 << 10;
  return options;
}

// One client's Session stream, from the accepted call to its deletion.
// Its reads and their handling run on its queue's polling thread; writes and
// the finish start wherever an answer completes (under the StreamWriter's
// lock). It deletes itself once the call is done and none of its
// operations is in flight.
class SessionCall final : public Call, public StreamOps {
 public:
  // Asks for the next Session call on completion queue `queue`; the new
  // object owns itself from here.
  static void request(BrokerServer* broker, std::size_t queue) {
    auto* call = new SessionCall(broker, queue);
    call->ask(queue, [&](grpc::ServerCompletionQueue* cq) {
      call->context_.AsyncNotifyWhenDone(&call->done_tag_);
      broker->broker_service_.RequestSession(&call->context_, &call->stream_,
                                             cq, cq, &call->accepted_tag_);
    });
  }

  void on_event(int event, bool ok) override {
    switch (event) {
      case kAccepted:
        if (!ok) {  // the server is shutting down: no call came
          delete this;
          return;
        }
        request(broker_, queue_);  // the next client's
        accepted();
        return;  // no operation of this call completed
      case kRead:
        read_done(ok);
        break;
      case kWrite:
        writer_->on_write_done(ok);
        break;
      case kFinish:
        break;
      case kDone:
        done();
        break;
    }
    if (in_flight_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  void start_write(const grpc::ByteBuffer& batch) override {
    in_flight_.fetch_add(1, std::memory_order_relaxed);
    stream_.Write(batch, &write_tag_);
  }

  void start_finish(const grpc::Status& status) override {
    in_flight_.fetch_add(1, std::memory_order_relaxed);
    stream_.Finish(status, &finish_tag_);
  }

 private:
  enum Event { kAccepted, kRead, kWrite, kFinish, kDone };

  SessionCall(BrokerServer* broker, std::size_t queue)
      : Call(broker), queue_(queue) {}

  void accepted() {
    {
      absl::MutexLock lock(&broker_->mu_);
      id_ = broker_->next_session_id_++;
    }
    writer_ = std::make_shared<StreamWriter>(
        this, broker_->options_.session_outbox_bytes,
        broker_->options_.batch_bytes);
    session_ = std::make_shared<server::Session>(id_, context_.peer(),
                                                 broker_->registry_, writer_,
                                                 broker_->options_.session);
    writer_->set_on_overflow(
        [session = std::weak_ptr<server::Session>(session_)] {
          if (auto s = session.lock()) s->end();
        });
    in_flight_.store(1, std::memory_order_relaxed);  // the done tag
    // Refused while shutting down: the stream is finished with UNAVAILABLE.
    if (!broker_->add_session({session_, writer_})) return;
    in_ = google::protobuf::Arena::CreateMessage<v1::ClientBatch>(&arena_);
    start_read();
  }

  void start_read() {
    in_flight_.fetch_add(1, std::memory_order_relaxed);
    stream_.Read(&in_bytes_, &read_tag_);
  }

  void read_done(bool ok) {
    if (done_) return;  // the call ended: nothing more is handled
    if (!ok) {
      // The client half-closed or the stream broke: the session is over.
      end(grpc::Status::OK);
      return;
    }
    bool parsed;
    {
      grpc::ProtoBufferReader reader(&in_bytes_);
      parsed = in_->ParseFromZeroCopyStream(&reader);
    }
    in_bytes_.Clear();
    if (!parsed) {
      // Not a ClientBatch: nothing in it can be answered, so the session
      // ends, saying why.
      end(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       "dchan-broker: a Session stream message is not a "
                       "dchan.v1.ClientBatch"));
      return;
    }
    writer_->cork();
    for (v1::ClientFrame& frame : *in_->mutable_frames()) {
      session_->handle(std::move(frame));
    }
    writer_->uncork();
    // Nothing refers to the batch any more (values were moved out of it).
    arena_.Reset();
    in_ = google::protobuf::Arena::CreateMessage<v1::ClientBatch>(&arena_);
    start_read();
  }

  // The call is over: finished, cancelled by the client, or broken.
  void done() {
    done_ = true;
    writer_->detach();
    session_->end();
    // No read is handled any more: handle() cannot race the drop.
    session_->drop_handles();
    broker_->remove_session(id_);
  }

  void end(grpc::Status status) {
    session_->end();
    writer_->finish(std::move(status));
  }

  const std::size_t queue_;
  grpc::ServerContext context_;
  grpc::ServerAsyncReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer> stream_{
      &context_};
  Tag accepted_tag_{this, kAccepted};
  Tag read_tag_{this, kRead};
  Tag write_tag_{this, kWrite};
  Tag finish_tag_{this, kFinish};
  Tag done_tag_{this, kDone};
  // Operations whose tags have not come back, the done tag included.
  std::atomic<int> in_flight_{0};
  bool done_ = false;  // its queue's polling thread only

  uint64_t id_ = 0;
  std::shared_ptr<StreamWriter> writer_;
  std::shared_ptr<server::Session> session_;
  // Each incoming batch is parsed into this arena, reset once the batch is
  // handled: its frames and the string objects of its values take a few
  // arena blocks instead of about two heap allocations per value (the
  // values' bytes still live in their own heap buffers, which handle()
  // moves on into the channels). An idle session holds no block.
  google::protobuf::Arena arena_{read_arena_options()};
  v1::ClientBatch* in_ = nullptr;  // on arena_
  grpc::ByteBuffer in_bytes_;      // the read in flight, parsed into in_
};

// One unary call of Inspect or Health: asked for, answered by a
// BrokerServer member, finished, deleted. An Inspect answer, which may list
// a hundred thousand objects (~100 ms), is worked out on the inspection
// thread (`off_thread`), so that the sessions of the polling thread are not
// held up meanwhile; a health check is answered on the polling thread.
template <typename Service, typename Request, typename Response>
class UnaryCall final : public Call {
 public:
  using Responder = grpc::ServerAsyncResponseWriter<Response>;
  using RequestFn = void (Service::*)(grpc::ServerContext*, Request*,
                                      Responder*, grpc::CompletionQueue*,
                                      grpc::ServerCompletionQueue*, void*);
  using AnswerFn = grpc::Status (BrokerServer::*)(const Request&, Response*);

  // Asks for the next call of this method; the new object owns itself.
  static void request(BrokerServer* broker, Service* service,
                      RequestFn request_fn, AnswerFn answer, bool off_thread) {
    auto* call = new UnaryCall(broker, service, request_fn, answer, off_thread);
    call->ask(0, [&](grpc::ServerCompletionQueue* cq) {
      (service->*request_fn)(&call->context_, &call->request_,
                             &call->responder_, cq, cq, &call->accepted_tag_);
    });
  }

  void on_event(int event, bool ok) override {
    if (event == kAccepted && ok) {
      // The next one.
      request(broker_, service_, request_fn_, answer_, off_thread_);
      if (off_thread_) {
        broker_->inspect([this] { answer(); });
      } else {
        answer();
      }
      return;
    }
    delete this;  // finished, or no call came (shutting down)
  }

 private:
  enum Event { kAccepted, kFinished };

  UnaryCall(BrokerServer* broker, Service* service, RequestFn request_fn,
            AnswerFn answer, bool off_thread)
      : Call(broker),
        service_(service),
        request_fn_(request_fn),
        answer_(answer),
        off_thread_(off_thread) {}

  // Any thread; the finished tag comes back to the polling thread.
  void answer() {
    const grpc::Status status = (broker_->*answer_)(request_, &response_);
    responder_.Finish(response_, status, &finished_tag_);
  }

  Service* const service_;
  const RequestFn request_fn_;
  const AnswerFn answer_;
  const bool off_thread_;
  grpc::ServerContext context_;
  Request request_;
  Response response_;
  Responder responder_{&context_};
  Tag accepted_tag_{this, kAccepted};
  Tag finished_tag_{this, kFinished};
};

BrokerServer::BrokerServer(BrokerOptions options)
    : options_(options),
      registry_(options.registry),
      reaper_(
          [this] {
            std::vector<std::shared_ptr<server::Session>> sessions;
            absl::MutexLock lock(&mu_);
            sessions.reserve(sessions_.size());
            for (const auto& [id, l] : sessions_) {
              sessions.push_back(l.session);
            }
            return sessions;
          },
          std::chrono::milliseconds(100),
          [this] { registry_.sweep_lingering(); }) {}

BrokerServer::~BrokerServer() {
  reaper_.stop();
  if (!stop_polling()) std::abort();  // its message is printed
}

// The full names of the services the broker serves.
const std::vector<std::string>& service_names() {
  static const auto* names = new std::vector<std::string>{
      v1::Broker::service_full_name(),
      v1::Inspect::service_full_name(),
      grpc::health::v1::Health::service_full_name(),
      grpc::reflection::v1alpha::ServerReflection::service_full_name(),
  };
  return *names;
}

// One grpc.health.v1.Health/Watch stream: the current status at once, then
// NOT_SERVING when the broker shuts down, and the stream ends (UNAVAILABLE,
// as sessions do). A service the broker does not serve is SERVICE_UNKNOWN.
// Deletes itself once the call is done and no operation is in flight.
class HealthWatch final : public Call {
 public:
  using Response = grpc::health::v1::HealthCheckResponse;

  static void request(BrokerServer* broker) {
    auto* call = new HealthWatch(broker);
    call->ask(0, [&](grpc::ServerCompletionQueue* cq) {
      call->context_.AsyncNotifyWhenDone(&call->done_tag_);
      broker->health_service_.RequestWatch(&call->context_, &call->request_,
                                           &call->stream_, cq, cq,
                                           &call->accepted_tag_);
    });
  }

  void on_event(int event, bool ok) override {
    switch (event) {
      case kAccepted:
        if (!ok) {
          delete this;
          return;
        }
        request(broker_);
        accepted();
        return;
      case kWrite: {
        absl::MutexLock lock(&mu_);
        writing_ = false;
        if (ok) maybe_write_locked();  // else the call is over
        break;
      }
      case kFinish:
        break;
      case kDone:
        broker_->remove_watcher(this);
        break;
    }
    if (in_flight_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // The broker is shutting down. Called under the broker's lock, while this
  // watch is in its list (so before its done tag is handled).
  void shut_down() {
    absl::MutexLock lock(&mu_);
    ending_ = true;
    maybe_write_locked();
  }

 private:
  enum Event { kAccepted, kWrite, kFinish, kDone };

  explicit HealthWatch(BrokerServer* broker) : Call(broker) {}

  void accepted() {
    in_flight_.store(1, std::memory_order_relaxed);  // the done tag
    known_ = BrokerServer::serves(request_.service());
    // Once in the list, shut_down() may come from another thread.
    const bool live = broker_->add_watcher(this);
    absl::MutexLock lock(&mu_);
    started_ = true;
    if (!live) ending_ = true;
    maybe_write_locked();
  }

  void maybe_write_locked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!started_ || writing_ || finished_) return;
    const Response::ServingStatus status = !known_   ? Response::SERVICE_UNKNOWN
                                           : ending_ ? Response::NOT_SERVING
                                                     : Response::SERVING;
    if (status != sent_) {
      sent_ = status;
      response_.set_status(sent_);
      writing_ = true;
      in_flight_.fetch_add(1, std::memory_order_relaxed);
      stream_.Write(response_, &write_tag_);
      return;
    }
    if (ending_) {
      finished_ = true;
      in_flight_.fetch_add(1, std::memory_order_relaxed);
      stream_.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                  "dchan-broker: shutting down"),
                     &finish_tag_);
    }
  }

  grpc::ServerContext context_;
  grpc::health::v1::HealthCheckRequest request_;
  grpc::ServerAsyncWriter<Response> stream_{&context_};
  Tag accepted_tag_{this, kAccepted};
  Tag write_tag_{this, kWrite};
  Tag finish_tag_{this, kFinish};
  Tag done_tag_{this, kDone};
  std::atomic<int> in_flight_{0};  // as in SessionCall

  // The service asked about is served. Set by accepted() before the watch
  // joins the broker's list (whose lock then orders it before shut_down()).
  bool known_ = false;

  absl::Mutex mu_;
  // Nothing is sent before accepted() has looked at the request.
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;  // the broker is shutting down
  Response::ServingStatus sent_ ABSL_GUARDED_BY(mu_) = Response::UNKNOWN;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  Response response_;  // the write in flight
};

// One grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo stream:
// read a request, write its answer (answer_reflection), read the next, until
// the client half-closes. One operation in flight at a time; the call
// deletes itself when its finish completes.
class ReflectionCall final : public Call {
 public:
  static void request(BrokerServer* broker) {
    auto* call = new ReflectionCall(broker);
    call->ask(0, [&](grpc::ServerCompletionQueue* cq) {
      broker->reflection_service_.RequestServerReflectionInfo(
          &call->context_, &call->stream_, cq, cq, &call->accepted_tag_);
    });
  }

  void on_event(int event, bool ok) override {
    switch (event) {
      case kAccepted:
        if (!ok) {
          delete this;
          return;
        }
        request(broker_);
        stream_.Read(&request_, &read_tag_);
        return;
      case kRead:
        if (!ok) {  // half-closed (or broken): done
          stream_.Finish(grpc::Status::OK, &finish_tag_);
          return;
        }
        response_ = answer_reflection(request_, service_names());
        stream_.Write(response_, &write_tag_);
        return;
      case kWrite:
        if (!ok) {
          stream_.Finish(grpc::Status::OK, &finish_tag_);
          return;
        }
        stream_.Read(&request_, &read_tag_);
        return;
      case kFinish:
        delete this;
        return;
    }
  }

 private:
  enum Event { kAccepted, kRead, kWrite, kFinish };

  explicit ReflectionCall(BrokerServer* broker) : Call(broker) {}

  grpc::ServerContext context_;
  grpc::ServerAsyncReaderWriter<
      grpc::reflection::v1alpha::ServerReflectionResponse,
      grpc::reflection::v1alpha::ServerReflectionRequest>
      stream_{&context_};
  Tag accepted_tag_{this, kAccepted};
  Tag read_tag_{this, kRead};
  Tag write_tag_{this, kWrite};
  Tag finish_tag_{this, kFinish};
  grpc::reflection::v1alpha::ServerReflectionRequest request_;
  grpc::reflection::v1alpha::ServerReflectionResponse response_;
};

void BrokerServer::add_to(grpc::ServerBuilder& builder) {
  builder.RegisterService(&broker_service_);
  builder.RegisterService(&inspect_service_);
  builder.RegisterService(&health_service_);
  builder.RegisterService(&reflection_service_);
  const int threads = std::max(1, options_.poll_threads);
  for (int i = 0; i < threads; ++i) {
    queues_.push_back(builder.AddCompletionQueue());
  }
}

void BrokerServer::start() {
  inspector_ = std::thread([this] { run_inspections(); });
  for (std::size_t i = 0; i < queues_.size(); ++i) {
    SessionCall::request(this, i);
  }
  request_unary_calls();
  HealthWatch::request(this);
  ReflectionCall::request(this);
  for (auto& queue : queues_) {
    pollers_.emplace_back([this, q = queue.get()] { poll(q); });
  }
}

void BrokerServer::request_unary_calls() {
  using ListObjects =
      UnaryCall<v1::Inspect::AsyncService, v1::ListObjectsRequest,
                v1::ListObjectsResponse>;
  using ListSessions =
      UnaryCall<v1::Inspect::AsyncService, v1::ListSessionsRequest,
                v1::ListSessionsResponse>;
  using Check = UnaryCall<grpc::health::v1::Health::AsyncService,
                          grpc::health::v1::HealthCheckRequest,
                          grpc::health::v1::HealthCheckResponse>;
  ListObjects::request(this, &inspect_service_,
                       &v1::Inspect::AsyncService::RequestListObjects,
                       &BrokerServer::list_objects, /*off_thread=*/true);
  ListSessions::request(this, &inspect_service_,
                        &v1::Inspect::AsyncService::RequestListSessions,
                        &BrokerServer::list_sessions, /*off_thread=*/true);
  Check::request(this, &health_service_,
                 &grpc::health::v1::Health::AsyncService::RequestCheck,
                 &BrokerServer::check_health, /*off_thread=*/false);
}

void BrokerServer::poll(grpc::ServerCompletionQueue* queue) {
  pthread_setname_np(pthread_self(), "dchan-poll");
  void* tag;
  bool ok;
  while (queue->Next(&tag, &ok)) {
    Tag* t = static_cast<Tag*>(tag);
    t->call->on_event(t->event, ok);
  }
}

bool BrokerServer::stop_polling() {
  {
    absl::MutexLock lock(&request_mu_);
    if (polling_stopped_) return !polling_stuck_;
    polling_stopped_ = true;  // no call is asked for any more
  }
  if (!pollers_.empty()) {
    // Server::Shutdown has returned, so every call is finished or
    // cancelled: its operations complete (failed, if cancelled), and an
    // operation a handler starts now completes at once. Let the pollers
    // run until the last call object is gone: a handler that started an
    // operation on a queue already shut down would abort in gRPC.
    // Bounded: a call gRPC never completes must not hang the exit. Past
    // the bound, neither shutting the queues down (a handler might still
    // start an operation) nor joining (a poller might never return) is
    // safe, so the caller is told to exit as it is.
    absl::MutexLock lock(&calls_mu_);
    if (!calls_mu_.AwaitWithTimeout(
            absl::Condition(
                +[](int64_t* calls) { return *calls == 0; }, &calls_),
            absl::Seconds(10))) {
      std::fprintf(stderr,
                   "dchan-broker: %lld calls still open 10 s after the "
                   "server shut down\n",
                   static_cast<long long>(calls_));
      absl::MutexLock stuck(&request_mu_);
      polling_stuck_ = true;
      return false;
    }
  }
  for (auto& queue : queues_) queue->Shutdown();
  for (std::thread& t : pollers_) t.join();
  if (inspector_.joinable()) {  // no call is left to post a job
    {
      absl::MutexLock lock(&inspect_mu_);
      inspect_stop_ = true;
    }
    inspector_.join();
  }
  if (pollers_.empty()) {  // start() never ran: drain the queues here
    void* tag;
    bool ok;
    for (auto& queue : queues_) {
      while (queue->Next(&tag, &ok)) {
      }
    }
  }
  return true;
}

void BrokerServer::inspect(absl::AnyInvocable<void()> job) {
  absl::MutexLock lock(&inspect_mu_);
  inspect_jobs_.push_back(std::move(job));
}

void BrokerServer::run_inspections() {
  pthread_setname_np(pthread_self(), "dchan-inspect");
  for (;;) {
    absl::AnyInvocable<void()> job;
    {
      absl::MutexLock lock(&inspect_mu_);
      inspect_mu_.Await(absl::Condition(
          +[](BrokerServer* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->inspect_mu_) {
            return b->inspect_stop_ || !b->inspect_jobs_.empty();
          },
          this));
      if (inspect_jobs_.empty()) return;  // stopping, nothing left
      job = std::move(inspect_jobs_.front());
      inspect_jobs_.pop_front();
    }
    job();
  }
}

bool BrokerServer::request_call(
    std::size_t queue,
    absl::FunctionRef<void(grpc::ServerCompletionQueue*)> request) {
  absl::MutexLock lock(&request_mu_);
  if (polling_stopped_) return false;
  request(queues_[queue].get());
  return true;
}

bool BrokerServer::add_session(const Live& live) {
  {
    absl::MutexLock lock(&mu_);
    if (!shutting_down_) {
      sessions_.emplace(live.session->id(), live);
      return true;
    }
  }
  // Accepted while shut_down() ran: end it like the others.
  live.session->end();
  live.writer->finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                   "dchan-broker: shutting down"));
  return false;
}

void BrokerServer::remove_session(uint64_t id) {
  absl::MutexLock lock(&mu_);
  sessions_.erase(id);
}

std::size_t BrokerServer::session_count() const {
  absl::MutexLock lock(&mu_);
  return sessions_.size();
}

void BrokerServer::shut_down() {
  std::vector<Live> live;
  {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
    for (const auto& [id, l] : sessions_) live.push_back(l);
    // Each sends NOT_SERVING and ends its stream.
    for (HealthWatch* watch : watchers_) watch->shut_down();
  }
  reaper_.stop();
  for (Live& l : live) {
    l.session->end();
    l.writer->finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                  "dchan-broker: shutting down"));
  }
}

grpc::Status BrokerServer::list_objects(const v1::ListObjectsRequest&,
                                        v1::ListObjectsResponse* response) {
  for (v1::ObjectInfo& info : registry_.describe_all()) {
    *response->add_objects() = std::move(info);
  }
  return grpc::Status::OK;
}

grpc::Status BrokerServer::list_sessions(const v1::ListSessionsRequest&,
                                         v1::ListSessionsResponse* response) {
  std::vector<std::shared_ptr<server::Session>> sessions;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, l] : sessions_) sessions.push_back(l.session);
  }
  std::sort(sessions.begin(), sessions.end(),
            [](const auto& a, const auto& b) { return a->id() < b->id(); });
  for (const auto& s : sessions) {
    v1::SessionInfo* info = response->add_sessions();
    info->set_id(s->id());
    info->set_peer(s->peer());
    info->set_pending_requests(s->pending_count());
    info->set_open_handles(s->handle_count());
    info->set_client_name(s->client_name());
    info->set_ttl_ms(static_cast<uint64_t>(s->ttl().count()));
    info->set_locks_held(s->locks_held());
  }
  return grpc::Status::OK;
}

grpc::Status BrokerServer::check_health(
    const grpc::health::v1::HealthCheckRequest& request,
    grpc::health::v1::HealthCheckResponse* response) {
  // The server as a whole ("") and each service it serves by name (gRPC's
  // default health service knows only "" unless told more).
  const std::string& service = request.service();
  if (!serves(service)) {
    return grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        absl::StrCat("dchan-broker: no service \"", service, "\""));
  }
  response->set_status(shutting_down()
                           ? grpc::health::v1::HealthCheckResponse::NOT_SERVING
                           : grpc::health::v1::HealthCheckResponse::SERVING);
  return grpc::Status::OK;
}

bool BrokerServer::serves(std::string_view service) {
  if (service.empty()) return true;
  for (const std::string& name : service_names()) {
    if (name == service) return true;
  }
  return false;
}

bool BrokerServer::add_watcher(HealthWatch* watch) {
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return false;
  watchers_.insert(watch);
  return true;
}

void BrokerServer::remove_watcher(HealthWatch* watch) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(watch);
}

bool BrokerServer::shutting_down() const {
  absl::MutexLock lock(&mu_);
  return shutting_down_;
}

}  // namespace dchan::server
