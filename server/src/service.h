// server/src/service.h — the broker's gRPC services.
//
// BrokerServer owns the registry and the live sessions and implements
//   - dchan.v1.Broker/Session: one stream per client,
//   - dchan.v1.Inspect: unary ListObjects / ListSessions,
//   - grpc.health.v1.Health: Check and Watch, and
//   - grpc.reflection.v1alpha.ServerReflection (see reflection.h),
// all on gRPC's asynchronous API: a completion queue per polling thread
// (BrokerOptions::poll_threads, by default one), whose thread polls gRPC
// and runs the handler of each completion. Reactions never block; there
// is no thread per session or per waiting operation, and no thread other
// than the polling ones waits in a completion queue (gRPC's own timer and
// executor threads do not poll). (With gRPC 1.51's callback API, two
// or more threads took turns polling, and every event woke another one to
// poll in its place: about two context switches per event; see
// docs/BENCHMARKS.md, "Session 21".) gRPC gives each client connection
// one of the queues, which takes its sessions; Inspect, health and
// reflection calls come to the first, and Inspect answers (a ListObjects
// may list 100,000 objects in ~100 ms) are worked out on an inspection
// thread of their own, so that they do not hold up that queue's sessions.
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
// Use: add_to(builder) before grpc::ServerBuilder::BuildAndStart, start()
// after it; at the end shut_down(), grpc::Server::Shutdown, then
// stop_polling().
//
// Thread safety: all members may be called from any thread.
#ifndef DCHAN_SERVER_SERVICE_H_
#define DCHAN_SERVER_SERVICE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "dchan/v1/broker.grpc.pb.h"
#include "dchan/v1/inspect.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/server_builder.h"
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
  // Threads that poll gRPC and run the handlers, each on a completion queue
  // of its own (gRPC gives each client connection one of them). One keeps every
  // event on the thread that found it; with more, gRPC wakes another polling
  // thread to poll whenever one leaves to run what it found (see the top of
  // this file), which costs on a small machine and pays only when one thread's
  // CPU is not enough.
  int poll_threads = 1;
};

class HealthWatch;
class ReflectionCall;
class SessionCall;
class StreamWriter;

// The Session stream is served raw (grpc::ByteBuffer): the broker parses
// ClientBatch itself and encodes ServerBatch itself, so that large received
// values leave as slices of their own buffers instead of being copied into
// one serialized message (see StreamWriter in service.cc).
using BrokerService = v1::Broker::WithRawMethod_Session<v1::Broker::Service>;

class BrokerServer final {
 public:
  explicit BrokerServer(BrokerOptions options = {});
  // Stops polling if stop_polling() was not called (so the server must have
  // been shut down, or never started, by then); aborts if it cannot.
  ~BrokerServer();

  // Registers the services with `builder` and asks it for the completion
  // queues they run on. Once.
  void add_to(grpc::ServerBuilder& builder);
  // Serves the server built from that builder: asks for the first calls
  // and starts the polling threads and the inspection thread. Once, after
  // BuildAndStart.
  void start();

  // Ends every session with UNAVAILABLE ("broker shutting down"): pending
  // operations are withdrawn and clients see their streams end. New
  // sessions are refused from now on, health checks answer NOT_SERVING
  // (health watches get NOT_SERVING, then their streams end with
  // UNAVAILABLE), and the reaper stops. Call before grpc::Server::Shutdown.
  void shut_down();
  // Once grpc::Server::Shutdown has returned (every call then is finished
  // or cancelled): waits while the polling threads see the calls' last
  // operations complete and the calls go, then shuts the completion queues
  // down and joins the polling and inspection threads. (A call that started an
  // operation on a queue already shut down would abort the process in gRPC.)
  // False, with the threads left running, if calls are still open after 10 s:
  // the caller should then exit without destroying this object.
  bool stop_polling();

  Registry& registry() noexcept { return registry_; }
  std::size_t session_count() const;

 private:
  friend class Call;
  friend class HealthWatch;
  friend class ReflectionCall;
  friend class SessionCall;
  template <typename Service, typename Request, typename Response>
  friend class UnaryCall;

  struct Live {
    std::shared_ptr<server::Session> session;
    std::shared_ptr<StreamWriter> writer;
  };
  // False (and the session is ended) when shut_down() ran first.
  bool add_session(const Live& live);
  void remove_session(uint64_t id);
  bool shutting_down() const;
  void poll(grpc::ServerCompletionQueue* queue);
  // Runs `request` (which asks gRPC for a call on the queue it is given)
  // unless polling has stopped; says whether it ran.
  bool request_call(
      std::size_t queue,
      absl::FunctionRef<void(grpc::ServerCompletionQueue*)> request);
  // The services this server serves, by full name; "" (the server as a
  // whole) counts as served.
  static bool serves(std::string_view service);
  // False (and `watch` not added) once shut_down() ran.
  bool add_watcher(HealthWatch* watch);
  void remove_watcher(HealthWatch* watch);

  // Inspect and health answers.
  grpc::Status list_objects(const v1::ListObjectsRequest& request,
                            v1::ListObjectsResponse* response);
  grpc::Status list_sessions(const v1::ListSessionsRequest& request,
                             v1::ListSessionsResponse* response);
  grpc::Status check_health(const grpc::health::v1::HealthCheckRequest& request,
                            grpc::health::v1::HealthCheckResponse* response);
  // Asks for the next Inspect and health calls.
  void request_unary_calls();
  // Runs `job` on the inspection thread, in order. Any thread.
  void inspect(absl::AnyInvocable<void()> job);
  void run_inspections();  // the inspection thread

  const BrokerOptions options_;
  Registry registry_;

  BrokerService broker_service_;
  v1::Inspect::AsyncService inspect_service_;
  grpc::health::v1::Health::AsyncService health_service_;
  grpc::reflection::v1alpha::ServerReflection::AsyncService reflection_service_;
  // One queue per polling thread; gRPC gives each client connection one,
  // and the calls other than sessions go to the first.
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> pollers_;
  // Works out Inspect answers (see UnaryCall in service.cc); started by
  // start(), stopped by stop_polling() once no call is left.
  std::thread inspector_;
  absl::Mutex inspect_mu_;
  std::deque<absl::AnyInvocable<void()>> inspect_jobs_
      ABSL_GUARDED_BY(inspect_mu_);
  bool inspect_stop_ ABSL_GUARDED_BY(inspect_mu_) = false;
  absl::Mutex request_mu_;
  bool polling_stopped_ ABSL_GUARDED_BY(request_mu_) = false;
  bool polling_stuck_ ABSL_GUARDED_BY(request_mu_) = false;
  // Call objects alive (asked for, in progress or finishing).
  absl::Mutex calls_mu_;
  int64_t calls_ ABSL_GUARDED_BY(calls_mu_) = 0;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Live> sessions_ ABSL_GUARDED_BY(mu_);
  uint64_t next_session_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<HealthWatch*> watchers_ ABSL_GUARDED_BY(mu_);

  // Last: stopped and destroyed before the members its sweeps read.
  Reaper reaper_;
};

}  // namespace dchan::server

#endif  // DCHAN_SERVER_SERVICE_H_
