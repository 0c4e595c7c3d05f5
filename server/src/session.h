// server/src/session.h — one client's session: its handles and its pending
// operations, independent of gRPC.
//
// A Session turns ClientFrames into operations on the registry's objects and
// answers each request with one ServerFrame through its Outbox. A blocking
// operation that cannot complete at once becomes a pending operation: a
// callback waiter queued on the broker's object (lib's recv_async /
// send_async / select_async for channels, a queued request record for locks
// and wait groups), never a parked thread. It is answered from the thread of
// whichever party completes it.
//
// When the session ends (end()), every pending operation is withdrawn, then
// every lock and wait group it opened is told (Object::session_ended): its
// locks are released and handed on, its queued lock requests dropped, its
// wait group debts settled. A receive that completed for a session that has
// ended — or whose answer can no longer be queued — returns its value to the
// channel (sent again, at the back), so that a client that goes away does
// not take a value with it; if the channel was closed in between, the
// channel keeps the value for its next receives (as for values a client
// hands back, ReturnRequest). An answer already queued but not yet
// written when the stream breaks is lost with the stream (delivery to a
// session is at most once).
//
// Dropping a handle (a ReleaseRequest, or drop_handles() once the session
// has ended and its stream is done) asks the registry to forget the object
// if that left it unreferenced and idle (registry.h).
//
// Liveness: every frame received refreshes the session. A session that has
// received no frame for its TTL (SessionLimits::default_ttl, or what its
// Hello asked for, clamped to [min_ttl, max_ttl]) is ended by
// expire_if_silent(), which a Reaper calls.
//
// Thread safety: handle() is called by one thread at a time (the stream's
// reader) and never blocks; completions may run on any thread; end() and
// expire_if_silent() may be called from any thread, any number of times.
#ifndef DCHAN_SERVER_SESSION_H_
#define DCHAN_SERVER_SESSION_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "dchan/chan.h"
#include "dchan/v1/broker.pb.h"
#include "object.h"
#include "offer_book.h"
#include "registry.h"

namespace dchan::server {

// Where a session's answers go: the gRPC stream writer, or a test.
class Outbox {
 public:
  virtual ~Outbox() = default;
  // Queues `frame` for the client, moving from it. Any thread; never
  // blocks. Returns false, leaving `frame` intact, when the stream has ended.
  // `returned_to`: for an answer that carries a received value, its
  // channel; if the answer is dropped after it was queued (the stream ends
  // first), the outbox hands the value back with return_frame_value().
  virtual bool push(v1::ServerFrame& frame,
                    const std::shared_ptr<ChannelObject>& returned_to) = 0;
  // Ends the stream with `status` (once the write in flight, if any, is
  // done; answers still queued are dropped). Any thread; never blocks.
  virtual void finish(const absl::Status& status) = 0;
};

struct SessionLimits {
  std::size_t max_handles = 100000;
  std::size_t max_pending = 1000000;
  std::size_t max_value_bytes = 4 << 20;
  std::size_t max_select_cases = 1024;
  std::size_t max_client_name_bytes = 512;
  // A batch receive (RecvRequest.max_values) takes at most this many values,
  // and further values only while the answer stays under max_batch_bytes
  // (the first value always travels).
  std::size_t max_recv_batch = 4096;
  std::size_t max_batch_bytes = 1 << 20;
  // Session TTL: the default, and the bounds a Hello's request is clamped
  // to.
  std::chrono::milliseconds default_ttl{10000};
  std::chrono::milliseconds min_ttl{100};
  std::chrono::milliseconds max_ttl{600000};
};

class Session final : public Participant,
                      public OfferOwner,
                      public std::enable_shared_from_this<Session> {
 public:
  using Clock = std::chrono::steady_clock;

  Session(uint64_t id, std::string peer, Registry& registry,
          std::shared_ptr<Outbox> outbox, SessionLimits limits = {});
  ~Session() override;

  // Handles one request; see the file comment. Frames that arrive after
  // end() are dropped unanswered.
  void handle(const v1::ClientFrame& frame);
  // The same, free to move the values it carries out of `frame` (the
  // stream's reader, which reuses its buffer).
  void handle(v1::ClientFrame&& frame);

  // Ends the session: withdraws every pending operation, releases its
  // locks, settles its wait group debts. Idempotent. Does not finish the
  // stream (the caller does), and keeps the handles (drop_handles()).
  void end();

  // After end(), once handle() can no longer be called (the stream's call
  // is done): drops every handle, and asks the registry to forget the
  // objects this session held that are now idle (see registry.h).
  void drop_handles();

  // If no frame arrived for the session's TTL before `now`, ends it and
  // finishes its stream with UNAVAILABLE "dchan-broker: session N expired
  // (no frame for T ms)"; returns whether it did.
  bool expire_if_silent(Clock::time_point now);

  // Participant
  uint64_t id() const noexcept override { return id_; }
  bool live() const noexcept override {
    return !ended_flag_.load(std::memory_order_acquire);
  }
  std::string describe() const override;

  // OfferOwner
  void ask_claim(uint64_t request_id, uint64_t claim) override;
  void finish_offer(uint64_t request_id, uint64_t seq, v1::Outcome outcome,
                    std::optional<std::string> value,
                    const std::shared_ptr<ChannelObject>& returned_to) override;

  const std::string& peer() const noexcept { return peer_; }
  std::string client_name() const;
  std::chrono::milliseconds ttl() const noexcept {
    return std::chrono::milliseconds(ttl_ms_.load(std::memory_order_relaxed));
  }
  Clock::time_point last_frame() const noexcept {
    return Clock::time_point(
        Clock::duration(last_frame_.load(std::memory_order_relaxed)));
  }
  std::size_t pending_count() const;
  std::size_t handle_count() const;
  // Locks held (an exclusive hold counts 1, each read lock 1).
  std::size_t locks_held() const;

 private:
  // Withdraws a pending operation: true when withdrawn before it completed
  // (its completion will never answer), false when it completed first.
  // Never blocks on the completion.
  using Withdraw = std::function<bool()>;
  // Passes a ClaimAnswer to a pending offer's book.
  using AnswerClaim = std::function<absl::Status(uint64_t claim, bool accept)>;

  struct Pending {
    uint64_t seq = 0;
    v1::ClientFrame::OpCase kind = v1::ClientFrame::OP_NOT_SET;
    Withdraw withdraw;
  };

  void open(uint64_t id, const v1::OpenRequest& req);
  void send(uint64_t id, v1::SendRequest& req);  // moves the values out
  void recv(uint64_t id, const v1::RecvRequest& req);
  void close(uint64_t id, const v1::CloseRequest& req);
  void cancel(uint64_t id, const v1::CancelRequest& req);
  void select(uint64_t id, const v1::SelectRequest& req);
  void stat(uint64_t id, const v1::StatRequest& req);
  void watch(uint64_t id, const v1::WatchRequest& req);
  void offer(uint64_t id, const v1::OfferRequest& req);
  void claim_answer(const v1::ClaimAnswer& req);
  void hello(uint64_t id, const v1::HelloRequest& req, bool first_frame);
  void lock(uint64_t id, const v1::LockRequest& req);
  void unlock(uint64_t id, const v1::UnlockRequest& req);
  void wanted(uint64_t id, const v1::WantedRequest& req);
  void add(uint64_t id, const v1::AddRequest& req);
  void wait(uint64_t id, const v1::WaitRequest& req);
  void load(uint64_t id, const v1::LoadRequest& req);
  void swap(uint64_t id, const v1::SwapRequest& req);
  void compare_and_swap(uint64_t id, const v1::CompareAndSwapRequest& req);
  void release(uint64_t id, const v1::ReleaseRequest& req);
  void return_values(uint64_t id, const v1::ReturnRequest& req);
  // A blocking send with more_values.
  void send_many(uint64_t id, const std::shared_ptr<ChannelObject>& obj,
                 v1::SendRequest& req);

  // A batch receive: adds to `frame` (an OK receive answer) the values
  // `obj` has available at once, up to `max` values in all, and counts
  // them all, the first included, in batch_extras_ (max > 1).
  void fill_batch(ChannelObject& obj, v1::ServerFrame& frame, std::size_t max);
  // A pending batch receive's answer (`frame`, its first value in): fills
  // the batch unless this session ended meanwhile, then finish_pending().
  void finish_batch(const std::shared_ptr<ChannelObject>& obj, uint64_t id,
                    uint64_t seq, v1::ServerFrame frame, std::size_t max);

  // The object of type T behind `handle`, or nullptr after answering
  // NOT_FOUND (no such handle) or INVALID_ARGUMENT (another kind).
  template <class T>
  std::shared_ptr<T> object(uint64_t id, uint64_t handle);
  // False after answering INVALID_ARGUMENT for a value over the limit.
  bool check_value_size(uint64_t id, const std::string& value);

  // Reserves `id` as pending (answering the error itself when it can't);
  // returns the entry's sequence number, 0 on failure.
  uint64_t begin_pending(uint64_t id, v1::ClientFrame::OpCase kind);
  // Stores how to withdraw a pending entry, unless it completed already.
  void attach(uint64_t id, uint64_t seq, Withdraw withdraw,
              AnswerClaim answer_claim = nullptr);
  void attach(uint64_t id, uint64_t seq, PendingOp op);
  // Completes a pending entry and answers it. If the answer cannot be
  // delivered, a received value (if any) goes back into `chan`.
  void finish_pending(uint64_t id, uint64_t seq, v1::ServerFrame frame,
                      const std::shared_ptr<ChannelObject>& returned_to);

  void reply(v1::ServerFrame frame);
  // Like reply(), for an answer that may carry a value received from
  // `returned_to`: if it cannot be queued, the value goes back.
  void deliver(v1::ServerFrame frame,
               const std::shared_ptr<ChannelObject>& returned_to);
  void reply_error(uint64_t id, const absl::Status& status);

  const uint64_t id_;
  const std::string peer_;
  Registry& registry_;
  const std::shared_ptr<Outbox> outbox_;
  const SessionLimits limits_;

  // Only touched by the reader thread (handle()).
  absl::flat_hash_map<uint64_t, std::shared_ptr<Object>> handles_;
  uint64_t next_handle_ = 1;
  bool first_frame_ = true;

  // Clock::duration ticks of the last frame received.
  std::atomic<Clock::rep> last_frame_;
  std::atomic<int64_t> ttl_ms_;
  // Values handed out by batch receives (max_values > 1: the first value
  // and the extras, more_values) and not handed back yet (ReturnRequest): a
  // session can return only values it took, so returns cannot grow a
  // channel beyond what was in it. The first value counts too: a client's
  // read-ahead (RemoteChanOptions::recv_ahead) may hand a whole batch back.
  std::atomic<uint64_t> batch_extras_{0};

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Pending> pending_ ABSL_GUARDED_BY(mu_);
  // Pending offers (a subset of pending_, by request id): where their
  // ClaimAnswers go. Apart from Pending, which every blocked operation
  // pays for.
  absl::flat_hash_map<uint64_t, AnswerClaim> offer_claims_ ABSL_GUARDED_BY(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> ended_flag_{false};  // ended_, for lock-free checks
  std::size_t handles_count_ ABSL_GUARDED_BY(mu_) = 0;
  std::string client_name_ ABSL_GUARDED_BY(mu_);
  // The locks and wait groups this session opened, with how many of its
  // handles refer to each: told when it ends. One is dropped when its last
  // handle is released while it holds nothing for this session.
  absl::flat_hash_map<std::shared_ptr<Object>, std::size_t> tell_on_end_
      ABSL_GUARDED_BY(mu_);
  // Their names, once end() has told them and dropped them: drop_handles()
  // asks the registry to forget them too (a handle released earlier was
  // not the last reference while tell_on_end_ held one).
  std::vector<std::string> told_names_ ABSL_GUARDED_BY(mu_);
};

// The error frame for `id`.
v1::ServerFrame error_frame(uint64_t id, const absl::Status& status);

// If `frame` answers a receive (or select, or receive offer) with values
// taken from `returned_to`, sends them back into that channel (at the back);
// if the channel is closed meanwhile, the channel keeps them for its next
// receives (ChannelObject::keep_after_close).
void return_frame_value(v1::ServerFrame& frame,
                        const std::shared_ptr<ChannelObject>& returned_to);

}  // namespace dchan::server

#endif  // DCHAN_SERVER_SESSION_H_
