// dchan/detail/remote.h — the byte-level backends of broker-hosted handles:
// Chan<T> (RemoteChan), Mutex and RWMutex (RemoteLock), WaitGroup
// (RemoteWaitGroup) and AtomicValue<T> (RemoteValue).
//
// Internal to dchan. lib declares these interfaces so that its handles can
// be backed by a broker without lib depending on gRPC; the client library
// (client/) implements them. Typed handles encode and decode values with
// Codec<T> and call these members; a local handle never touches them (one
// predictable branch per operation).
//
// Thread safety: implementations must allow every member to be called
// concurrently from any number of threads.
#ifndef DCHAN_DETAIL_REMOTE_H_
#define DCHAN_DETAIL_REMOTE_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"

namespace dchan {

enum class ChanStatus;

namespace detail {

class RemoteChan;

// One case of a select run by the broker.
struct RemoteSelectCase {
  RemoteChan* chan = nullptr;
  bool send = false;
  std::string value;  // send cases: the encoded value
};

struct RemoteSelectResult {
  std::size_t index = 0;  // the case that fired
  // kOk; kClosed (recv: closed and drained; send: the channel is closed);
  // kWouldBlock (non-blocking, nothing ready: index == cases.size());
  // kTimeout (the deadline passed and the select was withdrawn).
  ChanStatus status;
  std::string value;  // a received value
};

// The final answer to an offer (RemoteChan::offer).
struct RemoteOfferResult {
  enum Kind {
    kCommitted,  // the select's claim was accepted and committed: a send
                 // offer's value was delivered, a receive offer got `value`
    kAborted,    // an accepted claim was not committed: nothing happened
    kCancelled,  // withdrawn (cancel_offer): nothing happened
    kFailed,     // the broker is lost or refused the offer (`error` says)
  };
  Kind kind = kFailed;
  std::string value;  // kCommitted receive offers
  std::string error;  // kFailed
};

class RemoteChan {
 public:
  using Deadline = std::chrono::steady_clock::time_point;
  // A deadline of Deadline::min() makes an operation non-blocking (try_*);
  // Deadline::max() blocks without a time limit.
  static constexpr Deadline kNonBlocking = Deadline::min();
  static constexpr Deadline kNoDeadline = Deadline::max();

  virtual ~RemoteChan() = default;

  // Sends `value`: kOk, kWouldBlock (non-blocking), kTimeout or kClosed. On
  // kTimeout the send was withdrawn on the broker and delivered nothing.
  // Throws dchan::Error for remote failures (kUnavailable: broker lost).
  // `value` is taken by value so that the encoded bytes move into the
  // request frame instead of being copied there.
  virtual ChanStatus send(std::string value, Deadline deadline) = 0;

  // Receives into `out`: kOk, kWouldBlock, kTimeout or kClosed (closed and
  // drained). On kTimeout the receive was withdrawn and consumed nothing.
  // Throws as send().
  virtual ChanStatus recv(std::string& out, Deadline deadline) = 0;

  // A value this handle holds already (the extra values of a batch receive,
  // RemoteChanOptions::recv_batch), taken without asking the broker: true
  // with `out` set, or false. A select sees such a receive as ready. Never
  // throws. Blocks only for a read-ahead on its way (recv_ahead): its
  // answer, which the broker gives at once, comes before any value a new
  // request could get, so it is awaited (as long as a non-blocking call to
  // the broker could take).
  virtual bool take_held(std::string& out) noexcept {
    (void)out;
    return false;
  }

  // Closes the channel for every process. Throws dchan::Error "close of
  // closed channel", or for remote failures.
  virtual void close() = 0;

  // Go's len (asks the broker; throws for remote failures) and cap.
  virtual std::size_t len() = 0;
  virtual std::size_t cap() const noexcept = 0;

  // The broker session this channel belongs to: a select can run on the
  // broker when all its broker cases share one session.
  virtual const void* session() const noexcept = 0;

  // Runs a select over `cases`, all of this session, on the broker: exactly
  // one case fires. Deadline as for send(); kNonBlocking is Go's default
  // case. Throws as send().
  virtual RemoteSelectResult select(std::vector<RemoteSelectCase>& cases,
                                    Deadline deadline) = 0;

  // Asks the broker to call `ready(true)` once this channel is ready for a
  // send (`for_send`) or a receive, consuming nothing; `ready(false)` if
  // the broker is lost first. `ready` runs on the client's reader thread and
  // must not block. Returns a token for cancel_watch(). Throws as send().
  virtual uint64_t watch(bool for_send,
                         absl::AnyInvocable<void(bool) &&> ready) = 0;
  // Withdraws a watch; its callback may still run if it raced. Never
  // blocks, never throws.
  virtual void cancel_watch(uint64_t token) noexcept = 0;

  // Waits until every send this backend let return before the broker
  // answered it (a pipelined send) has been answered, then throws the
  // first error such a send met, if any (see dchan::flush in
  // <dchan/client.h>). A backend without pipelined sends returns at once.
  virtual void flush() {}

  // Unbuffered channels only: offers one case of a select that spans
  // local channels or several brokers — a tentative send of `value`
  // (`send`) or receive — so that another such select can meet it (see
  // "Offers" in proto/dchan/v1/broker.proto). `select_id` names the
  // select attempt, unique in this process; offers of one attempt never
  // meet each other. For each claim the broker asks, `claim()` runs on the
  // client's reader thread and answers whether the select accepts to fire
  // this offer (it must then belong to this offer alone: the select's
  // waiter claimed); it must not block. `done` runs once, on the reader
  // thread, with the offer's final answer. Returns a token for
  // cancel_offer(). Throws as send().
  virtual uint64_t offer(
      bool send, const std::string& value, uint64_t select_id,
      absl::AnyInvocable<bool()> claim,
      absl::AnyInvocable<void(RemoteOfferResult) &&> done) = 0;
  // Withdraws an offer: `done` then gets kCancelled, or the answer that
  // raced with the withdrawal. Never blocks, never throws.
  virtual void cancel_offer(uint64_t token) noexcept = 0;
};

// A broker-hosted lock: the backend of a remote Mutex (exclusive only) and
// of a remote RWMutex. The lock is held by the client's session; every
// thread of the client may release it.
//
// Loss: once the client suspects that its session is gone while it holds
// the lock (the broker unreachable, or nothing heard from it for the
// session TTL — the broker then releases the lock to the next waiter), the
// acquisition's stop token is requested, and every later operation on this
// lock throws dchan::Error with kAborted naming the lock and the token it
// held.
class RemoteLock {
 public:
  using Deadline = RemoteChan::Deadline;

  virtual ~RemoteLock() = default;

  // Takes the lock (`shared`: a read lock), waiting FIFO on the broker until
  // `deadline` (RemoteChan::kNonBlocking: try once; kNoDeadline: no limit),
  // or at once without the broker when the client keeps it (a kept Mutex,
  // MutexOptions::keep).
  // Returns whether it is now held; on false, the request was withdrawn and
  // nothing is held. Throws dchan::Error: kUnavailable (broker lost),
  // kAborted (this lock was lost earlier, see above).
  virtual bool lock(bool shared, Deadline deadline) = 0;

  // Releases the lock (`shared`: one read lock). When this client holds it
  // in that mode, returns once the request is queued (the broker applies it
  // before any later request of this client), or at once when the client
  // keeps the lock; an error answer, or the
  // session's loss before the answer, is thrown by the next operation on
  // the lock (kAborted for the loss). Otherwise asks the broker and throws
  // dchan::Error kFailedPrecondition with Go's message when it is not held
  // (a kept lock that no thread holds: throws it without asking, since the
  // broker holds it for this client).
  // Throws kAborted when the lock was lost while held; kUnavailable when the
  // broker is lost.
  virtual void unlock(bool shared) = 0;

  // The fencing token of the current (or last) exclusive acquisition by
  // this client; 0 before the first. Never blocks.
  virtual uint64_t token() const noexcept = 0;

  // A token whose stop is requested when the current acquisition is lost
  // (see above). A token that can never stop (stop_possible() false) when
  // the lock is not held. Never blocks.
  virtual std::stop_token hold_token() const noexcept = 0;
};

// A broker-hosted WaitGroup.
class RemoteWaitGroup {
 public:
  using Deadline = RemoteChan::Deadline;

  virtual ~RemoteWaitGroup() = default;

  // Adds `delta` on the broker and returns once it is counted there (a
  // done() that returned is paid even if the process exits at once).
  // Throws dchan::Error: kFailedPrecondition "sync: negative WaitGroup
  // counter", kOutOfRange, kUnavailable.
  virtual void add(int delta) = 0;

  // Waits until the counter is zero or `deadline` (kNonBlocking: look
  // once); returns whether it reached zero. Throws dchan::Error: kAborted
  // when a participant was lost (the message names it), kUnavailable.
  virtual bool wait(Deadline deadline) = 0;

  // The counter on the broker now. Throws dchan::Error (kUnavailable).
  virtual int count() = 0;
};

// A broker-hosted AtomicValue: bytes, linearizable on the broker. Every
// member throws dchan::Error (kUnavailable) when the broker is lost.
class RemoteValue {
 public:
  virtual ~RemoteValue() = default;
  virtual std::optional<std::string> load() = 0;
  // Stores `value`; returns the value it replaced.
  virtual std::optional<std::string> swap(const std::string& value) = 0;
  // Stores `desired` if a value is stored and its bytes equal `old`.
  virtual bool compare_and_swap(const std::string& old,
                                const std::string& desired) = 0;
};

}  // namespace detail
}  // namespace dchan

#endif  // DCHAN_DETAIL_REMOTE_H_
