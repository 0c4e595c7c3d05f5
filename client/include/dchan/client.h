// dchan/client.h — channels and sync objects hosted by a dchan-broker, as
// plain dchan::Chan<T>, Mutex, RWMutex, WaitGroup and AtomicValue<T>.
//
//   dchan::Client client = dchan::Client::connect("broker.example:7070");
//   dchan::Chan<std::string> jobs = client.chan<std::string>("jobs", 100);
//   jobs.send("build");                 // same type, same semantics as local
//   dchan::Mutex mu = client.mutex("deploy");
//   dchan::WaitGroup wg = client.wait_group("batch-42");
//
// A Client is a cheap, copyable handle to one session with one broker: one
// gRPC stream shared by every object it hands out, on which all operations
// of all threads are multiplexed (frames queued while a write is in flight
// leave together as one message). The session ends when the last copy of
// the Client and of every object it handed out is gone. An object handed
// out holds a handle on the broker while any copy of it lives; the last
// copy releases it (the broker limits how many a session holds at once,
// --max_handles_per_session), so a long-lived client may open objects per
// job. Releasing a handle changes nothing else: a lock stays held until
// unlocked or until the session ends.
//
// Semantics of a broker channel are Go's, as for a local channel (see
// <dchan/chan.h>): an unbuffered send returns once a receiver in some process
// has the value; a buffered send once the broker holds it; close() closes it
// for every process. A timed or non-blocking operation that gives up is
// withdrawn on the broker: a withdrawn receive consumed nothing, a withdrawn
// send delivered nothing. The sync objects keep the semantics of the lib
// types too; their remote specifics (locks held by the session, fencing
// tokens, loss, WaitGroup participants) are documented in <dchan/mutex.h>,
// <dchan/rw_mutex.h>, <dchan/wait_group.h> and <dchan/atomic_value.h>.
// Every remote operation returns only after the broker has applied it —
// except the sends of a handle opened with a send window, which return once
// queued (opt-in; see RemoteChanOptions), and the unlock of a lock this
// session holds, which returns once its frame is queued, as Go's Unlock
// never blocks: the session's requests reach the broker in order, so every
// later request of this Client (a lock of the same name, too) is applied
// after it; a process that learns of the unlock by other means may briefly
// still find the lock held. A failure of such an unlock (the session lost
// before the broker applied it) is thrown by the next operation on that
// lock, logged to stderr if no handle of it is left (see <dchan/mutex.h>).
//
// Throughput: a Client coalesces frames queued while a write is in flight
// into one gRPC message, and the broker answers one incoming message with
// one. Acked calls from many threads share writes: a thread about to write
// first lets the threads just woken with their answers queue their next
// frames (a wait of at most ~100 µs, never taken by a lone caller). Each
// acked send still costs its thread a round trip; a streaming
// producer or consumer opts in to a send window (consecutive sends of one
// handle travel as one frame, answered once) and batch receives.
//
// Sessions: the client opens its session with its name and a TTL
// (ClientOptions) and sends a ping every TTL/4. A session from which the
// broker hears nothing for the TTL (a process stopped, a partition) is ended
// by the broker, which then releases its locks to the next waiter and
// settles its WaitGroup debts. The client suspects the same on its own side:
// when it has not heard from the broker for the TTL (counted from the send
// time of its latest answered request, so it never suspects later than the
// broker decides), or the stream breaks, it declares the session lost. Every
// lock it holds then has its hold_token() stop requested and throws
// dchan::Error kAborted on every later operation; every other operation of
// the Client throws kUnavailable. A lost Client stays broken (no
// reconnection): connect a new one.
//
// Failures: every operation throws dchan::Error with kUnavailable once the
// broker is lost (connection refused or reset, or no keepalive answer within
// keepalive_time + keepalive_timeout, or the session lost as above), also
// one that is blocked at that moment — never a hang. Broker-side refusals
// keep the broker's status code (kInvalidArgument for a type, capacity or
// kind mismatch, naming both sides).
//
// Thread safety: Client and the handles it returns may be used from any
// number of threads.
#ifndef DCHAN_CLIENT_H_
#define DCHAN_CLIENT_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/status.h"
#include "dchan/atomic_value.h"
#include "dchan/chan.h"
#include "dchan/codec.h"
#include "dchan/error.h"
#include "dchan/mutex.h"
#include "dchan/rw_mutex.h"
#include "dchan/select.h"
#include "dchan/wait_group.h"
#include "google/protobuf/message_lite.h"

namespace dchan {

struct ClientOptions {
  // How long connect() waits for the broker: one deadline for reaching it
  // and for its answer to the session's Hello.
  std::chrono::milliseconds connect_timeout{5000};
  // Keepalive pings on the connection, also while idle: a broker that does
  // not answer one within keepalive_timeout is considered lost.
  std::chrono::milliseconds keepalive_time{1000};
  std::chrono::milliseconds keepalive_timeout{2000};
  // The session's time to live: the broker ends a session it has heard
  // nothing from for this long (releasing its locks), and the client
  // declares it lost when it has heard nothing from the broker for this
  // long. The broker clamps it to its --min/--max_session_ttl_ms; 0: the
  // broker's default. Client::session_ttl() tells what was granted.
  std::chrono::milliseconds session_ttl{10000};
  // The client's name, shown in the broker's errors (a lost WaitGroup
  // participant) and inspection; empty: "hostname:pid".
  std::string name;
};

// Opt-in pipelining for one broker channel handle (Client::chan). The
// defaults keep Go's semantics: every send returns once the broker holds
// the value (or a receiver took it), every receive fetches one value.
struct RemoteChanOptions {
  // Pipelined sends: up to `send_window` blocking send()s of this handle
  // may be on their way to the broker at once. Such a send returns as soon
  // as its frame is queued for the broker; it blocks only while
  // `send_window` sends are unanswered (so the memory they hold is bounded).
  // Frames keep their order: the sends of one Client reach the channel in
  // the order they were made (the broker parks sends beyond the buffer, in
  // order, as it does for acked sends). 0: every send waits for its answer.
  //
  // What can go wrong after such a send returned: the channel is closed
  // before the broker takes the value ("send on closed channel"), or the
  // session is lost (kUnavailable) before its answer arrives — then the
  // value may or may not have reached the channel. Either error is
  // reported, with how many sends it hit, by the next operation on this
  // handle (any copy of it: send, recv, close, len, their try/timed forms,
  // or dchan::flush), which throws it instead of doing its own work; it is
  // reported once. dchan::flush(ch) waits until every pipelined send was
  // answered and throws such an error: call it before relying on the
  // values having arrived, and before dropping the last copy of the handle
  // (an error that arrives after that can only be written to stderr).
  // Timed and non-blocking sends (try_send, send_for, select) are never
  // pipelined: they report their own outcome.
  std::size_t send_window = 0;
  // Batch receive: a blocking or timed recv() that finds nothing held
  // locally asks the broker for up to `recv_batch` values; the broker
  // waits for the first only and adds those available at that moment. The
  // extra values wait in this handle for its next recv()s (any thread;
  // try_recv and timed recvs take them too), in channel order for one
  // receiving thread — with several, in the order their batches' answers
  // are stored, which can differ from the broker's. They are
  // removed from the broker channel: other processes cannot receive them,
  // and the broker's len() does not count them — this handle's len() adds
  // them to the broker's. When the last copy of the handle goes, the values
  // not consumed are handed back to the broker channel, at its back, in
  // their order (if the channel was closed meanwhile, the broker still
  // hands them to its next receives before reporting it drained). If this
  // process dies or loses its session instead, up to recv_batch - 1 values
  // fetched but not consumed are lost with it. After close() (by any
  // process), recv() on this handle returns its local values first, then
  // reports the channel closed once the broker channel is drained too. A
  // select sees them: a receive case on this handle is ready while it
  // holds values, and takes the first. 0 or 1: one value per request.
  std::size_t recv_batch = 0;
  // Read-ahead, with recv_batch > 1: when a batch comes back full (with
  // recv_batch values; the broker channel had a backlog, and the broker's
  // batch byte limit did not cut it short), this handle asks for the next batch
  // at once, while that one is consumed, so that the broker's answer travels
  // meanwhile instead of after. The ask does not block on the broker: it
  // takes only values buffered at that moment (none: nothing is held, and
  // the next recv() asks as usual), and no other receiver loses a value it
  // is waiting for. A recv(), try_recv, timed recv or select on this handle
  // that finds nothing held waits for that answer first (values keep
  // channel order), as long as a non-blocking ask of the broker takes
  // (which, like any call to the broker, a slow broker delays).
  // Everything recv_batch says about held values holds for these too: len()
  // counts them, a dropped handle hands them back, a close reports after
  // them. The cost: up to 2 * recv_batch - 1 values can be held — and lost
  // with a crashed process or a lost session.
  bool recv_ahead = false;
};

// Waits until every pipelined send of `ch` (RemoteChanOptions::send_window)
// has been answered by the broker, then throws the first error any of them
// met (kFailedPrecondition "send on closed channel ..." or kUnavailable,
// saying how many sends it hit). Returns at once for a local channel or a
// handle without a send window. Blocks for as long as the broker parks
// those sends (a full buffer), like a blocking send would.
template <class T>
void flush(const Chan<T>& ch) {
  if (detail::RemoteChan* r = detail::remote_of(ch)) r->flush();
}

struct MutexOptions {
  // Keeps the lock in this Client's session after unlock(), until another
  // lock request asks the broker for it — any lock(), timed lock or
  // try_lock() of another process, of another Client of this process, or
  // of this Client's other threads while one holds it. Meanwhile a lock()
  // or try_lock*() through this Client takes it back at once, with no
  // round trip to the broker. Once asked for, the lock goes back to the
  // broker — at once if no thread of this Client holds it, else at the
  // holder's unlock() — and the next lock() of this Client waits its turn
  // there, FIFO. (A try_lock() that found it kept fails; one a round trip
  // later finds it free unless the keeper took it again first.)
  //
  // What changes for others: a process that wants the lock waits, besides
  // the holder's critical section, for the broker's word to reach this
  // Client and its release to come back (a round trip), or for this
  // session to end if this process stops or hangs — as for a lock it holds.
  // Fencing tokens still increase with every acquisition: each acquisition
  // on the broker reserves a block of 4,096 tokens for the local ones (and
  // goes back to the broker once they are used up), and the next
  // acquisition anywhere gets a token above the block. (The lock is kept
  // only when the broker's grant confirms the block; an older broker's
  // does not.)
  // hold_token() and the loss of the session behave as for any held lock;
  // a kept lock that no thread holds when the session is lost is simply
  // gone (nothing was held). As with any held lock, the client learns of a
  // lost session a little after the broker may have ended it: a local
  // relock in that moment is reported lost as soon as the client notices
  // (hold_token(), kAborted), and its token is below the next holder's. While
  // the session holds the lock (kept or held), this Client keeps a request
  // outstanding on the broker, which a background thread reads for: the
  // Client's other calls are then answered through that thread, a thread
  // hand-off each (an acked send took ~30 µs instead of ~20 pinned to one CPU
  // here), so open kept locks on a Client of their own when that matters. Every
  // handle of one name in one Client must use the same setting
  // (kInvalidArgument otherwise).
  bool keep = false;
};

struct WaitGroupOptions {
  // When a participant's session ends still owing Dones, count its debt as
  // done (true) instead of failing every wait (false, the default). Every
  // process must open the WaitGroup with the same setting.
  bool forgive = false;
};

namespace detail {
class Connection;
std::shared_ptr<RemoteChan> open_remote_chan(
    const std::shared_ptr<Connection>& conn, const std::string& name,
    const std::string& type_name, std::size_t capacity,
    const RemoteChanOptions& options);
std::shared_ptr<RemoteValue> open_remote_value(
    const std::shared_ptr<Connection>& conn, const std::string& name,
    const std::string& type_name);
}  // namespace detail

class Client {
 public:
  // Connects to the broker at `target` ("host:port") and opens the session
  // (name and TTL). Throws dchan::Error (kUnavailable) if the broker cannot
  // be reached, or does not answer, within options.connect_timeout.
  static Client connect(const std::string& target);
  static Client connect(const std::string& target, ClientOptions options);

  // Opens the broker channel `name` with element type T (its
  // Codec<T>::type_name()) and `capacity`, creating it on first open. Throws
  // dchan::Error: kInvalidArgument when it exists with another element type
  // or capacity, kResourceExhausted when creating it would pass the
  // broker's object limit, kUnavailable when the broker is lost.
  //
  // Broker objects live by name, until the broker forgets them: one that
  // nobody holds any more (every handle dropped, every holder's session
  // ended) and that is as a fresh open would make it — a channel open and
  // empty with no waiter, a lock free, a WaitGroup at zero and not failed,
  // an AtomicValue never stored — is forgotten, and its name may then be
  // opened afresh with another type, capacity or kind. Others stay.
  template <class T>
  Chan<T> chan(const std::string& name, std::size_t capacity = 0) {
    return chan<T>(name, capacity, RemoteChanOptions());
  }

  // The same, with opt-in pipelining for this handle (and its copies):
  //   auto events = client.chan<Event>("events", 1024,
  //                                    {.send_window = 256, .recv_batch = 64});
  // See RemoteChanOptions for what changes, and dchan::flush.
  template <class T>
  Chan<T> chan(const std::string& name, std::size_t capacity,
               RemoteChanOptions options) {
    static_assert(kHasCodec<T>,
                  "a broker channel's element type needs a dchan::Codec<T>");
    return detail::make_remote_chan<T>(detail::open_remote_chan(
        conn_, name, Codec<T>::type_name(), capacity, options));
  }

  // Opens the broker lock `name` as a Mutex, creating it on first open.
  // Every process that opens the name shares the lock; handles this Client
  // returns for one name share its state and compare equal. The lock is held
  // by this Client's session: any of its threads may unlock it. Throws
  // dchan::Error: kInvalidArgument when `name` is another kind of object
  // (e.g. an RWMutex or a channel), kUnavailable when the broker is lost.
  Mutex mutex(const std::string& name);
  // The same, with options (see MutexOptions):
  //   dchan::Mutex mu = client.mutex("cache", {.keep = true});
  Mutex mutex(const std::string& name, MutexOptions options);

  // Opens the broker reader/writer lock `name` as an RWMutex. As mutex().
  RWMutex rw_mutex(const std::string& name);

  // Opens the broker WaitGroup `name`, creating it (counter zero) on first
  // open. Throws dchan::Error: kInvalidArgument when `name` is another kind
  // of object or exists with another `forgive` setting, kUnavailable when
  // the broker is lost.
  WaitGroup wait_group(const std::string& name, WaitGroupOptions options = {});

  // Opens the broker AtomicValue `name` holding T (its Codec<T>::type_name()),
  // creating it empty on first open. Throws dchan::Error: kInvalidArgument
  // when it exists with another type name or `name` is another kind of
  // object, kUnavailable when the broker is lost.
  template <class T>
  AtomicValue<T> atomic_value(const std::string& name) {
    static_assert(kHasCodec<T>,
                  "a broker AtomicValue's type needs a dchan::Codec<T>");
    return detail::make_remote_atomic_value<T>(
        detail::open_remote_value(conn_, name, Codec<T>::type_name()));
  }

  // The broker address this client talks to.
  const std::string& target() const noexcept;

  // This client's name (ClientOptions::name, or "hostname:pid"), its
  // session id on the broker, and the session TTL the broker granted.
  const std::string& name() const noexcept;
  uint64_t session_id() const noexcept;
  std::chrono::milliseconds session_ttl() const noexcept;

 private:
  explicit Client(std::shared_ptr<detail::Connection> conn)
      : conn_(std::move(conn)) {}
  std::shared_ptr<detail::Connection> conn_;
};

// Protobuf messages travel in their binary encoding; the type name is the
// message's full name.
template <class T>
struct Codec<
    T, std::enable_if_t<std::is_base_of_v<google::protobuf::MessageLite, T>>> {
  static std::string type_name() { return T::default_instance().GetTypeName(); }
  static void encode(const T& v, std::string& out) {
    v.SerializeToString(&out);
  }
  static absl::Status decode(std::string_view bytes, T& out) {
    if (!out.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      return absl::DataLossError("dchan: received bytes are not a valid " +
                                 type_name());
    }
    return absl::OkStatus();
  }
};

}  // namespace dchan

#endif  // DCHAN_CLIENT_H_
