// client/src/connection.h — one session stream to a broker, shared by every
// object a Client hands out.
//
// Requests from any thread are multiplexed on the stream: each gets a fresh
// request id and a Call to wait on. Writes are combined: the thread that
// finds no write in progress becomes the writer and sends everything queued
// meanwhile as one batch, until the queue is empty. One reader thread takes
// answers off the stream and completes their Calls. When the stream ends,
// every outstanding and later Call fails with kUnavailable.
//
// Thread safety: every public member may be called from any thread.
#ifndef DCHAN_CLIENT_CONNECTION_H_
#define DCHAN_CLIENT_CONNECTION_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "dchan/client.h"
#include "dchan/detail/waiter.h"
#include "dchan/v1/broker.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace dchan::detail {

class Connection {
 public:
  using Deadline = std::chrono::steady_clock::time_point;

  // Connects; throws dchan::Error (kUnavailable) on failure.
  Connection(const std::string& target, const ClientOptions& options);
  ~Connection();

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Sends `frame` (moving from it) and waits for its answer, until
  // `deadline` (Deadline::max(): no limit). When the deadline passes first,
  // the request is cancelled on the broker and the final answer — CANCELLED
  // or a result that won the race — is returned. Throws dchan::Error for a
  // lost broker (kUnavailable) or an error answer (its code and message).
  v1::ServerFrame call(v1::ClientFrame& frame, Deadline deadline);

  // Sends `frame` (moving from it) and returns its request id at once;
  // `on_answer` runs on the reader thread with the answer — or with a
  // non-OK status if the broker is lost — and must not block. Throws
  // dchan::Error (kUnavailable) if the broker is lost already.
  using Callback =
      absl::AnyInvocable<void(const absl::Status&, v1::ServerFrame&) &&>;
  uint64_t call_async(v1::ClientFrame& frame, Callback on_answer);

  // Withdraws request `id` (the broker answers it CANCELLED or with its
  // result). Never blocks.
  void cancel(uint64_t id) noexcept;

  const std::string& target() const noexcept { return target_; }

 private:
  struct Call {
    Waiter done;
    v1::ServerFrame answer;
    absl::Status error;  // the connection failed
    Callback on_answer;  // set: an asynchronous call
  };
  // Completes `call` with its answer or `error`.
  static void finish(Call& call, const absl::Status& error);

  // Registers a call for `frame` under a fresh request id (*id) and sends
  // it; `frame` is moved from.
  std::shared_ptr<Call> start(v1::ClientFrame& frame, uint64_t* id);
  void enqueue(v1::ClientFrame frame);
  void read_loop();
  void fail_all(const absl::Status& status);

  const std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Broker::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ClientBatch, v1::ServerBatch>>
      stream_;
  std::thread reader_;

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Call>> calls_
      ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);

  static constexpr std::size_t kMaxBatchBytes = 1 << 20;
  absl::Mutex write_mu_;
  std::vector<v1::ClientFrame> write_queue_ ABSL_GUARDED_BY(write_mu_);
  bool writing_ ABSL_GUARDED_BY(write_mu_) = false;
  bool writes_failed_ ABSL_GUARDED_BY(write_mu_) = false;
};

}  // namespace dchan::detail

#endif  // DCHAN_CLIENT_CONNECTION_H_
