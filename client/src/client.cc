// dchan::Client and the broker-backed channel backend (detail::RemoteChan).
// The sync objects' backends are in sync.cc.
#include "dchan/client.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "connection.h"
#include "dchan/detail/futex.h"
#include "dchan/detail/waiter.h"

namespace dchan {
namespace detail {
namespace {

ChanStatus to_status(v1::Outcome outcome) {
  switch (outcome) {
    case v1::OUTCOME_OK:
      return ChanStatus::kOk;
    case v1::OUTCOME_WOULD_BLOCK:
      return ChanStatus::kWouldBlock;
    case v1::OUTCOME_CLOSED:
      return ChanStatus::kClosed;
    case v1::OUTCOME_CANCELLED:
      return ChanStatus::kTimeout;
    default:
      break;
  }
  throw Error(absl::StatusCode::kInternal,
              absl::StrCat("dchan: the broker answered with outcome ",
                           static_cast<int>(outcome)));
}

// The pipelined sends of one handle (RemoteChanOptions::send_window): how
// many are unanswered, and the first error one met that nobody has been
// told about yet. Shared with the answer callbacks, which may run after the
// handle is gone.
class SendWindow final : public PipelinedSends {
 public:
  SendWindow(std::string chan_name, uint32_t limit)
      : chan_name_(std::move(chan_name)), limit_(limit) {}

  // Takes a slot, waiting while `limit_` sends are unanswered.
  void acquire() {
    uint32_t cur = in_flight_.load();
    for (;;) {
      if (cur < limit_) {
        if (in_flight_.compare_exchange_weak(cur, cur + 1)) return;
        continue;
      }
      wait_for_change(cur);
      cur = in_flight_.load();
    }
  }

  // Gives back a slot whose send never left (it threw).
  void cancel_one() { done(1); }

  // The answer to a frame of `values` pipelined sends (or the session's
  // loss).
  void answered(const absl::Status& lost, const v1::ServerFrame& answer,
                uint32_t values) override {
    absl::Status err;
    uint64_t failed = values;
    if (!lost.ok()) {
      err = lost;
    } else if (answer.code() != 0) {
      err = absl::Status(static_cast<absl::StatusCode>(answer.code()),
                         answer.message());
    } else if (answer.send().outcome() == v1::OUTCOME_CLOSED) {
      err = absl::FailedPreconditionError("send on closed channel");
      failed = values - std::min<uint64_t>(values, answer.send().sent());
    } else if (answer.send().outcome() != v1::OUTCOME_OK) {
      err = absl::InternalError(
          absl::StrCat("dchan: the broker answered a pipelined send with "
                       "outcome ",
                       static_cast<int>(answer.send().outcome())));
    }
    if (!err.ok()) {
      absl::MutexLock lock(&mu_);
      if (error_.ok()) error_ = err;
      failed_ += failed;
      has_error_.store(true, std::memory_order_release);
      if (orphaned_) log_locked();
    }
    done(values);
  }

  // Throws (once) the error pipelined sends met since the last report.
  void report() {
    if (!has_error_.load(std::memory_order_acquire)) return;
    absl::Status err;
    uint64_t failed;
    {
      absl::MutexLock lock(&mu_);
      if (error_.ok()) return;
      err = std::exchange(error_, absl::OkStatus());
      failed = std::exchange(failed_, 0);
      has_error_.store(false, std::memory_order_relaxed);
    }
    throw Error(err.code(), absl::StrCat(err.message(), " (", failed,
                                         failed == 1 ? " pipelined send"
                                                     : " pipelined sends",
                                         " on channel \"", chan_name_,
                                         "\" from this client failed)"));
  }

  // Waits until no send is unanswered, then report()s.
  void flush() {
    for (uint32_t cur; (cur = in_flight_.load()) != 0;) wait_for_change(cur);
    report();
  }

  // The handle is gone: errors arriving from now on can only be logged.
  void orphan() {
    absl::MutexLock lock(&mu_);
    orphaned_ = true;
    if (!error_.ok()) log_locked();
  }

 private:
  void wait_for_change(uint32_t seen) {
    waiters_.fetch_add(1);
    futex_wait(in_flight_, seen);
    waiters_.fetch_sub(1);
  }

  void done(uint32_t n) {
    // seq_cst on both sides (with wait_for_change): either the waiter is
    // seen here, or its futex_wait sees the new count.
    in_flight_.fetch_sub(n);
    if (waiters_.load() != 0) futex_wake_all(in_flight_);
  }

  void log_locked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::fprintf(stderr,
                 "dchan: %llu pipelined send(s) on channel \"%s\" failed "
                 "after its last handle was dropped: %s\n",
                 static_cast<unsigned long long>(failed_), chan_name_.c_str(),
                 error_.ToString().c_str());
    error_ = absl::OkStatus();
    failed_ = 0;
  }

  const std::string chan_name_;
  const uint32_t limit_;
  std::atomic<uint32_t> in_flight_{0};
  std::atomic<uint32_t> waiters_{0};
  std::atomic<bool> has_error_{false};
  absl::Mutex mu_;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  uint64_t failed_ ABSL_GUARDED_BY(mu_) = 0;
  bool orphaned_ ABSL_GUARDED_BY(mu_) = false;
};

// A channel on the broker, reached through the session's connection, with
// the opt-in send window and receive batch (RemoteChanOptions).
class BrokerChan final : public RemoteChan {
 public:
  BrokerChan(std::shared_ptr<Connection> conn, std::string name,
             uint64_t handle, std::size_t capacity,
             const RemoteChanOptions& options)
      : conn_(std::move(conn)),
        name_(std::move(name)),
        handle_(handle),
        cap_(capacity),
        recv_batch_(static_cast<uint32_t>(
            std::min<std::size_t>(options.recv_batch, kMaxRecvBatch))),
        recv_ahead_(options.recv_ahead && recv_batch_ > 1),
        window_(options.send_window == 0
                    ? nullptr
                    : std::make_shared<SendWindow>(
                          name_, static_cast<uint32_t>(std::min<std::size_t>(
                                     options.send_window, kMaxSendWindow)))) {}

  ~BrokerChan() override {
    if (window_ != nullptr) window_->orphan();
    std::deque<std::string> held;
    std::shared_ptr<Connection::Call> ahead;
    {
      std::lock_guard<detail::Lock> lock(held_mu_);
      held.swap(held_);
      ahead.swap(ahead_);
    }
    if (ahead != nullptr) {
      // Its answer's values follow the held ones: when it arrives (on the
      // reader thread), all go back, then the handle is released (the
      // broker handles a session's frames in order). The session stays
      // open until the release is answered.
      Connection* conn = conn_.get();
      conn->detach(
          ahead,
          [conn, handle = handle_, name = name_, held = std::move(held),
           hold = std::make_shared<SessionHold>(*conn_)](
              const absl::Status& error, v1::ServerFrame& answer) mutable {
            if (error.ok()) append_values(answer, held);
            hand_back(*conn, handle, name, held);
            release_after(*conn, handle, std::move(hold));
          });
      return;
    }
    if (held.empty()) {
      conn_->release(handle_);
      return;
    }
    // The values go back, then the handle is released; the session stays
    // open until the release is answered, so that a Client dropped right
    // after this handle does not cancel its stream before the broker has
    // taken the values back.
    hand_back(*conn_, handle_, name_, held);
    release_after(*conn_, handle_, std::make_shared<SessionHold>(*conn_));
  }

  ChanStatus send(std::string value, Deadline deadline) override {
    report();
    if (window_ != nullptr && deadline == kNoDeadline) {
      window_->acquire();
      try {
        conn_->send_pipelined(handle_, std::move(value), window_);
      } catch (...) {
        window_->cancel_one();
        throw;
      }
      return ChanStatus::kOk;
    }
    v1::ClientFrame f;
    v1::SendRequest* req = f.mutable_send();
    req->set_handle(handle_);
    req->set_value(std::move(value));
    req->set_nonblocking(deadline == kNonBlocking);
    const v1::ServerFrame answer = conn_->call(f, deadline);
    return to_status(answer.send().outcome());
  }

  ChanStatus recv(std::string& out, Deadline deadline) override {
    if (take_held(out)) return ChanStatus::kOk;
    report();
    v1::ClientFrame f;
    v1::RecvRequest* req = f.mutable_recv();
    req->set_handle(handle_);
    req->set_nonblocking(deadline == kNonBlocking);
    if (recv_batch_ > 1) req->set_max_values(recv_batch_);
    v1::ServerFrame answer = conn_->call(f, deadline);
    v1::RecvResponse* r = answer.mutable_recv();
    const ChanStatus st = to_status(r->outcome());
    if (st == ChanStatus::kOk) {
      out = std::move(*r->mutable_value());
      bool write = false;
      if (r->more_values_size() > 0) {
        std::lock_guard<detail::Lock> lock(held_mu_);
        for (std::string& v : *r->mutable_more_values()) {
          held_.push_back(std::move(v));
        }
        write = start_ahead(1 + r->more_values_size());
      }
      if (write) conn_->write_deferred();
    }
    return st;
  }

  bool take_held(std::string& out) noexcept override {
    if (recv_batch_ <= 1) return false;
    for (;;) {
      std::shared_ptr<Connection::Call> ahead;
      {
        std::lock_guard<detail::Lock> lock(held_mu_);
        if (pop_held(out)) return true;
        if (ahead_ == nullptr) return false;
        ahead = ahead_;
      }
      // The read-ahead's values come before any a new request would get.
      // (Taken in by another thread meanwhile, it may have sent the next.)
      take_in(ahead);
    }
  }

  void flush() override {
    if (window_ != nullptr) window_->flush();
  }

  void close() override {
    report();
    v1::ClientFrame f;
    f.mutable_close()->set_handle(handle_);
    conn_->call(f, kNoDeadline);  // throws "close of closed channel"
  }

  // The broker channel's len, plus the values this handle holds (a batch
  // receive's extras).
  std::size_t len() override {
    report();
    v1::ClientFrame f;
    f.mutable_stat()->set_handle(handle_);
    std::shared_ptr<Connection::Call> ahead;
    {
      std::lock_guard<detail::Lock> lock(held_mu_);
      ahead = ahead_;
    }
    const auto broker_len =
        static_cast<std::size_t>(conn_->call(f, kNoDeadline).stat().len());
    // A read-ahead sent before the Stat took its values out before it
    // counted; it has been answered by now (the broker answers a session's
    // non-blocking requests in order). With other threads receiving on this
    // handle meanwhile, the count is a snapshot of moving parts, as a len()
    // is anyway: a read-ahead they send around the Stat may be counted
    // twice or not at all.
    if (ahead != nullptr) take_in(ahead);
    std::lock_guard<detail::Lock> lock(held_mu_);
    return broker_len + held_.size();
  }

  std::size_t cap() const noexcept override { return cap_; }

  const void* session() const noexcept override { return conn_.get(); }

  uint64_t watch(bool for_send,
                 absl::AnyInvocable<void(bool) &&> ready) override {
    v1::ClientFrame f;
    v1::WatchRequest* req = f.mutable_watch();
    req->set_handle(handle_);
    req->set_send(for_send);
    return conn_->call_async(
        f, [ready = std::move(ready)](const absl::Status& error,
                                      v1::ServerFrame& answer) mutable {
          // An error answer (or a lost broker) wakes the select too: its
          // non-blocking attempt then reports the problem.
          // ok=false: the broker is lost, or refused the watch.
          const bool ok = error.ok() && answer.code() == 0;
          if (ok && answer.has_watch() &&
              answer.watch().outcome() == v1::OUTCOME_CANCELLED) {
            return;  // withdrawn: the select has moved on
          }
          std::move(ready)(ok);
        });
  }

  void cancel_watch(uint64_t token) noexcept override { conn_->cancel(token); }

  uint64_t offer(bool send, const std::string& value, uint64_t select_id,
                 absl::AnyInvocable<bool()> claim,
                 absl::AnyInvocable<void(RemoteOfferResult) &&> done) override {
    v1::ClientFrame f;
    v1::OfferRequest* req = f.mutable_offer();
    req->set_handle(handle_);
    req->set_send(send);
    if (send) req->set_value(value);
    req->set_select_id(select_id);
    return conn_->call_offer(
        f, std::move(claim),
        [done = std::move(done)](const absl::Status& error,
                                 v1::ServerFrame& answer) mutable {
          RemoteOfferResult r;
          if (!error.ok()) {
            r.error = std::string(error.message());
          } else if (answer.code() != 0) {
            r.error = answer.message();
          } else if (!answer.has_offer()) {
            r.error = "dchan: the broker answered an offer with another frame";
          } else {
            switch (answer.offer().outcome()) {
              case v1::OUTCOME_OK:
                r.kind = RemoteOfferResult::kCommitted;
                r.value = std::move(*answer.mutable_offer()->mutable_value());
                break;
              case v1::OUTCOME_ABORTED:
                r.kind = RemoteOfferResult::kAborted;
                break;
              case v1::OUTCOME_CANCELLED:
                r.kind = RemoteOfferResult::kCancelled;
                break;
              default:
                r.error = absl::StrCat(
                    "dchan: the broker answered an offer with outcome ",
                    static_cast<int>(answer.offer().outcome()));
                break;
            }
          }
          std::move(done)(std::move(r));
        });
  }

  void cancel_offer(uint64_t token) noexcept override { conn_->cancel(token); }

  RemoteSelectResult select(std::vector<RemoteSelectCase>& cases,
                            Deadline deadline) override {
    report();
    v1::ClientFrame f;
    v1::SelectRequest* req = f.mutable_select();
    req->set_nonblocking(deadline == kNonBlocking);
    for (RemoteSelectCase& c : cases) {
      if (c.chan->session() != session()) {
        throw Error(absl::StatusCode::kInvalidArgument,
                    "dchan: a broker select over channels of two sessions");
      }
      v1::SelectCase* sc = req->add_cases();
      sc->set_handle(static_cast<BrokerChan*>(c.chan)->handle_);
      sc->set_send(c.send);
      if (c.send) sc->set_value(c.value);  // kept: the select may go again
    }
    v1::ServerFrame answer = conn_->call(f, deadline);
    const v1::SelectResponse& r = answer.select();
    RemoteSelectResult out;
    out.status = to_status(r.outcome());
    out.index = r.index();
    if (out.status == ChanStatus::kWouldBlock) out.index = cases.size();
    if ((out.status == ChanStatus::kOk || out.status == ChanStatus::kClosed) &&
        out.index >= cases.size()) {
      throw Error(absl::StatusCode::kInternal,
                  absl::StrCat("dchan: the broker answered select case ",
                               out.index, " of ", cases.size()));
    }
    out.value = std::move(*answer.mutable_select()->mutable_value());
    return out;
  }

 private:
  static constexpr std::size_t kMaxRecvBatch = 4096;  // the broker's limit
  static constexpr std::size_t kMaxSendWindow = 1 << 20;

  // With held_mu_ held, after an answer brought `n` values: if the batch
  // was full and no read-ahead is on its way (RemoteChanOptions::
  // recv_ahead), sends one — a non-blocking batch receive, answered while
  // this batch is consumed. Threads that find nothing held wait for its
  // answer from now on (take_held). The frame is queued under held_mu_, so
  // that no other request of this handle can overtake it, but not written:
  // true means this thread must call conn_->write_deferred() once held_mu_
  // is released.
  bool start_ahead(std::size_t n) noexcept {
    // Never more than a batch held when it is sent (len() may take one in
    // while values are held): with it, at most 2 * recv_batch - 1 values
    // are out of the broker channel once a value has been handed out.
    if (!recv_ahead_ || n < recv_batch_ || ahead_ != nullptr ||
        held_.size() > recv_batch_) {
      return false;
    }
    v1::ClientFrame f;
    v1::RecvRequest* req = f.mutable_recv();
    req->set_handle(handle_);
    req->set_nonblocking(true);
    req->set_max_values(recv_batch_);
    bool write = false;
    try {
      ahead_ = conn_->call_later(f, &write);
    } catch (const Error&) {
      // The session is lost: the next recv() reports it.
    }
    return write;
  }

  // Waits for the answer to read-ahead `ahead` and appends its values to
  // the held ones — unless another thread did so first. One thread at a
  // time awaits; the others wait for it here.
  void take_in(const std::shared_ptr<Connection::Call>& ahead) noexcept {
    std::lock_guard<std::mutex> awaiting(ahead_mu_);
    {
      std::lock_guard<detail::Lock> lock(held_mu_);
      if (ahead_ != ahead) return;
    }
    std::deque<std::string> values;
    try {
      v1::ServerFrame answer = conn_->answer_of(ahead);
      append_values(answer, values);
    } catch (const Error&) {
      // A lost session, a refused request: the next recv() asks the broker
      // itself and reports it.
    }
    bool write;
    {
      std::lock_guard<detail::Lock> lock(held_mu_);
      ahead_ = nullptr;
      for (std::string& v : values) held_.push_back(std::move(v));
      write = start_ahead(values.size());
    }
    if (write) conn_->write_deferred();
  }

  // Appends a receive answer's values (none unless its outcome is OK) to
  // `out`.
  static void append_values(v1::ServerFrame& answer,
                            std::deque<std::string>& out) {
    if (!answer.has_recv() || answer.recv().outcome() != v1::OUTCOME_OK) return;
    v1::RecvResponse* r = answer.mutable_recv();
    out.push_back(std::move(*r->mutable_value()));
    for (std::string& v : *r->mutable_more_values())
      out.push_back(std::move(v));
  }

  // With held_mu_ held: takes the first held value, if any.
  bool pop_held(std::string& out) {
    if (held_.empty()) return false;
    out = std::move(held_.front());
    held_.pop_front();
    return true;
  }

  // Connection::hold() while it lives: captured by the callback of a
  // handle's last request, it keeps the session open until that request's
  // answer (or the session's loss) has destroyed the callback.
  class SessionHold {
   public:
    explicit SessionHold(Connection& conn) : conn_(conn) { conn_.hold(); }
    ~SessionHold() { conn_.unhold(); }
    SessionHold(const SessionHold&) = delete;
    SessionHold& operator=(const SessionHold&) = delete;

   private:
    Connection& conn_;
  };

  // Releases broker handle `handle` (after the frames queued before it),
  // with `hold` kept until the broker answers.
  static void release_after(Connection& conn, uint64_t handle,
                            std::shared_ptr<SessionHold> hold) noexcept {
    conn.release(handle, [hold = std::move(hold)](const absl::Status&,
                                                  v1::ServerFrame&) {});
  }

  // Hands values received but not consumed back to the broker channel
  // `handle` (before its release: the broker handles a session's frames in
  // order). A failure can only be written to stderr.
  static void hand_back(Connection& conn, uint64_t handle,
                        const std::string& name,
                        std::deque<std::string>& values) noexcept {
    if (values.empty()) return;
    v1::ClientFrame f;
    v1::ReturnRequest* req = f.mutable_return_values();
    req->set_handle(handle);
    for (std::string& v : values) req->add_values(std::move(v));
    const std::size_t n = values.size();
    try {
      conn.call_async(
          f, [n, name](const absl::Status& error, v1::ServerFrame& answer) {
            if (error.ok() && answer.code() == 0) return;
            std::fprintf(stderr,
                         "dchan: %zu received value(s) of channel \"%s\" could "
                         "not be handed back to the broker: %s\n",
                         n, name.c_str(),
                         error.ok() ? answer.message().c_str()
                                    : error.ToString().c_str());
          });
    } catch (const Error& e) {
      std::fprintf(stderr,
                   "dchan: %zu received value(s) of channel \"%s\" could "
                   "not be handed back to the broker: %s\n",
                   n, name.c_str(), e.what());
    }
  }

  // Throws the error pipelined sends met, if one is unreported.
  void report() {
    if (window_ != nullptr) window_->report();
  }

  const std::shared_ptr<Connection> conn_;
  const std::string name_;
  const uint64_t handle_;
  const std::size_t cap_;
  const uint32_t recv_batch_;                 // > 1: batch receives
  const bool recv_ahead_;                     // with batches: read-ahead
  const std::shared_ptr<SendWindow> window_;  // set: pipelined sends
  // Taken once per value received: lib's futex lock, not an absl::Mutex
  // (Debian's Abseil keeps its deadlock-detection bookkeeping on, a global
  // lock per acquisition, which a streaming consumer paid on every value).
  // Never held while anything blocks.
  detail::Lock held_mu_;
  // A batch receive's extra values, in channel order, and the read-ahead on
  // its way, if any (its values follow them). Guarded by held_mu_.
  std::deque<std::string> held_;
  std::shared_ptr<Connection::Call> ahead_;
  // Held by the one thread awaiting the read-ahead's answer.
  std::mutex ahead_mu_;
};

}  // namespace

std::shared_ptr<RemoteChan> open_remote_chan(
    const std::shared_ptr<Connection>& conn, const std::string& name,
    const std::string& type_name, std::size_t capacity,
    const RemoteChanOptions& options) {
  v1::ClientFrame f;
  v1::OpenRequest* req = f.mutable_open();
  req->set_name(name);
  req->set_kind(v1::OBJECT_KIND_CHANNEL);
  req->set_type_name(type_name);
  req->set_capacity(capacity);
  const v1::ServerFrame answer = conn->call(f, RemoteChan::kNoDeadline);
  return std::make_shared<BrokerChan>(conn, name, answer.open().handle(),
                                      capacity, options);
}

}  // namespace detail

Client Client::connect(const std::string& target) {
  return connect(target, ClientOptions());
}

Client Client::connect(const std::string& target, ClientOptions options) {
  return Client(std::make_shared<detail::Connection>(target, options));
}

const std::string& Client::target() const noexcept { return conn_->target(); }

const std::string& Client::name() const noexcept { return conn_->name(); }

uint64_t Client::session_id() const noexcept { return conn_->session_id(); }

std::chrono::milliseconds Client::session_ttl() const noexcept {
  return conn_->session_ttl();
}

}  // namespace dchan
