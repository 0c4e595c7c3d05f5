#include "service.h"

#include <algorithm>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/arena.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/slice.h"

namespace dchan::server {
namespace {

using SessionStream =
    grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>;

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

// The write side of one session stream: a bounded queue of answers behind
// one write in flight (the WatchReactor pattern). Shared between the reactor
// and the Session (its Outbox), so it outlives the reactor: once the reactor
// is done, push() refuses.
class StreamWriter final : public Outbox {
 public:
  using Reactor = SessionStream;

  StreamWriter(Reactor* reactor, std::size_t max_bytes, std::size_t batch_bytes)
      : reactor_(reactor), max_bytes_(max_bytes), batch_bytes_(batch_bytes) {}

  // Called (once, with no lock held) when the queue overflows: the reactor
  // ends its session there and then.
  void set_on_overflow(absl::AnyInvocable<void()> fn) {
    on_overflow_ = std::move(fn);
  }

  bool push(v1::ServerFrame& frame,
            const std::shared_ptr<ChannelObject>& returned_to) override {
    std::deque<Queued> dropped;
    {
      absl::MutexLock lock(&mu_);
      if (reactor_ == nullptr || finish_wanted_) return false;
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

  // While corked, answers queue but no write starts: the reactor corks
  // while it handles one incoming batch, so that the answers to that batch
  // (and whatever else completes meanwhile) leave as one write instead of
  // the first answer going alone. Only the reactor's reader calls these.
  void cork() {
    absl::MutexLock lock(&mu_);
    corked_ = true;
  }
  void uncork() {
    absl::MutexLock lock(&mu_);
    corked_ = false;
    maybe_write_locked();
  }

  // The reactor's OnWriteDone.
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

  // The reactor's OnDone: from now on push() refuses.
  void detach() {
    std::deque<Queued> dropped;
    {
      absl::MutexLock lock(&mu_);
      reactor_ = nullptr;
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
    if (reactor_ == nullptr || writing_ || finished_) return;
    if (corked_ && !finish_wanted_) return;
    if (finish_wanted_) {
      finished_ = true;
      reactor_->Finish(status_);
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
    reactor_->StartWrite(&batch_);
  }

  absl::AnyInvocable<void()> on_overflow_;  // set before the first push
  absl::Mutex mu_;
  Reactor* reactor_ ABSL_GUARDED_BY(mu_);
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

// One client's Session stream.
class SessionReactor final : public SessionStream {
 public:
  SessionReactor(BrokerServer* broker, grpc::CallbackServerContext* context,
                 uint64_t id)
      : broker_(broker), id_(id) {
    writer_ = std::make_shared<StreamWriter>(
        this, broker->options_.session_outbox_bytes,
        broker->options_.batch_bytes);
    session_ = std::make_shared<server::Session>(id, context->peer(),
                                                 broker->registry_, writer_,
                                                 broker->options_.session);
    writer_->set_on_overflow(
        [session = std::weak_ptr<server::Session>(session_)] {
          if (auto s = session.lock()) s->end();
        });
    broker_->add_session({session_, writer_});
    in_ = google::protobuf::Arena::CreateMessage<v1::ClientBatch>(&arena_);
    StartRead(&in_bytes_);
  }

  void OnReadDone(bool ok) override {
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
    StartRead(&in_bytes_);
  }

  void OnWriteDone(bool ok) override { writer_->on_write_done(ok); }

  void OnCancel() override {
    end(grpc::Status(grpc::StatusCode::CANCELLED, "session cancelled"));
  }

  void OnDone() override {
    writer_->detach();
    session_->end();
    // No reaction runs any more: handle() cannot race the drop.
    session_->drop_handles();
    broker_->remove_session(id_);
    delete this;
  }

 private:
  void end(grpc::Status status) {
    session_->end();
    writer_->finish(std::move(status));
  }

  BrokerServer* const broker_;
  const uint64_t id_;
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

BrokerServer::~BrokerServer() { reaper_.stop(); }

SessionStream* BrokerServer::Session(grpc::CallbackServerContext* context) {
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      using Refuse = grpc::internal::FinishOnlyReactor<SessionStream>;
      return new Refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                     "dchan-broker: shutting down"));
    }
    id = next_session_id_++;
  }
  return new SessionReactor(this, context, id);
}

void BrokerServer::add_session(const Live& live) {
  {
    absl::MutexLock lock(&mu_);
    if (!shutting_down_) {
      sessions_.emplace(live.session->id(), live);
      return;
    }
  }
  // Accepted while shut_down() ran: end it like the others.
  live.session->end();
  live.writer->finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                   "dchan-broker: shutting down"));
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
  }
  reaper_.stop();
  for (Live& l : live) {
    l.session->end();
    l.writer->finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                  "dchan-broker: shutting down"));
  }
}

grpc::ServerUnaryReactor* BrokerServer::ListObjects(
    grpc::CallbackServerContext* context, const v1::ListObjectsRequest*,
    v1::ListObjectsResponse* response) {
  for (v1::ObjectInfo& info : registry_.describe_all()) {
    *response->add_objects() = std::move(info);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* BrokerServer::ListSessions(
    grpc::CallbackServerContext* context, const v1::ListSessionsRequest*,
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
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace dchan::server
