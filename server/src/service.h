// server/src/service.h — the broker's gRPC services.
//
// BrokerServer owns the registry and the live sessions and implements
//   - dchan.v1.Broker/Session: one ServerBidiReactor per client stream
//     (callback API: reactions never block; no thread per session or per
//     waiting operation), and
//   - dchan.v1.Inspect: unary ListObjects / ListSessions.
//
// Each stream has one write in flight; answers that complete meanwhile queue
// behind it and leave together as one ServerBatch, as do the answers to one
// incoming ClientBatch (the writer holds its write back while the batch is
// handled, so the first answer does not leave alone). The queue is bounded
// (BrokerOptions::session_outbox_bytes): a client that stops reading while
// its answers pile up past the bound has its session ended at once, like
// any other ended session (pending operations withdrawn, received values
// returned to their channels, later frames ignored), and its stream
// finished with RESOURCE_EXHAUSTED.
//
// Sessions that fall silent for their TTL are ended by one Reaper thread
// (see reaper.h), their streams finished with UNAVAILABLE.
//
// Thread safety: all members may be called from any thread.
#ifndef DCHAN_SERVER_SERVICE_H_
#define DCHAN_SERVER_SERVICE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "dchan/v1/broker.grpc.pb.h"
#include "dchan/v1/inspect.grpc.pb.h"
#include "grpcpp/support/byte_buffer.h"
#include "reaper.h"
#include "registry.h"
#include "session.h"

namespace dchan::server {

struct BrokerOptions {
  RegistryLimits registry;
  SessionLimits session;
  std::size_t session_outbox_bytes = 64 << 20;
  // Frames are coalesced into batches of at most this many bytes (a larger
  // single frame travels alone).
  std::size_t batch_bytes = 1 << 20;
};

class StreamWriter;

// The Session stream is served raw (grpc::ByteBuffer): the broker parses
// ClientBatch itself and encodes ServerBatch itself, so that large received
// values leave as slices of their own buffers instead of being copied into
// one serialized message (see StreamWriter in service.cc).
using BrokerService =
    v1::Broker::WithRawCallbackMethod_Session<v1::Broker::Service>;

class BrokerServer final : public BrokerService,
                           public v1::Inspect::CallbackService {
 public:
  explicit BrokerServer(BrokerOptions options = {});
  ~BrokerServer() override;

  // dchan.v1.Broker
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Session(
      grpc::CallbackServerContext* context) override;

  // dchan.v1.Inspect
  grpc::ServerUnaryReactor* ListObjects(
      grpc::CallbackServerContext* context,
      const v1::ListObjectsRequest* request,
      v1::ListObjectsResponse* response) override;
  grpc::ServerUnaryReactor* ListSessions(
      grpc::CallbackServerContext* context,
      const v1::ListSessionsRequest* request,
      v1::ListSessionsResponse* response) override;

  // Ends every session with UNAVAILABLE ("broker shutting down"): pending
  // operations are withdrawn and clients see their streams end. New
  // sessions are refused from now on, and the reaper stops. Call before
  // grpc::Server::Shutdown.
  void shut_down();

  Registry& registry() noexcept { return registry_; }
  std::size_t session_count() const;

 private:
  friend class SessionReactor;

  struct Live {
    std::shared_ptr<server::Session> session;
    std::shared_ptr<StreamWriter> writer;
  };
  void add_session(const Live& live);
  void remove_session(uint64_t id);

  const BrokerOptions options_;
  Registry registry_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Live> sessions_ ABSL_GUARDED_BY(mu_);
  uint64_t next_session_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;

  // Last: stopped and destroyed before the members its sweeps read.
  Reaper reaper_;
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_SERVICE_H_
