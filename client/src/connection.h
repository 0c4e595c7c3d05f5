// client/src/connection.h — one session stream to a broker, shared by every
// object a Client hands out.
//
// Requests from any thread are multiplexed on the stream: each gets a fresh
// request id and a Call to wait on. Writes are combined: the thread that
// finds no write in progress becomes the writer and sends everything queued
// meanwhile as one batch, until the queue is empty. A caller about to write
// first lets callers that a reader has just woken with their answers run,
// for a bounded while (kLinger), when any have not yet returned from call():
// with acked sends from many threads, those callers' next frames then join
// its write instead of each leaving alone (one sendmsg per frame). A lone
// caller never waits so: nobody else has been woken. A pipelined send
// (send_pipelined) does not write itself: it wakes a writer
// thread, started on first use, so that a streaming producer keeps queueing
// while that thread writes and its frames leave in batches. All frames go
// through the one queue, so they reach the broker in the order they were
// queued, whoever writes them. The destructor lets the writer thread write
// what is queued and joins it (a write stalled by a broker that does not
// read ends when the connection is declared lost).
//
// Reads follow the leader/follower pattern: one thread at a time holds the
// read role and takes answers off the stream, completing every Call they
// answer. A thread blocked in an untimed call() takes the role itself when
// it is free, so a lone caller writes its request and reads its answer on
// its own thread, as a plain gRPC client would — no hand-off to another
// thread, which costs tens of microseconds on small VMs. When the reader's
// own answer arrives it passes the role to the next such caller still
// waiting (FIFO). Callers that cannot read themselves — a timed call (a
// blocked Read cannot honour a deadline) or an asynchronous one — are read
// for by a background thread, which holds the role only while such calls
// are outstanding and no caller holds it. When the stream ends, every
// outstanding and later Call fails with kUnavailable.
//
// Liveness: the connection opens the session with a Hello (client name and
// TTL) and keeps it alive from one background thread that sends a Ping every
// TTL/4. It tracks when the broker last heard from this client *for sure*:
// the send time of the latest request whose answer has arrived (the broker
// received it after that). If that is older than the TTL — the broker may
// have ended the session — or the stream breaks, the session is lost: the
// connection is marked broken (later calls fail at once), the session
// objects (the locks) are told — their stop callbacks run on the thread that
// noticed: the ping thread, or whichever thread holds the read role (see
// above; possibly a user thread inside a call) — then the stream is
// cancelled and every pending call fails with kUnavailable. There is no
// reconnection: a lost Connection stays broken.
//
// Thread safety: every public member may be called from any thread.
#ifndef DCHAN_CLIENT_CONNECTION_H_
#define DCHAN_CLIENT_CONNECTION_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "dchan/client.h"
#include "dchan/v1/broker.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace dchan::detail {

// An object whose state belongs to the session, not to one handle (a lock
// held by the session): it must learn when the session is lost.
class SessionObserver {
 public:
  virtual ~SessionObserver() = default;

  // The session is lost (`why`: kUnavailable, saying why). Called at most
  // once, on the thread that noticed, under the Connection's registry lock:
  // it must not block or call the Connection. Stop sources to request go to
  // `to_stop`; they are requested once that lock is released (so that stop
  // callbacks may do anything).
  virtual void session_lost(
      const absl::Status& why,
      std::vector<std::stop_source>* to_stop) noexcept = 0;
};

// Where the answers to a channel handle's pipelined sends go
// (Connection::send_pipelined).
class PipelinedSends {
 public:
  virtual ~PipelinedSends() = default;
  // One frame of `values` pipelined sends was answered (`lost` OK), or the
  // session was lost before its answer (`lost`: kUnavailable). Runs on the
  // reader thread; must not block.
  virtual void answered(const absl::Status& lost, const v1::ServerFrame& answer,
                        uint32_t values) = 0;
};

class Connection {
 public:
  using Deadline = std::chrono::steady_clock::time_point;

  // Connects and opens the session (Hello), then starts the reader and the
  // ping thread. Throws dchan::Error: kUnavailable when the broker cannot be
  // reached or does not answer the Hello within options.connect_timeout;
  // the broker's refusal of the Hello otherwise.
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

  // call_async for a request the broker answers only when it refuses it
  // (an UnlockRequest with `quiet` set), and whose outcome nobody is in a
  // hurry for: no thread is woken for it. `on_answer` gets the refusal, or
  // an empty OK answer once an answer arrives to any request queued after
  // this one (the broker handles a session's requests in order and answers
  // in the order it produces answers, so the refusal would have come
  // first), or the loss of the broker. Confirmation comes with the next
  // answer the stream carries: a later call's, at the latest the next
  // ping's (TTL/4). A remote unlock uses it.
  uint64_t call_quiet(v1::ClientFrame& frame, Callback on_answer);

  // A pipelined send of `value` on broker channel `handle`: it is appended
  // (SendRequest.more_values) to the last frame queued if that is a
  // pipelined send on the same handle for the same `sink` that no writer has
  // taken yet — so a streaming producer's sends leave as few frames, each
  // answered once — else queued as a new frame, written by the writer
  // thread (see the file comment). The frame's
  // answer goes to `sink`. Order is kept: nothing is appended to a frame
  // that another frame follows. Throws dchan::Error (kUnavailable) if the
  // broker is lost already.
  void send_pipelined(uint64_t handle, std::string value,
                      const std::shared_ptr<PipelinedSends>& sink);

  // call_async for an OfferRequest: before its answer, the broker may ask
  // claims about it (OfferClaim frames); `on_claim` runs on the reader
  // thread for each, must not block, and returns whether to accept, which
  // is sent back at once (a ClaimAnswer). Throws as call_async.
  using ClaimCallback = absl::AnyInvocable<bool()>;
  uint64_t call_offer(v1::ClientFrame& frame, ClaimCallback on_claim,
                      Callback on_answer);

  // Withdraws request `id` (the broker answers it CANCELLED or with its
  // result). The cancel's own answer is ignored. Never blocks.
  void cancel(uint64_t id) noexcept;

  // Tells the broker this session no longer uses `handle` (an object's
  // last client-side user is gone), so that a long-lived session does not
  // run into the broker's handle limit. Fire and forget: the answer is
  // ignored, a lost broker too. Never blocks on the answer. `on_answer`,
  // if set, is kept until the answer arrives (or the session is lost) and
  // then run as call_async's callback; it is dropped unrun if the session
  // is lost already.
  void release(uint64_t handle, Callback on_answer = nullptr) noexcept;

  // A request and its answer (opaque to callers: see call_later).
  struct Call {
    // kWaiting, then kAnswered once `answer` or `error` is set, or kReader
    // when the read role was handed to this call's (waiting) thread.
    std::atomic<uint32_t> state{kWaiting};
    v1::ServerFrame answer;
    absl::Status error;      // the connection failed
    Callback on_answer;      // set: an asynchronous call
    ClaimCallback on_claim;  // set: an offer (call_offer)
    std::chrono::steady_clock::time_point sent =
        std::chrono::steady_clock::now();  // (about) when it was sent
    // `in_call`: made by call(), whose caller waits for it and, once
    // answered, uncounts it from woken_ if `counted_woken` — set (before the
    // answer is published) when another thread answered it.
    bool in_call = false;
    bool counted_woken = false;
    // Its place in the write queue (1, 2, …; set when queued, before it can
    // be written), and whether it is a call_quiet.
    std::atomic<uint64_t> queued{0};
    bool quiet = false;
    uint64_t id = 0;  // its request id (set by start())
    // Guarded by mu_. `self_reading`: its thread may take the read role
    // (an untimed synchronous call, or a call_later one once awaited), or
    // (call_quiet) no thread waits for it; either way the background reader
    // is not needed for it (detach() clears it). `settled`:
    // answered (or failed).
    bool self_reading = false;
    bool settled = false;
  };

  // call() in two halves, for an untimed request whose answer is wanted
  // later: call_later() queues `frame` (moving from it) and returns at
  // once; answer_of() waits for the answer and returns it or throws, as
  // call() does. Meanwhile the answer is read by whichever thread reads the
  // stream for other calls, or stays on the stream: the thread in
  // answer_of() reads it itself (no hand-off to the background reader). A
  // call made so must be awaited by answer_of() (by one thread) or handed
  // to detach(). When call_later() sets `*write_later`, the calling thread
  // has become the writer of the queue: it must call write_deferred() —
  // soon, once it has released its own locks (a Write may block); frames
  // queued meanwhile wait for it. Throws dchan::Error (kUnavailable) if
  // the broker is lost already.
  std::shared_ptr<Call> call_later(v1::ClientFrame& frame, bool* write_later);
  void write_deferred();
  v1::ServerFrame answer_of(const std::shared_ptr<Call>& call);
  // Nobody will await `call` (from call_later): its answer goes to
  // `on_answer` as for call_async — on this thread, now, if it has arrived.
  // Not from a callback: one that fail_all() runs could wait here for a
  // call it has yet to finish.
  void detach(const std::shared_ptr<Call>& call, Callback on_answer);

  // Keeps the session open for requests that have yet to be made or
  // answered (values a dropped channel handle hands back, and its release;
  // a read-ahead's callback makes them): until the matching unhold(), the
  // destructor waits before it ends the stream. Every hold must end: tie it
  // to a call's callback, which is destroyed once it has run — answered,
  // or failed with the session. Call hold() holding a reference; the
  // Connection stays valid until the matching unhold(). Not under mu_.
  void hold() noexcept;
  void unhold() noexcept;

  const std::string& target() const noexcept { return target_; }

  // What the stream has carried so far: ClientBatch writes and the frames
  // in them (for tests and diagnostics).
  struct WriteCounts {
    uint64_t writes = 0;
    uint64_t frames = 0;
  };
  WriteCounts write_counts();

  // How many requests await their answers (for tests and diagnostics).
  std::size_t pending_calls();

  // The session: the client name sent in the Hello, the id and TTL the
  // broker granted.
  const std::string& name() const noexcept { return name_; }
  uint64_t session_id() const noexcept { return session_id_; }
  std::chrono::milliseconds session_ttl() const noexcept { return ttl_; }

  // Declares the session lost now (and returns true) if nothing has been
  // heard from the broker for the TTL; the ping thread would do so shortly.
  // Cheap; lock operations call it first, so that a client resumed after a
  // long stop (SIGSTOP) reports the loss instead of using a lock it may no
  // longer hold. Idempotent.
  bool check_session() noexcept;

  // Why the session was lost (kUnavailable), or OK while it is not.
  absl::Status lost();

  // Session objects, one per key: share() registers `object` (found again
  // by find_shared(key) while it lives) and `observer` (told when the
  // session is lost, until unshare()). If a live object is registered under
  // `key` already, nothing is registered and that object is returned;
  // otherwise `object`. The registry keeps `observer` alive; `object` only
  // weakly (it owns the Connection, the observer must not).
  std::shared_ptr<void> find_shared(const std::string& key);
  std::shared_ptr<void> share(const std::string& key,
                              std::shared_ptr<void> object,
                              std::shared_ptr<SessionObserver> observer);
  void unshare(const std::string& key,
               const SessionObserver* observer) noexcept;

 private:
  using Clock = std::chrono::steady_clock;

  static constexpr uint32_t kWaiting = 0;
  static constexpr uint32_t kAnswered = 1;
  static constexpr uint32_t kReader = 2;

  // Completes `call` (already removed from calls_ and settled) with its
  // answer or `error`. `by_its_reader`: the thread finishing it is the one
  // waiting for it (it holds the read role), so there is nobody to wake.
  static void finish(Call& call, const absl::Status& error,
                     bool by_its_reader = false);

  // Registers `call` for `frame` under a fresh request id (returned) and
  // sends it; `frame` is moved from.
  // The pipelined send frame last queued, while more values may be
  // appended to it (see send_pipelined).
  struct OpenSend {
    v1::SendRequest* request = nullptr;  // in write_queue_.back(); or none
    uint64_t handle = 0;
    const PipelinedSends* sink = nullptr;
    std::shared_ptr<std::atomic<uint32_t>> values;  // how many it carries
    std::size_t bytes = 0;
  };

  uint64_t start(const std::shared_ptr<Call>& call, v1::ClientFrame& frame,
                 bool hand_off = false, OpenSend* open = nullptr,
                 bool* write_later = nullptr);
  // Queues `frame`; with no write in progress, writes the queue on this
  // thread, or (`hand_off`) has the writer thread write it. `open`: the
  // frame is a pipelined send that may take more values. `call`: the
  // frame's call, told its place in the queue; a synchronous one (in_call)
  // first lets woken callers queue their frames (linger_for_woken).
  // `write_later` (not with hand_off): instead of writing, sets it when
  // this thread has become the writer (see call_later).
  void enqueue(v1::ClientFrame frame, bool hand_off = false,
               OpenSend* open = nullptr, Call* call = nullptr,
               bool* write_later = nullptr);
  // While callers woken with an answer have not returned from call(), and
  // for at most kLinger, yields the CPU to them, so that their next frames
  // are queued before this thread writes. Returns at once when none are.
  void linger_for_woken() const;
  // With writing_ taken: writes batches until the queue is empty, then
  // clears writing_.
  void write_queued();
  void writer_loop();
  // An answered call's answer, or throws its error (see call()).
  v1::ServerFrame take_answer(Call& call);
  // Waits for a self-reading call's answer, taking the read role when it is
  // free or handed over.
  void wait_reading(const std::shared_ptr<Call>& call);
  // Waits for a call that others read for (kAnswered); false at `deadline`.
  static bool wait_answered(Call& call, Deadline deadline);
  // With the read role held: reads one batch and completes its calls, or
  // ends the connection if the stream is over. `own`: the call of the
  // reading thread (not counted in woken_), if any.
  void read_once(v1::ServerBatch& batch, const Call* own = nullptr);
  // Gives the read role up: to the first waiting self-reading call, else to
  // the background reader if it is needed.
  void release_read_role();
  void background_read_loop();
  // The stream is over (the reader saw Read fail): finishes it and fails
  // every call.
  void end_stream();
  void fail_all(const absl::Status& status);

  // Sends the Hello and waits for its answer until `deadline`; sets name_,
  // session_id_ and ttl_. Throws dchan::Error.
  void hello(const ClientOptions& options, Clock::time_point deadline);
  // Stops the ping thread, ends the stream (reading it to its end unless a
  // reader is at it) and joins the background reader.
  void shut_down();
  // The ping thread: pings every ttl_/4, declares the loss at the TTL.
  void ping_loop();
  // Records that the broker heard a request sent at `sent`.
  void note_heard(Clock::time_point sent) noexcept;
  // The session is lost: marks the connection broken with `why`, tells the
  // session objects (once) and cancels the stream (the reader then fails
  // the pending calls).
  void lose_session(const absl::Status& why);
  void notify_lost(const absl::Status& why);

  const std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Broker::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ClientBatch, v1::ServerBatch>>
      stream_;
  std::thread background_reader_;

  // The session (set by hello(), before any other thread reads them).
  std::string name_;
  uint64_t session_id_ = 0;
  std::chrono::milliseconds ttl_{0};
  // Clock::time_point::rep of the send time of the latest answered request.
  std::atomic<Clock::rep> heard_{0};

  std::thread pinger_;
  absl::Mutex ping_mu_;
  bool ping_stop_ ABSL_GUARDED_BY(ping_mu_) = false;

  struct Shared {
    std::weak_ptr<void> object;
    std::shared_ptr<SessionObserver> observer;
  };
  absl::Mutex shared_mu_;
  absl::flat_hash_map<std::string, Shared> shared_ ABSL_GUARDED_BY(shared_mu_);
  absl::Status lost_ ABSL_GUARDED_BY(shared_mu_);  // set once

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Call>> calls_
      ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  // The read role (see the file comment).
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_over_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Self-reading calls whose threads wait (settled ones are skipped).
  std::deque<std::shared_ptr<Call>> idle_readers_ ABSL_GUARDED_BY(mu_);
  // Outstanding calls nobody waits to read for: timed, asynchronous and
  // detached ones.
  std::size_t background_needed_ ABSL_GUARDED_BY(mu_) = 0;
  // hold()s not yet matched by unhold(): shut_down waits for them. A lock
  // of its own: a call's callback, and so a hold, may be destroyed under
  // mu_.
  absl::Mutex hold_mu_;
  std::size_t holds_ ABSL_GUARDED_BY(hold_mu_) = 0;
  // Unanswered call_quiet calls by their place in the write queue: an
  // answer to a call queued later confirms them (see call_quiet).
  std::map<uint64_t, std::shared_ptr<Call>> quiet_ ABSL_GUARDED_BY(mu_);

  // Synchronous calls answered by another thread whose callers have not yet
  // returned from call() (counted_woken).
  std::atomic<int> woken_{0};
  // A bound, not the usual wait: a woken caller returns within a few µs of
  // getting a CPU, so this lets dozens of them run first on one CPU.
  static constexpr std::chrono::microseconds kLinger{100};

  static constexpr std::size_t kMaxBatchBytes = 1 << 20;
  absl::Mutex write_mu_;
  std::deque<v1::ClientFrame> write_queue_ ABSL_GUARDED_BY(write_mu_);
  OpenSend open_send_ ABSL_GUARDED_BY(write_mu_);
  bool writing_ ABSL_GUARDED_BY(write_mu_) = false;
  bool writes_failed_ ABSL_GUARDED_BY(write_mu_) = false;
  uint64_t queued_ ABSL_GUARDED_BY(write_mu_) = 0;  // calls' frames queued
  WriteCounts written_ ABSL_GUARDED_BY(write_mu_);
  // The writer thread (started by the first hand-off): woken by
  // write_handed_, it writes the queue; it stops (writing what is queued
  // first) at writer_stop_. Joined by shut_down().
  std::thread writer_;
  bool writer_started_ ABSL_GUARDED_BY(write_mu_) = false;
  bool write_handed_ ABSL_GUARDED_BY(write_mu_) = false;
  bool writer_stop_ ABSL_GUARDED_BY(write_mu_) = false;
};

}  // namespace dchan::detail

#endif  // DCHAN_CLIENT_CONNECTION_H_
