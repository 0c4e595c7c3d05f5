// dchan/detail/remote.h — the byte-level backend of a broker-hosted Chan<T>.
//
// Internal to dchan. lib declares this interface so that Chan<T> can be
// backed by a broker without lib depending on gRPC; the client library
// (client/) implements it. Chan<T> encodes and decodes values with
// Codec<T> and calls these members; a local Chan<T> never touches them (one
// predictable branch per operation).
//
// Thread safety: implementations must allow every member to be called
// concurrently from any number of threads.
#ifndef DCHAN_DETAIL_REMOTE_H_
#define DCHAN_DETAIL_REMOTE_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
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
  virtual ChanStatus send(const std::string& value, Deadline deadline) = 0;

  // Receives into `out`: kOk, kWouldBlock, kTimeout or kClosed (closed and
  // drained). On kTimeout the receive was withdrawn and consumed nothing.
  // Throws as send().
  virtual ChanStatus recv(std::string& out, Deadline deadline) = 0;

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
};

}  // namespace detail
}  // namespace dchan

#endif  // DCHAN_DETAIL_REMOTE_H_
